//! Issuer state behind one interface: authorization codes, login challenges and refresh
//! families as small records updated by compare-and-swap, the revocation log the feed
//! serves, and rate-limit budgets. Two implementations: [`memory::MemoryStore`] (one
//! replica) and [`redis::RedisStore`] (shared by replicas). Every record carries an expiry;
//! the grant logic above it is pure and the same for both.

pub mod memory;
pub mod redis;

use serde::{Deserialize, Serialize};

pub use scopegate_sidecar_kit::budget::{Budget, RateOp, RateStore, StoreError, StoreFuture, gcra};

/// One entry of the revocation log.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
#[serde(rename_all = "camelCase", tag = "kind")]
pub enum Revocation {
    /// An access token, dead until its `exp`.
    Jti {
        /// The token's `jti`.
        jti: String,
        /// The token's `exp`.
        exp: i64,
    },
    /// Tokens of `sub` issued before `before` are dead; forgotten after `until`.
    Subject {
        /// The subject.
        sub: String,
        /// Cut-off time (Unix seconds).
        before: i64,
        /// When no token it hits can still be valid.
        until: i64,
    },
}

impl Revocation {
    /// When the entry can be forgotten (Unix seconds, before the verifiers' leeway).
    pub fn until(&self) -> i64 {
        match self {
            Revocation::Jti { exp, .. } => *exp,
            Revocation::Subject { until, .. } => *until,
        }
    }
}

/// Where the revocation log stands: `epoch` names one continuous log (it changes when the
/// store lost its state), `seq` the last entry appended.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FeedHead {
    /// Identity of the log: `<start ms, hex>.<random>` ([`new_epoch`]), or a random token
    /// alone for a log begun by an earlier release.
    pub epoch: String,
    /// Sequence number of the newest entry (0: none yet).
    pub seq: u64,
}

impl FeedHead {
    /// When the log began (Unix milliseconds); 0 for a log begun by an earlier release.
    pub fn started_at_ms(&self) -> i64 {
        self.epoch
            .split_once('.')
            .and_then(|(start, _)| i64::from_str_radix(start, 16).ok())
            .unwrap_or(0)
    }
}

/// A fresh log identity: its start time (so that a later log orders after an earlier one) and
/// a random part (so that two logs never share one).
pub fn new_epoch() -> String {
    format!("{:x}.{}", memory::now_ms(), crate::random_token(9))
}

/// Live log entries after a sequence number.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FeedSlice {
    /// Where the log stood when read.
    pub head: FeedHead,
    /// Entries with their sequence numbers, oldest first.
    pub entries: Vec<(u64, Revocation)>,
}

/// How many pending logins (records a stranger can make the issuer keep: login challenges,
/// provider-choice requests, upstream legs) may be stored per caller address and overall.
///
/// Never per client: a client's `client_id`, redirect URI and an S256 challenge are public, so
/// a bound in a client's name is one any stranger could fill, evicting its real users' logins.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", default)]
pub struct PendingBounds {
    /// Most pending logins left by one address (IPv6: one /64); beyond it the address's own
    /// oldest go.
    pub per_address: u32,
    /// Most pending logins of all addresses together.
    pub total: u32,
}

impl Default for PendingBounds {
    fn default() -> Self {
        PendingBounds {
            per_address: 100,
            total: 10_000,
        }
    }
}

/// The issuer's state.
///
/// Keys are chosen by the grant logic (`code:<hash>`, `family:<id>`, ...); a store adds its
/// own prefix. Values are opaque bytes.
pub trait Store: RateStore {
    /// The value under `key`, unless it expired.
    fn get<'a>(&'a self, key: &'a str) -> StoreFuture<'a, Option<Vec<u8>>>;

    /// Atomically replaces the value under `key` when it is `expected` (`None`: absent), with
    /// `new` (`None`: delete) expiring at `expires_at_ms` (Unix milliseconds). Returns whether
    /// it swapped.
    fn swap<'a>(
        &'a self,
        key: &'a str,
        expected: Option<&'a [u8]>,
        new: Option<&'a [u8]>,
        expires_at_ms: u64,
    ) -> StoreFuture<'a, bool>;

    /// Appends revocations to the log and indexes them for lookups. Each is kept until its
    /// `until()` plus `keep_secs`.
    fn revoke(&self, entries: Vec<Revocation>, keep_secs: i64) -> StoreFuture<'_, FeedHead>;

    /// Whether an access token's `jti` is revoked.
    fn jti_revoked<'a>(&'a self, jti: &'a str) -> StoreFuture<'a, bool>;

    /// The subject's cut-off, if one is in force.
    fn subject_cutoff<'a>(&'a self, sub: &'a str) -> StoreFuture<'a, Option<i64>>;

    /// Where the log stands.
    fn feed_head(&self) -> StoreFuture<'_, FeedHead>;

    /// Live entries with a sequence number above `after` (`None`: all).
    fn feed_since(&self, after: Option<u64>) -> StoreFuture<'_, FeedSlice>;

    /// Counts the record under `key` (written just before, expiring at `expires_at_ms`) as a
    /// pending login left by the caller `address`, and deletes the oldest pending logins
    /// beyond `bounds`, first of that address, then of all. Returns how many live records it
    /// deleted.
    fn track_pending<'a>(
        &'a self,
        address: &'a str,
        key: &'a str,
        expires_at_ms: u64,
        bounds: PendingBounds,
    ) -> StoreFuture<'a, usize>;
}

/// A record read from the store: the decoded value and the bytes it was read as (the
/// expected value of a later compare-and-swap).
pub struct Read<T> {
    /// The value.
    pub value: T,
    /// Its stored bytes.
    pub bytes: Vec<u8>,
}

/// Reads and decodes a JSON record.
pub async fn read<T: serde::de::DeserializeOwned>(
    store: &dyn Store,
    key: &str,
) -> Result<Option<Read<T>>, StoreError> {
    let Some(bytes) = store.get(key).await? else {
        return Ok(None);
    };
    let value = serde_json::from_slice(&bytes).map_err(|_| StoreError::Corrupt)?;
    Ok(Some(Read { value, bytes }))
}

/// Writes `value` under `key` if the record is still `expected` (`None`: absent), expiring
/// at `expires_at` (Unix seconds). Returns whether it was written.
pub async fn write<T: Serialize>(
    store: &dyn Store,
    key: &str,
    expected: Option<&[u8]>,
    value: &T,
    expires_at: i64,
) -> Result<bool, StoreError> {
    let bytes = serde_json::to_vec(value).map_err(|_| StoreError::Corrupt)?;
    let ms = u64::try_from(expires_at.max(0))
        .unwrap_or(0)
        .saturating_mul(1000);
    store.swap(key, expected, Some(&bytes), ms).await
}

/// The store key of a secret artifact (code, challenge): its SHA-256, so that the store
/// never holds the artifact itself.
pub fn hashed_key(kind: &str, secret: &str) -> String {
    let digest = aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, secret.as_bytes());
    format!(
        "{kind}:{}",
        scopegate_core::jose::b64::encode(digest.as_ref())
    )
}

/// How often a compare-and-swap loop retries under contention before giving up.
pub const MAX_SWAP_ATTEMPTS: usize = 256;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn epochs_carry_their_start() {
        let head = FeedHead {
            epoch: new_epoch(),
            seq: 3,
        };
        let start = head.started_at_ms();
        assert!((memory::now_ms() as i64 - start).abs() < 60_000, "{start}");
        let legacy = FeedHead {
            epoch: "AbC_-9xyz012".into(),
            seq: 3,
        };
        assert_eq!(legacy.started_at_ms(), 0);
    }
}
