//! Pure checks of an OAuthClient against its issuer: what the schema cannot see because it
//! spans two objects. Shared by the client's own reconcile (for its status) and the issuer's
//! (to decide who enters the registry), so it lives below both.

use kube::ResourceExt;
use scopegate_crds::v1alpha1::{AuthPolicy, GrantType, OAuthClient};

use crate::audiences::{ClientAudiences, ExchangeRefusal, Verdict};
use crate::pki::registry::revocation_cutoff;

/// Something wrong between a client and its issuer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ClientProblem {
    /// The referenced AuthPolicy does not exist.
    IssuerNotFound {
        /// namespace/name.
        issuer: String,
    },
    /// The referenced AuthPolicy does not issue tokens.
    IssuerNotSelf {
        /// namespace/name.
        issuer: String,
    },
    /// The issuer does not accept clients from this namespace.
    NamespaceNotAllowed {
        /// namespace/name.
        issuer: String,
        /// The client's namespace.
        namespace: String,
    },
    /// Scopes the issuer does not declare.
    UnknownScopes {
        /// namespace/name.
        issuer: String,
        /// The unknown scopes.
        scopes: Vec<String>,
    },
    /// authorization_code without a loginUrl on the issuer: the grant cannot work.
    NoLoginUrl {
        /// namespace/name.
        issuer: String,
    },
    /// Login choices (spec.upstreams) the issuer does not have; they are never offered.
    UnknownUpstreams {
        /// namespace/name.
        issuer: String,
        /// The unknown names.
        names: Vec<String>,
    },
    /// Audiences whose owner does not admit this client (or that nobody owns): they are never
    /// issued. The client stays registered for the rest, unless none is left.
    AudienceNotAdmitted {
        /// (audience, why) pairs.
        refused: Vec<(String, String)>,
        /// Whether no audience of the client is admitted.
        none_left: bool,
    },
    /// Audiences of spec.tokenExchange that are not honoured: subject audiences its namespace
    /// does not own, target audiences their owner does not admit. The client stays
    /// registered; without one of either left it may not exchange at all.
    ExchangeAudiencesRefused {
        /// (audience, why) pairs.
        refused: Vec<(String, String)>,
        /// Whether nothing of either list is left, so the client may not exchange.
        disabled: bool,
    },
    /// `existingSecret` names a Secret, or a key, that does not exist.
    SecretNotFound {
        /// The Secret's name.
        name: String,
        /// The key.
        key: String,
    },
    /// The API server refused a write for the client (e.g. a name too long for a label).
    WriteRefused {
        /// The object, as the API server named it.
        object: String,
        /// Its answer.
        message: String,
    },
    /// `revokeTokensIssuedBefore` was later than the moment it was set: taken literally it
    /// would kill every token the client gets until then. It is clamped to that moment.
    RevocationCutoffInFuture {
        /// The value in the spec (RFC 3339).
        requested: String,
        /// The cut-off in force (RFC 3339).
        effective: String,
    },
    /// The client authenticates with ServiceAccount tokens and its issuer holds no key of the
    /// cluster's service-account issuer (yet): every assertion is refused.
    ServiceAccountIssuerUnavailable {
        /// namespace/name of the issuer.
        issuer: String,
        /// What the issuer's status says, if anything.
        why: Option<String>,
    },
    /// Another client of the same issuer names the same ServiceAccount: a token of it
    /// authenticates only with client_id.
    ServiceAccountShared {
        /// The ServiceAccount.
        account: String,
        /// The other clients naming it.
        others: Vec<String>,
    },
    /// The namespace has more clients than the operator serves.
    NamespaceLimit {
        /// The cap.
        limit: usize,
        /// How many the namespace has.
        count: usize,
    },
}

impl ClientProblem {
    /// CamelCase reason for the condition.
    pub fn reason(&self) -> &'static str {
        match self {
            ClientProblem::IssuerNotFound { .. } => "IssuerNotFound",
            ClientProblem::IssuerNotSelf { .. } => "IssuerDoesNotIssue",
            ClientProblem::NamespaceNotAllowed { .. } => "NamespaceNotAllowed",
            ClientProblem::UnknownScopes { .. } => "UnknownScope",
            ClientProblem::NoLoginUrl { .. } => "NoLoginUrl",
            ClientProblem::UnknownUpstreams { .. } => "UnknownUpstream",
            ClientProblem::AudienceNotAdmitted { .. } => "AudienceNotAdmitted",
            ClientProblem::ExchangeAudiencesRefused { .. } => "ExchangeAudienceRefused",
            ClientProblem::NamespaceLimit { .. } => "NamespaceClientLimit",
            ClientProblem::SecretNotFound { .. } => "SecretNotFound",
            ClientProblem::WriteRefused { .. } => "WriteRefused",
            ClientProblem::RevocationCutoffInFuture { .. } => "RevocationCutoffInFuture",
            ClientProblem::ServiceAccountIssuerUnavailable { .. } => {
                "ServiceAccountIssuerUnavailable"
            }
            ClientProblem::ServiceAccountShared { .. } => "ServiceAccountShared",
        }
    }

    /// Whether the client stays out of the registry because of it.
    pub fn blocks_registration(&self) -> bool {
        match self {
            ClientProblem::NoLoginUrl { .. }
            | ClientProblem::UnknownUpstreams { .. }
            | ClientProblem::RevocationCutoffInFuture { .. }
            | ClientProblem::ServiceAccountIssuerUnavailable { .. }
            | ClientProblem::ServiceAccountShared { .. }
            | ClientProblem::ExchangeAudiencesRefused { .. } => false,
            // Registered with an empty list it would get the issuer URL instead: never.
            ClientProblem::AudienceNotAdmitted { none_left, .. } => *none_left,
            _ => true,
        }
    }

    /// Whether the client does not work as its spec says (Ready is then False), registered
    /// or not.
    pub fn blocks_readiness(&self) -> bool {
        self.blocks_registration()
            || matches!(
                self,
                ClientProblem::AudienceNotAdmitted { .. }
                    | ClientProblem::ExchangeAudiencesRefused { .. }
                    | ClientProblem::ServiceAccountIssuerUnavailable { .. }
            )
    }
}

/// Why an owner's verdict refuses an audience, in words: the owner and the field to change.
pub fn verdict_words(verdict: &Verdict) -> String {
    match verdict {
        Verdict::NoOwner => "no AuthPolicy lists it in its audiences".to_owned(),
        Verdict::NotAdmitted { owners } => format!(
            "its owner {} does not admit this client: add its namespace or name to spec.clients there",
            owners.join(", ")
        ),
        Verdict::NotAdmittedAsActor { owners } => format!(
            "its owner {} does not admit this client to act for users: add its namespace or name to spec.clients.actors there",
            owners.join(", ")
        ),
        Verdict::Admitted => "admitted".to_owned(),
    }
}

/// The problem with `client`'s audiences, if its owners refuse any of them.
pub fn audience_problem(sorted: &ClientAudiences) -> Option<ClientProblem> {
    if sorted.refused.is_empty() {
        return None;
    }
    let refused = (sorted.refused.iter())
        .map(|(audience, verdict)| (audience.clone(), verdict_words(verdict)))
        .collect();
    Some(ClientProblem::AudienceNotAdmitted {
        refused,
        none_left: sorted.admitted.is_empty(),
    })
}

/// The problem with `client`'s tokenExchange audiences, if any is not honoured.
pub fn exchange_problem(sorted: &ClientAudiences) -> Option<ClientProblem> {
    if sorted.exchange_refused.is_empty() {
        return None;
    }
    let refused = (sorted.exchange_refused.iter())
        .map(|(audience, refusal)| (audience.clone(), exchange_refusal_words(refusal)))
        .collect();
    Some(ClientProblem::ExchangeAudiencesRefused {
        refused,
        disabled: sorted.exchange.is_none(),
    })
}

/// Why an audience of a client's tokenExchange is not honoured, in words.
pub fn exchange_refusal_words(refusal: &ExchangeRefusal) -> String {
    match refusal {
        ExchangeRefusal::SubjectNotOwned => "a subject audience must be owned by this namespace (an audience of one of its AuthPolicies), so that only the service a token was sent to exchanges it".to_owned(),
        ExchangeRefusal::Target(verdict) => verdict_words(verdict),
    }
}

impl std::fmt::Display for ClientProblem {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ClientProblem::IssuerNotFound { issuer } => write!(f, "AuthPolicy {issuer} not found"),
            ClientProblem::ServiceAccountIssuerUnavailable { issuer, why } => write!(
                f,
                "issuer {issuer} holds no key of the cluster's service-account issuer{}: the ServiceAccount tokens are refused until it does (see its status.serviceAccountIssuer)",
                why.as_ref().map(|w| format!(" ({w})")).unwrap_or_default()
            ),
            ClientProblem::ServiceAccountShared { account, others } => write!(
                f,
                "ServiceAccount {account} is also named by {}: its token authenticates only with client_id",
                others.join(", ")
            ),
            ClientProblem::RevocationCutoffInFuture {
                requested,
                effective,
            } => write!(
                f,
                "revokeTokensIssuedBefore {requested} was in the future when the operator saw it: it would refuse every token the client gets until then, so tokens issued before {effective} (when it was seen) are revoked instead; set a time in the past"
            ),
            ClientProblem::WriteRefused { object, message } => {
                write!(f, "the API server refused to write {object}: {message}")
            }
            ClientProblem::SecretNotFound { name, key } => write!(
                f,
                "existingSecret names key {key} of Secret {name}, which does not exist: the issuer cannot authenticate this client until it does"
            ),
            ClientProblem::NamespaceLimit { limit, count } => write!(
                f,
                "the namespace has {count} OAuthClients and the operator serves at most {limit} per namespace, the oldest first: this one is in no registry; delete another client, or ask the cluster admin to raise limits.clientsPerNamespace"
            ),
            ClientProblem::IssuerNotSelf { issuer } => {
                write!(
                    f,
                    "AuthPolicy {issuer} does not issue tokens (it has no issuer.self)"
                )
            }
            ClientProblem::NamespaceNotAllowed { issuer, namespace } => write!(
                f,
                "AuthPolicy {issuer} does not accept clients from namespace {namespace}: add it to issuer.self.allowedClientNamespaces"
            ),
            ClientProblem::UnknownScopes { issuer, scopes } => {
                let plural = if scopes.len() == 1 { "scope" } else { "scopes" };
                let verb = if scopes.len() == 1 { "is" } else { "are" };
                write!(
                    f,
                    "{plural} {} {verb} not declared by the issuer {issuer}",
                    scopes.join(", ")
                )
            }
            ClientProblem::NoLoginUrl { issuer } => write!(
                f,
                "the authorization_code grant needs issuer {issuer} to set issuer.self.loginUrl or upstreams"
            ),
            ClientProblem::AudienceNotAdmitted { refused, none_left } => {
                let list: Vec<String> = refused
                    .iter()
                    .map(|(audience, why)| format!("{audience} ({why})"))
                    .collect();
                let consequence = if *none_left {
                    "the client is not registered"
                } else {
                    "tokens carry only its other audiences"
                };
                write!(
                    f,
                    "audiences not admitted, never issued to this client ({consequence}): {}",
                    list.join("; ")
                )
            }
            ClientProblem::ExchangeAudiencesRefused { refused, disabled } => {
                let list: Vec<String> = (refused.iter())
                    .map(|(audience, why)| format!("{audience} ({why})"))
                    .collect();
                let consequence = if *disabled {
                    "the client may not exchange tokens at all"
                } else {
                    "it exchanges only with the others"
                };
                write!(
                    f,
                    "tokenExchange audiences not honoured ({consequence}): {}",
                    list.join("; ")
                )
            }
            ClientProblem::UnknownUpstreams { issuer, names } => write!(
                f,
                "upstreams {} are not login choices of issuer {issuer} (its upstreams, or local with a loginUrl); they are never offered",
                names.join(", ")
            ),
        }
    }
}

/// The namespace and name of the issuer a client references.
pub fn issuer_key(client: &OAuthClient) -> (String, String) {
    let namespace = client
        .spec
        .issuer_ref
        .namespace
        .clone()
        .or_else(|| client.namespace())
        .unwrap_or_default();
    (namespace, client.spec.issuer_ref.name.clone())
}

/// For a client authenticated by ServiceAccount tokens: whether its `issuer` holds the
/// cluster's keys (from its status), and which of its ServiceAccounts `clients` of the same
/// issuer also name.
pub fn service_account_problems<'a>(
    client: &OAuthClient,
    issuer: Option<&AuthPolicy>,
    clients: impl IntoIterator<Item = &'a OAuthClient>,
) -> Vec<ClientProblem> {
    let accounts = &client.spec.service_accounts;
    if accounts.is_empty() {
        return Vec::new();
    }
    let mut problems = Vec::new();
    let key = issuer_key(client);
    if let Some(issuer) = issuer.filter(|p| p.spec.issuer.self_.is_some()) {
        let read = issuer
            .status
            .as_ref()
            .and_then(|s| s.service_account_issuer.as_ref());
        if read.is_none_or(|r| r.key_ids.is_empty()) {
            problems.push(ClientProblem::ServiceAccountIssuerUnavailable {
                issuer: format!("{}/{}", key.0, key.1),
                why: read.and_then(|r| r.error.clone()),
            });
        }
    }
    let namespace = client.namespace();
    let others: Vec<&OAuthClient> = (clients.into_iter())
        .filter(|c| c.namespace() == namespace && c.name_any() != client.name_any())
        .filter(|c| issuer_key(c) == key)
        .collect();
    for account in accounts {
        let naming: Vec<String> = (others.iter())
            .filter(|c| c.spec.service_accounts.contains(account))
            .map(|c| c.name_any())
            .collect();
        if !naming.is_empty() {
            problems.push(ClientProblem::ServiceAccountShared {
                account: account.clone(),
                others: naming,
            });
        }
    }
    problems
}

/// The warning when `client`'s `revokeTokensIssuedBefore` was clamped
/// ([`crate::pki::registry::revocation_cutoff`]).
pub fn cutoff_problem(client: &OAuthClient, now: i64) -> Option<ClientProblem> {
    let cutoff = revocation_cutoff(client, now)?;
    (cutoff.requested > cutoff.effective).then(|| ClientProblem::RevocationCutoffInFuture {
        requested: cutoff.requested.to_string(),
        effective: cutoff.effective.to_string(),
    })
}

/// What the issuer's registry checks of `client` (whose audiences its owners sorted into
/// `sorted`): the problems with its issuer and with its audiences. One that
/// [`ClientProblem::blocks_registration`] keeps it out of the registry.
pub fn registration_problems(
    client: &OAuthClient,
    issuer: Option<&AuthPolicy>,
    sorted: &ClientAudiences,
) -> Vec<ClientProblem> {
    let mut problems = validate(client, issuer);
    problems.extend(audience_problem(sorted));
    problems.extend(exchange_problem(sorted));
    problems
}

/// Everything wrong between `client` and `issuer` (`None`: not found).
pub fn validate(client: &OAuthClient, issuer: Option<&AuthPolicy>) -> Vec<ClientProblem> {
    let (issuer_namespace, issuer_name) = issuer_key(client);
    let reference = format!("{issuer_namespace}/{issuer_name}");
    let Some(issuer) = issuer else {
        return vec![ClientProblem::IssuerNotFound { issuer: reference }];
    };
    let Some(own) = issuer.spec.issuer.self_.as_ref() else {
        return vec![ClientProblem::IssuerNotSelf { issuer: reference }];
    };
    let mut problems = Vec::new();
    let namespace = client.namespace().unwrap_or_default();
    let allowed = namespace == issuer_namespace
        || own
            .allowed_client_namespaces
            .iter()
            .any(|n| n == "*" || *n == namespace);
    if !allowed {
        problems.push(ClientProblem::NamespaceNotAllowed {
            issuer: reference.clone(),
            namespace,
        });
    }
    let mut unknown: Vec<String> = client
        .spec
        .scopes
        .iter()
        .chain(&client.spec.default_scopes)
        .filter(|s| !own.scopes.contains_key(*s))
        .cloned()
        .collect();
    unknown.sort();
    unknown.dedup();
    if !unknown.is_empty() {
        problems.push(ClientProblem::UnknownScopes {
            issuer: reference.clone(),
            scopes: unknown,
        });
    }
    if client
        .spec
        .grant_types
        .contains(&GrantType::AuthorizationCode)
        && own.login_url.is_none()
        && own.upstreams.is_empty()
    {
        problems.push(ClientProblem::NoLoginUrl {
            issuer: reference.clone(),
        });
    }
    let unknown_upstreams: Vec<String> = client
        .spec
        .upstreams
        .iter()
        .flatten()
        .filter(|name| {
            let local = name.as_str() == scopegate_core::upstream::LOCAL && own.login_url.is_some();
            !local && !own.upstreams.iter().any(|u| &u.name == *name)
        })
        .cloned()
        .collect();
    if !unknown_upstreams.is_empty() {
        problems.push(ClientProblem::UnknownUpstreams {
            issuer: reference,
            names: unknown_upstreams,
        });
    }
    problems
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::names::client_id;

    fn issuer() -> AuthPolicy {
        serde_yaml_ng::from_str(
            r#"
apiVersion: scopegate.dev/v1alpha1
kind: AuthPolicy
metadata: {name: auth, namespace: shop}
spec:
  selector: {}
  issuer:
    self:
      url: https://auth.shop.svc
      service: {name: auth, port: 443}
      scopes: {read: R, write: W}
      allowedClientNamespaces: [billing]
  upstream: {port: 8080}
"#,
        )
        .unwrap()
    }

    fn client(namespace: &str, extra: &str) -> OAuthClient {
        serde_yaml_ng::from_str(&format!(
            r#"
apiVersion: scopegate.dev/v1alpha1
kind: OAuthClient
metadata: {{name: c, namespace: {namespace}}}
spec:
  issuerRef: {{name: auth, namespace: shop}}
  grantTypes: [client_credentials]
  scopes: [read]
{extra}
"#
        ))
        .unwrap()
    }

    #[test]
    fn a_valid_client_has_no_problem() {
        assert!(validate(&client("shop", ""), Some(&issuer())).is_empty());
        assert!(validate(&client("billing", ""), Some(&issuer())).is_empty());
        assert_eq!(client_id(&client("billing", "")), "billing.c");
    }

    #[test]
    fn problems_read_like_sentences() {
        let missing = validate(&client("shop", ""), None);
        assert_eq!(missing[0].to_string(), "AuthPolicy shop/auth not found");

        let foreign = validate(&client("other", ""), Some(&issuer()));
        assert_eq!(foreign[0].reason(), "NamespaceNotAllowed");
        assert!(foreign[0].to_string().contains("namespace other"));

        let scopes = validate(
            &client("shop", "  defaultScopes: [write:x]"),
            Some(&issuer()),
        );
        assert_eq!(
            scopes[0].to_string(),
            "scope write:x is not declared by the issuer shop/auth"
        );
        assert!(scopes[0].blocks_registration());

        let mut verifier = issuer();
        verifier.spec.issuer.self_ = None;
        let not_self = validate(&client("shop", ""), Some(&verifier));
        assert_eq!(not_self[0].reason(), "IssuerDoesNotIssue");
    }

    #[test]
    fn login_choices_must_be_the_issuers() {
        let mut with = issuer();
        with.spec.issuer.self_.as_mut().unwrap().upstreams = serde_yaml_ng::from_str(
            "[{name: google, clientId: c, clientSecretRef: {name: g, key: k}, oidc: {issuer: https://accounts.google.com}}]",
        )
        .unwrap();
        let ok = client("shop", "  upstreams: [google]");
        assert!(validate(&ok, Some(&with)).is_empty());
        let bad = validate(
            &client("shop", "  upstreams: [google, github, local]"),
            Some(&with),
        );
        assert_eq!(bad.len(), 1);
        assert_eq!(bad[0].reason(), "UnknownUpstream");
        assert!(
            !bad[0].blocks_registration(),
            "the known choices still work"
        );
        assert!(
            bad[0]
                .to_string()
                .starts_with("upstreams github, local are not"),
            "{}",
            bad[0]
        );
        // Direct-mode upstreams make authorization_code work without a loginUrl.
        let mut browser = client("shop", "  redirectUris: [\"https://a.example/cb\"]");
        browser.spec.grant_types = vec![GrantType::AuthorizationCode];
        assert!(validate(&browser, Some(&with)).is_empty());
        assert_eq!(
            validate(&browser, Some(&issuer()))[0].reason(),
            "NoLoginUrl"
        );
    }

    #[test]
    fn wildcard_namespace_allows_everyone() {
        let mut open = issuer();
        if let Some(own) = open.spec.issuer.self_.as_mut() {
            own.allowed_client_namespaces = vec!["*".into()];
        }
        assert!(validate(&client("anywhere", ""), Some(&open)).is_empty());
    }

    #[test]
    fn a_service_account_client_says_when_its_issuer_has_no_cluster_key_or_shares_an_account() {
        let billing = client("shop", "  serviceAccounts: [billing]");
        let mut issuer = issuer();
        let reasons = |issuer: &AuthPolicy, others: &[&OAuthClient]| -> Vec<&'static str> {
            service_account_problems(&billing, Some(issuer), others.iter().copied())
                .iter()
                .map(ClientProblem::reason)
                .collect()
        };
        // Not read yet: not Ready (every assertion is refused), but registered.
        assert_eq!(reasons(&issuer, &[]), ["ServiceAccountIssuerUnavailable"]);
        let problem = &service_account_problems(&billing, Some(&issuer), [])[0];
        assert!(problem.blocks_readiness() && !problem.blocks_registration());
        issuer.status = serde_json::from_value(serde_json::json!({
            "serviceAccountIssuer": {"issuer": "https://kubernetes.default.svc", "keyIds": ["k"]}
        }))
        .unwrap();
        assert!(reasons(&issuer, &[]).is_empty());
        // Another client of the same issuer in the namespace naming the same account.
        let mut twin = client("shop", "  serviceAccounts: [billing, batch]");
        twin.metadata.name = Some("twin".into());
        let elsewhere = client("billing", "  serviceAccounts: [billing]");
        assert_eq!(
            reasons(&issuer, &[&billing, &twin, &elsewhere]),
            ["ServiceAccountShared"]
        );
        let shared = &service_account_problems(&billing, Some(&issuer), [&twin])[0];
        assert!(
            shared.to_string().contains("also named by twin"),
            "{shared}"
        );
        assert!(!shared.blocks_readiness());
        // A client with a secret has none of this.
        assert!(service_account_problems(&client("shop", ""), Some(&issuer), []).is_empty());
    }
}
