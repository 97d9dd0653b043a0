//! `OAuthClient`: an OAuth2 client registered with an issuing AuthPolicy.

use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};
use kube::CustomResource;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use super::common::{
    NamespacedRef, PositiveDuration, SecretKeyRef, audience_list, conditions, redirect_uri_list,
    scope_list, service_account_list,
};

/// OAuthClient registers an OAuth2 client with an AuthPolicy that issues tokens (issuer.self).
/// The operator gives it a client_id and, for a confidential client, a generated secret in
/// the Secret named by secretName; the issuer's pods learn of it within a reconcile.
#[derive(CustomResource, Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[kube(
    group = "scopegate.dev",
    version = "v1alpha1",
    kind = "OAuthClient",
    doc = "OAuthClient registers an OAuth2 client with an AuthPolicy that issues tokens; the operator gives it a client_id and, for a confidential client, a generated secret.",
    namespaced,
    status = "OAuthClientStatus",
    shortname = "oac",
    category = "scopegate",
    selectable = ".spec.issuerRef.name",
    printcolumn = r#"{"name":"Ready","type":"string","jsonPath":".status.conditions[?(@.type==\"Ready\")].status"}"#,
    printcolumn = r#"{"name":"Issuer","type":"string","jsonPath":".spec.issuerRef.name"}"#,
    printcolumn = r#"{"name":"Client ID","type":"string","jsonPath":".status.clientId"}"#,
    printcolumn = r#"{"name":"Reason","type":"string","priority":1,"jsonPath":".status.conditions[?(@.type==\"Ready\")].reason"}"#,
    printcolumn = r#"{"name":"Auth","type":"string","priority":1,"jsonPath":".status.authentication"}"#,
    printcolumn = r#"{"name":"Age","type":"date","jsonPath":".metadata.creationTimestamp"}"#
)]
#[serde(rename_all = "camelCase")]
#[schemars(extend("x-kubernetes-validations" = [
    {
        "rule": "!self.public || self.grantTypes.all(g, g in ['authorization_code', 'refresh_token'])",
        "message": "a public client has no secret to authenticate with: it may only use authorization_code (with PKCE) and refresh_token, never client_credentials",
        "fieldPath": ".grantTypes"
    },
    {
        "rule": "!has(self.tokenEndpointAuthMethod) || (self.public == (self.tokenEndpointAuthMethod == 'none'))",
        "message": "tokenEndpointAuthMethod none is for public clients and only for them: set public: true with none, or a client_secret method without public",
        "fieldPath": ".tokenEndpointAuthMethod"
    },
    {
        "rule": "!self.public || (!has(self.secretName) && !has(self.existingSecret))",
        "message": "a public client has no secret: remove secretName and existingSecret (its client_id is shown in status.clientId)"
    },
    {
        "rule": "!(has(self.secretName) && has(self.existingSecret))",
        "message": "set secretName (the operator generates the secret) or existingSecret (you chose it), not both"
    },
    {
        "rule": "self.defaultScopes.all(s, s in self.scopes)",
        "messageExpression": "'defaultScopes must be a subset of scopes; not in scopes: ' + self.defaultScopes.filter(s, !(s in self.scopes))[0]",
        "fieldPath": ".defaultScopes"
    },
    {
        "rule": "!('authorization_code' in self.grantTypes) || size(self.redirectUris) > 0",
        "message": "the authorization_code grant needs at least one redirectUri",
        "fieldPath": ".redirectUris"
    },
    {
        "rule": "!('refresh_token' in self.grantTypes) || 'authorization_code' in self.grantTypes",
        "message": "refresh_token needs authorization_code: client_credentials clients get new access tokens, not refresh tokens (RFC 6749 §4.4.3)",
        "fieldPath": ".grantTypes"
    },
    {
        "rule": "!has(self.tokenExchange) || !self.public",
        "message": "a public client cannot exchange tokens: it has no credential to prove it is the actor (RFC 8693 §2.1)",
        "fieldPath": ".tokenExchange"
    },
    {
        "rule": "!has(self.serviceAccounts) || size(self.serviceAccounts) == 0 || (!self.public && !has(self.secretName) && !has(self.existingSecret) && !has(self.tokenEndpointAuthMethod))",
        "message": "a client that authenticates with ServiceAccount tokens has no secret and is not public: remove public, secretName, existingSecret and tokenEndpointAuthMethod (the method is the ServiceAccount token, RFC 7523)",
        "fieldPath": ".serviceAccounts"
    }
]))]
pub struct OAuthClientSpec {
    /// The AuthPolicy (with issuer.self) that issues tokens to this client. Another namespace
    /// works only if that policy lists this namespace in allowedClientNamespaces.
    pub issuer_ref: NamespacedRef,

    /// Grants the client may use: client_credentials, authorization_code, refresh_token.
    #[schemars(length(min = 1, max = 3))]
    #[schemars(extend("x-kubernetes-list-type" = "set"))]
    pub grant_types: Vec<GrantType>,

    /// Scopes the client may get. Each must be declared by the issuer (status says which is
    /// not). A request for any other scope is refused with invalid_scope, never trimmed.
    #[serde(default)]
    #[schemars(schema_with = "scope_list")]
    pub scopes: Vec<String>,

    /// Scopes granted when a request names none (a subset of scopes).
    #[serde(default)]
    #[schemars(schema_with = "scope_list")]
    pub default_scopes: Vec<String>,

    /// Audiences of the client's tokens. A token request's RFC 8707 resource parameter must
    /// equal one of them (absolute URIs then); without it, the token carries all of them.
    /// Empty means the issuer URL. Each must be admitted by the AuthPolicy that owns it
    /// (its spec.clients; clients of the owner's own namespace always are): one that is not
    /// is never issued and status says so (reason AudienceNotAdmitted).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(schema_with = "audience_list")]
    pub audiences: Vec<String>,

    /// Where the authorization endpoint may send the browser back: absolute https URLs without
    /// fragment, compared exactly. http://127.0.0.1 and http://[::1] (not localhost) are allowed
    /// for native apps and match with any port (RFC 8252 §7.3).
    #[serde(default)]
    #[schemars(schema_with = "redirect_uri_list")]
    pub redirect_uris: Vec<String>,

    /// A public client (a browser or native app) has no secret: it authenticates with
    /// client_id only, must use PKCE, and may never introspect.
    #[serde(default)]
    pub public: bool,

    /// How the client authenticates at the token endpoint: client_secret_basic (default for
    /// confidential clients), client_secret_post, or none (public clients, the default for
    /// them).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub token_endpoint_auth_method: Option<TokenEndpointAuthMethod>,

    /// Secret the operator creates and owns, with keys client_id and client_secret (a
    /// generated 256-bit secret). Defaults to `<name>-oauth-client` for confidential clients.
    /// The operator refuses to write into a Secret it does not own.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 253))]
    pub secret_name: Option<String>,

    /// A secret you chose yourself, in a Secret you own: it is hashed with argon2id, and a
    /// change rolls into the issuer without a restart. The client_id is then this object's
    /// name prefixed with its namespace (see status.clientId).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub existing_secret: Option<SecretKeyRef>,

    /// ServiceAccounts of this namespace whose tokens authenticate the client instead of a
    /// secret (RFC 7523 §2.2): the pod posts its projected ServiceAccount token as
    /// client_assertion, with client_assertion_type
    /// urn:ietf:params:oauth:client-assertion-type:jwt-bearer, to the issuer's token endpoint.
    /// The token's audience must be exactly the issuer's url (a projected volume with
    /// serviceAccountToken.audience set to it; keep expirationSeconds short, e.g. 600), and
    /// the issuer checks it against the cluster's service-account issuer, whose keys the
    /// operator reads from the API server. No Secret exists for such a client; it may not be
    /// public or name a secret. Names only: another namespace's ServiceAccount cannot be named.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(schema_with = "service_account_list")]
    pub service_accounts: Vec<String>,

    /// How long the previous generated secret keeps working after a rotation (annotate the
    /// OAuthClient with scopegate.dev/rotate-secret set to any new value to rotate). Default 24h.
    #[serde(default = "default_secret_overlap")]
    pub secret_rotation_overlap: PositiveDuration,

    /// A kill switch: every token, code and refresh family issued to this client before this
    /// time is dead, at every verifier, at the token endpoint and at introspection. A time
    /// still in the future when the operator sees it would refuse every token the client gets
    /// until then: until it comes, the moment the operator first saw it is in force instead
    /// (status.revocationCutoff; Degraded says so).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub revoke_tokens_issued_before: Option<Time>,

    /// The login choices this client may offer its users: names of the issuer's upstreams,
    /// and local for the app's own login (loginUrl). Unset: every choice of the issuer. A
    /// name the issuer does not have is reported in status.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(
        length(min = 1, max = 9),
        inner(
            length(min = 1, max = 32),
            regex(pattern = r"^[a-z0-9]([-a-z0-9]{0,30}[a-z0-9])?$")
        )
    )]
    #[schemars(extend("x-kubernetes-list-type" = "set"))]
    pub upstreams: Option<Vec<String>>,

    /// Token exchange (RFC 8693): the client may trade an access token sent to one of its own
    /// services for a token of another audience, for the same subject, with no more scopes
    /// and no later expiry, naming the client as the actor (act claim). Unset: it may not.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub token_exchange: Option<TokenExchangeSpec>,
}

/// Which tokens a client may exchange, and for what.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct TokenExchangeSpec {
    /// Audiences of the tokens it may exchange: a subject token must carry one of them. Each
    /// must be owned by this namespace (an audience of one of its AuthPolicies), so only the
    /// service a token was sent to can exchange it; status says which is not (reason
    /// ExchangeAudienceRefused).
    #[schemars(schema_with = "exchange_audience_list")]
    pub subject_audiences: Vec<String>,
    /// Audiences it may ask for: each owned by this namespace, or by an AuthPolicy whose
    /// spec.clients.actors admits this client (being admitted to call it as itself is not
    /// enough); status says which is not (reason ExchangeAudienceRefused).
    #[schemars(schema_with = "exchange_audience_list")]
    pub audiences: Vec<String>,
    /// The longest chain of actors an exchanged token may carry: 1 (the default) exchanges
    /// only tokens no client exchanged before; up to 4.
    #[serde(default = "default_exchange_depth")]
    #[schemars(range(min = 1, max = 4))]
    pub max_depth: i32,
}

fn default_exchange_depth() -> i32 {
    1
}

/// A non-empty audience list of a token exchange.
fn exchange_audience_list(_: &mut schemars::SchemaGenerator) -> schemars::Schema {
    schemars::json_schema!({
        "type": "array",
        "minItems": 1,
        "maxItems": 16,
        "x-kubernetes-list-type": "set",
        "items": { "type": "string", "minLength": 1, "maxLength": 256 }
    })
}

fn default_secret_overlap() -> PositiveDuration {
    "24h".into()
}

/// OAuth2 grant types.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, Hash, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum GrantType {
    /// Machine-to-machine: the client authenticates and gets a token for itself.
    ClientCredentials,
    /// A user logs in through the browser; the client redeems a code with PKCE.
    AuthorizationCode,
    /// Exchange a refresh token for new tokens (rotated on every use).
    RefreshToken,
}

/// Client authentication at the token endpoint.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, Hash, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum TokenEndpointAuthMethod {
    /// HTTP Basic with client_id and client_secret.
    ClientSecretBasic,
    /// client_id and client_secret in the form body.
    ClientSecretPost,
    /// No secret (public clients, with PKCE).
    None,
}

/// Observed state of an OAuthClient.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct OAuthClientStatus {
    /// The metadata.generation this status describes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
    /// Ready (registered with the issuer: it will work), Reconciling (registration in
    /// flight), Stalled (it cannot go on until something changes) and Degraded, each with a
    /// reason and message, e.g. an unknown scope or a namespace the issuer does not allow.
    /// Reconciling and Stalled follow kstatus.
    #[serde(default)]
    #[schemars(schema_with = "conditions")]
    pub conditions: Vec<Condition>,
    /// The client_id the issuer knows this client by.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub client_id: Option<String>,
    /// The Secret that holds the client's credentials.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub secret_name: Option<String>,
    /// How the client authenticates at the token endpoint, in words: its Secret, or the
    /// ServiceAccount tokens it accepts and the audience they need.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub authentication: Option<String>,
    /// The spec.revokeTokensIssuedBefore cut-off in force. A time still in the future when the
    /// operator first saw it is clamped to that moment until it comes (taken literally it
    /// would refuse every token the client gets until then), and Degraded says so.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub revocation_cutoff: Option<RevocationCutoff>,
}

/// A client's revocation cut-off: what the spec asks and what is in force.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct RevocationCutoff {
    /// spec.revokeTokensIssuedBefore as it was when this was recorded.
    pub requested: Time,
    /// The cut-off the issuer and every verifier enforce.
    pub effective: Time,
}
