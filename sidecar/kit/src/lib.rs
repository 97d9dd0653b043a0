//! What the sidecar's verifier ([`scopegate-verifier`]) and issuer ([`scopegate-issuer`]) both
//! use, below both of them: the body type of every response the sidecar sends, the HTTPS
//! client of key, feed and provider fetches, rate budgets with the store interface that
//! shares them between replicas, the Prometheus exposition, the clock and the shutdown signal.
//!
//! [`scopegate-verifier`]: https://docs.rs/scopegate-verifier
//! [`scopegate-issuer`]: https://docs.rs/scopegate-issuer

pub mod body;
pub mod budget;
pub mod exposition;
pub mod https;

use tokio::sync::watch;

/// Unix seconds now.
pub fn unix_now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_secs()).unwrap_or(i64::MAX))
}

/// An error and its causes on one line (`error: cause: cause`): error messages name their
/// own fact only, never their source's, so that each cause shows once.
pub fn error_chain(error: &dyn std::error::Error) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    text
}

/// Resolves once `shutdown` is true (or its sender is gone).
pub async fn stopped(shutdown: &mut watch::Receiver<bool>) {
    let _ = shutdown.wait_for(|stop| *stop).await;
}
