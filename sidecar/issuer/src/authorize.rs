//! `/oauth2/authorize` (RFC 6749 §4.1, RFC 7636, RFC 9207): the request is checked, stored
//! as a one-time login challenge, and the browser sent to the app's `loginUrl`. The app logs
//! its user in and accepts the challenge on the mint socket, which hands it a one-time
//! `resume` URL on the issuer; there the issuer mints the code and redirects the browser to
//! the client with `code`, the untouched `state` and `iss`.
//!
//! An unknown client, a redirect URI that is not registered, and a `client_id` or
//! `redirect_uri` given twice get an error page, never a redirect (RFC 6749 §4.1.2.1); every
//! later error, another parameter given twice included, is redirected to the client. A
//! request may leave out `redirect_uri` when the client registered exactly one (§3.1.2.3).

use http::{Method, Request, Response, StatusCode};
use hyper::body::Incoming;
use scopegate_sidecar_kit::body::ProxyBody;
use scopegate_sidecar_kit::unix_now;

use scopegate_core::clients::RegisteredClient;

use crate::clients::LoadedClient;
use crate::error::OAuthError;
use crate::form::Form;
use crate::grant;
use crate::limits::{Endpoint, Limiter};
use crate::login::{LoginRecord, client_redirect, code_redirect, error_redirect, store_challenge};
use crate::store::{self, hashed_key};
use crate::upstream::{self, flow::Next};
use crate::{Context, IssuerSettings, random_token, reply};

/// How long the browser has to come back after the app accepted.
pub const RESUME_TTL_SECS: i64 = 120;
/// Longest `state` kept.
pub const MAX_STATE_BYTES: usize = 2048;

/// Answers an authorization request.
///
/// The request is unauthenticated: anyone can send one naming any client, and a valid one
/// too (a client's `client_id`, redirect URI and an S256 challenge are public). So it spends
/// one success of the caller's address budget and nothing in the client's name: failures
/// count against the address only, and the pending logins it leaves are bounded per address.
pub async fn handle(ctx: &Context<'_>, req: Request<Incoming>) -> Response<ProxyBody> {
    if req.method() != Method::GET {
        return reply::error_page(
            StatusCode::METHOD_NOT_ALLOWED,
            "Use GET for authorization requests.",
        );
    }
    let limiter = Limiter::new(
        ctx.issuer.store.as_ref(),
        ctx.issuer.tuning.limits,
        Endpoint::Authorize,
        ctx.client_ip,
    );
    if limiter.before().await.is_err() || limiter.admit_address().await.is_err() {
        return reply::error_page(
            StatusCode::TOO_MANY_REQUESTS,
            "Too many requests; try again later.",
        );
    }
    let query = req.uri().query().unwrap_or("");
    let Ok(form) = Form::parse_keeping_repeats(query.as_bytes()) else {
        return refused_page(&limiter, "The authorization request is malformed.").await;
    };
    let settings = ctx.settings;
    let (client, redirect_uri) = match redirect_target(settings, &form) {
        Ok(target) => target,
        Err(message) => return refused_page(&limiter, message).await,
    };
    // A repeated state cannot be told apart from the client's own: none is sent back.
    let state = form.get("state").filter(|_| !form.is_repeated("state"));
    let refused = |err: OAuthError| {
        tracing::info!(endpoint = "authorize", client_id = %client.client_id, error = err.code(), reason = %err, "authorization request refused");
        err
    };
    let validated = if form.repeated().is_empty() {
        validate(ctx, client, redirect_uri, &form)
    } else {
        Err(OAuthError::InvalidRequest("a parameter is repeated"))
    };
    let record = match validated {
        Ok(record) => record,
        Err(err) => {
            let err = limiter.failed(None, refused(err)).await;
            return reply::redirect(&error_redirect(settings, redirect_uri, state, &err));
        }
    };
    match upstream::flow::choose(ctx, client, &record, form.get("upstream")).await {
        Ok(Some(Next::Redirect(location))) => reply::redirect(&location),
        Ok(Some(Next::Page(page))) => page,
        Ok(None) => match store_challenge(ctx, &record).await {
            Ok(location) => reply::redirect(&location),
            Err(err) => {
                let err = refused(err);
                reply::redirect(&error_redirect(settings, redirect_uri, state, &err))
            }
        },
        Err(err) => {
            let err = limiter.failed(None, refused(err)).await;
            reply::redirect(&error_redirect(settings, redirect_uri, state, &err))
        }
    }
}

/// Counts a failure of the caller's address and answers an error page, never a redirect.
async fn refused_page(limiter: &Limiter<'_>, message: &'static str) -> Response<ProxyBody> {
    let _ = limiter.failed(None, OAuthError::InvalidRequest("")).await;
    reply::error_page(StatusCode::BAD_REQUEST, message)
}

/// The client and the redirect URI that later errors are sent to, or the error page's
/// message when they cannot be trusted (RFC 6749 §4.1.2.1): either given twice, an unknown
/// client, a redirect URI not registered, or none where the client registered several.
fn redirect_target<'a>(
    settings: &'a IssuerSettings,
    form: &'a Form,
) -> Result<(&'a RegisteredClient, &'a str), &'static str> {
    // Duplicates of client_id or redirect_uri make both untrustworthy: an error page.
    if form.is_repeated("client_id") || form.is_repeated("redirect_uri") {
        return Err("The authorization request names its client or redirect URI more than once.");
    }
    let client = form
        .get("client_id")
        .and_then(|id| settings.clients.get(id))
        .map(LoadedClient::registered)
        .ok_or("Unknown client.")?;
    let Some(redirect_uri) = redirect_uri_of(client, form.get("redirect_uri")) else {
        return Err(if form.get("redirect_uri").is_some() {
            "The redirect URI is not registered for this client."
        } else {
            "The authorization request must name its redirect URI: the client did not \
             register exactly one."
        });
    };
    Ok((client, redirect_uri))
}

/// Where the client is sent back: the requested URI if it matches a registered one, else,
/// when the request names none, the client's only registered URI (RFC 6749 §3.1.2.3). A
/// client with several (or none) must name one.
fn redirect_uri_of<'a>(
    client: &'a RegisteredClient,
    requested: Option<&'a str>,
) -> Option<&'a str> {
    match (requested, client.redirect_uris.as_slice()) {
        (Some(uri), registered) => registered
            .iter()
            .any(|r| grant::redirect_uri_matches(r, uri))
            .then_some(uri),
        (None, [only]) => Some(only.as_str()),
        (None, _) => None,
    }
}

/// Checks the rest of the request (nothing stored yet) and makes the pending login.
fn validate(
    ctx: &Context<'_>,
    client: &RegisteredClient,
    redirect_uri: &str,
    form: &Form,
) -> Result<LoginRecord, OAuthError> {
    let settings = ctx.settings;
    if form.require("response_type")? != "code" {
        return Err(OAuthError::UnsupportedResponseType);
    }
    if !client.grant_types.iter().any(|g| g == "authorization_code") {
        return Err(OAuthError::UnauthorizedClient);
    }
    let challenge = form.require("code_challenge")?;
    // A missing method means `plain` (RFC 7636 §4.3), which is refused.
    if form.get("code_challenge_method") != Some("S256") {
        return Err(OAuthError::InvalidRequest(
            "code_challenge_method must be S256",
        ));
    }
    if !grant::is_s256_challenge(challenge) {
        return Err(OAuthError::InvalidRequest(
            "code_challenge is not an S256 challenge",
        ));
    }
    let state = form.get("state");
    if state.is_some_and(|s| s.len() > MAX_STATE_BYTES) {
        return Err(OAuthError::InvalidRequest("state is too long"));
    }
    let requested = grant::parse_scope(form.get("scope"))?;
    let scope = grant::grant_scope(requested.as_deref(), client, &settings.config.scopes)?;
    let audiences = grant::audiences(
        &form.all("resource"),
        &client.audiences,
        &grant::client_audiences(client, &settings.config.url),
    )?;
    upstream::flow::check_choice(settings, &client.client_id, form.get("upstream"))?;
    if settings.config.login_url.is_none() && settings.config.upstreams.is_empty() {
        return Err(OAuthError::TemporarilyUnavailable(
            "no login URL is configured",
        ));
    }
    Ok(LoginRecord {
        client_id: client.client_id.clone(),
        redirect_uri: redirect_uri.to_owned(),
        redirect_uri_omitted: form.get("redirect_uri").is_none(),
        scope,
        audiences,
        state: state.map(str::to_owned),
        challenge: challenge.to_owned(),
        created_at: unix_now(),
        sub: None,
        upstream: None,
        family_until: None,
    })
}

/// A pending login, for the app (mint socket): who asks for what. Never the challenge.
pub async fn pending(
    ctx: &Context<'_>,
    login_challenge: &str,
) -> Result<Option<LoginRecord>, OAuthError> {
    let key = hashed_key("login", login_challenge);
    Ok(store::read::<LoginRecord>(ctx.issuer.store.as_ref(), &key)
        .await?
        .map(|r| r.value))
}

/// How the app decided a login.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Decision {
    /// The user logged in as `subject`; `scope` may narrow what the client asked for.
    Accept {
        /// The authenticated subject.
        subject: String,
        /// A narrower scope, if the user consented to less.
        scope: Option<Vec<String>>,
    },
    /// The login failed or was refused.
    Reject,
}

/// Settles a login challenge once: returns where the app sends the browser. `None` when the
/// challenge is unknown, expired or settled before.
pub async fn settle(
    ctx: &Context<'_>,
    login_challenge: &str,
    decision: Decision,
) -> Result<Option<String>, OAuthError> {
    let store = ctx.issuer.store.as_ref();
    let key = hashed_key("login", login_challenge);
    let Some(read) = store::read::<LoginRecord>(store, &key).await? else {
        return Ok(None);
    };
    if !store.swap(&key, Some(&read.bytes), None, 0).await? {
        return Ok(None);
    }
    let mut record = read.value;
    match decision {
        Decision::Reject => Ok(Some(error_redirect(
            ctx.settings,
            &record.redirect_uri,
            record.state.as_deref(),
            &OAuthError::AccessDenied,
        ))),
        Decision::Accept { subject, scope } => {
            if let Some(scope) = scope {
                record.scope = grant::narrow_scope(Some(&scope), &record.scope)?;
            }
            record.sub = Some(subject);
            let verifier = random_token(32);
            let now = unix_now();
            let resume_key = hashed_key("resume", &verifier);
            if !store::write(store, &resume_key, None, &record, now + RESUME_TTL_SECS).await? {
                return Err(OAuthError::ServerError);
            }
            Ok(Some(client_redirect(
                &ctx.settings.endpoint("/oauth2/authorize/resume"),
                &[("login_verifier", &verifier)],
            )))
        }
    }
}

/// The browser comes back after the app accepted: the code is minted and the browser sent
/// to the client.
pub async fn resume(ctx: &Context<'_>, req: Request<Incoming>) -> Response<ProxyBody> {
    if req.method() != Method::GET {
        return reply::error_page(StatusCode::METHOD_NOT_ALLOWED, "Use GET.");
    }
    let form = Form::parse(req.uri().query().unwrap_or("").as_bytes()).unwrap_or_default();
    let Some(verifier) = form.get("login_verifier") else {
        return reply::error_page(StatusCode::BAD_REQUEST, "The login is unknown or expired.");
    };
    match issue_code(ctx, verifier).await {
        Ok(Some(location)) => reply::redirect(&location),
        Ok(None) => reply::error_page(StatusCode::BAD_REQUEST, "The login is unknown or expired."),
        Err(err) => {
            tracing::error!(error = %err, "cannot finish the authorization");
            reply::error_page(
                StatusCode::SERVICE_UNAVAILABLE,
                "The authorization server is unavailable; try again.",
            )
        }
    }
}

async fn issue_code(ctx: &Context<'_>, verifier: &str) -> Result<Option<String>, OAuthError> {
    let store = ctx.issuer.store.as_ref();
    let key = hashed_key("resume", verifier);
    let Some(read) = store::read::<LoginRecord>(store, &key).await? else {
        return Ok(None);
    };
    if !store.swap(&key, Some(&read.bytes), None, 0).await? {
        return Ok(None);
    }
    let record = read.value;
    let Some(sub) = record.sub.clone() else {
        return Ok(None);
    };
    code_redirect(ctx, &record, sub).await.map(Some)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn redirects_keep_state_byte_for_byte() {
        let url = client_redirect(
            "https://app.example/cb?x=1",
            &[("code", "c"), ("state", "a b&c=d/é")],
        );
        assert_eq!(
            url,
            "https://app.example/cb?x=1&code=c&state=a%20b%26c%3Dd%2F%C3%A9"
        );
        let back =
            super::super::form::Form::parse(url.split_once('?').unwrap().1.as_bytes()).unwrap();
        assert_eq!(back.get("state"), Some("a b&c=d/é"));
    }
}
