//! One request through the sidecar: normalise the path, find the rule, rate-limit,
//! authenticate and authorise, then forward to the app with clean headers, or answer
//! with a refusal.

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::sync::atomic::Ordering;

use bytes::Bytes;
use http::header::{self, HeaderValue};
use http::{Request, Response, StatusCode, Uri, Version};
use http_body_util::{BodyExt, Empty};
use hyper::body::Incoming;
use hyper_util::rt::TokioIo;
use scopegate_core::condition::RequestFacts;
use scopegate_core::config::UpstreamProtocol;
use scopegate_core::decision::{self, Step};
use scopegate_core::path::RequestPath;
use scopegate_core::policy::Route;
use scopegate_core::session::RESERVED_PREFIX;

use crate::answer::{Refusal, answer};
use crate::body_deadline::BodyDeadline;
use crate::claims::{self, AppIdentity, set_identity_headers};
use crate::client_addr::client_ip;
use crate::headers::{self, X_FORWARDED_FOR};
use crate::metrics::Decisions;
use crate::rate_limit::RequestLimits;
use crate::role::CompiledRole;
use crate::settings::Settings;
use crate::state::Shared;
use crate::token::VerifiedToken;
use crate::unix_now;
use crate::unread;
use crate::verify;

pub use scopegate_sidecar_kit::body::ProxyBody;

/// The connection a request came on.
#[derive(Debug, Clone, Copy)]
pub struct Connection {
    /// The TCP peer.
    pub peer: SocketAddr,
}

/// Answers of the app that count as a failed authentication for the rate limits.
const REFUSED_BY_APP: [StatusCode; 2] = [StatusCode::UNAUTHORIZED, StatusCode::FORBIDDEN];

/// Handles one request.
pub async fn handle(
    shared: Arc<Shared>,
    conn: Connection,
    mut req: Request<Incoming>,
) -> Response<ProxyBody> {
    // The epoch first: a token verified under settings older than the epoch's is never
    // cached as if verified under the new ones (their conditions may need its claims).
    let epoch = shared.cache.epoch();
    let settings = shared.settings.load_full();
    let path = match RequestPath::parse(req.uri().path()) {
        Ok(path) => path,
        Err(err) => {
            tracing::debug!(error = %err, "refused request path");
            unread::drain(req.into_body()).await;
            return refuse(&shared, &settings, Refusal::BadPath);
        }
    };
    if let Some(role) = settings.role.as_ref()
        && role.serves(path.forward())
    {
        return serve_role(role, conn, req, path.forward(), &settings).await;
    }
    let Some(sessions) = settings.sessions.clone() else {
        return match pass(&shared, &settings, conn, req, &path, epoch).await {
            Ok(response) => response,
            Err(refusal) => refuse(&shared, &settings, refusal),
        };
    };
    if path.forward().starts_with(RESERVED_PREFIX) {
        let client = request_client_ip(conn, &req, &settings);
        let mut response = (shared.sessions)
            .serve(&sessions, &req, path.forward(), client)
            .await;
        headers::secure_response(response.headers_mut(), &settings.headers, true);
        unread::drain(req.into_body()).await;
        return response;
    }
    let mut prepared = match (shared.sessions)
        .before(&sessions, &mut req, path.route(), path.forward())
        .await
    {
        Ok(prepared) => prepared,
        Err(mut answer) => {
            shared.metrics.request("forbidden");
            headers::secure_response(answer.headers_mut(), &settings.headers, true);
            unread::drain(req.into_body()).await;
            return answer;
        }
    };
    let mut response = match pass(&shared, &settings, conn, req, &path, epoch).await {
        Ok(response) => response,
        Err(refusal) => match shared.sessions.refused(&sessions, &mut prepared, &refusal) {
            Some(mut login) => {
                shared.metrics.request(refusal.outcome());
                headers::secure_response(login.headers_mut(), &settings.headers, true);
                login
            }
            None => refuse(&shared, &settings, refusal),
        },
    };
    shared.sessions.finish(prepared, response.headers_mut());
    response
}

/// A request past the sessions: rate-limited, authenticated and authorised, then forwarded
/// to the app; or the refusal it gets.
async fn pass(
    shared: &Arc<Shared>,
    settings: &Arc<Settings>,
    conn: Connection,
    mut req: Request<Incoming>,
    path: &RequestPath,
    epoch: u64,
) -> Result<Response<ProxyBody>, Refusal> {
    let no_store = (settings.headers.no_store.iter()).any(|p| p.matches_loosely(path.route()));
    let method = req.method().as_str().to_owned();
    let limits = RequestLimits::new(
        &settings.rate_limits,
        &method,
        path.route(),
        shared.clock.now(),
        || request_client_ip(conn, &req, settings),
        shared.shared_limits(),
    );
    let admitted = async {
        limits.check_address().await.map_err(Refusal::RateLimited)?;
        let asked = Asked {
            req: &req,
            conn,
            epoch,
            method: &method,
            path: path.route(),
        };
        let decided = admit(shared, settings, asked).await;
        within_limits(&limits, decided).await
    }
    .await;
    let Admitted { identity, dry_run } = match admitted {
        Ok(admitted) => admitted,
        Err(refusal) => return Err(refused_unread(req, refusal).await),
    };
    let app_identity = match AppIdentity::of(&settings.headers, identity.as_deref()) {
        Ok(app_identity) => app_identity,
        Err(refusal) => return Err(refused_unread(req, refusal).await),
    };
    let subject = identity.as_ref().and_then(|t| t.sub.as_deref());

    let upgrade =
        headers::is_upgrade(req.method(), req.headers()).then(|| hyper::upgrade::on(&mut req));
    let mut response = forward(
        shared,
        settings,
        conn,
        req,
        path.forward(),
        &app_identity,
        upgrade,
    )
    .await?;
    let outcome = admitted_outcome(dry_run, identity.is_some());
    shared.metrics.request(outcome);
    if !dry_run {
        // A DryRun refusal was counted as a failure already.
        let refused = REFUSED_BY_APP.contains(&response.status());
        limits.answered(refused, subject).await;
    }
    headers::secure_response(response.headers_mut(), &settings.headers, no_store);
    Ok(response)
}

/// `refusal`, once what is left of the refused request's body has been read
/// ([`unread::drain`]).
async fn refused_unread(req: Request<Incoming>, refusal: Refusal) -> Refusal {
    unread::drain(req.into_body()).await;
    refusal
}

/// Hands a request for one of the issuer's own paths to the issuer role.
async fn serve_role(
    role: &Arc<dyn CompiledRole>,
    conn: Connection,
    req: Request<Incoming>,
    path: &str,
    settings: &Settings,
) -> Response<ProxyBody> {
    let client_ip = request_client_ip(conn, &req, settings);
    let mut response = role.clone().handle(client_ip, path, req).await;
    headers::secure_response(response.headers_mut(), &settings.headers, false);
    response
}

/// A request its rules let through.
struct Admitted {
    /// The verified, unrevoked token it carried, if any.
    identity: Option<Arc<VerifiedToken>>,
    /// Whether a DryRun rule would have refused it.
    dry_run: bool,
}

/// A request as its rules see it.
#[derive(Clone, Copy)]
struct Asked<'a> {
    req: &'a Request<Incoming>,
    conn: Connection,
    /// The token cache's epoch, read before the settings were.
    epoch: u64,
    method: &'a str,
    /// The normalised route path.
    path: &'a str,
}

/// Finds the rule for a request and decides it, counting the decision; a refusal is
/// logged with the rule's name.
async fn admit(
    shared: &Shared,
    settings: &Settings,
    asked: Asked<'_>,
) -> Result<Admitted, Refusal> {
    let route = settings.policy.route(asked.method, asked.path);
    let Verdict { identity, outcome } = authorize(shared, settings, &route, asked).await;
    let counters = settings.decisions.get_or_init(|| {
        shared
            .metrics
            .decision_counters(&settings.policy.rule_labels())
    });
    let Decided {
        route,
        outcome,
        token_seen,
        dry_run,
    } = if route.enforced {
        Decided {
            token_seen: identity.is_some(),
            route,
            outcome,
            dry_run: false,
        }
    } else {
        let seen = identity.as_deref();
        dry_run_decision(shared, settings, counters, asked, route, seen, outcome).await
    };
    let decisions = counters.of(route.rule_index);
    match outcome {
        Ok(()) => {
            if route.enforced {
                decisions.count(if token_seen { "allowed" } else { "public" }, true);
            }
            Ok(Admitted { identity, dry_run })
        }
        Err(refusal) => {
            decisions.count(refusal.outcome(), true);
            tracing::info!(
                rule = route.rule_name.unwrap_or("-"),
                outcome = refusal.outcome(),
                "request refused"
            );
            Err(refusal)
        }
    }
}

/// The metric outcome of a forwarded request.
fn admitted_outcome(dry_run: bool, token_seen: bool) -> &'static str {
    match (dry_run, token_seen) {
        (true, _) => "dry_run",
        (false, true) => "allowed",
        (false, false) => "public",
    }
}

/// The rate limits a decided request meets: a refusal, or a request only a DryRun rule
/// would refuse, counts as a failure (and may turn into 429); an admitted request then meets
/// its subject's budget.
async fn within_limits(
    limits: &RequestLimits,
    decided: Result<Admitted, Refusal>,
) -> Result<Admitted, Refusal> {
    let admitted = match decided {
        Ok(admitted) => admitted,
        Err(refusal) => {
            return Err(match limits.refused().await {
                Ok(()) => refusal,
                Err(secs) => Refusal::RateLimited(secs),
            });
        }
    };
    if admitted.dry_run {
        // Forwarded although its rule would refuse it; the identity headers go with a valid
        // token only. Rate limits still count it as a failure, and still refuse.
        limits.refused().await.map_err(Refusal::RateLimited)?;
    }
    let subject = admitted.identity.as_ref().and_then(|t| t.sub.as_deref());
    limits
        .check_subject(admitted.identity.is_some(), subject)
        .await
        .map_err(Refusal::RateLimited)?;
    Ok(admitted)
}

/// The client address of a request, as `trustedProxies` defines it.
fn request_client_ip(conn: Connection, req: &Request<Incoming>, settings: &Settings) -> IpAddr {
    let forwarded = req
        .headers()
        .get_all(&X_FORWARDED_FOR)
        .iter()
        .filter_map(|v| v.to_str().ok());
    client_ip(conn.peer.ip(), forwarded, settings.trusted_proxies.as_ref())
}

/// What decides a request after DryRun rules had their say.
struct Decided<'a> {
    /// The rule (or default action) that decides.
    route: Route<'a>,
    /// Its verdict.
    outcome: Result<(), Refusal>,
    /// Whether the deciding verdict saw a valid token.
    token_seen: bool,
    /// Whether a DryRun rule would have refused the request.
    dry_run: bool,
}

/// A rule in DryRun is counted and logged, and the enforced rules decide as if it did not
/// exist: trying a stricter rule never opens, nor closes, what the policy enforced before.
async fn dry_run_decision<'a>(
    shared: &Shared,
    settings: &'a Settings,
    counters: &Decisions,
    asked: Asked<'_>,
    route: Route<'a>,
    identity: Option<&VerifiedToken>,
    outcome: Result<(), Refusal>,
) -> Decided<'a> {
    let decisions = counters.of(route.rule_index);
    let mut dry_run = false;
    match &outcome {
        Ok(()) if identity.is_some() => decisions.count("allowed", false),
        Ok(()) => decisions.count("public", false),
        Err(refusal) => {
            dry_run = true;
            let count = decisions.count(refusal.outcome(), false);
            if decisions.may_log(refusal.outcome(), unix_now()) {
                tracing::info!(
                    rule = %route.label(),
                    outcome = refusal.outcome(),
                    method = %asked.method,
                    client_id = identity.and_then(|t| t.client_id.as_deref()).unwrap_or("-"),
                    count,
                    "DryRun: a request the rule would refuse"
                );
            }
            count
        }
    };
    let enforced = settings.policy.enforced_route(asked.method, asked.path);
    let (route, outcome, token_seen) = match enforced {
        Some(enforced) if enforced.rule_index != route.rule_index => {
            let verdict = authorize(shared, settings, &enforced, asked).await;
            (enforced, verdict.outcome, verdict.identity.is_some())
        }
        // Nothing enforced decides (or the rule is public, refusing nothing): forwarded,
        // counted once above.
        _ => (route, Ok(()), false),
    };
    Decided {
        route,
        outcome,
        token_seen,
        dry_run,
    }
}

/// What the credentials of a request come to.
struct Verdict {
    /// The token, when one was presented, verified and not revoked (whether or not it
    /// satisfies the rule): the identity the app may be told.
    identity: Option<Arc<VerifiedToken>>,
    /// Whether the rule lets the request through, or the refusal it gets.
    outcome: Result<(), Refusal>,
}

/// Decides whether the request may pass. The steps are [`scopegate_core::decision`]'s, the
/// ones `kubectl scopegate explain` runs.
async fn authorize(
    shared: &Shared,
    settings: &Settings,
    route: &Route<'_>,
    asked: Asked<'_>,
) -> Verdict {
    let req = asked.req;
    let refused = |refusal| Verdict {
        identity: None,
        outcome: Err(refusal),
    };
    let (token, grant) =
        match decision::before_verification(route.requirement, req.headers(), req.uri().query()) {
            Ok(Step::Public) => {
                return Verdict {
                    identity: None,
                    outcome: Ok(()),
                };
            }
            Ok(Step::Verify { token, grant }) => (token, grant),
            Err(early) => {
                tracing::debug!(reason = %early, "refused before verification");
                return refused(early.refusal());
            }
        };
    if shared.fail_closed_now(unix_now()) {
        tracing::warn!("revocation feed stale and the policy fails closed");
        return refused(Refusal::Unavailable);
    }
    let verified = match verify::verify(shared, settings, token, asked.epoch).await {
        Ok(verified) => verified,
        Err(err) => {
            tracing::info!(reason = %scopegate_core::error_chain(&err), "invalid token");
            return refused(decision::token_refused(&err));
        }
    };
    let outcome = decision::after_verification(grant, &verified.scope)
        .and_then(|()| meets_condition(settings, route, asked, &verified));
    Verdict {
        outcome,
        identity: Some(verified),
    }
}

/// Evaluates the rule's `when` condition, if it has one, for a token that passed the scope
/// check: anything but `true` refuses.
fn meets_condition(
    settings: &Settings,
    route: &Route<'_>,
    asked: Asked<'_>,
    verified: &VerifiedToken,
) -> Result<(), Refusal> {
    let Some(condition) = settings.policy.condition(route.rule_index) else {
        return Ok(());
    };
    let facts = RequestFacts {
        method: asked.method,
        path: asked.path,
        headers: asked.req.headers(),
        source: Some(request_client_ip(asked.conn, asked.req, settings)),
    };
    claims::judge(condition, &facts, verified, route)
}

/// Sends the request to the app and returns its response (hop-by-hop headers stripped).
async fn forward(
    shared: &Shared,
    settings: &Settings,
    conn: Connection,
    req: Request<Incoming>,
    path: &str,
    identity: &AppIdentity<'_>,
    upgrade: Option<hyper::upgrade::OnUpgrade>,
) -> Result<Response<ProxyBody>, Refusal> {
    let upstream = &settings.upstream;
    let (mut parts, body) = req.into_parts();
    rewrite_for_app(
        shared,
        settings,
        conn,
        &mut parts,
        path,
        identity,
        upgrade.is_some(),
    )?;
    let idle = match upstream.protocol {
        UpstreamProtocol::Http1 => shared.connection.body_idle_timeout,
        UpstreamProtocol::H2c => shared.connection.stream_idle_timeout,
    };
    let body = BodyDeadline::new(body, idle);
    let stalled = body.stalled.clone();
    let request = Request::from_parts(parts, body);
    let response =
        match tokio::time::timeout(upstream.response_timeout, upstream.client.request(request))
            .await
        {
            Err(_) => {
                tracing::warn!("upstream did not answer in time");
                return Err(Refusal::UpstreamTimeout);
            }
            Ok(Err(_)) if stalled.load(Ordering::Acquire) => {
                tracing::info!("request body stalled; request ended");
                return Err(Refusal::BodyTimeout);
            }
            Ok(Err(err)) => {
                tracing::warn!(error = %err, "upstream unreachable");
                return Err(Refusal::UpstreamUnreachable);
            }
            Ok(Ok(response)) => response,
        };
    let (mut parts, body) = response.into_parts();
    let switching = parts.status == StatusCode::SWITCHING_PROTOCOLS;
    // The app may switch only to the WebSocket the client asked for.
    if switching && (upgrade.is_none() || !headers::upgrades_to_websocket(&parts.headers)) {
        tracing::warn!("the app switched protocols unasked; refused");
        return Err(Refusal::UpstreamUnreachable);
    }
    headers::strip_hop_by_hop(&mut parts.headers, switching && upgrade.is_some());
    let mut response = Response::from_parts(parts, body.boxed());
    if let (true, Some(client_side)) = (switching, upgrade) {
        splice_upgrade(&mut response, client_side);
    }
    Ok(response)
}

/// Turns the client's request head into the app's: its URI, HTTP version, hop-by-hop and
/// spoofable headers removed, the identity and `Forwarded` headers set.
fn rewrite_for_app(
    shared: &Shared,
    settings: &Settings,
    conn: Connection,
    parts: &mut http::request::Parts,
    path: &str,
    identity: &AppIdentity<'_>,
    upgrading: bool,
) -> Result<(), Refusal> {
    let upstream = &settings.upstream;
    let wants_trailers = parts
        .headers
        .get_all(header::TE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .any(|v| {
            v.split(',')
                .any(|t| t.trim().eq_ignore_ascii_case("trailers"))
        });
    let path_and_query = match parts.uri.query() {
        Some(query) => format!("{path}?{query}"),
        None => path.to_owned(),
    };
    let uri: Uri = format!("http://{}{}", upstream.authority, path_and_query)
        .parse()
        .map_err(|_| Refusal::BadPath)?;
    let headers = &mut parts.headers;
    // An HTTP/2 client names the host in :authority only; the app still gets it as Host.
    if !headers.contains_key(header::HOST)
        && let Some(authority) = parts.uri.authority()
        && let Ok(host) = HeaderValue::from_str(authority.as_str())
    {
        headers.insert(header::HOST, host);
    }
    headers::strip_hop_by_hop(headers, upgrading);
    set_identity_headers(headers, &settings.headers, identity);
    let trusted_peer = settings
        .trusted_proxies
        .as_ref()
        .is_some_and(|t| t.trusts_peer(conn.peer.ip()));
    headers::set_forwarded(headers, conn.peer.ip(), shared.tls, trusted_peer);
    if upstream.protocol == UpstreamProtocol::H2c {
        parts.version = Version::HTTP_2;
        if wants_trailers {
            headers.insert(header::TE, HeaderValue::from_static("trailers"));
        }
    } else {
        parts.version = Version::HTTP_11;
    }
    parts.uri = uri;
    Ok(())
}

/// Joins the client's and the app's upgraded connections once both sides switched.
fn splice_upgrade(response: &mut Response<ProxyBody>, client_side: hyper::upgrade::OnUpgrade) {
    let upstream_side = hyper::upgrade::on(response);
    tokio::spawn(async move {
        let (client_io, upstream_io) = match tokio::try_join!(client_side, upstream_side) {
            Ok(pair) => pair,
            Err(err) => {
                tracing::debug!(error = %err, "upgrade failed");
                return;
            }
        };
        let mut client_io = TokioIo::new(client_io);
        let mut upstream_io = TokioIo::new(upstream_io);
        let _ = tokio::io::copy_bidirectional(&mut client_io, &mut upstream_io).await;
    });
}

/// The sidecar's own answer to a refused request.
/// Refusals always carry `Cache-Control: no-store`.
fn refuse(shared: &Shared, settings: &Settings, refusal: Refusal) -> Response<ProxyBody> {
    shared.metrics.request(refusal.outcome());
    let answer = answer(&refusal);
    let mut response = Response::new(
        Empty::<Bytes>::new()
            .map_err(|never| match never {})
            .boxed(),
    );
    *response.status_mut() = answer.status;
    let headers = response.headers_mut();
    if let Some(challenge) = answer.challenge {
        headers.insert(header::WWW_AUTHENTICATE, challenge);
    }
    if let Some(secs) = answer.retry_after {
        headers.insert(header::RETRY_AFTER, HeaderValue::from(secs));
    }
    headers.insert(header::CONTENT_LENGTH, HeaderValue::from(0u64));
    headers::secure_response(headers, &settings.headers, true);
    response
}
