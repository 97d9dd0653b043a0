//! Request bodies and query strings of the OAuth endpoints: `application/x-www-form-urlencoded`
//! only (RFC 6749 §3.2), bounded in size, every parameter at most once (§3.1) except those an
//! extension lets repeat (RFC 8707 `resource`, RFC 8693 `audience`); a parameter without a
//! value counts as absent.
//! The authorization endpoint parses with [`Form::parse_keeping_repeats`]: it must know which
//! parameters came twice to choose between an error page and an error redirect.

use std::time::Duration;

use bytes::Bytes;
use http::HeaderMap;
use http::header::CONTENT_TYPE;
use http_body_util::{BodyExt, Limited};
use hyper::body::Incoming;

pub use scopegate_sidecar_kit::form::{form_decode, form_encode};

use crate::error::OAuthError;

/// Largest request body read, in bytes.
pub const MAX_BODY_BYTES: usize = 16 * 1024;

/// Parameters that may appear more than once.
const REPEATABLE: [&str; 2] = ["resource", "audience"];

/// Most parameters accepted in one request.
const MAX_PARAMS: usize = 64;

/// Parsed parameters, in order.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Form {
    pairs: Vec<(String, String)>,
    /// Names of parameters that may appear once but came more often (only with
    /// [`Form::parse_keeping_repeats`]).
    repeated: Vec<String>,
}

impl Form {
    /// Parses `a=b&c=d`; refuses malformed escapes, non-UTF-8, and repeated parameters.
    pub fn parse(bytes: &[u8]) -> Result<Form, OAuthError> {
        let form = Form::parse_keeping_repeats(bytes)?;
        if !form.repeated.is_empty() {
            return Err(OAuthError::InvalidRequest("a parameter is repeated"));
        }
        Ok(form)
    }

    /// Parses like [`Form::parse`] but takes a repeated parameter, noting its name in
    /// [`Form::repeated`]; [`Form::get`] then answers its first value.
    pub fn parse_keeping_repeats(bytes: &[u8]) -> Result<Form, OAuthError> {
        let text = std::str::from_utf8(bytes)
            .map_err(|_| OAuthError::InvalidRequest("parameters are not UTF-8"))?;
        let mut pairs: Vec<(String, String)> = Vec::new();
        let mut repeated: Vec<String> = Vec::new();
        let mut count = 0usize;
        for part in text.split('&').filter(|p| !p.is_empty()) {
            let (name, value) = part.split_once('=').unwrap_or((part, ""));
            let name =
                form_decode(name).ok_or(OAuthError::InvalidRequest("malformed parameter"))?;
            let value =
                form_decode(value).ok_or(OAuthError::InvalidRequest("malformed parameter"))?;
            if value.is_empty() {
                continue;
            }
            count += 1;
            if count > MAX_PARAMS {
                return Err(OAuthError::InvalidRequest("too many parameters"));
            }
            if !REPEATABLE.contains(&name.as_str()) && pairs.iter().any(|(n, _)| *n == name) {
                if !repeated.contains(&name) {
                    repeated.push(name);
                }
                continue;
            }
            pairs.push((name, value));
        }
        Ok(Form { pairs, repeated })
    }

    /// Names of parameters that came more than once though they may come once, in order of
    /// their first repeat (always empty after [`Form::parse`]).
    pub fn repeated(&self) -> &[String] {
        &self.repeated
    }

    /// Whether `name` came more than once.
    pub fn is_repeated(&self, name: &str) -> bool {
        self.repeated.iter().any(|n| n == name)
    }

    /// The value of a parameter that appears at most once.
    pub fn get(&self, name: &str) -> Option<&str> {
        self.pairs
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
    }

    /// Every value of a repeatable parameter.
    pub fn all(&self, name: &str) -> Vec<String> {
        self.pairs
            .iter()
            .filter(|(n, _)| n == name)
            .map(|(_, v)| v.clone())
            .collect()
    }

    /// The value of a required parameter.
    pub fn require(&self, name: &'static str) -> Result<&str, OAuthError> {
        self.get(name).ok_or(OAuthError::Missing(name))
    }
}

/// `url` with `params` form-encoded onto its query (after any query it has).
pub fn with_query<V: AsRef<str>>(url: &str, params: &[(&str, V)]) -> String {
    let mut url = url.to_owned();
    let mut sep = if url.contains('?') { '&' } else { '?' };
    for (name, value) in params {
        url.push(sep);
        url.push_str(name);
        url.push('=');
        url.push_str(&form_encode(value.as_ref()));
        sep = '&';
    }
    url
}

/// Reads a POSTed form: the content type must be `application/x-www-form-urlencoded`
/// (parameters such as a charset allowed), the body at most [`MAX_BODY_BYTES`], all of it
/// within `deadline` (a client trickling its body holds no connection and task for long).
pub async fn read_post(
    headers: &HeaderMap,
    body: Incoming,
    deadline: Duration,
) -> Result<Form, OAuthError> {
    let content_type = headers
        .get(CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.split(';').next())
        .map(str::trim);
    if !content_type.is_some_and(|t| t.eq_ignore_ascii_case("application/x-www-form-urlencoded")) {
        return Err(OAuthError::InvalidRequest(
            "the body must be application/x-www-form-urlencoded",
        ));
    }
    let declared = headers
        .get(http::header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<usize>().ok());
    if declared.is_some_and(|n| n > MAX_BODY_BYTES) {
        return Err(OAuthError::TooLarge);
    }
    let bytes: Bytes = tokio::time::timeout(deadline, Limited::new(body, MAX_BODY_BYTES).collect())
        .await
        .map_err(|_| OAuthError::BodyTimeout)?
        .map_err(|_| OAuthError::TooLarge)?
        .to_bytes();
    Form::parse(&bytes)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn decodes_and_refuses_repeats() {
        let f = Form::parse(b"a=1&b=x+y%2Bz&empty=&resource=r1&resource=r2").unwrap();
        assert_eq!(f.get("a"), Some("1"));
        assert_eq!(f.get("b"), Some("x y+z"));
        assert_eq!(f.get("empty"), None, "an empty value counts as absent");
        assert_eq!(f.all("resource"), ["r1", "r2"]);
        assert!(Form::parse(b"a=1&a=2").is_err());
        assert!(Form::parse(b"a=%zz").is_err());
        assert!(Form::parse(b"a=%ff").is_err(), "not UTF-8");
        assert!(Form::parse(b"a=1&a=").is_ok(), "an empty repeat is absent");
        let kept =
            Form::parse_keeping_repeats(b"a=1&b=2&a=3&b=4&a=5&resource=r&resource=s").unwrap();
        assert_eq!(kept.repeated(), ["a", "b"]);
        assert!(kept.is_repeated("a") && !kept.is_repeated("resource"));
        assert_eq!(kept.get("a"), Some("1"), "the first value");
        assert!(
            Form::parse_keeping_repeats(b"a=%zz").is_err(),
            "still malformed"
        );
        let many: String = (0..70).map(|_| "a=1&").collect();
        assert!(
            Form::parse_keeping_repeats(many.as_bytes()).is_err(),
            "repeats count toward the parameter bound"
        );
    }

    #[test]
    fn encode_round_trips() {
        for s in ["a b", "x=y&z", "é/ü?#", "plain-._~"] {
            assert_eq!(form_decode(&form_encode(s)).as_deref(), Some(s));
        }
    }
}
