//! Client authentication at the token, revocation and introspection endpoints (RFC 6749
//! §2.3): `client_secret_basic` (id and secret form-urlencoded before base64, §2.3.1),
//! `client_secret_post`, `none` for public clients, and a projected ServiceAccount token as a
//! JWT client assertion ([`crate::assertion`], RFC 7523 §2.2). Secrets are checked in constant
//! time against the PHC hashes of the mounted registry, parsed once per registry load
//! ([`LoadedClient`]); successful checks of a slow hash (argon2) are remembered in a bounded
//! cache keyed by an HMAC of the client, the hash and the secret, so that a changed secret or
//! registry entry never matches. A slow check that is not cached is handed back to the caller
//! ([`SlowCheck`]), which runs it on a blocking thread with a small concurrency cap after the
//! client's failure budget allowed it. An empty secret never authenticates; an assertion is
//! decided here and never reaches a hash.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use aws_lc_rs::hmac;
use http::HeaderMap;
use http::header::AUTHORIZATION;
use scopegate_core::clients::{AuthMethod, RegisteredClient};
use scopegate_core::secret_hash::PreparedHash;

use crate::assertion::{JWT_BEARER, ServiceAccountVerifier};
use crate::error::OAuthError;
use crate::form::{Form, form_decode};
use scopegate_core::jose::b64;

/// Slow-hash verifications remembered.
pub const SLOW_CACHE_ENTRIES: usize = 1024;

/// How the request presented its client.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Presented {
    /// HTTP Basic with id and secret.
    Basic {
        /// client_id.
        id: String,
        /// client_secret.
        secret: String,
    },
    /// `client_id` and `client_secret` in the body.
    Post {
        /// client_id.
        id: String,
        /// client_secret.
        secret: String,
    },
    /// `client_id` only.
    None {
        /// client_id.
        id: String,
    },
    /// A JWT client assertion (`client_assertion_type` jwt-bearer), with `client_id` when
    /// the request named one (optional, RFC 7521 §4.2).
    Assertion {
        /// client_id, if sent.
        id: Option<String>,
        /// client_assertion.
        jwt: String,
    },
}

impl Presented {
    /// The client_id the request names before it is authenticated: `None` for an assertion
    /// sent without one. The client it authenticates is only known after the signature
    /// check, so a caller counting failures has no client to count them against (a
    /// `sub` read from an unchecked token is anyone's to write).
    pub fn id(&self) -> Option<&str> {
        match self {
            Presented::Basic { id, .. } | Presented::Post { id, .. } | Presented::None { id } => {
                Some(id)
            }
            Presented::Assertion { id, .. } => id.as_deref(),
        }
    }

    /// Whether HTTP Basic was used (an `invalid_client` then answers 401 with a challenge).
    pub fn is_basic(&self) -> bool {
        matches!(self, Presented::Basic { .. })
    }
}

/// Reads the client credentials of a request: one method only (RFC 6749 §2.3).
pub fn presented(headers: &HeaderMap, form: &Form) -> Result<Presented, OAuthError> {
    let mut auth = headers.get_all(AUTHORIZATION).iter();
    let header = auth.next();
    if auth.next().is_some() {
        return Err(OAuthError::InvalidRequest(
            "more than one Authorization header",
        ));
    }
    let body_id = form.get("client_id");
    let body_secret = form.get("client_secret");
    let assertion_type = form.get("client_assertion_type");
    let assertion = form.get("client_assertion");
    if assertion_type.is_some() || assertion.is_some() {
        if header.is_some() || body_secret.is_some() {
            return Err(OAuthError::InvalidRequest(
                "more than one client authentication method",
            ));
        }
        return match (assertion_type, assertion) {
            (Some(JWT_BEARER), Some(jwt)) => Ok(Presented::Assertion {
                id: body_id.map(str::to_owned),
                jwt: jwt.to_owned(),
            }),
            (Some(_), Some(_)) => Err(OAuthError::InvalidClient { basic: false }),
            _ => Err(OAuthError::InvalidRequest(
                "client_assertion and client_assertion_type go together",
            )),
        };
    }
    if let Some(value) = header {
        let value = value
            .to_str()
            .map_err(|_| OAuthError::InvalidClient { basic: true })?;
        let (scheme, rest) = value.split_once(' ').unwrap_or((value, ""));
        if !scheme.eq_ignore_ascii_case("basic") {
            return Err(OAuthError::InvalidClient { basic: true });
        }
        if body_secret.is_some() {
            return Err(OAuthError::InvalidRequest(
                "more than one client authentication method",
            ));
        }
        let (id, secret) =
            parse_basic(rest.trim()).ok_or(OAuthError::InvalidClient { basic: true })?;
        if body_id.is_some_and(|b| b != id) {
            return Err(OAuthError::InvalidRequest(
                "client_id differs from the authenticated client",
            ));
        }
        return Ok(Presented::Basic { id, secret });
    }
    match (body_id, body_secret) {
        (Some(id), Some(secret)) => Ok(Presented::Post {
            id: id.to_owned(),
            secret: secret.to_owned(),
        }),
        (Some(id), None) => Ok(Presented::None { id: id.to_owned() }),
        (None, _) => Err(OAuthError::InvalidClient { basic: false }),
    }
}

/// `base64(urlencode(id) ":" urlencode(secret))` → (id, secret).
fn parse_basic(credentials: &str) -> Option<(String, String)> {
    let decoded = b64::decode_standard(credentials.as_bytes()).ok()?;
    let text = std::str::from_utf8(&decoded).ok()?;
    let (id, secret) = text.split_once(':')?;
    let id = form_decode(id)?;
    let secret = form_decode(secret)?;
    (!id.is_empty()).then_some((id, secret))
}

/// A registry entry as the issuer holds it: the client, and its secrets' hashes parsed once
/// when the registry is loaded.
pub struct LoadedClient {
    registered: RegisteredClient,
    /// One per entry of `registered.secrets`, in order; `None` for a stored string that is
    /// not a hash in a known scheme, which authenticates no one.
    checks: Vec<Option<Arc<PreparedHash>>>,
}

impl LoadedClient {
    /// Prepares the secret checks of a registry entry. A stored hash in no known scheme is
    /// logged here, once per load, and never matches.
    pub fn new(registered: RegisteredClient) -> Self {
        let checks = registered
            .secrets
            .iter()
            .map(|stored| {
                PreparedHash::parse(&stored.phc)
                    .inspect_err(|err| {
                        tracing::warn!(
                            client_id = %registered.client_id,
                            error = %err,
                            "client secret hash unusable; it authenticates no one"
                        );
                    })
                    .ok()
                    .map(Arc::new)
            })
            .collect();
        LoadedClient { registered, checks }
    }

    /// The registry entry.
    pub fn registered(&self) -> &RegisteredClient {
        &self.registered
    }
}

/// What the fast part of client authentication decided.
pub enum Verdict<'a> {
    /// The client authenticated: no secret needed (public), a fast hash matched, or a slow
    /// check of this very secret succeeded before.
    Authenticated(&'a RegisteredClient),
    /// Only slow hashes are left to try: [`SlowCheck::run`] them.
    Slow(SlowCheck<'a>),
}

/// Slow hashes (argon2) still to check for a client, with what a success is cached under.
pub struct SlowCheck<'a> {
    client: &'a RegisteredClient,
    secret: String,
    checks: Vec<(Arc<PreparedHash>, [u8; 32])>,
}

/// Why a slow check did not authenticate.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SlowError {
    /// No hash matched: the credentials are wrong.
    Invalid,
    /// No slot freed up in time (or the blocking thread failed): try again later.
    Busy,
}

impl<'a> SlowCheck<'a> {
    /// The client the secret was presented for.
    pub fn client_id(&self) -> &str {
        &self.client.client_id
    }

    /// Runs the checks on a blocking thread once one of `slots` is free (waiting at most
    /// `wait`), so that the async workers keep serving; a success is cached.
    pub async fn run(
        self,
        cache: &SlowCache,
        slots: &tokio::sync::Semaphore,
        wait: Duration,
        counters: &super::counters::Counters,
    ) -> Result<&'a RegisteredClient, SlowError> {
        let Ok(Ok(_permit)) = tokio::time::timeout(wait, slots.acquire()).await else {
            return Err(SlowError::Busy);
        };
        let SlowCheck {
            client,
            secret,
            checks,
        } = self;
        counters.slow_hash_started();
        let hashes: Vec<Arc<PreparedHash>> = checks.iter().map(|(h, _)| h.clone()).collect();
        let matched = tokio::task::spawn_blocking(move || {
            hashes.iter().position(|hash| hash.verify(&secret))
        })
        .await;
        counters.slow_hash_ended();
        match matched {
            Ok(Some(index)) => {
                if let Some((_, key)) = checks.get(index) {
                    cache.insert(*key);
                }
                Ok(client)
            }
            Ok(None) => Err(SlowError::Invalid),
            Err(_) => Err(SlowError::Busy),
        }
    }
}

/// Checks presented credentials against the registry: the client exists, uses the method
/// it presented, and (for confidential clients) one of its current secrets matches, or
/// (for [`AuthMethod::ServiceAccountJwt`] clients) `service_accounts` verifies its
/// assertion. Fast hashes, cached slow checks and assertions are decided here; uncached slow
/// hashes come back as [`Verdict::Slow`]. An empty secret never authenticates, whatever is
/// stored.
pub fn authenticate<'a>(
    clients: &'a HashMap<String, LoadedClient>,
    service_accounts: &ServiceAccountVerifier,
    presented: &Presented,
    cache: &SlowCache,
    now: i64,
) -> Result<Verdict<'a>, OAuthError> {
    let basic = presented.is_basic();
    let invalid = OAuthError::InvalidClient { basic };
    if let Presented::Assertion { id, jwt } = presented {
        return by_assertion(clients, service_accounts, id.as_deref(), jwt, now)
            .map(Verdict::Authenticated);
    }
    let loaded = (presented.id())
        .and_then(|id| clients.get(id))
        .ok_or(invalid.clone())?;
    let client = &loaded.registered;
    // A ServiceAccountJwt client matches no arm: a secret or a bare client_id never
    // authenticates it.
    let secret = match (presented, client.auth_method) {
        (Presented::Basic { secret, .. }, AuthMethod::ClientSecretBasic)
        | (Presented::Post { secret, .. }, AuthMethod::ClientSecretPost) => secret,
        (Presented::None { .. }, AuthMethod::None) if client.public => {
            return Ok(Verdict::Authenticated(client));
        }
        _ => return Err(invalid),
    };
    if client.public || secret.is_empty() {
        return Err(invalid);
    }
    let live = client
        .secrets
        .iter()
        .zip(&loaded.checks)
        .filter(|(stored, _)| stored.not_after.is_none_or(|t| now < t));
    let mut slow = Vec::new();
    for (stored, check) in live {
        let Some(check) = check else { continue };
        if check.is_slow() {
            let key = cache.key(&client.client_id, &stored.phc, secret);
            if cache.contains(&key) {
                return Ok(Verdict::Authenticated(client));
            }
            slow.push((check.clone(), key));
        } else if check.verify(secret) {
            return Ok(Verdict::Authenticated(client));
        }
    }
    if slow.is_empty() {
        return Err(invalid);
    }
    Ok(Verdict::Slow(SlowCheck {
        client,
        secret: secret.clone(),
        checks: slow,
    }))
}

/// The client a ServiceAccount assertion authenticates; the reason of a refusal goes to the
/// log (never the token).
fn by_assertion<'a>(
    clients: &'a HashMap<String, LoadedClient>,
    service_accounts: &ServiceAccountVerifier,
    id: Option<&str>,
    jwt: &str,
    now: i64,
) -> Result<&'a RegisteredClient, OAuthError> {
    let invalid = OAuthError::InvalidClient { basic: false };
    let asserted = service_accounts.verify(jwt, id, now).map_err(|reason| {
        let reason = scopegate_core::error_chain(&reason);
        tracing::info!(client_id = ?id, %reason, "client assertion refused");
        invalid.clone()
    })?;
    let client = clients
        .get(asserted.client_id)
        .map(LoadedClient::registered)
        .filter(|c| c.auth_method == AuthMethod::ServiceAccountJwt && !c.public)
        .ok_or(invalid.clone())?;
    // The kill switch covers the credential too: a token minted before the cut-off (say, by
    // someone whose access was since taken away) no longer authenticates.
    if client
        .revoke_before
        .is_some_and(|cut| asserted.issued_at < cut)
    {
        tracing::info!(client_id = %client.client_id, "client assertion issued before the client's revocation cut-off");
        return Err(invalid);
    }
    Ok(client)
}

/// Successful slow-hash verifications, keyed by an HMAC under a key of this process.
pub struct SlowCache {
    key: hmac::Key,
    entries: Mutex<HashSet<[u8; 32]>>,
}

impl Default for SlowCache {
    fn default() -> Self {
        let mut secret = [0u8; 32];
        // A failed draw leaves zeros: the cache still works, it is only as strong as the
        // HMAC-SHA256 of the inputs.
        let _ = aws_lc_rs::rand::fill(&mut secret);
        SlowCache {
            key: hmac::Key::new(hmac::HMAC_SHA256, &secret),
            entries: Mutex::default(),
        }
    }
}

impl SlowCache {
    fn key(&self, client_id: &str, phc: &str, secret: &str) -> [u8; 32] {
        let mut ctx = hmac::Context::with_key(&self.key);
        for part in [client_id, phc, secret] {
            ctx.update(&(part.len() as u64).to_be_bytes());
            ctx.update(part.as_bytes());
        }
        let mut out = [0u8; 32];
        out.copy_from_slice(ctx.sign().as_ref());
        out
    }

    fn contains(&self, key: &[u8; 32]) -> bool {
        self.entries
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .contains(key)
    }

    fn insert(&self, key: [u8; 32]) {
        let mut entries = self.entries.lock().unwrap_or_else(|p| p.into_inner());
        if entries.len() >= SLOW_CACHE_ENTRIES {
            entries.clear();
        }
        entries.insert(key);
    }

    /// Entries held.
    pub fn len(&self) -> usize {
        self.entries.lock().unwrap_or_else(|p| p.into_inner()).len()
    }

    /// Whether nothing is held.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::HeaderValue;
    use scopegate_core::clients::SecretHash;
    use scopegate_core::secret_hash::{SecretKind, hash};

    fn client(id: &str, method: AuthMethod, secrets: Vec<SecretHash>) -> RegisteredClient {
        RegisteredClient {
            client_id: id.into(),
            public: method == AuthMethod::None,
            auth_method: method,
            secrets,
            grant_types: vec!["client_credentials".into()],
            scopes: vec![],
            default_scopes: vec![],
            audiences: vec![],
            owned_audiences: vec![],
            redirect_uris: vec![],
            revoke_before: None,
            service_accounts: Vec::new(),
            token_exchange: None,
        }
    }

    /// No cluster issuer: every assertion is refused.
    fn no_accounts() -> ServiceAccountVerifier {
        ServiceAccountVerifier::new(None, "https://auth.example", 0, std::iter::empty())
    }

    fn secret(text: &str, kind: SecretKind, not_after: Option<i64>) -> SecretHash {
        SecretHash {
            phc: hash(text, kind).unwrap(),
            not_after,
            source: None,
        }
    }

    fn basic(id: &str, secret: &str) -> HeaderMap {
        use base64::Engine as _;
        let value = base64::engine::general_purpose::STANDARD.encode(format!("{id}:{secret}"));
        let mut h = HeaderMap::new();
        h.insert(
            AUTHORIZATION,
            HeaderValue::from_str(&format!("Basic {value}")).unwrap(),
        );
        h
    }

    #[test]
    fn basic_credentials_are_form_decoded_after_base64() {
        let form = Form::parse(b"grant_type=client_credentials").unwrap();
        let p = presented(&basic("shop.web", "a%2Bb%3Ac+d"), &form).unwrap();
        assert_eq!(
            p,
            Presented::Basic {
                id: "shop.web".into(),
                secret: "a+b:c d".into()
            }
        );
    }

    #[test]
    fn one_method_only() {
        let form = Form::parse(b"client_id=x&client_secret=y").unwrap();
        assert!(matches!(
            presented(&basic("x", "y"), &form),
            Err(OAuthError::InvalidRequest(_))
        ));
        let form = Form::parse(b"client_id=other").unwrap();
        assert!(matches!(
            presented(&basic("x", "y"), &form),
            Err(OAuthError::InvalidRequest(_))
        ));
        let form = Form::parse(b"grant_type=x").unwrap();
        assert_eq!(
            presented(&HeaderMap::new(), &form),
            Err(OAuthError::InvalidClient { basic: false })
        );
    }

    #[test]
    fn secrets_methods_and_rotation_overlap() {
        let now = 1_000;
        let clients: HashMap<String, LoadedClient> = [
            client(
                "basic",
                AuthMethod::ClientSecretBasic,
                vec![
                    secret("new", SecretKind::Generated, None),
                    secret("old", SecretKind::Generated, Some(now + 1)),
                ],
            ),
            client(
                "post",
                AuthMethod::ClientSecretPost,
                vec![secret("p", SecretKind::Generated, None)],
            ),
            client("public", AuthMethod::None, vec![]),
        ]
        .into_iter()
        .map(|c| (c.client_id.clone(), LoadedClient::new(c)))
        .collect();
        let cache = SlowCache::default();
        let b = |id: &str, s: &str| Presented::Basic {
            id: id.into(),
            secret: s.into(),
        };
        assert!(authenticate(&clients, &no_accounts(), &b("basic", "new"), &cache, now).is_ok());
        assert!(authenticate(&clients, &no_accounts(), &b("basic", "old"), &cache, now).is_ok());
        assert!(
            authenticate(
                &clients,
                &no_accounts(),
                &b("basic", "old"),
                &cache,
                now + 1
            )
            .is_err(),
            "old secret past not_after"
        );
        assert!(authenticate(&clients, &no_accounts(), &b("basic", "nope"), &cache, now).is_err());
        assert!(
            authenticate(&clients, &no_accounts(), &b("post", "p"), &cache, now).is_err(),
            "wrong method"
        );
        let post = Presented::Post {
            id: "post".into(),
            secret: "p".into(),
        };
        assert!(authenticate(&clients, &no_accounts(), &post, &cache, now).is_ok());
        let none = Presented::None {
            id: "public".into(),
        };
        assert!(authenticate(&clients, &no_accounts(), &none, &cache, now).is_ok());
        let none = Presented::None { id: "basic".into() };
        assert!(
            authenticate(&clients, &no_accounts(), &none, &cache, now).is_err(),
            "confidential without secret"
        );
        assert!(authenticate(&clients, &no_accounts(), &b("unknown", "x"), &cache, now).is_err());
    }

    #[test]
    fn unusable_stored_hashes_authenticate_no_one() {
        let stored = |phc: &str| SecretHash {
            phc: phc.into(),
            not_after: None,
            source: None,
        };
        let clients = HashMap::from([(
            "c".to_owned(),
            LoadedClient::new(client(
                "c",
                AuthMethod::ClientSecretPost,
                vec![
                    stored("plaintext"),
                    stored("$scopegate-hmac-sha256$v=1$c2FsdA"),
                    stored("$argon2id$v=19$m=8,t=1,p=1$c2FsdA"),
                    secret("good", SecretKind::Generated, None),
                ],
            )),
        )]);
        let cache = SlowCache::default();
        let post = |s: &str| Presented::Post {
            id: "c".into(),
            secret: s.into(),
        };
        for presented in ["plaintext", "", "$scopegate-hmac-sha256$v=1$c2FsdA"] {
            assert!(authenticate(&clients, &no_accounts(), &post(presented), &cache, 0).is_err());
        }
        assert!(
            authenticate(&clients, &no_accounts(), &post("good"), &cache, 0).is_ok(),
            "the client's other secret still works"
        );
    }

    /// Authenticates as the issuer does, slow checks included.
    async fn check(
        clients: &HashMap<String, LoadedClient>,
        presented: &Presented,
        cache: &SlowCache,
        counters: &super::super::counters::Counters,
    ) -> bool {
        let slots = tokio::sync::Semaphore::new(1);
        match authenticate(clients, &no_accounts(), presented, cache, 0) {
            Ok(Verdict::Authenticated(_)) => true,
            Ok(Verdict::Slow(slow)) => slow
                .run(cache, &slots, Duration::from_secs(30), counters)
                .await
                .is_ok(),
            Err(_) => false,
        }
    }

    #[tokio::test]
    async fn slow_hash_successes_are_cached_per_secret_and_entry() {
        let cache = SlowCache::default();
        let counters = super::super::counters::Counters::default();
        let mut c = client(
            "c",
            AuthMethod::ClientSecretPost,
            vec![secret("pw", SecretKind::Chosen, None)],
        );
        let mut clients = HashMap::from([("c".to_owned(), LoadedClient::new(c.clone()))]);
        let post = |s: &str| Presented::Post {
            id: "c".into(),
            secret: s.into(),
        };
        assert!(matches!(
            authenticate(&clients, &no_accounts(), &post("pw"), &cache, 0),
            Ok(Verdict::Slow(_))
        ));
        assert!(check(&clients, &post("pw"), &cache, &counters).await);
        assert_eq!(cache.len(), 1);
        assert!(
            matches!(
                authenticate(&clients, &no_accounts(), &post("pw"), &cache, 0),
                Ok(Verdict::Authenticated(_))
            ),
            "a cached success needs no hash"
        );
        assert!(!check(&clients, &post("pW"), &cache, &counters).await);
        assert_eq!(cache.len(), 1, "failures are not cached");
        assert_eq!(
            counters
                .slow_hashes
                .load(std::sync::atomic::Ordering::Relaxed),
            2
        );
        c.secrets = vec![secret("other", SecretKind::Chosen, None)];
        clients.insert("c".into(), LoadedClient::new(c));
        assert!(
            !check(&clients, &post("pw"), &cache, &counters).await,
            "a changed entry never matches the cache"
        );
    }

    #[test]
    fn an_empty_secret_never_authenticates() {
        let clients: HashMap<String, LoadedClient> = [
            client(
                "chosen",
                AuthMethod::ClientSecretBasic,
                vec![secret("", SecretKind::Chosen, None)],
            ),
            client(
                "generated",
                AuthMethod::ClientSecretPost,
                vec![secret("", SecretKind::Generated, None)],
            ),
        ]
        .into_iter()
        .map(|c| (c.client_id.clone(), LoadedClient::new(c)))
        .collect();
        let cache = SlowCache::default();
        let basic = Presented::Basic {
            id: "chosen".into(),
            secret: String::new(),
        };
        let post = Presented::Post {
            id: "generated".into(),
            secret: String::new(),
        };
        for presented in [basic, post] {
            assert!(
                matches!(
                    authenticate(&clients, &no_accounts(), &presented, &cache, 0),
                    Err(OAuthError::InvalidClient { .. })
                ),
                "{presented:?}: refused before any hash"
            );
        }
    }

    fn assertion_form(extra: &str) -> Form {
        let jwt =
            crate::assertion::testing::token(&crate::assertion::testing::claims("shop", "billing"));
        let body = format!(
            "grant_type=client_credentials&client_assertion_type={}&client_assertion={jwt}{extra}",
            crate::form::form_encode(JWT_BEARER)
        );
        Form::parse(body.as_bytes()).unwrap()
    }

    #[test]
    fn an_assertion_is_read_with_or_without_client_id() {
        let p = presented(&HeaderMap::new(), &assertion_form("")).unwrap();
        assert!(matches!(&p, Presented::Assertion { id: None, .. }));
        assert_eq!(
            p.id(),
            None,
            "nothing to count failures against before the signature"
        );
        assert!(!p.is_basic());
        let p = presented(
            &HeaderMap::new(),
            &assertion_form("&client_id=shop.billing"),
        )
        .unwrap();
        assert!(matches!(&p, Presented::Assertion { id: Some(id), .. } if id == "shop.billing"));
        assert_eq!(p.id(), Some("shop.billing"));
    }

    #[test]
    fn an_assertion_with_a_secret_or_an_authorization_header_is_one_method_too_many() {
        let method = Err(OAuthError::InvalidRequest(
            "more than one client authentication method",
        ));
        assert_eq!(
            presented(&basic("shop.billing", "x"), &assertion_form("")),
            method
        );
        let mut bearer = HeaderMap::new();
        bearer.insert(AUTHORIZATION, HeaderValue::from_static("Bearer x"));
        assert_eq!(presented(&bearer, &assertion_form("")), method);
        assert_eq!(
            presented(
                &HeaderMap::new(),
                &assertion_form("&client_id=shop.billing&client_secret=s")
            ),
            method
        );
    }

    #[test]
    fn an_assertion_of_another_type_or_half_an_assertion_is_refused() {
        for assertion_type in [
            "urn:ietf:params:oauth:client-assertion-type:saml2-bearer",
            "urn:ietf:params:oauth:client-assertion-type:JWT-bearer",
            "urn:ietf:params:oauth:grant-type:jwt-bearer",
        ] {
            let body = format!(
                "client_assertion_type={}&client_assertion=a.b.c",
                crate::form::form_encode(assertion_type)
            );
            let form = Form::parse(body.as_bytes()).unwrap();
            assert_eq!(
                presented(&HeaderMap::new(), &form),
                Err(OAuthError::InvalidClient { basic: false }),
                "{assertion_type}"
            );
        }
        let half = format!(
            "client_id=shop.billing&client_assertion_type={}",
            crate::form::form_encode(JWT_BEARER)
        );
        for body in [
            half.as_str(),
            "client_id=shop.billing&client_assertion=a.b.c",
        ] {
            let form = Form::parse(body.as_bytes()).unwrap();
            assert!(
                matches!(
                    presented(&HeaderMap::new(), &form),
                    Err(OAuthError::InvalidRequest(_))
                ),
                "{body}"
            );
        }
    }

    #[test]
    fn a_revocation_cut_off_refuses_service_account_tokens_issued_before_it() {
        use crate::assertion::testing;
        let mut registered = testing::clients();
        let accounts = ServiceAccountVerifier::new(
            Some(&testing::cluster()),
            testing::ISSUER_URL,
            testing::LEEWAY,
            &registered,
        );
        let jwt = testing::token(&testing::claims("shop", "billing"));
        let issued_at = testing::claims("shop", "billing")["iat"].as_i64().unwrap();
        let presented = Presented::Assertion { id: None, jwt };
        let cache = SlowCache::default();
        for (cut, accepted) in [
            (None, true),
            (Some(issued_at), true),
            (Some(issued_at + 1), false),
        ] {
            for c in &mut registered {
                c.revoke_before = cut;
            }
            let clients: HashMap<String, LoadedClient> = (registered.iter().cloned())
                .map(|c| (c.client_id.clone(), LoadedClient::new(c)))
                .collect();
            let verdict = authenticate(&clients, &accounts, &presented, &cache, testing::NOW);
            assert_eq!(verdict.is_ok(), accepted, "cut-off {cut:?}");
        }
    }

    #[test]
    fn service_account_clients_authenticate_by_assertion_only() {
        use crate::assertion::testing;
        let mut registered = testing::clients();
        for c in &mut registered {
            if c.auth_method == AuthMethod::ClientSecretBasic {
                c.secrets = vec![secret("web-secret", SecretKind::Generated, None)];
            }
        }
        let accounts = ServiceAccountVerifier::new(
            Some(&testing::cluster()),
            testing::ISSUER_URL,
            testing::LEEWAY,
            &registered,
        );
        let clients: HashMap<String, LoadedClient> = registered
            .into_iter()
            .map(|c| (c.client_id.clone(), LoadedClient::new(c)))
            .collect();
        let cache = SlowCache::default();
        let now = testing::NOW;
        let jwt = testing::token(&testing::claims("shop", "billing"));
        let assertion = |id: Option<&str>| Presented::Assertion {
            id: id.map(str::to_owned),
            jwt: jwt.clone(),
        };
        let authenticated = |p: &Presented| match authenticate(&clients, &accounts, p, &cache, now)
        {
            Ok(Verdict::Authenticated(c)) => Ok(c.client_id.clone()),
            Ok(Verdict::Slow(_)) => panic!("no slow check for {p:?}"),
            Err(err) => Err(err),
        };
        let refused = Err(OAuthError::InvalidClient { basic: false });
        assert_eq!(authenticated(&assertion(None)), Ok("shop.billing".into()));
        assert_eq!(
            authenticated(&assertion(Some("shop.billing"))),
            Ok("shop.billing".into())
        );
        // A secret client named with an assertion, though the assertion itself is valid.
        assert_eq!(authenticated(&assertion(Some("shop.web"))), refused);
        // The ServiceAccount client named with a secret, or as a public client.
        assert_eq!(
            authenticated(&Presented::Basic {
                id: "shop.billing".into(),
                secret: "web-secret".into()
            }),
            Err(OAuthError::InvalidClient { basic: true })
        );
        assert_eq!(
            authenticated(&Presented::Post {
                id: "shop.billing".into(),
                secret: jwt.clone()
            }),
            refused
        );
        assert_eq!(
            authenticated(&Presented::None {
                id: "shop.billing".into()
            }),
            refused
        );
        // The secret client still authenticates with its secret.
        assert_eq!(
            authenticated(&Presented::Basic {
                id: "shop.web".into(),
                secret: "web-secret".into()
            }),
            Ok("shop.web".into())
        );
        // Without a cluster issuer the same assertion authenticates no one.
        assert!(matches!(
            authenticate(&clients, &no_accounts(), &assertion(None), &cache, now),
            Err(OAuthError::InvalidClient { basic: false })
        ));
    }
}
