//! Who owns an audience, and which OAuthClients its owner admits: a pure index over every
//! AuthPolicy in the cluster.
//!
//! An audience is owned by the resource server that accepts it: the AuthPolicies listing it
//! (their effective audiences, so a self issuer without audiences claims its own URL). An
//! audience that names a Service (`https://<svc>.<ns>.svc[.<domain>]...`) belongs to the
//! Service's namespace whatever other namespaces claim, so nobody can squat on another team's
//! Service name. Any other audience belongs to the namespace of its oldest claimant (creation
//! times are whole seconds: a tie goes to the namespace name first in alphabetical order). Claims from
//! other namespaces are conflicts: they are not honoured, and the policy that made one says so.
//!
//! An issuer then gives a client tokens for an audience only if the owner admits it: clients
//! of the owner's namespace always, others as the owning policies' `clients` field lists them,
//! and for an issuer's own URL the namespaces its `allowedClientNamespaces` lets register.

use std::collections::BTreeMap;

use kube::ResourceExt;
use scopegate_core::clients::{MAX_EXCHANGE_DEPTH, TokenExchange};
use scopegate_crds::v1alpha1::{AuthPolicy, AuthPolicySpec, OAuthClient};

use crate::names::is_dns_label;

/// The audiences a verifier accepts: the spec's, or the issuer URL for a self issuer.
pub fn effective_audiences(spec: &AuthPolicySpec) -> Vec<String> {
    match (&spec.issuer.self_, spec.audiences.is_empty()) {
        (Some(own), true) => vec![own.url.clone()],
        _ => spec.audiences.clone(),
    }
}

/// Every audience a policy claims for its namespace: its effective audiences and those its
/// external issuers name of their own.
pub fn claimed_audiences(spec: &AuthPolicySpec) -> Vec<String> {
    let mut claimed = effective_audiences(spec);
    let externals = spec.issuer.external.iter().chain(&spec.additional_issuers);
    claimed.extend(externals.flat_map(|e| e.audiences.iter().cloned()));
    claimed.sort();
    claimed.dedup();
    claimed
}

/// Whether some issuer of the policy checks tokens against the policy's audiences (every
/// issuer but an external one naming its own).
pub fn uses_policy_audiences(spec: &AuthPolicySpec) -> bool {
    let external_own = |e: Option<&scopegate_crds::v1alpha1::ExternalIssuer>| {
        e.is_some_and(|e| !e.audiences.is_empty())
    };
    let main = spec.issuer.self_.is_some()
        || spec.issuer.policy_ref.is_some()
        || (spec.issuer.external.is_some() && !external_own(spec.issuer.external.as_ref()));
    main || spec
        .additional_issuers
        .iter()
        .any(|e| e.audiences.is_empty())
}

/// What one owning policy admits for one audience.
#[derive(Debug, Clone, Default)]
struct Admission {
    /// Namespaces admitted (besides the owner's); `*` admits every one.
    namespaces: Vec<String>,
    /// Single clients admitted, as (namespace, name).
    clients: Vec<(String, String)>,
    /// Namespaces admitted as actors for users (token exchange).
    actor_namespaces: Vec<String>,
    /// Single clients admitted as actors, as (namespace, name).
    actor_clients: Vec<(String, String)>,
}

impl Admission {
    fn admits(&self, namespace: &str, name: &str) -> bool {
        self.namespaces.iter().any(|n| n == "*" || n == namespace)
            || self
                .clients
                .iter()
                .any(|(ns, n)| ns == namespace && n == name)
    }

    fn admits_actor(&self, namespace: &str, name: &str) -> bool {
        self.actor_namespaces.iter().any(|n| n == namespace)
            || (self.actor_clients.iter()).any(|(ns, n)| ns == namespace && n == name)
    }
}

/// The owner of one audience.
#[derive(Debug, Clone)]
struct Owner {
    /// The owning namespace.
    namespace: String,
    /// The policies of that namespace listing the audience, by name, with what each admits.
    policies: Vec<(String, Admission)>,
}

/// Whether a client may get tokens for an audience.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    /// Its owner admits the client.
    Admitted,
    /// No AuthPolicy lists the audience (for a Service-shaped one: none in its namespace).
    NoOwner,
    /// The owning namespace's policies do not admit the client.
    NotAdmitted {
        /// namespace/name of the owning policies.
        owners: Vec<String>,
    },
    /// The owning namespace's policies do not admit the client to act for users (token
    /// exchange), whether or not they admit it as itself.
    NotAdmittedAsActor {
        /// namespace/name of the owning policies.
        owners: Vec<String>,
    },
}

/// Every audience's owner, built from every AuthPolicy.
#[derive(Debug, Clone, Default)]
pub struct AudienceOwners {
    owners: BTreeMap<String, Owner>,
    /// (namespace, name) of a policy → its audiences that another namespace owns, with why.
    conflicts: BTreeMap<(String, String), Vec<(String, String)>>,
}

impl AudienceOwners {
    /// Indexes `policies`; `cluster_domain` tells Service-shaped audiences apart.
    pub fn new<'a>(
        policies: impl IntoIterator<Item = &'a AuthPolicy>,
        cluster_domain: &str,
    ) -> Self {
        let mut claims: BTreeMap<String, Vec<&AuthPolicy>> = BTreeMap::new();
        for policy in policies {
            for audience in claimed_audiences(&policy.spec) {
                claims.entry(audience).or_default().push(policy);
            }
        }
        let mut owners = BTreeMap::new();
        let mut conflicts: BTreeMap<(String, String), Vec<(String, String)>> = BTreeMap::new();
        for (audience, mut claimants) in claims {
            claimants.sort_by_key(|p| {
                let created = p.metadata.creation_timestamp.as_ref().map(|t| t.0);
                (created.is_none(), created, p.namespace(), p.name_any())
            });
            let service_namespace = service_namespace(&audience, cluster_domain);
            let Some(namespace) = service_namespace
                .clone()
                .or_else(|| claimants.first().and_then(|p| p.namespace()))
            else {
                continue;
            };
            let mut owner = Owner {
                namespace: namespace.clone(),
                policies: Vec::new(),
            };
            for policy in &claimants {
                let (ns, name) = (policy.namespace().unwrap_or_default(), policy.name_any());
                if ns == namespace {
                    owner.policies.push((name, admission(policy, &audience)));
                    continue;
                }
                let why = match &service_namespace {
                    Some(_) => format!("it names a Service of namespace {namespace}"),
                    None => {
                        let first = claimants
                            .iter()
                            .find(|p| p.namespace().as_deref() == Some(namespace.as_str()))
                            .map(|p| p.name_any())
                            .unwrap_or_default();
                        format!("AuthPolicy {namespace}/{first} listed it first")
                    }
                };
                conflicts
                    .entry((ns, name))
                    .or_default()
                    .push((audience.clone(), why));
            }
            owners.insert(audience, owner);
        }
        AudienceOwners { owners, conflicts }
    }

    /// Whether the client `namespace/name` may get tokens for `audience`.
    pub fn verdict(&self, audience: &str, namespace: &str, name: &str) -> Verdict {
        let Some(owner) = self.owners.get(audience) else {
            return Verdict::NoOwner;
        };
        if owner.policies.is_empty() {
            return Verdict::NoOwner;
        }
        if owner.namespace == namespace
            || owner
                .policies
                .iter()
                .any(|(_, a)| a.admits(namespace, name))
        {
            return Verdict::Admitted;
        }
        Verdict::NotAdmitted {
            owners: owner
                .policies
                .iter()
                .map(|(policy, _)| format!("{}/{policy}", owner.namespace))
                .collect(),
        }
    }

    /// Whether a client may exchange users' tokens for tokens of `audience`: clients of the
    /// owning namespace always, others only as the owning policies' `clients.actors` list
    /// them (admission as itself is not enough).
    pub fn actor_verdict(&self, audience: &str, namespace: &str, name: &str) -> Verdict {
        let Some(owner) = self.owners.get(audience).filter(|o| !o.policies.is_empty()) else {
            return Verdict::NoOwner;
        };
        if owner.namespace == namespace
            || (owner.policies.iter()).any(|(_, a)| a.admits_actor(namespace, name))
        {
            return Verdict::Admitted;
        }
        Verdict::NotAdmittedAsActor {
            owners: (owner.policies.iter())
                .map(|(policy, _)| format!("{}/{policy}", owner.namespace))
                .collect(),
        }
    }

    /// Every audience `namespace` owns (through at least one of its policies), sorted.
    pub fn owned_by(&self, namespace: &str) -> Vec<String> {
        self.owners
            .iter()
            .filter(|(_, o)| o.namespace == namespace && !o.policies.is_empty())
            .map(|(audience, _)| audience.clone())
            .collect()
    }

    /// The audiences `policy` lists that another namespace owns, each with why.
    pub fn conflicts_of(&self, policy: &AuthPolicy) -> &[(String, String)] {
        self.conflicts
            .get(&(policy.namespace().unwrap_or_default(), policy.name_any()))
            .map_or(&[], Vec::as_slice)
    }

    /// What `client` may get: its audiences its owners admit, and for the rest why not.
    pub fn sort_client(&self, client: &OAuthClient) -> ClientAudiences {
        let namespace = client.namespace().unwrap_or_default();
        let name = client.name_any();
        let mut sorted = ClientAudiences {
            owned: self.owned_by(&namespace),
            ..ClientAudiences::default()
        };
        for audience in &client.spec.audiences {
            match self.verdict(audience, &namespace, &name) {
                Verdict::Admitted => sorted.admitted.push(audience.clone()),
                refused => sorted.refused.push((audience.clone(), refused)),
            }
        }
        if let Some(spec) = &client.spec.token_exchange {
            let (subjects, not_owned): (Vec<String>, Vec<String>) = (spec.subject_audiences)
                .iter()
                .cloned()
                .partition(|a| sorted.owned.contains(a));
            sorted.exchange_refused.extend(
                not_owned
                    .into_iter()
                    .map(|a| (a, ExchangeRefusal::SubjectNotOwned)),
            );
            let mut targets = Vec::new();
            for audience in &spec.audiences {
                match self.actor_verdict(audience, &namespace, &name) {
                    Verdict::Admitted => targets.push(audience.clone()),
                    refused => sorted
                        .exchange_refused
                        .push((audience.clone(), ExchangeRefusal::Target(refused))),
                }
            }
            sorted.exchange =
                (!subjects.is_empty() && !targets.is_empty()).then(|| TokenExchange {
                    subject_audiences: subjects,
                    audiences: targets,
                    max_depth: u8::try_from(spec.max_depth.clamp(1, MAX_EXCHANGE_DEPTH.into()))
                        .unwrap_or(1),
                });
        }
        sorted
    }
}

/// Why an audience of a client's tokenExchange is not honoured.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ExchangeRefusal {
    /// A subject audience that the client's own namespace does not own.
    SubjectNotOwned,
    /// A target audience its owner does not admit (or nobody owns).
    Target(Verdict),
}

/// A client's audiences, sorted by its owners' verdicts.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ClientAudiences {
    /// Audiences it may get tokens for.
    pub admitted: Vec<String>,
    /// Audiences it may not, with the verdict.
    pub refused: Vec<(String, Verdict)>,
    /// Audiences its own namespace owns (what it may introspect).
    pub owned: Vec<String>,
    /// Its token exchange as registered: the owned subject audiences and the admitted target
    /// audiences; `None` when it declares none or none of either list is left.
    pub exchange: Option<TokenExchange>,
    /// Audiences of its tokenExchange that are not honoured, with why.
    pub exchange_refused: Vec<(String, ExchangeRefusal)>,
}

/// What `policy` admits for `audience`.
fn admission(policy: &AuthPolicy, audience: &str) -> Admission {
    let mut admission = Admission::default();
    if let Some(clients) = &policy.spec.clients {
        admission
            .namespaces
            .extend(clients.namespaces.iter().cloned());
        admission.clients.extend(
            clients
                .names
                .iter()
                .map(|c| (c.namespace.clone(), c.name.clone())),
        );
        if let Some(actors) = &clients.actors {
            admission.actor_namespaces = actors.namespaces.clone();
            admission.actor_clients = (actors.names.iter())
                .map(|c| (c.namespace.clone(), c.name.clone()))
                .collect();
        }
    }
    if let Some(own) = &policy.spec.issuer.self_
        && own.url == audience
    {
        admission
            .namespaces
            .extend(own.allowed_client_namespaces.iter().cloned());
    }
    admission
}

/// The namespace of the Service an audience names: its host is `<svc>.<ns>.svc` or
/// `<svc>.<ns>.svc.<cluster_domain>` (any scheme, port or path; upper case folded).
pub fn service_namespace(audience: &str, cluster_domain: &str) -> Option<String> {
    let rest = audience
        .split_once("://")
        .map_or(audience, |(_, rest)| rest);
    let authority = rest.split(['/', '?', '#']).next()?;
    let host = authority
        .rsplit_once('@')
        .map_or(authority, |(_, host)| host);
    let host = host
        .split(':')
        .next()?
        .trim_end_matches('.')
        .to_ascii_lowercase();
    let cluster_suffix = format!(".svc.{}", cluster_domain.to_ascii_lowercase());
    let stem = host
        .strip_suffix(&cluster_suffix)
        .or_else(|| host.strip_suffix(".svc"))?;
    let (service, namespace) = stem.split_once('.')?;
    (is_dns_label(service) && is_dns_label(namespace)).then(|| namespace.to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn policy(namespace: &str, name: &str, created: i64, extra: &str) -> AuthPolicy {
        let mut policy: AuthPolicy = serde_yaml_ng::from_str(&format!(
            "apiVersion: scopegate.dev/v1alpha1\nkind: AuthPolicy\nmetadata: {{name: {name}, namespace: {namespace}}}\nspec:\n  selector: {{matchLabels: {{app: x}}}}\n  upstream: {{port: 8080}}\n  issuer: {{policyRef: {{name: auth, namespace: shop}}}}\n{extra}"
        ))
        .unwrap();
        policy.metadata.creation_timestamp =
            Some(k8s_openapi::apimachinery::pkg::apis::meta::v1::Time(
                k8s_openapi::jiff::Timestamp::from_second(created).unwrap(),
            ));
        policy
    }

    fn client(namespace: &str, name: &str, audiences: &[&str]) -> OAuthClient {
        serde_yaml_ng::from_str(&format!(
            "apiVersion: scopegate.dev/v1alpha1\nkind: OAuthClient\nmetadata: {{name: {name}, namespace: {namespace}}}\nspec:\n  issuerRef: {{name: auth, namespace: shop}}\n  grantTypes: [client_credentials]\n  audiences: {audiences:?}"
        ))
        .unwrap()
    }

    const ORDERS: &str = "https://orders.shop.svc.cluster.local";
    const API: &str = "https://api.example.com";

    #[test]
    fn service_shaped_audiences_belong_to_the_services_namespace() {
        for (audience, namespace) in [
            (ORDERS, Some("shop")),
            ("https://orders.shop.svc", Some("shop")),
            (
                "https://ORDERS.Shop.SVC.cluster.local:8443/v1",
                Some("shop"),
            ),
            ("orders.shop.svc", Some("shop")),
            ("https://user@orders.shop.svc/", Some("shop")),
            ("https://orders.shop.svc.cluster.local.", Some("shop")),
            ("https://orders.shop.svc.other.domain", None),
            ("https://a.b.orders.shop.svc", None),
            ("https://shop.svc", None),
            (API, None),
            ("urn:orders", None),
        ] {
            assert_eq!(
                service_namespace(audience, "cluster.local").as_deref(),
                namespace,
                "{audience}"
            );
        }
    }

    #[test]
    fn own_namespace_is_admitted_others_only_as_the_owner_lists_them() {
        let orders = policy(
            "shop",
            "orders",
            10,
            &format!(
                "  audiences: [{ORDERS}]\n  clients: {{namespaces: [billing], names: [{{namespace: partner, name: app}}]}}"
            ),
        );
        let owners = AudienceOwners::new([&orders], "cluster.local");
        assert_eq!(owners.verdict(ORDERS, "shop", "web"), Verdict::Admitted);
        assert_eq!(owners.verdict(ORDERS, "billing", "any"), Verdict::Admitted);
        assert_eq!(owners.verdict(ORDERS, "partner", "app"), Verdict::Admitted);
        assert_eq!(
            owners.verdict(ORDERS, "partner", "other"),
            Verdict::NotAdmitted {
                owners: vec!["shop/orders".into()]
            }
        );
        assert!(matches!(
            owners.verdict(ORDERS, "evil", "app"),
            Verdict::NotAdmitted { .. }
        ));
        // A spelling of the audience is another audience, which nobody owns.
        assert_eq!(
            owners.verdict(&format!("{ORDERS}/"), "shop", "web"),
            Verdict::NoOwner
        );
        assert_eq!(owners.owned_by("shop"), [ORDERS]);
        assert!(owners.owned_by("billing").is_empty());
    }

    #[test]
    fn a_squatter_cannot_take_a_service_audience_even_when_first() {
        let evil = policy(
            "evil",
            "squat",
            1,
            &format!("  audiences: [{ORDERS}]\n  clients: {{namespaces: ['*']}}"),
        );
        // Before shop lists it, nobody owns it: the squatter's claim does not count.
        let owners = AudienceOwners::new([&evil], "cluster.local");
        assert_eq!(owners.verdict(ORDERS, "evil", "app"), Verdict::NoOwner);
        assert_eq!(owners.conflicts_of(&evil).len(), 1);
        assert!(owners.conflicts_of(&evil)[0].1.contains("namespace shop"));
        let orders = policy("shop", "orders", 50, &format!("  audiences: [{ORDERS}]"));
        let owners = AudienceOwners::new([&evil, &orders], "cluster.local");
        assert!(matches!(
            owners.verdict(ORDERS, "evil", "app"),
            Verdict::NotAdmitted { .. }
        ));
        assert!(owners.conflicts_of(&orders).is_empty());
        assert!(owners.owned_by("evil").is_empty());
    }

    #[test]
    fn an_external_issuers_own_audiences_are_claimed_like_the_policys() {
        let extra = format!(
            "  audiences: [api://evil]\n  additionalIssuers:\n    - {{issuer: https://idp.example, jwksUri: https://idp.example/jwks, algorithms: [ES256], audiences: [{ORDERS}, 'api://reports']}}"
        );
        let evil = policy("evil", "squat", 1, &extra);
        assert_eq!(
            claimed_audiences(&evil.spec),
            ["api://evil", "api://reports", ORDERS]
        );
        // A Service audience of another namespace, named as an outside issuer's own, is a
        // squat like any other.
        let owners = AudienceOwners::new([&evil], "cluster.local");
        let conflicts: Vec<&str> = (owners.conflicts_of(&evil).iter())
            .map(|(a, _)| a.as_str())
            .collect();
        assert_eq!(conflicts, [ORDERS]);
        assert_eq!(owners.owned_by("evil"), ["api://evil", "api://reports"]);
    }

    #[test]
    fn the_policys_audiences_are_needed_while_an_issuer_names_none_of_its_own() {
        let external = |own: &str, more: &str| {
            let mut p = policy("shop", "p", 1, more);
            p.spec.issuer = serde_yaml_ng::from_str(&format!(
                "external: {{issuer: https://idp.example, jwksUri: https://idp.example/jwks, algorithms: [ES256]{own}}}"
            ))
            .unwrap();
            p
        };
        assert!(uses_policy_audiences(&external("", "").spec));
        assert!(!uses_policy_audiences(
            &external(", audiences: [api://r]", "").spec
        ));
        let more = "  additionalIssuers:\n    - {issuer: https://b.example, jwksUri: https://b.example/jwks, algorithms: [ES256]}";
        assert!(uses_policy_audiences(
            &external(", audiences: [api://r]", more).spec
        ));
        assert!(uses_policy_audiences(&policy("shop", "p", 1, "").spec));
    }

    #[test]
    fn any_other_audience_belongs_to_its_oldest_claimant() {
        let first = policy("shop", "api", 10, &format!("  audiences: [{API}]"));
        let later = policy(
            "evil",
            "api",
            20,
            &format!("  audiences: [{API}]\n  clients: {{namespaces: ['*']}}"),
        );
        let owners = AudienceOwners::new([&later, &first], "cluster.local");
        assert!(matches!(
            owners.verdict(API, "evil", "app"),
            Verdict::NotAdmitted { .. }
        ));
        assert_eq!(
            owners.conflicts_of(&later),
            [(
                API.to_owned(),
                "AuthPolicy shop/api listed it first".to_owned()
            )]
        );
        assert!(owners.conflicts_of(&first).is_empty());
        // Two policies of the owning namespace both admit.
        let sibling = policy(
            "shop",
            "api-v2",
            30,
            &format!("  audiences: [{API}]\n  clients: {{namespaces: [billing]}}"),
        );
        let owners = AudienceOwners::new([&first, &sibling], "cluster.local");
        assert_eq!(owners.verdict(API, "billing", "x"), Verdict::Admitted);
    }

    #[test]
    fn an_issuers_own_url_admits_the_namespaces_it_registers() {
        let auth: AuthPolicy = serde_yaml_ng::from_str(
            "apiVersion: scopegate.dev/v1alpha1\nkind: AuthPolicy\nmetadata: {name: auth, namespace: shop}\nspec:\n  selector: {matchLabels: {app: auth}}\n  upstream: {port: 8080}\n  issuer:\n    self:\n      url: https://auth.shop.svc.cluster.local\n      service: {name: auth, port: 443}\n      allowedClientNamespaces: [billing]\n",
        )
        .unwrap();
        let owners = AudienceOwners::new([&auth], "cluster.local");
        let url = "https://auth.shop.svc.cluster.local";
        assert_eq!(owners.verdict(url, "billing", "x"), Verdict::Admitted);
        assert!(matches!(
            owners.verdict(url, "evil", "x"),
            Verdict::NotAdmitted { .. }
        ));
    }

    #[test]
    fn a_client_is_sorted_into_admitted_and_refused_audiences() {
        let orders = policy("shop", "orders", 10, &format!("  audiences: [{ORDERS}]"));
        let owners = AudienceOwners::new([&orders], "cluster.local");
        let evil = client("evil", "thief", &[ORDERS, "https://nobody.example"]);
        let sorted = owners.sort_client(&evil);
        assert!(sorted.admitted.is_empty());
        assert_eq!(sorted.refused.len(), 2);
        assert!(matches!(sorted.refused[0].1, Verdict::NotAdmitted { .. }));
        assert_eq!(sorted.refused[1].1, Verdict::NoOwner);
        let web = client("shop", "web", &[ORDERS]);
        let sorted = owners.sort_client(&web);
        assert_eq!(sorted.admitted, [ORDERS]);
        assert_eq!(sorted.owned, [ORDERS]);
        assert_eq!(sorted.exchange, None);
    }

    /// `client` with a tokenExchange from `subjects` to `targets`.
    fn exchanging(namespace: &str, subjects: &[&str], targets: &[&str]) -> OAuthClient {
        let mut client = client(namespace, "app", &[]);
        client.spec.token_exchange = serde_json::from_value(serde_json::json!({
            "subjectAudiences": subjects, "audiences": targets, "maxDepth": 9
        }))
        .unwrap();
        client
    }

    #[test]
    fn an_exchange_takes_only_tokens_sent_to_its_own_namespace_for_admitted_audiences() {
        const INVENTORY: &str = "https://inventory.stock.svc.cluster.local";
        let orders = policy("shop", "orders", 10, &format!("  audiences: [{ORDERS}]"));
        let inventory = policy(
            "stock",
            "inventory",
            10,
            &format!("  audiences: [{INVENTORY}]\n  clients: {{namespaces: [shop, evil]}}"),
        );
        // Admitted as itself, shop's client may not act for users towards inventory.
        let owners = AudienceOwners::new([&orders, &inventory], "cluster.local");
        let sorted = owners.sort_client(&exchanging("shop", &[ORDERS], &[INVENTORY]));
        assert_eq!(sorted.exchange, None);
        assert!(matches!(
            sorted.exchange_refused[0].1,
            ExchangeRefusal::Target(Verdict::NotAdmittedAsActor { .. })
        ));
        let inventory = policy(
            "stock",
            "inventory",
            10,
            &format!(
                "  audiences: [{INVENTORY}]\n  clients: {{namespaces: [shop, evil], actors: {{namespaces: [shop]}}}}"
            ),
        );
        let owners = AudienceOwners::new([&orders, &inventory], "cluster.local");
        let sorted = owners.sort_client(&exchanging("shop", &[ORDERS], &[INVENTORY]));
        let exchange = sorted.exchange.unwrap();
        assert_eq!(exchange.subject_audiences, [ORDERS]);
        assert_eq!(exchange.audiences, [INVENTORY]);
        // The schema caps the depth at 4; the registry never holds more.
        assert_eq!(exchange.max_depth, MAX_EXCHANGE_DEPTH);
        assert!(sorted.exchange_refused.is_empty());

        // Another namespace's team: tokens sent to shop's orders are not theirs to exchange,
        // and inventory does not admit them.
        let sorted = owners.sort_client(&exchanging("evil", &[ORDERS], &[INVENTORY]));
        assert_eq!(sorted.exchange, None);
        assert_eq!(
            sorted.exchange_refused[0],
            (ORDERS.to_owned(), ExchangeRefusal::SubjectNotOwned)
        );
        assert!(matches!(
            sorted.exchange_refused[1].1,
            ExchangeRefusal::Target(Verdict::NotAdmittedAsActor { .. })
        ));
        // One target nobody owns: the rest still works.
        let sorted = owners.sort_client(&exchanging(
            "shop",
            &[ORDERS],
            &[INVENTORY, "https://nobody.example"],
        ));
        assert_eq!(sorted.exchange.unwrap().audiences, [INVENTORY]);
        assert_eq!(
            sorted.exchange_refused,
            [(
                "https://nobody.example".to_owned(),
                ExchangeRefusal::Target(Verdict::NoOwner)
            )]
        );
    }
}
