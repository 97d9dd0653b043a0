//! A policy's egress: the sidecar config for the app's outbound calls, from the OAuthClient
//! the policy names and that client's issuer. Pure: the reconcile looks the objects up.

use scopegate_core::config::{EgressConfig, EgressTarget};
use scopegate_core::names::{SA_TOKEN_FILE, SA_TOKEN_MOUNT_DIR};
use scopegate_crds::v1alpha1::{
    AuthPolicy, Egress, EgressTarget as DeclaredTarget, GrantType, OAuthClient, SelfIssuer,
};

use super::client_use::{Usable, usable};
use super::problem::Problem;
use crate::audiences::{AudienceOwners, ClientAudiences, ExchangeRefusal};
use crate::client_checks::{exchange_refusal_words, verdict_words};
use crate::names::client_id;

/// The egress config of `egress`, whose client is `client` (if it exists) and that client's
/// issuer `issuer` (if it resolves), its audiences' owners `owners`; or what stops it.
pub fn render(
    egress: &Egress,
    client: Option<&OAuthClient>,
    issuer: Option<&AuthPolicy>,
    owners: &AudienceOwners,
    cluster_domain: &str,
) -> Result<EgressConfig, Problem> {
    let name = &egress.client_ref.name;
    let refused = |why: String| Problem::EgressRefused(name.clone(), why);
    let Usable {
        client,
        own,
        audiences,
    } = usable(client, issuer, owners).map_err(refused)?;
    let spec = &client.spec;
    let own_tokens = egress.targets.iter().any(|t| !t.on_behalf_of_caller);
    if own_tokens && !spec.grant_types.contains(&GrantType::ClientCredentials) {
        return Err(refused("it may not use client_credentials".into()));
    }
    let mut targets = Vec::with_capacity(egress.targets.len());
    for target in &egress.targets {
        if let Some(why) = audience_refusal(target, client, own, &audiences) {
            return Err(Problem::EgressTargetRefused(target.name.clone(), why));
        }
        if let Some(scope) = target.scopes.iter().find(|s| !spec.scopes.contains(s)) {
            return Err(Problem::EgressTargetRefused(
                target.name.clone(),
                format!("scope {scope} is not one of client {name}'s scopes"),
            ));
        }
        let in_cluster = in_cluster(&target.url, cluster_domain);
        targets.push(EgressTarget {
            name: target.name.clone(),
            url: target.url.clone(),
            address: address(&target.url, in_cluster, cluster_domain),
            in_cluster,
            audience: target.audience.clone(),
            scopes: target.scopes.clone(),
            on_behalf_of_caller: target.on_behalf_of_caller,
        });
    }
    Ok(EgressConfig {
        port: u16::try_from(egress.port).unwrap_or(15081),
        token_endpoint: format!(
            "{}/oauth2/token",
            full_name_url(&own.url, cluster_domain).trim_end_matches('/')
        ),
        client_id: client_id(client),
        token_audience: own.url.clone(),
        assertion_path: format!("{SA_TOKEN_MOUNT_DIR}/{SA_TOKEN_FILE}"),
        targets,
    })
}

/// Why `client` gets no token for `target`'s audience, if it does not: the audience is not
/// in the list of its spec the target draws on (`audiences`, or `tokenExchange.audiences` on
/// behalf of the caller), or its owner does not admit the client (`audiences`, as its issuer
/// registered them).
fn audience_refusal(
    target: &DeclaredTarget,
    client: &OAuthClient,
    own: &SelfIssuer,
    audiences: &ClientAudiences,
) -> Option<String> {
    let (spec, audience) = (&client.spec, &target.audience);
    let name = client.metadata.name.as_deref().unwrap_or_default();
    let not_listed = |list: &str| {
        Some(format!(
            "audience {audience} is not one of client {name}'s {list}"
        ))
    };
    if target.on_behalf_of_caller {
        let exchange = spec.token_exchange.as_ref();
        if !exchange.is_some_and(|x| x.audiences.contains(audience)) {
            return not_listed("tokenExchange.audiences");
        }
        if (audiences.exchange.as_ref()).is_some_and(|x| x.audiences.contains(audience)) {
            return None;
        }
        let refused = |a: &String| a == audience;
        if let Some((_, refusal)) = (audiences.exchange_refused.iter()).find(|(a, _)| refused(a)) {
            return Some(format!(
                "audience {audience} of client {name}'s tokenExchange.audiences is not admitted: {}",
                exchange_refusal_words(refusal)
            ));
        }
        // Admitted, but no subject audience is left: the client may not exchange at all.
        let subjects: Vec<&str> = (audiences.exchange_refused.iter())
            .filter(|(_, r)| *r == ExchangeRefusal::SubjectNotOwned)
            .map(|(a, _)| a.as_str())
            .collect();
        return Some(format!(
            "client {name} may not exchange tokens: none of its tokenExchange.subjectAudiences ({}) is owned by its namespace: {}",
            subjects.join(", "),
            exchange_refusal_words(&ExchangeRefusal::SubjectNotOwned)
        ));
    }
    if spec.audiences.is_empty() {
        return (*audience != own.url)
            .then(|| not_listed("audiences"))
            .flatten();
    }
    if !spec.audiences.contains(audience) {
        return not_listed("audiences");
    }
    let (_, verdict) = (audiences.refused.iter()).find(|(a, _)| a == audience)?;
    Some(format!(
        "audience {audience} of client {name}'s audiences is not admitted: {}",
        verdict_words(verdict)
    ))
}

/// `url` with an in-cluster host written in full (`<svc>.<ns>.svc.<cluster domain>`), so that
/// no DNS search domain turns it into another namespace's name; any other url as it is.
pub fn full_name_url(url: &str, cluster_domain: &str) -> String {
    let Some((scheme, rest)) = url.split_once("://") else {
        return url.to_owned();
    };
    let (authority, path) = rest.split_at(rest.find('/').unwrap_or(rest.len()));
    let (host, port) = match authority.rsplit_once(':') {
        Some((host, port)) => (host, format!(":{port}")),
        None => (authority, String::new()),
    };
    if in_cluster(url, cluster_domain) && !host.ends_with(&format!(".svc.{cluster_domain}")) {
        format!("{scheme}://{host}.{cluster_domain}{port}{path}")
    } else {
        url.to_owned()
    }
}

/// The `host:port` to connect to for `url`: an in-cluster name in full (`<svc>.<ns>.svc.<cluster
/// domain>`), so that no DNS search domain turns it into another namespace's name.
fn address(url: &str, in_cluster: bool, cluster_domain: &str) -> String {
    let (scheme, rest) = url.split_once("://").unwrap_or(("https", url));
    let authority = rest.split('/').next().unwrap_or_default();
    let (host, port) = match authority.rsplit_once(':') {
        Some((host, port)) => (host, port.to_owned()),
        None => (
            authority,
            if scheme == "http" { "80" } else { "443" }.to_owned(),
        ),
    };
    let suffix = format!(".svc.{cluster_domain}");
    if in_cluster && !host.ends_with(&suffix) {
        format!("{host}.{cluster_domain}:{port}")
    } else {
        format!("{host}:{port}")
    }
}

/// Whether `url`'s host is an in-cluster Service name: `<service>.<namespace>.svc`, or that
/// followed by the cluster domain.
pub fn in_cluster(url: &str, cluster_domain: &str) -> bool {
    let rest = url.split_once("://").map_or(url, |(_, rest)| rest);
    let host = rest.split([':', '/']).next().unwrap_or_default();
    let Some(prefix) = host
        .strip_suffix(&format!(".svc.{cluster_domain}"))
        .or_else(|| host.strip_suffix(".svc"))
    else {
        return false;
    };
    let mut labels = prefix.split('.');
    matches!((labels.next(), labels.next(), labels.next()), (Some(s), Some(n), None) if !s.is_empty() && !n.is_empty())
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    fn egress(yaml: &str) -> Egress {
        serde_yaml_ng::from_str(yaml).unwrap()
    }

    fn client(extra: &str) -> OAuthClient {
        serde_yaml_ng::from_str(&format!(
            "apiVersion: scopegate.dev/v1alpha1\nkind: OAuthClient\nmetadata: {{name: billing, namespace: shop}}\nspec:\n  issuerRef: {{name: auth}}\n  grantTypes: [client_credentials]\n  scopes: [read:orders, write:orders]\n  audiences: [https://orders.shop.svc]\n{extra}"
        ))
        .unwrap()
    }

    fn issuer() -> AuthPolicy {
        serde_yaml_ng::from_str(
            "apiVersion: scopegate.dev/v1alpha1\nkind: AuthPolicy\nmetadata: {name: auth, namespace: shop}\nspec:\n  selector: {matchLabels: {app: auth}}\n  issuer:\n    self:\n      url: https://auth.shop.svc\n      service: {name: auth, port: 443}\n      scopes: {read:orders: r, write:orders: w}\n  upstream: {port: 8080}\n",
        )
        .unwrap()
    }

    /// Policy `name` of `namespace`, owning `https://<name>.<namespace>.svc`, with `extra` spec
    /// lines.
    fn policy(namespace: &str, name: &str, extra: &str) -> AuthPolicy {
        serde_yaml_ng::from_str(&format!(
            "apiVersion: scopegate.dev/v1alpha1\nkind: AuthPolicy\nmetadata: {{name: {name}, namespace: {namespace}}}\nspec:\n  selector: {{}}\n  issuer: {{policyRef: {{name: auth, namespace: shop}}}}\n  audiences: [https://{name}.{namespace}.svc]\n  upstream: {{port: 8080}}\n{extra}"
        ))
        .unwrap()
    }

    /// Who owns the audiences of the tests: orders (of shop), inventory (of stock, admitting
    /// shop's billing to act for users).
    fn owners() -> AudienceOwners {
        let orders = policy("shop", "orders", "");
        let inventory = policy(
            "stock",
            "inventory",
            "  clients: {names: [{namespace: shop, name: billing}], actors: {names: [{namespace: shop, name: billing}]}}\n",
        );
        AudienceOwners::new([&issuer(), &orders, &inventory], "cluster.local")
    }

    const ORDERS: &str = "clientRef: {name: billing}\ntargets:\n  - {name: orders, url: 'http://orders.shop.svc', audience: 'https://orders.shop.svc', scopes: [read:orders]}\n";

    #[test]
    fn a_service_account_client_renders_the_targets_and_its_issuers_token_endpoint() {
        let sa = client("  serviceAccounts: [billing]");
        let config = render(
            &egress(ORDERS),
            Some(&sa),
            Some(&issuer()),
            &owners(),
            "cluster.local",
        )
        .unwrap();
        assert_eq!(config.port, 15081);
        // Dialled by its full name; the token it presents is for the issuer's url as written.
        assert_eq!(
            config.token_endpoint,
            "https://auth.shop.svc.cluster.local/oauth2/token"
        );
        assert_eq!(
            full_name_url("https://auth.shop.svc:8443/tenant", "cluster.local"),
            "https://auth.shop.svc.cluster.local:8443/tenant"
        );
        assert_eq!(
            full_name_url("https://login.example.com", "cluster.local"),
            "https://login.example.com"
        );
        assert_eq!(config.client_id, "shop.billing");
        assert_eq!(
            config.assertion_path,
            "/var/run/secrets/scopegate/issuer-token/token"
        );
        assert_eq!(config.targets[0].scopes, ["read:orders"]);
        assert!(config.targets[0].in_cluster);
        assert_eq!(
            config.targets[0].address,
            "orders.shop.svc.cluster.local:80"
        );
        assert_eq!(config.token_audience, "https://auth.shop.svc");
        assert_eq!(
            address("https://api.example.com", false, "cluster.local"),
            "api.example.com:443"
        );
        assert_eq!(
            address(
                "https://orders.shop.svc.cluster.local:8443",
                true,
                "cluster.local"
            ),
            "orders.shop.svc.cluster.local:8443"
        );
    }

    #[test]
    fn what_the_client_may_not_get_is_refused_by_name() {
        let issuer = issuer();
        let refused = |e: &Egress, c: Option<&OAuthClient>| {
            render(e, c, Some(&issuer), &owners(), "cluster.local")
                .unwrap_err()
                .to_string()
        };
        let secret_client = client("");
        assert!(
            refused(&egress(ORDERS), Some(&secret_client)).contains("authenticates with a secret")
        );
        assert!(refused(&egress(ORDERS), None).contains("no OAuthClient"));
        let sa = client("  serviceAccounts: [billing]");
        let wider = ORDERS.replace("[read:orders]", "[admin]");
        assert!(
            refused(&egress(&wider), Some(&sa))
                .contains("scope admin is not one of client billing's scopes")
        );
        let elsewhere = ORDERS.replace(
            "audience: 'https://orders.shop.svc'",
            "audience: 'https://payments.bank.svc'",
        );
        assert!(
            refused(&egress(&elsewhere), Some(&sa))
                .contains("audience https://payments.bank.svc is not one of")
        );
        let no_issuer =
            render(&egress(ORDERS), Some(&sa), None, &owners(), "cluster.local").unwrap_err();
        assert!(no_issuer.to_string().contains("issuerRef"), "{no_issuer}");
    }

    const ON_BEHALF: &str = "clientRef: {name: billing}\ntargets:\n  - {name: stock, url: 'http://inventory.stock.svc', audience: 'https://inventory.stock.svc', scopes: [read:orders], onBehalfOfCaller: true}\n";

    #[test]
    fn a_target_on_behalf_of_the_caller_needs_the_audience_in_the_clients_token_exchange() {
        let issuer = issuer();
        let exchanging = client(
            "  serviceAccounts: [billing]\n  tokenExchange: {subjectAudiences: [https://orders.shop.svc], audiences: [https://inventory.stock.svc]}",
        );
        let config = render(
            &egress(ON_BEHALF),
            Some(&exchanging),
            Some(&issuer),
            &owners(),
            "x",
        )
        .unwrap();
        assert!(config.targets[0].on_behalf_of_caller);
        assert_eq!(config.targets[0].audience, "https://inventory.stock.svc");
        // Without a tokenExchange it is refused by name; so is the pod's own token for an
        // audience only the exchange may have.
        let sa = client("  serviceAccounts: [billing]");
        let refused =
            render(&egress(ON_BEHALF), Some(&sa), Some(&issuer), &owners(), "x").unwrap_err();
        assert!(
            refused
                .to_string()
                .contains("is not one of client billing's tokenExchange.audiences"),
            "{refused}"
        );
        let own = ON_BEHALF.replace(", onBehalfOfCaller: true", "");
        let refused = render(
            &egress(&own),
            Some(&exchanging),
            Some(&issuer),
            &owners(),
            "x",
        )
        .unwrap_err();
        assert!(
            refused.to_string().contains("billing's audiences"),
            "{refused}"
        );
    }

    #[test]
    fn an_audience_its_owner_does_not_admit_is_refused_naming_owner_and_field() {
        let issuer = issuer();
        let exchanging = client(
            "  serviceAccounts: [billing]\n  tokenExchange: {subjectAudiences: [https://orders.shop.svc], audiences: [https://inventory.stock.svc]}",
        );
        let refused = |owners: &AudienceOwners, e: &Egress, c: &OAuthClient| {
            let problem = render(e, Some(c), Some(&issuer), owners, "x").unwrap_err();
            assert_eq!(problem.reason(), "EgressTargetRefused");
            problem.to_string()
        };
        // Inventory admits billing as a client, not to act for users.
        let orders = policy("shop", "orders", "");
        let not_actor = policy(
            "stock",
            "inventory",
            "  clients: {names: [{namespace: shop, name: billing}]}\n",
        );
        let as_client = AudienceOwners::new([&issuer, &orders, &not_actor], "x");
        let why = refused(&as_client, &egress(ON_BEHALF), &exchanging);
        assert!(
            why.contains("audience https://inventory.stock.svc of client billing's tokenExchange.audiences is not admitted"),
            "{why}"
        );
        assert!(why.contains("its owner stock/inventory"), "{why}");
        assert!(why.contains("spec.clients.actors"), "{why}");
        // Nobody owns it.
        let unowned = AudienceOwners::new([&issuer, &orders], "x");
        let why = refused(&unowned, &egress(ON_BEHALF), &exchanging);
        assert!(
            why.contains("no AuthPolicy lists it in its audiences"),
            "{why}"
        );
        // Its subject audience is another namespace's: it may not exchange at all.
        let foreign = client(
            "  serviceAccounts: [billing]\n  tokenExchange: {subjectAudiences: [https://bank.other.svc], audiences: [https://inventory.stock.svc]}",
        );
        let why = refused(&owners(), &egress(ON_BEHALF), &foreign);
        assert!(
            why.contains("client billing may not exchange tokens: none of its tokenExchange.subjectAudiences (https://bank.other.svc)"),
            "{why}"
        );
        // Its own token: an audience of its spec that the owner does not admit.
        let mut wider = client("  serviceAccounts: [billing]");
        wider
            .spec
            .audiences
            .push("https://inventory.stock.svc".into());
        let own = ON_BEHALF.replace(", onBehalfOfCaller: true", "");
        let owners =
            AudienceOwners::new([&issuer, &orders, &policy("stock", "inventory", "")], "x");
        let why = refused(&owners, &egress(&own), &wider);
        assert!(
            why.contains(
                "audience https://inventory.stock.svc of client billing's audiences is not admitted"
            ),
            "{why}"
        );
        assert!(
            why.contains("its owner stock/inventory does not admit this client"),
            "{why}"
        );
        assert!(why.contains("spec.clients there"), "{why}");
        // Admitted there, it renders.
        let admitting = policy(
            "stock",
            "inventory",
            "  clients: {names: [{namespace: shop, name: billing}]}\n",
        );
        let owners = AudienceOwners::new([&issuer, &orders, &admitting], "x");
        assert!(render(&egress(&own), Some(&wider), Some(&issuer), &owners, "x").is_ok());
    }

    #[test]
    fn only_service_names_are_in_the_cluster() {
        for url in [
            "http://orders.shop.svc",
            "https://orders.shop.svc:8443",
            "https://orders.shop.svc.cluster.local",
        ] {
            assert!(in_cluster(url, "cluster.local"), "{url}");
        }
        for url in [
            "https://orders.shop.svc.evil.example",
            "https://svc",
            "https://a.b.c.svc",
            "https://orders.svc",
            "https://api.example.com",
            "https://orders.shop.svc.other.domain",
        ] {
            assert!(!in_cluster(url, "cluster.local"), "{url}");
        }
    }
}
