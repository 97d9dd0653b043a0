//! What the verifier knows is revoked: client cut-offs from the config, jti revocations and
//! subject cut-offs from the issuer's feed. Plain data, replaced as a whole when a feed page
//! arrives (pages are rare; reads are on every request).

use std::collections::{BTreeMap, HashMap};

use crate::feed::FeedPage;

use crate::token::VerifiedToken;

/// Revocations learned from one issuer's feed.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct FeedRevocations {
    /// The issuer the feed speaks for.
    pub issuer: String,
    /// jti → the token's `exp`.
    jtis: HashMap<String, i64>,
    /// sub → (before, until).
    subjects: HashMap<String, (i64, i64)>,
}

impl FeedRevocations {
    /// Nothing known yet for `issuer`.
    pub fn new(issuer: &str) -> Self {
        FeedRevocations {
            issuer: issuer.to_owned(),
            ..Self::default()
        }
    }

    /// The state after a page: a reset page replaces everything, a delta adds to it. Entries
    /// that can no longer hit a valid token (`exp` or `until` plus leeway passed) are dropped.
    pub fn apply(&self, page: &FeedPage, now: i64, leeway: i64) -> FeedRevocations {
        let mut next = if page.reset {
            FeedRevocations::new(&self.issuer)
        } else {
            self.clone()
        };
        for r in &page.jtis {
            next.jtis.insert(r.jti.clone(), r.exp);
        }
        for s in &page.subjects {
            let entry = next
                .subjects
                .entry(s.sub.clone())
                .or_insert((s.before, s.until));
            *entry = (entry.0.max(s.before), entry.1.max(s.until));
        }
        next.jtis.retain(|_, exp| exp.saturating_add(leeway) > now);
        next.subjects
            .retain(|_, (_, until)| until.saturating_add(leeway) > now);
        next
    }

    /// Number of entries held (for metrics).
    pub fn len(&self) -> usize {
        self.jtis.len() + self.subjects.len()
    }

    /// Whether nothing is held.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// Why a token counts as revoked, or `None`.
pub fn revoked(
    token: &VerifiedToken,
    client_cutoffs: &BTreeMap<String, i64>,
    feed: Option<&FeedRevocations>,
) -> Option<&'static str> {
    let iat = token.iat.unwrap_or(i64::MIN);
    if let Some(client) = &token.client_id
        && client_cutoffs
            .get(client)
            .is_some_and(|cutoff| iat < *cutoff)
    {
        return Some("client cut-off");
    }
    let feed = feed.filter(|f| f.issuer == token.iss)?;
    if token
        .jti
        .as_ref()
        .is_some_and(|jti| feed.jtis.contains_key(jti))
    {
        return Some("jti");
    }
    if let Some(sub) = &token.sub
        && feed
            .subjects
            .get(sub)
            .is_some_and(|(before, _)| iat < *before)
    {
        return Some("subject cut-off");
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::feed::{JtiRevocation, SubjectCutoff};

    fn token(iat: i64) -> VerifiedToken {
        VerifiedToken {
            iss: "https://i".into(),
            sub: Some("alice".into()),
            client_id: Some("app".into()),
            scope: String::new(),
            exp: 1000,
            iat: Some(iat),
            jti: Some("j1".into()),
        }
    }

    fn page(reset: bool, jti: Option<&str>, sub: Option<(i64, i64)>) -> FeedPage {
        FeedPage {
            iss: "https://i".into(),
            iat: 0,
            cursor: None,
            next_cursor: "c".into(),
            reset,
            jtis: jti
                .map(|j| JtiRevocation {
                    jti: j.into(),
                    exp: 1000,
                })
                .into_iter()
                .collect(),
            subjects: sub
                .map(|(before, until)| SubjectCutoff {
                    sub: "alice".into(),
                    before,
                    until,
                })
                .into_iter()
                .collect(),
        }
    }

    #[test]
    fn client_cutoffs_hit_tokens_issued_before() {
        let cutoffs = BTreeMap::from([("app".to_string(), 500)]);
        assert_eq!(revoked(&token(499), &cutoffs, None), Some("client cut-off"));
        assert_eq!(revoked(&token(500), &cutoffs, None), None);
    }

    #[test]
    fn feed_entries_apply_and_expire() {
        let none = BTreeMap::new();
        let state = FeedRevocations::new("https://i").apply(&page(false, Some("j1"), None), 0, 30);
        assert_eq!(revoked(&token(1), &none, Some(&state)), Some("jti"));
        let state = state.apply(&page(true, None, Some((100, 2000))), 0, 30);
        assert_eq!(
            revoked(&token(99), &none, Some(&state)),
            Some("subject cut-off")
        );
        assert_eq!(revoked(&token(100), &none, Some(&state)), None);
        let later = state.apply(&page(false, None, None), 2031, 30);
        assert!(later.is_empty());
        let other =
            FeedRevocations::new("https://other").apply(&page(false, Some("j1"), None), 0, 0);
        assert_eq!(revoked(&token(1), &none, Some(&other)), None);
    }
}
