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

use bytes::Bytes;
use http::header::{self, HeaderValue};
use http::{HeaderMap, Method, Request, Response, StatusCode};
use http_body_util::Full;
use hyper::body::Incoming;
use scopegate_core::clients::RegisteredClient;
use scopegate_core::upstream::{
    IdentityMode, LOCAL, OidcUpstream, UpstreamAuthMethod, UpstreamIdentity, UpstreamIdp,
    UpstreamKind, UserinfoMode,
};
use scopegate_sidecar_kit::body::{ProxyBody, full};
use scopegate_sidecar_kit::unix_now;
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use super::id_token::{self, Expect, IdTokenError};
use super::{Provider, ProviderError, github, json_request};
use crate::authorize::{self, LOGIN_TTL_SECS, LoginRecord};
use crate::error::OAuthError;
use crate::form::{Form, form_encode};
use crate::limits::{Endpoint, Limiter};
use crate::store::{self, hashed_key};
use crate::{Context, random_token, reply};

/// Paths of this module, after the issuer's path prefix.
pub const PATH_PREFIX: &str = scopegate_core::endpoints::UPSTREAM_PREFIX;
/// How long a leg may take, from the start to the callback.
pub const LEG_TTL_SECS: i64 = 600;
/// Prefix of the browser-binding cookie's name.
pub const COOKIE_PREFIX: &str = "__Host-sg-up-";
/// Longest email, name or group kept from a provider.
const MAX_TEXT: usize = 256;
/// Most groups kept from a provider.
const MAX_GROUPS: usize = 256;
/// The CSP of the chooser page: nothing loads, nothing frames it, forms post to us only.
pub const CHOOSER_CSP: &str =
    "default-src 'none'; form-action 'self'; frame-ancestors 'none'; base-uri 'none'";

/// What `/oauth2/authorize` answers.
pub enum Next {
    /// A redirect of the browser.
    Redirect(String),
    /// A page (the chooser).
    Page(Response<ProxyBody>),
}

/// One open upstream leg, stored under the hash of its `state`.
#[derive(Serialize, Deserialize, Clone, Debug)]
struct Leg {
    request: LoginRecord,
    upstream: String,
    verifier: String,
    nonce: String,
    binding: String,
    created_at: i64,
}

/// The login choices `client_id` may offer, in configuration order, `local` last.
pub fn choices(role: &crate::IssuerSettings, client_id: &str) -> Vec<String> {
    let mut all: Vec<String> = role
        .config
        .upstreams
        .iter()
        .map(|u| u.name.clone())
        .collect();
    if role.config.login_url.is_some() {
        all.push(LOCAL.to_owned());
    }
    if let Some(allowed) = role.upstream_choices.get(client_id) {
        all.retain(|c| allowed.contains(c));
    }
    all
}

/// Whether the request's `upstream` hint (if any) names a login choice the client may offer,
/// and the client has one at all: the checks of [`choose`], before anything is stored.
pub fn check_choice(
    role: &crate::IssuerSettings,
    client_id: &str,
    hint: Option<&str>,
) -> Result<(), OAuthError> {
    if role.config.upstreams.is_empty() {
        return match hint {
            Some(h) if h != LOCAL => Err(OAuthError::InvalidRequest(
                "the upstream is not offered to this client",
            )),
            _ => Ok(()),
        };
    }
    let choices = choices(role, client_id);
    match hint {
        Some(h) if !choices.iter().any(|c| c == h) => Err(OAuthError::InvalidRequest(
            "the upstream is not offered to this client",
        )),
        None if choices.is_empty() => Err(OAuthError::AccessDenied),
        _ => Ok(()),
    }
}

/// Decides where an authorization request goes. `None`: the app's own login (today's path).
pub async fn choose(
    ctx: &Context<'_>,
    client: &RegisteredClient,
    record: &LoginRecord,
    hint: Option<&str>,
) -> Result<Option<Next>, OAuthError> {
    let role = ctx.settings;
    if role.config.upstreams.is_empty() {
        return match hint {
            Some(h) if h != LOCAL => Err(OAuthError::InvalidRequest(
                "the upstream is not offered to this client",
            )),
            _ => Ok(None),
        };
    }
    let choices = choices(role, &client.client_id);
    let chosen = match hint {
        Some(h) if choices.iter().any(|c| c == h) => h.to_owned(),
        Some(_) => {
            return Err(OAuthError::InvalidRequest(
                "the upstream is not offered to this client",
            ));
        }
        None if choices.len() == 1 => choices[0].clone(),
        None if choices.is_empty() => return Err(OAuthError::AccessDenied),
        None => {
            let id = store_request(ctx, record).await?;
            return Ok(Some(Next::Page(chooser(role, &choices, &id))));
        }
    };
    if chosen == LOCAL {
        return Ok(None);
    }
    let id = store_request(ctx, record).await?;
    Ok(Some(Next::Redirect(format!(
        "{}{PATH_PREFIX}{chosen}/start?ar={id}",
        role.public_url
    ))))
}

async fn store_request(ctx: &Context<'_>, record: &LoginRecord) -> Result<String, OAuthError> {
    let id = random_token(32);
    let key = hashed_key("upreq", &id);
    let now = unix_now();
    if !store::write(
        ctx.issuer.store.as_ref(),
        &key,
        None,
        record,
        now + LOGIN_TTL_SECS,
    )
    .await?
    {
        return Err(OAuthError::ServerError);
    }
    authorize::track_pending(ctx, &record.client_id, &key, now + LOGIN_TTL_SECS).await?;
    Ok(id)
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

fn escape_html(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c if c.is_control() => {}
            c => out.push(c),
        }
    }
    out
}

/// The provider chooser: one link per choice, relative to `/oauth2/authorize`.
fn chooser(role: &crate::IssuerSettings, choices: &[String], id: &str) -> Response<ProxyBody> {
    let mut items = String::new();
    for choice in choices {
        let label = if choice == LOCAL {
            "Sign in with your account".to_owned()
        } else {
            let display = role
                .config
                .upstreams
                .iter()
                .find(|u| &u.name == choice)
                .map_or(choice.as_str(), |u| u.display_name.as_str());
            format!("Continue with {display}")
        };
        items.push_str(&format!(
            "<li><a class=\"choice\" id=\"choice-{name}\" href=\"upstream/{name}/start?ar={id}\">{label}</a></li>",
            name = escape_html(choice),
            label = escape_html(&label),
        ));
    }
    let html = format!(
        "<!doctype html><html lang=\"en\"><head><meta charset=\"utf-8\">\
         <meta name=\"viewport\" content=\"width=device-width\"><title>Sign in</title></head>\
         <body><main><h1>Sign in</h1><ul>{items}</ul></main></body></html>"
    );
    let mut response = Response::new(full(html));
    browser_page_headers(response.headers_mut(), CHOOSER_CSP);
    response
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

/// `/oauth2/upstream/{name}/start?ar=…`.
async fn start(ctx: &Context<'_>, name: &str, form: &Form) -> Result<Response<ProxyBody>, Refusal> {
    let Some(id) = form.get("ar") else {
        return Err(unknown_login());
    };
    let record: LoginRecord = take(ctx, "upreq", id)
        .await
        .map_err(store_down)?
        .ok_or_else(unknown_login)?;
    let settings = ctx.settings;
    if !choices(settings, &record.client_id)
        .iter()
        .any(|c| c == name)
    {
        return Ok(to_client(
            ctx,
            &record,
            &OAuthError::InvalidRequest("the upstream is not offered to this client"),
        ));
    }
    if name == LOCAL {
        return Ok(match authorize::store_challenge(ctx, &record).await {
            Ok(location) => reply::redirect(&location),
            Err(err) => to_client(ctx, &record, &err),
        });
    }
    let Some(upstream) = upstream_of(ctx, name) else {
        return Err(unknown_login());
    };
    let state = random_token(32);
    let verifier = random_token(32);
    let nonce = random_token(32);
    let binding = random_token(32);
    let (mut location, mut params): (String, Vec<(&str, String)>) = match &upstream.kind {
        UpstreamKind::Oidc(oidc) => {
            let Some(discovery) = ctx
                .issuer
                .upstreams
                .provider(name)
                .and_then(|p| p.discovery())
            else {
                ctx.issuer.upstreams.count(name, "idp_error");
                tracing::warn!(
                    upstream = name,
                    outcome = "idp_error",
                    "upstream login refused: discovery not loaded"
                );
                return Ok(to_client(
                    ctx,
                    &record,
                    &OAuthError::TemporarilyUnavailable("upstream unavailable"),
                ));
            };
            let mut params = vec![("scope", oidc.scopes.join(" ")), ("nonce", nonce.clone())];
            if let [domain] = oidc.hosted_domains.as_slice() {
                // Only a hint for Google's account picker: the hd claim is what is checked.
                params.push(("hd", domain.clone()));
            }
            (discovery.authorization_endpoint.clone(), params)
        }
        UpstreamKind::Github(gh) => (
            format!("{}/login/oauth/authorize", github::bases(gh).0),
            vec![("scope", github::scopes(gh))],
        ),
    };
    params.extend([
        ("response_type", "code".into()),
        ("client_id", upstream.client_id.clone()),
        ("redirect_uri", upstream.callback_url.clone()),
        ("state", state.clone()),
        ("code_challenge", crate::grant::s256(&verifier)),
        ("code_challenge_method", "S256".into()),
    ]);
    let mut sep = if location.contains('?') { '&' } else { '?' };
    for (name, value) in &params {
        location.push(sep);
        location.push_str(name);
        location.push('=');
        location.push_str(&form_encode(value));
        sep = '&';
    }
    let leg = Leg {
        request: record,
        upstream: name.to_owned(),
        verifier,
        nonce,
        binding: sha256_b64(&binding),
        created_at: unix_now(),
    };
    let key = hashed_key("upleg", &state);
    match store::write(
        ctx.issuer.store.as_ref(),
        &key,
        None,
        &leg,
        leg.created_at + LEG_TTL_SECS,
    )
    .await
    {
        Ok(true) => {}
        Ok(false) => return Err(store_down(OAuthError::ServerError)),
        Err(err) => return Err(store_down(err.into())),
    }
    let expires = leg.created_at + LEG_TTL_SECS;
    if let Err(err) = authorize::track_pending(ctx, &leg.request.client_id, &key, expires).await {
        return Err(store_down(err));
    }
    let mut response = reply::redirect(&location);
    let cookie = format!(
        "{}={binding}; Max-Age={LEG_TTL_SECS}; Path=/; Secure; HttpOnly; SameSite=Lax",
        cookie_name(&state)
    );
    if let Ok(value) = HeaderValue::from_str(&cookie) {
        response.headers_mut().append(header::SET_COOKIE, value);
    }
    tracing::info!(upstream = name, client_id = %leg.request.client_id, "upstream login started");
    Ok(response)
}

fn sha256_b64(text: &str) -> String {
    let digest = aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, text.as_bytes());
    scopegate_core::jose::b64::encode(digest.as_ref())
}

/// The binding cookie's name for a leg: the prefix and 8 characters of the state's hash
/// (the state itself never appears in a cookie).
pub fn cookie_name(state: &str) -> String {
    let hash = sha256_b64(state);
    format!("{COOKIE_PREFIX}{}", &hash[..8])
}

fn clear_cookie(response: &mut Response<ProxyBody>, state: Option<&str>) {
    let Some(state) = state else {
        return;
    };
    let cookie = format!(
        "{}=; Max-Age=0; Path=/; Secure; HttpOnly; SameSite=Lax",
        cookie_name(state)
    );
    if let Ok(value) = HeaderValue::from_str(&cookie) {
        response.headers_mut().append(header::SET_COOKIE, value);
    }
}

fn cookie_value<'a>(headers: &'a HeaderMap, name: &str) -> Option<&'a str> {
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|pair| pair.trim().split_once('='))
        .find(|(n, _)| *n == name)
        .map(|(_, v)| v)
}

/// Sends the browser back to the client with an error (the request is known and its
/// redirect URI registered).
fn to_client(ctx: &Context<'_>, record: &LoginRecord, err: &OAuthError) -> Response<ProxyBody> {
    reply::redirect(&authorize::error_redirect(
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

/// `/oauth2/upstream/{name}/callback?code&state&iss` (or `error`).
async fn callback(
    ctx: &Context<'_>,
    name: &str,
    form: &Form,
    headers: &HeaderMap,
) -> Result<Response<ProxyBody>, Refusal> {
    let Some(state) = form.get("state") else {
        return Err(unknown_login());
    };
    let leg: Leg = take(ctx, "upleg", state)
        .await
        .map_err(store_down)?
        .ok_or_else(|| {
            tracing::warn!(
                upstream = name,
                outcome = "state_unknown",
                "upstream callback with an unknown, expired or used state"
            );
            unknown_login()
        })?;
    if leg.upstream != name {
        tracing::warn!(upstream = name, opened_for = %leg.upstream, outcome = "mixup", "upstream callback on another upstream's path");
        return Err(Refusal::Page(
            StatusCode::BAD_REQUEST,
            "The login response came back on the wrong path.",
            Some("mixup"),
        ));
    }
    let bound = cookie_value(headers, &cookie_name(state))
        .is_some_and(|value| constant_eq(&sha256_b64(value), &leg.binding));
    if !bound {
        tracing::warn!(
            upstream = name,
            outcome = "binding",
            "upstream callback without this browser's binding cookie"
        );
        return Err(Refusal::Page(
            StatusCode::BAD_REQUEST,
            "The login was started in another browser; start again from the application.",
            Some("binding"),
        ));
    }
    let Some(upstream) = upstream_of(ctx, name) else {
        return Err(unknown_login());
    };
    let record = leg.request.clone();
    let work = async {
        match &upstream.kind {
            UpstreamKind::Oidc(oidc) => oidc_callback(ctx, name, upstream, oidc, &leg, form).await,
            UpstreamKind::Github(gh) => Ok(finish_github(ctx, upstream, gh, &leg, form).await),
        }
    };
    let deadline = std::time::Duration::from_millis(ctx.issuer.tuning.login_deadline_ms);
    let finished = match tokio::time::timeout(deadline, work).await {
        Ok(finished) => finished?,
        Err(_) => {
            tracing::warn!(
                upstream = name,
                outcome = "timeout",
                "upstream login exceeded its deadline"
            );
            Err(Failed(
                "timeout",
                OAuthError::TemporarilyUnavailable("upstream unavailable"),
            ))
        }
    };
    let mut response = match finished {
        Ok(location) => {
            ctx.issuer.upstreams.count(name, "ok");
            reply::redirect(&location)
        }
        Err(Failed(outcome, err)) => {
            ctx.issuer.upstreams.count(name, outcome);
            tracing::warn!(upstream = name, outcome, client_id = %record.client_id, "upstream login failed");
            to_client(ctx, &record, &err)
        }
    };
    clear_cookie(&mut response, Some(state));
    Ok(response)
}

/// The OIDC callback after the leg is taken: the RFC 9207 check (a refusal without
/// redirect), then the login.
async fn oidc_callback(
    ctx: &Context<'_>,
    name: &str,
    upstream: &UpstreamIdp,
    oidc: &OidcUpstream,
    leg: &Leg,
    form: &Form,
) -> Result<Result<String, Failed>, Refusal> {
    let provider = ctx.issuer.upstreams.provider(name);
    let discovery = provider.as_ref().and_then(|p| p.discovery());
    // RFC 9207: an iss parameter must name the provider; a provider that promises it must send it.
    match form.get("iss") {
        Some(iss) if iss != oidc.issuer => {
            tracing::warn!(
                upstream = name,
                outcome = "mixup",
                "upstream callback names another issuer (RFC 9207)"
            );
            return Err(Refusal::Page(
                StatusCode::BAD_REQUEST,
                "The login response came from another provider.",
                Some("mixup"),
            ));
        }
        None if discovery
            .as_ref()
            .is_some_and(|d| d.authorization_response_iss_parameter_supported) =>
        {
            tracing::warn!(
                upstream = name,
                outcome = "mixup",
                "upstream callback without the iss its provider promises (RFC 9207)"
            );
            return Err(Refusal::Page(
                StatusCode::BAD_REQUEST,
                "The login response came from another provider.",
                Some("mixup"),
            ));
        }
        _ => {}
    }
    Ok(finish(ctx, upstream, oidc, provider.as_deref(), leg, form).await)
}

/// The code a provider returned, or why there is none (the user declined: `error`).
fn returned_code(form: &Form) -> Result<&str, Failed> {
    if form.get("error").is_some() {
        return Err(Failed("access_denied", OAuthError::AccessDenied));
    }
    form.get("code")
        .ok_or(Failed("idp_error", OAuthError::AccessDenied))
}

/// The GitHub exchange and API reads, the allow rules and the hand-over.
async fn finish_github(
    ctx: &Context<'_>,
    upstream: &UpstreamIdp,
    gh: &scopegate_core::upstream::GithubUpstream,
    leg: &Leg,
    form: &Form,
) -> Result<String, Failed> {
    let code = returned_code(form)?;
    let client = ctx
        .issuer
        .upstreams
        .github_client(&upstream.name)
        .ok_or(Failed(
            "idp_error",
            OAuthError::TemporarilyUnavailable("upstream unavailable"),
        ))?;
    let secret = read_secret(upstream)?;
    let now = unix_now();
    let identity = github::login(&client, upstream, gh, &secret, code, &leg.verifier, now)
        .await
        .map_err(|err| match err {
            github::GithubError::Provider(err) => {
                tracing::warn!(upstream = %upstream.name, error = %err, "GitHub request failed");
                Failed::from(err)
            }
            github::GithubError::Refused => Failed("idp_error", OAuthError::AccessDenied),
            github::GithubError::DeniedOrg => Failed("denied_org", OAuthError::AccessDenied),
        })?;
    allow(upstream, &[], &identity)?;
    hand_over(ctx, upstream, leg, identity, now).await
}

fn read_secret(upstream: &UpstreamIdp) -> Result<String, Failed> {
    let secret = std::fs::read_to_string(&upstream.client_secret_path).map_err(|_| {
        tracing::error!(upstream = %upstream.name, "the upstream client secret file is unreadable");
        Failed("idp_error", OAuthError::ServerError)
    })?;
    Ok(secret.trim_end_matches(['\n', '\r']).to_owned())
}

fn constant_eq(a: &str, b: &str) -> bool {
    a.len() == b.len()
        && aws_lc_rs::constant_time::verify_slices_are_equal(a.as_bytes(), b.as_bytes()).is_ok()
}

/// The exchange, validation, rules and hand-over; returns where the browser goes.
async fn finish(
    ctx: &Context<'_>,
    upstream: &UpstreamIdp,
    oidc: &OidcUpstream,
    provider: Option<&Provider>,
    leg: &Leg,
    form: &Form,
) -> Result<String, Failed> {
    let code = returned_code(form)?;
    let provider = provider.ok_or(Failed(
        "idp_error",
        OAuthError::TemporarilyUnavailable("upstream unavailable"),
    ))?;
    let discovery = provider.discovery().ok_or(Failed(
        "idp_error",
        OAuthError::TemporarilyUnavailable("upstream unavailable"),
    ))?;
    let secret = read_secret(upstream)?;
    let tokens = exchange(
        provider,
        &discovery.token_endpoint,
        upstream,
        oidc,
        &secret,
        code,
        &leg.verifier,
    )
    .await?;
    if tokens.contains_key("error") {
        return Err(Failed("idp_error", OAuthError::AccessDenied));
    }
    let id_token = tokens
        .get("id_token")
        .and_then(Value::as_str)
        .ok_or(Failed("invalid_id_token", OAuthError::AccessDenied))?;
    let algorithms = provider.algorithms();
    let now = unix_now();
    let expect = Expect {
        issuer: &oidc.issuer,
        issuer_aliases: &oidc.issuer_aliases,
        client_id: &upstream.client_id,
        nonce: &leg.nonce,
        algorithms: &algorithms,
        now,
        leeway: ctx.settings.leeway.max(0),
    };
    let keys = provider.keys().ok_or(Failed(
        "idp_error",
        OAuthError::TemporarilyUnavailable("upstream unavailable"),
    ))?;
    let mut validated = match id_token::validate(id_token, &keys.keys(), &expect) {
        Err(IdTokenError::UnknownKid) => {
            // One refetch per interval, shared by every login: a flood of unknown kids
            // cannot make us hammer the provider.
            match keys.refetch_for_unknown_kid() {
                Some(mut changed) => {
                    let _ = tokio::time::timeout(super::REQUEST_TIMEOUT, changed.changed()).await;
                    id_token::validate(id_token, &keys.keys(), &expect)?
                }
                None => return Err(IdTokenError::UnknownKid.into()),
            }
        }
        other => other?,
    };
    // The subject comes from the signed ID token, never from userinfo.
    let subject = if oidc.claims.subject == "sub" {
        validated.sub.clone()
    } else {
        subject_claim(&validated.claims, &oidc.claims.subject).ok_or_else(|| {
            tracing::warn!(upstream = %upstream.name, "the ID token lacks a usable subject claim");
            Failed("invalid_id_token", OAuthError::AccessDenied)
        })?
    };
    let wants_userinfo = match oidc.userinfo {
        UserinfoMode::Never => false,
        UserinfoMode::Always => true,
        UserinfoMode::IfMissing => !validated.claims.contains_key(&oidc.claims.email),
    };
    if wants_userinfo {
        match (
            &discovery.userinfo_endpoint,
            tokens.get("access_token").and_then(Value::as_str),
        ) {
            (Some(endpoint), Some(access_token)) => {
                let info = userinfo(provider, endpoint, access_token).await?;
                id_token::merge_userinfo(&mut validated, info)?;
            }
            _ if oidc.userinfo == UserinfoMode::Always => {
                return Err(Failed("idp_error", OAuthError::AccessDenied));
            }
            _ => {}
        }
    }
    drop(tokens);
    let identity = identity(&upstream.name, oidc, subject, &validated, now);
    allow(upstream, &oidc.hosted_domains, &identity)?;
    hand_over(ctx, upstream, leg, identity, now).await
}

/// Hands a vouched-for identity over: a login challenge for the app (Delegate) or our code
/// for `{upstream}:{subject}` (Direct). Returns where the browser goes.
async fn hand_over(
    ctx: &Context<'_>,
    upstream: &UpstreamIdp,
    leg: &Leg,
    identity: UpstreamIdentity,
    now: i64,
) -> Result<String, Failed> {
    let settings = ctx.settings;
    let mut record = leg.request.clone();
    if let Some(max) = settings.config.identity.max_upstream_age_secs {
        let max = i64::try_from(max).unwrap_or(i64::MAX);
        record.family_until = Some(identity.authenticated_at.min(now).saturating_add(max));
    }
    let mut identity = identity;
    identity.email_authoritative = upstream.is_email_authority(&identity);
    let subject_hash = hashed_key("sub", &identity.direct_subject());
    let result = match settings.config.identity.mode {
        IdentityMode::Delegate => {
            record.upstream = Some(identity);
            authorize::store_challenge(ctx, &record).await
        }
        IdentityMode::Direct => {
            let allowed = settings.config.identity.direct_scopes_for(&identity);
            record.scope.retain(|s| allowed.contains(s));
            authorize::code_redirect(ctx, &record, identity.direct_subject()).await
        }
    };
    let location = result.map_err(|err| Failed("idp_error", err))?;
    tracing::info!(upstream = %upstream.name, outcome = "ok", subject = %subject_hash, "upstream login succeeded");
    Ok(location)
}

/// Standard base64 with padding (HTTP Basic).
fn base64_standard(bytes: &[u8]) -> String {
    const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::with_capacity(bytes.len().div_ceil(3) * 4);
    for chunk in bytes.chunks(3) {
        let b = [
            chunk[0],
            *chunk.get(1).unwrap_or(&0),
            *chunk.get(2).unwrap_or(&0),
        ];
        let n = (u32::from(b[0]) << 16) | (u32::from(b[1]) << 8) | u32::from(b[2]);
        for i in 0..4 {
            if i <= chunk.len() {
                out.push(char::from(ALPHABET[((n >> (18 - 6 * i)) & 63) as usize]));
            } else {
                out.push('=');
            }
        }
    }
    out
}

async fn exchange(
    provider: &Provider,
    token_endpoint: &str,
    upstream: &UpstreamIdp,
    oidc: &OidcUpstream,
    secret: &str,
    code: &str,
    verifier: &str,
) -> Result<Map<String, Value>, Failed> {
    let mut body = format!(
        "grant_type=authorization_code&code={}&redirect_uri={}&code_verifier={}",
        form_encode(code),
        form_encode(&upstream.callback_url),
        form_encode(verifier)
    );
    let mut request = http::Request::post(token_endpoint)
        .header(header::CONTENT_TYPE, "application/x-www-form-urlencoded")
        .header(header::ACCEPT, "application/json");
    match oidc.token_endpoint_auth_method {
        UpstreamAuthMethod::ClientSecretBasic => {
            let pair = format!(
                "{}:{}",
                form_encode(&upstream.client_id),
                form_encode(secret)
            );
            request = request.header(
                header::AUTHORIZATION,
                format!("Basic {}", base64_standard(pair.as_bytes())),
            );
        }
        UpstreamAuthMethod::ClientSecretPost => {
            body.push_str(&format!(
                "&client_id={}&client_secret={}",
                form_encode(&upstream.client_id),
                form_encode(secret)
            ));
        }
    }
    let request = request
        .body(Full::new(Bytes::from(body)))
        .map_err(|_| Failed("idp_error", OAuthError::ServerError))?;
    // A refused code comes back as 400 with an error body: both are failures.
    json_request(&provider.client, request).await.map_err(|err| {
        tracing::warn!(upstream = %upstream.name, error = %err, "upstream token exchange failed");
        match err {
            ProviderError::Status => Failed("idp_error", OAuthError::AccessDenied),
            other => other.into(),
        }
    })
}

async fn userinfo(
    provider: &Provider,
    endpoint: &str,
    access_token: &str,
) -> Result<Map<String, Value>, Failed> {
    let request = http::Request::get(endpoint)
        .header(header::ACCEPT, "application/json")
        .header(header::AUTHORIZATION, format!("Bearer {access_token}"))
        .body(Full::new(Bytes::new()))
        .map_err(|_| Failed("idp_error", OAuthError::ServerError))?;
    json_request(&provider.client, request)
        .await
        .map_err(|err| {
            tracing::warn!(error = %err, "upstream userinfo failed");
            err.into()
        })
}

fn text(claims: &Map<String, Value>, name: &str) -> Option<String> {
    claims
        .get(name)
        .and_then(Value::as_str)
        .filter(|s| !s.is_empty() && s.len() <= MAX_TEXT)
        .map(|s| s.chars().filter(|c| !c.is_control()).collect())
}

/// A subject from a configured claim: a string of at most 255 characters that a header carries
/// unchanged ([`scopegate_core::names::is_identity_value`]), taken as it is (never cleaned up:
/// two keys must never become one).
fn subject_claim(claims: &Map<String, Value>, name: &str) -> Option<String> {
    claims
        .get(name)
        .and_then(Value::as_str)
        .filter(|s| s.len() <= 255 && scopegate_core::names::is_identity_value(s))
        .map(str::to_owned)
}

/// The normalised identity of a validated login.
fn identity(
    upstream: &str,
    oidc: &OidcUpstream,
    subject: String,
    validated: &id_token::Validated,
    now: i64,
) -> UpstreamIdentity {
    let claims = &validated.claims;
    let names = &oidc.claims;
    let groups = match claims.get(&oidc.groups_claim) {
        Some(Value::Array(list)) => list
            .iter()
            .filter_map(Value::as_str)
            .filter(|g| !g.is_empty() && g.len() <= MAX_TEXT)
            .take(MAX_GROUPS)
            .map(str::to_owned)
            .collect(),
        _ => Vec::new(),
    };
    UpstreamIdentity {
        upstream: upstream.to_owned(),
        subject,
        email: text(claims, &names.email),
        email_verified: id_token::email_verified(
            claims,
            &names.email_verified,
            oidc.trust_unverified_email,
        ),
        email_authoritative: false,
        name: text(claims, &names.name),
        username: text(claims, &names.username),
        groups,
        hosted_domain: text(claims, "hd"),
        authenticated_at: claims
            .get("auth_time")
            .and_then(Value::as_i64)
            .unwrap_or(now),
    }
}

/// The allow rules: hosted domain, verified email domain, groups.
fn allow(
    upstream: &UpstreamIdp,
    hosted_domains: &[String],
    identity: &UpstreamIdentity,
) -> Result<(), Failed> {
    let denied = |outcome| Failed(outcome, OAuthError::AccessDenied);
    if !hosted_domains.is_empty()
        && !identity
            .hosted_domain
            .as_ref()
            .is_some_and(|hd| hosted_domains.iter().any(|d| d.eq_ignore_ascii_case(hd)))
    {
        return Err(denied("denied_domain"));
    }
    let rules = &upstream.allow;
    if !rules.email_domains.is_empty() {
        let Some(email) = identity.email.as_deref() else {
            return Err(denied("denied_domain"));
        };
        if !identity.email_verified {
            return Err(denied("email_unverified"));
        }
        let domain = email.rsplit_once('@').map_or("", |(_, d)| d);
        if !rules
            .email_domains
            .iter()
            .any(|d| d.eq_ignore_ascii_case(domain))
        {
            return Err(denied("denied_domain"));
        }
    }
    if !rules.groups.is_empty() && !identity.groups.iter().any(|g| rules.groups.contains(g)) {
        return Err(denied("denied_group"));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use scopegate_core::upstream as names;

    #[test]
    fn basic_credentials_use_padded_standard_base64() {
        assert_eq!(base64_standard(b"a"), "YQ==");
        assert_eq!(base64_standard(b"ab"), "YWI=");
        assert_eq!(base64_standard(b"abc"), "YWJj");
        assert_eq!(base64_standard(b"\xfb\xff"), "+/8=");
    }

    #[test]
    fn chooser_text_is_escaped() {
        assert_eq!(
            escape_html("<b>\"x\"&'y'</b>\u{7}"),
            "&lt;b&gt;&quot;x&quot;&amp;&#39;y&#39;&lt;/b&gt;"
        );
    }

    #[test]
    fn cookie_is_found_among_others_and_names_hide_the_state() {
        let mut headers = HeaderMap::new();
        headers.append(
            header::COOKIE,
            HeaderValue::from_static("a=1; __Host-sg-up-abcdefgh=v1"),
        );
        headers.append(header::COOKIE, HeaderValue::from_static("b=2"));
        assert_eq!(cookie_value(&headers, "__Host-sg-up-abcdefgh"), Some("v1"));
        assert_eq!(cookie_value(&headers, "b"), Some("2"));
        assert_eq!(cookie_value(&headers, "c"), None);
        let name = cookie_name("some-state");
        assert!(name.starts_with(COOKIE_PREFIX) && !name.contains("some-state"));
        assert_ne!(cookie_name("s1"), cookie_name("s2"));
    }

    fn oidc(hosted: &[&str]) -> OidcUpstream {
        OidcUpstream {
            issuer: "https://idp".into(),
            issuer_aliases: vec![],
            scopes: vec!["openid".into()],
            algorithms: vec![],
            userinfo: UserinfoMode::Never,
            token_endpoint_auth_method: UpstreamAuthMethod::ClientSecretBasic,
            hosted_domains: hosted.iter().map(|s| (*s).to_owned()).collect(),
            groups_claim: "groups".into(),
            claims: names::ClaimNames::default(),
            trust_unverified_email: names::TrustUnverifiedEmail::Never,
        }
    }

    fn upstream(domains: &[&str], groups: &[&str]) -> UpstreamIdp {
        UpstreamIdp {
            name: "google".into(),
            display_name: "Google".into(),
            client_id: "c".into(),
            client_secret_path: "/x".into(),
            callback_url: "https://a/oauth2/upstream/google/callback".into(),
            ca_bundle_pem: None,
            kind: UpstreamKind::Oidc(Box::new(oidc(&[]))),
            allow: names::AllowRules {
                email_domains: domains.iter().map(|s| (*s).to_owned()).collect(),
                groups: groups.iter().map(|s| (*s).to_owned()).collect(),
            },
            authoritative_email_domains: vec![],
        }
    }

    fn person(
        email: Option<&str>,
        verified: bool,
        hd: Option<&str>,
        groups: &[&str],
    ) -> UpstreamIdentity {
        UpstreamIdentity {
            upstream: "google".into(),
            subject: "1".into(),
            email: email.map(str::to_owned),
            email_verified: verified,
            email_authoritative: false,
            name: None,
            username: None,
            groups: groups.iter().map(|s| (*s).to_owned()).collect(),
            hosted_domain: hd.map(str::to_owned),
            authenticated_at: 0,
        }
    }

    fn outcome(r: Result<(), Failed>) -> &'static str {
        r.err().map_or("ok", |f| f.0)
    }

    #[test]
    fn allow_rules() {
        let open = upstream(&[], &[]);
        assert_eq!(
            outcome(allow(
                &open,
                &oidc(&[]).hosted_domains,
                &person(None, false, None, &[])
            )),
            "ok"
        );
        // Hosted domain: the claim, not the email.
        let hd = oidc(&["shop.example"]);
        assert_eq!(
            outcome(allow(
                &open,
                &hd.hosted_domains,
                &person(Some("a@shop.example"), true, None, &[])
            )),
            "denied_domain"
        );
        assert_eq!(
            outcome(allow(
                &open,
                &hd.hosted_domains,
                &person(None, false, Some("evil.example"), &[])
            )),
            "denied_domain"
        );
        assert_eq!(
            outcome(allow(
                &open,
                &hd.hosted_domains,
                &person(None, false, Some("shop.example"), &[])
            )),
            "ok"
        );
        // Email domains: verified only.
        let mail = upstream(&["shop.example"], &[]);
        assert_eq!(
            outcome(allow(
                &mail,
                &oidc(&[]).hosted_domains,
                &person(Some("a@shop.example"), false, None, &[])
            )),
            "email_unverified"
        );
        assert_eq!(
            outcome(allow(
                &mail,
                &oidc(&[]).hosted_domains,
                &person(Some("a@evil.example"), true, None, &[])
            )),
            "denied_domain"
        );
        assert_eq!(
            outcome(allow(
                &mail,
                &oidc(&[]).hosted_domains,
                &person(Some("a@shop.example.evil"), true, None, &[])
            )),
            "denied_domain"
        );
        assert_eq!(
            outcome(allow(
                &mail,
                &oidc(&[]).hosted_domains,
                &person(None, true, None, &[])
            )),
            "denied_domain"
        );
        assert_eq!(
            outcome(allow(
                &mail,
                &oidc(&[]).hosted_domains,
                &person(Some("a@SHOP.example"), true, None, &[])
            )),
            "ok"
        );
        // Groups.
        let eng = upstream(&[], &["eng"]);
        assert_eq!(
            outcome(allow(
                &eng,
                &oidc(&[]).hosted_domains,
                &person(None, false, None, &["sales"])
            )),
            "denied_group"
        );
        assert_eq!(
            outcome(allow(
                &eng,
                &oidc(&[]).hosted_domains,
                &person(None, false, None, &["sales", "eng"])
            )),
            "ok"
        );
    }
}
