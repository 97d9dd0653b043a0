//! The browser's way through an upstream provider.
//!
//! 1. `/oauth2/authorize` (checked as always) picks the login choices this client may offer:
//!    the `upstream=` hint, the only choice, or a server-rendered chooser page (no script,
//!    `default-src 'none'`). The request waits in the store under a one-time id.
//! 2. `/oauth2/upstream/{name}/start?ar=…` takes the request and opens a leg: a fresh
//!    `state`, `nonce` and PKCE S256 verifier, and a random browser-binding value whose hash
//!    is stored with the leg and whose value goes into a `__Host-` cookie named after the
//!    state (two tabs do not collide). The browser goes to the provider.
//! 3. `/oauth2/upstream/{name}/callback` takes the leg once by `state`; a leg opened for
//!    another upstream is a mix-up, a missing or wrong cookie a binding failure (both 400, no
//!    redirect). The RFC 9207 `iss` must be the provider's. The code is exchanged, the ID
//!    token validated ([`super::id_token`]), userinfo cross-checked, allow rules applied, and
//!    then Delegate mode hands the identity to the app with a login challenge, Direct mode
//!    mints our code for `{upstream}:{subject}`.
//!
//! Codes, tokens, `state`, the nonce and the cookie never reach a log; the provider's tokens
//! are dropped when the callback returns.

mod callback;
mod chooser;
mod identity;
mod leg;

use http::header::{self, HeaderValue};
use http::{HeaderMap, Method, Request, Response, StatusCode};
use hyper::body::Incoming;
use scopegate_core::upstream::UpstreamIdp;
use scopegate_sidecar_kit::body::ProxyBody;

use crate::error::OAuthError;
use crate::form::Form;
use crate::limits::{Endpoint, Limiter};
use crate::login::{self, LoginRecord};
use crate::store::{self, hashed_key};
use crate::upstream::ProviderError;
use crate::upstream::id_token::IdTokenError;
use crate::{Context, reply};

use self::callback::callback;
pub use self::chooser::{check_choice, choose};
use self::leg::{clear_cookie, start};

/// Paths of this module, after the issuer's path prefix.
pub const PATH_PREFIX: &str = scopegate_core::endpoints::UPSTREAM_PREFIX;
/// How long a leg may take, from the start to the callback.
pub const LEG_TTL_SECS: i64 = 600;
/// Prefix of the browser-binding cookie's name.
pub const COOKIE_PREFIX: &str = "__Host-sg-up-";

/// What `/oauth2/authorize` answers.
pub enum Next {
    /// A redirect of the browser.
    Redirect(String),
    /// A page (the chooser).
    Page(Response<ProxyBody>),
}

/// Takes a one-time record: read and delete, or `None` when unknown or taken by another.
async fn take<T: serde::de::DeserializeOwned>(
    ctx: &Context<'_>,
    kind: &str,
    secret: &str,
) -> Result<Option<T>, OAuthError> {
    let store = ctx.issuer.store.as_ref();
    let key = hashed_key(kind, secret);
    let Some(read) = store::read::<T>(store, &key).await? else {
        return Ok(None);
    };
    if !store.swap(&key, Some(&read.bytes), None, 0).await? {
        return Ok(None);
    }
    Ok(Some(read.value))
}

fn browser_page_headers(headers: &mut HeaderMap, csp: &'static str) {
    headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/html; charset=utf-8"),
    );
    headers.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(csp),
    );
    headers.insert(header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
    headers.insert(
        header::REFERRER_POLICY,
        HeaderValue::from_static("no-referrer"),
    );
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    headers.insert(header::PRAGMA, HeaderValue::from_static("no-cache"));
}

/// Answers `/oauth2/upstream/{rest}`.
pub async fn handle(ctx: &Context<'_>, req: Request<Incoming>, rest: &str) -> Response<ProxyBody> {
    if req.method() != Method::GET {
        return reply::error_page(StatusCode::METHOD_NOT_ALLOWED, "Use GET.");
    }
    let Some((name, action)) = rest.split_once('/') else {
        return reply::status(StatusCode::NOT_FOUND);
    };
    if action != "start" && action != "callback" {
        return reply::status(StatusCode::NOT_FOUND);
    }
    let limiter = Limiter::new(
        ctx.issuer.store.as_ref(),
        ctx.issuer.tuning.limits,
        Endpoint::Authorize,
        ctx.client_ip,
    );
    if limiter.before().await.is_err() {
        return reply::error_page(
            StatusCode::TOO_MANY_REQUESTS,
            "Too many requests; try again later.",
        );
    }
    let form = Form::parse(req.uri().query().unwrap_or("").as_bytes()).unwrap_or_default();
    let answer = if action == "start" {
        start(ctx, name, &form).await
    } else {
        callback(ctx, name, &form, req.headers()).await
    };
    match answer {
        Ok(response) => response,
        Err(Refusal::Page(status, text, outcome)) => {
            if let Some(outcome) = outcome {
                ctx.issuer.upstreams.count(name, outcome);
            }
            let _ = limiter.failed(None, OAuthError::InvalidRequest("")).await;
            let mut page = reply::error_page(status, text);
            clear_cookie(&mut page, form.get("state"));
            page
        }
    }
}

/// A refusal without redirect: status, fixed text, outcome label.
enum Refusal {
    Page(StatusCode, &'static str, Option<&'static str>),
}

fn unknown_login() -> Refusal {
    Refusal::Page(
        StatusCode::BAD_REQUEST,
        "The login is unknown or expired; start again from the application.",
        Some("state_unknown"),
    )
}

fn store_down(err: OAuthError) -> Refusal {
    tracing::error!(error = %err, "upstream login: store unavailable");
    Refusal::Page(
        StatusCode::SERVICE_UNAVAILABLE,
        "The authorization server is unavailable; try again.",
        None,
    )
}

fn upstream_of<'a>(ctx: &'a Context<'_>, name: &str) -> Option<&'a UpstreamIdp> {
    ctx.settings
        .config
        .upstreams
        .iter()
        .find(|u| u.name == name)
}

/// Sends the browser back to the client with an error (the request is known and its
/// redirect URI registered).
fn to_client(ctx: &Context<'_>, record: &LoginRecord, err: &OAuthError) -> Response<ProxyBody> {
    reply::redirect(&login::error_redirect(
        ctx.settings,
        &record.redirect_uri,
        record.state.as_deref(),
        err,
    ))
}

/// Why a login failed after the leg was taken: the outcome label, and what the client hears.
struct Failed(&'static str, OAuthError);

impl From<IdTokenError> for Failed {
    fn from(err: IdTokenError) -> Self {
        tracing::warn!(reason = %err, "upstream ID token refused");
        Failed("invalid_id_token", OAuthError::AccessDenied)
    }
}

impl From<ProviderError> for Failed {
    fn from(err: ProviderError) -> Self {
        Failed(
            err.outcome(),
            OAuthError::TemporarilyUnavailable("upstream unavailable"),
        )
    }
}
