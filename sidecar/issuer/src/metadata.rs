//! `/.well-known/oauth-authorization-server` (RFC 8414; path inserted for issuers with a
//! path) and `/.well-known/jwks.json` (the published public keys). There is no OpenID
//! discovery document: scopegate issues no ID tokens.

use http::header::{self, HeaderValue};
use http::{Method, Request, Response, StatusCode};
use hyper::body::Incoming;
use scopegate_sidecar_kit::body::ProxyBody;
use scopegate_sidecar_kit::unix_now;
use serde_json::{Value, json};

use crate::token::GRANT_TYPES;
use crate::{Context, IssuerSettings, reply};

/// The metadata document.
pub fn document(settings: &IssuerSettings) -> Value {
    let mut doc = json!({
        "issuer": settings.config.url,
        "token_endpoint": settings.endpoint("/oauth2/token"),
        "jwks_uri": settings.endpoint("/.well-known/jwks.json"),
        "revocation_endpoint": settings.endpoint("/oauth2/revoke"),
        "introspection_endpoint": settings.endpoint("/oauth2/introspect"),
        "response_types_supported": ["code"],
        "response_modes_supported": ["query"],
        "grant_types_supported": GRANT_TYPES,
        "code_challenge_methods_supported": ["S256"],
        "token_endpoint_auth_methods_supported": ["client_secret_basic", "client_secret_post", "none"],
        "revocation_endpoint_auth_methods_supported": ["client_secret_basic", "client_secret_post", "none"],
        "introspection_endpoint_auth_methods_supported": ["client_secret_basic", "client_secret_post"],
        "authorization_response_iss_parameter_supported": true,
    });
    if settings.config.login_url.is_some() {
        doc["authorization_endpoint"] = json!(settings.endpoint("/oauth2/authorize"));
    }
    if !settings.config.scopes.is_empty() {
        doc["scopes_supported"] = json!(settings.config.scopes.keys().collect::<Vec<_>>());
    }
    doc
}

fn cacheable(mut response: Response<ProxyBody>, max_age: i64) -> Response<ProxyBody> {
    if let Ok(value) = HeaderValue::from_str(&format!("public, max-age={}", max_age.max(0))) {
        response.headers_mut().insert(header::CACHE_CONTROL, value);
    }
    response
}

fn get_only(req: &Request<Incoming>) -> Option<Response<ProxyBody>> {
    (req.method() != Method::GET && req.method() != Method::HEAD).then(|| {
        let mut r = reply::status(StatusCode::METHOD_NOT_ALLOWED);
        r.headers_mut()
            .insert(header::ALLOW, HeaderValue::from_static("GET, HEAD"));
        r
    })
}

/// Serves the metadata document.
pub fn metadata(ctx: &Context<'_>, req: &Request<Incoming>) -> Response<ProxyBody> {
    if let Some(refused) = get_only(req) {
        return refused;
    }
    let response = reply::json(StatusCode::OK, &document(ctx.settings));
    cacheable(response, ctx.settings.keys.jwks_max_age())
}

/// Serves the JWKS: the keys published now, cacheable well inside the pre-publication
/// window (see [`super::keys::KeySet::jwks_max_age`]).
pub fn jwks(ctx: &Context<'_>, req: &Request<Incoming>) -> Response<ProxyBody> {
    if let Some(refused) = get_only(req) {
        return refused;
    }
    let now = unix_now();
    let keys = ctx.settings.keys.jwks(now);
    let mut max_age = ctx.settings.keys.jwks_max_age();
    if let Some(change) = ctx.settings.keys.next_change(now) {
        max_age = max_age.min(change - now);
    }
    let body = serde_json::to_vec(&keys).unwrap_or_else(|_| b"{\"keys\":[]}".to_vec());
    cacheable(
        reply::json_bytes(StatusCode::OK, body, "application/jwk-set+json"),
        max_age,
    )
}
