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
use scopegate_core::keys::KeyState;
use scopegate_crds::v1alpha1::AuthPolicy;
use scopegate_e2e::manifests::{Issuer, READ_ITEMS, issuer};
use scopegate_e2e::ready::{Ready, policy_ready, wait_policy_ready};
use scopegate_e2e::rendered::{jwks_kids, sidecar_config, signing_keys, trusted_kids};
use scopegate_e2e::setup::{now, with_shared_operator};
use scopegate_e2e::{TestNamespace, apply_yaml, auth_policy, condition, eventually, secret_text};

/// The issuer of these tests, `auth`: ES256 keys published 3s before they sign, 60s tokens.
fn keys_issuer(ns: &str) -> Issuer {
    issuer(ns, "auth")
        .with("signing: {algorithm: ES256}")
        .with("propagation: 3s")
        .with("tokens: {accessTokenTtl: 60s, leeway: 5s}")
}

/// [`READ_ITEMS`] and a public `/public/**`: an edit of the rules.
const READ_ITEMS_AND_PUBLIC: &str = r#"rules:
  - {paths: ["/items/**"], require: [read]}
  - {paths: ["/public/**"], public: true}"#;

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

#[tokio::test]
async fn a_deleted_signing_keys_secret_keeps_every_published_key_and_publishes_the_new_one_first() {
    let (client, ns) = with_shared_operator("lostkeys").await;
    let verifier_ns = TestNamespace::create(&client, "lostkeysv").await.unwrap();
    // The issuer admits the verifier's namespace (a cross-namespace policyRef needs that).
    let issuer = keys_issuer(&ns.name)
        .with(&format!("allowedClientNamespaces: [{}]", verifier_ns.name))
        .spec(READ_ITEMS)
        .yaml();
    apply_yaml::<AuthPolicy>(&client, &ns.name, &issuer)
        .await
        .unwrap();
    wait_policy_ready(&client, &ns.name, "auth")
        .await
        .expect("Ready");
    apply_yaml::<AuthPolicy>(
        &client,
        &verifier_ns.name,
        &verifier_yaml(&ns.name, &verifier_ns.name),
    )
    .await
    .unwrap();
    wait_policy_ready(&client, &verifier_ns.name, "orders")
        .await
        .expect("Ready");

    // A rotation, so that two keys are published when the Secret goes.
    let api: Api<AuthPolicy> = Api::namespaced(client.clone(), &ns.name);
    let rotate = serde_json::json!({"metadata": {"annotations": {"scopegate.dev/rotate": "1"}}});
    api.patch("auth", &PatchParams::default(), &Patch::Merge(&rotate))
        .await
        .unwrap();
    let old: BTreeSet<String> = eventually("the rotation done", || async {
        let p = auth_policy(&client, &ns.name, "auth").await?;
        let status = p.status.context("status")?;
        ensure!(
            status.handled_rotation.as_deref() == Some("1"),
            "not handled"
        );
        let keys = signing_keys(&client, &ns.name, "auth").await?;
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
        let kids = jwks_kids(&client, &ns.name, "auth").await?;
        ensure!(old.is_subset(&kids), "JWKS lost keys: {kids:?}");
        let trusted = trusted_kids(&sidecar_config(&client, &verifier_ns.name, "orders").await?);
        ensure!(
            old.is_subset(&trusted),
            "the verifier lost keys: {trusted:?}"
        );
        let Ok(keys) = signing_keys(&client, &ns.name, "auth").await else {
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

    let keys = signing_keys(&client, &ns.name, "auth").await.unwrap();
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
    let status = auth_policy(&client, &ns.name, "auth")
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
    let (client, ns) = with_shared_operator("garbagekey").await;
    apply_yaml::<AuthPolicy>(
        &client,
        &ns.name,
        &keys_issuer(&ns.name).spec(READ_ITEMS).yaml(),
    )
    .await
    .unwrap();
    wait_policy_ready(&client, &ns.name, "auth")
        .await
        .expect("Ready");
    let good = signing_keys(&client, &ns.name, "auth").await.unwrap();
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
        let Ready {
            status,
            reason,
            message,
        } = policy_ready(&client, &ns.name, "auth").await?;
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
        jwks_kids(&client, &ns.name, "auth").await.unwrap(),
        BTreeSet::from([good_kid.clone()]),
        "the garbage key is not published"
    );
    assert_eq!(
        trusted_kids(&sidecar_config(&client, &ns.name, "auth").await.unwrap()),
        BTreeSet::from([good_kid.clone()])
    );
    assert!(
        signing_keys(&client, &ns.name, "auth")
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
    apply_yaml::<AuthPolicy>(
        &client,
        &ns.name,
        &keys_issuer(&ns.name).spec(READ_ITEMS_AND_PUBLIC).yaml(),
    )
    .await
    .unwrap();
    eventually("the edit rendered", || async {
        let config = sidecar_config(&client, &ns.name, "auth").await?;
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
    wait_policy_ready(&client, &ns.name, "auth")
        .await
        .expect("Ready");
    ns.delete().await.unwrap();
}

#[tokio::test]
async fn a_corrupt_signing_keys_document_is_kept_and_reported_while_the_rest_reconciles() {
    let (client, ns) = with_shared_operator("corruptkeys").await;
    apply_yaml::<AuthPolicy>(
        &client,
        &ns.name,
        &keys_issuer(&ns.name).spec(READ_ITEMS).yaml(),
    )
    .await
    .unwrap();
    wait_policy_ready(&client, &ns.name, "auth")
        .await
        .expect("Ready");
    let published = jwks_kids(&client, &ns.name, "auth").await.unwrap();

    let corrupt = r#"{"keys": [{"kid": "x", "publishedAt": "MIGHAgEAMBMGByqGSM49"#;
    write_keys_document(&client, &ns.name, corrupt).await;
    eventually("Ready=False, SigningKeysCorrupt", || async {
        let Ready {
            status,
            reason,
            message,
        } = policy_ready(&client, &ns.name, "auth").await?;
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
    assert_eq!(
        jwks_kids(&client, &ns.name, "auth").await.unwrap(),
        published
    );
    assert!(
        warning_reasons(&client, &ns.name)
            .await
            .unwrap()
            .contains("SigningKeysCorrupt")
    );
    let status = auth_policy(&client, &ns.name, "auth")
        .await
        .unwrap()
        .status
        .unwrap();
    assert_eq!(status.keys.len(), 1, "status keeps the keys it listed");

    // The rest of the policy keeps reconciling, with the published keys.
    apply_yaml::<AuthPolicy>(
        &client,
        &ns.name,
        &keys_issuer(&ns.name).spec(READ_ITEMS_AND_PUBLIC).yaml(),
    )
    .await
    .unwrap();
    eventually("the edit rendered with the published keys", || async {
        let config = sidecar_config(&client, &ns.name, "auth").await?;
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
        let keys = signing_keys(&client, &ns.name, "auth").await?;
        ensure!(keys.signing_key(now()).is_some(), "nothing signs yet");
        ensure!(
            published
                .iter()
                .all(|kid| keys.keys.iter().any(|k| &k.kid == kid)),
            "a published key was dropped"
        );
        let p = auth_policy(&client, &ns.name, "auth").await?;
        let status = p.status.context("status")?;
        let degraded = condition(&status.conditions, "Degraded").context("Degraded")?;
        ensure!(degraded.reason == "SigningKeysLost", "{}", degraded.reason);
        Ok(())
    })
    .await
    .unwrap();
    ns.delete().await.unwrap();
}
