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
    /// Subject cut-offs (the token-version idea).
    #[serde(default)]
    pub subjects: Vec<SubjectCutoff>,
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
        };
        let json = serde_json::to_value(&page).unwrap();
        assert_eq!(
            json,
            serde_json::json!({
                "iss": "https://auth.shop.svc", "iat": 100, "cursor": "c1", "nextCursor": "c2",
                "reset": false, "jtis": [{"jti": "j1", "exp": 200}],
                "subjects": [{"sub": "alice", "before": 150, "until": 1000}]
            })
        );
        let back: FeedPage = serde_json::from_value(json).unwrap();
        assert_eq!(back, page);
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
