//! Refresh-token families and their rotation (RFC 6749 §6, RFC 9700 §4.14.2).
//!
//! A family is one grant: its client, subject, granted scope and audiences, absolute expiry,
//! when it was last used (it also expires after `refreshTokenIdle` without use), and which
//! token generations are current. A refresh token names its family and generation
//! and carries an HMAC tag under the family's secret, so only the issuer could have made it:
//! a genuine token that is no longer current is a reuse, and revokes the family with the
//! access tokens issued from it. Presenting the token that was just rotated within the grace
//! window (a concurrent or lost-response retry) mints a sibling instead; siblings stay
//! current until one of them is rotated.

use aws_lc_rs::hmac;
use serde::{Deserialize, Serialize};

use scopegate_core::jose::b64;

/// Most generations current at once (siblings minted inside the grace window).
pub const MAX_CURRENT: usize = 32;

/// One grant's refresh state, as stored.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
pub struct Family {
    /// The client it was issued to.
    pub client_id: String,
    /// The resource owner.
    pub sub: String,
    /// The originally granted scope (refreshes may narrow, never widen).
    pub scope: Vec<String>,
    /// The audiences its access tokens may carry.
    pub audiences: Vec<String>,
    /// The audiences its access tokens carry when a refresh names no `resource`.
    pub default_audiences: Vec<String>,
    /// When the grant was made (Unix seconds): cut-offs compare against it.
    pub created_at: i64,
    /// Absolute end of the family (Unix seconds).
    pub expires_at: i64,
    /// base64url secret keying the token tags.
    pub secret: String,
    /// The next generation number to hand out.
    pub next_gen: u64,
    /// Generations that may be rotated now.
    pub current: Vec<u64>,
    /// The generation rotated last, and when (Unix milliseconds).
    pub parent: Option<(u64, u64)>,
    /// Revoked (kept until `expires_at` so later use is refused).
    pub revoked: bool,
    /// Access tokens issued from the family that may still be valid: (jti, exp).
    pub tokens: Vec<(String, i64)>,
    /// When a token of the family was last issued (the grant or a refresh), Unix seconds.
    /// `None` in families stored before the inactivity expiry existed: their next refresh
    /// sets it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_used_at: Option<i64>,
}

/// A parsed refresh token: `<family>.<generation>.<tag>`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RefreshToken {
    /// The family id.
    pub family: String,
    /// The generation.
    pub generation: u64,
    tag: Vec<u8>,
}

/// Parses a refresh token's shape; `None` for anything else (an unknown token).
pub fn parse(token: &str) -> Option<RefreshToken> {
    let mut parts = token.split('.');
    let (family, generation, tag) = (parts.next()?, parts.next()?, parts.next()?);
    if parts.next().is_some() || family.len() != 22 || generation.len() > 20 {
        return None;
    }
    b64::decode(family.as_bytes()).ok()?;
    Some(RefreshToken {
        family: family.to_owned(),
        generation: generation.parse().ok()?,
        tag: b64::decode(tag.as_bytes()).ok().filter(|t| t.len() == 32)?,
    })
}

fn mac(secret: &str, family: &str, generation: u64) -> Option<hmac::Tag> {
    let key = b64::decode(secret.as_bytes()).ok()?;
    let key = hmac::Key::new(hmac::HMAC_SHA256, &key);
    Some(hmac::sign(
        &key,
        format!("{family}.{generation}").as_bytes(),
    ))
}

impl Family {
    /// The refresh token of `generation` in family `id`.
    pub fn token(&self, id: &str, generation: u64) -> Option<String> {
        let tag = mac(&self.secret, id, generation)?;
        Some(format!("{id}.{generation}.{}", b64::encode(tag.as_ref())))
    }

    /// Whether the token was made by the issuer for this family (constant-time tag check).
    pub fn is_genuine(&self, token: &RefreshToken) -> bool {
        let Ok(key) = b64::decode(self.secret.as_bytes()) else {
            return false;
        };
        let key = hmac::Key::new(hmac::HMAC_SHA256, &key);
        hmac::verify(
            &key,
            format!("{}.{}", token.family, token.generation).as_bytes(),
            &token.tag,
        )
        .is_ok()
    }

    /// When the family stops being usable: its absolute end, or `idle` seconds after its last
    /// use, whichever comes first.
    pub fn usable_until(&self, idle: i64) -> i64 {
        match self.last_used_at {
            Some(last) => self.expires_at.min(last.saturating_add(idle)),
            None => self.expires_at,
        }
    }

    /// Remembers an access token issued from the family, forgetting expired ones.
    pub fn record_token(&mut self, jti: String, exp: i64, now: i64) {
        self.tokens.retain(|(_, e)| *e > now);
        self.tokens.push((jti, exp));
    }
}

/// What presenting a genuine refresh token does to its family.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Rotation {
    /// A current generation: it is retired and `generation` is the new current one.
    Rotated {
        /// The new generation.
        generation: u64,
    },
    /// The generation rotated last, inside the grace window: a sibling is minted.
    Sibling {
        /// The sibling's generation.
        generation: u64,
    },
    /// A retired generation outside the grace window: the family is revoked.
    Reuse,
    /// The family is revoked already.
    Revoked,
    /// Too many siblings: refused without revoking.
    Exhausted,
}

/// The transition for presenting `generation` at `now_ms` (pure): the outcome and the family
/// to store (`None`: unchanged).
pub fn rotate(
    family: &Family,
    generation: u64,
    now_ms: u64,
    grace_ms: u64,
) -> (Rotation, Option<Family>) {
    if family.revoked {
        return (Rotation::Revoked, None);
    }
    let mut next = family.clone();
    let new = family.next_gen;
    if family.current.contains(&generation) {
        next.current = vec![new];
        next.parent = Some((generation, now_ms));
        next.next_gen += 1;
        return (Rotation::Rotated { generation: new }, Some(next));
    }
    match family.parent {
        Some((parent, at)) if parent == generation && now_ms <= at.saturating_add(grace_ms) => {
            if family.current.len() >= MAX_CURRENT {
                return (Rotation::Exhausted, None);
            }
            next.current.push(new);
            next.next_gen += 1;
            (Rotation::Sibling { generation: new }, Some(next))
        }
        _ => {
            next.revoked = true;
            next.current.clear();
            (Rotation::Reuse, Some(next))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn family() -> Family {
        Family {
            client_id: "c".into(),
            sub: "alice".into(),
            scope: vec!["read".into()],
            audiences: vec!["a".into()],
            default_audiences: vec!["a".into()],
            created_at: 0,
            expires_at: 100,
            secret: b64::encode(&[7u8; 32]),
            next_gen: 1,
            current: vec![0],
            parent: None,
            revoked: false,
            tokens: vec![],
            last_used_at: Some(0),
        }
    }

    #[test]
    fn a_family_ends_at_its_absolute_end_or_after_idle_time() {
        let mut f = family();
        assert_eq!(f.usable_until(30), 30, "idle since its creation");
        f.last_used_at = Some(90);
        assert_eq!(f.usable_until(30), 100, "the absolute end comes first");
        f.last_used_at = None;
        assert_eq!(f.usable_until(30), 100, "stored before idle expiry existed");
    }

    const ID: &str = "AAAAAAAAAAAAAAAAAAAAAA";

    #[test]
    fn tokens_parse_and_only_genuine_tags_pass() {
        let f = family();
        let token = f.token(ID, 0).unwrap();
        let parsed = parse(&token).unwrap();
        assert_eq!((parsed.family.as_str(), parsed.generation), (ID, 0));
        assert!(f.is_genuine(&parsed));
        let forged = parse(&format!("{ID}.1.{}", token.rsplit('.').next().unwrap())).unwrap();
        assert!(!f.is_genuine(&forged), "a tag for another generation");
        let mut other = family();
        other.secret = b64::encode(&[8u8; 32]);
        assert!(!other.is_genuine(&parsed));
        for bad in [
            "",
            "a.b.c",
            &format!("{ID}.x.{}", "A".repeat(43)),
            &format!("{token}.x"),
        ] {
            assert!(parse(bad).is_none(), "{bad}");
        }
    }

    #[test]
    fn rotation_grace_and_reuse() {
        let f = family();
        let (r, f1) = rotate(&f, 0, 1_000, 2_000);
        assert_eq!(r, Rotation::Rotated { generation: 1 });
        let f1 = f1.unwrap();
        assert_eq!(f1.current, [1]);
        // A concurrent retry with generation 0 inside the grace window gets a sibling.
        let (r, f2) = rotate(&f1, 0, 2_500, 2_000);
        assert_eq!(r, Rotation::Sibling { generation: 2 });
        let f2 = f2.unwrap();
        assert_eq!(f2.current, [1, 2]);
        // Either sibling rotates; the other is retired with it.
        let (r, f3) = rotate(&f2, 2, 4_000, 2_000);
        assert_eq!(r, Rotation::Rotated { generation: 3 });
        let f3 = f3.unwrap();
        // Generation 0 after the grace window: reuse, the family is revoked.
        let (r, f4) = rotate(&f3, 0, 10_000, 2_000);
        assert_eq!(r, Rotation::Reuse);
        let f4 = f4.unwrap();
        assert!(f4.revoked && f4.current.is_empty());
        assert_eq!(rotate(&f4, 3, 10_001, 2_000).0, Rotation::Revoked);
        // The retired parent replayed after its window is reuse too.
        assert_eq!(rotate(&f3, 2, 6_001, 2_000).0, Rotation::Reuse);
        assert!(matches!(
            rotate(&f3, 2, 6_000, 2_000).0,
            Rotation::Sibling { .. }
        ));
    }

    #[test]
    fn siblings_are_bounded() {
        let mut f = family();
        f.current = (1..=MAX_CURRENT as u64).collect();
        f.parent = Some((0, 0));
        f.next_gen = MAX_CURRENT as u64 + 1;
        assert_eq!(rotate(&f, 0, 1, 10).0, Rotation::Exhausted);
    }
}
