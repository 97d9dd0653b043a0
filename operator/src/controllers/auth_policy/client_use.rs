//! What the sidecar's own use of an OAuthClient needs, for its egress and its sessions alike:
//! the client exists in the policy's namespace, is confidential and authenticates with the
//! pods' ServiceAccount, and its issuer issues tokens and registers it (the registry's own
//! checks, with what the audiences' owners admit). Pure: the reconcile looks the objects up.

use scopegate_crds::v1alpha1::{AuthPolicy, OAuthClient, SelfIssuer};

use crate::audiences::{AudienceOwners, ClientAudiences};
use crate::client_checks::registration_problems;

/// A client the sidecar may use, with what it uses of it.
#[derive(Debug)]
pub struct Usable<'a> {
    /// The client.
    pub client: &'a OAuthClient,
    /// Its issuer's `issuer.self`.
    pub own: &'a SelfIssuer,
    /// Its audiences as its issuer registers them: admitted by their owners, or why not.
    pub audiences: ClientAudiences,
}

/// `client` (if it exists in the policy's namespace) with its issuer `issuer` (if it
/// resolves), when the sidecar may use it; otherwise why not, in words that name the field to
/// change.
pub fn usable<'a>(
    client: Option<&'a OAuthClient>,
    issuer: Option<&'a AuthPolicy>,
    owners: &AudienceOwners,
) -> Result<Usable<'a>, String> {
    let client = client.ok_or("no OAuthClient of that name in this namespace")?;
    if client.spec.public {
        return Err("it is public: the sidecar authenticates as a confidential client, with the pods' ServiceAccount (spec.serviceAccounts)".into());
    }
    if client.spec.service_accounts.is_empty() {
        return Err("it authenticates with a secret, not with the pods' ServiceAccount (spec.serviceAccounts): no secret is mounted into the pods".into());
    }
    let own = issuer
        .and_then(|p| p.spec.issuer.self_.as_ref())
        .ok_or("its issuerRef names no issuing AuthPolicy")?;
    let audiences = owners.sort_client(client);
    // The issuer must register it: the registry's own checks.
    if let Some(problem) = registration_problems(client, issuer, &audiences)
        .iter()
        .find(|p| p.blocks_registration())
    {
        return Err(format!("its issuer does not register it: {problem}"));
    }
    Ok(Usable {
        client,
        own,
        audiences,
    })
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    fn client(extra: &str) -> OAuthClient {
        serde_yaml_ng::from_str(&format!(
            "apiVersion: scopegate.dev/v1alpha1\nkind: OAuthClient\nmetadata: {{name: web, namespace: shop}}\nspec:\n  issuerRef: {{name: auth}}\n  grantTypes: [client_credentials]\n  scopes: [read]\n  audiences: [https://web.shop.svc]\n{extra}"
        ))
        .unwrap()
    }

    fn policy(yaml_spec: &str) -> AuthPolicy {
        serde_yaml_ng::from_str(&format!(
            "apiVersion: scopegate.dev/v1alpha1\nkind: AuthPolicy\nmetadata: {{name: auth, namespace: shop}}\nspec:\n  selector: {{}}\n  upstream: {{port: 8080}}\n{yaml_spec}"
        ))
        .unwrap()
    }

    fn issuer() -> AuthPolicy {
        policy(
            "  issuer:\n    self:\n      url: https://auth.shop.svc\n      service: {name: auth, port: 443}\n      scopes: {read: R}\n",
        )
    }

    /// The owner of the client's audience, admitting nobody else.
    fn web() -> AuthPolicy {
        let mut web =
            policy("  issuer: {policyRef: {name: auth}}\n  audiences: [https://web.shop.svc]\n");
        web.metadata.name = Some("web".into());
        web
    }

    const SA: &str = "  serviceAccounts: [web]";

    fn refusal(client: Option<&OAuthClient>, issuer: Option<&AuthPolicy>) -> String {
        let owners = AudienceOwners::new([&web()], "cluster.local");
        usable(client, issuer, &owners).unwrap_err()
    }

    #[test]
    fn a_registered_service_account_client_is_usable_with_its_issuers_self() {
        let (sa, issuer) = (client(SA), issuer());
        let owners = AudienceOwners::new([&web()], "cluster.local");
        let Usable {
            client,
            own,
            audiences,
        } = usable(Some(&sa), Some(&issuer), &owners).unwrap();
        assert_eq!(client.spec.service_accounts, ["web"]);
        assert_eq!(own.url, "https://auth.shop.svc");
        assert_eq!(audiences.admitted, ["https://web.shop.svc"]);
    }

    #[test]
    fn each_refusal_names_what_to_change() {
        let issuer = issuer();
        assert_eq!(
            refusal(None, Some(&issuer)),
            "no OAuthClient of that name in this namespace"
        );
        let public = client(&format!("{SA}\n  public: true"));
        assert!(refusal(Some(&public), Some(&issuer)).starts_with("it is public"));
        let secret = client("");
        let why = refusal(Some(&secret), Some(&issuer));
        assert!(why.starts_with("it authenticates with a secret"), "{why}");
        assert!(why.contains("spec.serviceAccounts"), "{why}");
        let sa = client(SA);
        assert_eq!(
            refusal(Some(&sa), None),
            "its issuerRef names no issuing AuthPolicy"
        );
        let verifier = policy("  issuer: {policyRef: {name: other}}\n");
        assert_eq!(
            refusal(Some(&sa), Some(&verifier)),
            "its issuerRef names no issuing AuthPolicy"
        );
        // What the registry checks: the issuer's scopes...
        let mut wider = client(SA);
        wider.spec.scopes.push("admin".into());
        assert_eq!(
            refusal(Some(&wider), Some(&issuer)),
            "its issuer does not register it: scope admin is not declared by the issuer shop/auth"
        );
        // ...its namespaces...
        let mut foreign = client(SA);
        foreign.metadata.namespace = Some("evil".into());
        foreign.spec.issuer_ref.namespace = Some("shop".into());
        let why = refusal(Some(&foreign), Some(&issuer));
        assert!(
            why.contains("does not accept clients from namespace evil"),
            "{why}"
        );
        // ...and the audiences' owners: with none of its audiences admitted it is not
        // registered.
        let mut elsewhere = client(SA);
        elsewhere.spec.audiences = vec!["https://bank.other.svc".into()];
        let why = refusal(Some(&elsewhere), Some(&issuer));
        assert!(
            why.starts_with("its issuer does not register it: audiences not admitted"),
            "{why}"
        );
        assert!(why.contains("https://bank.other.svc"), "{why}");
    }
}
