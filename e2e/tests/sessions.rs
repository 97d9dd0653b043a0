//! Browser sessions, the operator's side, on the real control plane: a policy with
//! `sessions` gets its session-keys Secret and a rendered sessions config, the keys rotate on
//! schedule (a successor written ahead of sealing, the old key retiring maxLifetime after it),
//! the webhook mounts the keys and a ServiceAccount token into the sidecar only, and turning
//! sessions off erases the keys. What the client cannot do is named in status. The attacker
//! is a tenant of another namespace who names our client, registers a client of its own with
//! our issuer, and brings a pod that mounts a session-keys volume of its own making.

use anyhow::{Context as _, ensure};
use k8s_openapi::api::core::v1::{Pod, Secret, ServiceAccount};
use kube::api::{Api, PostParams};
use kube::{Client, ResourceExt};
use scopegate_core::session::{SESSION_KEYS_FILE, SessionKeys};
use scopegate_crds::v1alpha1::{AuthPolicy, OAuthClient};
use scopegate_e2e::manifests::issuer;
use scopegate_e2e::setup::injection_labels;
use scopegate_e2e::{ControlPlane, TestNamespace, apply_yaml, config_map_text, eventually};

const SIDECAR: &str = "scopegate-sidecar";
const REDIRECT: &str = "https://web.example.com/.scopegate/callback";

/// OAuthClient `web` of issuer `issuer_ref` (the inside of a flow map) with `auth` (how it
/// authenticates, as spec lines) and the redirect URIs `redirects`.
fn web_client(n: &str, issuer_ref: &str, auth: &str, redirects: &str) -> String {
    format!(
        r#"
apiVersion: scopegate.dev/v1alpha1
kind: OAuthClient
metadata: {{name: web}}
spec:
  issuerRef: {{{issuer_ref}}}
  grantTypes: [authorization_code, refresh_token]
  scopes: [read]
  defaultScopes: [read]
  audiences: [https://web.{n}.svc]
  redirectUris: [{redirects}]
{auth}
"#
    )
}

/// AuthPolicy `web` of namespace `n` trusting `issuer` (the inside of a flow map), with
/// `sessions` (spec lines, indented) when given.
fn web_policy(n: &str, issuer: &str, sessions: &str) -> String {
    format!(
        r#"
apiVersion: scopegate.dev/v1alpha1
kind: AuthPolicy
metadata: {{name: web}}
spec:
  selector: {{matchLabels: {{app: web}}}}
  issuer: {{{issuer}}}
  audiences: [https://web.{n}.svc]
  upstream: {{port: 8080}}
{sessions}
"#
    )
}

/// The sessions of the tests: the account pages, a one-minute rotation, two-minute sessions.
fn sessions() -> String {
    format!(
        "  sessions:\n    clientRef: {{name: web}}\n    redirectUri: {REDIRECT}\n    paths: [/account/**]\n    keyRotation: 1m\n    maxLifetime: 2m\n"
    )
}

fn pod(name: &str, extra_spec: &str) -> Pod {
    serde_yaml_ng::from_str(&format!(
        "metadata: {{name: {name}, labels: {{app: web}}}}\nspec:\n  serviceAccountName: web\n  containers:\n    - {{name: app, image: example/app, ports: [{{containerPort: 8080}}]}}\n{extra_spec}"
    ))
    .expect("pod YAML")
}

async fn service_account(client: &Client, n: &str) {
    let account: ServiceAccount =
        serde_json::from_value(serde_json::json!({"metadata": {"name": "web"}}))
            .expect("a ServiceAccount");
    Api::<ServiceAccount>::namespaced(client.clone(), n)
        .create(&PostParams::default(), &account)
        .await
        .expect("ServiceAccount web");
}

/// The session keys of policy `web`, with the Secret (None while it does not exist).
/// The `auth` issuer, the OAuthClient `web` (authenticating as `client_auth`: a
/// `serviceAccounts` line, or nothing for a secret) and the policy `web` with sessions, in
/// namespace `n` with its ServiceAccount `web`.
async fn apply_web(client: &Client, n: &str, client_auth: &str) {
    service_account(client, n).await;
    let auth = issuer(n, "auth").with("loginUrl: https://web.example.com/login");
    apply_yaml::<AuthPolicy>(client, n, &auth.yaml())
        .await
        .expect("the issuer applies");
    apply_yaml::<OAuthClient>(
        client,
        n,
        &web_client(n, "name: auth", client_auth, REDIRECT),
    )
    .await
    .expect("the client applies");
    apply_yaml::<AuthPolicy>(
        client,
        n,
        &web_policy(n, "policyRef: {name: auth}", &sessions()),
    )
    .await
    .expect("the policy applies");
}

/// The `serviceAccounts` line of a client that logs browsers in with the pods' identity.
const SERVICE_ACCOUNT: &str = "  serviceAccounts: [web]";

async fn session_keys(client: &Client, n: &str) -> anyhow::Result<Option<(Secret, SessionKeys)>> {
    let Some(secret) = Api::<Secret>::namespaced(client.clone(), n)
        .get_opt("web-session-keys")
        .await?
    else {
        return Ok(None);
    };
    let bytes = (secret.data.as_ref())
        .and_then(|d| d.get(SESSION_KEYS_FILE))
        .context("no session-keys document")?;
    let keys = serde_json::from_slice(&bytes.0)?;
    Ok(Some((secret, keys)))
}

/// The rendered sidecar config of policy `web`, as JSON.
async fn config(client: &Client, n: &str) -> anyhow::Result<serde_json::Value> {
    let text = config_map_text(client, n, "web-sidecar", "config.json")
        .await?
        .context("no sidecar config yet")?;
    Ok(serde_json::from_str(&text)?)
}

/// The message of a condition of policy `web` with reason `reason` or saying what it is about
/// (Degraded lists every problem, under the first one's reason).
async fn condition_naming(client: &Client, n: &str, reason: &str) -> anyhow::Result<String> {
    let policy = Api::<AuthPolicy>::namespaced(client.clone(), n)
        .get("web")
        .await?;
    let status = policy.status.context("no status")?;
    let found = (status.conditions.iter())
        .find(|c| c.reason == reason || c.message.contains("spec.sessions.clientRef"))
        .with_context(|| format!("no condition names {reason}: {:?}", status.conditions))?;
    Ok(found.message.clone())
}

/// The named mounts of the injected sidecar and of the app container.
fn mounts(pod: &Pod) -> (Vec<(String, String)>, Vec<String>) {
    let spec = pod.spec.as_ref().expect("spec");
    let all = || {
        spec.init_containers
            .iter()
            .flatten()
            .chain(&spec.containers)
    };
    let of = |c: &k8s_openapi::api::core::v1::Container| -> Vec<(String, String)> {
        (c.volume_mounts.iter().flatten())
            .map(|m| (m.name.clone(), m.mount_path.clone()))
            .collect()
    };
    let sidecar = all()
        .find(|c| c.name == SIDECAR)
        .map(of)
        .unwrap_or_default();
    let app = all()
        .find(|c| c.name == "app")
        .map(of)
        .unwrap_or_default()
        .into_iter()
        .map(|(name, _)| name)
        .collect();
    (sidecar, app)
}

#[tokio::test]
async fn sessions_get_rotating_keys_a_config_and_a_sidecar_only_mount() {
    let plane = ControlPlane::from_env().expect("control plane");
    let client = plane.client().await.expect("client");
    let ns = TestNamespace::for_injection(&client, "sessions").await;
    let n = ns.name.as_str();
    apply_web(&client, n, SERVICE_ACCOUNT).await;

    // The keys: one key, sealing at once, in a Secret the policy owns.
    let (secret, first) = eventually("the session keys", || async {
        session_keys(&client, n).await?.context("no Secret yet")
    })
    .await
    .unwrap();
    assert_eq!(secret.owner_references()[0].name, "web");
    assert_eq!(first.keys.len(), 1, "{first:?}");
    let k1 = first.keys[0].clone();
    assert!(
        first
            .sealing_key(k1.seals_from())
            .is_some_and(|k| k.id == k1.id)
    );

    // The config: the sessions as the sidecar runs them.
    let sessions = eventually("the sessions config", || async {
        let config = config(&client, n).await?;
        let sessions = config["sessions"].clone();
        ensure!(sessions.is_object(), "no sessions yet: {config}");
        ensure!(
            config["apiVersion"] == scopegate_core::config::CONFIG_API_VERSION_V2,
            "{}",
            config["apiVersion"]
        );
        Ok(sessions)
    })
    .await
    .unwrap();
    assert_eq!(sessions["clientId"], format!("{n}.web"));
    assert_eq!(sessions["issuer"], format!("https://auth.{n}.svc"));
    assert_eq!(
        sessions["authorizationEndpoint"],
        format!("https://auth.{n}.svc/oauth2/authorize")
    );
    assert_eq!(
        sessions["tokenEndpoint"],
        format!("https://auth.{n}.svc.cluster.local/oauth2/token")
    );
    assert_eq!(sessions["redirectUri"], REDIRECT);
    assert_eq!(sessions["scopes"], serde_json::json!(["read"]));
    assert_eq!(sessions["audience"], format!("https://web.{n}.svc"));
    assert_eq!(sessions["maxLifetimeSecs"], 120);
    assert_eq!(
        sessions["keysPath"],
        "/etc/scopegate/session-keys/session-keys.json"
    );
    // The status is written after the config it describes.
    let policies = Api::<AuthPolicy>::namespaced(client.clone(), n);
    let keys_secret = eventually("status.rendered naming the session keys", || async {
        let status = policies.get("web").await?.status.context("no status")?;
        let rendered = status.rendered.context("nothing rendered in status yet")?;
        rendered
            .session_keys
            .context("no session keys in status yet")
    })
    .await
    .unwrap();
    assert_eq!(keys_secret, "web-session-keys");

    // The webhook: the keys and a token for the issuer, in the sidecar only.
    let created = eventually("the pod admitted", || async {
        Ok(Api::<Pod>::namespaced(client.clone(), n)
            .create(&PostParams::default(), &pod("web-0", ""))
            .await?)
    })
    .await
    .unwrap();
    let (sidecar, app) = mounts(&created);
    assert!(
        sidecar.contains(&(
            "scopegate-session-keys".to_owned(),
            "/etc/scopegate/session-keys".to_owned()
        )),
        "{sidecar:?}"
    );
    assert!(
        sidecar
            .iter()
            .any(|(name, _)| name == "scopegate-issuer-token")
    );
    assert!(
        !app.iter()
            .any(|m| m == "scopegate-session-keys" || m == "scopegate-issuer-token"),
        "the app mounts {app:?}"
    );
    let volumes = created.spec.clone().unwrap().volumes.unwrap_or_default();
    let keys_volume = volumes
        .iter()
        .find(|v| v.name == "scopegate-session-keys")
        .unwrap();
    assert_eq!(
        keys_volume.secret.as_ref().unwrap().secret_name.as_deref(),
        Some("web-session-keys")
    );
    let token = volumes
        .iter()
        .find(|v| v.name == "scopegate-issuer-token")
        .unwrap();
    let projection = token.projected.clone().unwrap().sources.unwrap()[0]
        .service_account_token
        .clone()
        .unwrap();
    assert_eq!(projection.path, "session-token");
    assert_eq!(projection.audience, Some(format!("https://auth.{n}.svc")));

    // The rotation: half a minute before k1's minute is over, k2 is written; it seals once
    // that minute is over, and k1 opens the cookies it sealed for maxLifetime after that.
    let rotated = eventually_long("a second key", || async {
        let (_, keys) = session_keys(&client, n).await?.context("no Secret")?;
        ensure!(keys.keys.len() == 2, "{} keys", keys.keys.len());
        Ok(keys)
    })
    .await
    .unwrap();
    let (old, new) = (&rotated.keys[0], &rotated.keys[1]);
    assert_eq!(old.id, k1.id);
    assert_eq!(old.secret, k1.secret, "the old key is kept as it was");
    assert!(new.seals_from() >= k1.seals_from() + 60, "{rotated:?}");
    assert!(
        new.seals_from() >= new.created_at + 30,
        "written ahead: {rotated:?}"
    );
    assert_eq!(old.retire_at, Some(new.seals_from() + 120), "{rotated:?}");
    assert!(
        rotated
            .sealing_key(new.created_at)
            .is_some_and(|k| k.id == k1.id)
    );
    assert!(rotated.opening_key(&new.id, new.created_at).is_some());
    assert!(
        rotated
            .sealing_key(new.seals_from())
            .is_some_and(|k| k.id == new.id)
    );

    // Sessions off: the keys are erased (the Secret goes with the policy), and the config's
    // sessions go.
    apply_yaml::<AuthPolicy>(&client, n, &web_policy(n, "policyRef: {name: auth}", ""))
        .await
        .unwrap();
    eventually("the session keys erased", || async {
        let (_, keys) = session_keys(&client, n).await?.context("no Secret")?;
        ensure!(keys.keys.is_empty(), "{} keys left", keys.keys.len());
        let config = config(&client, n).await?;
        ensure!(config.get("sessions").is_none(), "{config}");
        Ok(())
    })
    .await
    .unwrap();
    ns.delete().await.unwrap();
}

#[tokio::test]
async fn a_client_that_cannot_log_browsers_in_is_named_in_status() {
    let plane = ControlPlane::from_env().expect("control plane");
    let client = plane.client().await.expect("client");
    let ns = TestNamespace::for_injection(&client, "sessions-refused").await;
    let n = ns.name.as_str();
    // A client with a secret: no secret is mounted into pods.
    apply_web(&client, n, "").await;
    let message = eventually("SessionsRefused for the secret", || async {
        let message = condition_naming(&client, n, "SessionsRefused").await?;
        ensure!(message.contains("authenticates with a secret"), "{message}");
        Ok(message)
    })
    .await
    .unwrap();
    assert!(message.contains("spec.sessions.clientRef web"), "{message}");
    // The keys exist (they do not depend on the client); the config has no sessions.
    eventually("the keys, and a config without sessions", || async {
        ensure!(session_keys(&client, n).await?.is_some(), "no keys");
        let config = config(&client, n).await?;
        ensure!(config.get("sessions").is_none(), "{config}");
        Ok(())
    })
    .await
    .unwrap();
    // The ServiceAccount, but the redirect URI of another app: the client's change
    // re-renders the policy, which names the missing URI.
    let sa = SERVICE_ACCOUNT;
    let elsewhere = "https://other.example.com/.scopegate/callback";
    apply_yaml::<OAuthClient>(&client, n, &web_client(n, "name: auth", sa, elsewhere))
        .await
        .unwrap();
    eventually("SessionsRefused for the redirect URI", || async {
        let message = condition_naming(&client, n, "SessionsRefused").await?;
        ensure!(
            message.contains(&format!("redirectUris do not list {REDIRECT}")),
            "{message}"
        );
        let config = config(&client, n).await?;
        ensure!(config.get("sessions").is_none(), "{config}");
        Ok(())
    })
    .await
    .unwrap();
    // Fixed: the sessions render and the refusal goes.
    apply_yaml::<OAuthClient>(&client, n, &web_client(n, "name: auth", sa, REDIRECT))
        .await
        .unwrap();
    eventually("the sessions rendered", || async {
        let config = config(&client, n).await?;
        ensure!(config["sessions"].is_object(), "{config}");
        ensure!(
            condition_naming(&client, n, "SessionsRefused")
                .await
                .is_err(),
            "still refused"
        );
        Ok(())
    })
    .await
    .unwrap();
    ns.delete().await.unwrap();
}

#[tokio::test]
async fn a_tenant_of_another_namespace_gets_neither_our_client_nor_our_keys() {
    let plane = ControlPlane::from_env().expect("control plane");
    let client = plane.client().await.expect("client");
    let ours = TestNamespace::for_injection(&client, "sessions-victim").await;
    let o = ours.name.as_str();
    apply_web(&client, o, SERVICE_ACCOUNT).await;
    let (_, our_keys) = eventually("our session keys", || async {
        session_keys(&client, o).await?.context("no Secret yet")
    })
    .await
    .unwrap();

    let evil = TestNamespace::create_labelled(&client, "evil-sessions", injection_labels()).await;
    let e = evil.name.as_str();
    service_account(&client, e).await;
    // A policy of the same name naming our client: clientRef is namespace-local.
    let external = r#"external: {issuer: "https://idp.example", jwksUri: "https://idp.example/jwks", algorithms: [ES256]}"#;
    apply_yaml::<AuthPolicy>(&client, e, &web_policy(e, external, &sessions()))
        .await
        .unwrap();
    eventually("SessionsRefused: no such client here", || async {
        let message = condition_naming(&client, e, "SessionsRefused").await?;
        ensure!(
            message.contains("no OAuthClient of that name in this namespace"),
            "{message}"
        );
        Ok(())
    })
    .await
    .unwrap();
    // A client of its own registered with our issuer, which does not admit its namespace.
    let to_ours = format!("name: auth, namespace: {o}");
    apply_yaml::<OAuthClient>(
        &client,
        e,
        &web_client(e, &to_ours, SERVICE_ACCOUNT, REDIRECT),
    )
    .await
    .unwrap();
    eventually(
        "SessionsRefused: our issuer does not register it",
        || async {
            let message = condition_naming(&client, e, "SessionsRefused").await?;
            ensure!(
                message.contains("its issuer does not register it"),
                "{message}"
            );
            ensure!(
                message.contains(&format!("does not accept clients from namespace {e}")),
                "{message}"
            );
            let config = config(&client, e).await?;
            ensure!(config.get("sessions").is_none(), "{config}");
            Ok(())
        },
    )
    .await
    .unwrap();
    // Its policy's keys are its own: not one of ours.
    let (_, their_keys) = eventually("their session keys", || async {
        session_keys(&client, e).await?.context("no Secret yet")
    })
    .await
    .unwrap();
    for key in &their_keys.keys {
        assert!(
            !our_keys
                .keys
                .iter()
                .any(|k| k.id == key.id || k.secret == key.secret),
            "a key of ours in their Secret"
        );
    }
    // A pod that brings a session-keys volume of its own making is refused...
    let pods: Api<Pod> = Api::namespaced(client.clone(), e);
    let borrowing = pod(
        "thief",
        "  volumes:\n    - {name: scopegate-session-keys, secret: {secretName: web-session-keys}}\n",
    );
    let refused = eventually("the borrowing pod refused", || async {
        match pods.create(&PostParams::default(), &borrowing).await {
            Err(kube::Error::Api(status)) if status.code == 403 => Ok(status.message),
            other => anyhow::bail!("not refused by the webhook: {other:?}"),
        }
    })
    .await
    .unwrap();
    assert!(refused.contains("scopegate-session-keys"), "{refused}");
    // ...and an injected pod of theirs mounts their own namespace's Secret: a pod names
    // Secrets of its own namespace only.
    let theirs = eventually("their pod admitted", || async {
        Ok(pods
            .create(&PostParams::default(), &pod("web-0", ""))
            .await?)
    })
    .await
    .unwrap();
    assert_eq!(theirs.namespace().as_deref(), Some(e));
    let (sidecar, app) = mounts(&theirs);
    assert!(
        sidecar
            .iter()
            .any(|(name, _)| name == "scopegate-session-keys")
    );
    assert!(
        !app.iter().any(|m| m == "scopegate-session-keys"),
        "{app:?}"
    );
    // No token for our issuer either: its client does not resolve to a registered one.
    let volumes = theirs.spec.unwrap().volumes.unwrap_or_default();
    assert!(
        !volumes.iter().any(|v| v.name == "scopegate-issuer-token"),
        "{volumes:?}"
    );
    evil.delete().await.unwrap();
    ours.delete().await.unwrap();
}

/// The sessions section of policy `web`'s config; None while the config or its section is
/// missing.
async fn sessions_section(client: &Client, n: &str) -> anyhow::Result<Option<serde_json::Value>> {
    let Some(text) = config_map_text(client, n, "web-sidecar", "config.json").await? else {
        return Ok(None);
    };
    let config: serde_json::Value = serde_json::from_str(&text)?;
    Ok(config.get("sessions").cloned())
}

/// Waits until policy `web` of `n` has no sessions section and a SessionsRefused condition
/// saying `why`.
async fn refused_for(client: &Client, n: &str, why: &str) -> anyhow::Result<()> {
    eventually(&format!("SessionsRefused: {why}"), || async {
        let message = condition_naming(client, n, "SessionsRefused").await?;
        ensure!(message.contains(why), "{message}");
        let section = sessions_section(client, n).await?;
        ensure!(section.is_none(), "still rendered: {section:?}");
        Ok(())
    })
    .await
}

/// Waits until policy `web` of `n` renders its sessions and no condition refuses them.
async fn rendered(client: &Client, n: &str) -> anyhow::Result<serde_json::Value> {
    eventually("the sessions rendered", || async {
        let section = sessions_section(client, n).await?.context("no sessions")?;
        ensure!(
            condition_naming(client, n, "SessionsRefused")
                .await
                .is_err(),
            "still refused"
        );
        Ok(section)
    })
    .await
}

/// Everything of the issuer's that the sessions render reads (whether it exists, issues and
/// registers the client, its url) reaches the policy within `eventually`'s minute, not at the
/// hourly resync: the issuer created after the policy, declaring the client's scope, moving,
/// withdrawing the scope, deleted. A tenant's issuer-looking policy and its client of the same name, changing
/// meanwhile, wake only their own policy, never into ours.
#[tokio::test]
async fn sessions_follow_their_issuer_and_never_a_tenants() {
    let plane = ControlPlane::from_env().expect("control plane");
    let client = plane.client().await.expect("client");
    let ours = TestNamespace::for_injection(&client, "sessions-follow").await;
    let o = ours.name.as_str();
    service_account(&client, o).await;
    let sa = SERVICE_ACCOUNT;
    apply_yaml::<OAuthClient>(&client, o, &web_client(o, "name: auth", sa, REDIRECT))
        .await
        .unwrap();
    let web = web_policy(o, "policyRef: {name: auth}", &sessions());
    apply_yaml::<AuthPolicy>(&client, o, &web).await.unwrap();
    refused_for(&client, o, "its issuerRef names no issuing AuthPolicy")
        .await
        .unwrap();

    // The issuer comes after the policy, without the client's scope: not registered.
    let login = "loginUrl: https://web.example.com/login";
    let without_read = issuer(o, "auth").with(login).scopes("other: Other");
    apply_yaml::<AuthPolicy>(&client, o, &without_read.yaml())
        .await
        .unwrap();
    let unregistered = "its issuer does not register it: scope read is not declared by the issuer";
    refused_for(&client, o, unregistered).await.unwrap();
    // It declares the scope: the sessions render.
    let with_read = issuer(o, "auth").with(login);
    apply_yaml::<AuthPolicy>(&client, o, &with_read.yaml())
        .await
        .unwrap();
    let section = rendered(&client, o).await.unwrap();
    assert_eq!(section["clientId"], format!("{o}.web"));
    assert_eq!(section["issuer"], format!("https://auth.{o}.svc"));
    // Its url changes: the sessions' endpoints and token audience follow.
    let url = format!("url: https://auth.{o}.svc\n");
    let moved = with_read
        .yaml()
        .replace(&url, &format!("url: https://auth.{o}.svc/v2\n"));
    assert_ne!(moved, with_read.yaml());
    apply_yaml::<AuthPolicy>(&client, o, &moved).await.unwrap();
    eventually("the sessions at the new url", || async {
        let section = sessions_section(&client, o).await?.context("no sessions")?;
        ensure!(
            section["issuer"] == format!("https://auth.{o}.svc/v2"),
            "{section}"
        );
        ensure!(
            section["tokenAudience"] == format!("https://auth.{o}.svc/v2"),
            "{section}"
        );
        Ok(())
    })
    .await
    .unwrap();
    apply_yaml::<AuthPolicy>(&client, o, &with_read.yaml())
        .await
        .unwrap();
    let section = eventually("the sessions back at the url", || async {
        let section = sessions_section(&client, o).await?.context("no sessions")?;
        ensure!(
            section["issuer"] == format!("https://auth.{o}.svc"),
            "{section}"
        );
        Ok(section)
    })
    .await
    .unwrap();

    // The tenant: an issuer-looking policy "auth" of its own, a client "web" of it, a policy
    // "web" with sessions; then it withdraws its scope. Its own policy follows its issuer...
    let evil = TestNamespace::create_labelled(&client, "evil-follow", injection_labels()).await;
    let e = evil.name.as_str();
    service_account(&client, e).await;
    apply_yaml::<AuthPolicy>(&client, e, &issuer(e, "auth").with(login).yaml())
        .await
        .unwrap();
    apply_yaml::<OAuthClient>(&client, e, &web_client(e, "name: auth", sa, REDIRECT))
        .await
        .unwrap();
    let theirs = web_policy(e, "policyRef: {name: auth}", &sessions());
    apply_yaml::<AuthPolicy>(&client, e, &theirs).await.unwrap();
    let their_section = rendered(&client, e).await.unwrap();
    assert_eq!(their_section["clientId"], format!("{e}.web"));
    let their_without = issuer(e, "auth").with(login).scopes("other: Other");
    apply_yaml::<AuthPolicy>(&client, e, &their_without.yaml())
        .await
        .unwrap();
    refused_for(&client, e, unregistered).await.unwrap();
    // ...and ours still renders our client of our issuer, unrefused.
    assert_eq!(sessions_section(&client, o).await.unwrap(), Some(section));
    assert!(
        condition_naming(&client, o, "SessionsRefused")
            .await
            .is_err()
    );
    evil.delete().await.unwrap();

    // Our issuer withdraws the scope: the section goes and status says why.
    apply_yaml::<AuthPolicy>(&client, o, &without_read.yaml())
        .await
        .unwrap();
    refused_for(&client, o, unregistered).await.unwrap();
    apply_yaml::<AuthPolicy>(&client, o, &with_read.yaml())
        .await
        .unwrap();
    rendered(&client, o).await.unwrap();
    // Deleted: the section goes.
    Api::<AuthPolicy>::namespaced(client.clone(), o)
        .delete("auth", &Default::default())
        .await
        .unwrap();
    refused_for(&client, o, "its issuerRef names no issuing AuthPolicy")
        .await
        .unwrap();
    ours.delete().await.unwrap();
}

#[tokio::test]
async fn what_can_never_work_is_refused_at_apply_in_words() {
    let plane = ControlPlane::from_env().expect("control plane");
    let client = plane.client().await.expect("client");
    let ns = TestNamespace::create(&client, "sessions-cel")
        .await
        .unwrap();
    let n = ns.name.as_str();
    let api: Api<AuthPolicy> = Api::namespaced(client.clone(), n);
    let dry_run = PostParams {
        dry_run: true,
        ..PostParams::default()
    };
    let base = sessions();
    let cases = [
        (
            base.replace(REDIRECT, "https://web.example.com/callback"),
            "the path exactly /.scopegate/callback",
        ),
        (
            base.replace(REDIRECT, "http://web.example.com/.scopegate/callback"),
            "redirectUri must be https://",
        ),
        (
            base.replace(
                REDIRECT,
                "https://web.example.com/.scopegate/callback?next=/x",
            ),
            "no query",
        ),
        (
            format!("{base}    afterLogout: //evil.example\n"),
            "afterLogout",
        ),
        (
            format!("{base}    afterLogout: '/\\evil.example'\n"),
            "afterLogout",
        ),
        (
            format!("{base}    audience: https://bank.other.svc\n"),
            "sessions.audience must be one of spec.audiences",
        ),
        (
            base.replace("keyRotation: 1m", "keyRotation: 30s"),
            "keyRotation must be at least 1m",
        ),
        (
            base.replace("maxLifetime: 2m", "maxLifetime: 17m"),
            "maxLifetime may be at most 16 times keyRotation",
        ),
    ];
    let mut failures = Vec::new();
    for (sessions, expected) in &cases {
        let yaml = web_policy(n, "policyRef: {name: auth}", sessions);
        let object: AuthPolicy = serde_yaml_ng::from_str(&yaml).unwrap();
        match api.create(&dry_run, &object).await {
            Err(kube::Error::Api(status))
                if status.code == 422 && status.message.contains(expected) => {}
            other => failures.push(format!("{expected}: {other:?}")),
        }
    }
    // The base itself, and a longer maxLifetime at 16 rotations, are accepted.
    for sessions in [
        base.clone(),
        base.replace("maxLifetime: 2m", "maxLifetime: 16m"),
    ] {
        let object: AuthPolicy =
            serde_yaml_ng::from_str(&web_policy(n, "policyRef: {name: auth}", &sessions)).unwrap();
        if let Err(e) = api.create(&dry_run, &object).await {
            failures.push(format!("accepted sessions refused: {e}"));
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
    ns.delete().await.unwrap();
}

/// [`eventually`] for what takes longer than its minute: a key rotation is due 30 s after the
/// first key, and the reconcile may be late.
async fn eventually_long<T, F, Fut>(what: &str, mut attempt: F) -> anyhow::Result<T>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = anyhow::Result<T>>,
{
    let mut last = None;
    for _ in 0..3 {
        match eventually(what, &mut attempt).await {
            Ok(value) => return Ok(value),
            Err(err) => last = Some(err),
        }
    }
    Err(last.expect("three attempts"))
}
