//! `/.well-known/oauth-authorization-server` (RFC 8414; path inserted for issuers with a
//! path) and `/.well-known/jwks.json` (the published public keys). There is no OpenID
//! discovery document: scopegate issues no ID tokens.

use http::header::{self, HeaderValue};
use http::{Method, Request, Response, StatusCode};
use hyper::body::Incoming;
use scopegate_core::clients::AuthMethod;
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
    // RFC 8414 §2: an endpoint that takes a signed JWT to authenticate lists its algorithms.
    if let Some(algorithms) = settings.service_accounts.algorithms() {
        let names: Vec<&str> = algorithms.iter().map(|a| a.name()).collect();
        for endpoint in ["token", "revocation", "introspection"] {
            let methods = &mut doc[format!("{endpoint}_endpoint_auth_methods_supported")];
            if let Some(methods) = methods.as_array_mut() {
                methods.push(json!(AuthMethod::ServiceAccountJwt));
            }
            doc[format!("{endpoint}_endpoint_auth_signing_alg_values_supported")] = json!(names);
        }
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

#[cfg(test)]
mod tests {
    use scopegate_core::config::SidecarConfig;
    use scopegate_core::jose::b64;
    use serde_json::{Value, json};

    use super::*;
    use crate::assertion::testing;

    /// The settings of an issuer with one HS256 key and no clients, with the cluster's
    /// service-account issuer when `cluster` is given.
    fn settings(cluster: Option<Value>) -> IssuerSettings {
        let now = testing::NOW;
        let keys = json!({"keys": [{
            "kid": "k1", "alg": "HS256", "publishedAt": now - 10, "activatesAt": now - 10,
            "signsUntil": now + 86_400, "removedAfter": now + 90_000,
            "privateKey": b64::encode_standard(&[7; 32])
        }]});
        let mut config = json!({
            "apiVersion": "sidecar.scopegate.dev/v2",
            "policy": {"namespace": "shop", "name": "auth", "generation": 1},
            "listen": {"port": 0}, "upstream": {"port": 1},
            "verify": {"issuers": [], "audiences": [], "leewaySecs": 30},
            "issuer": {"url": testing::ISSUER_URL, "signingKeysPath": "-", "clientsPath": "-",
                       "accessTokenTtlSecs": 600, "refreshTokenTtlSecs": 3600, "codeTtlSecs": 60}
        });
        if let Some(cluster) = cluster {
            config["issuer"]["serviceAccountIssuer"] = cluster;
        }
        let config = SidecarConfig::from_json(&config.to_string()).unwrap();
        let issuer = config.issuer.clone().unwrap();
        let clients = Some(r#"{"clients": []}"#);
        IssuerSettings::compile(&config, &issuer, Some(&keys.to_string()), clients, now).unwrap()
    }

    #[test]
    fn the_service_account_method_is_listed_only_with_a_cluster_issuer() {
        let plain = document(&settings(None));
        assert_eq!(
            plain["token_endpoint_auth_methods_supported"],
            json!(["client_secret_basic", "client_secret_post", "none"])
        );
        assert!(
            !plain.to_string().contains("signing_alg"),
            "no algorithms without a method that signs"
        );

        let cluster = serde_json::to_value(testing::cluster()).unwrap();
        let mut with = document(&settings(Some(cluster)));
        for endpoint in ["token", "revocation", "introspection"] {
            let methods = format!("{endpoint}_endpoint_auth_methods_supported");
            let algs = format!("{endpoint}_endpoint_auth_signing_alg_values_supported");
            let listed = with[&methods].as_array_mut().unwrap();
            assert_eq!(
                listed.pop(),
                Some(json!("service_account_jwt")),
                "{endpoint}"
            );
            assert_eq!(with[&algs], json!(["RS256", "ES256"]), "{endpoint}");
            with.as_object_mut().unwrap().remove(&algs);
        }
        assert_eq!(with, plain, "nothing else changes");
    }
}
