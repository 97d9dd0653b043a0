//! What the operator observed of an AuthPolicy.

use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::v1alpha1::common::*;

/// Observed state of an AuthPolicy.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct AuthPolicyStatus {
    /// The metadata.generation this status describes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
    /// Ready (everything rendered, checked and in use: it will work), Reconciling (the
    /// operator is still at work), Stalled (it cannot go on until something changes), KeysReady
    /// (issuer keys published and active), Degraded (working, but something needs attention)
    /// and Enforcing (False while the policy or some rules are in DryRun), each with a reason
    /// and message. Reconciling and Stalled follow kstatus.
    #[serde(default)]
    #[schemars(schema_with = "conditions")]
    pub conditions: Vec<Condition>,
    /// Self, PolicyRef or External.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub issuer_mode: Option<String>,
    /// Key id of the key that signs new tokens (self issuers).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub active_kid: Option<String>,
    /// The issuer's keys and where each is in its life: next, active or retiring.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub keys: Vec<KeyStatus>,
    /// When the next key transition is due.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub next_rotation: Option<Time>,
    /// The value of the `scopegate.dev/rotate` annotation last acted on: setting another value
    /// asks for another rotation. Kept here rather than with the keys, so that a deleted or
    /// restored signing-keys Secret never replays an old request.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub handled_rotation: Option<String>,
    /// What keeps the selected pods' app ports out of reach but through the sidecar:
    /// NetworkPolicy, PortLock, NetworkPolicy+PortLock, or None.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub inbound_protection: Option<String>,
    /// `selected/with sidecar`: the pods this policy selects and, of those, the pods that
    /// carry its sidecar (the `Pods` column).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pods: Option<String>,
    /// Pods this policy selects.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub selected_pods: Option<i32>,
    /// Selected pods that carry the sidecar.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub injected_pods: Option<i32>,
    /// Up to ten selected pods that run without the sidecar (created before their namespace
    /// was labelled, or before this policy or their labels changed): restart them.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub uninjected_pods: Vec<String>,
    /// Names of the objects the operator rendered for this policy.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rendered: Option<RenderedObjects>,
    /// Each upstream identity provider: the callback URL to register at the provider, and
    /// whether it is ready.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub upstreams: Vec<crate::v1alpha1::upstream::UpstreamStatus>,
    /// Each outside issuer given by discoveryUrl: the JWKS its discovery document names, the
    /// keys rendered into the sidecars' config, and why the last read failed while it fails.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub discovered_issuers: Vec<DiscoveredIssuerStatus>,
    /// For an issuer some of whose OAuthClients authenticate with ServiceAccount tokens: the
    /// cluster's service-account issuer as the operator read it through the API server (its
    /// name, the key ids rendered into the issuer's config, and why the last read failed
    /// while it fails).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub service_account_issuer: Option<DiscoveredIssuerStatus>,
}

/// What the operator read of an outside issuer given by discoveryUrl.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct DiscoveredIssuerStatus {
    /// The issuer.
    pub issuer: String,
    /// The JWKS URL its discovery document names (once read).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub jwks_uri: Option<String>,
    /// Key ids of the keys in force: rendered into the sidecars' config.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub key_ids: Vec<String>,
    /// Why the keys could not be read or used, while that lasts (the keys in force are then
    /// the last good ones).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

/// One signing key in status.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct KeyStatus {
    /// Key id.
    pub kid: String,
    /// publishing (written and published, signing nothing until every verifier is seen to
    /// hold it), next (held everywhere, signing from activatesAt), active (signing) or retiring
    /// (published until the tokens it signed have expired).
    pub state: String,
    /// When the key was first published.
    pub published_at: Time,
    /// When the key starts (or started) signing.
    pub activates_at: Time,
    /// When the key stops signing.
    pub signs_until: Time,
    /// When the key leaves every JWKS.
    pub removed_after: Time,
    /// Its private half is gone (the signing-keys Secret was deleted, or restored from an older
    /// copy): it signs nothing and stays published until the tokens it signed have expired.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub public_only: bool,
}

/// Names of rendered objects.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct RenderedObjects {
    /// The sidecar config ConfigMap.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sidecar_config: Option<String>,
    /// The public JWKS ConfigMap (self issuers).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub jwks: Option<String>,
    /// The signing-keys Secret (self issuers).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub signing_keys: Option<String>,
    /// The serving certificate Secret (self issuers).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tls: Option<String>,
    /// The client registry Secret (self issuers).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub clients: Option<String>,
    /// The Secret of upstream client secrets (self issuers with upstreams).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub upstreams: Option<String>,
    /// The NetworkPolicy admitting ingress only on the sidecar's port.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub network_policy: Option<String>,
    /// The Secret of the keys that seal session cookies (policies with sessions).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub session_keys: Option<String>,
}
