//! Strict base64url without padding (RFC 7515 §2): no `=`, no `+` or `/`, no whitespace,
//! and the unused low bits of the last character must be zero so that every byte string
//! has exactly one spelling.

/// Why a base64url segment was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum B64Error {
    /// A character outside the base64url alphabet (padding and whitespace included).
    #[error("character outside the base64url alphabet")]
    Alphabet,
    /// A length no encoding produces (1 mod 4).
    #[error("impossible base64url length")]
    Length,
    /// Non-zero unused bits in the last character.
    #[error("non-canonical base64url")]
    NonCanonical,
}

const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";

const fn decode_table() -> [u8; 256] {
    let mut table = [0xFF; 256];
    let mut i = 0;
    while i < 64 {
        table[ALPHABET[i] as usize] = i as u8;
        i += 1;
    }
    table
}

const DECODE: [u8; 256] = decode_table();

/// Decodes strict unpadded base64url.
pub fn decode(text: &[u8]) -> Result<Vec<u8>, B64Error> {
    let mut out = Vec::with_capacity(text.len() / 4 * 3 + 2);
    decode_into(text, &mut out)?;
    Ok(out)
}

/// Decodes strict unpadded base64url, appending to `out`.
pub fn decode_into(text: &[u8], out: &mut Vec<u8>) -> Result<(), B64Error> {
    if text.len() % 4 == 1 {
        return Err(B64Error::Length);
    }
    let mut chunks = text.chunks_exact(4);
    let start = out.len();
    out.resize(start + text.len() / 4 * 3, 0);
    for (chunk, bytes) in chunks.by_ref().zip(out[start..].chunks_exact_mut(3)) {
        let [a, b, c, d] = [chunk[0], chunk[1], chunk[2], chunk[3]].map(|c| DECODE[usize::from(c)]);
        // Invalid characters map to 0xFF: one test for the four of them.
        if (a | b | c | d) & 0x80 != 0 {
            return Err(B64Error::Alphabet);
        }
        let n = u32::from(a) << 18 | u32::from(b) << 12 | u32::from(c) << 6 | u32::from(d);
        bytes.copy_from_slice(&[(n >> 16) as u8, (n >> 8) as u8, n as u8]);
    }
    let rest = chunks.remainder();
    match rest.len() {
        0 => {}
        2 => {
            let (a, b) = (sextet(rest[0])?, sextet(rest[1])?);
            if b & 0x0F != 0 {
                return Err(B64Error::NonCanonical);
            }
            out.push((a << 2 | b >> 4) as u8);
        }
        3 => {
            let (a, b, c) = (sextet(rest[0])?, sextet(rest[1])?, sextet(rest[2])?);
            if c & 0x03 != 0 {
                return Err(B64Error::NonCanonical);
            }
            out.push((a << 2 | b >> 4) as u8);
            out.push(((b & 0x0F) << 4 | c >> 2) as u8);
        }
        _ => return Err(B64Error::Length),
    }
    Ok(())
}

fn sextet(c: u8) -> Result<u32, B64Error> {
    match DECODE[usize::from(c)] {
        0xFF => Err(B64Error::Alphabet),
        v => Ok(u32::from(v)),
    }
}

/// Decodes standard padded base64 (RFC 4648 §4), as the signing-keys document stores
/// secrets.
pub fn decode_standard(text: &[u8]) -> Result<Vec<u8>, B64Error> {
    if !text.len().is_multiple_of(4) {
        return Err(B64Error::Length);
    }
    let body_len = text.len()
        - text
            .iter()
            .rev()
            .take(2)
            .take_while(|b| **b == b'=')
            .count();
    let body = &text[..body_len];
    if body.iter().any(|b| matches!(b, b'-' | b'_' | b'=')) {
        return Err(B64Error::Alphabet);
    }
    let url: Vec<u8> = body
        .iter()
        .map(|b| match b {
            b'+' => b'-',
            b'/' => b'_',
            other => *other,
        })
        .collect();
    decode(&url)
}

/// Encodes bytes as unpadded base64url.
pub fn encode(bytes: &[u8]) -> String {
    let mut out = String::with_capacity(bytes.len().div_ceil(3) * 4);
    for chunk in bytes.chunks(3) {
        let n = chunk
            .iter()
            .enumerate()
            .fold(0u32, |n, (i, &b)| n | u32::from(b) << (16 - 8 * i));
        let chars = chunk.len() + 1;
        for i in 0..chars {
            let index = (n >> (18 - 6 * i)) & 0x3F;
            out.push(char::from(ALPHABET[index as usize]));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn rfc4648_vectors_in_the_url_alphabet() {
        for (plain, coded) in [
            ("", ""),
            ("f", "Zg"),
            ("fo", "Zm8"),
            ("foo", "Zm9v"),
            ("foob", "Zm9vYg"),
            ("fooba", "Zm9vYmE"),
            ("foobar", "Zm9vYmFy"),
        ] {
            assert_eq!(encode(plain.as_bytes()), coded);
            assert_eq!(decode(coded.as_bytes()).unwrap(), plain.as_bytes());
        }
        assert_eq!(encode(&[0xfb, 0xff]), "-_8");
    }

    #[test]
    fn refuses_padding_standard_alphabet_whitespace_and_odd_bits() {
        assert_eq!(decode(b"Zg=="), Err(B64Error::Alphabet));
        assert_eq!(decode(b"+/8"), Err(B64Error::Alphabet));
        assert_eq!(decode(b"Zm9v\nYg"), Err(B64Error::Alphabet));
        assert_eq!(decode(b"Zm9vY"), Err(B64Error::Length));
        assert_eq!(decode(b"Zh"), Err(B64Error::NonCanonical));
        assert_eq!(decode(b"Zm8"), Ok(b"fo".to_vec()));
        assert_eq!(decode(b"Zm9"), Err(B64Error::NonCanonical));
        assert_eq!(decode(b"Zm-"), Err(B64Error::NonCanonical));
    }

    #[test]
    fn standard_base64_for_stored_secrets() {
        assert_eq!(decode_standard(b"c2VjcmV0").unwrap(), b"secret");
        assert_eq!(decode_standard(b"+/8=").unwrap(), [0xfb, 0xff]);
        assert_eq!(decode_standard(b"Zg==").unwrap(), b"f");
        assert!(decode_standard(b"-_8=").is_err());
        assert!(decode_standard(b"Zg").is_err());
    }

    proptest! {
        #[test]
        fn round_trips(bytes in proptest::collection::vec(any::<u8>(), 0..200)) {
            prop_assert_eq!(decode(encode(&bytes).as_bytes()).unwrap(), bytes);
        }

        #[test]
        fn accepted_text_is_the_one_spelling(text in "[A-Za-z0-9_=+/-]{0,40}") {
            if let Ok(bytes) = decode(text.as_bytes()) {
                prop_assert_eq!(encode(&bytes), text);
            }
        }
    }
}
