//! Outside issuers found by discovery (`discoveryUrl`): the operator reads each discovery
//! document and the JWKS it names in the background, never on a reconcile's path, keeps the
//! last good read, and wakes the policies that asked when what it knows changes. A reconcile
//! takes what is known ([`Discovery::observe`]) and renders it ([`document::keys_for`]); its
//! requeue brings the next read.
//!
//! Reads are shared by every policy naming the same URL with the same CA bundle (never across
//! bundles: a tenant's CA must not vouch for what another tenant reads), at most
//! [`READS_AT_ONCE`] run at once, and a namespace makes the operator read at most
//! [`SOURCES_PER_NAMESPACE`] sources, each answer at most [`MAX_BYTES`]: another namespace's
//! policies cannot make the operator slow or large.

pub mod document;

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use kube::runtime::reflector::ObjectRef;
use scopegate_crds::v1alpha1::AuthPolicy;
use tokio::sync::{Semaphore, mpsc};

use self::document::{Document, parse_document};

/// Least time between two reads of one source, whatever refreshInterval says.
pub const MIN_REFRESH: Duration = Duration::from_secs(30);
/// Largest discovery document or JWKS read.
pub const MAX_BYTES: usize = 64 * 1024;
/// How long one answer may take.
pub const READ_TIMEOUT: Duration = Duration::from_secs(10);
/// Most reads in flight at once.
pub const READS_AT_ONCE: usize = 8;
/// Most sources the policies of one namespace make the operator read.
pub const SOURCES_PER_NAMESPACE: usize = 32;
/// A source no policy asked about for this long is forgotten (every policy naming one is
/// reconciled at least hourly).
const FORGET_AFTER_SECS: i64 = 2 * 3600;

/// Where an issuer's discovery document is read from, and the CAs trusted for it.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Source {
    /// The discovery document's URL.
    pub url: String,
    /// PEM CAs trusted besides the system roots (the policy's caBundle).
    pub ca_bundle: Option<String>,
}

/// A good read: the document and the JWKS it named.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Read {
    /// The discovery document.
    pub document: Document,
    /// The JWKS, as served.
    pub jwks: Bytes,
}

/// What the operator knows of one source.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Known {
    /// The last good read.
    pub read: Option<Arc<Read>>,
    /// When the last good read was made (Unix seconds).
    pub read_at: Option<i64>,
    /// Why the last attempt failed, while reads fail.
    pub error: Option<String>,
}

/// One source's state.
struct Entry {
    known: Known,
    /// When the last read ended.
    attempted_at: Option<i64>,
    /// A read is in flight.
    reading: bool,
    /// When a policy last asked.
    asked_at: i64,
    /// Policies to wake when what is known changes.
    policies: HashSet<ObjectRef<AuthPolicy>>,
}

/// The operator's reads of discovery sources.
pub struct Discovery {
    entries: Mutex<HashMap<Source, Entry>>,
    wake: mpsc::UnboundedSender<ObjectRef<AuthPolicy>>,
    reads: Semaphore,
}

impl Discovery {
    /// A reader, and the stream of policies to reconcile because what they read changed.
    pub fn new() -> (Arc<Self>, mpsc::UnboundedReceiver<ObjectRef<AuthPolicy>>) {
        let (wake, woken) = mpsc::unbounded_channel();
        let discovery = Discovery {
            entries: Mutex::new(HashMap::new()),
            wake,
            reads: Semaphore::new(READS_AT_ONCE),
        };
        (Arc::new(discovery), woken)
    }

    /// What is known of `source` for `policy`, starting a read in the background when the
    /// last one is older than `refresh` (at least [`MIN_REFRESH`]; after a failure,
    /// [`MIN_REFRESH`]). `policy` is woken when the read changes what is known.
    pub fn observe(
        self: &Arc<Self>,
        source: &Source,
        refresh: Duration,
        policy: ObjectRef<AuthPolicy>,
        now: i64,
    ) -> Known {
        let mut entries = self.entries.lock().unwrap_or_else(|p| p.into_inner());
        entries.retain(|_, e| e.reading || now - e.asked_at < FORGET_AFTER_SECS);
        if !entries.contains_key(source) {
            let namespace = policy.namespace.as_deref();
            let held = entries
                .values()
                .filter(|e| {
                    e.policies
                        .iter()
                        .any(|p| p.namespace.as_deref() == namespace)
                })
                .count();
            if held >= SOURCES_PER_NAMESPACE {
                return Known {
                    error: Some(format!(
                        "the policies of this namespace already name {held} discovery sources, the most the operator reads for one namespace"
                    )),
                    ..Known::default()
                };
            }
        }
        let entry = entries.entry(source.clone()).or_insert_with(|| Entry {
            known: Known::default(),
            attempted_at: None,
            reading: false,
            asked_at: now,
            policies: HashSet::new(),
        });
        entry.asked_at = now;
        entry.policies.insert(policy);
        let wait = if entry.known.error.is_some() {
            MIN_REFRESH
        } else {
            refresh.max(MIN_REFRESH)
        };
        let due = entry
            .attempted_at
            .is_none_or(|t| now - t >= i64::try_from(wait.as_secs()).unwrap_or(i64::MAX));
        if due && !entry.reading {
            entry.reading = true;
            tokio::spawn(self.clone().read(source.clone()));
        }
        entry.known.clone()
    }

    /// Reads `source` and records the outcome, waking the policies that asked if it changed
    /// what is known.
    async fn read(self: Arc<Self>, source: Source) {
        let outcome = match self.reads.acquire().await {
            Ok(_permit) => read_source(&source).await,
            Err(_) => return,
        };
        let now = crate::context::now();
        let woken: Vec<ObjectRef<AuthPolicy>> = {
            let mut entries = self.entries.lock().unwrap_or_else(|p| p.into_inner());
            let Some(entry) = entries.get_mut(&source) else {
                return;
            };
            entry.reading = false;
            entry.attempted_at = Some(now);
            let known = &mut entry.known;
            let changed = match outcome {
                Ok(read) => {
                    let changed = known.error.is_some() || known.read.as_deref() != Some(&read);
                    if known.read.as_deref() != Some(&read) {
                        known.read = Some(Arc::new(read));
                    }
                    known.read_at = Some(now);
                    known.error = None;
                    changed
                }
                Err(error) => {
                    tracing::warn!(url = %source.url, error = %error, "discovery read failed; keeping the last good keys");
                    let changed = known.error.as_ref() != Some(&error);
                    known.error = Some(error);
                    changed
                }
            };
            if changed {
                entry.policies.iter().cloned().collect()
            } else {
                Vec::new()
            }
        };
        for policy in woken {
            let _ = self.wake.send(policy);
        }
    }
}

/// Reads the discovery document and the JWKS it names; an error says which and why.
async fn read_source(source: &Source) -> Result<Read, String> {
    let client = scopegate_fetch::client(source.ca_bundle.as_deref())
        .map_err(|e| scopegate_core::error_chain(&e))?;
    let body = scopegate_fetch::get(&client, &source.url, READ_TIMEOUT, MAX_BYTES)
        .await
        .map_err(|e| {
            format!(
                "reading {}: {}",
                source.url,
                scopegate_core::error_chain(&e)
            )
        })?;
    let document = parse_document(&body).map_err(|e| e.to_string())?;
    let jwks = scopegate_fetch::get(&client, &document.jwks_uri, READ_TIMEOUT, MAX_BYTES)
        .await
        .map_err(|e| {
            format!(
                "reading the JWKS {}: {}",
                document.jwks_uri,
                scopegate_core::error_chain(&e)
            )
        })?;
    Ok(Read { document, jwks })
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    fn source(n: usize, ca: Option<&str>) -> Source {
        Source {
            // Nothing listens on port 1: each read fails at once, on loopback.
            url: format!("https://127.0.0.1:1/{n}/.well-known/openid-configuration"),
            ca_bundle: ca.map(str::to_owned),
        }
    }

    fn policy(namespace: &str, name: &str) -> ObjectRef<AuthPolicy> {
        ObjectRef::new(name).within(namespace)
    }

    fn sources(discovery: &Discovery) -> usize {
        discovery.entries.lock().unwrap().len()
    }

    /// Waits until no read is in flight.
    async fn reads_done(discovery: &Discovery) {
        for _ in 0..200 {
            if discovery
                .entries
                .lock()
                .unwrap()
                .values()
                .all(|e| !e.reading)
            {
                return;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        panic!("reads still in flight after 10 s");
    }

    #[tokio::test]
    async fn one_namespace_cannot_make_the_operator_read_without_bound() {
        let (discovery, _woken) = Discovery::new();
        let refresh = Duration::from_secs(300);
        for n in 0..SOURCES_PER_NAMESPACE {
            let known = discovery.observe(&source(n, None), refresh, policy("greedy", "p"), 0);
            assert_eq!(known.error, None);
        }
        let refused = discovery.observe(
            &source(SOURCES_PER_NAMESPACE, None),
            refresh,
            policy("greedy", "other"),
            0,
        );
        assert!(
            refused
                .error
                .unwrap()
                .contains("the most the operator reads"),
            "the namespace's next source is refused"
        );
        assert_eq!(sources(&discovery), SOURCES_PER_NAMESPACE);
        // A source it already reads is still served; another namespace is not held back.
        let again = discovery.observe(&source(0, None), refresh, policy("greedy", "q"), 0);
        assert!(!again.error.is_some_and(|e| e.contains("the most")));
        let other = discovery.observe(&source(99, None), refresh, policy("shop", "orders"), 0);
        assert_eq!(other.error, None);
        // Sources nobody asked about for two hours are forgotten, and the slots come back.
        let later = FORGET_AFTER_SECS + 1;
        reads_done(&discovery).await;
        let fresh = discovery.observe(&source(100, None), refresh, policy("greedy", "p"), later);
        assert!(!fresh.error.is_some_and(|e| e.contains("the most")));
        assert!(sources(&discovery) <= 2, "{}", sources(&discovery));
    }

    #[tokio::test]
    async fn reads_are_shared_by_url_and_ca_bundle_never_across_bundles() {
        let (discovery, _woken) = Discovery::new();
        let refresh = Duration::from_secs(300);
        discovery.observe(&source(0, None), refresh, policy("a", "p"), 0);
        discovery.observe(&source(0, None), refresh, policy("b", "p"), 0);
        assert_eq!(sources(&discovery), 1);
        // The same URL with a tenant's own CA is read on its own: that CA vouches for that
        // tenant's read only.
        discovery.observe(&source(0, Some("PEM of b")), refresh, policy("b", "q"), 0);
        assert_eq!(sources(&discovery), 2);
    }

    #[tokio::test]
    async fn a_failed_read_is_recorded_and_wakes_the_policies_that_asked() {
        let (discovery, mut woken) = Discovery::new();
        let refresh = Duration::from_secs(300);
        let first = discovery.observe(&source(0, None), refresh, policy("a", "p"), 0);
        assert_eq!(first, Known::default());
        let waker = tokio::time::timeout(Duration::from_secs(10), woken.recv())
            .await
            .unwrap()
            .unwrap();
        assert_eq!(waker, policy("a", "p"));
        let known = discovery.observe(&source(0, None), refresh, policy("a", "p"), 1);
        let error = known.error.unwrap();
        assert!(
            error.starts_with("reading https://127.0.0.1:1/0/"),
            "{error}"
        );
        assert!(known.read.is_none());
    }
}
