//! What an outside issuer's discovery document and JWKS give one policy: pure checks and the
//! keys it renders. No client, no clock.

use scopegate_core::jose::keys::{Alg, usable_jwks};
use scopegate_core::jwk::Jwks;
use serde::Deserialize;

/// Most keys rendered for one issuer: a policy's keys all live in one ConfigMap.
pub const MAX_KEYS: usize = 32;
/// Longest `kid` rendered (status lists them).
pub const MAX_KID: usize = 128;
/// Longest issuer identifier a document may name (as the CRD's issuer field).
const MAX_ISSUER: usize = 256;
/// Longest `jwks_uri` a document may name (as the CRD's URL fields).
const MAX_URI: usize = 512;

/// The members of a discovery document (OpenID Connect Discovery, RFC 8414) the operator uses.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct Document {
    /// The issuer it describes: it must equal the configured one (OIDC Discovery §4.3, RFC 8414
    /// §3.3), or a document anyone can serve would name anyone's keys.
    pub issuer: String,
    /// Where the issuer's keys are.
    pub jwks_uri: String,
}

/// Why a discovery document is not one the operator follows.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DocumentError {
    /// Not JSON, or without `issuer` and `jwks_uri` strings of a sane length.
    #[error(
        "the discovery document is not a JSON object with issuer (at most 256 characters) and jwks_uri (at most 512)"
    )]
    Shape,
    /// `jwks_uri` is not an https URL with a host.
    #[error("the discovery document's jwks_uri {0:?} is not an https URL")]
    JwksNotHttps(String),
}

/// Why the keys read for an issuer cannot be used by one policy.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum KeysError {
    /// The document describes another issuer.
    #[error("the discovery document describes issuer {found:?}, not {expected:?}")]
    OtherIssuer {
        /// What the policy names.
        expected: String,
        /// What the document says.
        found: String,
    },
    /// The JWKS is not a JSON Web Key Set.
    #[error("the JWKS named by the discovery document is not a JSON Web Key Set")]
    NotJwks,
    /// No key of the JWKS fits the allowed algorithms.
    #[error("no key of the JWKS has a kid and fits algorithms {0}")]
    NoUsableKey(String),
}

/// Parses a discovery document and checks that its keys are fetched over https.
pub fn parse_document(body: &[u8]) -> Result<Document, DocumentError> {
    let document: Document = serde_json::from_slice(body).map_err(|_| DocumentError::Shape)?;
    if document.issuer.len() > MAX_ISSUER || document.jwks_uri.len() > MAX_URI {
        return Err(DocumentError::Shape);
    }
    let https = document.jwks_uri.starts_with("https://")
        && document
            .jwks_uri
            .parse::<http::Uri>()
            .is_ok_and(|u| u.host().is_some_and(|h| !h.is_empty()));
    if !https {
        return Err(DocumentError::JwksNotHttps(document.jwks_uri));
    }
    Ok(document)
}

/// The issuer a discovery document names, for a document whose `jwks_uri` is not followed
/// (the API server's: its keys are read at a fixed path through the operator's client).
pub fn parse_issuer(body: &[u8]) -> Result<String, DocumentError> {
    #[derive(Deserialize)]
    struct Named {
        issuer: String,
    }
    let named: Named = serde_json::from_slice(body).map_err(|_| DocumentError::Shape)?;
    if named.issuer.is_empty() || named.issuer.len() > MAX_ISSUER {
        return Err(DocumentError::Shape);
    }
    Ok(named.issuer)
}

/// The keys one policy renders for `issuer` from what was read: the document must describe
/// that issuer, and of the JWKS only keys with a kid that fit `algorithms` count (at most
/// [`MAX_KEYS`], in the document's order, each `kid` at most [`MAX_KID`] long), public
/// members only.
pub fn keys_for(
    document: &Document,
    jwks: &[u8],
    issuer: &str,
    algorithms: &[Alg],
) -> Result<Jwks, KeysError> {
    if document.issuer != issuer {
        return Err(KeysError::OtherIssuer {
            expected: issuer.to_owned(),
            found: document.issuer.clone(),
        });
    }
    let mut usable = usable_jwks(jwks, algorithms).map_err(|_| KeysError::NotJwks)?;
    usable
        .keys
        .retain(|k| k.kid.as_ref().is_some_and(|kid| kid.len() <= MAX_KID));
    if usable.keys.is_empty() {
        let names: Vec<&str> = algorithms.iter().map(|a| a.name()).collect();
        return Err(KeysError::NoUsableKey(names.join(", ")));
    }
    usable.keys.truncate(MAX_KEYS);
    Ok(usable)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use serde_json::json;

    use super::*;

    const ISSUER: &str = "https://sso.example.com/realms/corp";

    fn document() -> Document {
        Document {
            issuer: ISSUER.to_owned(),
            jwks_uri: format!("{ISSUER}/certs"),
        }
    }

    /// A P-256 public key (RFC 7515 A.3's), with `extra` members.
    fn ec_key(kid: &str, extra: serde_json::Value) -> serde_json::Value {
        let mut key = json!({
            "kty": "EC", "crv": "P-256", "kid": kid,
            "x": "f83OJ3D2xF1Bg8vub9tLe1gHMzV76e8Tus9uPHvRVEU",
            "y": "x_FEzRu9m36HLN_tue659LNpXW6pCyStikYjKIWI5a0"
        });
        if let (Some(key), Some(extra)) = (key.as_object_mut(), extra.as_object()) {
            key.extend(extra.clone());
        }
        key
    }

    #[test]
    fn a_document_needs_issuer_and_an_https_jwks_uri() {
        let good = json!({"issuer": ISSUER, "jwks_uri": format!("{ISSUER}/certs"), "other": 1});
        assert_eq!(
            parse_document(good.to_string().as_bytes()).unwrap(),
            document()
        );
        for (body, error) in [
            (json!({"issuer": ISSUER}).to_string(), DocumentError::Shape),
            ("<html>".to_owned(), DocumentError::Shape),
            (
                json!({"issuer": ISSUER, "jwks_uri": "http://sso.example.com/certs"}).to_string(),
                DocumentError::JwksNotHttps("http://sso.example.com/certs".to_owned()),
            ),
            (
                json!({"issuer": ISSUER, "jwks_uri": "https:///certs"}).to_string(),
                DocumentError::JwksNotHttps("https:///certs".to_owned()),
            ),
            (
                json!({"issuer": "x".repeat(257), "jwks_uri": format!("{ISSUER}/certs")})
                    .to_string(),
                DocumentError::Shape,
            ),
            (
                json!({"issuer": ISSUER, "jwks_uri": format!("https://a.example/{}", "x".repeat(500))})
                    .to_string(),
                DocumentError::Shape,
            ),
        ] {
            assert_eq!(parse_document(body.as_bytes()), Err(error), "{body}");
        }
    }

    #[test]
    fn a_document_of_another_issuer_gives_no_key() {
        let jwks = json!({"keys": [ec_key("k1", json!({}))]}).to_string();
        let other = Document {
            issuer: "https://evil.example".to_owned(),
            ..document()
        };
        assert_eq!(
            keys_for(&other, jwks.as_bytes(), ISSUER, &[Alg::Es256]),
            Err(KeysError::OtherIssuer {
                expected: ISSUER.to_owned(),
                found: "https://evil.example".to_owned()
            })
        );
        // The issuer is compared exactly: a trailing slash is another issuer.
        assert!(
            keys_for(
                &document(),
                jwks.as_bytes(),
                &format!("{ISSUER}/"),
                &[Alg::Es256]
            )
            .is_err()
        );
    }

    #[test]
    fn only_keys_that_fit_the_algorithms_are_kept_without_private_members() {
        let jwks = json!({"keys": [
            ec_key("ec", json!({"d": "private-scalar", "use": "sig"})),
            ec_key("no-kid-is-dropped", json!({})).as_object().map(|k| {
                let mut k = k.clone();
                k.remove("kid");
                serde_json::Value::Object(k)
            }).unwrap(),
            {"kty": "oct", "kid": "hmac", "k": "c2VjcmV0"},
            {"kty": "RSA", "kid": "rsa", "n": "AQAB", "e": "AQAB"},
            "not a key"
        ]})
        .to_string();
        let keys = keys_for(&document(), jwks.as_bytes(), ISSUER, &[Alg::Es256]).unwrap();
        let kids: Vec<_> = keys.keys.iter().filter_map(|k| k.kid.as_deref()).collect();
        assert_eq!(kids, ["ec"]);
        let rendered = serde_json::to_string(&keys).unwrap();
        assert!(!rendered.contains("private-scalar"), "{rendered}");
        // RS256 only: the EC key does not fit, and nothing else does either.
        assert_eq!(
            keys_for(&document(), jwks.as_bytes(), ISSUER, &[Alg::Rs256]),
            Err(KeysError::NoUsableKey("RS256".to_owned()))
        );
        assert_eq!(
            keys_for(&document(), b"{\"keys\": 1}", ISSUER, &[Alg::Es256]),
            Err(KeysError::NotJwks)
        );
    }

    #[test]
    fn at_most_max_keys_are_rendered() {
        let mut keys: Vec<_> = (0..MAX_KEYS + 5)
            .map(|i| ec_key(&format!("k{i}"), json!({})))
            .collect();
        keys.insert(0, ec_key(&"k".repeat(MAX_KID + 1), json!({})));
        let jwks = json!({ "keys": keys }).to_string();
        let rendered = keys_for(&document(), jwks.as_bytes(), ISSUER, &[Alg::Es256]).unwrap();
        assert_eq!(rendered.keys.len(), MAX_KEYS);
        assert_eq!(rendered.keys[0].kid.as_deref(), Some("k0"));
    }

    #[test]
    fn the_api_servers_document_gives_its_issuer_whatever_its_jwks_uri() {
        let body = br#"{"issuer":"https://kubernetes.default.svc","jwks_uri":"https://10.0.0.1:6443/openid/v1/jwks","response_types_supported":["id_token"]}"#;
        assert_eq!(
            parse_issuer(body).unwrap(),
            "https://kubernetes.default.svc"
        );
        assert_eq!(parse_issuer(br#"{"issuer":""}"#), Err(DocumentError::Shape));
        let long = format!(r#"{{"issuer":"{}"}}"#, "x".repeat(MAX_ISSUER + 1));
        assert_eq!(parse_issuer(long.as_bytes()), Err(DocumentError::Shape));
        assert_eq!(parse_issuer(b"<html>"), Err(DocumentError::Shape));
    }
}
