//! Which host and port a request names, read the way a forward proxy reads it: the URI's
//! authority for an absolute-form request (`GET http://orders.shop.svc/x`, what an app with
//! `HTTP_PROXY` sends), the Host header for an origin-form one (`GET /x` to the loopback
//! port). Pure: nothing here knows the targets, and nothing allocates on the way to a match.

use http::header::{self, HeaderMap};
use http::{Method, Uri};

/// A host and port a request names, as written (any case, perhaps a trailing dot).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Requested<'a> {
    /// The host (an IPv6 literal keeps its brackets).
    pub host: &'a str,
    /// The port, when the request names one.
    pub port: Option<u16>,
}

impl std::fmt::Display for Requested<'_> {
    /// `host[:port]`, as the request named them.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self.port {
            Some(port) => write!(f, "{}:{port}", self.host),
            None => f.write_str(self.host),
        }
    }
}

/// Why a request is not forwarded anywhere.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Unroutable {
    /// A `CONNECT`: the app must send plain `http://` requests (the sidecar adds TLS).
    Connect,
    /// A request target or Host header the proxy does not take; the text says which.
    Malformed(&'static str),
    /// A host (or port) that is no declared target's, as the request named it.
    Undeclared(String),
}

/// The host and port `uri` (the request target) and `headers` name.
pub fn requested<'a>(
    method: &Method,
    uri: &'a Uri,
    headers: &'a HeaderMap,
) -> Result<Requested<'a>, Unroutable> {
    if method == Method::CONNECT {
        return Err(Unroutable::Connect);
    }
    let mut hosts = headers.get_all(header::HOST).iter();
    let host_header = hosts.next();
    if hosts.next().is_some() {
        return Err(Unroutable::Malformed("more than one Host header"));
    }
    let host_header = host_header
        .map(|value| {
            value
                .to_str()
                .ok()
                .and_then(split_authority)
                .ok_or(Unroutable::Malformed("the Host header is not host[:port]"))
        })
        .transpose()?;
    let Some(authority) = uri.authority() else {
        return host_header.ok_or(Unroutable::Malformed("no Host header"));
    };
    if uri.scheme_str() != Some("http") {
        return Err(Unroutable::Malformed(
            "only http:// request URIs are forwarded: the sidecar adds TLS itself",
        ));
    }
    if authority.as_str().contains('@') {
        return Err(Unroutable::Malformed("userinfo in the request URI"));
    }
    let named = Requested {
        host: authority.host(),
        port: authority.port_u16(),
    };
    // The URI wins (RFC 9112 §3.2.2), but a Host header naming another host is a request
    // built to be read two ways: refused rather than guessed.
    if host_header.is_some_and(|h| !same_name(h.host, named.host)) {
        return Err(Unroutable::Malformed(
            "the Host header names another host than the request URI",
        ));
    }
    Ok(named)
}

/// Splits a Host header value into host and port: a name or IPv4 address, or a bracketed
/// IPv6 literal, then an optional `:port` of digits (`host:` names no port). `None` for
/// userinfo, paths, spaces and anything else a Host header does not hold.
pub fn split_authority(text: &str) -> Option<Requested<'_>> {
    let (host, port) = if text.starts_with('[') {
        let end = text.find(']')? + 1;
        let rest = &text[end..];
        match rest.strip_prefix(':') {
            Some(port) => (&text[..end], port),
            None if rest.is_empty() => (&text[..end], ""),
            None => return None,
        }
    } else {
        match text.rsplit_once(':') {
            Some((host, port)) => (host, port),
            None => (text, ""),
        }
    };
    let allowed = |b: u8| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'-' | b'_');
    let host_ok = if host.starts_with('[') {
        host.len() > 2
            && host[1..host.len() - 1]
                .bytes()
                .all(|b| b.is_ascii_hexdigit() || matches!(b, b':' | b'.'))
    } else {
        !host.is_empty() && host.bytes().all(allowed)
    };
    if !host_ok {
        return None;
    }
    let port = match port {
        "" => None,
        digits if digits.len() <= 5 && digits.bytes().all(|b| b.is_ascii_digit()) => {
            Some(digits.parse().ok()?)
        }
        _ => return None,
    };
    Some(Requested { host, port })
}

/// Whether two hosts a request names are one: any case, one trailing dot each ignored.
fn same_name(a: &str, b: &str) -> bool {
    let a = a.strip_suffix('.').unwrap_or(a);
    let b = b.strip_suffix('.').unwrap_or(b);
    a.eq_ignore_ascii_case(b)
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::HeaderValue;

    fn named<'a>(
        method: &Method,
        uri: &'a Uri,
        headers: &'a HeaderMap,
    ) -> Result<(String, Option<u16>), Unroutable> {
        requested(method, uri, headers).map(|r| (r.host.to_owned(), r.port))
    }

    fn headers(hosts: &[&str]) -> HeaderMap {
        let mut map = HeaderMap::new();
        for host in hosts {
            map.append(header::HOST, HeaderValue::from_str(host).unwrap());
        }
        map
    }

    #[test]
    fn origin_form_names_the_host_header() {
        let uri: Uri = "/orders?id=1".parse().unwrap();
        let get = Method::GET;
        let ok = |h: &str| named(&get, &uri, &headers(&[h]));
        assert_eq!(ok("orders.shop.svc"), Ok(("orders.shop.svc".into(), None)));
        assert_eq!(
            ok("orders.shop.svc:8080"),
            Ok(("orders.shop.svc".into(), Some(8080)))
        );
        assert_eq!(ok("[::1]:9443"), Ok(("[::1]".into(), Some(9443))));
        assert_eq!(
            named(&get, &uri, &headers(&[])),
            Err(Unroutable::Malformed("no Host header"))
        );
        for bad in [
            "user@orders.shop.svc",
            "orders.shop.svc/x",
            "orders.shop.svc:99999",
            "orders.shop.svc:8o",
            "orders shop",
            "",
            "[::1",
            "[::1]x",
        ] {
            assert!(ok(bad).is_err(), "{bad:?}");
        }
        assert_eq!(
            named(&get, &uri, &headers(&["a.svc", "b.svc"])),
            Err(Unroutable::Malformed("more than one Host header"))
        );
    }

    #[test]
    fn absolute_form_names_the_uri_and_a_host_header_must_agree() {
        let get = Method::GET;
        let uri: Uri = "http://orders.shop.svc:8080/orders".parse().unwrap();
        let want = Ok(("orders.shop.svc".into(), Some(8080)));
        assert_eq!(named(&get, &uri, &headers(&[])), want);
        assert_eq!(named(&get, &uri, &headers(&["ORDERS.shop.svc."])), want);
        // Another port in Host: the URI's port wins, as RFC 9112 says.
        assert_eq!(named(&get, &uri, &headers(&["orders.shop.svc:1"])), want);
        assert_eq!(
            named(&get, &uri, &headers(&["evil.example"])),
            Err(Unroutable::Malformed(
                "the Host header names another host than the request URI"
            ))
        );
        let userinfo: Uri = "http://u:p@orders.shop.svc/".parse().unwrap();
        assert_eq!(
            named(&get, &userinfo, &headers(&[])),
            Err(Unroutable::Malformed("userinfo in the request URI"))
        );
        let https: Uri = "https://orders.shop.svc/".parse().unwrap();
        assert!(named(&get, &https, &headers(&[])).is_err());
    }

    #[test]
    fn connect_is_refused_whatever_it_names() {
        let uri: Uri = "orders.shop.svc:443".parse().unwrap();
        assert_eq!(
            named(&Method::CONNECT, &uri, &headers(&["orders.shop.svc:443"])),
            Err(Unroutable::Connect)
        );
    }
}
