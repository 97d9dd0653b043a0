//! A pending login: the record an authorization request leaves (under a one-time login
//! challenge, an upstream leg's request, or a resume verifier), the bound on how many an
//! address may leave, and the redirects that send the browser back to the client. Used by
//! `/oauth2/authorize` and by the upstream providers' flow alike.

use scopegate_sidecar_kit::unix_now;
use serde::{Deserialize, Serialize};

use crate::codes::CodeRecord;
use crate::error::OAuthError;
use crate::limits::address_key;
use crate::store::{self, MAX_SWAP_ATTEMPTS, hashed_key};
use crate::{Context, IssuerSettings, random_token};

/// How long a login may take, from the authorization request to the accepted challenge.
pub const LOGIN_TTL_SECS: i64 = 600;

/// A pending authorization request, as stored under its challenge (and, once accepted,
/// under its resume verifier with the subject filled in).
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
pub struct LoginRecord {
    /// The client.
    pub client_id: String,
    /// The redirect URI, exactly as requested (the client's only registered one when the
    /// request named none).
    pub redirect_uri: String,
    /// The request named no redirect URI (RFC 6749 §4.1.3: then the token request need not).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub redirect_uri_omitted: bool,
    /// The scope the client will get.
    pub scope: Vec<String>,
    /// Audiences of the tokens.
    pub audiences: Vec<String>,
    /// `state`, untouched.
    pub state: Option<String>,
    /// The PKCE S256 challenge.
    pub challenge: String,
    /// When the request came.
    pub created_at: i64,
    /// The subject, once the app accepted.
    pub sub: Option<String>,
    /// The identity an upstream provider vouched for (Delegate mode), for the app to read.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub upstream: Option<scopegate_core::upstream::UpstreamIdentity>,
    /// The latest end of the refresh family this login may start (`maxUpstreamAge` after an
    /// upstream login).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub family_until: Option<i64>,
}

/// Where the client is sent back to, with these parameters.
pub fn client_redirect(redirect_uri: &str, params: &[(&str, &str)]) -> String {
    crate::form::with_query(redirect_uri, params)
}

/// The client's redirect URI with an RFC 6749 §4.1.2.1 error, `state` and `iss`.
pub fn error_redirect(
    settings: &IssuerSettings,
    redirect_uri: &str,
    state: Option<&str>,
    err: &OAuthError,
) -> String {
    let mut params = vec![
        ("error", err.code()),
        ("error_description", err.description()),
    ];
    if let Some(state) = state {
        params.push(("state", state));
    }
    params.push(("iss", &settings.config.url));
    client_redirect(redirect_uri, &params)
}

/// Counts a stored record (a pending login of `client_id`) against the caller's address and
/// evicts the oldest beyond the bounds, that address's own first, so that a flood of
/// authorization requests can neither grow the store without limit nor push out other
/// callers' logins.
pub async fn track_pending(
    ctx: &Context<'_>,
    client_id: &str,
    key: &str,
    expires_at: i64,
) -> Result<(), OAuthError> {
    let ms = u64::try_from(expires_at.max(0))
        .unwrap_or(0)
        .saturating_mul(1000);
    let evicted = ctx
        .issuer
        .store
        .track_pending(
            &address_key(ctx.client_ip),
            key,
            ms,
            ctx.issuer.tuning.pending_logins,
        )
        .await?;
    if evicted > 0 {
        ctx.issuer.counters.pending_logins_evicted.fetch_add(
            u64::try_from(evicted).unwrap_or(u64::MAX),
            std::sync::atomic::Ordering::Relaxed,
        );
        tracing::warn!(
            client_id,
            evicted,
            "pending logins over their bound; the oldest evicted"
        );
    }
    Ok(())
}

/// Stores `record` under a fresh login challenge and names the app's login URL with it.
pub async fn store_challenge(
    ctx: &Context<'_>,
    record: &LoginRecord,
) -> Result<String, OAuthError> {
    let login_url =
        ctx.settings
            .config
            .login_url
            .as_deref()
            .ok_or(OAuthError::TemporarilyUnavailable(
                "no login URL is configured",
            ))?;
    let now = unix_now();
    let login_challenge = random_token(32);
    let key = hashed_key("login", &login_challenge);
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
    track_pending(ctx, &record.client_id, &key, now + LOGIN_TTL_SECS).await?;
    Ok(client_redirect(
        login_url,
        &[("login_challenge", &login_challenge)],
    ))
}

/// Mints a code for `record` on behalf of `sub` and names the client's redirect with it.
pub async fn code_redirect(
    ctx: &Context<'_>,
    record: &LoginRecord,
    sub: String,
) -> Result<String, OAuthError> {
    let store = ctx.issuer.store.as_ref();
    let now = unix_now();
    let ttl = i64::try_from(ctx.settings.config.code_ttl_secs)
        .unwrap_or(600)
        .min(600);
    let code_record = CodeRecord {
        client_id: record.client_id.clone(),
        redirect_uri: record.redirect_uri.clone(),
        redirect_uri_omitted: record.redirect_uri_omitted,
        scope: record.scope.clone(),
        audiences: record.audiences.clone(),
        challenge: record.challenge.clone(),
        sub,
        issued_at: now,
        expires_at: now + ttl,
        redeemed: None,
        family_until: record.family_until,
    };
    for _ in 0..MAX_SWAP_ATTEMPTS {
        let code = random_token(32);
        let code_key = hashed_key("code", &code);
        if store::write(store, &code_key, None, &code_record, now + ttl).await? {
            let mut params = vec![("code", code.as_str())];
            if let Some(state) = &record.state {
                params.push(("state", state));
            }
            params.push(("iss", &ctx.settings.config.url));
            return Ok(client_redirect(&record.redirect_uri, &params));
        }
    }
    Err(OAuthError::ServerError)
}
