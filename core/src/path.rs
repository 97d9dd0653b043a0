//! The grammar of path patterns in AuthPolicy rules, and the request path rules see.
//!
//! A request path is normalised twice over ([`RequestPath`]). The *forwarded* path is what
//! the app receives: dot segments resolved, `//` collapsed, unreserved characters decoded,
//! every other escape kept (upper-case hex), so the app's own decoding means what it meant.
//! The *route* path is what rules match: the forwarded path with every escape of a character
//! a pattern can hold (`:`, `@`, `!`, `$`, `&`, `'`, `(`, `)`, `+`, `,`, `=`) decoded too, the
//! way routers decode before routing, so `/v1/orders%3Acancel` matches a rule for
//! `/v1/orders:cancel`. Escapes of characters no pattern can hold (space, `?`, `#`, non-ASCII
//! bytes...) stay encoded in the route path: a segment holding one can only match `*` or
//! `/**`, which is what its decoded form would match as well. Spellings that apps read in
//! different ways are refused before any of this ([`PathError`]): an encoded `/`, `\`, NUL,
//! `%` or `;`, a raw `\` or `;`.
//!
//! A pattern never needs percent-encoding, dot segments or empty segments, and the grammar
//! refuses them: a pattern that could never match is a mistake to report.
//!
//! Segments are separated by `/`. A segment is a literal of RFC 3986 path characters
//! (without `%`, `;` and `*`), or `*` (exactly one segment). A final `/**` matches any
//! number of further segments, including none. `/` alone matches the root only.
//!
//! A pattern matches either *exactly* (the spelling of the route path, case and a trailing
//! slash included) or *loosely* (ASCII case ignored in literal segments, one trailing slash
//! ignored on either side): many routers (Express, Spring before 6, ASP.NET, Starlette's
//! `redirect_slashes`) send `/admin/`, `/ADMIN` and `/admin` to one handler. Which rules
//! match loosely is the policy's choice ([`crate::policy`]): those that require something.

/// The pattern grammar as a regular expression (RE2/JSON Schema/`regex` dialect).
pub const PATTERN: &str = concat!(
    r"^(?:/",
    r"|(?:/(?:\*|[A-Za-z0-9_~!$&'()+,=:@-][A-Za-z0-9._~!$&'()+,=:@-]*|\.[A-Za-z0-9_~!$&'()+,=:@-][A-Za-z0-9._~!$&'()+,=:@-]*|\.\.[A-Za-z0-9._~!$&'()+,=:@-]+))+/?",
    r"|(?:/(?:\*|[A-Za-z0-9_~!$&'()+,=:@-][A-Za-z0-9._~!$&'()+,=:@-]*|\.[A-Za-z0-9_~!$&'()+,=:@-][A-Za-z0-9._~!$&'()+,=:@-]*|\.\.[A-Za-z0-9._~!$&'()+,=:@-]+))*/\*\*",
    r")$"
);

/// Longest path pattern the API accepts.
pub const MAX_LEN: usize = 256;

/// Why a request path was refused before rule matching.
///
/// Every refusal is a spelling that some app or framework would read differently from
/// the sidecar (the Istio CVE-2021-31920 class), so the sidecar answers 400 rather than
/// guess which reading the app will take.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum PathError {
    /// The path is not in origin form.
    #[error("request path does not start with '/'")]
    NotAbsolute,
    /// A `%` not followed by two hex digits.
    #[error("malformed percent-encoding")]
    BadPercent,
    /// `%2F`, `%5C`, `%00`, `%25` or `%3B`: an encoded separator, NUL, percent or `;`.
    #[error("ambiguous percent-encoding (encoded '/', '\\', NUL, '%' or ';')")]
    AmbiguousEncoding,
    /// A raw `;` (path parameters are read differently by different servers).
    #[error("path parameters (';') are not accepted")]
    Semicolon,
    /// A raw `\`, which some servers read as `/`.
    #[error("backslash in path")]
    Backslash,
    /// A control character, space or non-ASCII byte.
    #[error("control, space or non-ASCII byte in path")]
    BadByte,
}

/// Normalises a request path (without query) the way the app will see it and rules match
/// it: unreserved characters percent-decoded, `//` collapsed, `.` and `..` segments
/// resolved (never above the root), a trailing `/` kept. Other percent-escapes stay encoded
/// with upper-case hex; ambiguous spellings are refused ([`PathError`]).
pub fn normalise(raw: &str) -> Result<String, PathError> {
    let bytes = raw.as_bytes();
    if bytes.first() != Some(&b'/') {
        return Err(PathError::NotAbsolute);
    }
    let decoded = decode_unreserved(bytes)?;
    let ends_with_slash =
        decoded.ends_with('/') || decoded.ends_with("/.") || decoded.ends_with("/..");
    let mut segments: Vec<&str> = Vec::new();
    for segment in decoded.split('/') {
        match segment {
            "" | "." => {}
            ".." => {
                segments.pop();
            }
            other => segments.push(other),
        }
    }
    let mut out = String::with_capacity(decoded.len());
    for segment in &segments {
        out.push('/');
        out.push_str(segment);
    }
    if out.is_empty() || ends_with_slash {
        out.push('/');
    }
    Ok(out)
}

/// A request path, normalised for forwarding and for rule matching (see the module docs).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RequestPath {
    forward: String,
    /// The route path when it differs from `forward`.
    route: Option<String>,
}

impl RequestPath {
    /// Normalises a request path (without query); ambiguous spellings are refused.
    pub fn parse(raw: &str) -> Result<RequestPath, PathError> {
        let forward = normalise(raw)?;
        let route = route_form(&forward);
        Ok(RequestPath { forward, route })
    }

    /// The path the app receives.
    pub fn forward(&self) -> &str {
        &self.forward
    }

    /// The path rules match.
    pub fn route(&self) -> &str {
        self.route.as_deref().unwrap_or(&self.forward)
    }
}

/// The route path of a forwarded path: escapes of pattern characters decoded. `None` when
/// nothing changes (the common case costs one scan, no allocation).
fn route_form(forward: &str) -> Option<String> {
    // `forward` is ASCII: `normalise` refuses every other byte.
    let bytes = forward.as_bytes();
    let decodable = |i: usize| {
        bytes[i] == b'%'
            && matches!(
                (bytes.get(i + 1).copied().and_then(hex_value), bytes.get(i + 2).copied().and_then(hex_value)),
                (Some(hi), Some(lo)) if is_literal_char(hi << 4 | lo)
            )
    };
    let first = (0..bytes.len()).find(|&i| decodable(i))?;
    let mut out = String::with_capacity(forward.len());
    out.push_str(&forward[..first]);
    let mut i = first;
    while i < bytes.len() {
        if decodable(i) {
            // Both digits were checked by `decodable`.
            let value =
                hex_value(bytes[i + 1]).unwrap_or(0) << 4 | hex_value(bytes[i + 2]).unwrap_or(0);
            out.push(char::from(value));
            i += 3;
        } else {
            out.push(char::from(bytes[i]));
            i += 1;
        }
    }
    Some(out)
}

/// Decodes `%XX` escapes of unreserved characters, upper-cases the others and refuses the
/// ambiguous ones.
fn decode_unreserved(bytes: &[u8]) -> Result<String, PathError> {
    let mut out = String::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let b = bytes[i];
        match b {
            b'%' => {
                let (hi, lo) = match (bytes.get(i + 1), bytes.get(i + 2)) {
                    (Some(&hi), Some(&lo)) => (hex_value(hi), hex_value(lo)),
                    _ => return Err(PathError::BadPercent),
                };
                let (Some(hi), Some(lo)) = (hi, lo) else {
                    return Err(PathError::BadPercent);
                };
                let value = hi << 4 | lo;
                if is_unreserved(value) {
                    out.push(char::from(value));
                } else if matches!(value, b'/' | b'\\' | 0 | b'%' | b';') {
                    return Err(PathError::AmbiguousEncoding);
                } else {
                    out.push('%');
                    out.push(char::from(HEX_UPPER[usize::from(hi)]));
                    out.push(char::from(HEX_UPPER[usize::from(lo)]));
                }
                i += 3;
            }
            b';' => return Err(PathError::Semicolon),
            b'\\' => return Err(PathError::Backslash),
            0x21..=0x7E => {
                out.push(char::from(b));
                i += 1;
            }
            _ => return Err(PathError::BadByte),
        }
    }
    Ok(out)
}

const HEX_UPPER: &[u8; 16] = b"0123456789ABCDEF";

fn hex_value(b: u8) -> Option<u8> {
    match b {
        b'0'..=b'9' => Some(b - b'0'),
        b'a'..=b'f' => Some(b - b'a' + 10),
        b'A'..=b'F' => Some(b - b'A' + 10),
        _ => None,
    }
}

fn is_unreserved(b: u8) -> bool {
    b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~')
}

fn is_literal_char(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b"._~!$&'()+,=:@-".contains(&b)
}

/// Why a path pattern was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PatternError {
    /// The pattern does not follow the grammar of this module.
    #[error(
        "path pattern {0:?} is invalid: use '/'-separated literal segments, '*' for one segment and a final '/**'"
    )]
    Invalid(String),
}

/// One segment of a parsed pattern.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Segment {
    /// Exactly this text (empty for the trailing slash of `/items/`).
    Literal(String),
    /// `*`: any one non-empty segment.
    Any,
}

/// A parsed path pattern, matched against normalised paths ([`normalise`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Pattern {
    segments: Vec<Segment>,
    /// Ends in `/**`.
    prefix: bool,
}

/// How specific a pattern is; a greater value wins. Segments compare left to right: a
/// literal beats `*`, and a pattern that ends beats `/**` at the same place.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct Specificity(Vec<u8>);

impl Pattern {
    /// Parses a pattern in this module's grammar (the same language as [`PATTERN`]).
    pub fn parse(text: &str) -> Result<Self, PatternError> {
        let invalid = || PatternError::Invalid(text.to_owned());
        if text.len() > MAX_LEN || !text.starts_with('/') {
            return Err(invalid());
        }
        if text == "/" {
            return Ok(Pattern {
                segments: vec![Segment::Literal(String::new())],
                prefix: false,
            });
        }
        let (body, prefix) = match text.strip_suffix("/**") {
            Some(body) => (body, true),
            None => (text, false),
        };
        let mut segments = Vec::new();
        if !body.is_empty() {
            let parts: Vec<&str> = body[1..].split('/').collect();
            let last = parts.len() - 1;
            for (i, part) in parts.iter().enumerate() {
                if part.is_empty() && i == last && i > 0 && !prefix {
                    segments.push(Segment::Literal(String::new()));
                } else if *part == "*" {
                    segments.push(Segment::Any);
                } else if !part.is_empty()
                    && *part != "."
                    && *part != ".."
                    && part.bytes().all(is_literal_char)
                {
                    segments.push(Segment::Literal((*part).to_owned()));
                } else {
                    return Err(invalid());
                }
            }
        }
        Ok(Pattern { segments, prefix })
    }

    /// Whether a route path matches exactly: the same spelling, case and trailing slash.
    pub fn matches(&self, path: &str) -> bool {
        self.match_path(path, false)
    }

    /// Whether a route path matches loosely: ASCII case ignored in literal segments, and one
    /// trailing slash ignored on the path and on the pattern (the root stays the root).
    pub fn matches_loosely(&self, path: &str) -> bool {
        self.match_path(path, true)
    }

    fn match_path(&self, path: &str, loose: bool) -> bool {
        let Some(mut rest) = path.strip_prefix('/') else {
            return false;
        };
        let mut segments = self.segments.as_slice();
        if loose {
            rest = rest.strip_suffix('/').unwrap_or(rest);
            if let [init @ .., Segment::Literal(last)] = segments
                && last.is_empty()
                && !init.is_empty()
            {
                segments = init;
            }
        }
        let mut parts = rest.split('/');
        for segment in segments {
            let Some(part) = parts.next() else {
                return false;
            };
            let ok = match segment {
                Segment::Literal(text) if loose => part.eq_ignore_ascii_case(text),
                Segment::Literal(text) => part == text,
                Segment::Any => !part.is_empty(),
            };
            if !ok {
                return false;
            }
        }
        self.prefix || parts.next().is_none()
    }

    /// The pattern's rank for "most specific wins".
    pub fn specificity(&self) -> Specificity {
        let mut rank: Vec<u8> = self
            .segments
            .iter()
            .map(|s| match s {
                Segment::Literal(_) => 3,
                Segment::Any => 2,
            })
            .collect();
        rank.push(if self.prefix { 0 } else { 1 });
        Specificity(rank)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn re() -> regex::Regex {
        regex::Regex::new(PATTERN).expect("pattern compiles")
    }

    #[test]
    fn accepts_usual_patterns() {
        for p in [
            "/",
            "/items",
            "/items/",
            "/items/*",
            "/items/*/details",
            "/items/**",
            "/**",
            "/v1/orders:cancel",
            "/a.b/..c/...",
            "/.well-known/jwks.json",
            "/~user/@me",
        ] {
            assert!(re().is_match(p), "{p}");
        }
    }

    #[test]
    fn refuses_patterns_that_could_never_match_a_normalised_path() {
        for p in [
            "",
            "items",
            "//items",
            "/items//x",
            "/./items",
            "/items/..",
            "/items/../admin",
            "/items%2Fx",
            "/items;x=1",
            "/items?x",
            "/items#x",
            "/it*ms",
            "/**/x",
            "/x/**/",
            "/***",
            "/a b",
            "/é",
        ] {
            assert!(!re().is_match(p), "{p:?} should be refused");
        }
    }

    #[test]
    fn normalises_the_way_the_app_sees_it() {
        for (raw, want) in [
            ("/", "/"),
            ("/items", "/items"),
            ("/items/", "/items/"),
            ("//admin", "/admin"),
            ("/items//x", "/items/x"),
            ("/items/../admin", "/admin"),
            ("/items/%2e%2e/admin", "/admin"),
            ("/items/%2E./admin", "/admin"),
            ("/items/./x", "/items/x"),
            ("/items/.", "/items/"),
            ("/items/..", "/"),
            ("/../../etc", "/etc"),
            ("/%61dmin", "/admin"),
            ("/a%7eb", "/a~b"),
            ("/caf%c3%a9", "/caf%C3%A9"),
            ("/a%20b", "/a%20b"),
            ("/x%c3", "/x%C3"),
        ] {
            assert_eq!(normalise(raw).as_deref(), Ok(want), "{raw}");
        }
    }

    #[test]
    fn refuses_ambiguous_spellings() {
        for (raw, err) in [
            ("/items%2Fadmin", PathError::AmbiguousEncoding),
            ("/items%2fadmin", PathError::AmbiguousEncoding),
            ("/items%5Cadmin", PathError::AmbiguousEncoding),
            ("/items%00", PathError::AmbiguousEncoding),
            ("/items%252e%252e/admin", PathError::AmbiguousEncoding),
            ("/items%3Bx", PathError::AmbiguousEncoding),
            ("/items;jsessionid=1", PathError::Semicolon),
            ("/items\\admin", PathError::Backslash),
            ("/items%2", PathError::BadPercent),
            ("/items%zz", PathError::BadPercent),
            ("/a b", PathError::BadByte),
            ("/é", PathError::BadByte),
            ("items", PathError::NotAbsolute),
            ("", PathError::NotAbsolute),
            ("*", PathError::NotAbsolute),
        ] {
            assert_eq!(normalise(raw), Err(err), "{raw:?}");
        }
    }

    #[test]
    fn the_route_path_decodes_what_patterns_can_hold() {
        for (raw, forward, route) in [
            (
                "/v1/orders%3Acancel",
                "/v1/orders%3Acancel",
                "/v1/orders:cancel",
            ),
            (
                "/v1/orders%3acancel",
                "/v1/orders%3Acancel",
                "/v1/orders:cancel",
            ),
            (
                "/a%40b%21%24%26%27%28%29%2B%2C%3D",
                "/a%40b%21%24%26%27%28%29%2B%2C%3D",
                "/a@b!$&'()+,=",
            ),
            ("/%61dmin", "/admin", "/admin"),
            ("/a%20b", "/a%20b", "/a%20b"),
            ("/a%3Fb%23c", "/a%3Fb%23c", "/a%3Fb%23c"),
            ("/caf%c3%a9", "/caf%C3%A9", "/caf%C3%A9"),
            ("/a%2Ab", "/a%2Ab", "/a%2Ab"),
            ("/x/%3A/../y", "/x/y", "/x/y"),
        ] {
            let p = RequestPath::parse(raw).unwrap();
            assert_eq!((p.forward(), p.route()), (forward, route), "{raw}");
        }
        for raw in ["/a%2Fb", "/a%5Cb", "/a%25%33%41", "/a%3Bb"] {
            assert_eq!(
                RequestPath::parse(raw),
                Err(PathError::AmbiguousEncoding),
                "{raw}"
            );
        }
    }

    #[test]
    fn loose_matching_ignores_case_and_one_trailing_slash() {
        let loose =
            |pattern: &str, path: &str| Pattern::parse(pattern).unwrap().matches_loosely(path);
        assert!(loose("/admin", "/admin"));
        assert!(loose("/admin", "/admin/"));
        assert!(loose("/admin", "/ADMIN"));
        assert!(loose("/admin", "/AdMiN/"));
        assert!(loose("/admin/", "/admin"));
        assert!(loose("/items/*", "/ITEMS/42/"));
        assert!(loose("/items/**", "/Items/a/B/"));
        assert!(loose("/", "/"));
        assert!(!loose("/", "/x"));
        assert!(!loose("/admin", "/admin/x"));
        assert!(!loose("/admin", "/adminx"));
        assert!(!loose("/items/*", "/items/"));
        assert!(!loose("/a:b", "/a%3Ab"), "loose matching never decodes");
        let exact = |pattern: &str, path: &str| Pattern::parse(pattern).unwrap().matches(path);
        assert!(!exact("/admin", "/ADMIN"));
        assert!(!exact("/admin", "/admin/"));
    }

    fn matches(pattern: &str, path: &str) -> bool {
        Pattern::parse(pattern).unwrap().matches(path)
    }

    #[test]
    fn patterns_match_segments() {
        assert!(matches("/", "/"));
        assert!(!matches("/", "/x"));
        assert!(matches("/items", "/items"));
        assert!(!matches("/items", "/items/"));
        assert!(!matches("/items", "/itemsx"));
        assert!(matches("/items/", "/items/"));
        assert!(matches("/items/*", "/items/42"));
        assert!(!matches("/items/*", "/items/"));
        assert!(!matches("/items/*", "/items/42/x"));
        assert!(matches("/items/*/details", "/items/42/details"));
        assert!(matches("/items/**", "/items"));
        assert!(matches("/items/**", "/items/"));
        assert!(matches("/items/**", "/items/a/b"));
        assert!(!matches("/items/**", "/itemsx"));
        assert!(matches("/**", "/"));
        assert!(matches("/**", "/anything/at/all"));
    }

    #[test]
    fn more_specific_patterns_rank_higher() {
        let rank = |p: &str| Pattern::parse(p).unwrap().specificity();
        assert!(rank("/items/admin") > rank("/items/*"));
        assert!(rank("/items/*") > rank("/items/**"));
        assert!(rank("/items") > rank("/items/**"));
        assert!(rank("/items/**") > rank("/**"));
        assert!(rank("/a/b/**") > rank("/a/*/c"));
    }

    #[test]
    fn parser_and_regex_agree_on_samples() {
        for p in [
            "/",
            "/items",
            "/items/",
            "/items/*",
            "/**",
            "/x/**",
            "/a.b/..c/...",
            "",
            "items",
            "//items",
            "/./x",
            "/x/..",
            "/it*ms",
            "/**/x",
            "/x/**/",
            "/***",
            "/a b",
            "/x/",
        ] {
            assert_eq!(Pattern::parse(p).is_ok(), re().is_match(p), "{p:?}");
        }
    }

    proptest::proptest! {
        #[test]
        fn normalise_never_panics_and_is_idempotent(raw in "[/a-z.%0-9A-F;\\\\]{0,40}") {
            if let Ok(once) = normalise(&raw) {
                proptest::prop_assert_eq!(normalise(&once), Ok(once.clone()));
                proptest::prop_assert!(!once.contains("//") && !once.contains("/../"));
            }
        }

        #[test]
        fn parser_agrees_with_the_regex(p in "[/a-z.*~]{0,12}") {
            proptest::prop_assert_eq!(Pattern::parse(&p).is_ok(), re().is_match(&p), "{:?}", p);
        }

        #[test]
        fn normalise_never_panics_on_any_text(raw in "\\PC{0,64}") {
            let _ = normalise(&raw);
        }
    }
}
