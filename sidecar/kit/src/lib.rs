//! What the sidecar's roles — the verifier ([`scopegate-verifier`]), the issuer
//! ([`scopegate-issuer`]), the egress proxy ([`scopegate-egress`]) and the browser sessions
//! — use, below all of them: the body type of every response the sidecar sends, hop-by-hop
//! header stripping, form encoding, the client of the sidecar's own requests to its issuer
//! ([`oauth`]), rate budgets with the store interface that shares them between replicas, the
//! Prometheus exposition, the clock and the shutdown signal.
//!
//! [`scopegate-verifier`]: https://docs.rs/scopegate-verifier
//! [`scopegate-issuer`]: https://docs.rs/scopegate-issuer
//! [`scopegate-egress`]: https://docs.rs/scopegate-egress

pub mod body;
pub mod budget;
pub mod exposition;
pub mod form;
pub mod hop;
pub mod oauth;

use tokio::sync::watch;

/// Unix seconds now.
pub fn unix_now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_secs()).unwrap_or(i64::MAX))
}

/// Resolves once `shutdown` is true (or its sender is gone).
pub async fn stopped(shutdown: &mut watch::Receiver<bool>) {
    let _ = shutdown.wait_for(|stop| *stop).await;
}
