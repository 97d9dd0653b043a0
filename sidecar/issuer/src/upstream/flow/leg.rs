//! Step 2: `/oauth2/upstream/{name}/start?ar=…` opens a leg: a fresh `state`, `nonce` and
//! PKCE S256 verifier, and a random browser-binding value whose hash is stored with the leg and
//! whose value goes into a `__Host-` cookie named after the state (two tabs do not collide).

use http::header::{self, HeaderValue};
use http::{HeaderMap, Response};
use scopegate_core::upstream::{LOCAL, UpstreamIdp, UpstreamKind};
use scopegate_sidecar_kit::body::ProxyBody;
use scopegate_sidecar_kit::unix_now;
use serde::{Deserialize, Serialize};

use crate::error::OAuthError;
use crate::form::{Form, with_query};
use crate::login::{self, LoginRecord};
use crate::store::{self, hashed_key};
use crate::upstream::github;
use crate::{Context, random_token, reply};

use super::chooser::choices;
use super::{
    COOKIE_PREFIX, LEG_TTL_SECS, Refusal, store_down, take, to_client, unknown_login, upstream_of,
};

/// One open upstream leg, stored under the hash of its `state`.
#[derive(Serialize, Deserialize, Clone, Debug)]
pub(super) struct Leg {
    pub(super) request: LoginRecord,
    pub(super) upstream: String,
    pub(super) verifier: String,
    pub(super) nonce: String,
    pub(super) binding: String,
    pub(super) created_at: i64,
}

/// `/oauth2/upstream/{name}/start?ar=…`.
pub(super) async fn start(
    ctx: &Context<'_>,
    name: &str,
    form: &Form,
) -> Result<Response<ProxyBody>, Refusal> {
    let Some(id) = form.get("ar") else {
        return Err(unknown_login());
    };
    let record: LoginRecord = take(ctx, "upreq", id)
        .await
        .map_err(store_down)?
        .ok_or_else(unknown_login)?;
    if !choices(ctx.settings, &record.client_id)
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
        return Ok(match login::store_challenge(ctx, &record).await {
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
    let Some((endpoint, mut params)) = authorization_endpoint(ctx, name, upstream, &nonce) else {
        return Ok(to_client(
            ctx,
            &record,
            &OAuthError::TemporarilyUnavailable("upstream unavailable"),
        ));
    };
    params.extend([
        ("response_type", "code".into()),
        ("client_id", upstream.client_id.clone()),
        ("redirect_uri", upstream.callback_url.clone()),
        ("state", state.clone()),
        ("code_challenge", crate::grant::s256(&verifier)),
        ("code_challenge_method", "S256".into()),
    ]);
    let location = with_query(&endpoint, &params);
    let leg = Leg {
        request: record,
        upstream: name.to_owned(),
        verifier,
        nonce,
        binding: sha256_b64(&binding),
        created_at: unix_now(),
    };
    store_leg(ctx, &state, &leg).await?;
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

/// The provider's authorization endpoint and the parameters that depend on its kind (scope,
/// and for OIDC the nonce and a hosted-domain hint). `None`, counted and logged, while an
/// OIDC provider's discovery is not loaded.
fn authorization_endpoint(
    ctx: &Context<'_>,
    name: &str,
    upstream: &UpstreamIdp,
    nonce: &str,
) -> Option<(String, Vec<(&'static str, String)>)> {
    match &upstream.kind {
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
                return None;
            };
            let mut params = vec![
                ("scope", oidc.scopes.join(" ")),
                ("nonce", nonce.to_owned()),
            ];
            if let [domain] = oidc.hosted_domains.as_slice() {
                // Only a hint for Google's account picker: the hd claim is what is checked.
                params.push(("hd", domain.clone()));
            }
            Some((discovery.authorization_endpoint.clone(), params))
        }
        UpstreamKind::Github(gh) => Some((
            format!("{}/login/oauth/authorize", github::bases(gh).0),
            vec![("scope", github::scopes(gh))],
        )),
    }
}

/// Stores the leg under the hash of `state` for [`LEG_TTL_SECS`] and counts it among the
/// client's pending logins.
async fn store_leg(ctx: &Context<'_>, state: &str, leg: &Leg) -> Result<(), Refusal> {
    let key = hashed_key("upleg", state);
    let expires = leg.created_at + LEG_TTL_SECS;
    match store::write(ctx.issuer.store.as_ref(), &key, None, leg, expires).await {
        Ok(true) => {}
        Ok(false) => return Err(store_down(OAuthError::ServerError)),
        Err(err) => return Err(store_down(err.into())),
    }
    login::track_pending(ctx, &leg.request.client_id, &key, expires)
        .await
        .map_err(store_down)
}

pub(super) fn sha256_b64(text: &str) -> String {
    let digest = aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, text.as_bytes());
    scopegate_core::jose::b64::encode(digest.as_ref())
}

/// The binding cookie's name for a leg: the prefix and 8 characters of the state's hash
/// (the state itself never appears in a cookie).
pub fn cookie_name(state: &str) -> String {
    let hash = sha256_b64(state);
    format!("{COOKIE_PREFIX}{}", &hash[..8])
}

pub(super) fn clear_cookie(response: &mut Response<ProxyBody>, state: Option<&str>) {
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

pub(super) fn cookie_value<'a>(headers: &'a HeaderMap, name: &str) -> Option<&'a str> {
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|pair| pair.trim().split_once('='))
        .find(|(n, _)| *n == name)
        .map(|(_, v)| v)
}

#[cfg(test)]
mod tests {
    use super::*;

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
}
