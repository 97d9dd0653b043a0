//! Header hygiene: hop-by-hop headers stripped (RFC 9110 §7.6.1), forwarding and identity
//! headers rebuilt from what the sidecar knows, headers that would make the app route
//! differently from the rule that matched removed, security headers on every response.

use std::net::IpAddr;

use http::header::{self, HeaderMap, HeaderName, HeaderValue};

use crate::settings::HeaderSettings;

pub use scopegate_sidecar_kit::hop::strip_hop_by_hop;

/// `X-Forwarded-For`.
pub const X_FORWARDED_FOR: HeaderName = HeaderName::from_static("x-forwarded-for");
/// `X-Forwarded-Proto`.
pub const X_FORWARDED_PROTO: HeaderName = HeaderName::from_static("x-forwarded-proto");
/// `X-Forwarded-Host`.
pub const X_FORWARDED_HOST: HeaderName = HeaderName::from_static("x-forwarded-host");
/// `Forwarded` (RFC 7239), which the sidecar does not read and never passes on unvetted.
pub const FORWARDED: HeaderName = HeaderName::from_static("forwarded");

/// Headers with which some frameworks route a request to another path or method than the one
/// its rule was matched on (Symfony and IIS read `X-Original-URL`; many frameworks honour a
/// method override): always removed.
const ROUTING_OVERRIDES: [HeaderName; 5] = [
    HeaderName::from_static("x-original-url"),
    HeaderName::from_static("x-rewrite-url"),
    HeaderName::from_static("x-http-method-override"),
    HeaderName::from_static("x-http-method"),
    HeaderName::from_static("x-method-override"),
];

/// Headers naming the client, its address or scheme that only a trusted proxy may set, besides
/// the `X-Forwarded-*` and `Forwarded` headers the sidecar rebuilds: removed when the peer is
/// not a trusted proxy.
const PROXY_ONLY: [HeaderName; 7] = [
    HeaderName::from_static("x-real-ip"),
    HeaderName::from_static("x-client-ip"),
    HeaderName::from_static("true-client-ip"),
    HeaderName::from_static("x-forwarded-port"),
    HeaderName::from_static("x-forwarded-prefix"),
    HeaderName::from_static("x-forwarded-server"),
    HeaderName::from_static("x-forwarded-ssl"),
];

/// Whether two header names are one to a CGI-style server, which maps `-` and `_` to the same
/// character (`HTTP_X_AUTH_SUBJECT`). Header names are lower case already.
fn same_to_cgi(a: &str, b: &str) -> bool {
    a.len() == b.len()
        && a.bytes().zip(b.bytes()).all(|(x, y)| {
            let fold = |c: u8| if c == b'_' { b'-' } else { c };
            fold(x) == fold(y)
        })
}

/// Removes the incoming headers the app could take for one the sidecar sets: every spelling of
/// an identity header (`identity`: exact, any case, `_` for `-`), the `_` spellings of the
/// forwarding headers (their exact spellings are rebuilt by [`set_forwarded`]), and the
/// routing overrides. Returns how many names were removed.
pub fn strip_spoofable(headers: &mut HeaderMap, identity: &[HeaderName]) -> usize {
    let forwarding = [
        &X_FORWARDED_FOR,
        &X_FORWARDED_PROTO,
        &X_FORWARDED_HOST,
        &FORWARDED,
    ];
    let spoofed = |name: &HeaderName| {
        let name = name.as_str();
        identity.iter().any(|id| same_to_cgi(name, id.as_str()))
            || forwarding
                .iter()
                .any(|f| name != f.as_str() && same_to_cgi(name, f.as_str()))
    };
    let mut removed = 0;
    // Most requests carry none: look before allocating.
    if headers.keys().any(spoofed) {
        let names: Vec<HeaderName> = headers.keys().filter(|n| spoofed(n)).cloned().collect();
        for name in names {
            headers.remove(&name);
            removed += 1;
        }
    }
    for name in &ROUTING_OVERRIDES {
        if headers.remove(name).is_some() {
            removed += 1;
        }
    }
    removed
}

/// Whether `Upgrade` names exactly one protocol, `websocket` (case-insensitive).
pub fn upgrades_to_websocket(headers: &HeaderMap) -> bool {
    let mut values = headers.get_all(header::UPGRADE).iter();
    let (Some(value), None) = (values.next(), values.next()) else {
        return false;
    };
    value
        .to_str()
        .is_ok_and(|v| v.trim().eq_ignore_ascii_case("websocket"))
}

/// Whether a request is a WebSocket handshake the sidecar passes on: a GET with
/// `Connection: upgrade` and `Upgrade: websocket`. Any other upgrade (h2c above all, which
/// would hand the client a connection to the app beyond the rules) is not: its `Upgrade`
/// header is removed and the request served as the HTTP/1.1 request it also is (RFC 9110
/// §7.8 lets a server ignore `Upgrade`).
pub fn is_upgrade(method: &http::Method, headers: &HeaderMap) -> bool {
    method == http::Method::GET
        && upgrades_to_websocket(headers)
        && headers
            .get_all(header::CONNECTION)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(|v| v.split(','))
            .any(|t| t.trim().eq_ignore_ascii_case("upgrade"))
}

/// Replaces the forwarding headers. `trust_incoming` says whether the peer is a trusted proxy
/// (`trustedProxies`): only then do the incoming `X-Forwarded-For` chain, `-Proto`, `-Host`
/// and `Forwarded` elements survive (and the [`PROXY_ONLY`] headers); otherwise they are
/// replaced by what this hop knows. Either way `X-Forwarded-For` and `Forwarded` end with the
/// peer.
pub fn set_forwarded(headers: &mut HeaderMap, peer: IpAddr, tls: bool, trust_incoming: bool) {
    let incoming_for: Vec<String> = headers
        .get_all(&X_FORWARDED_FOR)
        .iter()
        .filter_map(|v| v.to_str().ok().map(str::to_owned))
        .collect();
    let incoming_forwarded: Vec<String> = headers
        .get_all(&FORWARDED)
        .iter()
        .filter_map(|v| v.to_str().ok().map(str::to_owned))
        .collect();
    let proto = headers.get(&X_FORWARDED_PROTO).cloned();
    let host = headers
        .get(&X_FORWARDED_HOST)
        .cloned()
        .filter(|_| trust_incoming)
        .or_else(|| headers.get(header::HOST).cloned());
    let own_host = headers.get(header::HOST).cloned();
    for name in [
        &X_FORWARDED_FOR,
        &X_FORWARDED_PROTO,
        &X_FORWARDED_HOST,
        &FORWARDED,
    ] {
        headers.remove(name);
    }
    if !trust_incoming {
        for name in &PROXY_ONLY {
            headers.remove(name);
        }
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
    let own_proto = if tls { "https" } else { "http" };
    let proto = proto
        .filter(|_| trust_incoming)
        .unwrap_or_else(|| HeaderValue::from_static(own_proto));
    headers.insert(X_FORWARDED_PROTO, proto);
    if let Some(host) = host {
        headers.insert(X_FORWARDED_HOST, host);
    }
    // RFC 7239: this hop's element names the peer, the protocol and host it was reached with.
    let mut element = format!("for={};proto={own_proto}", forwarded_node(peer));
    if let Some(host) = own_host.as_ref().and_then(|h| h.to_str().ok()) {
        element.push_str(";host=");
        element.push_str(&quoted(host));
    }
    let mut forwarded = if trust_incoming {
        incoming_forwarded.join(", ")
    } else {
        String::new()
    };
    if !forwarded.is_empty() {
        forwarded.push_str(", ");
    }
    forwarded.push_str(&element);
    if let Ok(value) = HeaderValue::from_str(&forwarded) {
        headers.insert(FORWARDED, value);
    }
}

/// An RFC 7239 node for an address: IPv6 in brackets and quotes.
fn forwarded_node(ip: IpAddr) -> String {
    match ip {
        IpAddr::V4(v4) => v4.to_string(),
        IpAddr::V6(v6) => format!("\"[{v6}]\""),
    }
}

/// An RFC 7230 quoted-string.
fn quoted(text: &str) -> String {
    let mut out = String::with_capacity(text.len() + 2);
    out.push('"');
    for c in text.chars() {
        if matches!(c, '"' | '\\') {
            out.push('\\');
        }
        out.push(c);
    }
    out.push('"');
    out
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
    fn keeps_an_upgrade_handshake() {
        let get = http::Method::GET;
        for (upgrade, passed) in [
            ("websocket", true),
            ("WebSocket", true),
            ("h2c", false),
            ("websocket, h2c", false),
            ("h2c, websocket", false),
            ("TLS/1.2", false),
        ] {
            let h = map(&[
                ("connection", "Upgrade, HTTP2-Settings"),
                ("upgrade", upgrade),
            ]);
            assert_eq!(is_upgrade(&get, &h), passed, "{upgrade}");
        }
        let h = map(&[("connection", "Upgrade"), ("upgrade", "websocket")]);
        assert!(!is_upgrade(&http::Method::POST, &h), "a handshake is a GET");
        let mut h = map(&[("connection", "Upgrade"), ("upgrade", "websocket")]);
        assert!(is_upgrade(&get, &h));
        strip_hop_by_hop(&mut h, true);
        assert_eq!(h.get("upgrade").unwrap(), "websocket");
        assert_eq!(h.get("connection").unwrap(), "upgrade");
    }

    #[test]
    fn every_spelling_of_an_identity_header_is_removed() {
        let subject = HeaderName::from_static("x-auth-subject");
        let scopes = HeaderName::from_static("x-auth-scopes");
        let mut h = map(&[
            ("x-auth-subject", "admin"),
            ("x_auth_subject", "admin"),
            ("x-auth_subject", "admin"),
            ("X_AUTH_SCOPES", "admin"),
            ("x_forwarded_for", "6.6.6.6"),
            ("x-forwarded_proto", "https"),
            ("x-original-url", "/admin"),
            ("x-http-method-override", "DELETE"),
            ("x-forwarded-for", "kept for set_forwarded"),
            ("x-auth-subjects", "another header"),
            ("x-app", "kept"),
        ]);
        assert_eq!(
            strip_spoofable(&mut h, &[subject.clone(), scopes.clone()]),
            8
        );
        let mut names: Vec<&str> = h.keys().map(HeaderName::as_str).collect();
        names.sort_unstable();
        assert_eq!(names, ["x-app", "x-auth-subjects", "x-forwarded-for"]);
        let mut clean = map(&[("x-app", "1")]);
        assert_eq!(
            strip_spoofable(&mut clean, std::slice::from_ref(&subject)),
            0
        );
    }

    #[test]
    fn forwarded_is_replaced_unless_the_peer_is_a_trusted_proxy() {
        let peer: IpAddr = "10.0.0.7".parse().unwrap();
        let incoming = map(&[
            ("forwarded", "for=6.6.6.6;proto=https"),
            ("x-real-ip", "6.6.6.6"),
            ("host", "shop.example:8443"),
        ]);
        let mut untrusted = incoming.clone();
        set_forwarded(&mut untrusted, peer, true, false);
        assert_eq!(
            untrusted.get("forwarded").unwrap(),
            "for=10.0.0.7;proto=https;host=\"shop.example:8443\""
        );
        assert!(untrusted.get("x-real-ip").is_none());
        let mut trusted = incoming;
        set_forwarded(&mut trusted, "2001:db8::1".parse().unwrap(), false, true);
        assert_eq!(
            trusted.get("forwarded").unwrap(),
            "for=6.6.6.6;proto=https, for=\"[2001:db8::1]\";proto=http;host=\"shop.example:8443\""
        );
        assert_eq!(trusted.get("x-real-ip").unwrap(), "6.6.6.6");
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
        assert_eq!(
            untrusted.get("forwarded").unwrap(),
            "for=10.0.0.7;proto=http;host=\"shop.example\""
        );
        set_forwarded(&mut h, peer, false, true);
        assert_eq!(h.get("x-forwarded-for").unwrap(), "6.6.6.6, 10.0.0.7");
        assert_eq!(h.get("x-forwarded-proto").unwrap(), "https");
    }
}
