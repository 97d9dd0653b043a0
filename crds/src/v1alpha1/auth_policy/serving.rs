//! The traffic around the app: its port, the sidecar's listener, the proxies in front,
//! and the headers on the way in and out.

use std::collections::BTreeMap;

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::v1alpha1::common::*;

/// The app behind the sidecar.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct Upstream {
    /// Port the app container listens on. The sidecar forwards to 127.0.0.1 on this port.
    #[schemars(range(min = 1, max = 65535))]
    #[schemars(extend("x-kubernetes-validations" = [
        { "rule": "self != 15090", "message": "port 15090 is the sidecar's admin port" }
    ]))]
    pub port: i32,
    /// How the sidecar talks to the app: HTTP1 (default; WebSocket upgrades pass) or H2C
    /// (HTTP/2 without TLS, for gRPC apps).
    #[serde(default)]
    pub protocol: UpstreamProtocol,
    /// How long the app may take to answer before the client gets 504 (default 30s).
    #[serde(default = "default_response_timeout")]
    pub response_timeout: PositiveDuration,
}

fn default_response_timeout() -> PositiveDuration {
    "30s".into()
}

/// Protocol spoken to the app.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, Default, JsonSchema)]
pub enum UpstreamProtocol {
    /// HTTP/1.1.
    #[default]
    HTTP1,
    /// HTTP/2 over cleartext with prior knowledge.
    H2C,
}

/// The sidecar's listener for protected traffic.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct Listen {
    /// Port the sidecar listens on (default 15080, at least 1024). Point the Service's port
    /// 80 or 443 at it.
    #[serde(default = "default_listen_port")]
    #[schemars(range(min = 1, max = 65535))]
    #[schemars(extend("x-kubernetes-validations" = [
        { "rule": "self != 15090", "message": "port 15090 is the sidecar's admin port" },
        { "rule": "self >= 1024", "message": "listen.port must be 1024 or above: the sidecar runs without privileges and cannot bind a privileged port; let the Service's port 80 or 443 target it instead" }
    ]))]
    pub port: i32,
    /// Name of a kubernetes.io/tls Secret in this namespace to serve TLS with. Issuer pods
    /// always serve TLS with the certificate the operator issues.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 253))]
    pub tls_secret: Option<String>,
}

fn default_listen_port() -> i32 {
    i32::from(scopegate_core::names::DEFAULT_LISTEN_PORT)
}

impl Default for Listen {
    fn default() -> Self {
        Self {
            port: default_listen_port(),
            tls_secret: None,
        }
    }
}

/// Which proxies may tell the client address. Exactly one field is set.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
#[schemars(extend("x-kubernetes-validations" = [
    {
        "rule": "has(self.hops) != (size(self.cidrs) > 0)",
        "message": "trustedProxies sets exactly one of hops or cidrs"
    }
]))]
pub struct TrustedProxies {
    /// Number of proxies in front of the pod: the client address is that many entries from
    /// the right of X-Forwarded-For.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1, max = 8))]
    pub hops: Option<i32>,
    /// Proxy addresses (CIDRs) whose X-Forwarded-For entries are skipped from the right; the
    /// first address outside them is the client.
    #[serde(default)]
    #[schemars(length(max = 32))]
    #[schemars(inner(length(max = 64)))]
    #[schemars(extend("x-kubernetes-validations" = [
        {
            "rule": "self.all(c, isCIDR(c))",
            "messageExpression": "'cidrs must be CIDRs such as 10.0.0.0/8 or fd00::/8: ' + self.filter(c, !isCIDR(c))[0]"
        }
    ]))]
    pub cidrs: Vec<String>,
}

/// Response and identity headers.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct Headers {
    /// Add X-Content-Type-Options: nosniff, X-Frame-Options: DENY and Referrer-Policy:
    /// no-referrer to every response (default true).
    #[serde(default = "default_true")]
    pub security_headers: bool,
    /// Strict-Transport-Security: Auto (when the sidecar serves TLS), Always (also behind a
    /// TLS-terminating proxy) or Never.
    #[serde(default)]
    pub hsts: Hsts,
    /// Path patterns whose responses get Cache-Control: no-store.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(schema_with = "path_list_optional")]
    pub no_store_paths: Vec<String>,
    /// Names of the headers that carry the verified identity to the app. The sidecar strips
    /// any incoming copies first.
    #[serde(default)]
    pub identity: IdentityHeaders,
    /// Claims of the verified token passed to the app, as header name (lower case) → claim: a
    /// top-level claim or a dotted path into nested objects. Example: {x-user-email: email,
    /// x-tenant: org.id, x-roles: realm_access.roles}. Strings are sent as they are, other
    /// JSON values as compact JSON; an absent claim sends no header. A claim a header cannot
    /// carry unchanged (a control character such as CR, LF or NUL, or more than 4096 bytes)
    /// refuses the request with 401 invalid_token rather than forward a partial identity.
    /// Incoming copies of these headers, in any case and with _ for -, are removed first. A
    /// name may not be an identity header's, nor authorization, host, cookie and the other
    /// headers the sidecar owns.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    #[schemars(schema_with = "claim_headers")]
    pub claims: BTreeMap<String, String>,
}

/// `headers.claims`: lower-case header names to claim paths.
fn claim_headers(_: &mut schemars::SchemaGenerator) -> schemars::Schema {
    schemars::json_schema!({
        "type": "object",
        "maxProperties": 16,
        "additionalProperties": {
            "type": "string",
            "minLength": 1,
            "maxLength": 256,
            "pattern": CLAIM_PATH_PATTERN,
        },
        "x-kubernetes-validations": [{
            "rule": "self.all(k, k.matches('^[a-z0-9-]{1,64}$'))",
            "message": "claim header names are lower-case letters, digits and - (at most 64 characters)",
        }],
    })
}

pub(super) fn default_true() -> bool {
    true
}

fn path_list_optional(generator: &mut schemars::SchemaGenerator) -> schemars::Schema {
    let mut schema = path_list(generator);
    schema.remove("minItems");
    schema
}

impl Default for Headers {
    fn default() -> Self {
        Self {
            security_headers: true,
            hsts: Hsts::default(),
            no_store_paths: Vec::new(),
            identity: IdentityHeaders::default(),
            claims: BTreeMap::new(),
        }
    }
}

/// When to send Strict-Transport-Security.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, Default, JsonSchema)]
pub enum Hsts {
    /// When the sidecar itself serves TLS.
    #[default]
    Auto,
    /// Always (the pod sits behind a TLS-terminating proxy).
    Always,
    /// Never.
    Never,
}

/// Header names for the verified identity.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
#[schemars(extend("x-kubernetes-validations" = [
    {
        "rule": "self.subject.lowerAscii() != self.scopes.lowerAscii() && self.subject.lowerAscii() != self.clientId.lowerAscii() && self.scopes.lowerAscii() != self.clientId.lowerAscii()",
        "message": "identity header names must differ"
    }
]))]
pub struct IdentityHeaders {
    /// Header with the token's subject (default x-auth-subject).
    #[serde(default = "default_subject_header")]
    #[schemars(length(min = 1, max = 64), regex(pattern = r"^[A-Za-z0-9-]+$"))]
    pub subject: String,
    /// Header with the token's scopes, space-separated (default x-auth-scopes).
    #[serde(default = "default_scopes_header")]
    #[schemars(length(min = 1, max = 64), regex(pattern = r"^[A-Za-z0-9-]+$"))]
    pub scopes: String,
    /// Header with the token's client_id (default x-auth-client-id).
    #[serde(default = "default_client_id_header")]
    #[schemars(length(min = 1, max = 64), regex(pattern = r"^[A-Za-z0-9-]+$"))]
    pub client_id: String,
}

fn default_subject_header() -> String {
    "x-auth-subject".into()
}
fn default_scopes_header() -> String {
    "x-auth-scopes".into()
}
fn default_client_id_header() -> String {
    "x-auth-client-id".into()
}

impl Default for IdentityHeaders {
    fn default() -> Self {
        Self {
            subject: default_subject_header(),
            scopes: default_scopes_header(),
            client_id: default_client_id_header(),
        }
    }
}
