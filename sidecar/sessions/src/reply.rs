//! The sessions' own answers: redirects and short plain pages, never cached.

use http::header::{self, HeaderValue};
use http::{Response, StatusCode};
use scopegate_sidecar_kit::body::{ProxyBody, full};

/// `no-store` and `Pragma: no-cache` on an answer of ours.
fn never_cached(response: &mut Response<ProxyBody>) {
    let headers = response.headers_mut();
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    headers.insert(header::PRAGMA, HeaderValue::from_static("no-cache"));
}

/// A redirect to `location` (a URL the sidecar built, or a checked local path).
pub(crate) fn redirect(status: StatusCode, location: &str) -> Response<ProxyBody> {
    let Ok(location) = HeaderValue::from_str(location) else {
        return page(
            StatusCode::INTERNAL_SERVER_ERROR,
            "The redirect could not be built.",
        );
    };
    let mut response = Response::new(full(""));
    *response.status_mut() = status;
    response.headers_mut().insert(header::LOCATION, location);
    response
        .headers_mut()
        .insert(header::CONTENT_LENGTH, HeaderValue::from(0u64));
    never_cached(&mut response);
    response
}

/// A short plain-text page.
pub(crate) fn page(status: StatusCode, text: &str) -> Response<ProxyBody> {
    let body = format!("{text}\n");
    let mut response = Response::new(full(body.clone()));
    *response.status_mut() = status;
    let headers = response.headers_mut();
    headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    headers.insert(header::CONTENT_LENGTH, HeaderValue::from(body.len()));
    never_cached(&mut response);
    response
}
