//! Rate limits of the issuer's endpoints: per client address and per client_id, with
//! failures counted apart from successes, so that nobody can exhaust a client's budget by
//! failing on its behalf. An address that keeps failing is stopped before any work; a
//! client_id whose failure budget is spent gets 429 for further failures (its correct
//! requests still pass). Budgets live in the store, so replicas sharing Redis share them.

use std::net::IpAddr;

use scopegate_verifier::rate_limit::RateKey;
use serde::{Deserialize, Serialize};

use crate::error::OAuthError;
use crate::store::{Budget, RateOp, Store};

/// The budgets of each endpoint.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq)]
#[serde(rename_all = "camelCase", default)]
pub struct EndpointLimits {
    /// Successful requests per client_id (a client that authenticated; never at
    /// `/oauth2/authorize`, where anyone can name any client).
    pub client: Budget,
    /// Successful requests per client address.
    pub address: Budget,
    /// Failed requests per confidential client_id; also the failures one address may have
    /// naming one client before its slow secret checks stop.
    pub failed_client: Budget,
    /// Failed requests per client address.
    pub failed_address: Budget,
}

impl Default for EndpointLimits {
    fn default() -> Self {
        EndpointLimits {
            client: Budget::per_secs(1200, 60),
            address: Budget::per_secs(2400, 60),
            failed_client: Budget::per_secs(30, 60),
            failed_address: Budget::per_secs(60, 60),
        }
    }
}

/// The endpoints with budgets of their own.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Endpoint {
    /// `/oauth2/token`.
    Token,
    /// `/oauth2/authorize`.
    Authorize,
    /// `/oauth2/introspect`.
    Introspect,
    /// `/oauth2/revoke`.
    Revoke,
}

impl Endpoint {
    pub(crate) fn name(self) -> &'static str {
        match self {
            Endpoint::Token => "token",
            Endpoint::Authorize => "authorize",
            Endpoint::Introspect => "introspect",
            Endpoint::Revoke => "revoke",
        }
    }
}

/// How a caller's address is named in the store: IPv4 by address, IPv6 by its /64.
pub fn address_key(ip: IpAddr) -> String {
    match RateKey::address(ip) {
        RateKey::V4(v) => format!("4:{v:08x}"),
        RateKey::V6(v) => format!("6:{v:016x}"),
        RateKey::Subject(s) => format!("s:{s}"),
    }
}

/// The budgets one request is counted under.
pub struct Limiter<'a> {
    store: &'a dyn Store,
    limits: EndpointLimits,
    endpoint: Endpoint,
    address: String,
}

impl<'a> Limiter<'a> {
    /// The limiter of a request from `ip` (IPv6 grouped by /64).
    pub fn new(
        store: &'a dyn Store,
        limits: EndpointLimits,
        endpoint: Endpoint,
        ip: IpAddr,
    ) -> Self {
        Limiter {
            store,
            limits,
            endpoint,
            address: address_key(ip),
        }
    }

    fn key(&self, kind: &str, id: &str) -> String {
        format!("{}:{kind}:{id}", self.endpoint.name())
    }

    /// Before any work: refuses an address whose failure budget is spent.
    pub async fn before(&self) -> Result<(), OAuthError> {
        let keys = [(self.key("fa", &self.address), self.limits.failed_address)];
        self.store
            .rate(RateOp::Check, &keys)
            .await?
            .map_err(OAuthError::RateLimited)
    }

    /// Spends one success of the address: first of all for an unauthenticated request
    /// (`/oauth2/authorize`), and all a public client's request spends.
    pub async fn admit_address(&self) -> Result<(), OAuthError> {
        let keys = [(self.key("a", &self.address), self.limits.address)];
        self.store
            .rate(RateOp::Admit, &keys)
            .await?
            .map_err(OAuthError::RateLimited)
    }

    /// The key of this address's failures naming `client_id`.
    fn pair_key(&self, client_id: &str) -> String {
        self.key("fp", &format!("{}:{client_id}", self.address))
    }

    /// Before work that a stranger could make the issuer do in a client's name (a slow hash):
    /// refuses when the failures of this address naming `client_id` have spent their budget
    /// (`failed_client`). Never the client's own failure budget: strangers' wrong guesses
    /// would then lock the client out of every replica that has not cached its secret. A
    /// refused attempt counts as a failure of the address.
    pub async fn failures_left(&self, client_id: &str) -> Result<(), OAuthError> {
        let keys = [(self.pair_key(client_id), self.limits.failed_client)];
        let Err(secs) = self.store.rate(RateOp::Check, &keys).await? else {
            return Ok(());
        };
        let address = [(self.key("fa", &self.address), self.limits.failed_address)];
        self.store.rate(RateOp::Spend, &address).await?.ok();
        Err(OAuthError::RateLimited(secs))
    }

    /// Once the client is known: spends one success of the address and of the client (all
    /// or nothing).
    pub async fn admit(&self, client_id: &str) -> Result<(), OAuthError> {
        let keys = [
            (self.key("a", &self.address), self.limits.address),
            (self.key("c", client_id), self.limits.client),
        ];
        self.store
            .rate(RateOp::Admit, &keys)
            .await?
            .map_err(OAuthError::RateLimited)
    }

    /// After a failure: counts it for the address and, when `client_id` is given, for that
    /// client and for this address's failures naming it. Pass `None` for a public client: its
    /// `client_id` is all anyone shows, so a budget in its name would be one strangers spend
    /// for its users. Returns the answer to send: the failure itself, or 429 when a failure
    /// budget was already spent.
    pub async fn failed(&self, client_id: Option<&str>, error: OAuthError) -> OAuthError {
        if !error.is_failure() {
            return error;
        }
        let mut keys = vec![(self.key("fa", &self.address), self.limits.failed_address)];
        if let Some(id) = client_id {
            keys.push((self.key("fc", id), self.limits.failed_client));
            keys.push((self.pair_key(id), self.limits.failed_client));
        }
        match self.store.rate(RateOp::Spend, &keys).await {
            Ok(Err(secs)) => OAuthError::RateLimited(secs),
            Ok(Ok(())) => error,
            Err(err) => OAuthError::from(err),
        }
    }
}
