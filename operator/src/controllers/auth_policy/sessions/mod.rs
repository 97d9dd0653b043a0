//! A policy's browser sessions: the keys that seal their cookies ([`keys`], deciding in
//! [`key_plan`]), and the sidecar config, from the OAuthClient the policy names and that
//! client's issuer ([`render`]). Rendering is pure: the reconcile looks the objects up.

pub mod key_plan;
pub mod keys;

use scopegate_core::names::SA_TOKEN_MOUNT_DIR;
use scopegate_core::session::{SESSION_KEYS_FILE, SESSION_KEYS_MOUNT_DIR, SessionConfig};
use scopegate_crds::v1alpha1::{AuthPolicy, GrantType, OAuthClient, Sessions};

use super::client_use::{Usable, usable};
use super::egress::full_name_url;
use super::problem::Problem;
use crate::audiences::{AudienceOwners, effective_audiences};
use crate::names::{SESSION_SA_TOKEN_FILE, client_id};

/// The sessions config of `policy`, whose `sessions` name `client` (if it exists in the
/// policy's namespace) with issuer `issuer` (if it resolves), its audiences' owners `owners`;
/// or what stops it.
pub fn render(
    policy: &AuthPolicy,
    sessions: &Sessions,
    client: Option<&OAuthClient>,
    issuer: Option<&AuthPolicy>,
    owners: &AudienceOwners,
    cluster_domain: &str,
) -> Result<SessionConfig, Problem> {
    let name = &sessions.client_ref.name;
    let refused = |why: String| Problem::SessionsRefused(name.clone(), why);
    let Usable { client, own, .. } = usable(client, issuer, owners).map_err(refused)?;
    let spec = &client.spec;
    for grant in [GrantType::AuthorizationCode, GrantType::RefreshToken] {
        if !spec.grant_types.contains(&grant) {
            let grant = serde_json::to_value(grant).unwrap_or_default();
            return Err(refused(format!(
                "its grantTypes lack {}: sessions need authorization_code and refresh_token",
                grant.as_str().unwrap_or_default()
            )));
        }
    }
    if !spec.redirect_uris.contains(&sessions.redirect_uri) {
        return Err(refused(format!(
            "its redirectUris do not list {}: add it there",
            sessions.redirect_uri
        )));
    }
    let scopes = if sessions.scopes.is_empty() {
        spec.default_scopes.clone()
    } else {
        sessions.scopes.clone()
    };
    if let Some(scope) = scopes.iter().find(|s| !spec.scopes.contains(s)) {
        return Err(refused(format!("scope {scope} is not one of its scopes")));
    }
    let accepted = effective_audiences(&policy.spec);
    let audience = match &sessions.audience {
        Some(audience) => audience.clone(),
        None => accepted.first().cloned().ok_or_else(|| {
            refused(
                "this policy has no audience for the sessions' tokens: set spec.audiences".into(),
            )
        })?,
    };
    if !accepted.contains(&audience) {
        return Err(refused(format!(
            "audience {audience} is not one this policy accepts (spec.audiences)"
        )));
    }
    let may_get = if spec.audiences.is_empty() {
        audience == own.url
    } else {
        spec.audiences.contains(&audience)
    };
    if !may_get {
        return Err(refused(format!(
            "audience {audience} is not one of its audiences"
        )));
    }
    let secs = |d: &scopegate_crds::v1alpha1::PositiveDuration| d.get().map_or(0, |d| d.as_secs());
    let in_cluster = full_name_url(&own.url, cluster_domain);
    let in_cluster = in_cluster.trim_end_matches('/');
    Ok(SessionConfig {
        issuer: own.url.clone(),
        authorization_endpoint: format!("{}/oauth2/authorize", own.url.trim_end_matches('/')),
        token_endpoint: format!("{in_cluster}/oauth2/token"),
        revocation_endpoint: format!("{in_cluster}/oauth2/revoke"),
        client_id: client_id(client),
        token_audience: own.url.clone(),
        assertion_path: format!("{SA_TOKEN_MOUNT_DIR}/{SESSION_SA_TOKEN_FILE}"),
        redirect_uri: sessions.redirect_uri.clone(),
        paths: sessions.paths.clone(),
        scopes,
        audience,
        after_logout: sessions.after_logout.clone(),
        max_lifetime_secs: secs(&sessions.max_lifetime),
        keys_path: format!("{SESSION_KEYS_MOUNT_DIR}/{SESSION_KEYS_FILE}"),
    })
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    fn policy(sessions: &str) -> AuthPolicy {
        serde_yaml_ng::from_str(&format!(
            "apiVersion: scopegate.dev/v1alpha1\nkind: AuthPolicy\nmetadata: {{name: web, namespace: shop}}\nspec:\n  selector: {{matchLabels: {{app: web}}}}\n  issuer: {{policyRef: {{name: auth}}}}\n  audiences: [https://web.shop.svc, https://api.shop.svc]\n  upstream: {{port: 8080}}\n  sessions:\n{sessions}"
        ))
        .unwrap()
    }

    const SESSIONS: &str = "    clientRef: {name: web}\n    redirectUri: https://shop.example.com/.scopegate/callback\n    paths: [/account/**]\n";

    fn client(extra: &str) -> OAuthClient {
        serde_yaml_ng::from_str(&format!(
            "apiVersion: scopegate.dev/v1alpha1\nkind: OAuthClient\nmetadata: {{name: web, namespace: shop}}\nspec:\n  issuerRef: {{name: auth}}\n  grantTypes: [authorization_code, refresh_token]\n  scopes: [read:orders, profile]\n  defaultScopes: [profile]\n  audiences: [https://web.shop.svc]\n  redirectUris: [https://shop.example.com/.scopegate/callback]\n{extra}"
        ))
        .unwrap()
    }

    fn issuer() -> AuthPolicy {
        serde_yaml_ng::from_str(
            "apiVersion: scopegate.dev/v1alpha1\nkind: AuthPolicy\nmetadata: {name: auth, namespace: shop}\nspec:\n  selector: {matchLabels: {app: auth}}\n  issuer:\n    self:\n      url: https://auth.shop.svc\n      service: {name: auth, port: 443}\n      loginUrl: https://shop.example.com/login\n      scopes: {read:orders: r, profile: p}\n  upstream: {port: 8080}\n",
        )
        .unwrap()
    }

    fn render_with(sessions: &str, client: Option<&OAuthClient>) -> Result<SessionConfig, Problem> {
        let policy = policy(sessions);
        let declared = policy.spec.sessions.clone().unwrap();
        let owners = AudienceOwners::new([&issuer(), &policy], "cluster.local");
        render(
            &policy,
            &declared,
            client,
            Some(&issuer()),
            &owners,
            "cluster.local",
        )
    }

    const SA: &str = "  serviceAccounts: [web]";

    #[test]
    fn a_service_account_client_renders_the_issuers_endpoints_and_the_defaults() {
        let config = render_with(SESSIONS, Some(&client(SA))).unwrap();
        assert_eq!(config.issuer, "https://auth.shop.svc");
        assert_eq!(
            config.authorization_endpoint,
            "https://auth.shop.svc/oauth2/authorize"
        );
        // Dialled by the full in-cluster name; the token it presents is for the url as written.
        assert_eq!(
            config.token_endpoint,
            "https://auth.shop.svc.cluster.local/oauth2/token"
        );
        assert_eq!(
            config.revocation_endpoint,
            "https://auth.shop.svc.cluster.local/oauth2/revoke"
        );
        assert_eq!(config.token_audience, "https://auth.shop.svc");
        assert_eq!(config.client_id, "shop.web");
        assert_eq!(
            config.assertion_path,
            "/var/run/secrets/scopegate/issuer-token/session-token"
        );
        assert_eq!(
            config.keys_path,
            "/etc/scopegate/session-keys/session-keys.json"
        );
        // Defaults: the client's defaultScopes, the policy's first audience, "/", 8h.
        assert_eq!(config.scopes, ["profile"]);
        assert_eq!(config.audience, "https://web.shop.svc");
        assert_eq!(config.after_logout, "/");
        assert_eq!(config.max_lifetime_secs, 8 * 3600);
        assert_eq!(config.paths, ["/account/**"]);
        let chosen = format!(
            "{SESSIONS}    scopes: [read:orders]\n    afterLogout: /bye\n    maxLifetime: 1h\n"
        );
        let config = render_with(&chosen, Some(&client(SA))).unwrap();
        assert_eq!(config.scopes, ["read:orders"]);
        assert_eq!(config.after_logout, "/bye");
        assert_eq!(config.max_lifetime_secs, 3600);
    }

    #[test]
    fn what_the_client_cannot_do_is_refused_by_name() {
        let refused = |sessions: &str, client: Option<&OAuthClient>| {
            let problem = render_with(sessions, client).unwrap_err();
            assert_eq!(problem.reason(), "SessionsRefused");
            problem.to_string()
        };
        assert!(refused(SESSIONS, None).contains("no OAuthClient of that name in this namespace"));
        assert!(refused(SESSIONS, Some(&client(""))).contains("authenticates with a secret"));
        let public = client("  public: true");
        assert!(refused(SESSIONS, Some(&public)).contains("it is public"));
        let no_refresh = client(SA).spec.grant_types.len();
        assert_eq!(no_refresh, 2);
        let mut code_only = client(SA);
        code_only.spec.grant_types = vec![GrantType::AuthorizationCode];
        assert!(refused(SESSIONS, Some(&code_only)).contains("lack refresh_token"));
        let elsewhere = SESSIONS.replace("shop.example.com", "evil.example.com");
        assert!(
            refused(&elsewhere, Some(&client(SA)))
                .contains("redirectUris do not list https://evil.example.com/.scopegate/callback")
        );
        let wider = format!("{SESSIONS}    scopes: [admin]\n");
        assert!(
            refused(&wider, Some(&client(SA))).contains("scope admin is not one of its scopes")
        );
        let other_audience = format!("{SESSIONS}    audience: https://api.shop.svc\n");
        assert!(
            refused(&other_audience, Some(&client(SA)))
                .contains("audience https://api.shop.svc is not one of its audiences")
        );
        let foreign = format!("{SESSIONS}    audience: https://bank.other.svc\n");
        assert!(refused(&foreign, Some(&client(SA))).contains("not one this policy accepts"));
        let policy = policy(SESSIONS);
        let declared = policy.spec.sessions.clone().unwrap();
        let owners = AudienceOwners::new([&policy], "x");
        let no_issuer =
            render(&policy, &declared, Some(&client(SA)), None, &owners, "x").unwrap_err();
        assert!(no_issuer.to_string().contains("issuerRef"), "{no_issuer}");
        // An issuer that does not register the client (a scope it does not declare).
        let mut unknown = client(SA);
        unknown.spec.scopes.push("unknown".into());
        assert!(refused(SESSIONS, Some(&unknown)).contains("its issuer does not register it"));
    }
}
