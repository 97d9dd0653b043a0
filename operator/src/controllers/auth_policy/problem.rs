//! What can be wrong with an AuthPolicy, as its status conditions and Warning events say it:
//! a reason, whether it blocks readiness, and a sentence that says what to do.

/// Something about a policy that needs a person's attention.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Problem {
    /// `policyRef` names a policy that does not exist.
    PolicyRefNotFound(String),
    /// `policyRef` names a policy without `issuer.self`.
    PolicyRefNotIssuer(String),
    /// `policyRef` names an HS256 issuer, whose keys are never published.
    PolicyRefHs256(String),
    /// The referenced issuer has published no key yet.
    PolicyRefKeysPending(String),
    /// A verifier without audiences would accept tokens meant for any service.
    MissingAudiences,
    /// An object the operator must write exists and is not the operator's.
    NotOwned(String),
    /// The issuer keeps state in memory: more than one issuer replica cannot share it.
    MemoryStoreReplicas(i32),
    /// A manual rotation waits: the signing-keys document holds the most keys it keeps.
    RotationDeferred(usize),
    /// Selected pods run without the sidecar: (how many, up to ten names).
    PodsWithoutSidecar(usize, Vec<String>),
    /// A Service sends traffic to the app's port: (service, app port, sidecar port).
    ServiceBypass(String, i32, i32),
    /// The signing-keys document does not parse: (object, why). Nothing is written over it.
    SigningKeysCorrupt(String, String),
    /// A stored key fails its checks and is left out of every key set: (kid, why).
    KeyInvalid(String, String),
    /// Keys whose private half was lost, kept public-only until their tokens expire.
    KeysLost(Vec<String>),
    /// The namespace has more issuers than the operator serves: (the cap, how many).
    IssuerLimit(usize, usize),
    /// `issuer.self.service.name` is not a DNS label: no serving certificate is issued.
    InvalidServiceName(String),
    /// `policyRef` names an issuer of another namespace that does not admit this one:
    /// (issuer, this namespace).
    PolicyRefNotAllowed(String, String),
    /// Audiences this policy lists that another namespace owns: (audience, why) pairs. They
    /// are left out of its sidecar config and no client gets tokens for them through it.
    AudienceConflict(Vec<(String, String)>),
    /// An outside issuer's caBundle (the field named) holds no usable certificate.
    ExternalCaBundleInvalid(String),
    /// Neither a NetworkPolicy nor the port lock keeps the app's port out of reach: (app
    /// port, sidecar port).
    InboundUnprotected(i32, i32),
    /// The sidecar would refuse the rendered config, with its message: the last good config
    /// stays in place.
    ConfigRefused(String),
    /// A Secret the spec names does not exist: (field, Secret name).
    SecretNotFound(String, String),
    /// Rules require scopes the issuer never declares: (issuer, scopes).
    UnknownScopes(String, Vec<String>),
    /// The selector matches no pod.
    NoPodsSelected,
    /// An older policy selects some of the same pods and keeps them: (its name, shared pods).
    Conflict(String, Vec<String>),
    /// A name derived from the policy's is too long for Kubernetes: (what, the name, limit).
    NameTooLong(&'static str, String, usize),
    /// The API server refused a write: (object, its answer).
    WriteRefused(String, String),
    /// A discoveryUrl issuer's keys could not be read or used.
    DiscoveryFailed {
        /// The issuer.
        issuer: String,
        /// Why.
        error: String,
        /// How many keys stay in force (the last good ones).
        kept: usize,
        /// When they were read, if this operator read them (else the sidecars held them).
        read_at: Option<i64>,
    },
    /// A discoveryUrl issuer's keys have not been read yet, and no sidecar holds any.
    DiscoveryPending(String),
    /// The cluster's service-account issuer has no usable key yet (why, if a read failed):
    /// clients that authenticate with ServiceAccount tokens are refused.
    ServiceAccountIssuerPending(Option<String>),
    /// spec.egress cannot work with the client it names (its name, why).
    EgressRefused(String, String),
    /// spec.sessions cannot work with the client it names (its name, why).
    SessionsRefused(String, String),
    /// An egress target asks for what its client may not get (the target, why).
    EgressTargetRefused(String, String),
    /// Reading the cluster's service-account issuer failed; the last good keys stay.
    ServiceAccountIssuerFailed {
        /// Why.
        error: String,
        /// How many keys stay in force.
        kept: usize,
        /// When they were read, if this operator read them (else the sidecars held them).
        read_at: Option<i64>,
    },
}

impl Problem {
    /// CamelCase reason.
    pub fn reason(&self) -> &'static str {
        match self {
            Problem::PolicyRefNotFound(_) => "PolicyRefNotFound",
            Problem::PolicyRefNotIssuer(_) => "PolicyRefNotIssuer",
            Problem::PolicyRefHs256(_) => "PolicyRefHS256",
            Problem::PolicyRefKeysPending(_) => "PolicyRefKeysPending",
            Problem::MissingAudiences => "MissingAudiences",
            Problem::NotOwned(_) => "ObjectNotOwned",
            Problem::MemoryStoreReplicas(_) => "MemoryStoreWithReplicas",
            Problem::RotationDeferred(_) => "RotationDeferred",
            Problem::PodsWithoutSidecar(..) => "PodsWithoutSidecar",
            Problem::ServiceBypass(..) => "ServiceBypassesSidecar",
            Problem::SigningKeysCorrupt(..) => "SigningKeysCorrupt",
            Problem::KeyInvalid(..) => "KeyInvalid",
            Problem::KeysLost(_) => "SigningKeysLost",
            Problem::IssuerLimit(..) => "NamespaceIssuerLimit",
            Problem::InvalidServiceName(_) => "InvalidServiceName",
            Problem::PolicyRefNotAllowed(..) => "PolicyRefNotAllowed",
            Problem::AudienceConflict(_) => "AudienceConflict",
            Problem::ExternalCaBundleInvalid(_) => "CaBundleInvalid",
            Problem::InboundUnprotected(..) => "InboundUnprotected",
            Problem::ConfigRefused(_) => "InvalidConfig",
            Problem::SecretNotFound(..) => "SecretNotFound",
            Problem::UnknownScopes(..) => "UnknownScope",
            Problem::NoPodsSelected => "NoPodsSelected",
            Problem::Conflict(..) => "Conflict",
            Problem::NameTooLong(..) => "NameTooLong",
            Problem::WriteRefused(..) => "WriteRefused",
            Problem::DiscoveryFailed { .. } => "DiscoveryFailed",
            Problem::DiscoveryPending(_) => "DiscoveryPending",
            Problem::ServiceAccountIssuerPending(_) => "ServiceAccountIssuerPending",
            Problem::EgressRefused(..) => "EgressRefused",
            Problem::EgressTargetRefused(..) => "EgressTargetRefused",
            Problem::SessionsRefused(..) => "SessionsRefused",
            Problem::ServiceAccountIssuerFailed { .. } => "ServiceAccountIssuerFailed",
        }
    }

    /// Whether the sidecar config trusts no key because of it (Ready is then False).
    pub fn blocks_readiness(&self) -> bool {
        !matches!(
            self,
            Problem::MemoryStoreReplicas(_)
                | Problem::RotationDeferred(_)
                | Problem::PodsWithoutSidecar(..)
                | Problem::ServiceBypass(..)
                | Problem::KeysLost(_)
                | Problem::InboundUnprotected(..)
                // The policy's own tokens work; only ServiceAccount clients wait.
                | Problem::ServiceAccountIssuerPending(_)
                | Problem::ServiceAccountIssuerFailed { .. }
        ) && !matches!(self, Problem::DiscoveryFailed { kept, .. } if *kept > 0)
    }
}

/// Where kept keys came from: when this operator read them, or the sidecars' config.
fn kept_since(read_at: Option<i64>) -> String {
    read_at.map_or_else(
        || "that the sidecars hold".to_owned(),
        |t| format!("read at {}", crate::context::rfc3339(t)),
    )
}

impl std::fmt::Display for Problem {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Problem::PolicyRefNotFound(r) => write!(
                f,
                "policyRef {r} not found: no token is accepted until it exists"
            ),
            Problem::PolicyRefNotIssuer(r) => write!(
                f,
                "policyRef {r} does not issue tokens (it has no issuer.self)"
            ),
            Problem::PolicyRefHs256(r) => write!(
                f,
                "policyRef {r} signs with HS256, whose keys are never published: only its own pods can verify its tokens"
            ),
            Problem::PolicyRefKeysPending(r) => {
                write!(f, "policyRef {r} has not published keys yet")
            }
            Problem::MissingAudiences => write!(
                f,
                "spec.audiences is empty: set the audiences this service accepts; until then every token is refused"
            ),
            Problem::NotOwned(o) => write!(
                f,
                "{o} exists and is not managed by scopegate: refusing to overwrite it"
            ),
            Problem::PodsWithoutSidecar(n, names) => {
                let (pod, verb) = if *n == 1 {
                    ("pod", "runs")
                } else {
                    ("pods", "run")
                };
                write!(
                    f,
                    "{n} selected {pod} {verb} without the sidecar (restart to inject): {}",
                    names.join(", ")
                )
            }
            Problem::Conflict(other, pods) => write!(
                f,
                "AuthPolicy {other} is older and also selects pods {}: they keep its sidecar, not this policy's; at most one AuthPolicy may select a pod, narrow the selectors",
                pods.join(", ")
            ),
            Problem::ConfigRefused(why) => write!(
                f,
                "the sidecar would refuse the rendered config ({why}): the last good config stays in place"
            ),
            Problem::SecretNotFound(field, secret) => write!(
                f,
                "{field} names Secret {secret}, which does not exist (or lacks the key)"
            ),
            Problem::UnknownScopes(issuer, scopes) => {
                let (noun, verb) = if scopes.len() == 1 {
                    ("scope", "is")
                } else {
                    ("scopes", "are")
                };
                write!(
                    f,
                    "rules require {noun} {} that {verb} not declared by issuer {issuer}: no token can carry {}",
                    scopes.join(", "),
                    if scopes.len() == 1 { "it" } else { "them" }
                )
            }
            Problem::NoPodsSelected => write!(
                f,
                "spec.selector selects no pod: nothing is protected by this policy (check the selector against the pods' labels)"
            ),
            Problem::NameTooLong(what, name, limit) => write!(
                f,
                "the name {name:?} is longer than {limit} characters, the most {what} may hold: nothing is rendered; use a shorter AuthPolicy name"
            ),
            Problem::WriteRefused(object, answer) => {
                write!(f, "the API server refused to write {object}: {answer}")
            }
            Problem::DiscoveryFailed {
                issuer,
                error,
                kept: 0,
                ..
            } => write!(
                f,
                "issuer {issuer}: {error}; no key of it has been read, so none of its tokens is accepted"
            ),
            Problem::DiscoveryFailed {
                issuer,
                error,
                kept,
                read_at,
            } => {
                let when = kept_since(*read_at);
                write!(
                    f,
                    "issuer {issuer}: {error}; the last good keys stay in force ({kept} {when})"
                )
            }
            Problem::DiscoveryPending(issuer) => write!(
                f,
                "reading the discovery document of issuer {issuer}: none of its tokens is accepted until its keys are read"
            ),
            Problem::ServiceAccountIssuerPending(error) => write!(
                f,
                "the cluster's service-account issuer has no usable key{}: clients that authenticate with ServiceAccount tokens are refused until it has",
                error
                    .as_ref()
                    .map(|e| format!(" ({e})"))
                    .unwrap_or_default()
            ),
            Problem::ServiceAccountIssuerFailed {
                error,
                kept,
                read_at,
            } => {
                let when = kept_since(*read_at);
                write!(
                    f,
                    "the cluster's service-account issuer: {error}; the last good keys stay in force ({kept} {when})"
                )
            }
            Problem::EgressRefused(client, why) => write!(
                f,
                "spec.egress.clientRef {client}: {why}; the sidecar takes no outbound call until it can"
            ),
            Problem::SessionsRefused(client, why) => write!(
                f,
                "spec.sessions.clientRef {client}: {why}; the sidecar logs no browser in until it can (pages answer 401 without a token)"
            ),
            Problem::EgressTargetRefused(target, why) => write!(
                f,
                "spec.egress target {target}: {why}; the sidecar takes no outbound call until every target can get its tokens"
            ),
            Problem::ServiceBypass(service, app, sidecar) => write!(
                f,
                "Service {service} targets port {app}, the app's own port: its traffic walks around the sidecar; target port {sidecar} instead"
            ),
            Problem::InvalidServiceName(name) => write!(
                f,
                "issuer.self.service.name {name:?} is not an RFC 1123 DNS label (lower-case letters, digits and '-', at most 63): no serving certificate is issued"
            ),
            Problem::PolicyRefNotAllowed(issuer, namespace) => write!(
                f,
                "policyRef {issuer} does not admit namespace {namespace}: its owner must add {namespace} to issuer.self.allowedClientNamespaces; no token is accepted until then"
            ),
            Problem::AudienceConflict(conflicts) => {
                let list: Vec<String> = conflicts
                    .iter()
                    .map(|(audience, why)| format!("{audience} ({why})"))
                    .collect();
                write!(
                    f,
                    "audiences owned by another namespace are not honoured (no token for them is accepted here, and no client gets one through this policy): {}",
                    list.join("; ")
                )
            }
            Problem::InboundUnprotected(app, sidecar) => write!(
                f,
                "inbound.networkPolicy is off and inbound.portLock is not set: any pod of the cluster can reach the app's port {app} directly, around the sidecar (port {sidecar}); turn either on"
            ),
            Problem::ExternalCaBundleInvalid(field) => write!(
                f,
                "{field} holds a PEM block that is not a usable certificate: the sidecars cannot fetch the JWKS, so no token of this issuer is accepted"
            ),
            Problem::RotationDeferred(n) => write!(
                f,
                "the manual rotation waits: the signing-keys document holds {n} keys, the most it keeps (each retired key stays until the tokens it signed expire); it goes ahead when the oldest retired key is removed. A shorter tokens.accessTokenTtl keeps fewer keys; to stop a compromised key at once, use scopegate.dev/revoke-kid"
            ),
            Problem::MemoryStoreReplicas(n) => write!(
                f,
                "memory store with {n} issuer replicas: codes, refresh tokens and revocations are not shared; use store type Redis"
            ),
            Problem::SigningKeysCorrupt(object, why) => write!(
                f,
                "{object} holds an unreadable signing-keys document ({why}): it is left as it is and the published keys stay; fix it, or delete the Secret to have a new key made (published keys are kept until their tokens expire)"
            ),
            Problem::KeyInvalid(kid, why) => write!(
                f,
                "signing key {kid} is left out of every key set: {why}; remove it from the signing-keys Secret"
            ),
            Problem::IssuerLimit(limit, count) => write!(
                f,
                "the namespace has {count} issuers (AuthPolicies with issuer.self) and the operator serves at most {limit} per namespace, the oldest first: this one is not served (nothing rendered for it changes); delete another issuer, or ask the cluster admin to raise limits.issuersPerNamespace"
            ),
            Problem::KeysLost(kids) => write!(
                f,
                "the private halves of keys {} were lost (signing-keys Secret deleted or restored from an older copy): they sign nothing and stay published until the tokens they signed have expired",
                kids.join(", ")
            ),
        }
    }
}
