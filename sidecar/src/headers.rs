//! Header hygiene: hop-by-hop headers stripped (RFC 9110 §7.6.1), forwarding and identity
//! headers rebuilt from what the sidecar knows, security headers on every response.

use std::net::IpAddr;

use http::header::{self, HeaderMap, HeaderName, HeaderValue};

use crate::settings::HeaderSettings;

/// Hop-by-hop headers, never forwarded.
const HOP_BY_HOP: [HeaderName; 8] = [
    header::CONNECTION,
    HeaderName::from_static("keep-alive"),
    HeaderName::from_static("proxy-connection"),
    header::PROXY_AUTHENTICATE,
    header::PROXY_AUTHORIZATION,
    header::TE,
    header::TRAILER,
    header::TRANSFER_ENCODING,
];

/// `X-Forwarded-For`.
pub const X_FORWARDED_FOR: HeaderName = HeaderName::from_static("x-forwarded-for");
/// `X-Forwarded-Proto`.
pub const X_FORWARDED_PROTO: HeaderName = HeaderName::from_static("x-forwarded-proto");
/// `X-Forwarded-Host`.
pub const X_FORWARDED_HOST: HeaderName = HeaderName::from_static("x-forwarded-host");
/// `Forwarded` (RFC 7239), which the sidecar does not read and never passes on unvetted.
pub const FORWARDED: HeaderName = HeaderName::from_static("forwarded");

/// Whether a request asks for a protocol upgrade (WebSocket).
pub fn is_upgrade(headers: &HeaderMap) -> bool {
    headers.contains_key(header::UPGRADE)
        && headers
            .get_all(header::CONNECTION)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(|v| v.split(','))
            .any(|t| t.trim().eq_ignore_ascii_case("upgrade"))
}

/// Removes hop-by-hop headers and those named in `Connection`. With `keep_upgrade`, the
/// `Upgrade` header and `Connection: upgrade` survive (a WebSocket handshake).
pub fn strip_hop_by_hop(headers: &mut HeaderMap, keep_upgrade: bool) {
    let upgrade = headers.get(header::UPGRADE).cloned();
    let named: Vec<HeaderName> = headers
        .get_all(header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .filter_map(|t| HeaderName::from_bytes(t.trim().as_bytes()).ok())
        .collect();
    for name in named.iter().chain(HOP_BY_HOP.iter()) {
        headers.remove(name);
    }
    headers.remove(header::UPGRADE);
    if let (true, Some(upgrade)) = (keep_upgrade, upgrade) {
        headers.insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
        headers.insert(header::UPGRADE, upgrade);
    }
}

/// Replaces the forwarding headers: `X-Forwarded-For` keeps the incoming chain only when
/// proxies are trusted, then names the peer; `-Proto` and `-Host` come from a trusted proxy
/// or this hop. `Forwarded` is dropped.
pub fn set_forwarded(headers: &mut HeaderMap, peer: IpAddr, tls: bool, trust_incoming: bool) {
    let incoming_for: Vec<String> = headers
        .get_all(&X_FORWARDED_FOR)
        .iter()
        .filter_map(|v| v.to_str().ok().map(str::to_owned))
        .collect();
    let proto = headers.get(&X_FORWARDED_PROTO).cloned();
    let host = headers
        .get(&X_FORWARDED_HOST)
        .cloned()
        .filter(|_| trust_incoming)
        .or_else(|| headers.get(header::HOST).cloned());
    for name in [
        &X_FORWARDED_FOR,
        &X_FORWARDED_PROTO,
        &X_FORWARDED_HOST,
        &FORWARDED,
    ] {
        headers.remove(name);
    }
    let mut chain = if trust_incoming {
        incoming_for.join(", ")
    } else {
        String::new()
    };
    if !chain.is_empty() {
        chain.push_str(", ");
    }
    chain.push_str(&peer.to_string());
    if let Ok(value) = HeaderValue::from_str(&chain) {
        headers.insert(X_FORWARDED_FOR, value);
    }
    let proto = proto
        .filter(|_| trust_incoming)
        .unwrap_or_else(|| HeaderValue::from_static(if tls { "https" } else { "http" }));
    headers.insert(X_FORWARDED_PROTO, proto);
    if let Some(host) = host {
        headers.insert(X_FORWARDED_HOST, host);
    }
}

/// Adds the security headers a response must carry.
pub fn secure_response(headers: &mut HeaderMap, settings: &HeaderSettings, no_store: bool) {
    if settings.security {
        headers.insert(
            header::X_CONTENT_TYPE_OPTIONS,
            HeaderValue::from_static("nosniff"),
        );
        headers.insert(header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
        headers.insert(
            header::REFERRER_POLICY,
            HeaderValue::from_static("no-referrer"),
        );
    }
    if settings.hsts {
        headers.insert(
            header::STRICT_TRANSPORT_SECURITY,
            HeaderValue::from_static("max-age=31536000; includeSubDomains"),
        );
    }
    if no_store {
        headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn map(pairs: &[(&str, &str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.append(
                HeaderName::from_bytes(k.as_bytes()).unwrap(),
                HeaderValue::from_str(v).unwrap(),
            );
        }
        h
    }

    #[test]
    fn strips_hop_by_hop_and_connection_named_headers() {
        let mut h = map(&[
            ("connection", "keep-alive, x-secret"),
            ("x-secret", "1"),
            ("keep-alive", "timeout=5"),
            ("te", "trailers"),
            ("transfer-encoding", "chunked"),
            ("upgrade", "websocket"),
            ("x-app", "kept"),
        ]);
        strip_hop_by_hop(&mut h, false);
        let names: Vec<&str> = h.keys().map(HeaderName::as_str).collect();
        assert_eq!(names, ["x-app"]);
    }

    #[test]
    fn keeps_an_upgrade_handshake() {
        let mut h = map(&[("connection", "Upgrade"), ("upgrade", "websocket")]);
        assert!(is_upgrade(&h));
        strip_hop_by_hop(&mut h, true);
        assert_eq!(h.get("upgrade").unwrap(), "websocket");
        assert_eq!(h.get("connection").unwrap(), "upgrade");
    }

    #[test]
    fn forwarded_for_is_rebuilt() {
        let peer: IpAddr = "10.0.0.7".parse().unwrap();
        let mut h = map(&[
            ("x-forwarded-for", "6.6.6.6"),
            ("x-forwarded-proto", "https"),
            ("forwarded", "for=6.6.6.6"),
            ("host", "shop.example"),
        ]);
        set_forwarded(&mut h.clone(), peer, false, false);
        let mut untrusted = h.clone();
        set_forwarded(&mut untrusted, peer, false, false);
        assert_eq!(untrusted.get("x-forwarded-for").unwrap(), "10.0.0.7");
        assert_eq!(untrusted.get("x-forwarded-proto").unwrap(), "http");
        assert_eq!(untrusted.get("x-forwarded-host").unwrap(), "shop.example");
        assert!(untrusted.get("forwarded").is_none());
        set_forwarded(&mut h, peer, false, true);
        assert_eq!(h.get("x-forwarded-for").unwrap(), "6.6.6.6, 10.0.0.7");
        assert_eq!(h.get("x-forwarded-proto").unwrap(), "https");
    }
}
