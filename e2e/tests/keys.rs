//! Signing keys under faults, against the shared operator: a deleted signing-keys Secret, a
//! garbage key in it, and a document that does not parse. Nothing a verifier trusts may
//! vanish, nothing unchecked may be published, the issuer never signs with a key the verifiers
//! lack, and the rest of the policy keeps reconciling.

use std::collections::{BTreeMap, BTreeSet};

use anyhow::{Context as _, ensure};
use k8s_openapi::ByteString;
use k8s_openapi::api::core::v1::Secret;
use kube::Client;
use kube::api::{Api, DeleteParams, Patch, PatchParams};
use scopegate_core::config::{KeySource, SidecarConfig};
use scopegate_core::jwk::Jwks;
use scopegate_core::keys::{KeyState, SigningKeys};
use scopegate_crds::v1alpha1::AuthPolicy;
use scopegate_e2e::{
    ControlPlane, TestNamespace, apply_yaml, condition, config_map_text, eventually, secret_text,
};

async fn setup(test: &str) -> (Client, TestNamespace) {
    let plane = ControlPlane::from_env().expect("control plane");
    let client = plane.client().await.expect("client");
    let pid = std::env::var("E2E_DIR")
        .ok()
        .and_then(|d| std::fs::read_to_string(format!("{d}/operator.pid")).ok())
        .expect("the test set-up starts the operator (e2e/scripts/operator-up.sh)");
    assert!(
        std::path::Path::new(&format!("/proc/{}", pid.trim())).exists(),
        "the shared operator is not running"
    );
    let ns = TestNamespace::create(&client, test)
        .await
        .expect("namespace");
    (client, ns)
}

/// An issuer whose URL names its own Service in `ns` (a URL naming another namespace's
/// Service would be that namespace's audience, and the policy not Ready).
fn issuer_yaml(ns: &str, rules: &str) -> String {
    format!(
        r#"
apiVersion: scopegate.dev/v1alpha1
kind: AuthPolicy
metadata: {{name: auth}}
spec:
  selector: {{matchLabels: {{app: auth}}}}
  issuer:
    self:
      url: https://auth.{ns}.svc
      service: {{name: auth, port: 443}}
      signing: {{algorithm: ES256}}
      propagation: 3s
      tokens: {{accessTokenTtl: 60s, leeway: 5s}}
      scopes: {{read: Read}}
  upstream: {{port: 8080}}
  rules:
{rules}
"#
    )
}

const RULES: &str = r#"    - {paths: ["/items/**"], require: [read]}"#;

fn verifier_yaml(issuer_ns: &str, ns: &str) -> String {
    format!(
        r#"
apiVersion: scopegate.dev/v1alpha1
kind: AuthPolicy
metadata: {{name: orders}}
spec:
  selector: {{matchLabels: {{app: orders}}}}
  issuer: {{policyRef: {{name: auth, namespace: {issuer_ns}}}}}
  audiences: [https://orders.{ns}.svc]
  upstream: {{port: 8080}}
"#
    )
}

async fn policy(client: &Client, ns: &str, name: &str) -> anyhow::Result<AuthPolicy> {
    Ok(Api::<AuthPolicy>::namespaced(client.clone(), ns)
        .get(name)
        .await?)
}

/// The Ready condition's (status, reason, message) once it describes the current generation.
async fn ready(client: &Client, ns: &str, name: &str) -> anyhow::Result<(String, String, String)> {
    scopegate_e2e::ensure_selected_pod(client, ns, name).await?;
    let p = policy(client, ns, name).await?;
    let status = p.status.context("no status")?;
    ensure!(
        status.observed_generation == p.metadata.generation,
        "status is for an older generation"
    );
    let ready = condition(&status.conditions, "Ready").context("no Ready")?;
    Ok((
        ready.status.clone(),
        ready.reason.clone(),
        ready.message.clone(),
    ))
}

async fn wait_ready(client: &Client, ns: &str, name: &str) {
    eventually(&format!("{ns}/{name} Ready"), || async {
        let (status, reason, message) = ready(client, ns, name).await?;
        ensure!(status == "True", "{reason}: {message}");
        Ok(())
    })
    .await
    .expect("Ready");
}

async fn signing_keys(client: &Client, ns: &str) -> anyhow::Result<SigningKeys> {
    let text = secret_text(client, ns, "auth-signing-keys", "keys.json")
        .await?
        .context("no signing-keys Secret")?;
    Ok(serde_json::from_str(&text)?)
}

async fn jwks_kids(client: &Client, ns: &str) -> anyhow::Result<BTreeSet<String>> {
    let text = config_map_text(client, ns, "auth-jwks", "jwks.json")
        .await?
        .context("no JWKS")?;
    let jwks: Jwks = serde_json::from_str(&text)?;
    Ok(jwks.keys.into_iter().filter_map(|k| k.kid).collect())
}

async fn config(client: &Client, ns: &str, policy: &str) -> anyhow::Result<SidecarConfig> {
    let text = config_map_text(client, ns, &format!("{policy}-sidecar"), "config.json")
        .await?
        .context("no sidecar config")?;
    Ok(SidecarConfig::from_json(&text)?)
}

fn trusted_kids(config: &SidecarConfig) -> BTreeSet<String> {
    config
        .verify
        .issuers
        .iter()
        .flat_map(|i| match &i.keys {
            KeySource::Static { jwks } => jwks.keys.iter().filter_map(|k| k.kid.clone()).collect(),
            _ => Vec::new(),
        })
        .collect()
}

async fn warning_reasons(client: &Client, ns: &str) -> anyhow::Result<BTreeSet<String>> {
    let events = Api::<k8s_openapi::api::events::v1::Event>::namespaced(client.clone(), ns)
        .list(&Default::default())
        .await?;
    Ok(events
        .items
        .into_iter()
        .filter(|e| e.type_.as_deref() == Some("Warning"))
        .filter_map(|e| e.reason)
        .collect())
}

async fn write_keys_document(client: &Client, ns: &str, text: &str) {
    let patch = Secret {
        data: Some(BTreeMap::from([(
            "keys.json".to_owned(),
            ByteString(text.as_bytes().to_vec()),
        )])),
        ..Secret::default()
    };
    Api::<Secret>::namespaced(client.clone(), ns)
        .patch(
            "auth-signing-keys",
            &PatchParams::default(),
            &Patch::Merge(&patch),
        )
        .await
        .expect("writing the signing-keys document");
}

fn now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs() as i64)
}

#[tokio::test]
async fn a_deleted_signing_keys_secret_keeps_every_published_key_and_publishes_the_new_one_first() {
    let (client, ns) = setup("lostkeys").await;
    let verifier_ns = TestNamespace::create(&client, "lostkeysv").await.unwrap();
    // The issuer admits the verifier's namespace (a cross-namespace policyRef needs that).
    let issuer = issuer_yaml(&ns.name, RULES).replace(
        "      signing:",
        &format!(
            "      allowedClientNamespaces: [{}]\n      signing:",
            verifier_ns.name
        ),
    );
    apply_yaml::<AuthPolicy>(&client, &ns.name, &issuer)
        .await
        .unwrap();
    wait_ready(&client, &ns.name, "auth").await;
    apply_yaml::<AuthPolicy>(
        &client,
        &verifier_ns.name,
        &verifier_yaml(&ns.name, &verifier_ns.name),
    )
    .await
    .unwrap();
    wait_ready(&client, &verifier_ns.name, "orders").await;

    // A rotation, so that two keys are published when the Secret goes.
    let api: Api<AuthPolicy> = Api::namespaced(client.clone(), &ns.name);
    let rotate = serde_json::json!({"metadata": {"annotations": {"scopegate.dev/rotate": "1"}}});
    api.patch("auth", &PatchParams::default(), &Patch::Merge(&rotate))
        .await
        .unwrap();
    let old: BTreeSet<String> = eventually("the rotation done", || async {
        let p = policy(&client, &ns.name, "auth").await?;
        let status = p.status.context("status")?;
        ensure!(
            status.handled_rotation.as_deref() == Some("1"),
            "not handled"
        );
        let keys = signing_keys(&client, &ns.name).await?;
        let signer = keys.signing_key(now()).context("no signer")?;
        ensure!(
            signer.kid != keys.keys[0].kid,
            "the successor does not sign yet"
        );
        Ok(keys.keys.iter().map(|k| k.kid.clone()).collect())
    })
    .await
    .unwrap();
    assert_eq!(old.len(), 2);

    // A GitOps prune, a hand, a restore: the Secret is gone.
    Api::<Secret>::namespaced(client.clone(), &ns.name)
        .delete("auth-signing-keys", &DeleteParams::default())
        .await
        .unwrap();
    let deleted_at = now();

    // Until the new key signs, watch that nothing a verifier trusts disappears and that the
    // issuer is never given a key the verifier lacks.
    let new_kid = eventually("a new key signing", || async {
        let kids = jwks_kids(&client, &ns.name).await?;
        ensure!(old.is_subset(&kids), "JWKS lost keys: {kids:?}");
        let trusted = trusted_kids(&config(&client, &verifier_ns.name, "orders").await?);
        ensure!(
            old.is_subset(&trusted),
            "the verifier lost keys: {trusted:?}"
        );
        let Ok(keys) = signing_keys(&client, &ns.name).await else {
            anyhow::bail!("no Secret yet");
        };
        let at = now();
        if let Some(signer) = keys.signing_key(at) {
            assert!(
                trusted.contains(&signer.kid),
                "the issuer may sign with {} and the verifier lacks it",
                signer.kid
            );
            if !old.contains(&signer.kid) {
                return Ok(signer.kid.clone());
            }
            panic!("a key whose private half was lost signs: {}", signer.kid);
        }
        anyhow::bail!("nothing signs yet")
    })
    .await
    .unwrap();

    let keys = signing_keys(&client, &ns.name).await.unwrap();
    let kids: BTreeSet<String> = keys.keys.iter().map(|k| k.kid.clone()).collect();
    let mut expected = old.clone();
    expected.insert(new_kid.clone());
    assert_eq!(
        kids, expected,
        "old keys kept, one new key, no replayed rotation"
    );
    let new = keys.keys.iter().find(|k| k.kid == new_kid).unwrap();
    assert!(
        new.published_at >= deleted_at && new.activates_at - new.published_at >= 3,
        "published (observed) {}, signs from {}",
        new.published_at,
        new.activates_at
    );
    for kid in &old {
        let key = keys.keys.iter().find(|k| &k.kid == kid).unwrap();
        assert!(!key.has_private_key(), "{kid} kept public-only");
        assert_eq!(key.state(now()), KeyState::Retiring);
    }
    let status = policy(&client, &ns.name, "auth")
        .await
        .unwrap()
        .status
        .unwrap();
    assert_eq!(status.handled_rotation.as_deref(), Some("1"));
    let degraded = condition(&status.conditions, "Degraded").unwrap();
    assert_eq!(
        (degraded.status.as_str(), degraded.reason.as_str()),
        ("True", "SigningKeysLost"),
        "{}",
        degraded.message
    );
    assert!(status.keys.iter().filter(|k| k.public_only).count() == 2);
    eventually("a Warning event", || async {
        ensure!(
            warning_reasons(&client, &ns.name)
                .await?
                .contains("SigningKeysLost"),
            "no SigningKeysLost event"
        );
        Ok(())
    })
    .await
    .unwrap();
    verifier_ns.delete().await.unwrap();
    ns.delete().await.unwrap();
}

#[tokio::test]
async fn garbage_key_material_is_never_published_and_the_policy_keeps_reconciling() {
    let (client, ns) = setup("garbagekey").await;
    apply_yaml::<AuthPolicy>(&client, &ns.name, &issuer_yaml(&ns.name, RULES))
        .await
        .unwrap();
    wait_ready(&client, &ns.name, "auth").await;
    let good = signing_keys(&client, &ns.name).await.unwrap();
    let good_kid = good.keys[0].kid.clone();

    // Valid JSON, garbage key material: a public point off the curve and a private key that is
    // another key's, scheduled to sign next.
    let mut garbage = good.keys[0].clone();
    garbage.kid = "garbage".into();
    if let Some(jwk) = garbage.public_jwk.as_mut() {
        jwk.kid = Some("garbage".into());
        jwk.y = jwk.x.clone();
    }
    garbage.published_at = now();
    garbage.activates_at = now() + 5;
    garbage.signs_until = now() + 3600;
    garbage.removed_after = now() + 7200;
    let mut tampered = good.clone();
    tampered.keys.push(garbage);
    write_keys_document(
        &client,
        &ns.name,
        &serde_json::to_string(&tampered).unwrap(),
    )
    .await;

    eventually("Ready=False with the key named", || async {
        let (status, reason, message) = ready(&client, &ns.name, "auth").await?;
        ensure!(
            status == "False" && reason == "KeyInvalid",
            "{reason}: {message}"
        );
        ensure!(message.contains("garbage"), "{message}");
        Ok(())
    })
    .await
    .unwrap();
    assert_eq!(
        jwks_kids(&client, &ns.name).await.unwrap(),
        BTreeSet::from([good_kid.clone()]),
        "the garbage key is not published"
    );
    assert_eq!(
        trusted_kids(&config(&client, &ns.name, "auth").await.unwrap()),
        BTreeSet::from([good_kid.clone()])
    );
    assert!(
        signing_keys(&client, &ns.name)
            .await
            .unwrap()
            .keys
            .iter()
            .any(|k| k.kid == "garbage"),
        "kept as it is for a person to look at"
    );
    assert!(
        warning_reasons(&client, &ns.name)
            .await
            .unwrap()
            .contains("KeyInvalid")
    );

    // The rest of the policy keeps reconciling.
    let rules = format!("{RULES}\n    - {{paths: [\"/public/**\"], public: true}}");
    apply_yaml::<AuthPolicy>(&client, &ns.name, &issuer_yaml(&ns.name, &rules))
        .await
        .unwrap();
    eventually("the edit rendered", || async {
        let config = config(&client, &ns.name, "auth").await?;
        ensure!(config.rules.len() == 2, "{} rules", config.rules.len());
        ensure!(
            config.policy.generation == 2,
            "generation {}",
            config.policy.generation
        );
        Ok(())
    })
    .await
    .unwrap();

    // The person removes the bad key: Ready again.
    write_keys_document(&client, &ns.name, &serde_json::to_string(&good).unwrap()).await;
    wait_ready(&client, &ns.name, "auth").await;
    ns.delete().await.unwrap();
}

#[tokio::test]
async fn a_corrupt_signing_keys_document_is_kept_and_reported_while_the_rest_reconciles() {
    let (client, ns) = setup("corruptkeys").await;
    apply_yaml::<AuthPolicy>(&client, &ns.name, &issuer_yaml(&ns.name, RULES))
        .await
        .unwrap();
    wait_ready(&client, &ns.name, "auth").await;
    let published = jwks_kids(&client, &ns.name).await.unwrap();

    let corrupt = r#"{"keys": [{"kid": "x", "publishedAt": "MIGHAgEAMBMGByqGSM49"#;
    write_keys_document(&client, &ns.name, corrupt).await;
    eventually("Ready=False, SigningKeysCorrupt", || async {
        let (status, reason, message) = ready(&client, &ns.name, "auth").await?;
        ensure!(
            status == "False" && reason == "SigningKeysCorrupt",
            "{reason}: {message}"
        );
        ensure!(
            !message.contains("MIGH"),
            "the document is quoted: {message}"
        );
        Ok(())
    })
    .await
    .unwrap();
    assert_eq!(
        secret_text(&client, &ns.name, "auth-signing-keys", "keys.json")
            .await
            .unwrap()
            .as_deref(),
        Some(corrupt),
        "nothing is written over it"
    );
    assert_eq!(jwks_kids(&client, &ns.name).await.unwrap(), published);
    assert!(
        warning_reasons(&client, &ns.name)
            .await
            .unwrap()
            .contains("SigningKeysCorrupt")
    );
    let status = policy(&client, &ns.name, "auth")
        .await
        .unwrap()
        .status
        .unwrap();
    assert_eq!(status.keys.len(), 1, "status keeps the keys it listed");

    // The rest of the policy keeps reconciling, with the published keys.
    let rules = format!("{RULES}\n    - {{paths: [\"/public/**\"], public: true}}");
    apply_yaml::<AuthPolicy>(&client, &ns.name, &issuer_yaml(&ns.name, &rules))
        .await
        .unwrap();
    eventually("the edit rendered with the published keys", || async {
        let config = config(&client, &ns.name, "auth").await?;
        ensure!(
            config.policy.generation == 2,
            "generation {}",
            config.policy.generation
        );
        ensure!(
            trusted_kids(&config) == published,
            "{:?}",
            trusted_kids(&config)
        );
        Ok(())
    })
    .await
    .unwrap();

    // Deleting the Secret, as the condition says: the published key is kept, a new one made.
    Api::<Secret>::namespaced(client.clone(), &ns.name)
        .delete("auth-signing-keys", &DeleteParams::default())
        .await
        .unwrap();
    eventually("recovered", || async {
        let keys = signing_keys(&client, &ns.name).await?;
        ensure!(keys.signing_key(now()).is_some(), "nothing signs yet");
        ensure!(
            published
                .iter()
                .all(|kid| keys.keys.iter().any(|k| &k.kid == kid)),
            "a published key was dropped"
        );
        let p = policy(&client, &ns.name, "auth").await?;
        let status = p.status.context("status")?;
        let degraded = condition(&status.conditions, "Degraded").context("Degraded")?;
        ensure!(degraded.reason == "SigningKeysLost", "{}", degraded.reason);
        Ok(())
    })
    .await
    .unwrap();
    ns.delete().await.unwrap();
}
