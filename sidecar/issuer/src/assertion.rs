//! Client authentication with a projected Kubernetes ServiceAccount token as a JWT client
//! assertion (RFC 7523 §2.2, RFC 7521 §4.2). Pure: the cluster's service-account issuer (its
//! `iss`, keys and algorithms, rendered by the operator) is compiled once per config load into
//! a [`ServiceAccountVerifier`], together with which client each ServiceAccount authenticates;
//! a request's assertion is then checked offline, with no fetch and no TokenReview.

use std::collections::{HashMap, HashSet};

use scopegate_core::clients::{AuthMethod, RegisteredClient, service_account_subject};
use scopegate_core::config::ServiceAccountIssuer;
use scopegate_core::jose::json::{self, Audience, JsonError};
use scopegate_core::jose::jws::{self, JwsError, Typ};
use scopegate_core::jose::keys::{Alg, KeyEntry, KeyMap};
use serde::Deserialize;

/// The `client_assertion_type` of a JWT assertion (RFC 7523 §2.2).
pub const JWT_BEARER: &str = "urn:ietf:params:oauth:client-assertion-type:jwt-bearer";

/// Largest assertion accepted, in bytes (a projected token is about 1 KiB).
pub const MAX_ASSERTION_BYTES: usize = 8 * 1024;

/// Longest lifetime (`exp − iat`) of an accepted token, in seconds: the webhook projects 10
/// minutes and `kubectl create token` gives an hour by default; a longer-lived token cannot be
/// taken back (validation is offline), so it is refused, not merely waited out.
pub const MAX_LIFETIME_SECS: i64 = 60 * 60;

/// The claims of legacy Secret-based tokens (no `exp`, never rotated) start so.
const LEGACY_CLAIM_PREFIX: &str = "kubernetes.io/serviceaccount/";

/// What a valid assertion says: the client it authenticates, and when its token was issued
/// (a client's revocation cut-off refuses tokens issued before it).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Asserted<'a> {
    /// The client_id.
    pub client_id: &'a str,
    /// The token's `iat`.
    pub issued_at: i64,
}

/// Why an assertion did not authenticate a client. Every variant answers `invalid_client`;
/// the variant goes to the log only. No variant carries token text.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum AssertionError {
    /// Longer than [`MAX_ASSERTION_BYTES`].
    #[error("assertion larger than 8 KiB")]
    TooLarge,
    /// The config names no usable cluster service-account issuer.
    #[error("no cluster service-account issuer is configured")]
    NoClusterIssuer,
    /// The presented `client_id` is no client that a ServiceAccount authenticates.
    #[error("client_id names no client authenticated by a ServiceAccount")]
    NotServiceAccountClient,
    /// Not a well-formed compact JWS, or its signature does not verify with the cluster's
    /// key of its `kid`.
    #[error(transparent)]
    Jws(#[from] JwsError),
    /// `alg` is not one of the cluster issuer's algorithms.
    #[error("alg not accepted for the cluster issuer")]
    Algorithm,
    /// `typ` is neither absent nor `JWT`.
    #[error("typ not accepted")]
    Typ,
    /// The claims are not a strict JSON object of the right types.
    #[error("claims are not a strict JSON object of the expected types")]
    Claims(#[source] JsonError),
    /// A required claim is missing.
    #[error("required claim {0} missing")]
    Missing(&'static str),
    /// `iss` is not the cluster's service-account issuer.
    #[error("iss is not the cluster's service-account issuer")]
    Issuer,
    /// A claim of a legacy Secret-based token is present.
    #[error("a legacy Secret-based token claim is present")]
    Legacy,
    /// `aud` is not exactly one value equal to the issuer URL.
    #[error("aud is not exactly the issuer URL")]
    Audience,
    /// Past `exp` plus leeway.
    #[error("expired")]
    Expired,
    /// Before `nbf` minus leeway.
    #[error("not yet valid")]
    NotYetValid,
    /// `iat` later than now plus leeway.
    #[error("issued in the future")]
    IssuedInFuture,
    /// `exp − iat` longer than [`MAX_LIFETIME_SECS`].
    #[error("lifetime longer than an hour")]
    Lifetime,
    /// `sub` is not `system:serviceaccount:<namespace>:<name>`.
    #[error("sub is not a ServiceAccount")]
    Subject,
    /// The `kubernetes.io` claim is missing, malformed, or names another ServiceAccount
    /// than `sub`.
    #[error("the kubernetes.io claim is missing, malformed or disagrees with sub")]
    KubernetesClaim,
    /// No client lists the ServiceAccount.
    #[error("the ServiceAccount authenticates no client")]
    UnknownServiceAccount,
    /// The presented client does not list the ServiceAccount.
    #[error("the named client does not list the ServiceAccount")]
    NotListed,
    /// Several clients list the ServiceAccount and the request named none.
    #[error("the ServiceAccount authenticates several clients and client_id is missing")]
    Ambiguous,
}

/// The cluster's issuer as compiled: keys parsed for its algorithms only.
struct Cluster {
    issuer: String,
    keys: KeyMap,
    algorithms: Vec<Alg>,
}

/// Verifies ServiceAccount assertions for one config load: the cluster's issuer, the
/// audience an assertion must carry (the issuer's URL), the leeway, and the clients each
/// ServiceAccount subject authenticates.
pub struct ServiceAccountVerifier {
    cluster: Option<Cluster>,
    audience: String,
    leeway: i64,
    /// ServiceAccount subject → the clients listing it.
    subjects: HashMap<String, Vec<String>>,
    /// Every client listed in `subjects`.
    clients: HashSet<String>,
}

impl std::fmt::Debug for ServiceAccountVerifier {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ServiceAccountVerifier")
            .field("issuer", &self.cluster.as_ref().map(|c| &c.issuer))
            .field("subjects", &self.subjects.len())
            .finish_non_exhaustive()
    }
}

impl ServiceAccountVerifier {
    /// Compiles the cluster's issuer (`None`: every assertion is refused) for assertions whose
    /// audience must be `audience`, and maps each ServiceAccount subject to the
    /// [`AuthMethod::ServiceAccountJwt`] clients of `clients` that list it. A key that cannot
    /// be used is logged and left out; algorithms that are not all known asymmetric ones
    /// refuse every assertion (logged), as no key of a symmetric or unknown algorithm may
    /// authenticate anyone.
    pub fn new<'a>(
        issuer: Option<&ServiceAccountIssuer>,
        audience: &str,
        leeway: i64,
        clients: impl IntoIterator<Item = &'a RegisteredClient>,
    ) -> Self {
        let mut subjects: HashMap<String, Vec<String>> = HashMap::new();
        let mut listed = HashSet::new();
        let by_assertion = clients
            .into_iter()
            .filter(|c| c.auth_method == AuthMethod::ServiceAccountJwt && !c.public);
        for client in by_assertion {
            for subject in &client.service_accounts {
                let ids = subjects.entry(subject.clone()).or_default();
                if !ids.contains(&client.client_id) {
                    ids.push(client.client_id.clone());
                }
                listed.insert(client.client_id.clone());
            }
        }
        ServiceAccountVerifier {
            cluster: issuer.and_then(compile),
            audience: audience.to_owned(),
            leeway,
            subjects,
            clients: listed,
        }
    }

    /// The algorithms assertions may be signed with; `None` when assertions are refused
    /// altogether (no cluster issuer).
    pub fn algorithms(&self) -> Option<&[Alg]> {
        self.cluster.as_ref().map(|c| c.algorithms.as_slice())
    }

    /// Checks `jwt` as a client assertion at `now` (Unix seconds) and answers the client it
    /// authenticates: `client_id` when the request named one (it must list the token's
    /// ServiceAccount), else the only client that lists it.
    pub fn verify(
        &self,
        jwt: &str,
        client_id: Option<&str>,
        now: i64,
    ) -> Result<Asserted<'_>, AssertionError> {
        if jwt.len() > MAX_ASSERTION_BYTES {
            return Err(AssertionError::TooLarge);
        }
        let cluster = self
            .cluster
            .as_ref()
            .ok_or(AssertionError::NoClusterIssuer)?;
        // Before any signature work: a client that no ServiceAccount authenticates.
        if client_id.is_some_and(|id| !self.clients.contains(id)) {
            return Err(AssertionError::NotServiceAccountClient);
        }
        let compact = jws::parse(jwt)?;
        if !cluster.algorithms.contains(&compact.alg) {
            return Err(AssertionError::Algorithm);
        }
        if !matches!(compact.typ, Typ::Absent | Typ::Jwt) {
            return Err(AssertionError::Typ);
        }
        compact.verify_with(&cluster.keys)?;

        let payload = compact.payload();
        let claims = json::parse_claims(payload).map_err(AssertionError::Claims)?;
        if claims.iss.ok_or(AssertionError::Missing("iss"))? != cluster.issuer {
            return Err(AssertionError::Issuer);
        }
        // parse_claims refused duplicate names at any depth: this second read sees the same
        // members.
        let all: KubernetesClaims =
            serde_json::from_slice(payload).map_err(|_| AssertionError::KubernetesClaim)?;
        if all.names.keys().any(|n| n.starts_with(LEGACY_CLAIM_PREFIX)) {
            return Err(AssertionError::Legacy);
        }
        let audience_ok = match claims.aud.ok_or(AssertionError::Missing("aud"))? {
            Audience::One(aud) => aud == self.audience,
            Audience::Many(auds) => auds.len() == 1 && auds[0] == self.audience,
        };
        if !audience_ok {
            return Err(AssertionError::Audience);
        }
        self.check_times(claims.exp, claims.nbf, claims.iat, now)?;
        let issued_at = claims.iat.unwrap_or_default();
        let sub = claims.sub.ok_or(AssertionError::Missing("sub"))?;
        if !is_service_account(&sub) {
            return Err(AssertionError::Subject);
        }
        let named = all.kubernetes.ok_or(AssertionError::KubernetesClaim)?;
        if service_account_subject(&named.namespace, &named.serviceaccount.name) != sub {
            return Err(AssertionError::KubernetesClaim);
        }
        let listing = self.subjects.get(&sub).map_or(&[][..], Vec::as_slice);
        let client_id = match (client_id, listing) {
            (Some(id), _) => listing
                .iter()
                .find(|listed| *listed == id)
                .map(String::as_str)
                .ok_or(AssertionError::NotListed),
            (None, [only]) => Ok(only.as_str()),
            (None, []) => Err(AssertionError::UnknownServiceAccount),
            (None, _) => Err(AssertionError::Ambiguous),
        }?;
        Ok(Asserted {
            client_id,
            issued_at,
        })
    }

    /// `exp` and `iat` are required; `nbf` is optional; a lifetime beyond an hour is refused.
    fn check_times(
        &self,
        exp: Option<i64>,
        nbf: Option<i64>,
        iat: Option<i64>,
        now: i64,
    ) -> Result<(), AssertionError> {
        let exp = exp.ok_or(AssertionError::Missing("exp"))?;
        let iat = iat.ok_or(AssertionError::Missing("iat"))?;
        let leeway = self.leeway;
        if now >= exp.saturating_add(leeway) {
            return Err(AssertionError::Expired);
        }
        if nbf.is_some_and(|nbf| nbf > now.saturating_add(leeway)) {
            return Err(AssertionError::NotYetValid);
        }
        if iat > now.saturating_add(leeway) {
            return Err(AssertionError::IssuedInFuture);
        }
        if exp.saturating_sub(iat) > MAX_LIFETIME_SECS {
            return Err(AssertionError::Lifetime);
        }
        Ok(())
    }
}

/// The cluster's keys for its algorithms, or `None` (logged) when its algorithms are not all
/// known asymmetric ones.
fn compile(issuer: &ServiceAccountIssuer) -> Option<Cluster> {
    let Some(algorithms) = scopegate_core::check::foreign_algorithms(&issuer.algorithms) else {
        tracing::warn!(
            issuer = %issuer.issuer,
            "service-account issuer algorithms unusable; every client assertion is refused"
        );
        return None;
    };
    let mut keys = KeyMap::new();
    for jwk in &issuer.jwks.keys {
        match KeyEntry::from_jwk(jwk, Some(&algorithms)) {
            Ok(entry) => {
                keys.insert(entry.kid().to_owned(), entry);
            }
            Err(err) => tracing::warn!(
                issuer = %issuer.issuer,
                error = %err,
                "service-account issuer key left out"
            ),
        }
    }
    Some(Cluster {
        issuer: issuer.issuer.clone(),
        keys,
        algorithms,
    })
}

/// Whether `sub` is `system:serviceaccount:<namespace>:<name>` with a DNS-label namespace
/// and a DNS-subdomain name, as the API server writes it.
fn is_service_account(sub: &str) -> bool {
    let Some((namespace, name)) = sub
        .strip_prefix("system:serviceaccount:")
        .and_then(|rest| rest.split_once(':'))
    else {
        return false;
    };
    let dns = |text: &str, max: usize, dots: bool| {
        !text.is_empty()
            && text.len() <= max
            && text.bytes().all(|b| {
                b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || (dots && b == b'.')
            })
    };
    dns(namespace, 63, false) && dns(name, 253, true)
}

/// The claims of a projected token that the registered ones leave out.
#[derive(Deserialize)]
struct KubernetesClaims {
    /// Who the token is for, as the API server states it.
    #[serde(rename = "kubernetes.io")]
    kubernetes: Option<KubernetesClaim>,
    /// Every other top-level member, to find legacy claims by name.
    #[serde(flatten)]
    names: HashMap<String, serde::de::IgnoredAny>,
}

/// The `kubernetes.io` claim: its namespace and ServiceAccount (pod, node and uids are not
/// read).
#[derive(Deserialize)]
struct KubernetesClaim {
    namespace: String,
    serviceaccount: Named,
}

#[derive(Deserialize)]
struct Named {
    name: String,
}

/// A cluster and its tokens for tests: RSA and EC keys of the cluster, an RSA key of
/// nobody's, and clients that ServiceAccounts authenticate.
#[cfg(test)]
pub(crate) mod testing {
    use std::sync::OnceLock;

    use aws_lc_rs::rand::SystemRandom;
    use aws_lc_rs::rsa::{self, KeySize};
    use aws_lc_rs::signature::{
        ECDSA_P256_SHA256_FIXED_SIGNING, EcdsaKeyPair, KeyPair, RSA_PKCS1_SHA256,
        RsaPublicKeyComponents,
    };
    use scopegate_core::clients::{AuthMethod, RegisteredClient};
    use scopegate_core::config::ServiceAccountIssuer;
    use scopegate_core::jose::b64;
    use scopegate_core::jwk::{Jwk, Jwks};
    use serde_json::{Value, json};

    use super::ServiceAccountVerifier;

    /// The time of the tests.
    pub const NOW: i64 = 1_800_000_000;
    /// The issuer's URL: the audience of an assertion.
    pub const ISSUER_URL: &str = "https://auth.shop.svc.cluster.local";
    /// The cluster's service-account issuer.
    pub const CLUSTER_ISS: &str = "https://kubernetes.default.svc.cluster.local";
    /// The kid of the cluster's RSA key.
    pub const RSA_KID: &str = "cluster-rsa";
    /// The kid of the cluster's EC key.
    pub const EC_KID: &str = "cluster-ec";
    /// The leeway of the tests.
    pub const LEEWAY: i64 = 30;

    /// The keys of the tests.
    pub struct Keys {
        /// The cluster's RSA key.
        pub rsa: rsa::KeyPair,
        /// Nobody's RSA key (another cluster's, an attacker's).
        pub other: rsa::KeyPair,
        /// The cluster's EC key.
        pub ec: EcdsaKeyPair,
    }

    /// The keys, generated once per test process.
    pub fn keys() -> &'static Keys {
        static KEYS: OnceLock<Keys> = OnceLock::new();
        KEYS.get_or_init(|| Keys {
            rsa: rsa::KeyPair::generate(KeySize::Rsa2048).unwrap(),
            other: rsa::KeyPair::generate(KeySize::Rsa2048).unwrap(),
            ec: EcdsaKeyPair::generate(&ECDSA_P256_SHA256_FIXED_SIGNING).unwrap(),
        })
    }

    /// The public JWK of an RSA key, without `alg` (as the API server publishes it).
    pub fn rsa_jwk(pair: &rsa::KeyPair, kid: &str) -> Jwk {
        let c = RsaPublicKeyComponents::<Vec<u8>>::from(pair.public_key());
        Jwk {
            kty: "RSA".into(),
            kid: Some(kid.into()),
            use_: Some("sig".into()),
            n: Some(b64::encode(&c.n)),
            e: Some(b64::encode(&c.e)),
            ..Jwk::default()
        }
    }

    /// The cluster's issuer as the operator renders it: both keys, RS256 and ES256.
    pub fn cluster() -> ServiceAccountIssuer {
        let point = keys().ec.public_key().as_ref().to_vec();
        let ec = Jwk {
            kty: "EC".into(),
            kid: Some(EC_KID.into()),
            use_: Some("sig".into()),
            crv: Some("P-256".into()),
            x: Some(b64::encode(&point[1..33])),
            y: Some(b64::encode(&point[33..65])),
            ..Jwk::default()
        };
        ServiceAccountIssuer {
            issuer: CLUSTER_ISS.into(),
            jwks: Jwks {
                keys: vec![rsa_jwk(&keys().rsa, RSA_KID), ec],
            },
            algorithms: vec!["RS256".into(), "ES256".into()],
        }
    }

    /// A client; with `service_accounts`, one that they authenticate.
    pub fn client(id: &str, service_accounts: &[&str]) -> RegisteredClient {
        let by_assertion = !service_accounts.is_empty();
        RegisteredClient {
            client_id: id.into(),
            public: false,
            auth_method: if by_assertion {
                AuthMethod::ServiceAccountJwt
            } else {
                AuthMethod::ClientSecretBasic
            },
            secrets: vec![],
            grant_types: vec!["client_credentials".into()],
            scopes: vec![],
            default_scopes: vec![],
            audiences: vec![],
            owned_audiences: vec![],
            redirect_uris: vec![],
            revoke_before: None,
            service_accounts: service_accounts.iter().map(|s| (*s).to_owned()).collect(),
            token_exchange: None,
        }
    }

    /// The clients of the tests: `shop.billing` (ServiceAccount shop/billing),
    /// `shop.reports` (shop/reports), `shop.web` (a secret), and `shop.batch-a` and
    /// `shop.batch-b`, which both list shop/batch.
    pub fn clients() -> Vec<RegisteredClient> {
        vec![
            client("shop.billing", &["system:serviceaccount:shop:billing"]),
            client("shop.reports", &["system:serviceaccount:shop:reports"]),
            client("shop.web", &[]),
            client("shop.batch-a", &["system:serviceaccount:shop:batch"]),
            client("shop.batch-b", &["system:serviceaccount:shop:batch"]),
        ]
    }

    /// The verifier of the tests.
    pub fn verifier() -> ServiceAccountVerifier {
        ServiceAccountVerifier::new(Some(&cluster()), ISSUER_URL, LEEWAY, &clients())
    }

    /// The claims of a projected token of ServiceAccount `namespace`/`name`, as the API
    /// server writes them, issued a minute ago for ten minutes.
    pub fn claims(namespace: &str, name: &str) -> Value {
        json!({
            "aud": [ISSUER_URL],
            "exp": NOW + 540,
            "iat": NOW - 60,
            "nbf": NOW - 60,
            "iss": CLUSTER_ISS,
            "jti": "5b1d8a36-1f0c-4a53-9c0c-3f7e2b7e8a11",
            "kubernetes.io": {
                "namespace": namespace,
                "node": {"name": "node-1", "uid": "0d6f3b0e-7f1c-4a0e-9d2e-1c1f1f1f1f1f"},
                "pod": {"name": format!("{name}-7d9f8"), "uid": "9a1b2c3d-4e5f-6a7b"},
                "serviceaccount": {"name": name, "uid": "1e2d3c4b-5a69-7887-9695-a4b3c2d1e0f9"},
                "warnafter": NOW + 3540
            },
            "sub": format!("system:serviceaccount:{namespace}:{name}")
        })
    }

    /// A compact JWS of `header` and `claims`, its signing input signed by `sign`.
    pub fn jws(header: &Value, claims: &Value, sign: impl FnOnce(&[u8]) -> Vec<u8>) -> String {
        let input = format!(
            "{}.{}",
            b64::encode(header.to_string().as_bytes()),
            b64::encode(claims.to_string().as_bytes())
        );
        let signature = sign(input.as_bytes());
        format!("{input}.{}", b64::encode(&signature))
    }

    /// RS256 with `pair`.
    pub fn rs256(pair: &rsa::KeyPair) -> impl FnOnce(&[u8]) -> Vec<u8> + '_ {
        move |input| {
            let mut signature = vec![0u8; pair.public_modulus_len()];
            pair.sign(
                &RSA_PKCS1_SHA256,
                &SystemRandom::new(),
                input,
                &mut signature,
            )
            .unwrap();
            signature
        }
    }

    /// An RS256 token of the cluster's RSA key over `claims`.
    pub fn token(claims: &Value) -> String {
        jws(
            &json!({"alg": "RS256", "kid": RSA_KID}),
            claims,
            rs256(&keys().rsa),
        )
    }

    /// An ES256 token of the cluster's EC key over `claims`.
    pub fn es256_token(claims: &Value) -> String {
        jws(&json!({"alg": "ES256", "kid": EC_KID}), claims, |input| {
            keys()
                .ec
                .sign(&SystemRandom::new(), input)
                .unwrap()
                .as_ref()
                .to_vec()
        })
    }
}

#[cfg(test)]
mod tests {
    use aws_lc_rs::hmac;
    use aws_lc_rs::signature::KeyPair;
    use serde_json::{Value, json};

    use super::testing::*;
    use super::*;

    const BILLING: &str = "shop.billing";

    fn check(token: &str, client_id: Option<&str>) -> Result<String, AssertionError> {
        verifier()
            .verify(token, client_id, NOW)
            .map(|asserted| asserted.client_id.to_owned())
    }

    fn edited(edit: impl FnOnce(&mut Value)) -> String {
        let mut c = claims("shop", "billing");
        edit(&mut c);
        token(&c)
    }

    #[test]
    fn a_projected_token_authenticates_its_client_with_or_without_client_id() {
        let rsa = token(&claims("shop", "billing"));
        let ec = es256_token(&claims("shop", "billing"));
        for jwt in [&rsa, &ec] {
            assert_eq!(check(jwt, None).as_deref(), Ok(BILLING));
            assert_eq!(check(jwt, Some(BILLING)).as_deref(), Ok(BILLING));
        }
        // A single-string aud, no nbf, and typ JWT are what older API servers write.
        let plain = edited(|c| {
            c["aud"] = json!(ISSUER_URL);
            c.as_object_mut().unwrap().remove("nbf");
        });
        assert_eq!(check(&plain, None).as_deref(), Ok(BILLING));
        let typed = jws(
            &json!({"alg": "RS256", "kid": RSA_KID, "typ": "JWT"}),
            &claims("shop", "billing"),
            rs256(&keys().rsa),
        );
        assert_eq!(check(&typed, None).as_deref(), Ok(BILLING));
    }

    #[test]
    fn another_service_accounts_token_does_not_authenticate_the_client() {
        // The reports pod's own token, sent in the billing client's name.
        let reports = token(&claims("shop", "reports"));
        assert_eq!(
            check(&reports, Some(BILLING)),
            Err(AssertionError::NotListed)
        );
        assert_eq!(check(&reports, None).as_deref(), Ok("shop.reports"));
    }

    #[test]
    fn the_same_name_in_another_namespace_is_another_service_account() {
        let evil = token(&claims("evil", "billing"));
        assert_eq!(check(&evil, Some(BILLING)), Err(AssertionError::NotListed));
        assert_eq!(
            check(&evil, None),
            Err(AssertionError::UnknownServiceAccount)
        );
    }

    #[test]
    fn a_token_for_the_api_server_is_refused() {
        for aud in [
            json!(["https://kubernetes.default.svc"]),
            json!("https://kubernetes.default.svc.cluster.local"),
            json!([format!("{ISSUER_URL}/oauth2/token")]),
            json!([format!("{ISSUER_URL}/")]),
        ] {
            let jwt = edited(|c| c["aud"] = aud.clone());
            assert_eq!(check(&jwt, None), Err(AssertionError::Audience), "{aud}");
        }
    }

    #[test]
    fn a_token_for_two_audiences_is_refused() {
        for aud in [
            json!([ISSUER_URL, "https://kubernetes.default.svc"]),
            json!([ISSUER_URL, ISSUER_URL]),
            json!([]),
        ] {
            let jwt = edited(|c| c["aud"] = aud.clone());
            assert_eq!(check(&jwt, None), Err(AssertionError::Audience), "{aud}");
        }
    }

    #[test]
    fn an_expired_token_is_refused_beyond_the_leeway() {
        let at = |exp: i64| edited(|c| c["exp"] = json!(exp));
        assert_eq!(check(&at(NOW - LEEWAY + 1), None).as_deref(), Ok(BILLING));
        assert_eq!(check(&at(NOW - LEEWAY), None), Err(AssertionError::Expired));
        assert_eq!(check(&at(NOW - 3600), None), Err(AssertionError::Expired));
    }

    #[test]
    fn a_token_issued_in_the_future_is_refused() {
        let at = |iat: i64| {
            edited(|c| {
                c["iat"] = json!(iat);
                c["nbf"] = json!(NOW - 60);
            })
        };
        assert_eq!(check(&at(NOW + LEEWAY), None).as_deref(), Ok(BILLING));
        assert_eq!(
            check(&at(NOW + LEEWAY + 1), None),
            Err(AssertionError::IssuedInFuture)
        );
        let later = edited(|c| c["nbf"] = json!(NOW + LEEWAY + 1));
        assert_eq!(check(&later, None), Err(AssertionError::NotYetValid));
        let no_iat = edited(|c| {
            c.as_object_mut().unwrap().remove("iat");
        });
        assert_eq!(check(&no_iat, None), Err(AssertionError::Missing("iat")));
    }

    #[test]
    fn a_token_living_longer_than_a_day_is_refused() {
        let lives = |secs: i64| edited(|c| c["exp"] = json!(NOW - 60 + secs));
        assert_eq!(
            check(&lives(MAX_LIFETIME_SECS), None).as_deref(),
            Ok(BILLING)
        );
        assert_eq!(
            check(&lives(MAX_LIFETIME_SECS + 1), None),
            Err(AssertionError::Lifetime)
        );
        assert_eq!(
            check(&lives(10 * 365 * 86_400), None),
            Err(AssertionError::Lifetime)
        );
    }

    #[test]
    fn a_legacy_secret_token_is_refused() {
        // What a token Secret of type kubernetes.io/service-account-token holds, signed by the
        // same key as projected tokens: no exp, aud or iat, and never rotated.
        let legacy = json!({
            "iss": "kubernetes/serviceaccount",
            "kubernetes.io/serviceaccount/namespace": "shop",
            "kubernetes.io/serviceaccount/secret.name": "billing-token-x7k2p",
            "kubernetes.io/serviceaccount/service-account.name": "billing",
            "kubernetes.io/serviceaccount/service-account.uid": "1e2d3c4b-5a69-7887",
            "sub": "system:serviceaccount:shop:billing"
        });
        assert_eq!(check(&token(&legacy), None), Err(AssertionError::Issuer));
        // Even under the projected tokens' iss, a legacy claim or a missing exp refuses it.
        let mut under_iss = legacy.clone();
        under_iss["iss"] = json!(CLUSTER_ISS);
        assert_eq!(check(&token(&under_iss), None), Err(AssertionError::Legacy));
        let with_legacy_claim =
            edited(|c| c["kubernetes.io/serviceaccount/namespace"] = json!("shop"));
        assert_eq!(check(&with_legacy_claim, None), Err(AssertionError::Legacy));
        let no_exp = edited(|c| {
            c.as_object_mut().unwrap().remove("exp");
        });
        assert_eq!(check(&no_exp, None), Err(AssertionError::Missing("exp")));
    }

    #[test]
    fn another_clusters_token_is_refused() {
        let mut c = claims("shop", "billing");
        c["iss"] = json!("https://oidc.other-cluster.example");
        let other = jws(
            &json!({"alg": "RS256", "kid": "other-cluster-key"}),
            &c,
            rs256(&keys().other),
        );
        assert_eq!(
            check(&other, None),
            Err(AssertionError::Jws(JwsError::UnknownKid))
        );
        // Our cluster's key, another issuer name: refused all the same.
        assert_eq!(check(&token(&c), None), Err(AssertionError::Issuer));
    }

    #[test]
    fn a_known_kid_on_another_key_fails_the_signature() {
        let forged = jws(
            &json!({"alg": "RS256", "kid": RSA_KID}),
            &claims("shop", "billing"),
            rs256(&keys().other),
        );
        assert_eq!(
            check(&forged, Some(BILLING)),
            Err(AssertionError::Jws(JwsError::Signature))
        );
    }

    #[test]
    fn an_unknown_kid_is_refused_without_a_fetch() {
        for header in [
            json!({"alg": "RS256", "kid": "rotated-in-yesterday"}),
            json!({"alg": "RS256"}),
        ] {
            let jwt = jws(&header, &claims("shop", "billing"), rs256(&keys().rsa));
            assert!(
                matches!(
                    check(&jwt, None),
                    Err(AssertionError::Jws(JwsError::UnknownKid | JwsError::Kid))
                ),
                "{header}"
            );
        }
    }

    #[test]
    fn hs256_keyed_with_the_public_key_is_refused() {
        // Alg confusion: an HMAC whose secret is the cluster's public key, in any encoding a
        // naive verifier might use.
        let public = keys().rsa.public_key().as_ref().to_vec();
        let jwk = serde_json::to_vec(&rsa_jwk(&keys().rsa, RSA_KID)).unwrap();
        for secret in [public, jwk] {
            let jwt = jws(
                &json!({"alg": "HS256", "kid": RSA_KID, "typ": "JWT"}),
                &claims("shop", "billing"),
                |input| {
                    let key = hmac::Key::new(hmac::HMAC_SHA256, &secret);
                    hmac::sign(&key, input).as_ref().to_vec()
                },
            );
            assert_eq!(check(&jwt, None), Err(AssertionError::Algorithm));
            // Not even when the rendered algorithms name HS256.
            let mut cluster = cluster();
            cluster.algorithms.push("HS256".into());
            let lenient = ServiceAccountVerifier::new(Some(&cluster), ISSUER_URL, 0, &clients());
            assert_eq!(
                lenient.verify(&jwt, None, NOW),
                Err(AssertionError::NoClusterIssuer)
            );
        }
        let none = jws(
            &json!({"alg": "none", "kid": RSA_KID}),
            &claims("shop", "billing"),
            |_| b"x".to_vec(),
        );
        assert_eq!(
            check(&none, None),
            Err(AssertionError::Jws(JwsError::UnknownAlg))
        );
    }

    #[test]
    fn the_kubernetes_claim_must_agree_with_sub() {
        let moved = edited(|c| c["kubernetes.io"]["namespace"] = json!("evil"));
        assert_eq!(check(&moved, None), Err(AssertionError::KubernetesClaim));
        let renamed = edited(|c| c["kubernetes.io"]["serviceaccount"]["name"] = json!("reports"));
        assert_eq!(check(&renamed, None), Err(AssertionError::KubernetesClaim));
        let missing = edited(|c| {
            c.as_object_mut().unwrap().remove("kubernetes.io");
        });
        assert_eq!(check(&missing, None), Err(AssertionError::KubernetesClaim));
        let malformed = edited(|c| c["kubernetes.io"] = json!("shop/billing"));
        assert_eq!(
            check(&malformed, None),
            Err(AssertionError::KubernetesClaim)
        );
        for sub in [
            "system:serviceaccount:shop:billing:extra",
            "system:serviceaccount::billing",
            "system:serviceaccount:shop:",
            "system:serviceaccounts:shop",
            "shop.billing",
            "system:serviceaccount:Shop:billing",
        ] {
            let jwt = edited(|c| c["sub"] = json!(sub));
            assert_eq!(check(&jwt, None), Err(AssertionError::Subject), "{sub}");
        }
    }

    #[test]
    fn a_client_id_naming_a_secret_client_is_refused_before_the_signature() {
        let jwt = token(&claims("shop", "billing"));
        for id in ["shop.web", "shop.nobody"] {
            assert_eq!(
                check(&jwt, Some(id)),
                Err(AssertionError::NotServiceAccountClient)
            );
        }
        // Not even a well-formed token is needed to learn nothing more.
        assert_eq!(
            check("x", Some("shop.web")),
            Err(AssertionError::NotServiceAccountClient)
        );
    }

    #[test]
    fn a_subject_of_two_clients_needs_a_client_id() {
        let batch = token(&claims("shop", "batch"));
        assert_eq!(check(&batch, None), Err(AssertionError::Ambiguous));
        assert_eq!(
            check(&batch, Some("shop.batch-b")).as_deref(),
            Ok("shop.batch-b")
        );
        assert_eq!(check(&batch, Some(BILLING)), Err(AssertionError::NotListed));
    }

    #[test]
    fn an_assertion_over_8_kib_is_refused() {
        let big = edited(|c| c["padding"] = json!("a".repeat(MAX_ASSERTION_BYTES)));
        assert!(big.len() > MAX_ASSERTION_BYTES);
        assert_eq!(check(&big, None), Err(AssertionError::TooLarge));
    }

    #[test]
    fn without_a_cluster_issuer_every_assertion_is_refused() {
        let off = ServiceAccountVerifier::new(None, ISSUER_URL, LEEWAY, &clients());
        let jwt = token(&claims("shop", "billing"));
        assert_eq!(
            off.verify(&jwt, Some(BILLING), NOW),
            Err(AssertionError::NoClusterIssuer)
        );
        assert_eq!(off.algorithms(), None);
        assert_eq!(verifier().algorithms(), Some(&[Alg::Rs256, Alg::Es256][..]));
        // An algorithm the operator did not render is refused, and its keys are left out.
        let mut cluster = cluster();
        cluster.algorithms = vec!["ES256".into()];
        let ec_only = ServiceAccountVerifier::new(Some(&cluster), ISSUER_URL, LEEWAY, &clients());
        assert_eq!(
            ec_only.verify(&jwt, None, NOW),
            Err(AssertionError::Algorithm)
        );
    }

    #[test]
    fn other_token_types_and_claim_types_are_refused() {
        let access = jws(
            &json!({"alg": "RS256", "kid": RSA_KID, "typ": "at+jwt"}),
            &claims("shop", "billing"),
            rs256(&keys().rsa),
        );
        assert_eq!(check(&access, None), Err(AssertionError::Typ));
        let stringly = edited(|c| c["exp"] = json!((NOW + 60).to_string()));
        assert_eq!(
            check(&stringly, None),
            Err(AssertionError::Claims(JsonError::WrongType))
        );
    }
}
