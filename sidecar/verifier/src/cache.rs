//! Verified tokens remembered by the SHA-256 of the token: bounded, an entry is used only
//! before the token's `exp`, and everything is forgotten when the epoch moves (keys, config
//! or revocations changed).

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use aws_lc_rs::digest;

use crate::token::VerifiedToken;

const SHARDS: usize = 16;

/// The cache key: SHA-256 of the token (the token itself is never kept).
pub type TokenHash = [u8; 32];

/// Hashes a token for the cache.
pub fn hash(token: &str) -> TokenHash {
    let d = digest::digest(&digest::SHA256, token.as_bytes());
    let mut out = [0u8; 32];
    out.copy_from_slice(d.as_ref());
    out
}

struct Entry {
    token: Arc<VerifiedToken>,
    epoch: u64,
    /// The serial of the settings it was verified under.
    serial: u64,
}

/// A bounded map from token hash to verified token.
pub struct TokenCache {
    shards: Vec<Mutex<HashMap<TokenHash, Entry>>>,
    per_shard: usize,
    epoch: AtomicU64,
}

impl TokenCache {
    /// A cache of about `capacity` entries.
    pub fn new(capacity: usize) -> TokenCache {
        TokenCache {
            shards: (0..SHARDS).map(|_| Mutex::default()).collect(),
            per_shard: capacity.div_ceil(SHARDS).max(1),
            epoch: AtomicU64::new(0),
        }
    }

    /// Forgets every entry (lazily: older epochs no longer match).
    pub fn flush(&self) {
        self.epoch.fetch_add(1, Ordering::AcqRel);
    }

    fn shard(&self, key: &TokenHash) -> std::sync::MutexGuard<'_, HashMap<TokenHash, Entry>> {
        let lock = &self.shards[usize::from(key[0]) % SHARDS];
        lock.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// The verified token for `key`, if cached, current, verified under the settings of
    /// `serial`, and not past `exp` at `now`.
    pub fn get(&self, key: &TokenHash, now: i64, serial: u64) -> Option<Arc<VerifiedToken>> {
        let epoch = self.epoch.load(Ordering::Acquire);
        let shard = self.shard(key);
        let entry = shard.get(key)?;
        let current = entry.epoch == epoch && entry.serial == serial;
        (current && now < entry.token.exp).then(|| entry.token.clone())
    }

    /// Remembers a token verified under the settings of `serial`. `epoch` is the value of
    /// [`TokenCache::epoch`] read before validation started, so a flush during validation is
    /// not undone.
    pub fn insert(
        &self,
        key: TokenHash,
        token: Arc<VerifiedToken>,
        (epoch, serial): (u64, u64),
        now: i64,
    ) {
        let mut shard = self.shard(&key);
        if shard.len() >= self.per_shard && !shard.contains_key(&key) {
            let current = self.epoch.load(Ordering::Acquire);
            shard.retain(|_, e| e.epoch == current && now < e.token.exp);
            if shard.len() >= self.per_shard {
                let victim = shard.keys().next().copied();
                if let Some(victim) = victim {
                    shard.remove(&victim);
                }
            }
        }
        shard.insert(
            key,
            Entry {
                token,
                epoch,
                serial,
            },
        );
    }

    /// The current epoch.
    pub fn epoch(&self) -> u64 {
        self.epoch.load(Ordering::Acquire)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn token(exp: i64) -> Arc<VerifiedToken> {
        Arc::new(VerifiedToken {
            iss: "i".into(),
            sub: None,
            client_id: None,
            scope: String::new(),
            exp,
            iat: None,
            jti: None,
            claims: None,
        })
    }

    #[test]
    fn entries_never_outlive_exp_or_a_flush() {
        let cache = TokenCache::new(100);
        let key = hash("t");
        cache.insert(key, token(100), (cache.epoch(), 1), 0);
        assert!(cache.get(&key, 99, 1).is_some());
        assert!(cache.get(&key, 100, 1).is_none());
        cache.flush();
        assert!(cache.get(&key, 0, 1).is_none());
    }

    #[test]
    fn a_flush_during_validation_wins() {
        let cache = TokenCache::new(100);
        let before = cache.epoch();
        cache.flush();
        cache.insert(hash("t"), token(100), (before, 1), 0);
        assert!(cache.get(&hash("t"), 0, 1).is_none());
    }

    #[test]
    fn stays_bounded() {
        let cache = TokenCache::new(32);
        for i in 0..1000 {
            cache.insert(hash(&i.to_string()), token(100), (cache.epoch(), 1), 0);
        }
        let total: usize = cache.shards.iter().map(|s| s.lock().unwrap().len()).sum();
        assert!(total <= 32, "{total}");
    }

    #[test]
    fn an_entry_serves_only_the_settings_it_was_verified_under() {
        let cache = TokenCache::new(8);
        let key = hash("t");
        cache.insert(key, token(100), (cache.epoch(), 1), 0);
        assert!(cache.get(&key, 0, 1).is_some());
        // Settings 2 are in force, the flush has not happened yet: a miss all the same.
        assert!(cache.get(&key, 0, 2).is_none());
    }
}
