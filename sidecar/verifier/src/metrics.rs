//! Counters and gauges, rendered in the Prometheus text format. Labels are bounded: outcome
//! names and fixed result values only, never issuers, paths or subjects.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

/// Outcomes of proxied requests (the `outcome` label).
pub const OUTCOMES: [&str; 14] = [
    "allowed",
    "public",
    "dry_run",
    "bad_path",
    "invalid_request",
    "no_credentials",
    "invalid_token",
    "insufficient_scope",
    "forbidden",
    "rate_limited",
    "unavailable",
    "upstream_unreachable",
    "upstream_timeout",
    "body_timeout",
];

/// Outcomes of a rule's decision (the `outcome` label of `scopegate_decisions_total`): the
/// request passes (`allowed` with a valid token, `public` without reading one) or the refusal
/// it gets, or would get in DryRun.
pub const DECISIONS: [&str; 8] = [
    "allowed",
    "public",
    "invalid_request",
    "no_credentials",
    "invalid_token",
    "insufficient_scope",
    "forbidden",
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

    /// The Prometheus text exposition.
    pub fn render(&self) -> String {
        let mut out = String::with_capacity(4096);
        let load = |a: &AtomicU64| a.load(Ordering::Relaxed);
        let _ = writeln!(
            out,
            "# HELP scopegate_sidecar_requests_total Requests by outcome."
        );
        let _ = writeln!(out, "# TYPE scopegate_sidecar_requests_total counter");
        for (name, counter) in OUTCOMES.iter().zip(&self.requests) {
            let _ = writeln!(
                out,
                "scopegate_sidecar_requests_total{{outcome=\"{name}\"}} {}",
                load(counter)
            );
        }
        let _ = writeln!(
            out,
            "# HELP scopegate_decisions_total Decisions of the rules by rule, outcome and enforcement (enforced=\"false\": DryRun, the request was forwarded anyway)."
        );
        let _ = writeln!(out, "# TYPE scopegate_decisions_total counter");
        {
            let map = self
                .decisions
                .lock()
                .unwrap_or_else(PoisonError::into_inner);
            for (rule, decisions) in map.iter() {
                let rule = escape_label(rule);
                for (outcome, counts) in DECISIONS.iter().zip(&decisions.counts) {
                    for (enforced, counter) in ["false", "true"].iter().zip(counts) {
                        let n = load(counter);
                        if n > 0 {
                            let _ = writeln!(
                                out,
                                "scopegate_decisions_total{{rule=\"{rule}\",outcome=\"{outcome}\",enforced=\"{enforced}\"}} {n}"
                            );
                        }
                    }
                }
            }
        }
        let _ = writeln!(
            out,
            "# HELP scopegate_sidecar_token_validation_seconds Full token validations (cache misses)."
        );
        let _ = writeln!(
            out,
            "# TYPE scopegate_sidecar_token_validation_seconds histogram"
        );
        let mut cumulative = 0;
        for (bound, counter) in BUCKETS.iter().zip(&self.validation_buckets) {
            cumulative += load(counter);
            let _ = writeln!(
                out,
                "scopegate_sidecar_token_validation_seconds_bucket{{le=\"{bound}\"}} {cumulative}"
            );
        }
        let count = load(&self.validation_count);
        let _ = writeln!(
            out,
            "scopegate_sidecar_token_validation_seconds_bucket{{le=\"+Inf\"}} {count}"
        );
        let _ = writeln!(
            out,
            "scopegate_sidecar_token_validation_seconds_sum {}",
            load(&self.validation_nanos) as f64 / 1e9
        );
        let _ = writeln!(
            out,
            "scopegate_sidecar_token_validation_seconds_count {count}"
        );
        let (hits, misses) = (load(&self.cache_hits), load(&self.cache_misses));
        let ratio = if hits + misses == 0 {
            0.0
        } else {
            hits as f64 / (hits + misses) as f64
        };
        let counters: [(&str, &str, String); 4] = [
            (
                "token_cache_hits_total",
                "Token cache hits.",
                hits.to_string(),
            ),
            (
                "token_cache_misses_total",
                "Token cache misses.",
                misses.to_string(),
            ),
            (
                "config_reloads_total{result=\"ok\"}",
                "Config reloads by result.",
                load(&self.reloads_ok).to_string(),
            ),
            (
                "config_reloads_total{result=\"error\"}",
                "",
                load(&self.reloads_failed).to_string(),
            ),
        ];
        for (name, help, value) in counters {
            write_metric(&mut out, name, help, "counter", &value);
        }
        let fetches: [(&str, &str, String); 2] = [
            (
                "jwks_fetches_total{result=\"ok\"}",
                "JWKS fetches of external issuers by result.",
                load(&self.jwks_fetch_ok).to_string(),
            ),
            (
                "jwks_fetches_total{result=\"error\"}",
                "",
                load(&self.jwks_fetch_failed).to_string(),
            ),
        ];
        for (name, help, value) in fetches {
            write_metric(&mut out, name, help, "counter", &value);
        }
        write_metric(
            &mut out,
            "revocation_feed_rollbacks_total",
            "Feed pages refused as older than one accepted before (a rollback) or issued too long ago (a replay).",
            "counter",
            &load(&self.feed_rollbacks).to_string(),
        );
        let gauges: [(&str, &str, String); 7] = [
            (
                "token_cache_hit_ratio",
                "Hits over lookups since start.",
                ratio.to_string(),
            ),
            (
                "config_generation",
                "Policy generation of the config in force.",
                self.config_generation.load(Ordering::Relaxed).to_string(),
            ),
            (
                "config_reload_failing",
                "1 while the newest config file is refused and the last good one serves.",
                self.config_reload_failing
                    .load(Ordering::Relaxed)
                    .to_string(),
            ),
            (
                "key_set_age_seconds",
                "Seconds since the oldest key set in force was loaded (fetched, or its config applied).",
                self.key_set_age_secs.load(Ordering::Relaxed).to_string(),
            ),
            (
                "revocation_feed_staleness_seconds",
                "Seconds since the last successful feed poll or, before one, since start (-1 without a feed).",
                self.feed_staleness_secs.load(Ordering::Relaxed).to_string(),
            ),
            (
                "revocation_entries",
                "Revocation entries held from the feed.",
                self.feed_entries.load(Ordering::Relaxed).to_string(),
            ),
            (
                "keys_skipped",
                "Keys the config in force leaves out because they do not load (the others serve).",
                self.keys_skipped.load(Ordering::Relaxed).to_string(),
            ),
        ];
        for (name, help, value) in gauges {
            write_metric(&mut out, name, help, "gauge", &value);
        }
        out
    }
}

/// A label value in the text format: backslash, double quote and line feed escaped (rule
/// names come from the policy, which may hold any of them).
fn escape_label(value: &str) -> String {
    let mut out = String::with_capacity(value.len());
    for c in value.chars() {
        match c {
            '\\' => out.push_str("\\\\"),
            '"' => out.push_str("\\\""),
            '\n' => out.push_str("\\n"),
            c => out.push(c),
        }
    }
    out
}

fn write_metric(out: &mut String, name: &str, help: &str, kind: &str, value: &str) {
    let base = name.split('{').next().unwrap_or(name);
    if !help.is_empty() {
        let _ = writeln!(out, "# HELP scopegate_sidecar_{base} {help}");
        let _ = writeln!(out, "# TYPE scopegate_sidecar_{base} {kind}");
    }
    let _ = writeln!(out, "scopegate_sidecar_{name} {value}");
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_counters_and_histogram() {
        let m = Metrics::default();
        m.request("invalid_token");
        m.validation(Duration::from_micros(3));
        m.cache(true);
        m.cache(false);
        let text = m.render();
        assert!(text.contains("scopegate_sidecar_requests_total{outcome=\"invalid_token\"} 1"));
        assert!(
            text.contains("scopegate_sidecar_token_validation_seconds_bucket{le=\"0.000005\"} 1")
        );
        assert!(text.contains("scopegate_sidecar_token_validation_seconds_count 1"));
        assert!(text.contains("scopegate_sidecar_token_cache_hit_ratio 0.5"));
        for line in text.lines().filter(|l| !l.starts_with('#')) {
            assert_eq!(line.split(' ').count(), 2, "{line}");
        }
    }

    #[test]
    fn decisions_by_rule_outcome_and_enforcement() {
        let m = Metrics::default();
        let labels = ["items".to_owned()];
        let slots = m.decision_counters(&labels);
        assert_eq!(slots.of(Some(0)).count("insufficient_scope", false), 1);
        assert_eq!(slots.of(Some(0)).count("insufficient_scope", false), 2);
        slots.of(None).count("no_credentials", true);
        // A reload with the same label keeps counting the same series.
        let again = m.decision_counters(&labels);
        assert_eq!(again.of(Some(0)).count("insufficient_scope", false), 3);
        let text = m.render();
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
        let m = Metrics::default();
        let evil = "x\"} 1\nscopegate_forged 1\\".to_owned();
        m.decision_counters(std::slice::from_ref(&evil))
            .of(Some(0))
            .count("allowed", true);
        let text = m.render();
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
        let text = m.render();
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
