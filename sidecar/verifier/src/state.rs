//! The live state of a running sidecar: the compiled config in force (swapped atomically),
//! the token cache, revocations, background tasks for remote keys and the feed, and what
//! `/readyz` reports. A reload never blocks a request: requests load an `Arc` and go on.

use std::collections::HashMap;
use std::fmt::Write as _;
use std::sync::atomic::{AtomicBool, AtomicI64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use arc_swap::{ArcSwap, ArcSwapOption};
use scopegate_sidecar_kit::budget::RateStore;
use tokio::task::JoinHandle;

use crate::app_probes::AppProbes;
use crate::cache::TokenCache;
use crate::companion::Companion;
use crate::feed_client::{self, FeedState};
use crate::https;
use crate::metrics::Metrics;
use crate::rate_limit::Clock;
use crate::remote_keys::{self, RemoteKeySet, RemoteSpec};
use crate::role::Role;
use crate::settings::{IssuerSource, Settings};
use crate::tls::CertificateSource;
use crate::unix_now;

/// Entries the verified-token cache holds.
pub const CACHE_ENTRIES: usize = 10_000;

/// Timeouts of client connections (flags of the binary; tests shorten them).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ConnectionTuning {
    /// A connection with no request in flight for this long is shut down gracefully: an
    /// HTTP/2 client gets a GOAWAY (streams still open finish), an idle HTTP/1.1 keep-alive
    /// connection is closed.
    pub idle_timeout: Duration,
    /// How long a request body may go without a byte while the sidecar waits for one (apps
    /// spoken to over HTTP/1.1); the request then ends with 408.
    pub body_idle_timeout: Duration,
    /// The same for h2c (gRPC) apps, whose client streams may rightly pause longer.
    pub stream_idle_timeout: Duration,
}

impl Default for ConnectionTuning {
    fn default() -> Self {
        ConnectionTuning {
            idle_timeout: Duration::from_secs(120),
            body_idle_timeout: Duration::from_secs(60),
            stream_idle_timeout: Duration::from_secs(300),
        }
    }
}

/// Everything requests and background tasks share.
pub struct Shared {
    /// The compiled config in force.
    pub settings: ArcSwap<Settings>,
    /// Verified tokens.
    pub cache: TokenCache,
    /// Counters.
    pub metrics: Arc<Metrics>,
    /// The revocation feed, when configured.
    pub feed: ArcSwapOption<FeedState>,
    /// Monotonic clock of the rate limiter.
    pub clock: Clock,
    /// Whether the listener serves TLS.
    pub tls: bool,
    /// The listener's certificate, re-read on every reload tick.
    pub certificates: Option<Arc<CertificateSource>>,
    /// Set on SIGTERM: `/readyz` fails so traffic moves away while connections drain.
    pub draining: AtomicBool,
    /// The issuer role, in pods of an `issuer.self` policy: it compiles the issuer section of
    /// every config load.
    pub role: Option<Arc<dyn Role>>,
    /// The app's original HTTP probes, replayed on the admin port.
    pub app_probes: AppProbes,
    /// Browser sessions: their keys (following the mounted file), single-flight refreshes and
    /// counters. Idle when the config enables none.
    pub sessions: Arc<scopegate_sessions::Sessions>,
    /// Timeouts of client connections and request bodies.
    pub connection: ConnectionTuning,
    /// When the config in force was put in force (Unix seconds): the age of its keys.
    applied_at: AtomicI64,
    /// The listener settings changed in a reload: they apply after a restart.
    restart_needed: AtomicBool,
    reload_error: Mutex<Option<String>>,
    tasks: Mutex<Tasks>,
    companions: Mutex<Vec<Arc<dyn Companion>>>,
}

#[derive(Default)]
struct Tasks {
    remote: HashMap<RemoteSpec, (Arc<RemoteKeySet>, JoinHandle<()>)>,
    feed: Option<JoinHandle<()>>,
}

impl Shared {
    /// State around a first compiled config; call [`Shared::start_background`] next.
    pub fn new(
        settings: Settings,
        certificates: Option<Arc<CertificateSource>>,
        role: Option<Arc<dyn Role>>,
        app_probes: AppProbes,
        connection: ConnectionTuning,
    ) -> Arc<Shared> {
        let metrics = Arc::new(Metrics::default());
        metrics
            .config_generation
            .store(settings.config.policy.generation, Ordering::Relaxed);
        note_skipped_keys(&settings, &metrics);
        let sessions = scopegate_sessions::Sessions::new();
        sessions.reload_keys_now(settings.sessions.as_deref());
        Arc::new(Shared {
            settings: ArcSwap::from_pointee(settings),
            cache: TokenCache::new(CACHE_ENTRIES),
            metrics,
            feed: ArcSwapOption::empty(),
            clock: Clock::start(),
            tls: certificates.is_some(),
            certificates,
            draining: AtomicBool::new(false),
            role,
            app_probes,
            sessions,
            connection,
            applied_at: AtomicI64::new(unix_now()),
            restart_needed: AtomicBool::new(false),
            reload_error: Mutex::new(None),
            tasks: Mutex::new(Tasks::default()),
            companions: Mutex::new(Vec::new()),
        })
    }

    /// Attaches a role that runs beside the proxy: from now on it follows every config put
    /// in force, and its metrics and readiness lines join the admin port's.
    pub fn attach(&self, companion: Arc<dyn Companion>) {
        let mut companions = self.companions.lock().unwrap_or_else(|p| p.into_inner());
        companions.push(companion);
    }

    /// The attached companions (a copy: none is called under the lock).
    pub fn companions(&self) -> Vec<Arc<dyn Companion>> {
        self.companions
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// The live set for a remote spec: the running one when the spec is unchanged.
    pub fn remote_set(&self, spec: RemoteSpec) -> Arc<RemoteKeySet> {
        let tasks = self.tasks.lock().unwrap_or_else(|p| p.into_inner());
        match tasks.remote.get(&spec) {
            Some((set, _)) => set.clone(),
            None => RemoteKeySet::new(spec),
        }
    }

    /// The store that per-route rate limits share with other replicas: the issuer's Redis
    /// store; `None` keeps budgets in this process.
    pub fn shared_limits(&self) -> Option<Arc<dyn RateStore>> {
        self.role.as_ref()?.shared_budgets()
    }

    /// Starts fetchers and the feed for the config in force.
    pub fn start_background(self: &Arc<Self>) {
        self.reconcile_tasks();
    }

    /// Puts a new compiled config in force. Rate limits that did not change keep their budgets.
    pub fn apply(self: &Arc<Self>, mut settings: Settings) {
        let generation = settings.config.policy.generation;
        let old = self.settings.load();
        for limit in &mut settings.rate_limits {
            if let Some(same) = old.rate_limits.iter().find(|o| o.config == limit.config) {
                *limit = same.clone();
            }
        }
        if old.config.listen != settings.config.listen {
            tracing::warn!("listen settings changed: they take effect after a restart");
            self.restart_needed.store(true, Ordering::Release);
        }
        let role = |c: &scopegate_core::config::SidecarConfig| {
            c.issuer
                .as_ref()
                .map(|i| (i.store.clone(), i.mint_socket_path.clone()))
        };
        if role(&old.config) != role(&settings.config) {
            tracing::warn!(
                "issuer role, store or mint socket changed: they take effect after a restart"
            );
            self.restart_needed.store(true, Ordering::Release);
        }
        // The egress port is bound at start: its targets follow reloads, the port does not.
        let egress_port =
            |c: &scopegate_core::config::SidecarConfig| c.egress.as_ref().map(|e| e.port);
        if egress_port(&old.config) != egress_port(&settings.config) {
            tracing::warn!(
                "egress added, removed or moved to another port: the port changes after a restart; the one bound keeps serving"
            );
            self.restart_needed.store(true, Ordering::Release);
        }
        note_skipped_keys(&settings, &self.metrics);
        self.settings.store(Arc::new(settings));
        self.applied_at.store(unix_now(), Ordering::Release);
        self.cache.flush();
        self.metrics
            .config_generation
            .store(generation, Ordering::Relaxed);
        self.metrics.reload(true);
        *self.reload_error.lock().unwrap_or_else(|p| p.into_inner()) = None;
        self.reconcile_tasks();
        let in_force = self.settings.load();
        for companion in self.companions() {
            companion.put_in_force(&in_force.config);
        }
        tracing::info!(generation, "config in force");
    }

    /// Records a refused reload: the last good config keeps serving.
    pub fn reload_failed(&self, error: String) {
        let generation = self.settings.load().config.policy.generation;
        tracing::error!(%error, generation, "new config refused; keeping the last good config");
        self.metrics.reload(false);
        *self.reload_error.lock().unwrap_or_else(|p| p.into_inner()) = Some(error);
    }

    /// Brings the background tasks in line with the settings in force.
    fn reconcile_tasks(self: &Arc<Self>) {
        let settings = self.settings.load_full();
        if let Some(role) = &settings.role {
            role.put_in_force(&self.metrics);
        }
        let mut tasks = self.tasks.lock().unwrap_or_else(|p| p.into_inner());
        self.reconcile_key_fetchers(&settings, &mut tasks);
        self.reconcile_feed(&settings, &mut tasks);
    }

    /// One JWKS fetcher per remote key set the settings name: new ones started, those no
    /// longer named stopped.
    fn reconcile_key_fetchers(self: &Arc<Self>, settings: &Settings, tasks: &mut Tasks) {
        let mut wanted: HashMap<RemoteSpec, Arc<RemoteKeySet>> = HashMap::new();
        for source in settings.issuers.values() {
            if let IssuerSource::Remote { set, .. } = source {
                wanted.insert(set.spec.clone(), set.clone());
            }
        }
        tasks.remote.retain(|spec, (_, handle)| {
            let keep = wanted.contains_key(spec);
            if !keep {
                handle.abort();
            }
            keep
        });
        for (spec, set) in wanted {
            if tasks.remote.contains_key(&spec) {
                continue;
            }
            match https::client(spec.ca_bundle_pem.as_deref()) {
                Ok(client) => {
                    let shared = Arc::downgrade(self);
                    let handle = tokio::spawn(remote_keys::run(
                        set.clone(),
                        client,
                        self.metrics.clone(),
                        move || {
                            if let Some(shared) = shared.upgrade() {
                                shared.cache.flush();
                            }
                        },
                    ));
                    tasks.remote.insert(spec, (set, handle));
                }
                Err(err) => tracing::error!(error = %err, "cannot build the JWKS client"),
            }
        }
    }

    /// The revocation feed poller: restarted when its config changed, stopped when the
    /// settings name none.
    fn reconcile_feed(self: &Arc<Self>, settings: &Settings, tasks: &mut Tasks) {
        let wanted_feed = settings.config.revocation.feed.clone();
        let current = self.feed.load_full();
        if current.as_ref().map(|f| &f.config) == wanted_feed.as_ref() {
            return;
        }
        if let Some(handle) = tasks.feed.take() {
            handle.abort();
        }
        self.feed.store(None);
        let Some(feed_config) = wanted_feed else {
            return;
        };
        let client = match https::client(settings.config.ca_bundle_pem.as_deref()) {
            Ok(client) => client,
            Err(err) => {
                tracing::error!(error = %err, "cannot build the revocation feed client");
                return;
            }
        };
        let state = FeedState::new(feed_config, self.metrics.clone());
        self.feed.store(Some(state.clone()));
        let for_keys = Arc::downgrade(self);
        let for_flush = Arc::downgrade(self);
        tasks.feed = Some(tokio::spawn(feed_client::run(
            state,
            client,
            move |issuer| {
                let shared = for_keys.upgrade()?;
                let settings = shared.settings.load();
                settings.issuers.get(issuer).map(IssuerSource::keys)
            },
            settings.token_rules.leeway_secs,
            move |entries| {
                if let Some(shared) = for_flush.upgrade() {
                    shared.cache.flush();
                    shared.metrics.feed_entries.store(
                        i64::try_from(entries).unwrap_or(i64::MAX),
                        Ordering::Relaxed,
                    );
                }
            },
        )));
    }

    /// Stops background tasks.
    pub fn stop_background(&self) {
        let mut tasks = self.tasks.lock().unwrap_or_else(|p| p.into_inner());
        for (_, (_, handle)) in tasks.remote.drain() {
            handle.abort();
        }
        if let Some(handle) = tasks.feed.take() {
            handle.abort();
        }
    }

    /// Whether every token must be refused now: the feed is stale and the policy fails closed.
    pub fn fail_closed_now(&self, now: i64) -> bool {
        self.feed
            .load()
            .as_ref()
            .is_some_and(|f| f.config.fail_closed && f.is_stale(now))
    }

    /// Readiness and its detail, one line per fact.
    pub fn readiness(&self) -> (bool, String) {
        let now = unix_now();
        let settings = self.settings.load();
        let mut ready = true;
        let mut detail = String::new();
        if self.draining.load(Ordering::Acquire) {
            ready = false;
            let _ = writeln!(detail, "draining: shutting down");
        }
        let _ = writeln!(
            detail,
            "config: generation {} of {}/{} in force",
            settings.config.policy.generation,
            settings.config.policy.namespace,
            settings.config.policy.name
        );
        if let Some(error) = self.certificates.as_ref().and_then(|c| c.refused()) {
            let _ = writeln!(
                detail,
                "tls: the newest certificate files are refused, the last good pair serves: {error}"
            );
        }
        if self.restart_needed.load(Ordering::Acquire) {
            let _ = writeln!(
                detail,
                "listen: the port, TLS files, issuer store or egress port changed in the config; they apply after a restart"
            );
        }
        if let Some(error) = &*self.reload_error.lock().unwrap_or_else(|p| p.into_inner()) {
            let _ = writeln!(
                detail,
                "config: the newest file is refused, the last good config serves: {error}"
            );
        }
        for key in &settings.skipped_keys {
            let _ = writeln!(
                detail,
                "keys {}: key {:?} left out, it does not load ({}); the other keys serve",
                key.issuer, key.kid, key.reason
            );
        }
        ready &= keys_readiness(&settings, now, &mut detail);
        if let Some(role) = &settings.role {
            // Upstream providers are reported, never made a readiness condition:
            // client_credentials and the other providers work through an IdP outage.
            role.readiness(&mut detail);
        }
        if let Some(feed) = self.feed.load_full() {
            ready &= feed_readiness(&feed, now, &mut detail);
        }
        self.sessions
            .readiness(settings.sessions.as_deref(), &mut detail);
        for companion in self.companions() {
            companion.readiness(&mut detail);
        }
        (ready, detail)
    }

    /// Updates the gauges that depend on time before `/metrics` renders.
    pub fn refresh_gauges(&self) {
        let now = unix_now();
        let settings = self.settings.load();
        let applied_age = now - self.applied_at.load(Ordering::Acquire);
        let age = settings
            .issuers
            .values()
            .filter_map(|source| match source {
                IssuerSource::Remote { set, .. } => {
                    let health = set.health(now);
                    health.loaded.then_some(health.age_secs)
                }
                IssuerSource::Fixed(_) => Some(applied_age),
            })
            .max()
            .unwrap_or(0);
        self.metrics.key_set_age_secs.store(age, Ordering::Relaxed);
        let staleness = self.feed.load().as_ref().map_or(-1, |f| f.age(now));
        self.metrics
            .feed_staleness_secs
            .store(staleness, Ordering::Relaxed);
    }
}

/// Logs each key a config leaves out and sets the gauge that counts them.
fn note_skipped_keys(settings: &Settings, metrics: &Metrics) {
    for key in &settings.skipped_keys {
        tracing::warn!(issuer = %key.issuer, kid = %key.kid, reason = %key.reason, "key left out: it does not load; the other keys serve");
    }
    metrics.keys_skipped.store(
        i64::try_from(settings.skipped_keys.len()).unwrap_or(i64::MAX),
        Ordering::Relaxed,
    );
}

/// The `/readyz` lines of the trusted issuers' keys; false while a remote key set was never
/// fetched.
fn keys_readiness(settings: &Settings, now: i64, detail: &mut String) -> bool {
    let mut ready = true;
    let mut issuers: Vec<(&String, &IssuerSource)> = settings.issuers.iter().collect();
    issuers.sort_by_key(|(name, _)| *name);
    for (name, source) in issuers {
        match source {
            IssuerSource::Fixed(keys) => {
                let _ = writeln!(detail, "keys {name}: {} configured", keys.keys.len());
            }
            IssuerSource::Remote { set, .. } => {
                let health = set.health(now);
                if !health.loaded {
                    ready = false;
                    let _ = writeln!(
                        detail,
                        "keys {name}: no key set fetched yet (last error: {})",
                        health.last_error.unwrap_or("none")
                    );
                } else {
                    let _ = writeln!(
                        detail,
                        "keys {name}: {} keys, fetched {}s ago{}",
                        set.keys().len(),
                        health.age_secs,
                        health
                            .last_error
                            .map(|e| format!(
                                ", last fetch failed ({e}), keeping the last good set"
                            ))
                            .unwrap_or_default()
                    );
                }
            }
        }
    }
    ready
}

/// The `/readyz` lines of the revocation feed; false while a fail-closed feed is stale.
fn feed_readiness(feed: &FeedState, now: i64, detail: &mut String) -> bool {
    let stale = feed.is_stale(now);
    let age = feed
        .staleness(now)
        .map_or("never polled successfully".to_owned(), |s| {
            format!("last success {s}s ago")
        });
    let mode = if feed.config.fail_closed {
        "fail-closed"
    } else {
        "fail-open"
    };
    let state = if stale { "STALE" } else { "fresh" };
    let error = feed
        .last_error()
        .map(|e| format!(", last poll failed ({e})"))
        .unwrap_or_default();
    let _ = writeln!(
        detail,
        "revocation feed: {state} ({age}, bound {}s, {mode}){error}",
        feed.config.staleness_bound_secs
    );
    if let Some(rollback) = feed.last_rollback() {
        let _ = writeln!(
            detail,
            "revocation feed: ROLLBACK: {} page(s) older than one accepted before or issued too long ago, the last {}s ago ({}); what is known stays in force (a rolled-back log's new entries are added)",
            feed.rollbacks.load(Ordering::Relaxed),
            now - rollback.at,
            rollback.error
        );
    }
    !(stale && feed.config.fail_closed)
}
