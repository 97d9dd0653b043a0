//! An external issuer's JWKS, fetched and cached: the last good set is kept when a fetch
//! fails (never "reject everything"), an unknown kid triggers at most one extra fetch per
//! refresh interval, and fetch health is visible to `/readyz` and metrics.

use std::sync::atomic::{AtomicBool, AtomicI64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use arc_swap::ArcSwap;
use tokio::sync::{Notify, watch};

use crate::https::{self, HttpsClient};
use crate::jose::jws::KeyMap;
use crate::jose::keys::Alg;
use crate::metrics::Metrics;
use crate::unix_now;

/// Largest JWKS document read.
const MAX_JWKS_BYTES: usize = 1 << 20;
/// How long one fetch may take.
const FETCH_TIMEOUT: Duration = Duration::from_secs(10);
/// First retry delay after a failed fetch; doubles up to the refresh interval.
const FIRST_RETRY: Duration = Duration::from_millis(200);

/// What identifies a remote key source; an equal spec on reload keeps the fetched set.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct RemoteSpec {
    /// https URL of the JWKS.
    pub jwks_uri: String,
    /// Allowed algorithms.
    pub algorithms: Vec<Alg>,
    /// Refresh interval.
    pub refresh: Duration,
    /// The issuer's own CA bundle, trusted besides the system roots (never the operator's CA).
    pub ca_bundle_pem: Option<String>,
}

/// The live key set of one remote source.
pub struct RemoteKeySet {
    /// What is fetched.
    pub spec: RemoteSpec,
    keys: ArcSwap<KeyMap>,
    loaded_at: AtomicI64,
    ever_loaded: AtomicBool,
    last_error: Mutex<Option<&'static str>>,
    generation: watch::Sender<u64>,
    wake: Notify,
    last_on_demand: Mutex<Option<Instant>>,
}

impl RemoteKeySet {
    /// An empty set for `spec`; [`run`] fills it.
    pub fn new(spec: RemoteSpec) -> Arc<RemoteKeySet> {
        Arc::new(RemoteKeySet {
            spec,
            keys: ArcSwap::from_pointee(KeyMap::new()),
            loaded_at: AtomicI64::new(0),
            ever_loaded: AtomicBool::new(false),
            last_error: Mutex::new(None),
            generation: watch::channel(0).0,
            wake: Notify::new(),
            last_on_demand: Mutex::new(None),
        })
    }

    /// The keys in force.
    pub fn keys(&self) -> Arc<KeyMap> {
        self.keys.load_full()
    }

    /// Asks for a fetch because a token named an unknown kid. Returns a receiver that
    /// changes when the next set loads, or `None` when an on-demand fetch already happened
    /// within the refresh interval.
    pub fn refetch_for_unknown_kid(&self) -> Option<watch::Receiver<u64>> {
        let mut last = self
            .last_on_demand
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        if last.is_some_and(|t| t.elapsed() < self.spec.refresh) {
            return None;
        }
        *last = Some(Instant::now());
        let receiver = self.generation.subscribe();
        self.wake.notify_one();
        Some(receiver)
    }

    /// Health for `/readyz`: `Ok(age of the set)` or why no set is held or the last fetch failed.
    pub fn health(&self, now: i64) -> RemoteHealth {
        let error = *self
            .last_error
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        RemoteHealth {
            loaded: self.ever_loaded.load(Ordering::Acquire),
            age_secs: now - self.loaded_at.load(Ordering::Acquire),
            last_error: error,
        }
    }
}

/// Fetch health of a remote key set.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RemoteHealth {
    /// A set has been loaded at least once.
    pub loaded: bool,
    /// Seconds since the set in force was loaded.
    pub age_secs: i64,
    /// Category of the last failure, if the last fetch failed.
    pub last_error: Option<&'static str>,
}

/// Loads every usable key of a JWKS document; keys that cannot be used (unknown type, no
/// kid, an algorithm outside the allow-list) are skipped, as RFC 7517 §5 asks.
pub fn parse_jwks(body: &[u8], allowed: &[Alg]) -> Result<KeyMap, serde_json::Error> {
    let (keys, skipped) = crate::jose::keys::load_jwks(body, allowed)?;
    for err in skipped {
        tracing::debug!(error = %err, "skipping JWKS key");
    }
    Ok(keys)
}

/// Fetches forever: every refresh interval, on demand for unknown kids, and sooner after a
/// failure. `changed` runs whenever a new set is in force (to flush the token cache).
pub async fn run(
    set: Arc<RemoteKeySet>,
    client: HttpsClient,
    metrics: Arc<Metrics>,
    changed: impl Fn() + Send + 'static,
) {
    let mut retry = FIRST_RETRY;
    let mut previous: Option<bytes::Bytes> = None;
    loop {
        let result = https::get(&client, &set.spec.jwks_uri, FETCH_TIMEOUT, MAX_JWKS_BYTES).await;
        let outcome = match result {
            Ok(body) if previous.as_ref() == Some(&body) => Ok(None),
            Ok(body) => parse_jwks(&body, &set.spec.algorithms)
                .map(|keys| Some((body, keys)))
                .map_err(|_| "not a JWKS"),
            Err(err) => Err(err.category()),
        };
        let wait = match outcome {
            Ok(fresh) => {
                metrics.jwks_fetch(true);
                if let Some((body, keys)) = fresh {
                    set.keys.store(Arc::new(keys));
                    previous = Some(body);
                    changed();
                }
                set.loaded_at.store(unix_now(), Ordering::Release);
                set.ever_loaded.store(true, Ordering::Release);
                *set.last_error.lock().unwrap_or_else(|p| p.into_inner()) = None;
                set.generation.send_modify(|g| *g += 1);
                retry = FIRST_RETRY;
                set.spec.refresh
            }
            Err(category) => {
                metrics.jwks_fetch(false);
                tracing::warn!(
                    jwks_uri = %set.spec.jwks_uri,
                    error = category,
                    "JWKS fetch failed; keeping the last good key set"
                );
                *set.last_error.lock().unwrap_or_else(|p| p.into_inner()) = Some(category);
                // Wake waiters so a request does not hang on a failing fetch.
                set.generation.send_modify(|g| *g += 1);
                let wait = retry.min(set.spec.refresh);
                retry = (retry * 2).min(set.spec.refresh);
                wait
            }
        };
        tokio::select! {
            () = tokio::time::sleep(wait) => {}
            () = set.wake.notified() => {}
        }
    }
}
