//! How many codes the callback may see refused at the issuer. A callback needs nothing but a
//! login cookie and its `state`, which anyone gets by asking for a session page, so without a
//! budget anyone could make the sidecar present made-up codes to the issuer as fast as they
//! like. The issuer counts those failures against the pod's address (and against the pod's
//! address naming the client), and once that budget is spent it stops every token request of
//! the pod: every user's refresh and login. The sidecar therefore keeps its own, smaller
//! budget of refused codes: per client address (so one address cannot spend it for everyone)
//! and in all (so many addresses together leave the issuer's budget for the refreshes).

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::Mutex;
use std::time::Instant;

/// Refused codes one client address may cause a minute (IPv6 by its /64).
pub const PER_ADDRESS_PER_MINUTE: f64 = 5.0;

/// Refused codes all addresses together may cause a minute: half the issuer's default
/// budget of failures per address naming one client (30 a minute), so that the pod's
/// refreshes keep the other half.
pub const IN_ALL_PER_MINUTE: f64 = 15.0;

/// Most addresses followed; beyond them the budget in all still holds.
pub const MAX_ADDRESSES: usize = 4096;

/// A budget refilled at `per_minute`, up to `per_minute`.
#[derive(Debug, Clone, Copy)]
struct Bucket {
    left: f64,
    at: Instant,
}

impl Bucket {
    fn full(now: Instant, per_minute: f64) -> Bucket {
        Bucket {
            left: per_minute,
            at: now,
        }
    }

    /// What would be left at `now`, this bucket unchanged.
    fn left_at(self, now: Instant, per_minute: f64) -> f64 {
        let mut copy = self;
        copy.refill(now, per_minute)
    }

    /// What is left at `now`.
    fn refill(&mut self, now: Instant, per_minute: f64) -> f64 {
        let secs = now.saturating_duration_since(self.at).as_secs_f64();
        self.left = (self.left + secs * per_minute / 60.0).min(per_minute);
        self.at = now;
        self.left
    }
}

/// The callback's budget of refused codes.
#[derive(Debug)]
pub struct CodeBudget {
    addresses: Mutex<HashMap<u128, Bucket>>,
    in_all: Mutex<Bucket>,
}

impl Default for CodeBudget {
    fn default() -> Self {
        CodeBudget {
            addresses: Mutex::default(),
            in_all: Mutex::new(Bucket::full(Instant::now(), IN_ALL_PER_MINUTE)),
        }
    }
}

/// Why a code is not presented to the issuer now.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum Spent {
    /// This client address had its share of refused codes.
    #[error("too many refused codes from this address")]
    Address,
    /// All addresses together had theirs.
    #[error("too many refused codes in all")]
    InAll,
}

/// The key of an address: IPv4 (and IPv4-mapped IPv6) by address, IPv6 by its /64.
fn key_of(ip: IpAddr) -> u128 {
    match ip {
        IpAddr::V4(v4) => u128::from(u32::from(v4)),
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => u128::from(u32::from(v4)),
            None => (u128::from(v6) >> 64) | (1 << 64),
        },
    }
}

impl CodeBudget {
    /// Whether a code from `client` may be presented to the issuer now.
    pub fn check(&self, client: IpAddr) -> Result<(), Spent> {
        let now = Instant::now();
        let in_all = self.in_all.lock().unwrap_or_else(|p| p.into_inner());
        if in_all.left_at(now, IN_ALL_PER_MINUTE) < 1.0 {
            return Err(Spent::InAll);
        }
        drop(in_all);
        let addresses = self.addresses.lock().unwrap_or_else(|p| p.into_inner());
        match addresses.get(&key_of(client)) {
            Some(bucket) if bucket.left_at(now, PER_ADDRESS_PER_MINUTE) < 1.0 => {
                Err(Spent::Address)
            }
            _ => Ok(()),
        }
    }

    /// Counts a code of `client` the issuer refused.
    pub fn refused(&self, client: IpAddr) {
        let now = Instant::now();
        {
            let mut in_all = self.in_all.lock().unwrap_or_else(|p| p.into_inner());
            in_all.refill(now, IN_ALL_PER_MINUTE);
            in_all.left = (in_all.left - 1.0).max(0.0);
        }
        let mut addresses = self.addresses.lock().unwrap_or_else(|p| p.into_inner());
        let key = key_of(client);
        if !addresses.contains_key(&key) && addresses.len() >= MAX_ADDRESSES {
            // Forget the addresses whose budget is whole again; still full, follow no more.
            addresses.retain(|_, b| b.refill(now, PER_ADDRESS_PER_MINUTE) < PER_ADDRESS_PER_MINUTE);
            if addresses.len() >= MAX_ADDRESSES {
                return;
            }
        }
        let bucket = addresses
            .entry(key)
            .or_insert_with(|| Bucket::full(now, PER_ADDRESS_PER_MINUTE));
        bucket.refill(now, PER_ADDRESS_PER_MINUTE);
        bucket.left = (bucket.left - 1.0).max(0.0);
    }

    /// Addresses followed now.
    pub fn len(&self) -> usize {
        self.addresses
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .len()
    }

    /// Whether none is followed.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn v4(n: u32) -> IpAddr {
        IpAddr::V4(n.into())
    }

    #[test]
    fn an_address_has_its_share_and_all_of_them_theirs() {
        let budget = CodeBudget::default();
        let one = v4(1);
        for _ in 0..5 {
            assert_eq!(budget.check(one), Ok(()));
            budget.refused(one);
        }
        assert_eq!(budget.check(one), Err(Spent::Address));
        // The same /64 is one address; another address still has its share.
        let a: IpAddr = "2001:db8::1".parse().unwrap();
        let b: IpAddr = "2001:db8::2:3".parse().unwrap();
        for _ in 0..5 {
            budget.refused(a);
        }
        assert_eq!(budget.check(b), Err(Spent::Address));
        assert_eq!(budget.check(v4(2)), Ok(()));
        // Many addresses, a few refusals each: the budget in all ends it for everyone.
        for n in 3..8 {
            budget.refused(v4(n));
        }
        assert_eq!(budget.check(v4(100)), Err(Spent::InAll));
    }

    #[test]
    fn the_addresses_followed_are_bounded() {
        let budget = CodeBudget::default();
        for n in 0..(MAX_ADDRESSES as u32 + 10) {
            budget.refused(v4(n));
        }
        assert!(budget.len() <= MAX_ADDRESSES);
    }
}
