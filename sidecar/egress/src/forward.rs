//! One call sent on to its target: the target's scheme and authority with the request's path
//! and query, hop-by-hop and `Proxy-*` headers removed, the app's own `Authorization`
//! replaced by the sidecar's token, Host set to the target. Bodies stream both ways;
//! redirects go back to the app as they are (the client follows none).

use std::time::Duration;

use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use http::{Request, Response, StatusCode, Uri, Version, uri};
use http_body_util::BodyExt;
use scopegate_sidecar_kit::body::ProxyBody;
use scopegate_sidecar_kit::hop::strip_hop_by_hop;

use crate::settings::{Compiled, Target};

/// How long a target may take to send its response headers, connect included.
pub const RESPONSE_TIMEOUT: Duration = Duration::from_secs(30);

/// Why a call got no answer from its target.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum UpstreamError {
    /// No connection, a TLS failure (a certificate no trusted root vouches for), a protocol
    /// error, or an answer switching protocols.
    Unreachable,
    /// No response headers within [`RESPONSE_TIMEOUT`].
    Timeout,
}

/// Sends `req` to `target` with `authorization` and returns the target's response.
pub async fn forward(
    compiled: &Compiled,
    target: &Target,
    req: Request<ProxyBody>,
    authorization: HeaderValue,
) -> Result<Response<ProxyBody>, UpstreamError> {
    let (mut parts, body) = req.into_parts();
    parts.uri = target_uri(target, &parts.uri)?;
    parts.version = Version::HTTP_11;
    clean_request_headers(&mut parts.headers);
    parts
        .headers
        .insert(header::HOST, target.host_header.clone());
    parts.headers.insert(header::AUTHORIZATION, authorization);
    let client = if target.in_cluster {
        &compiled.in_cluster
    } else {
        &compiled.outside
    };
    let sent = client.request(Request::from_parts(parts, body));
    let response = match tokio::time::timeout(RESPONSE_TIMEOUT, sent).await {
        Err(_) => {
            tracing::warn!(target_name = %target.name, "egress: the target did not answer in time");
            return Err(UpstreamError::Timeout);
        }
        Ok(Err(err)) => {
            tracing::warn!(
                target_name = %target.name,
                error = %scopegate_core::error_chain(&err),
                "egress: the target is unreachable"
            );
            return Err(UpstreamError::Unreachable);
        }
        Ok(Ok(response)) => response,
    };
    let (mut parts, body) = response.into_parts();
    // Nothing asked to switch (Upgrade is never forwarded): a target that does is broken.
    if parts.status == StatusCode::SWITCHING_PROTOCOLS {
        tracing::warn!(target_name = %target.name, "egress: the target switched protocols unasked");
        return Err(UpstreamError::Unreachable);
    }
    // A target that sent both framings: the body is re-framed on the way to the app, so its
    // Content-Length must not pass along (RFC 9112 §6.3).
    if parts.headers.contains_key(header::TRANSFER_ENCODING) {
        parts.headers.remove(header::CONTENT_LENGTH);
    }
    strip_hop_by_hop(&mut parts.headers, false);
    Ok(Response::from_parts(parts, body.boxed()))
}

/// The target's scheme and authority with the request's path and query.
fn target_uri(target: &Target, requested: &Uri) -> Result<Uri, UpstreamError> {
    let mut parts = uri::Parts::default();
    parts.scheme = Some(target.scheme.clone());
    parts.authority = Some(target.authority.clone());
    parts.path_and_query = Some(
        requested
            .path_and_query()
            .cloned()
            .unwrap_or_else(|| uri::PathAndQuery::from_static("/")),
    );
    Uri::from_parts(parts).map_err(|_| UpstreamError::Unreachable)
}

/// Removes what must not reach a target: hop-by-hop headers, every `Proxy-*` header (meant
/// for this proxy, or for none), and the app's `Authorization` (the sidecar's token replaces
/// it; the app holds no credential for the target).
fn clean_request_headers(headers: &mut HeaderMap) {
    strip_hop_by_hop(headers, false);
    headers.remove(header::AUTHORIZATION);
    let is_proxy = |name: &HeaderName| name.as_str().starts_with("proxy-");
    // Most requests carry none: look before allocating.
    if headers.keys().any(is_proxy) {
        let names: Vec<HeaderName> = headers.keys().filter(|n| is_proxy(n)).cloned().collect();
        for name in names {
            headers.remove(name);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn what_the_app_sends_for_itself_or_for_this_hop_stays_here() {
        let mut headers = HeaderMap::new();
        for (name, value) in [
            ("authorization", "Bearer app-own"),
            ("authorization", "Basic second"),
            ("proxy-authorization", "Basic eDp5"),
            ("proxy-x-anything", "1"),
            ("connection", "close, x-hop"),
            ("x-hop", "1"),
            ("keep-alive", "timeout=5"),
            ("upgrade", "websocket"),
            ("te", "trailers"),
            ("accept", "application/json"),
            ("x-request-id", "abc"),
        ] {
            headers.append(
                HeaderName::from_static(name),
                HeaderValue::from_static(value),
            );
        }
        clean_request_headers(&mut headers);
        let mut names: Vec<&str> = headers.keys().map(HeaderName::as_str).collect();
        names.sort_unstable();
        assert_eq!(names, ["accept", "x-request-id"]);
    }
}
