//! The sidecar's two cookies on the wire: read from `Cookie` (RFC 6265 §5.4), removed from
//! what the app receives, and set with `__Host-` attributes (Secure, Path=/, no Domain),
//! HttpOnly and SameSite=Lax.

use http::header::{self, HeaderMap, HeaderValue};

/// The values of cookie `name` in the request's `Cookie` headers, in order.
pub fn values<'a>(headers: &'a HeaderMap, name: &'a str) -> impl Iterator<Item = &'a str> + 'a {
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(move |pair| {
            let (n, value) = pair.trim().split_once('=')?;
            (n == name).then(|| value.trim_matches('"'))
        })
}

/// The first value of cookie `name`.
pub fn value<'a>(headers: &'a HeaderMap, name: &'a str) -> Option<&'a str> {
    values(headers, name).next()
}

/// Removes the cookies of `names` from the request's `Cookie` headers (a header left empty is
/// removed); the app never sees them. Headers that hold none of them are left as they are.
pub fn strip(headers: &mut HeaderMap, names: &[&str]) {
    let ours = |pair: &str| {
        let name = pair.trim().split_once('=').map_or(pair.trim(), |(n, _)| n);
        names.contains(&name)
    };
    let holds_ours = headers
        .get_all(header::COOKIE)
        .iter()
        .any(|v| v.to_str().is_ok_and(|text| text.split(';').any(ours)));
    if !holds_ours {
        return;
    }
    let kept: Vec<HeaderValue> = headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| {
            // A value that is not text holds no cookie of ours; it goes on as it came.
            let Ok(text) = v.to_str() else {
                return Some(v.clone());
            };
            let rest: Vec<&str> = text
                .split(';')
                .filter(|p| !ours(p) && !p.trim().is_empty())
                .map(str::trim)
                .collect();
            (!rest.is_empty())
                .then(|| HeaderValue::from_str(&rest.join("; ")).ok())
                .flatten()
        })
        .collect();
    headers.remove(header::COOKIE);
    for value in kept {
        headers.append(header::COOKIE, value);
    }
}

/// `Set-Cookie` for `name=value`, kept `max_age` seconds.
pub fn set(name: &str, value: &str, max_age: i64) -> Option<HeaderValue> {
    let mut header = HeaderValue::from_str(&format!(
        "{name}={value}; Path=/; Secure; HttpOnly; SameSite=Lax; Max-Age={}",
        max_age.max(0)
    ))
    .ok()?;
    header.set_sensitive(true);
    Some(header)
}

/// `Set-Cookie` that removes `name` from the browser.
pub fn clear(name: &str) -> HeaderValue {
    HeaderValue::from_str(&format!(
        "{name}=; Path=/; Secure; HttpOnly; SameSite=Lax; Max-Age=0"
    ))
    .unwrap_or_else(|_| HeaderValue::from_static("invalid=; Max-Age=0"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(cookies: &[&str]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for c in cookies {
            h.append(header::COOKIE, HeaderValue::from_str(c).unwrap());
        }
        h
    }

    #[test]
    fn reads_a_cookie_among_others_and_in_any_cookie_header() {
        let h = headers(&["a=1; __Host-s=v1.k.x; b=2", "__Host-s=second"]);
        assert_eq!(value(&h, "__Host-s"), Some("v1.k.x"));
        assert_eq!(values(&h, "__Host-s").count(), 2);
        assert_eq!(value(&h, "__Host"), None);
        assert_eq!(value(&headers(&["x__Host-s=1"]), "__Host-s"), None);
    }

    #[test]
    fn strips_only_the_named_cookies() {
        let mut h = headers(&["a=1; __Host-s=v; b=2", "__Host-l=x", "c=3"]);
        strip(&mut h, &["__Host-s", "__Host-l"]);
        let left: Vec<&str> = h
            .get_all(header::COOKIE)
            .iter()
            .map(|v| v.to_str().unwrap())
            .collect();
        assert_eq!(left, ["a=1; b=2", "c=3"]);
        let mut none = headers(&["__Host-s=v"]);
        strip(&mut none, &["__Host-s"]);
        assert!(none.get(header::COOKIE).is_none());
        let mut untouched = headers(&["a=1;b=2"]);
        strip(&mut untouched, &["__Host-s"]);
        assert_eq!(untouched[header::COOKIE], "a=1;b=2");
    }

    #[test]
    fn cookies_are_host_only_secure_http_only_and_lax() {
        let set = set("__Host-s", "v", 600).unwrap();
        assert_eq!(
            set,
            "__Host-s=v; Path=/; Secure; HttpOnly; SameSite=Lax; Max-Age=600"
        );
        assert!(set.is_sensitive());
        assert_eq!(
            clear("__Host-s"),
            "__Host-s=; Path=/; Secure; HttpOnly; SameSite=Lax; Max-Age=0"
        );
    }
}
