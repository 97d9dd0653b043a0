//! Pure grant decisions: scopes (RFC 6749 §3.3, §6), audiences from RFC 8707 `resource`,
//! PKCE S256 (RFC 7636), redirect URI matching (RFC 9700 §4.1.3, RFC 8252 §7.3), and the
//! subject patterns of the mint rules.

use std::collections::BTreeMap;

use aws_lc_rs::digest;
use scopegate_core::clients::RegisteredClient;
use scopegate_core::scope::is_scope_token;
use subtle::ConstantTimeEq as _;

use crate::error::OAuthError;
use scopegate_core::jose::b64;

/// Parses a `scope` parameter: space-separated scope tokens, duplicates dropped, order kept.
/// `None` when absent.
pub fn parse_scope(param: Option<&str>) -> Result<Option<Vec<String>>, OAuthError> {
    let Some(text) = param else {
        return Ok(None);
    };
    let mut scopes: Vec<String> = Vec::new();
    for token in text.split(' ').filter(|t| !t.is_empty()) {
        if !is_scope_token(token) {
            return Err(OAuthError::InvalidScope);
        }
        if !scopes.iter().any(|s| s == token) {
            scopes.push(token.to_owned());
        }
    }
    Ok((!scopes.is_empty()).then_some(scopes))
}

/// The scopes granted to a client for a request: all requested ones when the client may have
/// each and the issuer knows each, its default scopes when it asked for none. A scope it may
/// not have is an error, never silently dropped.
pub fn grant_scope(
    requested: Option<&[String]>,
    client: &RegisteredClient,
    vocabulary: &BTreeMap<String, String>,
) -> Result<Vec<String>, OAuthError> {
    let known = |s: &String| vocabulary.is_empty() || vocabulary.contains_key(s);
    let scopes = match requested {
        Some(requested) => requested.to_vec(),
        None if client.default_scopes.is_empty() => return Err(OAuthError::InvalidScope),
        None => client.default_scopes.clone(),
    };
    if scopes.iter().all(|s| client.scopes.contains(s) && known(s)) {
        Ok(scopes)
    } else {
        Err(OAuthError::InvalidScope)
    }
}

/// A refresh may only narrow the originally granted scope (RFC 6749 §6).
pub fn narrow_scope(
    requested: Option<&[String]>,
    granted: &[String],
) -> Result<Vec<String>, OAuthError> {
    match requested {
        None => Ok(granted.to_vec()),
        Some(requested) if requested.iter().all(|s| granted.contains(s)) => Ok(requested.to_vec()),
        Some(_) => Err(OAuthError::InvalidScope),
    }
}

/// The audiences a client's tokens carry by default: its configured ones, else the issuer.
pub fn client_audiences(client: &RegisteredClient, issuer: &str) -> Vec<String> {
    if client.audiences.is_empty() {
        vec![issuer.to_owned()]
    } else {
        client.audiences.clone()
    }
}

/// The audience of a token: the RFC 8707 `resource` values when given, each of which must be
/// one of `allowed` exactly, else `default`.
pub fn audiences(
    resources: &[String],
    allowed: &[String],
    default: &[String],
) -> Result<Vec<String>, OAuthError> {
    if resources.is_empty() {
        return Ok(default.to_vec());
    }
    let mut out: Vec<String> = Vec::new();
    for resource in resources {
        if !allowed.contains(resource) {
            return Err(OAuthError::InvalidTarget);
        }
        if !out.contains(resource) {
            out.push(resource.clone());
        }
    }
    Ok(out)
}

fn is_unreserved(b: u8) -> bool {
    b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~')
}

/// RFC 7636 §4.1: 43 to 128 unreserved characters.
pub fn is_code_verifier(verifier: &str) -> bool {
    (43..=128).contains(&verifier.len()) && verifier.bytes().all(is_unreserved)
}

/// An S256 challenge: 43 base64url characters (a SHA-256).
pub fn is_s256_challenge(challenge: &str) -> bool {
    challenge.len() == 43 && b64::decode(challenge.as_bytes()).is_ok_and(|d| d.len() == 32)
}

/// `BASE64URL(SHA256(ASCII(verifier)))`.
pub fn s256(verifier: &str) -> String {
    b64::encode(digest::digest(&digest::SHA256, verifier.as_bytes()).as_ref())
}

/// Whether `verifier` answers `challenge`, compared in constant time.
pub fn pkce_matches(verifier: &str, challenge: &str) -> bool {
    is_code_verifier(verifier) && bool::from(s256(verifier).as_bytes().ct_eq(challenge.as_bytes()))
}

/// Splits `http://127.0.0.1[:port]/rest` or `http://[::1][:port]/rest` into host and rest,
/// for the loopback exception; `None` for every other URI.
fn loopback(uri: &str) -> Option<(&'static str, &str)> {
    let rest = uri.strip_prefix("http://")?;
    let (host, after) = if let Some(after) = rest.strip_prefix("127.0.0.1") {
        ("127.0.0.1", after)
    } else {
        ("[::1]", rest.strip_prefix("[::1]")?)
    };
    let after = match after.strip_prefix(':') {
        Some(port_and_rest) => {
            let end = port_and_rest
                .find(|c: char| !c.is_ascii_digit())
                .unwrap_or(port_and_rest.len());
            let port = &port_and_rest[..end];
            if port.is_empty() || port.len() > 5 || port.parse::<u16>().is_err() {
                return None;
            }
            &port_and_rest[end..]
        }
        None => after,
    };
    if !(after.is_empty() || after.starts_with(['/', '?'])) {
        return None;
    }
    Some((host, after))
}

/// Whether `requested` matches a registered redirect URI: exactly, or for loopback
/// `http://127.0.0.1` and `http://[::1]` with any port (never `localhost`).
pub fn redirect_uri_matches(registered: &str, requested: &str) -> bool {
    if requested.contains('#') {
        return false;
    }
    if registered == requested {
        return true;
    }
    match (loopback(registered), loopback(requested)) {
        (Some(a), Some(b)) => a == b,
        _ => false,
    }
}

/// Whether `subject` matches a mint pattern, where `*` stands for any run of characters.
pub fn subject_matches(pattern: &str, subject: &str) -> bool {
    let parts: Vec<&str> = pattern.split('*').collect();
    if parts.len() == 1 {
        return pattern == subject;
    }
    let (first, last) = (parts[0], parts[parts.len() - 1]);
    if subject.len() < first.len() + last.len()
        || !subject.starts_with(first)
        || !subject.ends_with(last)
    {
        return false;
    }
    let mut middle = &subject[first.len()..subject.len() - last.len()];
    for part in &parts[1..parts.len() - 1] {
        match middle.find(part) {
            Some(at) => middle = &middle[at + part.len()..],
            None => return false,
        }
    }
    true
}

#[cfg(test)]
mod tests {
    use super::*;
    use scopegate_core::clients::AuthMethod;

    fn client(scopes: &[&str], defaults: &[&str]) -> RegisteredClient {
        RegisteredClient {
            client_id: "c".into(),
            public: false,
            auth_method: AuthMethod::ClientSecretBasic,
            secrets: vec![],
            grant_types: vec![],
            scopes: scopes.iter().map(|s| s.to_string()).collect(),
            default_scopes: defaults.iter().map(|s| s.to_string()).collect(),
            audiences: vec![],
            owned_audiences: vec![],
            redirect_uris: vec![],
            revoke_before: None,
            service_accounts: Vec::new(),
            token_exchange: None,
        }
    }

    fn v(items: &[&str]) -> Vec<String> {
        items.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn rfc7636_appendix_b_vector() {
        let octets: [u8; 32] = [
            116, 24, 223, 180, 151, 153, 224, 37, 79, 250, 96, 125, 216, 173, 187, 186, 22, 212,
            37, 77, 105, 214, 191, 240, 91, 88, 5, 88, 83, 132, 141, 121,
        ];
        let verifier = b64::encode(&octets);
        assert_eq!(verifier, "dBjftJeZ4CVP-mB92K27uhbUJU1p1r_wW1gFWFOEjXk");
        assert_eq!(
            s256(&verifier),
            "E9Melhoa2OwvFrEMTJguCHaoeK1t8URWbuGJSstw-cM"
        );
        assert!(pkce_matches(
            &verifier,
            "E9Melhoa2OwvFrEMTJguCHaoeK1t8URWbuGJSstw-cM"
        ));
        assert!(!pkce_matches(
            &verifier,
            "E9Melhoa2OwvFrEMTJguCHaoeK1t8URWbuGJSstw-cN"
        ));
    }

    #[test]
    fn verifier_lengths_and_alphabet() {
        assert!(!is_code_verifier(&"a".repeat(42)));
        assert!(is_code_verifier(&"a".repeat(43)));
        assert!(is_code_verifier(&"a".repeat(128)));
        assert!(!is_code_verifier(&"a".repeat(129)));
        for bad in ['+', '/', '=', ' '] {
            assert!(
                !is_code_verifier(&format!("{}{bad}", "a".repeat(43))),
                "{bad}"
            );
        }
        assert!(is_s256_challenge(
            "E9Melhoa2OwvFrEMTJguCHaoeK1t8URWbuGJSstw-cM"
        ));
        assert!(!is_s256_challenge(
            "E9Melhoa2OwvFrEMTJguCHaoeK1t8URWbuGJSstw-c"
        ));
        assert!(!is_s256_challenge(
            "E9Melhoa2OwvFrEMTJguCHaoeK1t8URWbuGJSstw+cM"
        ));
    }

    #[test]
    fn scopes_are_granted_refused_or_defaulted_never_dropped() {
        let vocab: BTreeMap<String, String> = [("read", ""), ("write", ""), ("admin", "")]
            .map(|(a, b)| (a.into(), b.into()))
            .into();
        let c = client(&["read", "write"], &["read"]);
        assert_eq!(grant_scope(None, &c, &vocab), Ok(v(&["read"])));
        assert_eq!(
            grant_scope(Some(&v(&["read", "write"])), &c, &vocab),
            Ok(v(&["read", "write"]))
        );
        assert_eq!(
            grant_scope(Some(&v(&["read", "admin"])), &c, &vocab),
            Err(OAuthError::InvalidScope)
        );
        let outside = client(&["read", "other"], &[]);
        assert_eq!(
            grant_scope(Some(&v(&["other"])), &outside, &vocab),
            Err(OAuthError::InvalidScope)
        );
        assert_eq!(
            grant_scope(None, &outside, &vocab),
            Err(OAuthError::InvalidScope),
            "no defaults"
        );
        assert_eq!(parse_scope(Some("a  b a")), Ok(Some(v(&["a", "b"]))));
        assert_eq!(parse_scope(Some(" ")), Ok(None));
        assert_eq!(parse_scope(Some("a\"b")), Err(OAuthError::InvalidScope));
    }

    #[test]
    fn refresh_only_narrows() {
        let granted = v(&["read", "write"]);
        assert_eq!(narrow_scope(None, &granted), Ok(granted.clone()));
        assert_eq!(
            narrow_scope(Some(&v(&["read"])), &granted),
            Ok(v(&["read"]))
        );
        assert_eq!(
            narrow_scope(Some(&v(&["read", "admin"])), &granted),
            Err(OAuthError::InvalidScope)
        );
    }

    #[test]
    fn resource_must_be_an_allowed_audience() {
        let allowed = v(&["https://orders.example", "https://pay.example"]);
        assert_eq!(audiences(&[], &allowed, &allowed), Ok(allowed.clone()));
        assert_eq!(
            audiences(&v(&["https://pay.example"]), &allowed, &allowed),
            Ok(v(&["https://pay.example"]))
        );
        assert_eq!(
            audiences(&v(&["https://evil.example"]), &allowed, &allowed),
            Err(OAuthError::InvalidTarget)
        );
        assert_eq!(
            audiences(&v(&["https://pay.example/"]), &allowed, &allowed),
            Err(OAuthError::InvalidTarget)
        );
    }

    #[test]
    fn redirect_uris_match_exactly_except_loopback_ports() {
        let reg = "https://app.example/cb";
        assert!(redirect_uri_matches(reg, reg));
        for bad in [
            "https://app.example/cb/",
            "https://APP.example/cb",
            "https://app.example/cb?x=1",
            "https://app.example/cb#f",
            "https://app.example@evil.example/cb",
            "https://app.example/%2e%2e/cb",
            "https://app.exampIe/cb",
            "http://app.example/cb",
        ] {
            assert!(!redirect_uri_matches(reg, bad), "{bad}");
        }
        assert!(redirect_uri_matches(
            "http://127.0.0.1/cb",
            "http://127.0.0.1:53121/cb"
        ));
        assert!(redirect_uri_matches(
            "http://127.0.0.1:8080/cb",
            "http://127.0.0.1:1/cb"
        ));
        assert!(redirect_uri_matches(
            "http://[::1]/cb",
            "http://[::1]:4000/cb"
        ));
        assert!(!redirect_uri_matches(
            "http://127.0.0.1/cb",
            "http://127.0.0.1:80/cb2"
        ));
        assert!(!redirect_uri_matches(
            "http://127.0.0.1/cb",
            "http://127.0.0.1.evil.example/cb"
        ));
        assert!(!redirect_uri_matches(
            "http://127.0.0.1/cb",
            "http://127.0.0.1:99999/cb"
        ));
        assert!(!redirect_uri_matches(
            "http://localhost/cb",
            "http://localhost:8000/cb"
        ));
        assert!(!redirect_uri_matches(
            "http://127.0.0.1/cb",
            "http://[::1]:8000/cb"
        ));
    }

    #[test]
    fn subject_patterns() {
        assert!(subject_matches("user:*", "user:42"));
        assert!(subject_matches("*", "anything"));
        assert!(subject_matches("a*b*c", "axxbyyc"));
        assert!(!subject_matches("a*b*c", "axxcyyb"));
        assert!(subject_matches("alice", "alice"));
        assert!(!subject_matches("alice", "alice2"));
        assert!(!subject_matches("user:*", "admin:1"));
        assert!(!subject_matches("ab*ba", "aba"));
    }
}
