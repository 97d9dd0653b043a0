//! Refresh tokens this sidecar revoked at logout lately, by their SHA-256 (never the token): a
//! copy of a logged-out cookie posted to logout again, however often, is not revoked again.
//! Otherwise one login would let anyone make the sidecar call the issuer's revocation endpoint
//! as the policy's client as fast as they like, spending the client's budget there (RFC 7009
//! answers 200 for a token already revoked) until other users' logouts could not revoke.
//! Bounded and short-lived, like the single-flight map.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use crate::flight::key_of;

/// How long a revocation is remembered.
pub const KEEP: Duration = Duration::from_secs(600);

/// Most revocations remembered.
pub const MAX_REVOKED: usize = 4096;

/// The refresh tokens revoked lately.
#[derive(Default)]
pub struct Revoked {
    map: Mutex<HashMap<[u8; 32], Instant>>,
}

impl Revoked {
    /// Whether `refresh_token` was revoked here within [`KEEP`].
    pub fn lately(&self, refresh_token: &str) -> bool {
        let map = self.map.lock().unwrap_or_else(|p| p.into_inner());
        map.get(&key_of(refresh_token))
            .is_some_and(|at| at.elapsed() < KEEP)
    }

    /// Notes that `refresh_token` was revoked now. When full, the expired go first, then the
    /// oldest.
    pub fn note(&self, refresh_token: &str) {
        let mut map = self.map.lock().unwrap_or_else(|p| p.into_inner());
        if map.len() >= MAX_REVOKED {
            map.retain(|_, at| at.elapsed() < KEEP);
        }
        if map.len() >= MAX_REVOKED
            && let Some(oldest) = map.iter().min_by_key(|(_, at)| **at).map(|(k, _)| *k)
        {
            map.remove(&oldest);
        }
        map.insert(key_of(refresh_token), Instant::now());
    }

    /// Revocations remembered now.
    pub fn len(&self) -> usize {
        self.map.lock().unwrap_or_else(|p| p.into_inner()).len()
    }

    /// Whether none is remembered.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_revocation_is_remembered_and_the_memory_bounded() {
        let revoked = Revoked::default();
        assert!(!revoked.lately("rt-1"));
        revoked.note("rt-1");
        assert!(revoked.lately("rt-1"));
        assert!(!revoked.lately("rt-2"));
        for i in 0..MAX_REVOKED + 10 {
            revoked.note(&format!("x-{i}"));
        }
        assert_eq!(revoked.len(), MAX_REVOKED);
        assert!(!revoked.lately("rt-1"), "the oldest went first");
        assert!(revoked.lately(&format!("x-{}", MAX_REVOKED + 9)));
    }
}
