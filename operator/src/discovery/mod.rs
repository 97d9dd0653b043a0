//! Outside issuers found by discovery (`discoveryUrl`): the operator reads each discovery
//! document and the JWKS it names in the background, never on a reconcile's path, keeps the
//! last good read, and wakes the policies that name it when what it knows changes. One task
//! per source reads it every refresh interval (backing off while reads fail) for as long as a
//! policy names it; a reconcile takes what is known ([`Discovery::observe`]) and renders it
//! ([`document::keys_for`]).
//!
//! Reads are shared by every policy naming the same URL with the same CA bundle (never across
//! bundles: a tenant's CA must not vouch for what another tenant reads). A namespace makes
//! the operator read at most [`SOURCES_PER_NAMESPACE`] sources, at most
//! [`READS_PER_NAMESPACE`] of those only it names at once, of [`READS_AT_ONCE`] in all (a
//! source several namespaces name is charged to none of them), each answer at most
//! [`MAX_BYTES`] within [`READ_TIMEOUT`]: another namespace's policies cannot make the operator
//! slow or large, or hold back this namespace's reads.

pub mod document;

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use kube::runtime::reflector::ObjectRef;
use scopegate_crds::v1alpha1::AuthPolicy;
use scopegate_fetch::HttpsClient;
use tokio::sync::{Notify, Semaphore, mpsc};

use self::document::{Document, parse_document, parse_issuer};

/// Least time between two reads of one source, whatever refreshInterval says; the first wait
/// after a failed read, doubling while reads fail, up to [`MAX_BACKOFF`].
pub const MIN_REFRESH: Duration = Duration::from_secs(30);
/// Longest wait between two reads of a failing source.
pub const MAX_BACKOFF: Duration = Duration::from_secs(15 * 60);
/// Longest refresh interval honoured: one policy's long interval cannot hold back the reads
/// of another naming the same source for longer.
pub const MAX_REFRESH: Duration = Duration::from_secs(3600);
/// Largest discovery document or JWKS read.
pub const MAX_BYTES: usize = 64 * 1024;
/// How long one answer may take.
pub const READ_TIMEOUT: Duration = Duration::from_secs(10);
/// Most reads in flight at once.
pub const READS_AT_ONCE: usize = 8;
/// Most reads in flight at once for sources one namespace's policies named first.
pub const READS_PER_NAMESPACE: usize = 2;
/// Most sources the policies of one namespace make the operator read.
pub const SOURCES_PER_NAMESPACE: usize = 32;
/// Longest text kept from an answer or an error (status and logs repeat them).
const MAX_TEXT: usize = 512;
/// A policy that has not asked for this long no longer names the source (every policy is
/// reconciled at least hourly).
const FORGET_AFTER_SECS: i64 = 2 * 3600;

/// Where an issuer's discovery document is read from.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Source {
    /// An outside issuer's discovery URL, and the CAs trusted for it.
    Url {
        /// The discovery document's URL.
        url: String,
        /// PEM CAs trusted besides the system roots (the policy's caBundle).
        ca_bundle: Option<String>,
    },
    /// The cluster's service-account issuer: its discovery document and the JWKS at
    /// [`API_SERVER_JWKS_PATH`], both read through the operator's API-server client (never
    /// from the document's jwks_uri, which may name a host outside the cluster).
    ApiServer,
}

impl std::fmt::Display for Source {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Source::Url { url, .. } => f.write_str(url),
            Source::ApiServer => f.write_str("the API server's service-account issuer"),
        }
    }
}

/// Where the API server serves its service-account issuer's discovery document.
pub const API_SERVER_DISCOVERY_PATH: &str = "/.well-known/openid-configuration";
/// Where the API server serves its service-account issuer's keys.
pub const API_SERVER_JWKS_PATH: &str = "/openid/v1/jwks";

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
    /// What it is.
    source: Source,
    known: Known,
    /// The policies naming it: when each last asked, and the refresh it asks for.
    policies: HashMap<ObjectRef<AuthPolicy>, (i64, Duration)>,
    /// Which task reads it (a forgotten and re-added source gets a new one).
    task: u64,
    /// Wakes the task: a shorter refresh was asked for, or the source is no longer read.
    wake_task: Arc<Notify>,
    /// When the last read ended (Unix seconds).
    attempted_at: Option<i64>,
    /// Failed reads in a row.
    failures: u32,
}

impl Entry {
    /// How long the task waits before the next read.
    fn wait(&self) -> Duration {
        if self.failures > 0 {
            let doubled = MIN_REFRESH.saturating_mul(1 << (self.failures - 1).min(10));
            return doubled.min(MAX_BACKOFF);
        }
        (self.policies.values())
            .map(|(_, refresh)| *refresh)
            .min()
            .unwrap_or(MIN_REFRESH)
            .clamp(MIN_REFRESH, MAX_REFRESH)
    }

    /// The one namespace that names it, if only one does (its reads are charged there).
    fn sole_namespace(&self) -> Option<String> {
        if self.source == Source::ApiServer {
            // Read for every issuer with ServiceAccount clients, from the operator's own
            // client: no tenant's doing, charged to none.
            return None;
        }
        let mut names = self.policies.keys().map(|p| p.namespace.as_deref());
        let first = names.next()??;
        names.all(|n| n == Some(first)).then(|| first.to_owned())
    }
}

/// The HTTPS proxy of the operator's reads (the sidecars' setting).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Proxy {
    /// The proxy's URL; `None`: every read goes direct.
    pub https: Option<String>,
    /// Hosts reached without it (NO_PROXY syntax).
    pub no_proxy: String,
}

impl Proxy {
    fn rules(&self) -> scopegate_fetch::Matcher {
        let builder = scopegate_fetch::Matcher::builder();
        match &self.https {
            Some(url) => builder
                .https(url.as_str())
                .no(self.no_proxy.as_str())
                .build(),
            None => builder.build(),
        }
    }
}

/// The operator's reads of discovery sources.
pub struct Discovery {
    proxy: Proxy,
    api_server: Option<kube::Client>,
    entries: Mutex<HashMap<Source, Entry>>,
    wake: mpsc::UnboundedSender<ObjectRef<AuthPolicy>>,
    reads: Semaphore,
    namespaces: Mutex<HashMap<String, Arc<Semaphore>>>,
    tasks: std::sync::atomic::AtomicU64,
}

impl Discovery {
    /// A reader (of the API server's service-account issuer through `api_server`), and the
    /// stream of policies to reconcile because what they read changed.
    pub fn new(
        proxy: Proxy,
        api_server: Option<kube::Client>,
    ) -> (Arc<Self>, mpsc::UnboundedReceiver<ObjectRef<AuthPolicy>>) {
        let (wake, woken) = mpsc::unbounded_channel();
        let discovery = Discovery {
            proxy,
            api_server,
            entries: Mutex::new(HashMap::new()),
            wake,
            reads: Semaphore::new(READS_AT_ONCE),
            namespaces: Mutex::new(HashMap::new()),
            tasks: std::sync::atomic::AtomicU64::new(0),
        };
        (Arc::new(discovery), woken)
    }

    /// What is known of `source` for `policy`, which asks for it to be read every `refresh`
    /// (at least [`MIN_REFRESH`]); a source not read yet gets its reading task. `policy` is
    /// woken whenever what is known changes.
    pub fn observe(
        self: &Arc<Self>,
        source: &Source,
        refresh: Duration,
        policy: ObjectRef<AuthPolicy>,
        now: i64,
    ) -> Known {
        let mut entries = self.entries.lock().unwrap_or_else(|p| p.into_inner());
        for entry in entries.values_mut() {
            entry
                .policies
                .retain(|_, (asked, _)| now - *asked < FORGET_AFTER_SECS);
        }
        drop_unnamed(&mut entries);
        let namespace = policy.namespace.clone().unwrap_or_default();
        if !entries.contains_key(source) {
            let held = (entries.values())
                .filter(|e| e.source != Source::ApiServer)
                .filter(|e| (e.policies.keys()).any(|p| p.namespace.as_deref() == Some(&namespace)))
                .count();
            if held >= SOURCES_PER_NAMESPACE {
                return Known {
                    error: Some(format!(
                        "the policies of this namespace already name {held} discovery sources, the most the operator reads for one namespace"
                    )),
                    ..Known::default()
                };
            }
            let task = self
                .tasks
                .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            entries.insert(
                source.clone(),
                Entry {
                    source: source.clone(),
                    known: Known::default(),
                    policies: HashMap::new(),
                    task,
                    wake_task: Arc::new(Notify::new()),
                    attempted_at: None,
                    failures: 0,
                },
            );
            tokio::spawn(self.clone().run(source.clone(), task));
        }
        let Some(entry) = entries.get_mut(source) else {
            return Known::default();
        };
        let before = entry.wait();
        entry.policies.insert(policy, (now, refresh));
        if entry.wait() < before {
            // The task may be asleep for the longer interval: it works the deadline out again.
            entry.wake_task.notify_one();
        }
        entry.known.clone()
    }

    /// `policy` names only `sources` now: it is no longer woken for, nor counted against,
    /// the others. Policies `alive` says are gone (deleted) are let go of everywhere. A
    /// source no policy names stops being read at once.
    pub fn release(
        &self,
        policy: &ObjectRef<AuthPolicy>,
        sources: &[Source],
        alive: impl Fn(&ObjectRef<AuthPolicy>) -> bool,
    ) {
        let mut entries = self.entries.lock().unwrap_or_else(|p| p.into_inner());
        for (source, entry) in entries.iter_mut() {
            if !sources.contains(source) {
                entry.policies.remove(policy);
            }
            entry.policies.retain(|p, _| alive(p));
        }
        drop_unnamed(&mut entries);
    }

    /// The read permits of `namespace`.
    fn namespace_permits(&self, namespace: &str) -> Arc<Semaphore> {
        let mut namespaces = self.namespaces.lock().unwrap_or_else(|p| p.into_inner());
        namespaces
            .entry(namespace.to_owned())
            .or_insert_with(|| Arc::new(Semaphore::new(READS_PER_NAMESPACE)))
            .clone()
    }

    /// Reads `source` until no policy names it (its entry is gone, or belongs to a newer
    /// task), recording each outcome and waking the policies if it changed what is known.
    async fn run(self: Arc<Self>, source: Source, task: u64) {
        // The roots are loaded once per source, not per read.
        let client = match &source {
            Source::Url { ca_bundle, .. } => {
                scopegate_fetch::client_with(ca_bundle.as_deref(), self.proxy.rules())
                    .map(|client| Reader::Https(Box::new(client)))
                    .map_err(|e| scopegate_core::error_chain(&e))
            }
            Source::ApiServer => (self.api_server.clone())
                .map(Reader::ApiServer)
                .ok_or_else(|| "the operator has no API-server client".to_owned()),
        };
        loop {
            let Some(charged) = self.entry_of(&source, task, Entry::sole_namespace) else {
                return;
            };
            let permits = charged.map(|namespace| self.namespace_permits(&namespace));
            let mine = match &permits {
                Some(permits) => Some(permits.acquire().await),
                None => None,
            };
            let all = self.reads.acquire().await;
            if matches!(mine, Some(Err(_))) || all.is_err() {
                return;
            }
            // Released while it waited for a permit: nothing to read for.
            if self.entry_of(&source, task, |_| ()).is_none() {
                return;
            }
            let outcome = match (&client, &source) {
                (Ok(Reader::Https(client)), Source::Url { url, .. }) => {
                    read_source(client, url).await
                }
                (Ok(Reader::ApiServer(client)), _) => read_api_server(client).await,
                (Ok(Reader::Https(_)), Source::ApiServer) => {
                    Err("the API server is read through its own client".to_owned())
                }
                (Err(error), _) => Err(error.clone()),
            };
            drop((mine, all));
            if !self.record(&source, task, outcome) {
                return;
            }
            // Until the next read is due; a shorter refresh asked for, or the source let go
            // of, wakes the task to work it out again.
            loop {
                let Some((due, wake)) = self.entry_of(&source, task, |e| {
                    let wait = i64::try_from(e.wait().as_secs()).unwrap_or(i64::MAX / 2);
                    (
                        e.attempted_at.unwrap_or(0).saturating_add(wait),
                        e.wake_task.clone(),
                    )
                }) else {
                    return;
                };
                let left = due - crate::clock::now();
                if left <= 0 {
                    break;
                }
                let sleep = Duration::from_secs(left.unsigned_abs());
                tokio::select! {
                    () = tokio::time::sleep(sleep) => {}
                    () = wake.notified() => {}
                }
            }
        }
    }

    /// Applies `f` to the source's entry if it is still this task's.
    fn entry_of<T>(&self, source: &Source, task: u64, f: impl FnOnce(&Entry) -> T) -> Option<T> {
        let entries = self.entries.lock().unwrap_or_else(|p| p.into_inner());
        entries.get(source).filter(|e| e.task == task).map(f)
    }

    /// Records a read's outcome and wakes the policies if it changed what is known; false
    /// when the source is no longer read.
    fn record(&self, source: &Source, task: u64, outcome: Result<Read, String>) -> bool {
        let now = crate::clock::now();
        let woken = {
            let mut entries = self.entries.lock().unwrap_or_else(|p| p.into_inner());
            let Some(entry) = entries.get_mut(source).filter(|e| e.task == task) else {
                return false;
            };
            entry.attempted_at = Some(now);
            let known = &mut entry.known;
            let changed = match outcome {
                Ok(read) => {
                    entry.failures = 0;
                    let changed = known.error.is_some() || known.read.as_deref() != Some(&read);
                    if known.read.as_deref() != Some(&read) {
                        known.read = Some(Arc::new(read));
                    }
                    known.read_at = Some(now);
                    known.error = None;
                    changed
                }
                Err(error) => {
                    entry.failures = entry.failures.saturating_add(1);
                    tracing::warn!(source = %source, error = %error, "discovery read failed; keeping the last good keys");
                    let changed = known.error.as_ref() != Some(&error);
                    known.error = Some(error);
                    changed
                }
            };
            if changed {
                entry.policies.keys().cloned().collect()
            } else {
                Vec::new()
            }
        };
        for policy in woken {
            let _ = self.wake.send(policy);
        }
        true
    }
}

/// Drops the sources no policy names, waking their tasks so that they end now.
fn drop_unnamed(entries: &mut HashMap<Source, Entry>) {
    entries.retain(|_, e| {
        if e.policies.is_empty() {
            e.wake_task.notify_one();
        }
        !e.policies.is_empty()
    });
}

/// `text` cut to [`MAX_TEXT`] bytes (on a character boundary).
fn bounded(mut text: String) -> String {
    if text.len() > MAX_TEXT {
        let mut end = MAX_TEXT;
        while !text.is_char_boundary(end) {
            end -= 1;
        }
        text.truncate(end);
        text.push('…');
    }
    text
}

/// How one source is read.
enum Reader {
    /// Over https, with the source's roots (one per source task, boxed: it is large).
    Https(Box<HttpsClient>),
    /// Through the operator's API-server client.
    ApiServer(kube::Client),
}

/// Reads the discovery document at `url` and the JWKS it names; an error says which and why.
async fn read_source(client: &HttpsClient, url: &str) -> Result<Read, String> {
    let chain = |e: &scopegate_fetch::FetchError| scopegate_core::error_chain(e);
    let body = scopegate_fetch::get(client, url, READ_TIMEOUT, MAX_BYTES)
        .await
        .map_err(|e| bounded(format!("reading {url}: {}", chain(&e))))?;
    let document = parse_document(&body).map_err(|e| bounded(e.to_string()))?;
    let jwks = scopegate_fetch::get(client, &document.jwks_uri, READ_TIMEOUT, MAX_BYTES)
        .await
        .map_err(|e| {
            bounded(format!(
                "reading the JWKS {}: {}",
                document.jwks_uri,
                chain(&e)
            ))
        })?;
    Ok(Read { document, jwks })
}

/// Reads the API server's service-account issuer: its discovery document (for the issuer
/// name) and its JWKS at the fixed path, both through the operator's client.
async fn read_api_server(client: &kube::Client) -> Result<Read, String> {
    let body = api_server_get(client, API_SERVER_DISCOVERY_PATH).await?;
    let issuer = parse_issuer(&body).map_err(|e| bounded(e.to_string()))?;
    let jwks = api_server_get(client, API_SERVER_JWKS_PATH).await?;
    let document = Document {
        issuer,
        jwks_uri: API_SERVER_JWKS_PATH.to_owned(),
    };
    Ok(Read { document, jwks })
}

/// One bounded GET from the API server; a refusal says which permission the operator lacks.
async fn api_server_get(client: &kube::Client, path: &str) -> Result<Bytes, String> {
    use http_body_util::{BodyExt, Limited};
    let failed = |why: String| bounded(format!("reading the API server's {path}: {why}"));
    let request = http::Request::get(path)
        .body(kube::client::Body::empty())
        .map_err(|e| failed(e.to_string()))?;
    let read = async {
        let response = client
            .send(request)
            .await
            .map_err(|e| failed(scopegate_core::error_chain(&e)))?;
        let status = response.status();
        let body = Limited::new(response.into_body(), MAX_BYTES)
            .collect()
            .await
            .map_err(|e| failed(format!("the answer: {e}")))?
            .to_bytes();
        match status {
            http::StatusCode::OK => Ok(body),
            http::StatusCode::FORBIDDEN | http::StatusCode::UNAUTHORIZED => Err(failed(format!(
                "{status}: the operator needs get on the non-resource URLs {API_SERVER_DISCOVERY_PATH} and {API_SERVER_JWKS_PATH} (its chart's ClusterRole grants it)"
            ))),
            _ => Err(failed(format!(
                "{status}: {}",
                String::from_utf8_lossy(&body[..body.len().min(200)])
            ))),
        }
    };
    tokio::time::timeout(READ_TIMEOUT, read)
        .await
        .map_err(|_| failed(format!("no answer within {READ_TIMEOUT:?}")))?
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    fn source(n: usize, ca: Option<&str>) -> Source {
        Source::Url {
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

    /// Waits until every source has been read once (each read fails at once).
    async fn reads_done(discovery: &Discovery) {
        for _ in 0..400 {
            let done = (discovery.entries.lock().unwrap().values()).all(|e| e.failures > 0);
            if done {
                return;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        panic!("reads still in flight after 20 s");
    }

    #[tokio::test]
    async fn one_namespace_cannot_make_the_operator_read_without_bound() {
        let (discovery, _woken) = Discovery::new(Proxy::default(), None);
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
        let fresh = discovery.observe(&source(100, None), refresh, policy("greedy", "p"), later);
        assert!(!fresh.error.is_some_and(|e| e.contains("the most")));
        assert!(sources(&discovery) <= 2, "{}", sources(&discovery));
    }

    #[tokio::test]
    async fn a_policy_that_names_a_source_no_more_frees_it() {
        let (discovery, _woken) = Discovery::new(Proxy::default(), None);
        let refresh = Duration::from_secs(300);
        for n in 0..SOURCES_PER_NAMESPACE {
            discovery.observe(&source(n, None), refresh, policy("greedy", "p"), 0);
        }
        // The policy now names one source: the others are no longer read nor counted.
        discovery.release(&policy("greedy", "p"), &[source(0, None)], |_| true);
        assert_eq!(sources(&discovery), 1);
        let next = discovery.observe(&source(77, None), refresh, policy("greedy", "p"), 0);
        assert_eq!(next.error, None);
        // A deleted policy's sources go as soon as it is released with none.
        discovery.release(&policy("greedy", "p"), &[], |_| true);
        assert_eq!(sources(&discovery), 0);
    }

    #[tokio::test]
    async fn a_failing_source_is_read_less_and_less_often() {
        let (discovery, _woken) = Discovery::new(Proxy::default(), None);
        discovery.observe(
            &source(0, None),
            Duration::from_secs(60),
            policy("a", "p"),
            0,
        );
        reads_done(&discovery).await;
        let mut entries = discovery.entries.lock().unwrap();
        let entry = entries.get_mut(&source(0, None)).unwrap();
        assert_eq!(entry.wait(), MIN_REFRESH);
        entry.failures = 3;
        assert_eq!(entry.wait(), MIN_REFRESH * 4);
        entry.failures = 30;
        assert_eq!(entry.wait(), MAX_BACKOFF);
        // Reading again once it answers: the shortest refresh the policies ask for, at most
        // an hour whatever one of them asks.
        entry.failures = 0;
        assert_eq!(entry.wait(), Duration::from_secs(60));
        entry.policies.clear();
        entry.policies.insert(
            policy("slow", "p"),
            (0, Duration::from_secs(999_999 * 3600)),
        );
        assert_eq!(entry.wait(), MAX_REFRESH);
    }

    #[tokio::test]
    async fn a_source_several_namespaces_name_is_charged_to_none_and_deleted_policies_go() {
        let (discovery, _woken) = Discovery::new(Proxy::default(), None);
        let refresh = Duration::from_secs(300);
        discovery.observe(&source(0, None), refresh, policy("tenant", "first"), 0);
        {
            let entries = discovery.entries.lock().unwrap();
            let entry = &entries[&source(0, None)];
            assert_eq!(entry.sole_namespace().as_deref(), Some("tenant"));
        }
        discovery.observe(&source(0, None), refresh, policy("victim", "p"), 0);
        {
            let entries = discovery.entries.lock().unwrap();
            assert_eq!(entries[&source(0, None)].sole_namespace(), None);
        }
        // The tenant's policy is deleted: released by the next reconcile of any policy.
        discovery.release(&policy("victim", "p"), &[source(0, None)], |p| {
            p.namespace.as_deref() != Some("tenant")
        });
        let entries = discovery.entries.lock().unwrap();
        assert_eq!(
            entries[&source(0, None)].sole_namespace().as_deref(),
            Some("victim")
        );
    }

    #[tokio::test]
    async fn reads_are_shared_by_url_and_ca_bundle_never_across_bundles() {
        let (discovery, _woken) = Discovery::new(Proxy::default(), None);
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
        let (discovery, mut woken) = Discovery::new(Proxy::default(), None);
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
