//! The egress proxy's counters, rendered on the admin port's `/metrics` beside the
//! verifier's. Labels are bounded: target names come from the config (at most
//! [`MAX_TARGET_LABELS`] kept across reloads), outcomes and results are fixed, and a request
//! for an undeclared host counts under `(none)`, never under the host it named.

use std::collections::BTreeMap;
use std::fmt;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};

use scopegate_sidecar_kit::exposition::{self, Encoder, MetricsCollector};

use crate::issuer::TokenFailure;

/// Outcomes of the app's requests (the `outcome` label).
pub const OUTCOMES: [&str; 9] = [
    "forwarded",
    "refused_target",
    "refused_request",
    "token_refused",
    "token_unavailable",
    "upstream_unreachable",
    "upstream_timeout",
    "caller_token_missing",
    "caller_token_refused",
];

/// The outcome of one request, an index into [`OUTCOMES`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// Sent to the target with a token; whatever it answered went back.
    Forwarded,
    /// The host is no declared target.
    RefusedTarget,
    /// `CONNECT`, or a request target or Host header the proxy does not take.
    RefusedRequest,
    /// The issuer refused the token request.
    TokenRefused,
    /// No token: the issuer or the assertion file is unavailable.
    TokenUnavailable,
    /// The target could not be reached (TCP, TLS, protocol).
    UpstreamUnreachable,
    /// The target sent no response headers in time.
    UpstreamTimeout,
    /// A target on behalf of the caller, and the app forwarded no usable bearer token.
    CallerTokenMissing,
    /// A target on behalf of the caller, and the issuer refused to exchange the caller's
    /// token.
    CallerTokenRefused,
}

/// Results of token requests (the `result` label).
const RESULTS: [&str; 3] = ["ok", "refused", "unavailable"];

/// The index into [`RESULTS`] of a finished token request (`None`: a token was granted).
fn result_of(failure: Option<&TokenFailure>) -> usize {
    match failure {
        None => 0,
        Some(failure) if failure.is_refusal() => 1,
        Some(_) => 2,
    }
}

/// Distinct target labels kept across reloads; targets first seen after that many share
/// the label `(other)`.
pub const MAX_TARGET_LABELS: usize = 256;

/// The label of requests that name no declared target.
const NO_TARGET: &str = "(none)";
/// The label shared by targets beyond [`MAX_TARGET_LABELS`].
const OTHER: &str = "(other)";

/// The request counters of one target label, and its token exchanges.
#[derive(Debug, Default)]
pub struct TargetCounters {
    counts: [AtomicU64; OUTCOMES.len()],
    /// Exchanges asked of the issuer, by [`RESULTS`].
    exchanges: [AtomicU64; RESULTS.len()],
    /// Calls sent with an exchanged token from the cache.
    exchange_cache_hits: AtomicU64,
}

impl TargetCounters {
    /// Counts one request.
    pub fn count(&self, outcome: Outcome) {
        self.counts[outcome as usize].fetch_add(1, Ordering::Relaxed);
    }

    /// Counts a finished token exchange (`None`: a token was granted).
    pub fn exchange(&self, failure: Option<&TokenFailure>) {
        self.exchanges[result_of(failure)].fetch_add(1, Ordering::Relaxed);
    }

    /// Counts a call sent with a cached exchanged token.
    pub fn exchange_cache_hit(&self) {
        self.exchange_cache_hits.fetch_add(1, Ordering::Relaxed);
    }
}

/// Every counter of the egress proxy.
#[derive(Debug, Default)]
pub struct EgressMetrics {
    targets: Mutex<BTreeMap<String, Arc<TargetCounters>>>,
    untargeted: TargetCounters,
    /// `[ok, refused, unavailable]`.
    token_fetches: [AtomicU64; 3],
}

impl EgressMetrics {
    /// The counters of the target named `name` (the same ones across reloads).
    pub fn target(&self, name: &str) -> Arc<TargetCounters> {
        let mut targets = self.targets.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some(counters) = targets.get(name) {
            return counters.clone();
        }
        let label = if targets.len() < MAX_TARGET_LABELS {
            name
        } else {
            OTHER
        };
        targets.entry(label.to_owned()).or_default().clone()
    }

    /// The counters of requests that name no declared target.
    pub fn untargeted(&self) -> &TargetCounters {
        &self.untargeted
    }

    /// Counts a finished token request (`None`: a token was granted).
    pub fn token_fetch(&self, failure: Option<&TokenFailure>) {
        self.token_fetches[result_of(failure)].fetch_add(1, Ordering::Relaxed);
    }

    /// The counters for a scrape.
    pub fn collector(self: &Arc<Self>) -> Box<dyn MetricsCollector> {
        Box::new(Scrape(self.clone()))
    }
}

/// One scrape of the counters.
#[derive(Debug)]
struct Scrape(Arc<EgressMetrics>);

impl MetricsCollector for Scrape {
    fn encode(&self, mut encoder: Encoder<'_>) -> fmt::Result {
        let metrics = &self.0;
        let load = |a: &AtomicU64| a.load(Ordering::Relaxed);
        let targets = metrics
            .targets
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        let mut series = Vec::new();
        let mut exchanges = Vec::new();
        let mut hits = Vec::new();
        let all = targets
            .iter()
            .map(|(name, c)| (name.as_str(), &**c))
            .chain([(NO_TARGET, &metrics.untargeted)]);
        for (name, counters) in all {
            for (outcome, counter) in OUTCOMES.iter().zip(&counters.counts) {
                let n = load(counter);
                if n > 0 {
                    series.push(([("target", name), ("outcome", *outcome)], n));
                }
            }
            for (result, counter) in RESULTS.iter().zip(&counters.exchanges) {
                let n = load(counter);
                if n > 0 {
                    exchanges.push(([("target", name), ("result", *result)], n));
                }
            }
            let n = load(&counters.exchange_cache_hits);
            if n > 0 {
                hits.push(([("target", name)], n));
            }
        }
        exposition::counters(
            &mut encoder,
            "scopegate_egress_requests",
            "The app's outbound requests through the egress proxy, by target and outcome.",
            series.iter().map(|(labels, n)| (&labels[..], *n)),
        )?;
        exposition::counters(
            &mut encoder,
            "scopegate_egress_token_exchanges",
            "Token exchanges of callers' tokens asked of the issuer, by target and result (as for token fetches).",
            exchanges.iter().map(|(labels, n)| (&labels[..], *n)),
        )?;
        exposition::counters(
            &mut encoder,
            "scopegate_egress_exchange_cache_hits",
            "Calls on behalf of the caller sent with an exchanged token from the cache, by target.",
            hits.iter().map(|(labels, n)| (&labels[..], *n)),
        )?;
        let results = RESULTS.map(|result| [("result", result)]);
        exposition::counters(
            &mut encoder,
            "scopegate_egress_token_fetches",
            "Token requests to the issuer by result (refused: a 4xx answer; unavailable: no answer, a 5xx or 429, an unusable answer, or no ServiceAccount token to send).",
            results
                .iter()
                .zip(&metrics.token_fetches)
                .map(|(labels, counter)| (&labels[..], load(counter))),
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn target_labels_are_bounded_and_kept_across_reloads() {
        let metrics = EgressMetrics::default();
        let orders = metrics.target("orders");
        assert!(Arc::ptr_eq(&orders, &metrics.target("orders")));
        for i in 1..MAX_TARGET_LABELS {
            metrics.target(&format!("t{i}"));
        }
        let late = metrics.target("late");
        assert!(Arc::ptr_eq(&late, &metrics.target("later")));
        assert!(Arc::ptr_eq(&late, &metrics.target(OTHER)));
    }

    #[test]
    fn a_scrape_names_targets_outcomes_and_fetch_results() {
        let metrics = Arc::new(EgressMetrics::default());
        metrics.target("orders").count(Outcome::Forwarded);
        metrics.untargeted().count(Outcome::RefusedTarget);
        metrics.token_fetch(None);
        metrics.token_fetch(Some(&TokenFailure::Timeout));
        let inventory = metrics.target("inventory");
        inventory.exchange(None);
        inventory.exchange(Some(&TokenFailure::Refused {
            error: "invalid_request".into(),
        }));
        inventory.exchange_cache_hit();
        inventory.exchange_cache_hit();
        let text = exposition::render([metrics.collector()]);
        for line in [
            r#"scopegate_egress_requests_total{target="orders",outcome="forwarded"} 1"#,
            r#"scopegate_egress_requests_total{target="(none)",outcome="refused_target"} 1"#,
            r#"scopegate_egress_token_fetches_total{result="ok"} 1"#,
            r#"scopegate_egress_token_fetches_total{result="refused"} 0"#,
            r#"scopegate_egress_token_fetches_total{result="unavailable"} 1"#,
            r#"scopegate_egress_token_exchanges_total{target="inventory",result="ok"} 1"#,
            r#"scopegate_egress_token_exchanges_total{target="inventory",result="refused"} 1"#,
            r#"scopegate_egress_exchange_cache_hits_total{target="inventory"} 2"#,
        ] {
            assert!(text.contains(line), "{line} in\n{text}");
        }
    }
}
