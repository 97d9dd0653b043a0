//! The app's outbound calls: made through the sidecar, which attaches tokens of an
//! OAuthClient that authenticates with the pod's own ServiceAccount.

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::v1alpha1::common::*;

/// Outbound calls of the selected pods' app, through the sidecar: the app sends plain HTTP
/// to the sidecar on 127.0.0.1 (HTTP_PROXY=http://127.0.0.1:<port>, or that base URL with the
/// target's name in the Host header), and the sidecar obtains a token for the target with the
/// pod's projected ServiceAccount token (the client's serviceAccounts), attaches it, and
/// forwards the call (over TLS where the target's url is https). Hosts not listed in targets
/// are refused: the sidecar is no open proxy. The pods need the client's ServiceAccount
/// (spec.serviceAccountName); the webhook mounts its token, audience the issuer's url, into
/// the sidecar only.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct Egress {
    /// The OAuthClient of this namespace whose tokens the sidecar obtains. It must
    /// authenticate with ServiceAccount tokens (spec.serviceAccounts) and may use
    /// client_credentials.
    pub client_ref: EgressClientRef,
    /// Port on 127.0.0.1 where the sidecar takes the app's outbound calls (default 15081).
    /// It must differ from listen.port, upstream.port and 15090.
    #[serde(default = "default_egress_port")]
    #[schemars(range(min = 1024, max = 65535))]
    pub port: i32,
    /// Where the app may call, at most 16, each with the audience and scopes of its tokens.
    #[schemars(length(min = 1, max = 16))]
    #[schemars(extend("x-kubernetes-list-type" = "map", "x-kubernetes-list-map-keys" = ["name"]))]
    pub targets: Vec<EgressTarget>,
}

fn default_egress_port() -> i32 {
    15081
}

/// The OAuthClient egress calls are made as.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct EgressClientRef {
    /// Name of an OAuthClient in this namespace.
    #[schemars(length(min = 1, max = 253))]
    pub name: String,
}

/// One place the app may call through the sidecar.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct EgressTarget {
    /// A name for it, quoted in errors the app gets and in metrics.
    #[schemars(
        length(min = 1, max = 63),
        regex(pattern = r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")
    )]
    pub name: String,
    /// Where calls go: https://host[:port], or http://<service>.<namespace>.svc[:port] (plain
    /// HTTP for an in-cluster Service only). No path, query or user info. The app's request
    /// must name this host (and this port, if it names one). An in-cluster name's certificate
    /// is checked against the operator's CA only; any other against the system roots only.
    #[schemars(length(min = 1, max = 512))]
    #[schemars(extend("x-kubernetes-validations" = [{
        "rule": r#"self.matches(r"^https://[a-z0-9]([-a-z0-9.]*[a-z0-9])?(:[0-9]{1,5})?$") || self.matches(r"^http://[a-z0-9]([-a-z0-9]*[a-z0-9])?\.[a-z0-9]([-a-z0-9]*[a-z0-9])?\.svc(\.[a-z0-9]([-a-z0-9.]*[a-z0-9])?)?(:[0-9]{1,5})?$")"#,
        "message": "url must be https://host[:port], or http://<service>.<namespace>.svc[:port] for an in-cluster Service, with a lower-case host and no path, query or user info"
    }]))]
    pub url: String,
    /// The audience its tokens are requested for (RFC 8707 resource): one of the client's
    /// audiences, or with onBehalfOfCaller one of its tokenExchange.audiences.
    #[schemars(length(min = 1, max = 256))]
    pub audience: String,
    /// The scopes its tokens are requested with: among the client's scopes. Empty: the
    /// client's defaultScopes.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(schema_with = "scope_list")]
    pub scopes: Vec<String>,
    /// Call on behalf of the caller: the app passes on the Authorization header of the
    /// request it is serving, and the sidecar exchanges that token (RFC 8693) for one of this
    /// audience that keeps the caller as subject and names the client in act. The client
    /// needs spec.tokenExchange with this audience. Default false: the pod's own token.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub on_behalf_of_caller: bool,
}
