//! A client that keeps calling `orders` with fresh tokens while keys rotate, counting accepted
//! requests by the key that signed their token.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::thread::JoinHandle;
use std::time::Duration;

use super::Shop;
use super::describe::{challenge_of, peek};

/// Requests accepted, by the key id of the token they carried.
type AcceptedByKid = Arc<Mutex<BTreeMap<String, u32>>>;

/// The accounting client calling `GET /orders` ten times a second, with a fresh token every fifth
/// call, until [`Load::stop`].
pub struct Load {
    stop: Arc<AtomicBool>,
    accepted: AcceptedByKid,
    thread: JoinHandle<Vec<String>>,
}

impl Load {
    /// Starts calling. With `mint_failures_count` false, a token the issuer refuses to mint
    /// (while no key may sign) is not a rejected request; an issued token that fails always is.
    pub fn start(shop: Arc<Shop>, mint_failures_count: bool) -> Self {
        let stop = Arc::new(AtomicBool::new(false));
        let accepted = AcceptedByKid::default();
        let thread = {
            let (stop, accepted) = (stop.clone(), accepted.clone());
            std::thread::spawn(move || call(&shop, &stop, &accepted, mint_failures_count))
        };
        Self {
            stop,
            accepted,
            thread,
        }
    }

    /// Requests accepted so far with tokens signed by `kid`.
    pub fn accepted_with(&self, kid: &str) -> u32 {
        self.accepted().get(kid).copied().unwrap_or_default()
    }

    /// Requests accepted so far, by key id.
    pub fn accepted(&self) -> BTreeMap<String, u32> {
        self.accepted
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    /// Stops calling; returns the requests accepted, by key id, and every rejected request,
    /// described.
    pub async fn stop(self) -> anyhow::Result<(BTreeMap<String, u32>, Vec<String>)> {
        self.stop.store(true, Ordering::Relaxed);
        let thread = self.thread;
        let rejected = tokio::task::spawn_blocking(move || thread.join())
            .await?
            .map_err(|_| anyhow::anyhow!("the load thread panicked"))?;
        let accepted = self
            .accepted
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone();
        Ok((accepted, rejected))
    }
}

fn call(
    shop: &Shop,
    stop: &AtomicBool,
    accepted: &AcceptedByKid,
    mint_failures_count: bool,
) -> Vec<String> {
    let kid_of = |token: &str| {
        peek(token)
            .map(|(header, _)| header["kid"].as_str().unwrap_or_default().to_owned())
            .unwrap_or_default()
    };
    let mut rejected = Vec::new();
    let mut token = shop.accounting_token(None);
    let mut i = 0u32;
    while !stop.load(Ordering::Relaxed) {
        if i.is_multiple_of(5) {
            token = shop.accounting_token(None);
        }
        match token
            .as_deref()
            .map(|t| (t, shop.orders("GET", "/orders", Some(t))))
        {
            Ok((t, Ok(r))) if r.status == 200 => {
                let mut counts = accepted.lock().unwrap_or_else(PoisonError::into_inner);
                *counts.entry(kid_of(t)).or_default() += 1;
            }
            Ok((t, Ok(r))) => rejected.push(format!(
                "{} {} for a token of {}",
                r.status,
                challenge_of(&r),
                kid_of(t)
            )),
            Ok((_, Err(err))) => rejected.push(err.to_string()),
            Err(err) if mint_failures_count => rejected.push(format!("no token: {err}")),
            Err(_) => {}
        }
        i += 1;
        std::thread::sleep(Duration::from_millis(100));
    }
    rejected
}
