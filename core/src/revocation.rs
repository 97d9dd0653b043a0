//! What the verifier knows is revoked: client cut-offs from the config, jti revocations and
//! subject cut-offs from the issuer's feed. Plain data, replaced as a whole when a feed page
//! arrives (pages are rare; reads are on every request). Subject cut-offs come as keyed
//! digests of the subject (or, from an earlier issuer, plainly): a token's subject is digested
//! under the feed's key to look it up, only while a digest cut-off is held.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

use crate::feed::{FeedPage, subject_digest};

use crate::token::VerifiedToken;

/// The key a feed names subjects under (never printed).
#[derive(Clone, PartialEq, Eq)]
pub struct SubjectKey(Arc<[u8]>);

impl SubjectKey {
    /// The decoded key.
    pub fn new(key: &[u8]) -> Self {
        SubjectKey(Arc::from(key))
    }
}

impl std::fmt::Debug for SubjectKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("SubjectKey(..)")
    }
}

/// Revocations learned from one issuer's feed.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct FeedRevocations {
    /// The issuer the feed speaks for.
    pub issuer: String,
    /// The key subjects are digested under (`None`: digest cut-offs cannot be matched).
    subject_key: Option<SubjectKey>,
    /// jti → the token's `exp`.
    jtis: HashMap<String, i64>,
    /// sub → (before, until), from an issuer that names subjects.
    subjects: HashMap<String, (i64, i64)>,
    /// digest of sub → (before, until).
    subject_digests: HashMap<String, (i64, i64)>,
}

impl FeedRevocations {
    /// Nothing known yet for `issuer`, whose feed digests subjects under `subject_key`.
    pub fn new(issuer: &str, subject_key: Option<SubjectKey>) -> Self {
        FeedRevocations {
            issuer: issuer.to_owned(),
            subject_key,
            ..Self::default()
        }
    }

    /// The state after a page: a reset page replaces everything, a delta adds to it. Entries
    /// that can no longer hit a valid token (`exp` or `until` plus leeway passed) are dropped.
    pub fn apply(&self, page: &FeedPage, now: i64, leeway: i64) -> FeedRevocations {
        let base = if page.reset {
            FeedRevocations::new(&self.issuer, self.subject_key.clone())
        } else {
            self.clone()
        };
        base.with(page, now, leeway)
    }

    /// The state after a page refused as rolled back: its entries are added and nothing is
    /// dropped, reset or not. Revocations only add refusals, so a page from a log that went
    /// back in time can still carry the revocations written since; what replaced them must
    /// not.
    pub fn add(&self, page: &FeedPage, now: i64, leeway: i64) -> FeedRevocations {
        self.clone().with(page, now, leeway)
    }

    fn with(self, page: &FeedPage, now: i64, leeway: i64) -> FeedRevocations {
        let mut next = self;
        for r in &page.jtis {
            next.jtis.insert(r.jti.clone(), r.exp);
        }
        let merge = |map: &mut HashMap<String, (i64, i64)>, key: &str, before: i64, until: i64| {
            let entry = map.entry(key.to_owned()).or_insert((before, until));
            *entry = (entry.0.max(before), entry.1.max(until));
        };
        for s in &page.subjects {
            merge(&mut next.subjects, &s.sub, s.before, s.until);
        }
        for s in &page.subject_digests {
            merge(&mut next.subject_digests, &s.digest, s.before, s.until);
        }
        next.jtis.retain(|_, exp| exp.saturating_add(leeway) > now);
        for map in [&mut next.subjects, &mut next.subject_digests] {
            map.retain(|_, (_, until)| until.saturating_add(leeway) > now);
        }
        next
    }

    /// The cut-off in force for a subject, by name or by digest.
    fn subject_cutoff(&self, sub: &str) -> Option<i64> {
        let plain = self.subjects.get(sub).map(|(before, _)| *before);
        let digested = match (&self.subject_key, self.subject_digests.is_empty()) {
            (Some(key), false) => self
                .subject_digests
                .get(&subject_digest(&key.0, sub))
                .map(|(before, _)| *before),
            _ => None,
        };
        plain.max(digested)
    }

    /// Number of entries held (for metrics).
    pub fn len(&self) -> usize {
        self.jtis.len() + self.subjects.len() + self.subject_digests.len()
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
        && feed.subject_cutoff(sub).is_some_and(|before| iat < before)
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
            claims: None,
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
            subject_digests: vec![],
            log_started_at: None,
            seq: None,
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
        let state =
            FeedRevocations::new("https://i", None).apply(&page(false, Some("j1"), None), 0, 30);
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
            FeedRevocations::new("https://other", None).apply(&page(false, Some("j1"), None), 0, 0);
        assert_eq!(revoked(&token(1), &none, Some(&other)), None);
    }

    #[test]
    fn a_rolled_back_page_adds_and_never_drops() {
        let none = BTreeMap::new();
        let known =
            FeedRevocations::new("https://i", None).apply(&page(false, Some("j1"), None), 0, 30);
        let reset = known.add(&page(true, None, Some((100, 2000))), 0, 30);
        assert_eq!(revoked(&token(1), &none, Some(&reset)), Some("jti"));
        let mut other = token(1);
        other.jti = Some("j2".into());
        assert_eq!(
            revoked(&other, &none, Some(&reset)),
            Some("subject cut-off"),
            "the page's entries are added"
        );
        assert_eq!(reset.len(), 2);
    }

    #[test]
    fn digested_subject_cutoffs_hit_the_subject_under_its_key_only() {
        use crate::feed::SubjectDigestCutoff;
        let none = BTreeMap::new();
        let key = [7u8; 32];
        let mut cut = page(true, None, None);
        cut.subject_digests.push(SubjectDigestCutoff {
            digest: subject_digest(&key, "alice"),
            before: 100,
            until: 2000,
        });
        let keyed =
            FeedRevocations::new("https://i", Some(SubjectKey::new(&key))).apply(&cut, 0, 30);
        assert_eq!(
            revoked(&token(99), &none, Some(&keyed)),
            Some("subject cut-off")
        );
        assert_eq!(revoked(&token(100), &none, Some(&keyed)), None);
        let mut bob = token(1);
        bob.sub = Some("bob".into());
        assert_eq!(revoked(&bob, &none, Some(&keyed)), None);
        let other_key =
            FeedRevocations::new("https://i", Some(SubjectKey::new(&[8u8; 32]))).apply(&cut, 0, 30);
        assert_eq!(revoked(&token(1), &none, Some(&other_key)), None);
        assert!(
            !format!("{keyed:?}").contains("[7, 7"),
            "the key is never printed"
        );
    }
}
