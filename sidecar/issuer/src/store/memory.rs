//! The in-memory store: one replica, lost on restart (the feed then starts a new epoch, and
//! verifiers reset to the issuer's empty state).

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::sync::Mutex;

use super::{
    Budget, FeedHead, FeedSlice, PendingBounds, RateOp, RateStore, Revocation, Store, StoreError,
    StoreFuture, gcra,
};

/// Records kept before expired ones are pruned.
const PRUNE_AT: usize = 100_000;

/// Least time between two prunes, in milliseconds. Every read filters expired entries
/// itself, so pruning only bounds memory; doing it on every write made each rate check and
/// token request scan the whole revocation log.
const PRUNE_EVERY_MS: u64 = 1_000;

/// State in this process.
pub struct MemoryStore {
    epoch: String,
    inner: Mutex<Inner>,
}

#[derive(Default)]
struct Inner {
    records: HashMap<String, (Vec<u8>, u64)>,
    seq: u64,
    log: BTreeMap<u64, (Revocation, i64)>,
    jtis: HashMap<String, i64>,
    subjects: HashMap<String, (i64, i64)>,
    budgets: HashMap<String, u64>,
    pruned_at_ms: u64,
    /// Pending logins by caller address, oldest first: (record key, expiry ms).
    pending_by_address: HashMap<String, VecDeque<(String, u64)>>,
    /// Pending logins of all addresses, oldest first: (address, record key, expiry ms).
    pending: VecDeque<(String, String, u64)>,
}

/// Unix milliseconds now.
pub fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

impl Default for MemoryStore {
    fn default() -> Self {
        MemoryStore::new()
    }
}

impl MemoryStore {
    /// An empty store with a fresh log epoch.
    pub fn new() -> MemoryStore {
        MemoryStore {
            epoch: super::new_epoch(),
            inner: Mutex::default(),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }
}

impl Inner {
    fn prune(&mut self, now_ms: u64) {
        if now_ms < self.pruned_at_ms.saturating_add(PRUNE_EVERY_MS) {
            return;
        }
        self.pruned_at_ms = now_ms;
        let now = i64::try_from(now_ms / 1000).unwrap_or(i64::MAX);
        if self.records.len() >= PRUNE_AT {
            self.records.retain(|_, (_, exp)| *exp > now_ms);
        }
        if self.budgets.len() >= PRUNE_AT {
            self.budgets.retain(|_, tat| *tat > now_ms);
        }
        self.log.retain(|_, (_, keep)| *keep > now);
        self.jtis.retain(|_, keep| *keep > now);
        self.subjects.retain(|_, (_, keep)| *keep > now);
    }

    /// Removes a pending login's record; whether it was still there.
    fn evict(&mut self, key: &str, now_ms: u64) -> bool {
        self.records
            .remove(key)
            .is_some_and(|(_, expires)| expires > now_ms)
    }

    fn head(&self, epoch: &str) -> FeedHead {
        FeedHead {
            epoch: epoch.to_owned(),
            seq: self.seq,
        }
    }
}

fn ready<T: Send + 'static>(value: Result<T, StoreError>) -> StoreFuture<'static, T> {
    Box::pin(std::future::ready(value))
}

impl Store for MemoryStore {
    fn get<'a>(&'a self, key: &'a str) -> StoreFuture<'a, Option<Vec<u8>>> {
        let now = now_ms();
        let inner = self.lock();
        let value = inner
            .records
            .get(key)
            .filter(|(_, exp)| *exp > now)
            .map(|(v, _)| v.clone());
        ready(Ok(value))
    }

    fn swap<'a>(
        &'a self,
        key: &'a str,
        expected: Option<&'a [u8]>,
        new: Option<&'a [u8]>,
        expires_at_ms: u64,
    ) -> StoreFuture<'a, bool> {
        let now = now_ms();
        let mut inner = self.lock();
        inner.prune(now);
        let current = inner
            .records
            .get(key)
            .filter(|(_, exp)| *exp > now)
            .map(|(v, _)| v.as_slice());
        if current != expected {
            return ready(Ok(false));
        }
        match new {
            Some(value) => {
                inner
                    .records
                    .insert(key.to_owned(), (value.to_vec(), expires_at_ms));
            }
            None => {
                inner.records.remove(key);
            }
        }
        ready(Ok(true))
    }

    fn revoke(&self, entries: Vec<Revocation>, keep_secs: i64) -> StoreFuture<'_, FeedHead> {
        let now = scopegate_sidecar_kit::unix_now();
        let mut inner = self.lock();
        inner.prune(now_ms());
        for entry in entries {
            let keep = entry.until().saturating_add(keep_secs);
            match &entry {
                Revocation::Jti { jti, .. } => {
                    inner.jtis.insert(jti.clone(), keep);
                }
                Revocation::Subject { sub, before, .. } => {
                    let slot = inner.subjects.entry(sub.clone()).or_insert((*before, keep));
                    // An expired cut-off that was not pruned yet is replaced, not merged.
                    if slot.1 <= now {
                        *slot = (*before, keep);
                    }
                    *slot = (slot.0.max(*before), slot.1.max(keep));
                }
            }
            inner.seq += 1;
            let seq = inner.seq;
            inner.log.insert(seq, (entry, keep));
        }
        ready(Ok(inner.head(&self.epoch)))
    }

    fn jti_revoked<'a>(&'a self, jti: &'a str) -> StoreFuture<'a, bool> {
        let now = scopegate_sidecar_kit::unix_now();
        let inner = self.lock();
        ready(Ok(inner.jtis.get(jti).is_some_and(|keep| *keep > now)))
    }

    fn subject_cutoff<'a>(&'a self, sub: &'a str) -> StoreFuture<'a, Option<i64>> {
        let now = scopegate_sidecar_kit::unix_now();
        let inner = self.lock();
        let cutoff = inner
            .subjects
            .get(sub)
            .filter(|(_, keep)| *keep > now)
            .map(|(before, _)| *before);
        ready(Ok(cutoff))
    }

    fn feed_head(&self) -> StoreFuture<'_, FeedHead> {
        ready(Ok(self.lock().head(&self.epoch)))
    }

    fn feed_since(&self, after: Option<u64>) -> StoreFuture<'_, FeedSlice> {
        let now = scopegate_sidecar_kit::unix_now();
        let inner = self.lock();
        let from = after.map_or(0, |a| a.saturating_add(1));
        let entries = inner
            .log
            .range(from..)
            .filter(|(_, (_, keep))| *keep > now)
            .map(|(seq, (entry, _))| (*seq, entry.clone()))
            .collect();
        ready(Ok(FeedSlice {
            head: inner.head(&self.epoch),
            entries,
        }))
    }

    fn track_pending<'a>(
        &'a self,
        address: &'a str,
        key: &'a str,
        expires_at_ms: u64,
        bounds: PendingBounds,
    ) -> StoreFuture<'a, usize> {
        let now = now_ms();
        let mut inner = self.lock();
        let inner = &mut *inner;
        // Entries expire in order of creation (one lifetime): drop the expired from the front.
        while inner.pending.front().is_some_and(|(_, _, exp)| *exp <= now) {
            inner.pending.pop_front();
        }
        let mine = inner
            .pending_by_address
            .entry(address.to_owned())
            .or_default();
        while mine.front().is_some_and(|(_, exp)| *exp <= now) {
            mine.pop_front();
        }
        mine.push_back((key.to_owned(), expires_at_ms));
        let mut evicted_keys = Vec::new();
        while mine.len() > bounds.per_address as usize {
            if let Some((old, _)) = mine.pop_front() {
                evicted_keys.push(old);
            }
        }
        inner
            .pending
            .push_back((address.to_owned(), key.to_owned(), expires_at_ms));
        while inner.pending.len() > bounds.total as usize {
            let Some((owner, old, _)) = inner.pending.pop_front() else {
                break;
            };
            if let Some(theirs) = inner.pending_by_address.get_mut(&owner)
                && let Some(at) = theirs.iter().position(|(k, _)| *k == old)
            {
                theirs.remove(at);
            }
            evicted_keys.push(old);
        }
        inner.pending_by_address.retain(|_, q| !q.is_empty());
        let evicted = evicted_keys.iter().filter(|k| inner.evict(k, now)).count();
        ready(Ok(evicted))
    }
}

impl RateStore for MemoryStore {
    fn rate<'a>(
        &'a self,
        op: RateOp,
        keys: &'a [(String, Budget)],
    ) -> StoreFuture<'a, Result<(), u64>> {
        let now = now_ms();
        let mut inner = self.lock();
        inner.prune(now);
        let decisions: Vec<Result<u64, u64>> = keys
            .iter()
            .map(|(key, budget)| gcra(inner.budgets.get(key).copied(), now, *budget))
            .collect();
        let verdict = decisions
            .iter()
            .filter_map(|d| d.err())
            .max()
            .map_or(Ok(()), Err);
        let spend = match op {
            RateOp::Check => false,
            RateOp::Admit => verdict.is_ok(),
            RateOp::Spend => true,
        };
        if spend {
            for ((key, _), decision) in keys.iter().zip(decisions) {
                if let Ok(tat) = decision {
                    inner.budgets.insert(key.clone(), tat);
                }
            }
        }
        ready(Ok(verdict))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn swap_is_compare_and_swap_with_expiry() {
        let store = MemoryStore::new();
        let later = now_ms() + 60_000;
        assert!(store.swap("k", None, Some(b"a"), later).await.unwrap());
        assert!(!store.swap("k", None, Some(b"b"), later).await.unwrap());
        assert!(
            !store
                .swap("k", Some(b"x"), Some(b"b"), later)
                .await
                .unwrap()
        );
        assert!(
            store
                .swap("k", Some(b"a"), Some(b"b"), later)
                .await
                .unwrap()
        );
        assert_eq!(store.get("k").await.unwrap().as_deref(), Some(&b"b"[..]));
        assert!(store.swap("k", Some(b"b"), None, 0).await.unwrap());
        assert_eq!(store.get("k").await.unwrap(), None);
        assert!(
            store
                .swap("old", None, Some(b"a"), now_ms() - 1)
                .await
                .unwrap()
        );
        assert_eq!(store.get("old").await.unwrap(), None, "expired");
        assert!(store.swap("old", None, Some(b"c"), later).await.unwrap());
    }

    #[tokio::test]
    async fn the_log_serves_live_entries_after_a_cursor() {
        let store = MemoryStore::new();
        let now = scopegate_sidecar_kit::unix_now();
        let head = store
            .revoke(
                vec![
                    Revocation::Jti {
                        jti: "a".into(),
                        exp: now + 60,
                    },
                    Revocation::Jti {
                        jti: "gone".into(),
                        exp: now - 100,
                    },
                ],
                30,
            )
            .await
            .unwrap();
        assert_eq!(head.seq, 2);
        assert!(store.jti_revoked("a").await.unwrap());
        assert!(!store.jti_revoked("gone").await.unwrap());
        store
            .revoke(
                vec![Revocation::Subject {
                    sub: "s".into(),
                    before: now,
                    until: now + 60,
                }],
                30,
            )
            .await
            .unwrap();
        let all = store.feed_since(None).await.unwrap();
        assert_eq!(all.entries.len(), 2);
        let after = store.feed_since(Some(2)).await.unwrap();
        assert_eq!(after.entries.len(), 1);
        assert_eq!(after.head.seq, 3);
        assert_eq!(store.subject_cutoff("s").await.unwrap(), Some(now));
    }

    #[tokio::test]
    async fn an_expired_cutoff_is_replaced_before_it_is_pruned() {
        let store = MemoryStore::new();
        let now = scopegate_sidecar_kit::unix_now();
        let cutoff = |before, until| Revocation::Subject {
            sub: "s".into(),
            before,
            until,
        };
        store
            .revoke(vec![cutoff(now - 10, now - 100)], 0)
            .await
            .unwrap();
        assert_eq!(store.subject_cutoff("s").await.unwrap(), None);
        // Within a second of the last prune: the expired entry is still held, and must not
        // lend its later `before` to the new cut-off.
        store
            .revoke(vec![cutoff(now - 500, now + 60)], 0)
            .await
            .unwrap();
        assert_eq!(store.subject_cutoff("s").await.unwrap(), Some(now - 500));
    }

    #[tokio::test]
    async fn pending_logins_are_bounded_per_address_and_overall() {
        let store = MemoryStore::new();
        let later = now_ms() + 60_000;
        let bounds = PendingBounds {
            per_address: 2,
            total: 3,
        };
        let mut evicted = 0;
        for (address, key) in [
            ("a", "a1"),
            ("a", "a2"),
            ("a", "a3"),
            ("b", "b1"),
            ("b", "b2"),
        ] {
            assert!(store.swap(key, None, Some(b"x"), later).await.unwrap());
            evicted += store
                .track_pending(address, key, later, bounds)
                .await
                .unwrap();
        }
        let store = &store;
        let live = |k: &'static str| async move { store.get(k).await.unwrap().is_some() };
        assert!(
            !live("a1").await,
            "a's oldest, beyond the address's bound of 2"
        );
        assert!(
            !live("a2").await,
            "the oldest overall once b filled the total of 3"
        );
        assert!(live("a3").await && live("b1").await && live("b2").await);
        assert_eq!(evicted, 2);
        // A pending login settled before its turn to go is not counted as evicted.
        assert!(store.swap("a3", Some(b"x"), None, 0).await.unwrap());
        assert!(store.swap("c1", None, Some(b"x"), later).await.unwrap());
        assert_eq!(
            store.track_pending("c", "c1", later, bounds).await.unwrap(),
            0
        );
        assert!(live("b1").await && live("b2").await && live("c1").await);
    }

    #[tokio::test]
    async fn admit_is_all_or_nothing() {
        let store = MemoryStore::new();
        let tight = Budget::per_secs(1, 60);
        let loose = Budget::per_secs(2, 60);
        let keys = [("a".to_owned(), tight), ("b".to_owned(), loose)];
        assert_eq!(store.rate(RateOp::Admit, &keys).await.unwrap(), Ok(()));
        assert!(store.rate(RateOp::Admit, &keys).await.unwrap().is_err());
        assert_eq!(
            store.rate(RateOp::Check, &keys[1..]).await.unwrap(),
            Ok(()),
            "the refused admit spent nothing of b"
        );
        assert!(
            store
                .rate(RateOp::Check, &keys[..1])
                .await
                .unwrap()
                .is_err()
        );
    }
}
