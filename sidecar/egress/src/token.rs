//! The token of one audience and set of scopes ([`TokenKey`]): the pod's own, shared by every
//! target that asks for the same, or one caller's exchanged token (held in
//! [`crate::exchange::ExchangeCache`]). A cache hit is one atomic load and a clone of a
//! prebuilt header value; a miss asks the issuer once however many requests miss together
//! (the others wait for that answer), and a failure is remembered for [`FAILURE_MEMORY`] so
//! that a burst of requests does not become a burst at the issuer.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use arc_swap::ArcSwapOption;
use http::HeaderValue;

use crate::issuer::{self, Grant, Granted, TokenEndpoint, TokenFailure, TokenKey};
use crate::metrics::{EgressMetrics, TargetCounters};

/// How long a failed token request is answered from memory.
pub const FAILURE_MEMORY: Duration = Duration::from_secs(1);

/// The most a token is renewed before it expires.
const MAX_RENEWAL_MARGIN: Duration = Duration::from_secs(60);

/// A granted token and its times.
#[derive(Debug)]
struct Token {
    /// `Bearer <token>`.
    header: HeaderValue,
    /// Sent as is until then; renewed by the first request after.
    fresh_until: Instant,
    /// Still sent, while another request renews it, until then.
    expires_at: Instant,
}

/// How long a token of `lifetime` is used before it is renewed: its lifetime less a tenth of
/// it, a minute at most (a 10-minute token is renewed after 9, an hour's after 59).
pub fn fresh_for(lifetime: Duration) -> Duration {
    lifetime - (lifetime / 10).min(MAX_RENEWAL_MARGIN)
}

/// The live token of one key.
#[derive(Debug)]
pub struct TokenSlot {
    key: TokenKey,
    current: ArcSwapOption<Token>,
    /// Held by the one fetch that asks the issuer.
    asking: Arc<tokio::sync::Mutex<()>>,
    /// The last failure and when it happened.
    failure: Mutex<Option<(Instant, TokenFailure)>>,
    /// Whether the last request failed: logs follow changes only.
    failing: AtomicBool,
    /// One caller's exchanged token rather than the pod's own: its requests are counted per
    /// target, and its failures (one caller's) are not logged as the target's.
    per_caller: bool,
}

impl TokenSlot {
    /// An empty slot for the pod's own tokens of `key`.
    pub fn new(key: TokenKey) -> TokenSlot {
        TokenSlot::empty(key, false)
    }

    /// An empty slot for one caller's exchanged tokens of `key`.
    pub fn for_caller(key: TokenKey) -> TokenSlot {
        TokenSlot::empty(key, true)
    }

    fn empty(key: TokenKey, per_caller: bool) -> TokenSlot {
        TokenSlot {
            key,
            current: ArcSwapOption::empty(),
            asking: Arc::new(tokio::sync::Mutex::new(())),
            failure: Mutex::new(None),
            failing: AtomicBool::new(false),
            per_caller,
        }
    }

    /// What the slot's tokens are asked for.
    pub fn key(&self) -> &TokenKey {
        &self.key
    }

    /// The token, when one is fresh at `now`: the cache hit.
    pub fn fresh(&self, now: Instant) -> Option<HeaderValue> {
        let current = self.current.load();
        current
            .as_ref()
            .filter(|token| now < token.fresh_until)
            .map(|token| token.header.clone())
    }

    /// Whether the slot holds nothing worth keeping at `now`: no token that has not expired,
    /// no failure to remember, and no request to the issuer in flight.
    pub fn is_spent(&self, now: Instant) -> bool {
        self.usable(now).is_none()
            && self.remembered(now).is_none()
            && self.asking.try_lock().is_ok()
    }

    /// The token: the fresh one, else one from the issuer by `grant` (counted in `metrics`
    /// for the pod's own, in the target's `counters` for an exchange). While a token past its
    /// renewal time has not expired, only one request renews it and the others keep sending
    /// it.
    pub async fn obtain(
        self: &Arc<Self>,
        endpoint: &TokenEndpoint,
        grant: Grant<'_>,
        metrics: &Arc<EgressMetrics>,
        target: &Arc<str>,
        counters: &Arc<TargetCounters>,
    ) -> Result<HeaderValue, TokenFailure> {
        if let Some(header) = self.fresh(Instant::now()) {
            return Ok(header);
        }
        let usable = self.usable(Instant::now());
        let asking = match (&usable, self.asking.clone().try_lock_owned()) {
            (_, Ok(guard)) => guard,
            // Someone is renewing: the old token is good until it expires.
            (Some(header), Err(_)) => return Ok(header.clone()),
            (None, Err(_)) => self.asking.clone().lock_owned().await,
        };
        // The fetch that held the lock may have brought a token, or a failure.
        let now = Instant::now();
        if let Some(header) = self.fresh(now) {
            return Ok(header);
        }
        if let Some(failure) = self.remembered(now) {
            return self.or_usable(usable, failure);
        }
        // The fetch runs on its own, holding the lock: a caller that goes away (an app whose
        // timeout is shorter than the issuer's answer) neither aborts it nor lets the next
        // caller start another; the token or the failure it brings is kept for the next call.
        // The caller's token is copied for the request only, and dropped with it.
        let subject = match grant {
            Grant::Own => None,
            Grant::Exchange { subject } => Some(subject.to_owned()),
        };
        let (slot, endpoint, metrics, target, counters) = (
            self.clone(),
            endpoint.clone(),
            metrics.clone(),
            target.clone(),
            counters.clone(),
        );
        let fetch = tokio::spawn(async move {
            let _asking = asking;
            let grant = match &subject {
                None => Grant::Own,
                Some(subject) => Grant::Exchange { subject },
            };
            let result = issuer::request(&endpoint, &slot.key, grant).await;
            let failure = result.as_ref().err();
            match grant {
                Grant::Own => metrics.token_fetch(failure),
                Grant::Exchange { .. } => counters.exchange(failure),
            }
            match result {
                Ok(granted) => Ok(slot.keep(granted, &target)),
                Err(failure) => {
                    slot.remember(&failure, &target);
                    Err(failure)
                }
            }
        });
        match fetch.await {
            Ok(Ok(header)) => Ok(header),
            Ok(Err(failure)) => self.or_usable(usable, failure),
            Err(_) => usable.ok_or(TokenFailure::Unreachable),
        }
    }

    /// What a call gets when the issuer did not grant: the last token while it has not
    /// expired, unless the issuer refused one caller's token (revoked, expired): then none,
    /// for what was exchanged from it is no longer the caller's to use.
    fn or_usable(
        &self,
        usable: Option<HeaderValue>,
        failure: TokenFailure,
    ) -> Result<HeaderValue, TokenFailure> {
        if self.per_caller && failure.is_refusal() {
            return Err(failure);
        }
        usable.ok_or(failure)
    }

    /// The last token, if it has not expired at `now` (fresh or not).
    fn usable(&self, now: Instant) -> Option<HeaderValue> {
        let current = self.current.load();
        current
            .as_ref()
            .filter(|token| now < token.expires_at)
            .map(|token| token.header.clone())
    }

    /// A failure less than [`FAILURE_MEMORY`] old at `now`.
    fn remembered(&self, now: Instant) -> Option<TokenFailure> {
        let failure = self.failure.lock().unwrap_or_else(|p| p.into_inner());
        failure
            .as_ref()
            .filter(|(at, _)| now.duration_since(*at) < FAILURE_MEMORY)
            .map(|(_, failure)| failure.clone())
    }

    /// Puts a granted token in the slot and returns its header.
    pub(crate) fn keep(&self, granted: Granted, target: &str) -> HeaderValue {
        let now = Instant::now();
        let header = granted.header.clone();
        self.current.store(Some(std::sync::Arc::new(Token {
            header: granted.header,
            fresh_until: now + fresh_for(granted.lifetime),
            expires_at: now + granted.lifetime,
        })));
        *self.failure.lock().unwrap_or_else(|p| p.into_inner()) = None;
        if self.failing.swap(false, Ordering::AcqRel) && !self.per_caller {
            tracing::info!(
                target_name = target,
                audience = %self.key.audience,
                "egress: tokens are granted again"
            );
        }
        header
    }

    /// Remembers a failure; the first of a run is logged (one caller's at debug only: the
    /// handler logs exchange failures per target, at most once a second). The issuer refusing
    /// one caller's token also drops the token exchanged from it.
    fn remember(&self, failure: &TokenFailure, target: &str) {
        *self.failure.lock().unwrap_or_else(|p| p.into_inner()) =
            Some((Instant::now(), failure.clone()));
        if self.per_caller && failure.is_refusal() {
            self.current.store(None);
        }
        if self.per_caller {
            tracing::debug!(
                target_name = target,
                reason = failure.reason(),
                "egress: token exchange failed"
            );
        } else if !self.failing.swap(true, Ordering::AcqRel) {
            tracing::warn!(
                target_name = target,
                audience = %self.key.audience,
                scope = %self.key.scope,
                reason = failure.reason(),
                error = %failure,
                "egress: no token for the target; its calls fail until one is granted"
            );
        } else {
            tracing::debug!(
                target_name = target,
                reason = failure.reason(),
                "egress: token request failed again"
            );
        }
    }

    /// The current failure, if the last token request failed (for `/readyz`).
    pub fn failing(&self) -> Option<TokenFailure> {
        if !self.failing.load(Ordering::Acquire) {
            return None;
        }
        let failure = self.failure.lock().unwrap_or_else(|p| p.into_inner());
        failure.as_ref().map(|(_, failure)| failure.clone())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn granted(lifetime: u64) -> Granted {
        Granted {
            header: HeaderValue::from_static("Bearer t"),
            lifetime: Duration::from_secs(lifetime),
        }
    }

    #[test]
    fn a_refused_callers_token_loses_its_exchanged_token_at_once() {
        let refused = TokenFailure::Refused {
            error: "invalid_request".into(),
        };
        let slot = TokenSlot::for_caller(TokenKey::new("https://inventory", &[]));
        slot.keep(granted(100), "inventory");
        let old = slot.usable(Instant::now());
        assert!(old.is_some());
        assert_eq!(
            slot.or_usable(old.clone(), refused.clone()),
            Err(refused.clone())
        );
        slot.remember(&refused, "inventory");
        assert!(slot.usable(Instant::now()).is_none());
        // An outage is no verdict on the caller: the unexpired token is still sent.
        assert_eq!(
            slot.or_usable(old.clone(), TokenFailure::Timeout).unwrap(),
            "Bearer t"
        );
        // The pod's own token is kept through a refusal until it expires, as before.
        let own = TokenSlot::new(TokenKey::new("https://orders", &[]));
        own.keep(granted(100), "orders");
        own.remember(&refused, "orders");
        assert!(own.usable(Instant::now()).is_some());
        assert_eq!(own.or_usable(old, refused).unwrap(), "Bearer t");
    }

    #[test]
    fn a_token_is_renewed_a_tenth_of_its_life_early_a_minute_at_most() {
        let secs = Duration::from_secs;
        assert_eq!(fresh_for(secs(600)), secs(540));
        assert_eq!(fresh_for(secs(3600)), secs(3540));
        assert_eq!(fresh_for(secs(86_400)), secs(86_340));
        assert_eq!(fresh_for(secs(2)), Duration::from_millis(1800));
        assert_eq!(fresh_for(Duration::ZERO), Duration::ZERO);
    }

    #[test]
    fn a_fresh_token_is_served_until_its_renewal_time() {
        let slot = TokenSlot::new(TokenKey::new("https://orders", &[]));
        assert!(slot.fresh(Instant::now()).is_none());
        let header = slot.keep(
            Granted {
                header: HeaderValue::from_static("Bearer t"),
                lifetime: Duration::from_secs(100),
            },
            "orders",
        );
        assert_eq!(header, "Bearer t");
        let start = Instant::now();
        assert_eq!(slot.fresh(start).unwrap(), "Bearer t");
        assert!(slot.fresh(start + Duration::from_secs(89)).is_some());
        assert!(slot.fresh(start + Duration::from_secs(90)).is_none());
        assert!(slot.usable(start + Duration::from_secs(99)).is_some());
        assert!(slot.usable(start + Duration::from_secs(100)).is_none());
    }

    #[test]
    fn a_failure_is_remembered_for_a_second() {
        let slot = TokenSlot::new(TokenKey::new("https://orders", &[]));
        slot.remember(&TokenFailure::Timeout, "orders");
        let start = Instant::now();
        assert_eq!(slot.remembered(start), Some(TokenFailure::Timeout));
        assert_eq!(slot.failing(), Some(TokenFailure::Timeout));
        assert_eq!(slot.remembered(start + FAILURE_MEMORY), None);
        slot.keep(
            Granted {
                header: HeaderValue::from_static("Bearer t"),
                lifetime: Duration::from_secs(100),
            },
            "orders",
        );
        assert_eq!(slot.failing(), None);
        assert_eq!(slot.remembered(start), None);
    }
}
