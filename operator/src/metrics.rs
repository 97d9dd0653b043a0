//! Prometheus metrics with bounded labels only (kind, category): never object names.

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;

/// Labels of per-kind metrics.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct KindLabels {
    /// AuthPolicy or OAuthClient.
    pub kind: &'static str,
}

/// Labels of failure metrics.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct FailureLabels {
    /// AuthPolicy or OAuthClient.
    pub kind: &'static str,
    /// [`crate::error::Error::category`].
    pub category: &'static str,
}

/// Labels of webhook review metrics.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct OutcomeLabels {
    /// unchanged, injected, denied or not_synced (refused before the policy cache synced).
    pub outcome: &'static str,
}

/// The operator's metrics.
pub struct Metrics {
    registry: Registry,
    /// Reconciles run.
    pub reconciles: Family<KindLabels, Counter>,
    /// Reconciles that failed, by category.
    pub failures: Family<FailureLabels, Counter>,
    /// Reconcile duration in seconds.
    pub duration: Family<KindLabels, Histogram>,
    /// Age of the signing key that signs, observed at each issuer reconcile.
    pub active_key_age: Histogram,
    /// Writes sent to the API server.
    pub writes: Counter,
    /// Writes skipped because the object already held the desired content.
    pub skipped_writes: Counter,
    /// 1 while this replica holds the leader lease.
    pub leader: Gauge,
    /// Writes refused or cut off because this replica no longer held a valid lease.
    pub fenced_writes: Counter,
    /// Times this replica stopped leading (lease lost or not renewed in time).
    pub leadership_lost: Counter,
    /// Admission reviews answered, by outcome.
    pub webhook_reviews: Family<OutcomeLabels, Counter>,
    /// Time to answer an admission review (server side).
    pub webhook_duration: Histogram,
}

impl Default for Metrics {
    fn default() -> Self {
        let mut registry = Registry::with_prefix("scopegate_operator");
        let reconciles = Family::<KindLabels, Counter>::default();
        let failures = Family::<FailureLabels, Counter>::default();
        let duration = Family::<KindLabels, Histogram>::new_with_constructor(|| {
            Histogram::new([0.001, 0.005, 0.01, 0.05, 0.1, 0.5, 1.0, 5.0])
        });
        let active_key_age = Histogram::new([
            60.0,
            3600.0,
            86_400.0,
            7.0 * 86_400.0,
            30.0 * 86_400.0,
            90.0 * 86_400.0,
        ]);
        let writes = Counter::default();
        let skipped_writes = Counter::default();
        let leader = Gauge::default();
        let fenced_writes = Counter::default();
        let leadership_lost = Counter::default();
        let webhook_reviews = Family::<OutcomeLabels, Counter>::default();
        let webhook_duration = Histogram::new([
            0.0001, 0.00025, 0.0005, 0.001, 0.002, 0.003, 0.004, 0.005, 0.01, 0.05,
        ]);
        registry.register("reconciles", "Reconciles run", reconciles.clone());
        registry.register(
            "reconcile_failures",
            "Reconciles that failed, by category",
            failures.clone(),
        );
        registry.register(
            "reconcile_duration_seconds",
            "Reconcile duration",
            duration.clone(),
        );
        registry.register(
            "active_key_age_seconds",
            "Age of the signing key in use",
            active_key_age.clone(),
        );
        registry.register(
            "writes",
            "Object writes sent to the API server",
            writes.clone(),
        );
        registry.register(
            "skipped_writes",
            "Writes skipped because nothing changed",
            skipped_writes.clone(),
        );
        registry.register("leader", "1 while this replica leads", leader.clone());
        registry.register(
            "fenced_writes",
            "Writes refused or cut off because this replica no longer held a valid lease",
            fenced_writes.clone(),
        );
        registry.register(
            "leadership_lost",
            "Times this replica stopped leading",
            leadership_lost.clone(),
        );
        registry.register(
            "webhook_reviews",
            "Admission reviews answered, by outcome",
            webhook_reviews.clone(),
        );
        registry.register(
            "webhook_duration_seconds",
            "Time to answer an admission review",
            webhook_duration.clone(),
        );
        Self {
            registry,
            reconciles,
            failures,
            duration,
            active_key_age,
            writes,
            skipped_writes,
            leader,
            fenced_writes,
            leadership_lost,
            webhook_reviews,
            webhook_duration,
        }
    }
}

impl Metrics {
    /// The Prometheus text exposition.
    pub fn render(&self) -> String {
        let mut out = String::new();
        if prometheus_client::encoding::text::encode(&mut out, &self.registry).is_err() {
            out.clear();
        }
        out
    }
}
