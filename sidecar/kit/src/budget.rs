//! Rate budgets (GCRA) and the interface of a store that keeps them: per-route rate limits
//! of the verifier and the issuer's endpoint limits spend them, in this process or, with the
//! issuer's Redis store, shared by every replica.

use std::future::Future;
use std::pin::Pin;

use serde::{Deserialize, Serialize};

/// What a store operation returns.
pub type StoreFuture<'a, T> = Pin<Box<dyn Future<Output = Result<T, StoreError>> + Send + 'a>>;

/// Why the store could not answer. The issuer answers `temporarily_unavailable`.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The backing service is unreachable or refused the command.
    #[error("store unavailable")]
    Unavailable(#[source] Box<dyn std::error::Error + Send + Sync>),
    /// The store holds data this issuer cannot read.
    #[error("store holds unreadable data")]
    Corrupt,
}

/// A rate budget: `requests` per `period_ms`, in bursts up to `requests` (GCRA).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Budget {
    /// Requests per period.
    pub requests: u32,
    /// The period in milliseconds.
    pub period_ms: u64,
}

impl Budget {
    /// `requests` per `secs` seconds.
    pub const fn per_secs(requests: u32, secs: u64) -> Budget {
        Budget {
            requests,
            period_ms: secs * 1000,
        }
    }

    /// The time one request takes of the budget, in milliseconds (at least 1).
    pub fn emission_ms(self) -> u64 {
        (self.period_ms / u64::from(self.requests.max(1))).max(1)
    }
}

/// How a rate operation treats its budgets.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RateOp {
    /// Only tell whether every budget has room.
    Check,
    /// Spend one request of every budget if all have room, else none.
    Admit,
    /// Spend one request of each budget that has room; report any that had none.
    Spend,
}

/// The GCRA decision for one budget: `Ok(new_tat)` or `Err(retry_after_secs)`. Times are
/// milliseconds; `tat` is the budget's theoretical arrival time (`None`: never used).
pub fn gcra(tat: Option<u64>, now_ms: u64, budget: Budget) -> Result<u64, u64> {
    let emission = budget.emission_ms();
    let next = tat.unwrap_or(now_ms).max(now_ms) + emission;
    if next - now_ms <= budget.period_ms {
        Ok(next)
    } else {
        Err((next - now_ms - budget.period_ms).div_ceil(1000).max(1))
    }
}

/// Budgets kept where every replica sees them (the issuer's store).
pub trait RateStore: Send + Sync {
    /// Applies `op` to the budgets named by `keys` at the store's clock.
    fn rate<'a>(
        &'a self,
        op: RateOp,
        keys: &'a [(String, Budget)],
    ) -> StoreFuture<'a, Result<(), u64>>;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn gcra_allows_a_burst_then_refuses_with_retry_after() {
        let budget = Budget::per_secs(3, 60);
        let mut tat = None;
        for _ in 0..3 {
            tat = Some(gcra(tat, 1_000_000, budget).unwrap());
        }
        assert_eq!(gcra(tat, 1_000_000, budget), Err(20));
        assert!(gcra(tat, 1_020_000, budget).is_ok());
    }
}
