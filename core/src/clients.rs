//! The client registry: what the operator renders into Secret `<issuer>-clients` (key
//! [`CLIENTS_FILE`]) from every OAuthClient that references the issuer, and the issuer
//! sidecar authenticates clients against.
//!
//! Secrets appear only as PHC hashes ([`crate::secret_hash`]). During a secret rotation a
//! client has two hashes, the old one with an end time.

use serde::{Deserialize, Serialize};

/// File name of the document inside the clients Secret.
pub const CLIENTS_FILE: &str = "clients.json";

/// The token-exchange grant type (RFC 8693 §2.1).
pub const TOKEN_EXCHANGE_GRANT: &str = "urn:ietf:params:oauth:grant-type:token-exchange";

/// Longest chain of actors a token may name (`act` nested this deep at most).
pub const MAX_EXCHANGE_DEPTH: u8 = 4;

/// Every client of one issuer.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, Default)]
#[serde(rename_all = "camelCase")]
pub struct ClientRegistry {
    /// Clients, sorted by client_id.
    pub clients: Vec<RegisteredClient>,
    /// client_id → the login choices (upstream names, `local` for the app's own login) that
    /// client may offer, from `OAuthClient.spec.upstreams`. A client not listed may offer
    /// every choice of the issuer.
    #[serde(default, skip_serializing_if = "std::collections::BTreeMap::is_empty")]
    pub upstream_choices: std::collections::BTreeMap<String, Vec<String>>,
}

impl ClientRegistry {
    /// The client with this id.
    pub fn find(&self, client_id: &str) -> Option<&RegisteredClient> {
        self.clients.iter().find(|c| c.client_id == client_id)
    }
}

/// One registered client.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct RegisteredClient {
    /// The client_id (`<namespace>.<name>` of its OAuthClient).
    pub client_id: String,
    /// A public client: no secret, PKCE required, no introspection.
    pub public: bool,
    /// How it authenticates at the token endpoint.
    pub auth_method: AuthMethod,
    /// Hashes of the secrets that authenticate it (two during a rotation overlap).
    #[serde(default)]
    pub secrets: Vec<SecretHash>,
    /// Grants it may use: `client_credentials`, `authorization_code`, `refresh_token`.
    pub grant_types: Vec<String>,
    /// Scopes it may get.
    pub scopes: Vec<String>,
    /// Scopes it gets when it asks for none.
    #[serde(default)]
    pub default_scopes: Vec<String>,
    /// Audiences of its tokens (empty: the issuer URL): only those whose owning AuthPolicy
    /// admits this client.
    #[serde(default)]
    pub audiences: Vec<String>,
    /// Audiences owned by this client's own namespace: besides its own tokens, it may
    /// introspect tokens carrying one of them, and no others.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub owned_audiences: Vec<String>,
    /// Registered redirect URIs.
    #[serde(default)]
    pub redirect_uris: Vec<String>,
    /// Tokens, codes and refresh families issued before this Unix time are dead.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub revoke_before: Option<i64>,
    /// With [`AuthMethod::ServiceAccountJwt`]: the token subjects that authenticate it,
    /// `system:serviceaccount:<namespace>:<name>`, all of the client's own namespace.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub service_accounts: Vec<String>,
    /// Which tokens it may exchange, and for which audiences (RFC 8693); `None`: it may not
    /// (then [`TOKEN_EXCHANGE_GRANT`] is not among its grant types either).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub token_exchange: Option<TokenExchange>,
}

/// What a client may exchange (RFC 8693): tokens sent to its own services, for tokens to
/// other audiences that name it as the actor.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct TokenExchange {
    /// A subject token must carry one of these audiences: audiences its own namespace owns,
    /// so a token is exchanged only by the service it was sent to.
    pub subject_audiences: Vec<String>,
    /// The audiences it may ask for, each admitted by its owner.
    pub audiences: Vec<String>,
    /// The longest chain of actors an exchanged token may carry, 1 to [`MAX_EXCHANGE_DEPTH`]:
    /// 1 exchanges only tokens that no client exchanged before.
    pub max_depth: u8,
}

/// A hashed client secret.
#[derive(Serialize, Deserialize, Clone, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct SecretHash {
    /// The PHC string.
    pub phc: String,
    /// Unix time after which this secret no longer authenticates (the old secret of a
    /// rotation); `None` for the current one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub not_after: Option<i64>,
    /// Version of the Secret the plaintext was read from, so the operator re-hashes only when
    /// the plaintext changed or the scheme is deprecated.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub source: Option<String>,
}

impl std::fmt::Debug for SecretHash {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let scheme = self.phc.split('$').nth(1).unwrap_or_default();
        f.debug_struct("SecretHash")
            .field("scheme", &scheme)
            .field("not_after", &self.not_after)
            .finish_non_exhaustive()
    }
}

/// Client authentication methods at the token endpoint.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum AuthMethod {
    /// HTTP Basic.
    ClientSecretBasic,
    /// Form body.
    ClientSecretPost,
    /// None (public clients).
    None,
    /// A projected ServiceAccount token of the cluster, audience the issuer's URL, as a JWT
    /// client assertion (RFC 7523 §2.2; the subject is the ServiceAccount, not the client).
    ServiceAccountJwt,
}

/// The subject of a ServiceAccount's tokens, as the API server issues them.
pub fn service_account_subject(namespace: &str, name: &str) -> String {
    format!("system:serviceaccount:{namespace}:{name}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_service_account_client_round_trips_and_an_older_entry_still_reads() {
        let text = r#"{"clientId":"shop.billing","public":false,
            "authMethod":"service_account_jwt","grantTypes":["client_credentials"],
            "scopes":["orders:read"],
            "serviceAccounts":["system:serviceaccount:shop:billing"]}"#;
        let client: RegisteredClient = serde_json::from_str(text).unwrap();
        assert_eq!(client.auth_method, AuthMethod::ServiceAccountJwt);
        assert_eq!(
            client.service_accounts,
            [service_account_subject("shop", "billing")]
        );
        let again = serde_json::to_string(&client).unwrap();
        assert_eq!(
            serde_json::from_str::<RegisteredClient>(&again).unwrap(),
            client
        );

        let older = r#"{"clientId":"shop.web","public":false,
            "authMethod":"client_secret_basic","grantTypes":[],"scopes":[]}"#;
        let client: RegisteredClient = serde_json::from_str(older).unwrap();
        assert!(client.service_accounts.is_empty());
        assert!(
            !serde_json::to_string(&client)
                .unwrap()
                .contains("serviceAccounts")
        );
    }
}
