//! Counters and gauges, rendered in the Prometheus text format. Labels are bounded: outcome
//! names and fixed result values only, never issuers, paths or subjects.

use std::collections::BTreeMap;
use std::fmt;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use scopegate_sidecar_kit::exposition::{self, Encoder, MetricsCollector as Collector};

/// Outcomes of proxied requests (the `outcome` label).
pub const OUTCOMES: [&str; 15] = [
    "allowed",
    "public",
    "dry_run",
    "bad_path",
    "invalid_request",
    "no_credentials",
    "invalid_token",
    "insufficient_scope",
    "forbidden",
    "condition_not_met",
    "rate_limited",
    "unavailable",
    "upstream_unreachable",
    "upstream_timeout",
    "body_timeout",
];

/// Outcomes of a rule's decision (the `outcome` label of `scopegate_decisions_total`): the
/// request passes (`allowed` with a valid token, `public` without reading one) or the refusal
/// it gets, or would get in DryRun.
pub const DECISIONS: [&str; 9] = [
    "allowed",
    "public",
    "invalid_request",
    "no_credentials",
    "invalid_token",
    "insufficient_scope",
    "forbidden",
    "condition_not_met",
    "unavailable",
];

/// Distinct rule labels kept across reloads; rules first seen after that many share the label
/// `(other)`, so that a stream of renamed rules cannot grow the metrics without bound.
pub const MAX_RULE_LABELS: usize = 256;

/// Seconds between two log lines of one rule's would-be refusals for one reason in DryRun.
pub const DRY_RUN_LOG_INTERVAL_SECS: i64 = 10;

/// The decisions of one rule (or the default action): counts by outcome and enforcement, and
/// when each DryRun reason was last logged.
#[derive(Debug, Default)]
pub struct RuleDecisions {
    /// `[outcome][enforced]`.
    counts: [[AtomicU64; 2]; DECISIONS.len()],
    /// Unix second of the last DryRun log line per outcome (0: never).
    logged_at: [AtomicI64; DECISIONS.len()],
}

impl RuleDecisions {
    /// Counts one decision (`outcome` one of [`DECISIONS`]); returns the series' new count.
    pub fn count(&self, outcome: &str, enforced: bool) -> u64 {
        DECISIONS.iter().position(|o| *o == outcome).map_or(0, |i| {
            self.counts[i][usize::from(enforced)].fetch_add(1, Ordering::Relaxed) + 1
        })
    }

    /// Whether a DryRun line about `outcome` may be logged at `now` (Unix seconds): at most one
    /// per [`DRY_RUN_LOG_INTERVAL_SECS`], whichever request claims it first.
    pub fn may_log(&self, outcome: &str, now: i64) -> bool {
        let Some(i) = DECISIONS.iter().position(|o| *o == outcome) else {
            return false;
        };
        let last = self.logged_at[i].load(Ordering::Relaxed);
        (last == 0 || now - last >= DRY_RUN_LOG_INTERVAL_SECS)
            && self.logged_at[i]
                .compare_exchange(last, now, Ordering::Relaxed, Ordering::Relaxed)
                .is_ok()
    }
}

/// The rule label of the default action.
const DEFAULT_LABEL: &str = "(default)";

/// The decision counters of one config.
#[derive(Debug)]
pub struct Decisions {
    rules: Vec<Arc<RuleDecisions>>,
    default: Arc<RuleDecisions>,
}

impl Decisions {
    /// The counters of the rule at `index`, or of the default action (`None`).
    pub fn of(&self, index: Option<usize>) -> &RuleDecisions {
        index
            .and_then(|i| self.rules.get(i))
            .unwrap_or(&self.default)
    }
}

/// Upper bounds of the validation-latency histogram, in seconds.
const BUCKETS: [f64; 11] = [
    1e-6, 2.5e-6, 5e-6, 1e-5, 2.5e-5, 5e-5, 1e-4, 2.5e-4, 5e-4, 1e-3, 5e-3,
];

/// All metrics of one sidecar.
#[derive(Debug, Default)]
pub struct Metrics {
    requests: [AtomicU64; OUTCOMES.len()],
    validation_buckets: [AtomicU64; BUCKETS.len()],
    validation_count: AtomicU64,
    validation_nanos: AtomicU64,
    cache_hits: AtomicU64,
    cache_misses: AtomicU64,
    /// `metadata.generation` of the policy in force.
    pub config_generation: AtomicI64,
    reloads_ok: AtomicU64,
    reloads_failed: AtomicU64,
    /// 1 when the last reload attempt failed (the previous config is still in force).
    pub config_reload_failing: AtomicI64,
    jwks_fetch_ok: AtomicU64,
    jwks_fetch_failed: AtomicU64,
    /// Seconds since the oldest key set in force was loaded.
    pub key_set_age_secs: AtomicI64,
    /// Seconds since the last successful feed poll, or since start before the first one (-1
    /// with no feed).
    pub feed_staleness_secs: AtomicI64,
    /// Revocation entries held.
    pub feed_entries: AtomicI64,
    /// Keys the config in force leaves out because they do not load.
    pub keys_skipped: AtomicI64,
    /// Feed pages refused as older than one accepted before, or issued too long ago.
    pub feed_rollbacks: AtomicU64,
    /// Decision counters by rule label.
    decisions: Mutex<BTreeMap<String, Arc<RuleDecisions>>>,
}

impl Metrics {
    /// The decision counters of a config's rules (labels in document order) and of its
    /// default action: a label seen before (in an earlier config) keeps its counts.
    pub fn decision_counters(&self, rule_labels: &[String]) -> Decisions {
        let mut map = self
            .decisions
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        let mut slot = |label: &str| {
            let label = if map.contains_key(label) || map.len() < MAX_RULE_LABELS {
                label
            } else {
                "(other)"
            };
            map.entry(label.to_owned()).or_default().clone()
        };
        Decisions {
            rules: rule_labels.iter().map(|l| slot(l)).collect(),
            default: slot(DEFAULT_LABEL),
        }
    }

    /// Counts a request by outcome (one of [`OUTCOMES`]).
    pub fn request(&self, outcome: &str) {
        if let Some(i) = OUTCOMES.iter().position(|o| *o == outcome) {
            self.requests[i].fetch_add(1, Ordering::Relaxed);
        }
    }

    /// Records one full token validation.
    pub fn validation(&self, took: Duration) {
        let secs = took.as_secs_f64();
        if let Some(i) = BUCKETS.iter().position(|b| secs <= *b) {
            self.validation_buckets[i].fetch_add(1, Ordering::Relaxed);
        }
        self.validation_count.fetch_add(1, Ordering::Relaxed);
        let nanos = u64::try_from(took.as_nanos()).unwrap_or(u64::MAX);
        self.validation_nanos.fetch_add(nanos, Ordering::Relaxed);
    }

    /// Counts a token-cache lookup.
    pub fn cache(&self, hit: bool) {
        let counter = if hit {
            &self.cache_hits
        } else {
            &self.cache_misses
        };
        counter.fetch_add(1, Ordering::Relaxed);
    }

    /// Counts a config reload attempt.
    pub fn reload(&self, ok: bool) {
        let counter = if ok {
            &self.reloads_ok
        } else {
            &self.reloads_failed
        };
        counter.fetch_add(1, Ordering::Relaxed);
        self.config_reload_failing
            .store(i64::from(!ok), Ordering::Relaxed);
    }

    /// Counts a JWKS fetch.
    pub fn jwks_fetch(&self, ok: bool) {
        let counter = if ok {
            &self.jwks_fetch_ok
        } else {
            &self.jwks_fetch_failed
        };
        counter.fetch_add(1, Ordering::Relaxed);
    }
}

impl Collector for Metrics {
    fn encode(&self, mut encoder: Encoder<'_>) -> fmt::Result {
        self.encode_requests(&mut encoder)?;
        self.encode_counters(&mut encoder)?;
        self.encode_gauges(&mut encoder)
    }
}

impl Metrics {
    fn encode_requests(&self, encoder: &mut Encoder<'_>) -> fmt::Result {
        let load = |a: &AtomicU64| a.load(Ordering::Relaxed);
        let outcomes: Vec<[(&str, &str); 1]> = OUTCOMES.iter().map(|o| [("outcome", *o)]).collect();
        exposition::counters(
            encoder,
            "scopegate_sidecar_requests",
            "Requests by outcome.",
            outcomes
                .iter()
                .zip(&self.requests)
                .map(|(labels, counter)| (&labels[..], load(counter))),
        )?;
        self.encode_decisions(encoder)?;
        let buckets: Vec<(f64, u64)> = BUCKETS
            .iter()
            .zip(&self.validation_buckets)
            .map(|(bound, counter)| (*bound, load(counter)))
            .collect();
        exposition::histogram(
            encoder,
            "scopegate_sidecar_token_validation_seconds",
            "Full token validations (cache misses).",
            load(&self.validation_nanos) as f64 / 1e9,
            load(&self.validation_count),
            &buckets,
        )
    }

    /// `scopegate_decisions_total`: only the series that counted something.
    fn encode_decisions(&self, encoder: &mut Encoder<'_>) -> fmt::Result {
        let map = self
            .decisions
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        let mut series = Vec::new();
        for (rule, decisions) in map.iter() {
            for (outcome, counts) in DECISIONS.iter().zip(&decisions.counts) {
                for (enforced, counter) in ["false", "true"].iter().zip(counts) {
                    let n = counter.load(Ordering::Relaxed);
                    if n > 0 {
                        let labels = [
                            ("rule", rule.as_str()),
                            ("outcome", *outcome),
                            ("enforced", *enforced),
                        ];
                        series.push((labels, n));
                    }
                }
            }
        }
        exposition::counters(
            encoder,
            "scopegate_decisions",
            "Decisions of the rules by rule, outcome and enforcement (enforced=\"false\": DryRun, the request was forwarded anyway).",
            series.iter().map(|(labels, n)| (&labels[..], *n)),
        )
    }

    fn encode_counters(&self, encoder: &mut Encoder<'_>) -> fmt::Result {
        let load = |a: &AtomicU64| a.load(Ordering::Relaxed);
        let name = |n: &str| format!("scopegate_sidecar_{n}");
        exposition::counter(
            encoder,
            &name("token_cache_hits"),
            "Token cache hits.",
            load(&self.cache_hits),
        )?;
        exposition::counter(
            encoder,
            &name("token_cache_misses"),
            "Token cache misses.",
            load(&self.cache_misses),
        )?;
        let (ok, error) = ([("result", "ok")], [("result", "error")]);
        exposition::counters(
            encoder,
            &name("config_reloads"),
            "Config reloads by result.",
            [
                (&ok[..], load(&self.reloads_ok)),
                (&error[..], load(&self.reloads_failed)),
            ],
        )?;
        exposition::counters(
            encoder,
            &name("jwks_fetches"),
            "JWKS fetches of external issuers by result.",
            [
                (&ok[..], load(&self.jwks_fetch_ok)),
                (&error[..], load(&self.jwks_fetch_failed)),
            ],
        )?;
        exposition::counter(
            encoder,
            &name("revocation_feed_rollbacks"),
            "Feed pages refused as older than one accepted before (a rollback) or issued too long ago (a replay).",
            load(&self.feed_rollbacks),
        )
    }

    fn encode_gauges(&self, encoder: &mut Encoder<'_>) -> fmt::Result {
        let (hits, misses) = (
            self.cache_hits.load(Ordering::Relaxed),
            self.cache_misses.load(Ordering::Relaxed),
        );
        let ratio = if hits + misses == 0 {
            0.0
        } else {
            hits as f64 / (hits + misses) as f64
        };
        exposition::gauge_f64(
            encoder,
            "scopegate_sidecar_token_cache_hit_ratio",
            "Hits over lookups since start.",
            ratio,
        )?;
        let gauges: [(&str, &str, &AtomicI64); 6] = [
            (
                "config_generation",
                "Policy generation of the config in force.",
                &self.config_generation,
            ),
            (
                "config_reload_failing",
                "1 while the newest config file is refused and the last good one serves.",
                &self.config_reload_failing,
            ),
            (
                "key_set_age_seconds",
                "Seconds since the oldest key set in force was loaded (fetched, or its config applied).",
                &self.key_set_age_secs,
            ),
            (
                "revocation_feed_staleness_seconds",
                "Seconds since the last successful feed poll or, before one, since start (-1 without a feed).",
                &self.feed_staleness_secs,
            ),
            (
                "revocation_entries",
                "Revocation entries held from the feed.",
                &self.feed_entries,
            ),
            (
                "keys_skipped",
                "Keys the config in force leaves out because they do not load (the others serve).",
                &self.keys_skipped,
            ),
        ];
        for (name, help, value) in gauges {
            let name = format!("scopegate_sidecar_{name}");
            exposition::gauge(encoder, &name, help, value.load(Ordering::Relaxed))?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn render(m: &Arc<Metrics>) -> String {
        exposition::render([Box::new(m.clone()) as Box<dyn Collector>])
    }

    #[test]
    fn renders_counters_and_histogram() {
        let m = Arc::new(Metrics::default());
        m.request("invalid_token");
        m.validation(Duration::from_micros(3));
        m.cache(true);
        m.cache(false);
        let text = render(&m);
        assert!(text.contains("scopegate_sidecar_requests_total{outcome=\"invalid_token\"} 1"));
        assert!(text.contains("scopegate_sidecar_token_validation_seconds_bucket{le=\"5e-06\"} 1"));
        assert!(text.contains("scopegate_sidecar_token_validation_seconds_count 1"));
        assert!(text.contains("scopegate_sidecar_token_cache_hit_ratio 0.5"));
        for line in text.lines().filter(|l| !l.starts_with('#')) {
            assert_eq!(line.split(' ').count(), 2, "{line}");
        }
    }

    #[test]
    fn decisions_by_rule_outcome_and_enforcement() {
        let m = Arc::new(Metrics::default());
        let labels = ["items".to_owned()];
        let slots = m.decision_counters(&labels);
        assert_eq!(slots.of(Some(0)).count("insufficient_scope", false), 1);
        assert_eq!(slots.of(Some(0)).count("insufficient_scope", false), 2);
        slots.of(None).count("no_credentials", true);
        // A reload with the same label keeps counting the same series.
        let again = m.decision_counters(&labels);
        assert_eq!(again.of(Some(0)).count("insufficient_scope", false), 3);
        let text = render(&m);
        assert!(text.contains(
            "scopegate_decisions_total{rule=\"items\",outcome=\"insufficient_scope\",enforced=\"false\"} 3"
        ), "{text}");
        assert!(text.contains(
            "scopegate_decisions_total{rule=\"(default)\",outcome=\"no_credentials\",enforced=\"true\"} 1"
        ), "{text}");
        assert!(
            !text.contains("scopegate_decisions_total{rule=\"items\",outcome=\"allowed\""),
            "zero series are left out: {text}"
        );
    }

    #[test]
    fn rule_labels_cannot_forge_lines_or_grow_without_bound() {
        let m = Arc::new(Metrics::default());
        let evil = "x\"} 1\nscopegate_forged 1\\".to_owned();
        m.decision_counters(std::slice::from_ref(&evil))
            .of(Some(0))
            .count("allowed", true);
        let text = render(&m);
        assert!(
            !text.lines().any(|l| l.starts_with("scopegate_forged")),
            "{text}"
        );
        assert!(
            text.contains(r#"rule="x\"} 1\nscopegate_forged 1\\""#),
            "{text}"
        );
        let many: Vec<String> = (0..MAX_RULE_LABELS + 10).map(|i| format!("r{i}")).collect();
        let slots = m.decision_counters(&many);
        for i in 0..many.len() {
            slots.of(Some(i)).count("allowed", true);
        }
        let text = render(&m);
        // The evil label, the default action's (counting nothing) and 254 r-labels fill the
        // cap; the other 12 share one series.
        assert_eq!(
            text.matches("scopegate_decisions_total{").count(),
            MAX_RULE_LABELS
        );
        assert!(
            text.contains("scopegate_decisions_total{rule=\"(other)\",outcome=\"allowed\",enforced=\"true\"} 12"),
            "{text}"
        );
    }

    #[test]
    fn dry_run_lines_are_rate_limited_per_reason() {
        let d = RuleDecisions::default();
        assert!(d.may_log("invalid_token", 1000));
        assert!(!d.may_log("invalid_token", 1000));
        assert!(!d.may_log("invalid_token", 1000 + DRY_RUN_LOG_INTERVAL_SECS - 1));
        assert!(
            d.may_log("no_credentials", 1001),
            "another reason has its own budget"
        );
        assert!(d.may_log("invalid_token", 1000 + DRY_RUN_LOG_INTERVAL_SECS));
    }
}
