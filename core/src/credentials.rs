//! Where a bearer token may come from: the `Authorization` header only (RFC 6750 §2.1).

use http::HeaderMap;
use http::header::AUTHORIZATION;

/// What the request carries.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Credentials<'a> {
    /// No bearer token (no header, or another scheme).
    None,
    /// A syntactically valid b64token.
    Bearer(&'a str),
}

/// The request is malformed in a way RFC 6750 answers with `invalid_request`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum CredentialsError {
    /// More than one `Authorization` header.
    #[error("more than one Authorization header")]
    TwoHeaders,
    /// A token in the header and another in the query (RFC 6750 §2: one method only).
    #[error("token in the header and in the query")]
    TwoMethods,
    /// `Bearer` with an empty or malformed b64token, or a non-ASCII header.
    #[error("malformed bearer token")]
    Malformed,
}

/// Reads the bearer token of a request. `query` is the raw query string. Tokens in the
/// query are never accepted; with a header token as well they make the request malformed.
pub fn extract<'a>(
    headers: &'a HeaderMap,
    query: Option<&str>,
) -> Result<Credentials<'a>, CredentialsError> {
    let mut values = headers.get_all(AUTHORIZATION).iter();
    let Some(value) = values.next() else {
        return Ok(Credentials::None);
    };
    if values.next().is_some() {
        return Err(CredentialsError::TwoHeaders);
    }
    let value = value.to_str().map_err(|_| CredentialsError::Malformed)?;
    let Some((scheme, rest)) = value.split_once(' ') else {
        return if value.eq_ignore_ascii_case("bearer") {
            Err(CredentialsError::Malformed)
        } else {
            Ok(Credentials::None)
        };
    };
    if !scheme.eq_ignore_ascii_case("bearer") {
        return Ok(Credentials::None);
    }
    let token = rest.trim_start_matches(' ');
    if !is_b64token(token) {
        return Err(CredentialsError::Malformed);
    }
    if query.is_some_and(has_query_token) {
        return Err(CredentialsError::TwoMethods);
    }
    Ok(Credentials::Bearer(token))
}

/// RFC 6750 §2.1: `1*( ALPHA / DIGIT / "-" / "." / "_" / "~" / "+" / "/" ) *"="`.
fn is_b64token(token: &str) -> bool {
    let body = token.trim_end_matches('=');
    !body.is_empty()
        && body.bytes().all(|b| {
            b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~' | b'+' | b'/')
        })
}

fn has_query_token(query: &str) -> bool {
    query
        .split('&')
        .any(|pair| pair.split('=').next() == Some("access_token"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::HeaderValue;

    fn headers(values: &[&[u8]]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for v in values {
            h.append(AUTHORIZATION, HeaderValue::from_bytes(v).unwrap());
        }
        h
    }

    #[test]
    fn reads_bearer_tokens() {
        let h = headers(&[b"Bearer abc.def.ghi"]);
        assert_eq!(extract(&h, None), Ok(Credentials::Bearer("abc.def.ghi")));
        let h = headers(&[b"bEaReR  abc="]);
        assert_eq!(extract(&h, Some("x=1")), Ok(Credentials::Bearer("abc=")));
        assert_eq!(extract(&headers(&[]), None), Ok(Credentials::None));
        assert_eq!(
            extract(&headers(&[b"Basic dTpw"]), None),
            Ok(Credentials::None)
        );
    }

    #[test]
    fn malformed_requests() {
        assert_eq!(
            extract(&headers(&[b"Bearer a", b"Bearer b"]), None),
            Err(CredentialsError::TwoHeaders)
        );
        assert_eq!(
            extract(&headers(&[b"Bearer a"]), Some("access_token=b")),
            Err(CredentialsError::TwoMethods)
        );
        for bad in [
            &b"Bearer"[..],
            b"Bearer ",
            b"Bearer a b",
            b"Bearer a\"b",
            b"Bearer =",
            b"Bearer \xff",
        ] {
            assert_eq!(
                extract(&headers(&[bad]), None),
                Err(CredentialsError::Malformed),
                "{bad:?}"
            );
        }
    }
}
