//! The revocation feed: what an issuer serves and verifiers read to learn of revoked tokens.
//!
//! A verifier polls `GET <feed url>?cursor=<cursor>&wait=<seconds>` (no `cursor` on the first
//! request). The issuer answers as soon as it has news after that cursor, or after about
//! `wait` seconds with an empty page. Each answer is one compact JWS (`Content-Type:
//! application/jwt`) whose protected header has `typ` [`FEED_JWS_TYP`], the `kid` of the
//! issuer's active signing key and that key's `alg`; its payload is a [`FeedPage`]. Verifiers
//! check the signature with the keys they already trust for the issuer, then that `iss` is
//! the issuer and `cursor` is the cursor they sent (so an old page cannot be replayed).
//!
//! A page is a delta, unless `reset` is set: then it is the whole current state and replaces
//! what the verifier knew (first poll, an unknown cursor, or an issuer that lost its state).
//! Entries stay in the feed until no token they hit can still be valid; a verifier drops them
//! at the same time.
//!
//! **Subjects are not named.** The feed is readable by anyone who can reach the issuer, so a
//! subject cut-off is published as a keyed digest of the subject ([`subject_digest`], under
//! the key the operator renders into the issuer's and its verifiers' configs), never as the
//! subject: a verifier digests the subject of the token it checks and compares. An issuer
//! without a key (its config rendered by an earlier operator, whose verifiers have none
//! either) still publishes plain `subjects`, and verifiers honour both.
//!
//! **Pages cannot be rolled back.** Each page carries its issue time (`iat`) and the position
//! of the issuer's revocation log it was made from (`logStartedAt`, `seq`): `seq` grows with
//! every entry, and a log that starts again (a restarted memory store, a Redis that lost its
//! data) starts later. A verifier refuses a page whose position is behind the newest it
//! accepted, reset pages included, and a page issued longer ago than a poll can take: a
//! replayed old page cannot un-revoke anything. Pages from an earlier issuer carry no
//! position; for them only the issue time is checked.

use serde::{Deserialize, Serialize};

/// `typ` of a feed page's JWS header (compared case-insensitively).
pub const FEED_JWS_TYP: &str = "revocation-feed+jwt";

/// Media type of a feed response body.
pub const FEED_CONTENT_TYPE: &str = "application/jwt";

/// Query parameter naming the cursor the verifier holds.
pub const CURSOR_PARAM: &str = "cursor";

/// Query parameter: how many seconds the issuer may hold the request without news.
pub const WAIT_PARAM: &str = "wait";

/// Longest cursor allowed.
pub const MAX_CURSOR_LEN: usize = 128;

/// One page of the feed: the JWS payload.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct FeedPage {
    /// The issuer identifier, exactly the `iss` of its tokens.
    pub iss: String,
    /// When the issuer made this page (Unix seconds).
    pub iat: i64,
    /// The cursor the request carried (`None` for a first request without one).
    #[serde(default)]
    pub cursor: Option<String>,
    /// The cursor to send next.
    pub next_cursor: String,
    /// This page is the whole state, not a delta.
    #[serde(default)]
    pub reset: bool,
    /// Revoked access tokens.
    #[serde(default)]
    pub jtis: Vec<JtiRevocation>,
    /// Subject cut-offs by subject: only from an issuer without a subject key (see the module
    /// docs).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub subjects: Vec<SubjectCutoff>,
    /// Subject cut-offs by keyed digest of the subject.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub subject_digests: Vec<SubjectDigestCutoff>,
    /// When the issuer's revocation log began (Unix milliseconds; 0 for a log older than this
    /// field). With `seq`, the page's position.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub log_started_at: Option<i64>,
    /// The sequence number of the newest entry of the log when the page was made.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub seq: Option<u64>,
}

impl FeedPage {
    /// Where in the issuer's log the page was made, ordered: later logs after earlier ones,
    /// then by sequence number. `None` for a page of an earlier issuer.
    pub fn position(&self) -> Option<(i64, u64)> {
        Some((self.log_started_at?, self.seq?))
    }
}

/// Tokens of a subject issued before a time are dead; the subject is named by its keyed digest.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct SubjectDigestCutoff {
    /// [`subject_digest`] of the `sub` it applies to.
    pub digest: String,
    /// Tokens with `iat` before this are refused.
    pub before: i64,
    /// When the cut-off can be forgotten.
    pub until: i64,
}

/// Length of a subject key, in bytes.
pub const SUBJECT_KEY_BYTES: usize = 32;

/// The keyed digest under which the feed names a subject: HMAC-SHA256 under `key`, base64url
/// without padding.
pub fn subject_digest(key: &[u8], sub: &str) -> String {
    use base64::Engine as _;
    let key = aws_lc_rs::hmac::Key::new(aws_lc_rs::hmac::HMAC_SHA256, key);
    let tag = aws_lc_rs::hmac::sign(&key, sub.as_bytes());
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(tag.as_ref())
}

/// The subject key of an issuer, as the operator renders it into the configs of the issuer
/// and of every verifier of its feed: SHA-256 of a label and the issuer AuthPolicy's UID
/// (random, 122 bits, stable for the policy's life), base64url. So no Secret has to be stored;
/// the key is exactly as private as that UID and the sidecar ConfigMaps (readable with RBAC
/// on the namespaces involved), which is enough to keep the feed's readers on the network
/// from learning who was cut off.
pub fn subject_key_of(issuer_policy_uid: &str) -> String {
    use base64::Engine as _;
    let mut context = aws_lc_rs::digest::Context::new(&aws_lc_rs::digest::SHA256);
    context.update(b"scopegate revocation feed subject key v1\0");
    context.update(issuer_policy_uid.as_bytes());
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(context.finish().as_ref())
}

/// Decodes a subject key as the configs carry it (base64url without padding, 32 bytes).
pub fn decode_subject_key(text: &str) -> Option<Vec<u8>> {
    use base64::Engine as _;
    base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(text)
        .ok()
        .filter(|k| k.len() == SUBJECT_KEY_BYTES)
}

/// One revoked token.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct JtiRevocation {
    /// The token's `jti`.
    pub jti: String,
    /// The token's `exp`: after it (plus leeway) the entry can be forgotten.
    pub exp: i64,
}

/// Tokens of a subject issued before a time are dead.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct SubjectCutoff {
    /// The `sub` it applies to.
    pub sub: String,
    /// Tokens with `iat` before this are refused.
    pub before: i64,
    /// When the cut-off can be forgotten: no token issued before `before` is valid after it.
    pub until: i64,
}

/// True when `cursor` is 1 to [`MAX_CURSOR_LEN`] unreserved URI characters, so that it goes
/// into a query string as it is.
pub fn is_cursor(cursor: &str) -> bool {
    !cursor.is_empty()
        && cursor.len() <= MAX_CURSOR_LEN
        && cursor
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~'))
}

/// The query string of a poll: `cursor=..&wait=..`, or `wait=..` without a cursor.
pub fn poll_query(cursor: Option<&str>, wait_secs: u64) -> String {
    match cursor {
        Some(cursor) => format!("{CURSOR_PARAM}={cursor}&{WAIT_PARAM}={wait_secs}"),
        None => format!("{WAIT_PARAM}={wait_secs}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn page_json_shape_is_stable() {
        let page = FeedPage {
            iss: "https://auth.shop.svc".into(),
            iat: 100,
            cursor: Some("c1".into()),
            next_cursor: "c2".into(),
            reset: false,
            jtis: vec![JtiRevocation {
                jti: "j1".into(),
                exp: 200,
            }],
            subjects: vec![SubjectCutoff {
                sub: "alice".into(),
                before: 150,
                until: 1000,
            }],
            subject_digests: vec![SubjectDigestCutoff {
                digest: "d".into(),
                before: 150,
                until: 1000,
            }],
            log_started_at: Some(1_700_000_000_000),
            seq: Some(7),
        };
        let json = serde_json::to_value(&page).unwrap();
        assert_eq!(
            json,
            serde_json::json!({
                "iss": "https://auth.shop.svc", "iat": 100, "cursor": "c1", "nextCursor": "c2",
                "reset": false, "jtis": [{"jti": "j1", "exp": 200}],
                "subjects": [{"sub": "alice", "before": 150, "until": 1000}],
                "subjectDigests": [{"digest": "d", "before": 150, "until": 1000}],
                "logStartedAt": 1_700_000_000_000_i64, "seq": 7
            })
        );
        let back: FeedPage = serde_json::from_value(json).unwrap();
        assert_eq!(back, page);
    }

    #[test]
    fn pages_of_an_earlier_issuer_still_parse() {
        let page: FeedPage = serde_json::from_value(serde_json::json!({
            "iss": "i", "iat": 1, "cursor": null, "nextCursor": "c", "reset": true,
            "jtis": [], "subjects": [{"sub": "alice", "before": 1, "until": 2}]
        }))
        .unwrap();
        assert_eq!(page.position(), None);
        assert_eq!(page.subjects.len(), 1);
    }

    #[test]
    fn positions_order_logs_then_sequence_numbers() {
        let at = |start, seq| {
            FeedPage {
                iss: String::new(),
                iat: 0,
                cursor: None,
                next_cursor: "c".into(),
                reset: false,
                jtis: vec![],
                subjects: vec![],
                subject_digests: vec![],
                log_started_at: Some(start),
                seq: Some(seq),
            }
            .position()
        };
        assert!(
            at(1, 9) < at(2, 0),
            "a later log is newer whatever its sequence"
        );
        assert!(at(2, 3) < at(2, 4));
    }

    #[test]
    fn subject_digests_are_hmac_sha256_base64url() {
        // Python: base64.urlsafe_b64encode(hmac.new(bytes(32), b"alice", "sha256").digest())
        assert_eq!(
            subject_digest(&[0u8; 32], "alice"),
            "zjg392pUpjUZGxcErHZyJk_BfDOX_1Ln2s_B7zYDpJM"
        );
        assert_ne!(
            subject_digest(&[1u8; 32], "alice"),
            subject_digest(&[0u8; 32], "alice")
        );
        let key = "A".repeat(43);
        assert_eq!(decode_subject_key(&key).map(|k| k.len()), Some(32));
        let derived = subject_key_of("6d1f6c1e-7b0e-4a51-9a3b-0d6f3c1e2a4b");
        assert_eq!(decode_subject_key(&derived).map(|k| k.len()), Some(32));
        assert_ne!(
            derived,
            subject_key_of("6d1f6c1e-7b0e-4a51-9a3b-0d6f3c1e2a4c")
        );
        assert_eq!(decode_subject_key("AAAA"), None);
    }

    #[test]
    fn cursors_are_query_safe() {
        assert!(is_cursor("abc-123_~."));
        for bad in [
            "",
            "a b",
            "a&b",
            "a=b",
            "é",
            &"x".repeat(MAX_CURSOR_LEN + 1),
        ] {
            assert!(!is_cursor(bad), "{bad:?}");
        }
        assert_eq!(poll_query(Some("c"), 30), "cursor=c&wait=30");
        assert_eq!(poll_query(None, 30), "wait=30");
    }
}
