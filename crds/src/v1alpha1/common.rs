//! Types shared by both resources: durations, references, conditions.

use std::borrow::Cow;

use schemars::{JsonSchema, Schema, SchemaGenerator, json_schema};
use serde::{Deserialize, Serialize};

/// A duration in the API grammar (`90s`, `15m`, `720h`, `1h30m`) that must be greater than zero.
///
/// The schema carries the grammar as a `pattern` and a CEL rule for positivity; the operator
/// parses the same grammar with [`scopegate_core::duration::parse`].
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
#[serde(transparent)]
pub struct PositiveDuration(pub String);

/// A duration in the API grammar that may be zero (`0s`).
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
#[serde(transparent)]
pub struct Duration(pub String);

impl PositiveDuration {
    /// Parses the value. The schema makes failure impossible for stored objects; the error
    /// still says what is wrong if a client skipped validation.
    pub fn get(&self) -> Result<std::time::Duration, scopegate_core::duration::DurationError> {
        scopegate_core::duration::parse(&self.0)
    }
}

impl Duration {
    /// Parses the value (see [`PositiveDuration::get`]).
    pub fn get(&self) -> Result<std::time::Duration, scopegate_core::duration::DurationError> {
        scopegate_core::duration::parse(&self.0)
    }
}

impl From<&str> for PositiveDuration {
    fn from(value: &str) -> Self {
        Self(value.to_owned())
    }
}

impl From<&str> for Duration {
    fn from(value: &str) -> Self {
        Self(value.to_owned())
    }
}

const DURATION_GRAMMAR_MESSAGE: &str =
    "a duration is hours, minutes and seconds in that order, e.g. 90s, 15m, 720h, 1h30m (no days)";

impl JsonSchema for PositiveDuration {
    fn schema_name() -> Cow<'static, str> {
        "PositiveDuration".into()
    }

    fn inline_schema() -> bool {
        true
    }

    fn json_schema(_: &mut SchemaGenerator) -> Schema {
        json_schema!({
            "type": "string",
            "pattern": scopegate_core::duration::PATTERN,
            "maxLength": scopegate_core::duration::MAX_LEN,
            "x-kubernetes-validations": [
                {
                    "rule": format!(
                        "self.matches('{}') && duration(self) > duration('0s')",
                        scopegate_core::duration::PATTERN
                    ),
                    "message": format!("must be greater than zero; {DURATION_GRAMMAR_MESSAGE}"),
                }
            ]
        })
    }
}

impl JsonSchema for Duration {
    fn schema_name() -> Cow<'static, str> {
        "Duration".into()
    }

    fn inline_schema() -> bool {
        true
    }

    fn json_schema(_: &mut SchemaGenerator) -> Schema {
        json_schema!({
            "type": "string",
            "pattern": scopegate_core::duration::PATTERN,
            "maxLength": scopegate_core::duration::MAX_LEN,
        })
    }
}

/// A reference to an object by name, optionally in another namespace.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct NamespacedRef {
    /// Name of the referenced object.
    #[schemars(length(min = 1, max = 253))]
    pub name: String,
    /// Namespace of the referenced object. Defaults to the namespace of the object that holds
    /// this reference.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 63))]
    pub namespace: Option<String>,
}

/// A reference to one key of a Secret in the same namespace.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct SecretKeyRef {
    /// Name of the Secret, in the namespace of the object that holds this reference.
    #[schemars(length(min = 1, max = 253))]
    pub name: String,
    /// Key within the Secret's data.
    #[schemars(length(min = 1, max = 253))]
    pub key: String,
}

/// Signing algorithms for tokens: what an issuer signs with and what a verifier accepts.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, Hash, JsonSchema)]
pub enum Algorithm {
    /// ECDSA with P-256 and SHA-256.
    ES256,
    /// ECDSA with P-384 and SHA-384.
    ES384,
    /// RSASSA-PKCS1-v1_5 with SHA-256.
    RS256,
    /// RSASSA-PKCS1-v1_5 with SHA-384.
    RS384,
    /// RSASSA-PKCS1-v1_5 with SHA-512.
    RS512,
    /// RSASSA-PSS with SHA-256.
    PS256,
    /// RSASSA-PSS with SHA-384.
    PS384,
    /// RSASSA-PSS with SHA-512.
    PS512,
    /// Ed25519 (RFC 8037).
    EdDSA,
    /// HMAC with SHA-256: a shared secret, only when no other policy verifies.
    HS256,
}

/// HTTP methods a rule can match.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, Hash, JsonSchema)]
#[allow(clippy::upper_case_acronyms)]
pub enum HttpMethod {
    /// GET
    GET,
    /// HEAD
    HEAD,
    /// POST
    POST,
    /// PUT
    PUT,
    /// PATCH
    PATCH,
    /// DELETE
    DELETE,
    /// OPTIONS
    OPTIONS,
}

/// A CEL expression, true when `v` is an absolute https URL without fragment, or an http URL
/// on `127.0.0.1` or `[::1]` (RFC 8252 §7.3 loopback redirects; `localhost` is not loopback
/// enough, since it can resolve elsewhere).
fn https_or_loopback(v: &str) -> String {
    format!(
        "isURL({v}) && !{v}.contains('#') && (url({v}).getScheme() == 'https' && url({v}).getHostname() != '' || \
         url({v}).getScheme() == 'http' && (url({v}).getHostname() == '127.0.0.1' || url({v}).getHostname() == '::1'))"
    )
}

/// Schema of a browser-facing URL: https, or http on loopback only.
pub(crate) fn browser_url(_: &mut SchemaGenerator) -> Schema {
    json_schema!({
        "type": "string",
        "maxLength": 512,
        "x-kubernetes-validations": [{
            "rule": https_or_loopback("self"),
            "message": "must be an absolute https URL without fragment (http only for 127.0.0.1 or [::1], not localhost)",
        }]
    })
}

/// Schema of a list of OAuth2 redirect URIs.
pub(crate) fn redirect_uri_list(_: &mut SchemaGenerator) -> Schema {
    let valid = https_or_loopback("u");
    let userinfo = "u.matches('^[A-Za-z][A-Za-z0-9+.-]*://[^/?#]*@')";
    json_schema!({
        "type": "array",
        "maxItems": 16,
        "x-kubernetes-list-type": "set",
        "items": { "type": "string", "minLength": 1, "maxLength": 512 },
        "x-kubernetes-validations": [
            {
                "rule": format!("self.all(u, {valid})"),
                "messageExpression": format!(
                    "'redirectUris must be absolute https URLs without fragment (http only for 127.0.0.1 or [::1], not localhost): ' + self.filter(u, !({valid}))[0]"
                ),
            },
            {
                "rule": "self.all(u, !u.contains('*'))",
                "messageExpression": "'redirectUris are compared exactly and cannot hold wildcards (*): ' + self.filter(u, u.contains('*'))[0]",
            },
            {
                "rule": format!("self.all(u, !{userinfo})"),
                "messageExpression": format!(
                    "'redirectUris cannot carry userinfo (user:password@ before the host): it disguises the host a browser really goes to: ' + self.filter(u, {userinfo})[0]"
                ),
            }
        ]
    })
}

/// Whether a value is its type's default (for `skip_serializing_if`, which also keeps the
/// default out of the schema: a default inside a list item would make every client-side
/// `kubectl apply` of an unchanged object a patch).
pub(crate) fn is_default<T: Default + PartialEq>(value: &T) -> bool {
    *value == T::default()
}

/// Most labels and expressions a pod selector may hold (bounds CEL cost).
const MAX_SELECTOR_TERMS: usize = 32;

/// Schema of a pod selector: a Kubernetes LabelSelector whose expressions use the operators
/// that exist with the values they need, and that picks pods by at least one label.
pub(crate) fn pod_selector(_: &mut SchemaGenerator) -> Schema {
    json_schema!({
        "type": "object",
        "properties": {
            "matchLabels": {
                "description": "Labels a pod must carry with exactly these values.",
                "type": "object",
                "maxProperties": MAX_SELECTOR_TERMS,
                "additionalProperties": { "type": "string", "maxLength": 63 },
            },
            "matchExpressions": {
                "description": "Label requirements, all of which a pod must meet.",
                "type": "array",
                "maxItems": MAX_SELECTOR_TERMS,
                "items": {
                    "type": "object",
                    "required": ["key", "operator"],
                    "properties": {
                        "key": {
                            "description": "The label key.",
                            "type": "string", "minLength": 1, "maxLength": 317,
                        },
                        "operator": {
                            "description": "In (the label has one of values), NotIn (it has none of them, or is absent), Exists (the label is there) or DoesNotExist.",
                            "type": "string",
                            "enum": ["In", "NotIn", "Exists", "DoesNotExist"],
                        },
                        "values": {
                            "description": "Label values: at least one for In and NotIn, none for Exists and DoesNotExist.",
                            "type": "array",
                            "maxItems": 64,
                            "items": { "type": "string", "maxLength": 63 },
                        },
                    },
                    "x-kubernetes-validations": [
                        {
                            "rule": "!(self.operator in ['In', 'NotIn']) || (has(self.values) && size(self.values) > 0)",
                            "message": "operators In and NotIn need values: the label's value must (In) or must not (NotIn) be one of them",
                        },
                        {
                            "rule": "!(self.operator in ['Exists', 'DoesNotExist']) || !has(self.values) || size(self.values) == 0",
                            "message": "operators Exists and DoesNotExist take no values: they only ask whether the label is there",
                        },
                    ],
                },
            },
        },
        "x-kubernetes-validations": [{
            "rule": "(has(self.matchLabels) && size(self.matchLabels) > 0) || (has(self.matchExpressions) && self.matchExpressions.exists(e, e.operator in ['In', 'Exists']))",
            "message": "selector must pick pods by at least one label they have (matchLabels, or a matchExpressions term with In or Exists): an empty selector, or one of NotIn and DoesNotExist terms only, selects every other pod of the namespace, present and future",
        }],
    })
}

/// Most scopes a list or vocabulary may hold (bounds CEL cost).
pub(crate) const MAX_SCOPES: usize = 64;

/// A claim named by a dotted path (`email`, `realm_access.roles`): the grammar of
/// `scopegate_core::claim_headers::is_claim_path`.
pub(crate) const CLAIM_PATH_PATTERN: &str = r"^[A-Za-z0-9_:-]+(\.[A-Za-z0-9_:-]+)*$";

/// Schema of a list of scope names: a set of RFC 6749 scope-tokens.
pub(crate) fn scope_list(_: &mut SchemaGenerator) -> Schema {
    json_schema!({
        "type": "array",
        "maxItems": MAX_SCOPES,
        "x-kubernetes-list-type": "set",
        "items": {
            "type": "string",
            "maxLength": scopegate_core::scope::MAX_SCOPE_LEN,
            "pattern": scopegate_core::scope::SCOPE_TOKEN_PATTERN,
        }
    })
}

/// Schema of a list of audiences (token `aud` values).
pub(crate) fn audience_list(_: &mut SchemaGenerator) -> Schema {
    json_schema!({
        "type": "array",
        "maxItems": 16,
        "x-kubernetes-list-type": "set",
        "items": { "type": "string", "minLength": 1, "maxLength": 256 }
    })
}

/// Most ServiceAccounts one OAuthClient names.
pub(crate) const MAX_SERVICE_ACCOUNTS: usize = 8;

/// Schema of a list of ServiceAccount names (DNS subdomains, as the API server names them).
pub(crate) fn service_account_list(_: &mut SchemaGenerator) -> Schema {
    json_schema!({
        "type": "array",
        "maxItems": MAX_SERVICE_ACCOUNTS,
        "x-kubernetes-list-type": "set",
        "items": {
            "type": "string",
            "minLength": 1,
            "maxLength": 253,
            "pattern": r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$",
        }
    })
}

/// What a path pattern may be, in words (the grammar is [`scopegate_core::path::PATTERN`]).
const PATH_MESSAGE: &str = "a path pattern starts with '/' and is made of segments of letters, digits and -._~!$&'()+,=:@ or a single * (exactly one segment), optionally ending in /** (anything below) or /; it holds no %, ;, ?, #, . or .. segments, or empty segments (//)";

/// CEL: the grammar of [`scopegate_core::path::PATTERN`], cheaply enough for 2,048 patterns
/// (its full regular expression exceeds the API server's cost budget): segments of pattern
/// characters or `*`, an optional final `/` or `/**`, and no `.` or `..` segment. The e2e CRD
/// suite checks that the API server's verdict agrees with the core parser's on a table of
/// tricky patterns.
const PATH_RULE: &str = concat!(
    r#"self.matches(r"^(/([-A-Za-z0-9._~!$&'()+,=:@]+|\*))*(/|/\*\*)?$") "#,
    "&& !self.contains('/./') && !self.contains('/../') ",
    "&& !self.endsWith('/.') && !self.endsWith('/..')"
);

/// Schema of a list of rule path patterns. The grammar is checked by CEL so that a refusal
/// says what is wrong in words rather than quoting the regular expression.
pub(crate) fn path_list(_: &mut SchemaGenerator) -> Schema {
    json_schema!({
        "type": "array",
        "minItems": 1,
        "maxItems": 32,
        "items": {
            "type": "string",
            "minLength": 1,
            "maxLength": scopegate_core::path::MAX_LEN,
            "x-kubernetes-validations": [{
                "rule": PATH_RULE,
                "message": PATH_MESSAGE,
            }],
        }
    })
}

/// Schema of a list of HTTP methods (empty means every method).
pub(crate) fn method_list(generator: &mut SchemaGenerator) -> Schema {
    let item = generator.subschema_for::<HttpMethod>();
    json_schema!({
        "type": "array",
        "maxItems": 7,
        "x-kubernetes-list-type": "set",
        "items": item,
    })
}

/// Schema of `status.conditions`: a list-map keyed by `type`, as Kubernetes API conventions ask.
pub(crate) fn conditions(generator: &mut SchemaGenerator) -> Schema {
    let item =
        generator.subschema_for::<k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition>();
    json_schema!({
        "type": "array",
        "x-kubernetes-list-type": "map",
        "x-kubernetes-list-map-keys": ["type"],
        "items": item,
    })
}
