//! The issuer role: an OAuth2 authorization server in the pods of an `issuer.self` policy.
//!
//! [`IssuerSettings`] is compiled with every config load (signing keys parsed once, the client
//! registry, cut-offs); [`Issuer`] is the state that outlives reloads (the store, the
//! slow-hash cache, the feed's news channel, the tuning). [`handle`] answers the issuer's
//! endpoints on the sidecar's listener; everything else goes on to the proxy.

pub mod access;
pub mod assertion;
pub mod authorize;
pub mod client_request;
pub mod clients;
pub mod codes;
pub mod counters;
pub mod error;
pub mod exchange;
pub mod feed;
pub mod form;
pub mod grant;
pub mod introspect;
pub mod keys;
pub mod limits;
pub mod login;
pub mod metadata;
pub mod mint;
pub mod ops;
pub mod refresh;
pub mod reply;
pub mod revoke;
pub mod role;
pub mod store;
pub mod token;
pub mod upstream;

use std::collections::{BTreeMap, HashMap};
use std::net::IpAddr;
use std::sync::Arc;
use std::time::Duration;

use arc_swap::ArcSwapOption;
use aws_lc_rs::rand::SystemRandom;
use http::{Request, Response};
use hyper::body::Incoming;
use scopegate_core::clients::ClientRegistry;
use scopegate_core::config::{IssuerConfig, SidecarConfig, StoreConfig};
use scopegate_sidecar_kit::body::ProxyBody;
use serde::{Deserialize, Serialize};
use tokio::sync::watch;

use self::assertion::ServiceAccountVerifier;
use self::clients::{LoadedClient, SlowCache};
use self::keys::{KeySet, SigningKeyError};
use self::limits::EndpointLimits;
use self::store::memory::MemoryStore;
use self::store::redis::{RedisSetupError, RedisStore, RedisTarget};
use self::store::{Budget, Store};

/// A random base64url string of `bytes` bytes from the system CSPRNG.
pub fn random_token(bytes: usize) -> String {
    let mut buf = vec![0u8; bytes];
    // aws-lc-rs' fill only fails when the OS has no randomness, where nothing is safe; the
    // zeros then make every artifact collide and every lookup fail closed.
    let _ = aws_lc_rs::rand::fill(&mut buf);
    scopegate_core::jose::b64::encode(&buf)
}

/// Tunables of the issuer that the config document does not carry (flags of the binary).
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
#[serde(rename_all = "camelCase", default)]
pub struct IssuerTuning {
    /// Rate limits of the token, authorize, introspect and revoke endpoints.
    pub limits: EndpointLimits,
    /// How long the refresh token just rotated may still be presented (a concurrent or
    /// lost-response retry), in milliseconds.
    pub refresh_grace_ms: u64,
    /// Requests the mint socket takes.
    pub mint: Budget,
    /// How often a Redis store is asked for feed news from other replicas, in milliseconds.
    pub feed_poll_ms: u64,
    /// How long one upstream login's provider calls may take together, in milliseconds (each
    /// request has its own 10 s limit; a GitHub login makes many).
    pub login_deadline_ms: u64,
    /// Slow (argon2) client-secret checks run at once, on blocking threads.
    pub slow_hash_concurrency: usize,
    /// How long a client authentication waits for a slow-check slot before 503, in
    /// milliseconds.
    pub slow_hash_wait_ms: u64,
    /// How long a client may take to send a whole request body to an issuer endpoint or the
    /// mint socket, in milliseconds (408 after that).
    pub body_deadline_ms: u64,
    /// Most pending logins kept per client and overall (the oldest are evicted).
    pub pending_logins: store::PendingBounds,
}

impl Default for IssuerTuning {
    fn default() -> Self {
        IssuerTuning {
            limits: EndpointLimits::default(),
            refresh_grace_ms: 10_000,
            mint: Budget::per_secs(600, 60),
            feed_poll_ms: 250,
            login_deadline_ms: 20_000,
            slow_hash_concurrency: 2,
            slow_hash_wait_ms: 5_000,
            body_deadline_ms: 10_000,
            pending_logins: store::PendingBounds::default(),
        }
    }
}

/// Why the issuer role's inputs were refused.
#[derive(Debug, thiserror::Error)]
pub enum IssuerError {
    /// The signing-keys document is missing or unusable.
    #[error("issuer signing keys")]
    Keys(#[from] SigningKeyError),
    /// The signing-keys document could not be read.
    #[error("issuer signing keys: the document named by signingKeysPath is unreadable")]
    KeysMissing,
    /// The client registry is missing or does not parse.
    #[error("issuer clients: the registry named by clientsPath is unreadable or invalid")]
    Clients,
    /// The issuer section is refused by the checks the operator runs too.
    #[error(transparent)]
    Check(#[from] scopegate_core::check::CheckError),
}

/// The issuer role compiled from one config load.
pub struct IssuerSettings {
    /// The issuer section as configured.
    pub config: IssuerConfig,
    /// The path of the issuer URL (`""` or `/tenant`): endpoints live under it.
    pub path_prefix: String,
    /// The signing keys.
    pub keys: KeySet,
    /// Clients by id, their secrets' hashes parsed for this load.
    pub clients: HashMap<String, LoadedClient>,
    /// The cluster's service-account issuer and the clients its tokens authenticate,
    /// compiled for this load.
    pub service_accounts: ServiceAccountVerifier,
    /// The verifiers' leeway (capped).
    pub leeway: i64,
    /// How long a refresh family may go unused (`refreshTokenIdle`), in seconds.
    pub refresh_idle: i64,
    /// client_id → cut-off: the config's and the registry's `revokeBefore`, whichever is later.
    pub client_cutoffs: BTreeMap<String, i64>,
    /// The longest lifetime any token of this issuer may have (subject cut-offs last this
    /// long).
    pub max_token_ttl: i64,
    /// client_id → the login choices it may offer (clients not listed: all).
    pub upstream_choices: BTreeMap<String, Vec<String>>,
    /// The path of the browser-facing base URL (`publicUrl`, else `url`).
    pub public_url: String,
    /// The key the revocation feed names subjects under, decoded.
    pub feed_subject_key: Option<Vec<u8>>,
}

impl std::fmt::Debug for IssuerSettings {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("IssuerSettings")
            .field("url", &self.config.url)
            .field("clients", &self.clients.len())
            .finish_non_exhaustive()
    }
}

impl IssuerSettings {
    /// Compiles the issuer role of `config` from the texts of its signing keys and clients.
    pub fn compile(
        config: &SidecarConfig,
        issuer: &IssuerConfig,
        keys_text: Option<&str>,
        clients_text: Option<&str>,
        now: i64,
    ) -> Result<IssuerSettings, IssuerError> {
        scopegate_core::check::issuer(issuer)?;
        let path_prefix = issuer
            .url
            .parse::<http::Uri>()
            .map(|u| u.path().trim_end_matches('/').to_owned())
            .unwrap_or_default();
        let public_url = scopegate_core::check::public_url(issuer);
        let feed_subject_key = issuer
            .feed_subject_key
            .as_deref()
            .and_then(scopegate_core::feed::decode_subject_key);
        let keys = KeySet::load(keys_text.ok_or(IssuerError::KeysMissing)?, now)?;
        let registry: ClientRegistry =
            serde_json::from_str(clients_text.ok_or(IssuerError::Clients)?)
                .map_err(|_| IssuerError::Clients)?;
        let mut client_cutoffs = config.revocation.client_cutoffs.clone();
        let mut clients = HashMap::new();
        for client in registry.clients {
            if let Some(before) = client.revoke_before {
                let slot = client_cutoffs
                    .entry(client.client_id.clone())
                    .or_insert(before);
                *slot = (*slot).max(before);
            }
            clients.insert(client.client_id.clone(), LoadedClient::new(client));
        }
        let leeway = scopegate_core::token::leeway_secs(config.verify.leeway_secs);
        let service_accounts = ServiceAccountVerifier::new(
            issuer.service_account_issuer.as_ref(),
            &issuer.url,
            leeway,
            clients.values().map(LoadedClient::registered),
        );
        let secs = |s: u64| i64::try_from(s).unwrap_or(i64::MAX);
        let max_token_ttl = secs(issuer.access_token_ttl_secs)
            .max(issuer.mint.as_ref().map_or(0, |m| secs(m.max_ttl_secs)));
        Ok(IssuerSettings {
            config: issuer.clone(),
            path_prefix,
            keys,
            clients,
            service_accounts,
            leeway,
            refresh_idle: secs(
                issuer
                    .refresh_token_idle_secs
                    .unwrap_or(issuer.refresh_token_ttl_secs / 2),
            )
            .max(1),
            client_cutoffs,
            max_token_ttl,
            upstream_choices: registry.upstream_choices.clone(),
            public_url,
            feed_subject_key,
        })
    }

    /// Whether a grant made at `issued_at` for `client_id` is dead by a client cut-off.
    pub fn client_cut_off(&self, client_id: &str, issued_at: i64) -> bool {
        self.client_cutoffs
            .get(client_id)
            .is_some_and(|cutoff| issued_at < *cutoff)
    }

    /// An absolute URL of an endpoint path under the issuer.
    pub fn endpoint(&self, path: &str) -> String {
        format!("{}{path}", self.config.url.trim_end_matches('/'))
    }
}

/// Why the issuer's runtime could not be set up.
#[derive(Debug, thiserror::Error)]
pub enum IssuerStartError {
    /// The Redis store is misconfigured.
    #[error("issuer store")]
    Redis(#[from] RedisSetupError),
}

/// The issuer's state that outlives config reloads.
pub struct Issuer {
    /// Codes, families, revocations and rate budgets.
    pub store: Arc<dyn Store>,
    redis: Option<Arc<RedisStore>>,
    /// The store settings this runtime was built for (a change needs a restart).
    pub store_config: StoreConfig,
    /// Successful slow-hash verifications.
    pub slow_cache: SlowCache,
    /// Slots for slow-hash checks ([`IssuerTuning::slow_hash_concurrency`]).
    pub slow_hashes: tokio::sync::Semaphore,
    /// Counters of the defences against spending work or memory for someone else.
    pub counters: counters::Counters,
    /// The CSPRNG for signatures.
    pub rng: SystemRandom,
    /// Bumped whenever the revocation log may have news.
    pub feed_news: watch::Sender<u64>,
    /// Tunables.
    pub tuning: IssuerTuning,
    /// Upstream identity providers: discovery, keys, health and login counters.
    pub upstreams: upstream::Registry,
    /// The settings in force (the mint socket answers with them).
    pub in_force: ArcSwapOption<IssuerSettings>,
}

impl Issuer {
    /// The runtime for the issuer section of the first config.
    pub fn new(
        issuer: &IssuerConfig,
        ca_bundle_pem: Option<&str>,
        tuning: IssuerTuning,
    ) -> Result<Arc<Issuer>, IssuerStartError> {
        let (store, redis): (Arc<dyn Store>, Option<Arc<RedisStore>>) = match &issuer.store {
            StoreConfig::Memory => (Arc::new(MemoryStore::new()), None),
            StoreConfig::Redis {
                address,
                tls,
                credentials_dir,
            } => {
                let redis = Arc::new(RedisStore::new(
                    &issuer.url,
                    RedisTarget {
                        address: address.clone(),
                        tls: *tls,
                        ca_bundle_pem: ca_bundle_pem.map(str::to_owned),
                        credentials_dir: credentials_dir.clone(),
                    },
                )?);
                (redis.clone(), Some(redis))
            }
        };
        Ok(Arc::new(Issuer {
            store,
            redis,
            store_config: issuer.store.clone(),
            slow_cache: SlowCache::default(),
            slow_hashes: tokio::sync::Semaphore::new(tuning.slow_hash_concurrency.max(1)),
            counters: counters::Counters::default(),
            rng: SystemRandom::new(),
            feed_news: watch::channel(0).0,
            tuning,
            upstreams: upstream::Registry::default(),
            in_force: ArcSwapOption::empty(),
        }))
    }

    /// Tells long-polling feed readers to look again.
    pub fn notify_feed(&self) {
        self.feed_news.send_modify(|n| *n = n.wrapping_add(1));
    }

    /// Background work: with Redis, watch the log for entries other replicas append, and
    /// re-read the mounted credentials.
    pub async fn run_background(self: Arc<Self>) {
        let Some(redis) = self.redis.clone() else {
            return;
        };
        let mut last = None;
        let mut ticks = 0u64;
        loop {
            tokio::time::sleep(Duration::from_millis(self.tuning.feed_poll_ms.max(10))).await;
            // The first head seen also wakes the readers: a reader may have started waiting
            // before this loop's first successful read, and an entry another replica appended
            // in between would otherwise wait for the reader's deadline. A wake-up without
            // news only makes readers look again.
            if let Ok(head) = Store::feed_head(&*redis).await
                && last.as_ref() != Some(&head)
            {
                self.notify_feed();
                last = Some(head);
            }
            ticks += 1;
            if ticks.is_multiple_of(20) {
                match redis.refresh_credentials() {
                    Ok(true) => tracing::info!("Redis credentials changed; reconnecting"),
                    Ok(false) => {}
                    Err(err) => tracing::error!(error = %err, "Redis credentials unreadable"),
                }
            }
        }
    }
}

/// The issuer paths this request may be for, after the issuer URL's path prefix (the same
/// function `kubectl scopegate explain` asks).
fn route<'a>(prefix: &str, path: &'a str) -> Option<&'a str> {
    scopegate_core::endpoints::endpoint(prefix, path)
}

/// Whether a request path belongs to the issuer's endpoints.
pub fn is_issuer_path(settings: &IssuerSettings, path: &str) -> bool {
    route(&settings.path_prefix, path).is_some()
}

/// What an endpoint needs of the request besides its parts.
pub struct Context<'a> {
    /// The runtime.
    pub issuer: &'a Issuer,
    /// The compiled settings.
    pub settings: &'a IssuerSettings,
    /// The client address (as `trustedProxies` defines it).
    pub client_ip: IpAddr,
}

/// Answers a request for one of the issuer's endpoints; `path` is the request's normalised
/// (forwarded) path.
pub async fn handle(ctx: Context<'_>, path: &str, req: Request<Incoming>) -> Response<ProxyBody> {
    let Some(endpoint) = route(&ctx.settings.path_prefix, path) else {
        return reply::status(http::StatusCode::NOT_FOUND);
    };
    match endpoint {
        "/oauth2/token" => token::handle(&ctx, req).await,
        "/oauth2/authorize" => authorize::handle(&ctx, req).await,
        "/oauth2/authorize/resume" => authorize::resume(&ctx, req).await,
        "/oauth2/revoke" => revoke::handle(&ctx, req).await,
        "/oauth2/introspect" => introspect::handle(&ctx, req).await,
        "/oauth2/revocations" => feed::handle(&ctx, req).await,
        "/.well-known/jwks.json" => metadata::jwks(&ctx, &req),
        // Not an OpenID provider: no discovery document, and no Bearer challenge for one.
        scopegate_core::endpoints::OPENID_CONFIGURATION => {
            reply::status(http::StatusCode::NOT_FOUND)
        }
        upstream_path if upstream_path.starts_with(upstream::flow::PATH_PREFIX) => {
            upstream::flow::handle(
                &ctx,
                req,
                &upstream_path[upstream::flow::PATH_PREFIX.len()..],
            )
            .await
        }
        _ => metadata::metadata(&ctx, &req),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn routes_under_the_issuer_path() {
        assert_eq!(route("", "/oauth2/token"), Some("/oauth2/token"));
        assert_eq!(route("", "/oauth2/token/"), None);
        assert_eq!(
            route("", "/.well-known/oauth-authorization-server"),
            Some("/.well-known/oauth-authorization-server")
        );
        assert_eq!(route("/t", "/t/oauth2/token"), Some("/oauth2/token"));
        assert_eq!(route("/t", "/oauth2/token"), None);
        assert_eq!(
            route("/t", "/.well-known/oauth-authorization-server/t"),
            Some("/.well-known/oauth-authorization-server")
        );
        assert_eq!(route("/t", "/.well-known/oauth-authorization-server"), None);
        assert_eq!(route("", "/items"), None);
    }

    #[test]
    fn random_tokens_do_not_repeat() {
        let mut seen = std::collections::HashSet::new();
        for _ in 0..10_000 {
            let t = random_token(32);
            assert_eq!(t.len(), 43);
            assert!(seen.insert(t));
        }
    }
}
