//! Step 3: `/oauth2/upstream/{name}/callback` takes the leg once by `state` and checks its
//! binding cookie and the RFC 9207 `iss`; the code is exchanged, the ID token validated
//! ([`crate::upstream::id_token`]) and userinfo cross-checked, then the identity is handed
//! over (Delegate mode) or our code minted (Direct mode).

use bytes::Bytes;
use http::header;
use http::{HeaderMap, Response, StatusCode};
use http_body_util::Full;
use scopegate_core::jose::b64;
use scopegate_core::upstream::{
    IdentityMode, OidcUpstream, UpstreamAuthMethod, UpstreamIdentity, UpstreamIdp, UpstreamKind,
    UserinfoMode,
};
use scopegate_sidecar_kit::body::ProxyBody;
use scopegate_sidecar_kit::unix_now;
use serde_json::{Map, Value};
use subtle::ConstantTimeEq as _;

use crate::error::OAuthError;
use crate::form::{Form, form_encode};
use crate::login;
use crate::store::hashed_key;
use crate::upstream::id_token::{self, Expect, IdTokenError, Validated};
use crate::upstream::{Provider, ProviderError, github, json_request};
use crate::{Context, reply};

use super::identity::{allow, identity, subject_claim};
use super::leg::{Leg, clear_cookie, cookie_name, cookie_value, sha256_b64};
use super::{Failed, Refusal, store_down, take, to_client, unknown_login, upstream_of};

/// `/oauth2/upstream/{name}/callback?code&state&iss` (or `error`).
pub(super) async fn callback(
    ctx: &Context<'_>,
    name: &str,
    form: &Form,
    headers: &HeaderMap,
) -> Result<Response<ProxyBody>, Refusal> {
    let Some(state) = form.get("state") else {
        return Err(unknown_login());
    };
    let leg = checked_leg(ctx, name, state, headers).await?;
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

/// Takes the leg of `state` once, and checks that it was opened for this upstream and in
/// this browser (the binding cookie, compared in constant time).
async fn checked_leg(
    ctx: &Context<'_>,
    name: &str,
    state: &str,
    headers: &HeaderMap,
) -> Result<Leg, Refusal> {
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
    let bound = cookie_value(headers, &cookie_name(state)).is_some_and(|value| {
        bool::from(sha256_b64(value).as_bytes().ct_eq(leg.binding.as_bytes()))
    });
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
    Ok(leg)
}

/// The OIDC callback after the leg is taken: the RFC 9207 check (a refusal without
/// redirect), then the login.
pub(super) async fn oidc_callback(
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
pub(super) fn returned_code(form: &Form) -> Result<&str, Failed> {
    if form.get("error").is_some() {
        return Err(Failed("access_denied", OAuthError::AccessDenied));
    }
    form.get("code")
        .ok_or(Failed("idp_error", OAuthError::AccessDenied))
}

/// The GitHub exchange and API reads, the allow rules and the hand-over.
pub(super) async fn finish_github(
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
        .ok_or_else(upstream_unavailable)?;
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

pub(super) fn read_secret(upstream: &UpstreamIdp) -> Result<String, Failed> {
    let secret = std::fs::read_to_string(&upstream.client_secret_path).map_err(|_| {
        tracing::error!(upstream = %upstream.name, "the upstream client secret file is unreadable");
        Failed("idp_error", OAuthError::ServerError)
    })?;
    Ok(secret.trim_end_matches(['\n', '\r']).to_owned())
}

/// The exchange, validation, rules and hand-over; returns where the browser goes.
pub(super) async fn finish(
    ctx: &Context<'_>,
    upstream: &UpstreamIdp,
    oidc: &OidcUpstream,
    provider: Option<&Provider>,
    leg: &Leg,
    form: &Form,
) -> Result<String, Failed> {
    let code = returned_code(form)?;
    let provider = provider.ok_or_else(upstream_unavailable)?;
    let discovery = provider.discovery().ok_or_else(upstream_unavailable)?;
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
    let now = unix_now();
    let expect = Expect {
        issuer: &oidc.issuer,
        issuer_aliases: &oidc.issuer_aliases,
        client_id: &upstream.client_id,
        nonce: &leg.nonce,
        algorithms: &provider.algorithms(),
        now,
        leeway: ctx.settings.leeway.max(0),
    };
    let mut validated = validate_id_token(provider, id_token, &expect).await?;
    let subject = subject_of(upstream, oidc, &validated)?;
    if wants_userinfo(oidc, &validated) {
        let access_token = tokens.get("access_token").and_then(Value::as_str);
        match (&discovery.userinfo_endpoint, access_token) {
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

/// Why a login cannot go on while the provider's client, discovery or keys are missing.
fn upstream_unavailable() -> Failed {
    Failed(
        "idp_error",
        OAuthError::TemporarilyUnavailable("upstream unavailable"),
    )
}

/// Validates the ID token with the provider's keys. An unknown `kid` waits for one refetch
/// of the keys (at most one per interval, shared by every login) and tries once more.
async fn validate_id_token(
    provider: &Provider,
    id_token: &str,
    expect: &Expect<'_>,
) -> Result<Validated, Failed> {
    let keys = provider.keys().ok_or_else(upstream_unavailable)?;
    match id_token::validate(id_token, &keys.keys(), expect) {
        Err(IdTokenError::UnknownKid) => {}
        other => return Ok(other?),
    }
    // One refetch per interval, shared by every login: a flood of unknown kids cannot make
    // us hammer the provider.
    let Some(mut changed) = keys.refetch_for_unknown_kid() else {
        return Err(IdTokenError::UnknownKid.into());
    };
    let _ = tokio::time::timeout(crate::upstream::REQUEST_TIMEOUT, changed.changed()).await;
    Ok(id_token::validate(id_token, &keys.keys(), expect)?)
}

/// The subject, from the signed ID token (never from userinfo): `sub`, or the configured
/// subject claim.
fn subject_of(
    upstream: &UpstreamIdp,
    oidc: &OidcUpstream,
    validated: &Validated,
) -> Result<String, Failed> {
    if oidc.claims.subject == "sub" {
        return Ok(validated.sub.clone());
    }
    subject_claim(&validated.claims, &oidc.claims.subject).ok_or_else(|| {
        tracing::warn!(upstream = %upstream.name, "the ID token lacks a usable subject claim");
        Failed("invalid_id_token", OAuthError::AccessDenied)
    })
}

/// Whether userinfo is read: always, never, or when the ID token lacks the email claim.
fn wants_userinfo(oidc: &OidcUpstream, validated: &Validated) -> bool {
    match oidc.userinfo {
        UserinfoMode::Never => false,
        UserinfoMode::Always => true,
        UserinfoMode::IfMissing => !validated.claims.contains_key(&oidc.claims.email),
    }
}

/// Hands a vouched-for identity over: a login challenge for the app (Delegate) or our code
/// for `{upstream}:{subject}` (Direct). Returns where the browser goes.
pub(super) async fn hand_over(
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
            login::store_challenge(ctx, &record).await
        }
        IdentityMode::Direct => {
            let allowed = settings.config.identity.direct_scopes_for(&identity);
            record.scope.retain(|s| allowed.contains(s));
            login::code_redirect(ctx, &record, identity.direct_subject()).await
        }
    };
    let location = result.map_err(|err| Failed("idp_error", err))?;
    tracing::info!(upstream = %upstream.name, outcome = "ok", subject = %subject_hash, "upstream login succeeded");
    Ok(location)
}

pub(super) async fn exchange(
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
                format!("Basic {}", b64::encode_standard(pair.as_bytes())),
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

pub(super) async fn userinfo(
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
