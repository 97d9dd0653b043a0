//! The RFC 6749 §3.3 scope-token grammar: `1*( %x21 / %x23-5B / %x5D-7E )`.

/// The scope-token grammar as a regular expression, in the dialect shared by JSON Schema
/// `pattern`, CEL `matches()` (RE2) and the `regex` crate.
pub const SCOPE_TOKEN_PATTERN: &str = r"^[\x21\x23-\x5B\x5D-\x7E]+$";

/// The longest scope token the API accepts. Bounded so that CEL rules over scopes stay
/// within the API server's cost budget.
pub const MAX_SCOPE_LEN: usize = 128;

/// True when `token` is a valid RFC 6749 scope-token of at most [`MAX_SCOPE_LEN`] bytes.
pub fn is_scope_token(token: &str) -> bool {
    !token.is_empty()
        && token.len() <= MAX_SCOPE_LEN
        && token
            .bytes()
            .all(|b| b == 0x21 || (0x23..=0x5B).contains(&b) || (0x5D..=0x7E).contains(&b))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accepts_common_scopes() {
        for s in ["read:items", "write", "orders.admin", "a/b", "x_y-z~"] {
            assert!(is_scope_token(s), "{s}");
        }
    }

    #[test]
    fn rejects_space_quote_backslash_and_non_ascii() {
        for s in ["", "read items", "a\"b", "a\\b", "é", "a\tb", "a\u{7f}"] {
            assert!(!is_scope_token(s), "{s:?}");
        }
    }

    #[test]
    fn rejects_over_long() {
        assert!(!is_scope_token(&"a".repeat(MAX_SCOPE_LEN + 1)));
        assert!(is_scope_token(&"a".repeat(MAX_SCOPE_LEN)));
    }
}
