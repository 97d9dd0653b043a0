//! The opening that the client-authenticated POST endpoints (token, revoke, introspect) share:
//! the method, the address budget, the form, client authentication (failures counted apart;
//! a slow hash only while the failures of the caller's address naming the client last, off
//! the async workers), and the client's budget (a confidential client's; a public client's
//! requests and failures count against their address only).

use http::{Method, Request, Response};
use hyper::body::Incoming;
use scopegate_core::clients::RegisteredClient;

use scopegate_sidecar_kit::body::ProxyBody;
use scopegate_sidecar_kit::unix_now;
use std::sync::atomic::Ordering;
use std::time::Duration;

use crate::clients::{self, Presented, SlowCheck, SlowError, Verdict};
use crate::error::OAuthError;
use crate::form::{self, Form};
use crate::limits::{Endpoint, Limiter};
use crate::{Context, reply};

/// A request whose client authenticated and whose budgets admitted it.
pub struct ClientRequest<'a> {
    /// Counts the request's failures against the address and, for a confidential client,
    /// the client ([`ClientRequest::failed`]).
    pub limiter: Limiter<'a>,
    /// The form parameters.
    pub form: Form,
    /// The authenticated client.
    pub client: &'a RegisteredClient,
    /// Unix seconds when the request was authenticated.
    pub now: i64,
}

impl ClientRequest<'_> {
    /// Counts a failure of the request and returns the answer to send: against the address,
    /// and the client too unless it is public (anyone can name a public client).
    pub async fn failed(&self, error: OAuthError) -> OAuthError {
        let named = (!self.client.public).then_some(self.client.client_id.as_str());
        self.limiter.failed(named, error).await
    }
}

/// Whether public clients (`token_endpoint_auth_method: none`) may call the endpoint.
#[derive(Clone, Copy, PartialEq, Eq)]
pub enum PublicClients {
    /// They may (token, revoke).
    Allowed,
    /// Only a secret authenticates here (introspection); every failure answers like a
    /// wrong secret.
    Refused,
}

/// Opens a client-authenticated request, or gives the answer that ends it.
pub async fn open<'a>(
    ctx: &'a Context<'_>,
    req: Request<Incoming>,
    endpoint: Endpoint,
    public: PublicClients,
) -> Result<ClientRequest<'a>, Response<ProxyBody>> {
    if req.method() != Method::POST {
        return Err(reply::error(&OAuthError::MethodNotAllowed("POST")));
    }
    let limiter = Limiter::new(
        ctx.issuer.store.as_ref(),
        ctx.issuer.tuning.limits,
        endpoint,
        ctx.client_ip,
    );
    if let Err(err) = limiter.before().await {
        return Err(reply::error(&err));
    }
    let (parts, body) = req.into_parts();
    let deadline = Duration::from_millis(ctx.issuer.tuning.body_deadline_ms);
    let form = match read_form(&parts, body, deadline).await {
        Ok(form) => form,
        Err(err) => return Err(reply::error(&limiter.failed(None, err).await)),
    };
    let presented = match clients::presented(&parts.headers, &form) {
        Ok(p) => p,
        Err(err) => return Err(reply::error(&limiter.failed(None, err).await)),
    };
    let now = unix_now();
    let client = authenticate(ctx, &limiter, endpoint, public, &presented, now).await?;
    // A public client shows nothing but its client_id, which anyone can send: a budget
    // counted in its name would be a budget any stranger could spend for its users. Its
    // requests spend their address's budget only.
    let admitted = if client.public {
        limiter.admit_address().await
    } else {
        limiter.admit(&client.client_id).await
    };
    if let Err(err) = admitted {
        return Err(reply::error(&err));
    }
    Ok(ClientRequest {
        limiter,
        form,
        client,
        now,
    })
}

/// Authenticates the client that `presented` names, or gives the answer that ends the
/// request. A failure counts against the address, and against the client too when the
/// presented id names a confidential one (an assertion sent without `client_id` names none);
/// where public clients are refused, every failure answers like a wrong secret.
async fn authenticate<'a>(
    ctx: &'a Context<'_>,
    limiter: &Limiter<'_>,
    endpoint: Endpoint,
    public: PublicClients,
    presented: &Presented,
    now: i64,
) -> Result<&'a RegisteredClient, Response<ProxyBody>> {
    let issuer = ctx.issuer;
    let settings = ctx.settings;
    let authenticated = match clients::authenticate(
        &settings.clients,
        &settings.service_accounts,
        presented,
        &issuer.slow_cache,
        now,
    ) {
        Ok(Verdict::Authenticated(client)) => Ok(client),
        Ok(Verdict::Slow(slow)) => slow_check(ctx, limiter, endpoint, slow, presented).await?,
        Err(err) => Err(err),
    };
    let client = match (authenticated, public) {
        (Ok(client), PublicClients::Refused) if client.public => {
            Err(OAuthError::InvalidClient { basic: true })
        }
        (Err(_), PublicClients::Refused) => Err(OAuthError::InvalidClient { basic: true }),
        (result, _) => result,
    };
    match client {
        Ok(client) => Ok(client),
        Err(err) => {
            tracing::info!(endpoint = endpoint.name(), "client authentication failed");
            // An assertion without client_id names no client: its failure counts against the
            // address only, never against the client its unchecked `sub` would map to.
            let named = presented
                .id()
                .filter(|id| (settings.clients.get(*id)).is_some_and(|c| !c.registered().public));
            Err(reply::error(&limiter.failed(named, err).await))
        }
    }
}

/// Runs the slow hashes of a secret off the async workers: the client, or the failure to
/// count. A spent failure budget of this address naming the client, or no free slot, ends
/// the request (`Err`) without running them.
async fn slow_check<'a>(
    ctx: &Context<'_>,
    limiter: &Limiter<'_>,
    endpoint: Endpoint,
    slow: SlowCheck<'a>,
    presented: &Presented,
) -> Result<Result<&'a RegisteredClient, OAuthError>, Response<ProxyBody>> {
    let issuer = ctx.issuer;
    // A slow hash costs tens of milliseconds of CPU: once this address's failures naming
    // the client have spent their budget, it gets no more run for it (the semaphore bounds
    // everyone's together). Other addresses still do, so the client's own right secret
    // never depends on what strangers sent.
    if let Err(err) = limiter.failures_left(slow.client_id()).await {
        issuer
            .counters
            .slow_hashes_refused
            .fetch_add(1, Ordering::Relaxed);
        return Err(reply::error(&err));
    }
    let wait = Duration::from_millis(issuer.tuning.slow_hash_wait_ms);
    let ran = slow
        .run(
            &issuer.slow_cache,
            &issuer.slow_hashes,
            wait,
            &issuer.counters,
        )
        .await;
    match ran {
        Ok(client) => Ok(Ok(client)),
        Err(SlowError::Invalid) => Ok(Err(OAuthError::InvalidClient {
            basic: presented.is_basic(),
        })),
        Err(SlowError::Busy) => {
            issuer
                .counters
                .slow_hashes_busy
                .fetch_add(1, Ordering::Relaxed);
            tracing::warn!(
                endpoint = endpoint.name(),
                "no slot for a slow client-secret check"
            );
            Err(reply::error(&OAuthError::TemporarilyUnavailable(
                "client authentication is busy",
            )))
        }
    }
}

/// Reads the form of a POST endpoint within `deadline`; parameters in the query are refused
/// (RFC 6749 §3.2).
async fn read_form(
    parts: &http::request::Parts,
    body: Incoming,
    deadline: std::time::Duration,
) -> Result<Form, OAuthError> {
    if parts.uri.query().is_some_and(|q| !q.is_empty()) {
        return Err(OAuthError::InvalidRequest(
            "parameters belong in the request body",
        ));
    }
    form::read_post(&parts.headers, body, deadline).await
}
