//! The grammar of path patterns in AuthPolicy rules.
//!
//! A pattern is matched against the request path after the sidecar normalised it (dot
//! segments resolved, `//` collapsed, unreserved characters decoded; ambiguous encodings
//! refused). So a pattern never needs percent-encoding, dot segments or empty segments,
//! and the grammar refuses them: a pattern that could never match is a mistake to report.
//!
//! Segments are separated by `/`. A segment is a literal of RFC 3986 path characters
//! (without `%`, `;` and `*`), or `*` (exactly one segment). A final `/**` matches any
//! number of further segments, including none. `/` alone matches the root only.

/// The pattern grammar as a regular expression (RE2/JSON Schema/`regex` dialect).
pub const PATTERN: &str = concat!(
    r"^(?:/",
    r"|(?:/(?:\*|[A-Za-z0-9_~!$&'()+,=:@-][A-Za-z0-9._~!$&'()+,=:@-]*|\.[A-Za-z0-9_~!$&'()+,=:@-][A-Za-z0-9._~!$&'()+,=:@-]*|\.\.[A-Za-z0-9._~!$&'()+,=:@-]+))+/?",
    r"|(?:/(?:\*|[A-Za-z0-9_~!$&'()+,=:@-][A-Za-z0-9._~!$&'()+,=:@-]*|\.[A-Za-z0-9_~!$&'()+,=:@-][A-Za-z0-9._~!$&'()+,=:@-]*|\.\.[A-Za-z0-9._~!$&'()+,=:@-]+))*/\*\*",
    r")$"
);

/// Longest path pattern the API accepts.
pub const MAX_LEN: usize = 256;

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
}
