//! Counters of the issuer's defences against being made to spend work or memory for someone
//! else: slow client-secret hashes and pending logins. Rendered on the admin port's
//! `/metrics` next to the sidecar's own metrics; no label carries a client or a subject.

use std::fmt;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};

use scopegate_sidecar_kit::exposition::{self, Encoder};

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
    /// Revocation-feed polls parked now, waiting for news.
    pub feed_polls_waiting: AtomicI64,
}

/// A feed poll parked while this lives ([`Counters::feed_poll_parked`]); dropped with the
/// poll, also when its client goes away.
pub struct FeedPollParked<'a>(&'a AtomicI64);

impl Drop for FeedPollParked<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::AcqRel);
    }
}

impl Counters {
    /// A slow check starts: counts it and raises the peak.
    pub fn slow_hash_started(&self) {
        self.slow_hashes.fetch_add(1, Ordering::Relaxed);
        let running = self.slow_hashes_running.fetch_add(1, Ordering::AcqRel) + 1;
        self.slow_hashes_peak.fetch_max(running, Ordering::AcqRel);
    }

    /// A feed poll parks until news or its deadline: counted while the guard lives.
    pub fn feed_poll_parked(&self) -> FeedPollParked<'_> {
        self.feed_polls_waiting.fetch_add(1, Ordering::AcqRel);
        FeedPollParked(&self.feed_polls_waiting)
    }

    /// A slow check ended.
    pub fn slow_hash_ended(&self) {
        self.slow_hashes_running.fetch_sub(1, Ordering::AcqRel);
    }

    /// Writes the counters to a `/metrics` scrape.
    pub fn encode(&self, encoder: &mut Encoder<'_>) -> fmt::Result {
        let load = |a: &AtomicU64| a.load(Ordering::Relaxed);
        let counters: [(&str, &str, &AtomicU64); 4] = [
            (
                "client_secret_slow_hashes",
                "Slow (argon2) client-secret checks run, off the async workers.",
                &self.slow_hashes,
            ),
            (
                "client_secret_slow_hashes_refused",
                "Client authentications refused (429) before a slow check, the client's failure budget spent.",
                &self.slow_hashes_refused,
            ),
            (
                "client_secret_slow_hashes_busy",
                "Client authentications answered 503 because every slow-check slot stayed busy.",
                &self.slow_hashes_busy,
            ),
            (
                "pending_logins_evicted",
                "Pending logins evicted, oldest first, to keep within the per-client or overall bound.",
                &self.pending_logins_evicted,
            ),
        ];
        for (name, help, value) in counters {
            let name = format!("scopegate_issuer_{name}");
            exposition::counter(encoder, &name, help, load(value))?;
        }
        let gauges: [(&str, &str, &AtomicI64); 3] = [
            (
                "client_secret_slow_hashes_peak",
                "Most slow client-secret checks that ran at once since start.",
                &self.slow_hashes_peak,
            ),
            (
                "client_secret_slow_hashes_running",
                "Slow client-secret checks running now.",
                &self.slow_hashes_running,
            ),
            (
                "feed_polls_waiting",
                "Revocation-feed polls parked now, waiting for news (verifiers' long polls).",
                &self.feed_polls_waiting,
            ),
        ];
        for (name, help, value) in gauges {
            let name = format!("scopegate_issuer_{name}");
            exposition::gauge(encoder, &name, help, value.load(Ordering::Relaxed))?;
        }
        Ok(())
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
        let parked = c.feed_poll_parked();
        assert_eq!(c.feed_polls_waiting.load(Ordering::Relaxed), 1);
        drop(parked);
        assert_eq!(c.feed_polls_waiting.load(Ordering::Relaxed), 0);
        #[derive(Debug)]
        struct Only(Counters);
        impl exposition::MetricsCollector for Only {
            fn encode(&self, mut encoder: Encoder<'_>) -> fmt::Result {
                self.0.encode(&mut encoder)
            }
        }
        let text = exposition::render([Box::new(Only(c)) as Box<dyn exposition::MetricsCollector>]);
        assert!(text.contains("scopegate_issuer_client_secret_slow_hashes_total 3"));
        for line in text.lines().filter(|l| !l.starts_with('#')) {
            assert_eq!(line.split(' ').count(), 2, "{line}");
        }
    }
}
