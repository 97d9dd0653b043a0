//! The mint interface: HTTP/1.1 with JSON bodies on a Unix socket in the emptyDir that only
//! the sidecar and the app container mount (a localhost port would reach every container of
//! the pod). The app, having authenticated a user its own way, can
//!
//! - `POST /v1/tokens` mint an access token for that user, within the policy's `mint` rules;
//! - `GET /v1/logins/{login_challenge}` read a pending authorization request;
//! - `POST /v1/logins/{login_challenge}/accept` or `/reject` settle it;
//! - `POST /v1/subject-cutoffs` end every token of a subject issued before a time.
//!
//! Every request is rate-limited and audit-logged (target `scopegate::audit`) without
//! tokens or challenges.

use std::convert::Infallible;
use std::os::unix::fs::PermissionsExt as _;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::{Method, Request, Response, StatusCode};
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::Incoming;
use hyper_util::rt::{TokioIo, TokioTimer};
use scopegate_sidecar_kit::unix_now;
use serde::Deserialize;
use serde_json::{Value, json};
use tokio::net::UnixListener;
use tokio::sync::watch;

use crate::access::{self, Grant};
use crate::authorize::{self, Decision};
use crate::error::OAuthError;
use crate::grant;
use crate::store::{RateOp, Revocation};
use crate::{Context, Issuer, IssuerSettings};

/// The client_id of minted tokens (no OAuthClient can have it: those are `<ns>.<name>`).
pub const MINT_CLIENT_ID: &str = "scopegate:mint";
/// Largest request body.
const MAX_BODY: usize = 16 * 1024;
/// Longest subject accepted.
const MAX_SUBJECT: usize = 256;

/// Binds the socket (replacing a stale one), readable and writable by the app container.
pub fn bind(path: &Path) -> std::io::Result<UnixListener> {
    match std::fs::remove_file(path) {
        Ok(()) => {}
        Err(err) if err.kind() == std::io::ErrorKind::NotFound => {}
        Err(err) => return Err(err),
    }
    let listener = UnixListener::bind(path)?;
    // The app container may run as another user; the emptyDir is the boundary.
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o666))?;
    Ok(listener)
}

/// Serves the socket until `shutdown`.
pub async fn serve(
    listener: UnixListener,
    issuer: Arc<Issuer>,
    mut shutdown: watch::Receiver<bool>,
) {
    loop {
        let stream = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok((stream, _)) => stream,
                Err(err) => {
                    tracing::warn!(error = %err, "mint socket accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
            () = scopegate_sidecar_kit::stopped(&mut shutdown) => return,
        };
        let issuer = issuer.clone();
        tokio::spawn(async move {
            let service = hyper::service::service_fn(move |req| {
                let issuer = issuer.clone();
                async move { Ok::<_, Infallible>(handle(&issuer, req).await) }
            });
            let _ = hyper::server::conn::http1::Builder::new()
                .timer(TokioTimer::new())
                .header_read_timeout(Duration::from_secs(30))
                .serve_connection(TokioIo::new(stream), service)
                .await;
        });
    }
}

/// A mint-socket failure: status, code, fixed description.
#[derive(Debug)]
struct Failure(StatusCode, &'static str, &'static str);

impl From<OAuthError> for Failure {
    fn from(err: OAuthError) -> Self {
        Failure(err.status(), err.code(), err.description())
    }
}

fn answer(status: StatusCode, body: &Value) -> Response<Full<Bytes>> {
    let mut response = Response::new(Full::new(Bytes::from(body.to_string())));
    *response.status_mut() = status;
    let headers = response.headers_mut();
    headers.insert(
        http::header::CONTENT_TYPE,
        http::HeaderValue::from_static("application/json"),
    );
    headers.insert(
        http::header::CACHE_CONTROL,
        http::HeaderValue::from_static("no-store"),
    );
    response
}

async fn handle(issuer: &Issuer, req: Request<Incoming>) -> Response<Full<Bytes>> {
    let Some(role) = issuer.in_force.load_full() else {
        return answer(
            StatusCode::SERVICE_UNAVAILABLE,
            &json!({"error": "temporarily_unavailable"}),
        );
    };
    let ctx = Context {
        issuer,
        settings: &role,
        client_ip: std::net::IpAddr::from([127, 0, 0, 1]),
    };
    let limit = [("mint".to_owned(), issuer.tuning.mint)];
    match issuer.store.rate(RateOp::Admit, &limit).await {
        Ok(Ok(())) => {}
        Ok(Err(secs)) => {
            let mut r = answer(
                StatusCode::TOO_MANY_REQUESTS,
                &json!({"error": "rate_limited"}),
            );
            r.headers_mut()
                .insert(http::header::RETRY_AFTER, http::HeaderValue::from(secs));
            return r;
        }
        Err(err) => return error(Failure::from(OAuthError::from(err))),
    }
    match route(&ctx, req).await {
        Ok((status, body)) => answer(status, &body),
        Err(failure) => error(failure),
    }
}

fn error(Failure(status, code, description): Failure) -> Response<Full<Bytes>> {
    answer(
        status,
        &json!({"error": code, "error_description": description}),
    )
}

async fn body<T: for<'de> Deserialize<'de>>(
    ctx: &Context<'_>,
    req: Request<Incoming>,
) -> Result<T, Failure> {
    let deadline = std::time::Duration::from_millis(ctx.issuer.tuning.body_deadline_ms);
    let collected =
        tokio::time::timeout(deadline, Limited::new(req.into_body(), MAX_BODY).collect())
            .await
            .map_err(|_| {
                Failure(
                    StatusCode::REQUEST_TIMEOUT,
                    "invalid_request",
                    "the body did not arrive in time",
                )
            })?;
    let bytes = collected
        .map_err(|_| {
            Failure(
                StatusCode::PAYLOAD_TOO_LARGE,
                "invalid_request",
                "body too large",
            )
        })?
        .to_bytes();
    serde_json::from_slice(&bytes).map_err(|_| {
        Failure(
            StatusCode::BAD_REQUEST,
            "invalid_request",
            "the body is not the expected JSON",
        )
    })
}

async fn route(ctx: &Context<'_>, req: Request<Incoming>) -> Result<(StatusCode, Value), Failure> {
    let path = req.uri().path().to_owned();
    let method = req.method().clone();
    let not_found = Failure(StatusCode::NOT_FOUND, "not_found", "no such mint endpoint");
    match (method, path.as_str()) {
        (Method::POST, "/v1/tokens") => mint(ctx, body(ctx, req).await?).await,
        (Method::POST, "/v1/subject-cutoffs") => cutoff(ctx, body(ctx, req).await?).await,
        (method, path) => {
            let rest = path.strip_prefix("/v1/logins/").ok_or(not_found)?;
            let (challenge, action) = rest.split_once('/').unwrap_or((rest, ""));
            match (method, action) {
                (Method::GET, "") => login(ctx, challenge).await,
                (Method::POST, "accept") => {
                    let accept: Accept = body(ctx, req).await?;
                    settle(ctx, challenge, accept.into_decision(ctx.settings)?).await
                }
                (Method::POST, "reject") => settle(ctx, challenge, Decision::Reject).await,
                _ => Err(Failure(
                    StatusCode::NOT_FOUND,
                    "not_found",
                    "no such mint endpoint",
                )),
            }
        }
    }
}

/// `POST /v1/tokens`.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct MintRequest {
    subject: String,
    #[serde(default)]
    scope: Option<String>,
    #[serde(default)]
    audience: Option<Vec<String>>,
    #[serde(default)]
    ttl_secs: Option<u64>,
}

fn check_subject(subject: &str) -> Result<(), Failure> {
    // Verifiers refuse a token whose subject a header would change: never mint one.
    if subject.len() > MAX_SUBJECT || !scopegate_core::names::is_identity_value(subject) {
        return Err(Failure(
            StatusCode::BAD_REQUEST,
            "invalid_request",
            "subject must be 1 to 256 visible ASCII characters, single spaces between them",
        ));
    }
    Ok(())
}

/// The checked grant of a mint request: (scope, audiences, ttl).
fn mint_rules(
    settings: &IssuerSettings,
    req: &MintRequest,
) -> Result<(Vec<String>, Vec<String>, i64), Failure> {
    let Some(rules) = settings.config.mint.as_ref() else {
        return Err(Failure(
            StatusCode::FORBIDDEN,
            "access_denied",
            "minting is not enabled for this issuer",
        ));
    };
    check_subject(&req.subject)?;
    if !rules
        .subjects
        .iter()
        .any(|p| grant::subject_matches(p, &req.subject))
    {
        return Err(Failure(
            StatusCode::FORBIDDEN,
            "access_denied",
            "the subject is outside the mint rules",
        ));
    }
    let scope = grant::parse_scope(req.scope.as_deref())?.unwrap_or_default();
    if !scope.iter().all(|s| rules.scopes.contains(s)) {
        return Err(Failure(
            StatusCode::FORBIDDEN,
            "invalid_scope",
            "a scope is outside the mint rules",
        ));
    }
    let allowed = if rules.audiences.is_empty() {
        vec![settings.config.url.clone()]
    } else {
        rules.audiences.clone()
    };
    let audiences = grant::audiences(
        req.audience.as_deref().unwrap_or_default(),
        &allowed,
        &allowed,
    )
    .map_err(|_| {
        Failure(
            StatusCode::FORBIDDEN,
            "invalid_target",
            "an audience is outside the mint rules",
        )
    })?;
    let max = rules.max_ttl_secs;
    let ttl = req
        .ttl_secs
        .unwrap_or_else(|| settings.config.access_token_ttl_secs.min(max));
    if ttl == 0 || ttl > max {
        return Err(Failure(
            StatusCode::FORBIDDEN,
            "invalid_request",
            "ttl_secs is outside the mint rules",
        ));
    }
    Ok((scope, audiences, i64::try_from(ttl).unwrap_or(i64::MAX)))
}

async fn mint(ctx: &Context<'_>, req: MintRequest) -> Result<(StatusCode, Value), Failure> {
    let settings = ctx.settings;
    let checked = mint_rules(settings, &req);
    let (scope, audiences, ttl) = match checked {
        Ok(checked) => checked,
        Err(failure) => {
            tracing::warn!(target: "scopegate::audit", action = "mint", outcome = failure.1, "mint refused");
            return Err(failure);
        }
    };
    let now = unix_now();
    let planned = access::plan(settings, now, ttl)?;
    let token = planned.sign(
        &settings.config.url,
        &Grant {
            sub: &req.subject,
            client_id: MINT_CLIENT_ID,
            aud: &audiences,
            scope: &scope,
            act: None,
        },
        &ctx.issuer.rng,
    )?;
    tracing::info!(
        target: "scopegate::audit",
        action = "mint",
        outcome = "minted",
        subject = %req.subject,
        scope = %scope.join(" "),
        audience = %audiences.join(" "),
        jti = %planned.jti,
        exp = planned.exp,
        "token minted"
    );
    Ok((
        StatusCode::OK,
        json!({
            "access_token": token,
            "token_type": "Bearer",
            "expires_in": planned.exp - now,
            "scope": scope.join(" "),
        }),
    ))
}

async fn login(ctx: &Context<'_>, challenge: &str) -> Result<(StatusCode, Value), Failure> {
    let record = authorize::pending(ctx, challenge).await?.ok_or(Failure(
        StatusCode::NOT_FOUND,
        "not_found",
        "unknown or expired login challenge",
    ))?;
    Ok((
        StatusCode::OK,
        json!({
            "client_id": record.client_id,
            "scope": record.scope.join(" "),
            "audience": record.audiences,
            "redirect_uri": record.redirect_uri,
            "requested_at": record.created_at,
            "upstream": record.upstream,
        }),
    ))
}

/// `POST /v1/logins/{challenge}/accept`.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Accept {
    subject: String,
    #[serde(default)]
    scope: Option<String>,
}

impl Accept {
    /// The decision, once the subject passed the checks a minted token's subject passes: a
    /// login is bounded by `mint.subjects` like a mint (without `mint` rules, any subject).
    fn into_decision(self, settings: &IssuerSettings) -> Result<Decision, Failure> {
        check_subject(&self.subject)?;
        if let Some(rules) = settings.config.mint.as_ref()
            && !rules
                .subjects
                .iter()
                .any(|p| grant::subject_matches(p, &self.subject))
        {
            tracing::warn!(target: "scopegate::audit", action = "login_accept", outcome = "access_denied", "login refused: subject outside mint.subjects");
            return Err(Failure(
                StatusCode::FORBIDDEN,
                "access_denied",
                "the subject is outside the mint rules (mint.subjects): the login stays pending",
            ));
        }
        Ok(Decision::Accept {
            scope: grant::parse_scope(self.scope.as_deref())?,
            subject: self.subject,
        })
    }
}

async fn settle(
    ctx: &Context<'_>,
    challenge: &str,
    decision: Decision,
) -> Result<(StatusCode, Value), Failure> {
    let action = match &decision {
        Decision::Accept { .. } => "login_accept",
        Decision::Reject => "login_reject",
    };
    let subject = match &decision {
        Decision::Accept { subject, .. } => subject.clone(),
        Decision::Reject => String::new(),
    };
    let redirect = authorize::settle(ctx, challenge, decision)
        .await?
        .ok_or(Failure(
            StatusCode::NOT_FOUND,
            "not_found",
            "unknown, expired or settled login challenge",
        ))?;
    tracing::info!(target: "scopegate::audit", action, subject = %subject, "login settled");
    Ok((StatusCode::OK, json!({"redirect_to": redirect})))
}

/// `POST /v1/subject-cutoffs`.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Cutoff {
    subject: String,
    #[serde(default)]
    before: Option<i64>,
}

async fn cutoff(ctx: &Context<'_>, req: Cutoff) -> Result<(StatusCode, Value), Failure> {
    check_subject(&req.subject)?;
    let now = unix_now();
    let before = req.before.unwrap_or(now);
    if before > now {
        return Err(Failure(
            StatusCode::BAD_REQUEST,
            "invalid_request",
            "before must not be in the future",
        ));
    }
    let settings = ctx.settings;
    // A refresh family may mint tokens later, until its own end: the cut-off must outlive it.
    let refresh = i64::try_from(settings.config.refresh_token_ttl_secs).unwrap_or(i64::MAX);
    let until = now.saturating_add(settings.max_token_ttl.max(refresh));
    let entry = Revocation::Subject {
        sub: req.subject.clone(),
        before,
        until,
    };
    ctx.issuer
        .store
        .revoke(vec![entry], settings.leeway)
        .await
        .map_err(OAuthError::from)?;
    ctx.issuer.notify_feed();
    tracing::info!(target: "scopegate::audit", action = "subject_cutoff", subject = %req.subject, before, "subject cut-off set");
    Ok((
        StatusCode::OK,
        json!({"subject": req.subject, "before": before, "until": until}),
    ))
}

impl Issuer {
    /// Binds and serves the mint socket of `path`.
    pub fn start_mint(
        self: &Arc<Self>,
        path: &Path,
        shutdown: watch::Receiver<bool>,
    ) -> std::io::Result<tokio::task::JoinHandle<()>> {
        let listener = bind(path)?;
        Ok(tokio::spawn(serve(listener, self.clone(), shutdown)))
    }
}
