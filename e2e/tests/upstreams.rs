//! Upstream identity providers through the operator on a real control plane: the upstreams
//! render into the sidecar config (secrets by file path only), each referenced client secret
//! is copied into `<policy>-upstreams`, a rotated or late Secret rolls in through the
//! metadata watch, status names each callback URL exactly as the admin registers it, and
//! OAuthClient.spec.upstreams reaches the client registry.

use anyhow::{Context as _, ensure};
use k8s_openapi::api::core::v1::Secret;
use kube::Client;
use kube::api::Api;
use scopegate_core::config::SidecarConfig;
use scopegate_core::upstream::UpstreamKind;
use scopegate_crds::v1alpha1::{AuthPolicy, OAuthClient};
use scopegate_e2e::rendered::client_registry;
use scopegate_e2e::setup::with_shared_operator;
use scopegate_e2e::{apply_yaml, condition, config_map_text, eventually, secret_text};

const POLICY: &str = r#"
apiVersion: scopegate.dev/v1alpha1
kind: AuthPolicy
metadata: {name: auth}
spec:
  selector: {matchLabels: {app: auth}}
  issuer:
    self:
      url: https://auth.NAMESPACE.svc
      publicUrl: https://login.shop.example
      service: {name: auth, port: 443}
      scopes: {read: Read}
      loginUrl: https://shop.example/login
      upstreams:
        - name: google
          displayName: Google
          clientId: 1234.apps.googleusercontent.com
          clientSecretRef: {name: google-oauth, key: client_secret}
          oidc: {issuer: "https://accounts.google.com", issuerAliases: [accounts.google.com]}
        - name: corp
          clientId: scopegate
          clientSecretRef: {name: corp-oauth, key: secret}
          oidc: {issuer: "https://sso.corp.example"}
  upstream: {port: 8080}
"#;

const CLIENT: &str = r#"
apiVersion: scopegate.dev/v1alpha1
kind: OAuthClient
metadata: {name: web}
spec:
  issuerRef: {name: auth}
  grantTypes: [authorization_code]
  scopes: [read]
  redirectUris: ["https://shop.example/cb"]
  upstreams: [google, local]
"#;

fn user_secret(name: &str, key: &str, value: &str) -> String {
    format!(
        "apiVersion: v1\nkind: Secret\nmetadata: {{name: {name}}}\nstringData: {{{key}: {value}}}\n"
    )
}

/// The UpstreamsReady condition: status, reason, message.
async fn upstreams_ready(client: &Client, ns: &str) -> anyhow::Result<(String, String, String)> {
    let policy = Api::<AuthPolicy>::namespaced(client.clone(), ns)
        .get("auth")
        .await?;
    let status = policy.status.context("no status")?;
    let c = condition(&status.conditions, "UpstreamsReady").context("no UpstreamsReady")?;
    Ok((c.status.clone(), c.reason.clone(), c.message.clone()))
}

async fn upstream_statuses(
    client: &Client,
    ns: &str,
) -> anyhow::Result<Vec<(String, String, bool, Option<String>)>> {
    let policy = Api::<AuthPolicy>::namespaced(client.clone(), ns)
        .get("auth")
        .await?;
    Ok(policy
        .status
        .map(|s| s.upstreams)
        .unwrap_or_default()
        .into_iter()
        .map(|u| (u.name, u.callback_url, u.ready, u.reason))
        .collect())
}

#[tokio::test]
async fn upstreams_render_secrets_copy_and_status_names_callback_urls() {
    let (client, ns) = with_shared_operator("upstreams").await;
    let n = ns.name.as_str();
    apply_yaml::<Secret>(
        &client,
        n,
        &user_secret("google-oauth", "client_secret", "g-first"),
    )
    .await
    .expect("google secret");
    // The issuer URL names this namespace's own Service: another namespace's would be that
    // namespace's audience, and the config (with no audience left) refused.
    apply_yaml::<AuthPolicy>(&client, n, &POLICY.replace("NAMESPACE", n))
        .await
        .expect("policy");
    apply_yaml::<OAuthClient>(&client, n, CLIENT)
        .await
        .expect("client");

    // Status: both callback URLs on the public host; corp waits for its Secret, and the
    // condition says so.
    let (status, reason, message) = eventually("UpstreamsReady False", || async {
        let ready = upstreams_ready(&client, n).await?;
        ensure!(ready.0 == "False", "{ready:?}");
        Ok(ready)
    })
    .await
    .expect("UpstreamsReady");
    assert_eq!(
        (status.as_str(), reason.as_str()),
        ("False", "SecretMissing")
    );
    assert!(
        message.starts_with("corp: SecretMissing: key secret of Secret corp-oauth"),
        "{message}"
    );
    let statuses = eventually("upstream status", || async {
        let statuses = upstream_statuses(&client, n).await?;
        ensure!(statuses.len() == 2, "{statuses:?}");
        Ok(statuses)
    })
    .await
    .expect("status lists the upstreams");
    assert_eq!(
        statuses[0].1,
        "https://login.shop.example/oauth2/upstream/google/callback"
    );
    assert!(statuses[0].2, "{statuses:?}");
    assert_eq!(
        statuses[1].1,
        "https://login.shop.example/oauth2/upstream/corp/callback"
    );
    assert!(!statuses[1].2);
    assert!(
        statuses[1]
            .3
            .as_deref()
            .is_some_and(|r| r.starts_with("SecretMissing")),
        "{statuses:?}"
    );

    // The copy holds the secret; the sidecar config names only its file.
    let copied = secret_text(&client, n, "auth-upstreams", "google.client_secret")
        .await
        .expect("read");
    assert_eq!(copied.as_deref(), Some("g-first"));
    let text = config_map_text(&client, n, "auth-sidecar", "config.json")
        .await
        .expect("read")
        .expect("sidecar config");
    assert!(!text.contains("g-first"), "no secret in the config");
    let config = SidecarConfig::from_json(&text).expect("config");
    let issuer = config.issuer.expect("issuer role");
    assert_eq!(
        issuer.public_url.as_deref(),
        Some("https://login.shop.example")
    );
    let google = &issuer.upstreams[0];
    assert_eq!(
        google.client_secret_path,
        "/etc/scopegate/upstreams/google.client_secret"
    );
    assert_eq!(google.callback_url, statuses[0].1);
    let UpstreamKind::Oidc(oidc) = &google.kind else {
        panic!("oidc expected")
    };
    assert_eq!(oidc.issuer_aliases, ["accounts.google.com"]);

    // The client's choices reach the registry.
    let registry = eventually("the client's choices in the registry", || async {
        let registry = client_registry(&client, n, "auth").await?;
        ensure!(!registry.upstream_choices.is_empty(), "not yet");
        Ok(registry)
    })
    .await
    .expect("registry");
    assert_eq!(
        registry
            .upstream_choices
            .values()
            .next()
            .expect("one client"),
        &["google".to_owned(), "local".to_owned()]
    );

    // A rotated secret and a late one roll in without touching the policy.
    apply_yaml::<Secret>(
        &client,
        n,
        &user_secret("google-oauth", "client_secret", "g-second"),
    )
    .await
    .expect("rotate");
    apply_yaml::<Secret>(&client, n, &user_secret("corp-oauth", "secret", "c-first"))
        .await
        .expect("late secret");
    eventually("the rotated and the late secret copied", || async {
        let google = secret_text(&client, n, "auth-upstreams", "google.client_secret").await?;
        let corp = secret_text(&client, n, "auth-upstreams", "corp.client_secret").await?;
        ensure!(
            google.as_deref() == Some("g-second") && corp.as_deref() == Some("c-first"),
            "{google:?} {corp:?}"
        );
        Ok(())
    })
    .await
    .expect("secrets roll in");
    eventually("corp ready", || async {
        let statuses = upstream_statuses(&client, n).await?;
        ensure!(statuses.iter().all(|s| s.2), "{statuses:?}");
        let (status, reason, message) = upstreams_ready(&client, n).await?;
        ensure!(
            status == "True" && reason == "Rendered" && message.contains("google, corp"),
            "UpstreamsReady {status} {reason}: {message}"
        );
        Ok(())
    })
    .await
    .expect("corp becomes ready");

    ns.delete().await.expect("cleanup");
}
