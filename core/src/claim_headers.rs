//! Claims passed to the app as headers (`headers.claims`): a claim named by a dotted path is
//! read from the verified token's claims and rendered as a header value. Strings go as they
//! are, other JSON values as compact JSON. A value a header cannot carry unchanged refuses
//! the request: the app never gets a partial identity. Pure.

use crate::claims::Claims;

/// Most claim headers a policy may configure.
pub const MAX_CLAIM_HEADERS: usize = 16;
/// Longest header value a claim may render to, in bytes.
pub const MAX_VALUE_BYTES: usize = 4096;
/// Longest claim path, in bytes.
pub const MAX_PATH_BYTES: usize = 256;

/// Why a claim cannot be passed as a header.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum ClaimValueError {
    /// A control character (CR, LF, NUL, tab, DEL, ...) would split or smuggle a header.
    #[error("the claim holds a control character")]
    Control,
    /// Longer than [`MAX_VALUE_BYTES`].
    #[error("the claim renders to more than {MAX_VALUE_BYTES} bytes")]
    TooLong,
}

/// Whether `path` is a claim path: names of letters, digits, `_`, `:` and `-`, joined by dots.
pub fn is_claim_path(path: &str) -> bool {
    path.len() <= MAX_PATH_BYTES
        && path.split('.').all(|name| {
            !name.is_empty()
                && name
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b':' | b'-'))
        })
}

/// The header value of the claim at `path` (its dot-separated names), `Ok(None)` when the
/// claim is absent (or null).
pub fn header_value(claims: &Claims, path: &[String]) -> Result<Option<String>, ClaimValueError> {
    let mut names = path.iter();
    let Some(first) = names.next() else {
        return Ok(None);
    };
    let mut value = claims.get(first);
    for name in names {
        value = value.and_then(|v| v.get(name));
    }
    render(value)
}

/// A claim's header value: see [`header_value`].
fn render(value: Option<&serde_json::Value>) -> Result<Option<String>, ClaimValueError> {
    let text = match value {
        None | Some(serde_json::Value::Null) => return Ok(None),
        Some(serde_json::Value::String(text)) => text.clone(),
        Some(other) => other.to_string(),
    };
    if text.len() > MAX_VALUE_BYTES {
        return Err(ClaimValueError::TooLong);
    }
    if text.chars().any(char::is_control) {
        return Err(ClaimValueError::Control);
    }
    Ok(Some(text))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn claims() -> Claims {
        json!({
            "email": "ada@example.com",
            "org": {"id": "acme", "size": 12, "roles": ["admin", "ops"]},
            "verified": true,
            "gone": null,
            "evil": "a\r\nx-auth-subject: root",
            "nul": "a\u{0}b",
            "tab": "a\tb",
            "unicode": "Zoë",
            "long": "x".repeat(MAX_VALUE_BYTES + 1),
        })
        .as_object()
        .cloned()
        .unwrap_or_default()
    }

    fn value(path: &str) -> Result<Option<String>, ClaimValueError> {
        let path: Vec<String> = path.split('.').map(str::to_owned).collect();
        header_value(&claims(), &path)
    }

    #[test]
    fn strings_go_as_they_are_and_other_values_as_compact_json() {
        assert_eq!(value("email"), Ok(Some("ada@example.com".into())));
        assert_eq!(value("org.id"), Ok(Some("acme".into())));
        assert_eq!(value("org.size"), Ok(Some("12".into())));
        assert_eq!(value("org.roles"), Ok(Some(r#"["admin","ops"]"#.into())));
        assert_eq!(value("verified"), Ok(Some("true".into())));
        assert_eq!(value("unicode"), Ok(Some("Zoë".into())));
        assert_eq!(
            value("org"),
            Ok(Some(
                r#"{"id":"acme","roles":["admin","ops"],"size":12}"#.into()
            ))
        );
    }

    #[test]
    fn absent_claims_send_nothing_and_unsafe_values_refuse() {
        for absent in [
            "missing",
            "gone",
            "org.missing",
            "email.inner",
            "org.roles.0",
        ] {
            assert_eq!(value(absent), Ok(None), "{absent}");
        }
        for control in ["evil", "nul", "tab"] {
            assert_eq!(value(control), Err(ClaimValueError::Control), "{control}");
        }
        assert_eq!(value("long"), Err(ClaimValueError::TooLong));
    }

    #[test]
    fn claim_paths_are_dotted_names() {
        for good in [
            "email",
            "org.id",
            "realm_access.roles",
            "urn:zitadel:iam:org:id",
            "a-b",
        ] {
            assert!(is_claim_path(good), "{good}");
        }
        for bad in [
            "",
            ".a",
            "a.",
            "a..b",
            "a b",
            "a[0]",
            "a/b",
            &"a".repeat(257),
        ] {
            assert!(!is_claim_path(bad), "{bad}");
        }
    }
}
