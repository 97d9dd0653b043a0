//! `application/x-www-form-urlencoded` components, as the sidecar writes them into the
//! bodies and query strings of its own OAuth requests and reads them from those it answers.

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

/// Decodes one form-urlencoded component: `+` is a space, `%XX` a byte; the result must be
/// UTF-8.
pub fn form_decode(text: &str) -> Option<String> {
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'+' => out.push(b' '),
            b'%' => {
                let hex = bytes.get(i + 1..i + 3)?;
                let hex = std::str::from_utf8(hex).ok()?;
                out.push(u8::from_str_radix(hex, 16).ok()?);
                i += 2;
            }
            b => out.push(b),
        }
        i += 1;
    }
    String::from_utf8(out).ok()
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
