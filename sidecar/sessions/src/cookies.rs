//! The sidecar's two cookies on the wire: read from `Cookie` (RFC 6265 §5.4), removed from
//! what the app receives, and set with `__Host-` attributes (Secure, Path=/, no Domain),
//! HttpOnly and SameSite=Lax.

use http::header::{self, HeaderMap, HeaderValue};

/// The cookie pairs of a `Cookie` header value, as bytes: a value need not be ASCII for the
/// pairs around it to count (a browser sends the app's UTF-8 cookie values as they were set).
fn pairs(value: &HeaderValue) -> impl Iterator<Item = &[u8]> {
    value
        .as_bytes()
        .split(|b| *b == b';')
        .map(<[u8]>::trim_ascii)
}

/// The name of a cookie pair: what comes before its first `=`, or the whole pair without one.
fn name_of(pair: &[u8]) -> &[u8] {
    let name = pair.split(|b| *b == b'=').next().unwrap_or_default();
    name.trim_ascii()
}

/// Whether `name` is one of `names`, in any ASCII case. RFC 6265 names are case-sensitive and
/// only the exact name is ever read as a session; a case variant is refused as well because
/// RFC 6265bis browsers apply the `__Host-` rules to any case of the prefix, some frameworks
/// fold cookie names, and no app has a reason to use one.
fn is_ours(name: &[u8], names: &[&str]) -> bool {
    names
        .iter()
        .any(|n| n.as_bytes().eq_ignore_ascii_case(name))
}

/// The values of cookie `name` (exact, RFC 6265 §5.4) in the request's `Cookie` headers, in
/// order. A value that is not visible ASCII is no value of ours and is skipped.
pub fn values<'a>(headers: &'a HeaderMap, name: &'a str) -> impl Iterator<Item = &'a str> + 'a {
    headers
        .get_all(header::COOKIE)
        .iter()
        .flat_map(pairs)
        .filter_map(move |pair| {
            let at = pair.iter().position(|b| *b == b'=')?;
            let (n, value) = (pair[..at].trim_ascii(), pair[at + 1..].trim_ascii());
            (n == name.as_bytes())
                .then(|| std::str::from_utf8(value).ok())
                .flatten()
                .map(|v| v.trim_matches('"'))
        })
}

/// The first value of cookie `name`.
pub fn value<'a>(headers: &'a HeaderMap, name: &'a str) -> Option<&'a str> {
    values(headers, name).next()
}

/// Removes the cookies of `names` (in any case, wherever they are among the others and however
/// often) from the request's `Cookie` headers (a header left empty is removed): the app never
/// sees them. Headers that hold none of them are left as they are, byte for byte.
pub fn strip(headers: &mut HeaderMap, names: &[&str]) {
    let ours = |pair: &[u8]| is_ours(name_of(pair), names);
    let holds_ours = headers
        .get_all(header::COOKIE)
        .iter()
        .any(|v| pairs(v).any(ours));
    if !holds_ours {
        return;
    }
    let kept: Vec<HeaderValue> = headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| {
            let rest: Vec<&[u8]> = pairs(v).filter(|p| !ours(p) && !p.is_empty()).collect();
            (!rest.is_empty())
                .then(|| HeaderValue::from_bytes(&rest.join(&b"; "[..])).ok())
                .flatten()
        })
        .collect();
    headers.remove(header::COOKIE);
    for value in kept {
        headers.append(header::COOKIE, value);
    }
}

/// Whether a `Set-Cookie` value would set one of `names`: its cookie name (RFC 6265 §5.2:
/// before the first `=` of the part before the first `;`, whitespace trimmed) in any case; a
/// nameless cookie whose value starts with one (`=__Host-x=v`, which an older browser sends
/// back as `__Host-x=v`); or either of those after a comma, for a component downstream that
/// splits a combined header on commas.
fn sets_ours(value: &HeaderValue, names: &[&str]) -> bool {
    value.as_bytes().split(|b| *b == b',').any(|part| {
        let pair = part
            .split(|b| *b == b';')
            .next()
            .unwrap_or_default()
            .trim_ascii();
        let pair = pair.strip_prefix(b"=").unwrap_or(pair);
        is_ours(name_of(pair), names)
    })
}

/// Removes from an answer of the app every `Set-Cookie` that would set one of `names`: only
/// the sidecar sets its cookies, so an app (buggy, or taken over) can neither plant a session
/// of its choosing in a browser (session fixation) nor overwrite or clear the user's. Returns
/// how many were removed; the app's other cookies are left as they are.
pub fn strip_set_cookies(headers: &mut HeaderMap, names: &[&str]) -> usize {
    let all: Vec<HeaderValue> = headers
        .get_all(header::SET_COOKIE)
        .iter()
        .cloned()
        .collect();
    let removed = all.iter().filter(|v| sets_ours(v, names)).count();
    if removed > 0 {
        headers.remove(header::SET_COOKIE);
        for value in all.into_iter().filter(|v| !sets_ours(v, names)) {
            headers.append(header::SET_COOKIE, value);
        }
    }
    removed
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
    fn a_non_ascii_cookie_beside_ours_neither_hides_it_nor_lets_it_through() {
        // The app's cookie holds UTF-8 ("café"): the header is no `str`, ours is still found
        // and still removed, the app's cookie goes on byte for byte.
        let mut h = HeaderMap::new();
        let sent = b"pref=caf\xc3\xa9; __Host-s=v1.k.x; b=2";
        h.append(header::COOKIE, HeaderValue::from_bytes(sent).unwrap());
        assert_eq!(value(&h, "__Host-s"), Some("v1.k.x"));
        strip(&mut h, &["__Host-s"]);
        assert_eq!(h[header::COOKIE].as_bytes(), b"pref=caf\xc3\xa9; b=2");
    }

    #[test]
    fn ours_are_stripped_twice_sent_in_any_case_and_with_spaces() {
        let mut h = headers(&[
            "__Host-s=one;__Host-s=two; a=1",
            "  __Host-s  = three ;b=2",
            "__HOST-S=four; c=3",
            "__Host-s",
        ]);
        assert_eq!(
            values(&h, "__Host-s").collect::<Vec<_>>(),
            ["one", "two", "three"]
        );
        strip(&mut h, &["__Host-s"]);
        let left: Vec<&str> = h
            .get_all(header::COOKIE)
            .iter()
            .map(|v| v.to_str().unwrap())
            .collect();
        assert_eq!(left, ["a=1", "b=2", "c=3"]);
    }

    #[test]
    fn the_apps_set_cookie_for_our_names_is_removed_in_every_spelling() {
        let names = ["__Host-s", "__Host-l"];
        let ours = [
            "__Host-s=evil; Path=/; Secure",
            "__Host-l=evil",
            " \t__Host-s=evil",
            "__host-s=evil; Path=/",
            "__HOST-S=evil",
            "__Host-s =evil",
            "__Host-s",
            "=__Host-s=evil; Path=/",
            "= __Host-s=evil",
            "a=1; Expires=Wed, 21 Oct 2026 07:28:00 GMT, __Host-s=evil; Path=/",
            "a=1,__Host-s=evil",
        ];
        let theirs = [
            "a=1; Path=/",
            "__Host-session=x; Path=/; Secure",
            "x__Host-s=1",
            "__Host-s-other=1",
            "a=__Host-s=1",
            "a=1; Comment=__Host-s=1",
            "b=2; Expires=Wed, 21 Oct 2026 07:28:00 GMT; Path=/",
        ];
        let mut h = HeaderMap::new();
        for v in ours.iter().chain(&theirs) {
            h.append(header::SET_COOKIE, HeaderValue::from_str(v).unwrap());
        }
        // Not text, and ours.
        h.append(
            header::SET_COOKIE,
            HeaderValue::from_bytes(b"__Host-s=\xff; Path=/").unwrap(),
        );
        assert_eq!(strip_set_cookies(&mut h, &names), ours.len() + 1);
        let left: Vec<&str> = h
            .get_all(header::SET_COOKIE)
            .iter()
            .map(|v| v.to_str().unwrap())
            .collect();
        assert_eq!(left, theirs);
        assert_eq!(strip_set_cookies(&mut h, &names), 0);
        assert_eq!(h.get_all(header::SET_COOKIE).iter().count(), theirs.len());
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
