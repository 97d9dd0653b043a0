//! One refresh per session at a time in this process: requests that need the same refresh
//! (keyed by a hash of the refresh token, never the token) wait for the one that asks the
//! issuer, and use its answer. The answer is remembered for [`REMEMBER`], so that a request
//! sent with the old cookie before the browser saw the new one gets the same tokens instead of
//! presenting a rotated refresh token (which the issuer would take for reuse); a failure that
//! another try may change is kept [`RETRY_AFTER_FAILURE`]. The map is
//! bounded: it is the only per-session state the sidecar keeps, and it is short-lived.

use std::collections::HashMap;
use std::future::Future;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use aws_lc_rs::digest;
use futures::FutureExt as _;
use futures::future::{BoxFuture, Shared};
use scopegate_sidecar_kit::oauth::{Granted, TokenFailure};

/// How long a refresh's answer is kept for requests still carrying the old refresh token
/// (new tokens, or the issuer's `invalid_grant`, which no retry changes).
pub const REMEMBER: Duration = Duration::from_secs(30);

/// How long a refresh that got no answer (or a refusal about the sidecar's client) is kept
/// before the next request may ask again: long enough that a session never has the issuer
/// asked more than once per this much, short enough that a blip does not outlast a token in
/// its last seconds.
pub const RETRY_AFTER_FAILURE: Duration = Duration::from_secs(5);

/// Most refreshes kept (in flight or remembered).
pub const MAX_FLIGHTS: usize = 4096;

/// What a refresh came to, shared by every request that waited for it.
pub type Outcome = Result<Arc<Granted>, TokenFailure>;

/// Why a request could not join or start a refresh.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("too many refreshes in flight")]
pub struct Busy;

struct Flight {
    outcome: Shared<BoxFuture<'static, Outcome>>,
    started: Instant,
}

/// The refreshes in flight and those just done.
#[derive(Default)]
pub struct Flights {
    map: Mutex<HashMap<[u8; 32], Flight>>,
}

impl Flights {
    /// The outcome of refreshing `refresh_token`: the running refresh's or a remembered one's
    /// when there is one; else `refresh` is spawned (a caller that goes away neither aborts it
    /// nor lets another start) and awaited.
    pub async fn refresh<F>(
        &self,
        refresh_token: &str,
        refresh: impl FnOnce() -> F,
    ) -> Result<Outcome, Busy>
    where
        F: Future<Output = Outcome> + Send + 'static,
    {
        let key = key_of(refresh_token);
        let outcome = {
            let mut map = self.map.lock().unwrap_or_else(|p| p.into_inner());
            let now = Instant::now();
            match map.get(&key) {
                Some(flight) if !expired(flight, now) => flight.outcome.clone(),
                _ => {
                    if map.len() >= MAX_FLIGHTS {
                        make_room(&mut map, now);
                    }
                    if map.len() >= MAX_FLIGHTS {
                        return Err(Busy);
                    }
                    let task = tokio::spawn(refresh());
                    let outcome =
                        async move { task.await.unwrap_or(Err(TokenFailure::Unreachable)) }
                            .boxed()
                            .shared();
                    map.insert(
                        key,
                        Flight {
                            outcome: outcome.clone(),
                            started: now,
                        },
                    );
                    outcome
                }
            }
        };
        Ok(outcome.await)
    }

    /// Refreshes held now (in flight or remembered).
    pub fn len(&self) -> usize {
        self.map.lock().unwrap_or_else(|p| p.into_inner()).len()
    }

    /// Whether none is held.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// Whether a refresh's failure ends the session: the issuer said `invalid_grant` (RFC 6749
/// §5.2: the refresh token is invalid, expired, revoked or reused), which is about this
/// session alone. Any other refusal (`invalid_client` when the pod's ServiceAccount token is
/// refused, `unauthorized_client` after a client change, ...) is about the sidecar's client
/// and would end every session that refreshes: it is an outage, like no answer, and never a
/// logout.
pub fn ends_session(failure: &TokenFailure) -> bool {
    matches!(failure, TokenFailure::Refused { error } if error == "invalid_grant")
}

/// Whether a flight is done and older than its outcome is kept: [`REMEMBER`], or
/// [`RETRY_AFTER_FAILURE`] for an outcome another try may change.
fn expired(flight: &Flight, now: Instant) -> bool {
    let keep = match flight.outcome.peek() {
        None => return false,
        Some(Err(failure)) if !ends_session(failure) => RETRY_AFTER_FAILURE,
        Some(_) => REMEMBER,
    };
    now.duration_since(flight.started) >= keep
}

/// Drops remembered outcomes: the expired ones, then (still full) every finished one.
fn make_room(map: &mut HashMap<[u8; 32], Flight>, now: Instant) {
    map.retain(|_, flight| !expired(flight, now));
    if map.len() >= MAX_FLIGHTS {
        map.retain(|_, flight| flight.outcome.peek().is_none());
    }
}

/// The key of a refresh token: its SHA-256.
pub(crate) fn key_of(refresh_token: &str) -> [u8; 32] {
    let mut key = [0u8; 32];
    key.copy_from_slice(digest::digest(&digest::SHA256, refresh_token.as_bytes()).as_ref());
    key
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};

    fn granted(token: &str) -> Outcome {
        Ok(Arc::new(Granted {
            access_token: token.into(),
            refresh_token: None,
            lifetime: Duration::from_secs(60),
        }))
    }

    #[test]
    fn only_invalid_grant_ends_a_session() {
        let refused = |error: &str| TokenFailure::Refused {
            error: error.into(),
        };
        assert!(ends_session(&refused("invalid_grant")));
        for failure in [
            refused("invalid_client"),
            refused("unauthorized_client"),
            refused("invalid_request"),
            refused("unknown"),
            TokenFailure::Status(429),
            TokenFailure::Status(503),
            TokenFailure::Unreachable,
            TokenFailure::Timeout,
            TokenFailure::Assertion,
        ] {
            assert!(!ends_session(&failure), "{failure}");
        }
    }

    #[tokio::test]
    async fn concurrent_refreshes_of_one_token_ask_once() {
        let flights = Arc::new(Flights::default());
        let asked = Arc::new(AtomicUsize::new(0));
        let (release, wait) = tokio::sync::watch::channel(false);
        let mut joins = Vec::new();
        for _ in 0..20 {
            let (flights, asked, wait) = (flights.clone(), asked.clone(), wait.clone());
            joins.push(tokio::spawn(async move {
                flights
                    .refresh("rt-1", move || async move {
                        asked.fetch_add(1, Ordering::SeqCst);
                        let mut wait = wait;
                        let _ = wait.wait_for(|go| *go).await;
                        granted("new")
                    })
                    .await
            }));
        }
        // Every caller is waiting on the one refresh before it may answer.
        while flights.len() != 1 || asked.load(Ordering::SeqCst) != 1 {
            tokio::task::yield_now().await;
        }
        release.send(true).unwrap();
        for join in joins {
            let outcome = join.await.unwrap().unwrap().unwrap();
            assert_eq!(outcome.access_token, "new");
        }
        assert_eq!(asked.load(Ordering::SeqCst), 1);
        // A late request with the same old token gets the remembered answer.
        let late = flights
            .refresh("rt-1", || async { granted("another") })
            .await
            .unwrap()
            .unwrap();
        assert_eq!(late.access_token, "new");
        // Another session's token is refreshed on its own.
        let other = flights
            .refresh("rt-2", || async { granted("two") })
            .await
            .unwrap()
            .unwrap();
        assert_eq!(other.access_token, "two");
    }

    #[tokio::test]
    async fn the_map_is_bounded() {
        let flights = Flights::default();
        let (_hold, wait) = tokio::sync::watch::channel(false);
        let pending = |wait: tokio::sync::watch::Receiver<bool>| async move {
            let mut wait = wait;
            let _ = wait.wait_for(|go| *go).await;
            granted("x")
        };
        for i in 0..MAX_FLIGHTS {
            let w = wait.clone();
            let token = format!("rt-{i}");
            // Start without awaiting the outcome: the flight stays in the map.
            let fut = flights.refresh(&token, move || pending(w));
            futures::pin_mut!(fut);
            assert!(futures::poll!(fut.as_mut()).is_pending());
        }
        assert_eq!(flights.len(), MAX_FLIGHTS);
        let w = wait.clone();
        let over = flights.refresh("rt-over", move || pending(w)).await;
        assert_eq!(over.err(), Some(Busy));
        // Finished ones make room.
        let done = Flights::default();
        for i in 0..MAX_FLIGHTS {
            done.refresh(&format!("d-{i}"), || async { granted("y") })
                .await
                .unwrap()
                .unwrap();
        }
        assert!(
            done.refresh("d-new", || async { granted("z") })
                .await
                .is_ok()
        );
        assert!(done.len() <= MAX_FLIGHTS);
    }
}
