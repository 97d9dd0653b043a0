//! Counters of the issuer's defences against being made to spend work or memory for someone
//! else: slow client-secret hashes and pending logins. Rendered on the admin port's
//! `/metrics` next to the sidecar's own metrics; no label carries a client or a subject.

use std::fmt::Write as _;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};

/// The issuer's counters.
#[derive(Debug, Default)]
pub struct Counters {
    /// Slow (argon2) secret checks run.
    pub slow_hashes: AtomicU64,
    /// Slow checks running now.
    pub slow_hashes_running: AtomicI64,
    /// Most slow checks that ran at once since start.
    pub slow_hashes_peak: AtomicI64,
    /// Client authentications answered 429 before a slow check ran (the client's failure
    /// budget was spent).
    pub slow_hashes_refused: AtomicU64,
    /// Client authentications answered 503 because no slow-check slot freed up in time.
    pub slow_hashes_busy: AtomicU64,
    /// Pending logins evicted (oldest first) to keep within the per-client or overall bound.
    pub pending_logins_evicted: AtomicU64,
}

impl Counters {
    /// A slow check starts: counts it and raises the peak.
    pub fn slow_hash_started(&self) {
        self.slow_hashes.fetch_add(1, Ordering::Relaxed);
        let running = self.slow_hashes_running.fetch_add(1, Ordering::AcqRel) + 1;
        self.slow_hashes_peak.fetch_max(running, Ordering::AcqRel);
    }

    /// A slow check ended.
    pub fn slow_hash_ended(&self) {
        self.slow_hashes_running.fetch_sub(1, Ordering::AcqRel);
    }

    /// The Prometheus text.
    pub fn render(&self) -> String {
        let mut out = String::new();
        let load = |a: &AtomicU64| a.load(Ordering::Relaxed);
        let metrics: [(&str, &str, &str, String); 6] = [
            (
                "client_secret_slow_hashes_total",
                "counter",
                "Slow (argon2) client-secret checks run, off the async workers.",
                load(&self.slow_hashes).to_string(),
            ),
            (
                "client_secret_slow_hashes_peak",
                "gauge",
                "Most slow client-secret checks that ran at once since start.",
                self.slow_hashes_peak.load(Ordering::Relaxed).to_string(),
            ),
            (
                "client_secret_slow_hashes_refused_total",
                "counter",
                "Client authentications refused (429) before a slow check, the client's failure budget spent.",
                load(&self.slow_hashes_refused).to_string(),
            ),
            (
                "client_secret_slow_hashes_busy_total",
                "counter",
                "Client authentications answered 503 because every slow-check slot stayed busy.",
                load(&self.slow_hashes_busy).to_string(),
            ),
            (
                "pending_logins_evicted_total",
                "counter",
                "Pending logins evicted, oldest first, to keep within the per-client or overall bound.",
                load(&self.pending_logins_evicted).to_string(),
            ),
            (
                "client_secret_slow_hashes_running",
                "gauge",
                "Slow client-secret checks running now.",
                self.slow_hashes_running.load(Ordering::Relaxed).to_string(),
            ),
        ];
        for (name, kind, help, value) in metrics {
            let _ = writeln!(out, "# HELP scopegate_issuer_{name} {help}");
            let _ = writeln!(out, "# TYPE scopegate_issuer_{name} {kind}");
            let _ = writeln!(out, "scopegate_issuer_{name} {value}");
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_peak_follows_concurrent_checks() {
        let c = Counters::default();
        c.slow_hash_started();
        c.slow_hash_started();
        c.slow_hash_ended();
        c.slow_hash_started();
        assert_eq!(c.slow_hashes_peak.load(Ordering::Relaxed), 2);
        assert_eq!(c.slow_hashes.load(Ordering::Relaxed), 3);
        let text = c.render();
        assert!(text.contains("scopegate_issuer_client_secret_slow_hashes_total 3"));
        for line in text.lines().filter(|l| !l.starts_with('#')) {
            assert_eq!(line.split(' ').count(), 2, "{line}");
        }
    }
}
