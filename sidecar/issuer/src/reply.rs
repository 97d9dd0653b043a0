//! Response builders of the issuer's endpoints. Token and credential responses carry
//! `Cache-Control: no-store` and `Pragma: no-cache` (RFC 6749 §5.1); errors are mapped in
//! [`super::error`] and written here only.

use bytes::Bytes;
use http::header::{self, HeaderValue};
use http::{Response, StatusCode};
use scopegate_sidecar_kit::body::{ProxyBody, full};

use crate::error::OAuthError;

/// Marks a response as never to be stored by any cache.
pub fn no_store(response: &mut Response<ProxyBody>) {
    let headers = response.headers_mut();
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    headers.insert(header::PRAGMA, HeaderValue::from_static("no-cache"));
}

/// A JSON response.
pub fn json(status: StatusCode, value: &serde_json::Value) -> Response<ProxyBody> {
    json_bytes(status, value.to_string().into_bytes(), "application/json")
}

/// A response with a JSON body already serialised.
pub fn json_bytes(
    status: StatusCode,
    bytes: Vec<u8>,
    content_type: &'static str,
) -> Response<ProxyBody> {
    let mut response = Response::new(full(bytes));
    *response.status_mut() = status;
    response
        .headers_mut()
        .insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
    response
}

/// A token or credential response: JSON, never stored.
pub fn credentials(value: &serde_json::Value) -> Response<ProxyBody> {
    let mut response = json(StatusCode::OK, value);
    no_store(&mut response);
    response
}

/// An empty response.
pub fn status(status: StatusCode) -> Response<ProxyBody> {
    let mut response = Response::new(full(Bytes::new()));
    *response.status_mut() = status;
    response
}

/// An RFC 6749 §5.2 error response.
pub fn error(err: &OAuthError) -> Response<ProxyBody> {
    let mut response = json(err.status(), &err.body());
    no_store(&mut response);
    let headers = response.headers_mut();
    if matches!(err, OAuthError::InvalidClient { basic: true }) {
        headers.insert(
            header::WWW_AUTHENTICATE,
            HeaderValue::from_static(const_format_basic()),
        );
    }
    if let Some(secs) = err.retry_after() {
        headers.insert(header::RETRY_AFTER, HeaderValue::from(secs));
    }
    if let OAuthError::MethodNotAllowed(allowed) = err
        && let Ok(value) = HeaderValue::from_str(allowed)
    {
        headers.insert(header::ALLOW, value);
    }
    response
}

const fn const_format_basic() -> &'static str {
    // REALM is "scopegate"; kept in one literal so the header needs no allocation.
    "Basic realm=\"scopegate\", charset=\"UTF-8\""
}

/// A redirect of the browser (303, so a POST is never repeated), never stored.
pub fn redirect(location: &str) -> Response<ProxyBody> {
    match HeaderValue::from_str(location) {
        Ok(value) => {
            let mut response = status(StatusCode::SEE_OTHER);
            response.headers_mut().insert(header::LOCATION, value);
            browser_headers(&mut response);
            response
        }
        Err(_) => error_page(
            StatusCode::BAD_REQUEST,
            "The redirect target is not a valid URI.",
        ),
    }
}

/// An error page for the browser when redirecting is not safe (unknown client or redirect
/// URI: RFC 6749 §4.1.2.1). The text is fixed; nothing from the request is echoed.
pub fn error_page(status: StatusCode, text: &'static str) -> Response<ProxyBody> {
    let html = format!(
        "<!doctype html><html><head><meta charset=\"utf-8\"><title>Authorization error</title></head>\
         <body><h1>Authorization error</h1><p>{text}</p></body></html>"
    );
    let mut response = Response::new(full(html));
    *response.status_mut() = status;
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/html; charset=utf-8"),
    );
    browser_headers(&mut response);
    response
}

/// Headers of every page the browser sees: no framing, no referrer, no storing.
fn browser_headers(response: &mut Response<ProxyBody>) {
    no_store(response);
    let headers = response.headers_mut();
    headers.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static("default-src 'none'; frame-ancestors 'none'"),
    );
    headers.insert(header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
    headers.insert(
        header::REFERRER_POLICY,
        HeaderValue::from_static("no-referrer"),
    );
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn basic_challenge_names_the_realm() {
        assert!(const_format_basic().contains(super::super::error::REALM));
        let r = error(&OAuthError::InvalidClient { basic: true });
        assert_eq!(r.status(), 401);
        assert!(
            r.headers()[header::WWW_AUTHENTICATE]
                .to_str()
                .unwrap()
                .starts_with("Basic ")
        );
        assert_eq!(r.headers()[header::CACHE_CONTROL], "no-store");
        assert_eq!(r.headers()[header::PRAGMA], "no-cache");
        let r = error(&OAuthError::RateLimited(7));
        assert_eq!(r.headers()[header::RETRY_AFTER], "7");
    }
}
