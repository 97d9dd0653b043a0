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
pub const OUTCOMES: [&str; 7] = [
    "forwarded",
    "refused_target",
    "refused_request",
    "token_refused",
    "token_unavailable",
    "upstream_unreachable",
    "upstream_timeout",
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
}

/// Distinct target labels kept across reloads; targets first seen after that many share
/// the label `(other)`.
pub const MAX_TARGET_LABELS: usize = 256;

/// The label of requests that name no declared target.
const NO_TARGET: &str = "(none)";
/// The label shared by targets beyond [`MAX_TARGET_LABELS`].
const OTHER: &str = "(other)";

/// The request counters of one target label.
#[derive(Debug, Default)]
pub struct TargetCounters {
    counts: [AtomicU64; OUTCOMES.len()],
}

impl TargetCounters {
    /// Counts one request.
    pub fn count(&self, outcome: Outcome) {
        self.counts[outcome as usize].fetch_add(1, Ordering::Relaxed);
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
        let result = match failure {
            None => 0,
            Some(failure) if failure.is_refusal() => 1,
            Some(_) => 2,
        };
        self.token_fetches[result].fetch_add(1, Ordering::Relaxed);
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
        }
        exposition::counters(
            &mut encoder,
            "scopegate_egress_requests",
            "The app's outbound requests through the egress proxy, by target and outcome.",
            series.iter().map(|(labels, n)| (&labels[..], *n)),
        )?;
        let results = [
            [("result", "ok")],
            [("result", "refused")],
            [("result", "unavailable")],
        ];
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
        let text = exposition::render([metrics.collector()]);
        for line in [
            r#"scopegate_egress_requests_total{target="orders",outcome="forwarded"} 1"#,
            r#"scopegate_egress_requests_total{target="(none)",outcome="refused_target"} 1"#,
            r#"scopegate_egress_token_fetches_total{result="ok"} 1"#,
            r#"scopegate_egress_token_fetches_total{result="refused"} 0"#,
            r#"scopegate_egress_token_fetches_total{result="unavailable"} 1"#,
        ] {
            assert!(text.contains(line), "{line} in\n{text}");
        }
    }
}
