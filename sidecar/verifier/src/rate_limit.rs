//! Per-route rate limits (GCRA: `requests` per `period`, bursts up to `requests`), in memory
//! or, in issuer pods with a Redis store, in Redis shared by the replicas. Failures and successes have separate budgets: failures always count against
//! the client address, successes against the subject or the address as configured, so that
//! nobody can exhaust a victim's budget by failing on its behalf.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

pub use scopegate_core::check::RateLimitError;
use scopegate_core::config::{RateLimitConfig, RateLimitKey};
use scopegate_core::policy::Matcher;

use scopegate_sidecar_kit::budget::{self as shared_store, RateOp, RateStore};

/// Keys kept per budget before expired ones are pruned (and, past that, the oldest dropped).
const MAX_KEYS: usize = 65_536;

/// What a budget is kept for.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum RateKey {
    /// An IPv4 client.
    V4(u32),
    /// An IPv6 client's /64.
    V6(u64),
    /// A token's subject.
    Subject(Box<str>),
}

impl RateKey {
    /// The key of a client address (IPv6 grouped by /64).
    pub fn address(ip: IpAddr) -> RateKey {
        match ip {
            IpAddr::V4(v4) => RateKey::V4(u32::from(v4)),
            IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
                Some(v4) => RateKey::V4(u32::from(v4)),
                None => RateKey::V6((u128::from(v6) >> 64) as u64),
            },
        }
    }
}

/// One configured limit with its two budgets.
#[derive(Debug)]
pub struct RateLimit {
    /// The configured limit (a reload with the same limit keeps its budgets).
    pub config: RateLimitConfig,
    matcher: Matcher,
    /// What successes are keyed by.
    pub key: RateLimitKey,
    emission: Duration,
    period: Duration,
    failures: Mutex<Budget>,
    successes: Mutex<Budget>,
}

#[derive(Debug, Default)]
struct Budget {
    /// Theoretical arrival time per key, as an offset from the limiter's epoch.
    tat: HashMap<RateKey, Duration>,
}

/// Which budget a request belongs to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Class {
    /// Refused for credentials (401/403), by the sidecar or the app.
    Failure,
    /// Anything else.
    Success,
}

impl RateLimit {
    /// Compiles a configured limit.
    pub fn compile(config: &RateLimitConfig) -> Result<RateLimit, RateLimitError> {
        let matcher = scopegate_core::check::rate_limit(config)?;
        let period = Duration::from_secs(config.period_secs);
        Ok(RateLimit {
            config: config.clone(),
            matcher,
            key: config.key,
            emission: period / config.requests,
            period,
            failures: Mutex::default(),
            successes: Mutex::default(),
        })
    }

    /// Whether the limit applies to a request (the route path of a
    /// [`scopegate_core::path::RequestPath`]).
    pub fn applies(&self, method: &str, path: &str) -> bool {
        self.matcher.matches(method, path)
    }

    /// `Err(seconds)` when the budget of `class` for `key` is exhausted at `now`.
    pub fn check(&self, class: Class, key: &RateKey, now: Duration) -> Result<(), u64> {
        let budget = self.budget(class);
        let tat = budget.tat.get(key).copied().unwrap_or(now);
        let allowed_until = now + self.period - self.emission;
        if tat <= allowed_until {
            Ok(())
        } else {
            Err((tat - allowed_until).as_secs_f64().ceil().max(1.0) as u64)
        }
    }

    /// Spends one request of `class` for `key` at `now`.
    pub fn record(&self, class: Class, key: RateKey, now: Duration) {
        let mut budget = self.budget(class);
        if budget.tat.len() >= MAX_KEYS && !budget.tat.contains_key(&key) {
            budget.tat.retain(|_, tat| *tat > now);
            if budget.tat.len() >= MAX_KEYS {
                // Under a flood of distinct keys, forget one budget rather than grow.
                let victim = budget.tat.keys().next().cloned();
                if let Some(victim) = victim {
                    budget.tat.remove(&victim);
                }
            }
        }
        let tat = budget.tat.entry(key).or_insert(now);
        *tat = (*tat).max(now) + self.emission;
    }

    fn budget(&self, class: Class) -> std::sync::MutexGuard<'_, Budget> {
        let lock = match class {
            Class::Failure => &self.failures,
            Class::Success => &self.successes,
        };
        // A panic while holding the lock cannot leave a budget inconsistent: use it anyway.
        lock.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

/// The limits that apply to one request and the keys it is counted under.
///
/// Address-keyed limits count every request against the client address: a client that keeps
/// failing is stopped before any work. Subject-keyed limits count a verified token's successes
/// against its subject and every failure against the address, so failing on a victim's behalf
/// never spends the victim's budget.
///
/// Budgets live in this process, or in the issuer's shared store (Redis) when one is given,
/// so that every replica of an issuer pod counts against the same budgets. A store that
/// cannot answer lets the request pass (a rate limit fails open) and says so in the log.
pub struct RequestLimits {
    limits: Vec<Arc<RateLimit>>,
    address: Option<RateKey>,
    now: Duration,
    shared: Option<Arc<dyn RateStore>>,
}

fn key_text(key: &RateKey) -> String {
    match key {
        RateKey::V4(v) => format!("4:{v:08x}"),
        RateKey::V6(v) => format!("6:{v:016x}"),
        RateKey::Subject(s) => format!("s:{s}"),
    }
}

impl RequestLimits {
    /// The limits of `all` that apply to the request; `client` names the client address and
    /// is asked only when a limit applies; `shared` keeps the budgets in a store instead.
    pub fn new(
        all: &[Arc<RateLimit>],
        method: &str,
        path: &str,
        now: Duration,
        client: impl FnOnce() -> IpAddr,
        shared: Option<Arc<dyn RateStore>>,
    ) -> RequestLimits {
        let limits: Vec<Arc<RateLimit>> = all
            .iter()
            .filter(|l| l.applies(method, path))
            .cloned()
            .collect();
        let address = (!limits.is_empty()).then(|| RateKey::address(client()));
        RequestLimits {
            limits,
            address,
            now,
            shared,
        }
    }

    fn with_address(&self) -> impl Iterator<Item = (&RateLimit, &RateKey)> {
        self.limits
            .iter()
            .filter_map(|l| self.address.as_ref().map(|a| (l.as_ref(), a)))
    }

    fn shared_key(
        limit: &RateLimit,
        class: Class,
        key: &RateKey,
    ) -> (String, shared_store::Budget) {
        let class = match class {
            Class::Failure => "f",
            Class::Success => "s",
        };
        let budget = shared_store::Budget {
            requests: limit.config.requests,
            period_ms: limit.period.as_millis().try_into().unwrap_or(u64::MAX),
        };
        (
            format!("route:{}:{class}:{}", limit.config.name, key_text(key)),
            budget,
        )
    }

    async fn check(&self, limit: &RateLimit, class: Class, key: &RateKey) -> Result<(), u64> {
        let Some(store) = &self.shared else {
            return limit.check(class, key, self.now);
        };
        let keys = [Self::shared_key(limit, class, key)];
        match store.rate(RateOp::Check, &keys).await {
            Ok(verdict) => verdict,
            Err(err) => {
                tracing::warn!(error = %err, "rate-limit store unavailable; letting the request pass");
                Ok(())
            }
        }
    }

    async fn record(&self, limit: &RateLimit, class: Class, key: RateKey) {
        let Some(store) = &self.shared else {
            return limit.record(class, key, self.now);
        };
        let keys = [Self::shared_key(limit, class, &key)];
        if let Err(err) = store.rate(RateOp::Spend, &keys).await {
            tracing::warn!(error = %err, "rate-limit store unavailable; request not counted");
        }
    }

    /// Before authentication: the address budgets of address-keyed limits.
    pub async fn check_address(&self) -> Result<(), u64> {
        for (limit, address) in self.with_address() {
            if limit.key == RateLimitKey::ClientAddress {
                self.check(limit, Class::Failure, address).await?;
                self.check(limit, Class::Success, address).await?;
            }
        }
        Ok(())
    }

    /// The sidecar refused the credentials: counts a failure for the address; `Err` when a
    /// subject-keyed limit's failure budget was already spent (answer 429, not 401).
    pub async fn refused(&self) -> Result<(), u64> {
        let mut verdict = Ok(());
        for (limit, address) in self.with_address() {
            let spent = match limit.key {
                RateLimitKey::Subject => self.check(limit, Class::Failure, address).await,
                RateLimitKey::ClientAddress => Ok(()),
            };
            match spent {
                Ok(()) => self.record(limit, Class::Failure, address.clone()).await,
                Err(secs) => verdict = verdict.and(Err(secs)),
            }
        }
        verdict
    }

    /// Before forwarding: subject-keyed budgets, for the verified subject, or for the address
    /// (both classes) when the route took no token.
    pub async fn check_subject(&self, verified: bool, subject: Option<&str>) -> Result<(), u64> {
        for (limit, address) in self.with_address() {
            if limit.key != RateLimitKey::Subject {
                continue;
            }
            let key = self.success_key(limit, subject, address);
            self.check(limit, Class::Success, &key).await?;
            if !verified {
                self.check(limit, Class::Failure, address).await?;
            }
        }
        Ok(())
    }

    /// After the app answered: a 401/403 counts as a failure of the address, anything else as
    /// a success of the subject or address.
    pub async fn answered(&self, failed: bool, subject: Option<&str>) {
        for (limit, address) in self.with_address() {
            if failed {
                self.record(limit, Class::Failure, address.clone()).await;
            } else {
                let key = self.success_key(limit, subject, address);
                self.record(limit, Class::Success, key).await;
            }
        }
    }

    fn success_key(&self, limit: &RateLimit, subject: Option<&str>, address: &RateKey) -> RateKey {
        match (limit.key, subject) {
            (RateLimitKey::Subject, Some(sub)) => RateKey::Subject(sub.into()),
            _ => address.clone(),
        }
    }
}

/// Monotonic time for rate limits, as an offset from a fixed start.
#[derive(Debug, Clone, Copy)]
pub struct Clock(Instant);

impl Clock {
    /// Starts the clock.
    pub fn start() -> Clock {
        Clock(Instant::now())
    }

    /// Time since start.
    pub fn now(&self) -> Duration {
        self.0.elapsed()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn limit(requests: u32, period: u64) -> RateLimit {
        RateLimit::compile(&RateLimitConfig {
            name: "login".into(),
            methods: vec!["POST".into()],
            paths: vec!["/login".into()],
            key: RateLimitKey::ClientAddress,
            requests,
            period_secs: period,
        })
        .unwrap()
    }

    #[test]
    fn allows_a_burst_then_refuses_with_retry_after() {
        let l = limit(5, 900);
        let key = RateKey::address("1.2.3.4".parse().unwrap());
        let t = Duration::from_secs(1000);
        for _ in 0..5 {
            assert_eq!(l.check(Class::Failure, &key, t), Ok(()));
            l.record(Class::Failure, key.clone(), t);
        }
        assert_eq!(l.check(Class::Failure, &key, t), Err(180));
        assert_eq!(
            l.check(Class::Failure, &key, t + Duration::from_secs(180)),
            Ok(())
        );
        // Successes and other clients have budgets of their own.
        assert_eq!(l.check(Class::Success, &key, t), Ok(()));
        let other = RateKey::address("1.2.3.5".parse().unwrap());
        assert_eq!(l.check(Class::Failure, &other, t), Ok(()));
    }

    #[test]
    fn ipv6_is_grouped_by_64() {
        let a = RateKey::address("2001:db8:1:2::1".parse().unwrap());
        let b = RateKey::address("2001:db8:1:2:ffff::9".parse().unwrap());
        let c = RateKey::address("2001:db8:1:3::1".parse().unwrap());
        assert_eq!(a, b);
        assert_ne!(a, c);
        assert_eq!(
            RateKey::address("::ffff:1.2.3.4".parse().unwrap()),
            RateKey::address("1.2.3.4".parse().unwrap())
        );
    }

    #[test]
    fn applies_by_method_and_path() {
        let l = limit(1, 1);
        assert!(l.applies("POST", "/login"));
        assert!(l.applies("POST", "/login/"), "the trailing-slash spelling");
        assert!(l.applies("POST", "/Login"), "another case");
        assert!(!l.applies("GET", "/login"));
        assert!(!l.applies("POST", "/login/x"));
    }
}
