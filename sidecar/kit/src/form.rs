//! `application/x-www-form-urlencoded` components, as the sidecar writes them into the
//! bodies and query strings of its own OAuth requests.

/// Encodes one component (unreserved characters kept, the rest percent-encoded).
pub fn form_encode(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for b in text.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~') {
            out.push(char::from(b));
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keeps_unreserved_characters_and_encodes_the_rest() {
        assert_eq!(form_encode("plain-._~09AZaz"), "plain-._~09AZaz");
        assert_eq!(form_encode("read:items write"), "read%3Aitems%20write");
        assert_eq!(form_encode("a+b&c=d/é"), "a%2Bb%26c%3Dd%2F%C3%A9");
    }
}
