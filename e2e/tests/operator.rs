//! The operator on a real control plane, running as its ServiceAccount (started by the test
//! set-up): what an AuthPolicy and an OAuthClient render, rotation through every state,
//! emergency revocation, policyRef across namespaces, repairs, garbage collection, and the
//! client registry.

use std::collections::BTreeSet;

use anyhow::{Context as _, anyhow, bail, ensure};
use k8s_openapi::api::core::v1::{ConfigMap, Secret};
use kube::api::{Api, DeleteParams, Patch, PatchParams};
use scopegate_core::config::KeySource;
use scopegate_core::jwk::Jwks;
use scopegate_core::keys::{KeyState, SigningKeys};
use scopegate_core::secret_hash;
use scopegate_crds::v1alpha1::{AuthPolicy, OAuthClient};
use scopegate_e2e::manifests::{Issuer, READ_ITEMS, issuer, oauth_client};
use scopegate_e2e::ready::{Ready, client_ready, wait_policy_ready};
use scopegate_e2e::rendered::{client_registry, jwks, sidecar_config, signing_keys, trusted_kids};
use scopegate_e2e::setup::{now, with_shared_operator};
use scopegate_e2e::{
    TestNamespace, apply_yaml, auth_policy, condition, config_map_text, eventually, secret_text,
};

/// The issuer these tests run: scopes `read` and `write`, keys of `alg`, a login page.
fn operator_issuer(ns: &str, name: &str, alg: &str) -> Issuer {
    issuer(ns, name)
        .scopes("read: Read, write: Write")
        .with(&format!("signing: {{algorithm: {alg}}}"))
        .with("loginUrl: https://app.example.com/login")
        .spec(READ_ITEMS)
}

/// OAuthClient `name` of the issuer `auth` in `issuer_ns`, with `extra` fields of `spec`.
fn client_yaml(name: &str, issuer_ns: &str, extra: &str) -> String {
    oauth_client(name, &format!("name: auth, namespace: {issuer_ns}"), extra)
}

#[tokio::test]
async fn issuer_policy_renders_keys_jwks_certificate_and_sidecar_config_for_every_algorithm() {
    let (client, ns) = with_shared_operator("issuer").await;
    for (name, alg) in [
        ("es", "ES256"),
        ("rs", "RS256"),
        ("ed", "EdDSA"),
        ("hs", "HS256"),
    ] {
        apply_yaml::<AuthPolicy>(
            &client,
            &ns.name,
            &operator_issuer(&ns.name, name, alg).yaml(),
        )
        .await
        .expect("apply");
    }
    for (name, alg, kty) in [
        ("es", "ES256", "EC"),
        ("rs", "RS256", "RSA"),
        ("ed", "EdDSA", "OKP"),
        ("hs", "HS256", ""),
    ] {
        let p = wait_policy_ready(&client, &ns.name, name)
            .await
            .expect("ready");
        let status = p.status.unwrap();
        let keys = signing_keys(&client, &ns.name, name)
            .await
            .expect("signing keys");
        assert_eq!(keys.keys.len(), 1, "{name}: one key");
        let key = &keys.keys[0];
        assert_eq!(key.alg, alg);
        assert_eq!(
            status.active_kid.as_deref(),
            Some(key.kid.as_str()),
            "{name}: status names the signing key"
        );
        assert_eq!(
            condition(&status.conditions, "KeysReady").unwrap().status,
            "True"
        );
        let published = jwks(&client, &ns.name, name).await.expect("jwks");
        let config = sidecar_config(&client, &ns.name, name)
            .await
            .expect("sidecar config");
        assert!(config.issuer.is_some(), "{name}: issuer role configured");
        assert!(config.listen.tls.is_some(), "{name}: issuer pods serve TLS");
        if alg == "HS256" {
            assert!(
                published.keys.is_empty(),
                "an HS256 secret is never published"
            );
            assert_eq!(config.verify.issuers[0].keys, KeySource::OwnSigningKeys);
            assert!(
                !config_map_text(&client, &ns.name, "hs-sidecar", "config.json")
                    .await
                    .unwrap()
                    .unwrap()
                    .contains(&key.private_key)
            );
        } else {
            let jwk = &published.keys[0];
            assert_eq!(jwk.kty, kty);
            assert_eq!(jwk.alg.as_deref(), Some(alg));
            assert_eq!(jwk.use_.as_deref(), Some("sig"));
            assert_eq!(jwk.kid.as_deref(), Some(key.kid.as_str()));
            assert_eq!(key.kid.len(), 43, "an RFC 7638 SHA-256 thumbprint");
            assert_eq!(trusted_kids(&config), BTreeSet::from([key.kid.clone()]));
        }
        let tls = Api::<Secret>::namespaced(client.clone(), &ns.name)
            .get(&format!("{name}-tls"))
            .await
            .expect("tls secret");
        assert_eq!(tls.type_.as_deref(), Some("kubernetes.io/tls"));
        let names = tls.metadata.annotations.unwrap_or_default()["scopegate.dev/dns-names"].clone();
        assert!(
            names.contains(&format!("{name}.{}.svc", ns.name)),
            "{names}"
        );
        let data = tls.data.unwrap();
        assert!(String::from_utf8_lossy(&data["tls.crt"].0).contains("BEGIN CERTIFICATE"));
        assert_eq!(
            data["ca.crt"].0,
            config.ca_bundle_pem.clone().unwrap().into_bytes(),
            "the bundle travels in the sidecar config"
        );
    }
    let ca = config_map_text(&client, &ns.name, "scopegate-ca", "ca.crt")
        .await
        .unwrap()
        .expect("scopegate-ca");
    assert!(ca.contains("BEGIN CERTIFICATE"));
    ns.delete().await.unwrap();
}

#[tokio::test]
async fn an_edit_re_renders_a_deleted_child_is_repaired_and_deletion_collects_children() {
    let (client, ns) = with_shared_operator("edit").await;
    apply_yaml::<AuthPolicy>(
        &client,
        &ns.name,
        &operator_issuer(&ns.name, "auth", "ES256").yaml(),
    )
    .await
    .unwrap();
    wait_policy_ready(&client, &ns.name, "auth").await.unwrap();

    // Edit: a new rule reaches the sidecar config with the new generation.
    let api: Api<AuthPolicy> = Api::namespaced(client.clone(), &ns.name);
    let patch = serde_json::json!({"spec": {"rules": [{"paths": ["/items/**"], "require": ["read"]}, {"paths": ["/admin/**"], "require": ["write"]}]}});
    api.patch("auth", &PatchParams::default(), &Patch::Merge(&patch))
        .await
        .unwrap();
    let generation = auth_policy(&client, &ns.name, "auth")
        .await
        .unwrap()
        .metadata
        .generation
        .unwrap();
    eventually("the edit in the sidecar config", || async {
        let config = sidecar_config(&client, &ns.name, "auth").await?;
        ensure!(
            config.policy.generation == generation && config.rules.len() == 2,
            "not yet"
        );
        Ok(())
    })
    .await
    .unwrap();

    // A deleted child is repaired; the key survives a deleted JWKS.
    let kid = signing_keys(&client, &ns.name, "auth").await.unwrap().keys[0]
        .kid
        .clone();
    Api::<ConfigMap>::namespaced(client.clone(), &ns.name)
        .delete("auth-jwks", &DeleteParams::default())
        .await
        .unwrap();
    Api::<ConfigMap>::namespaced(client.clone(), &ns.name)
        .delete("auth-sidecar", &DeleteParams::default())
        .await
        .unwrap();
    eventually("JWKS and sidecar config repaired", || async {
        let keys = jwks(&client, &ns.name, "auth").await?;
        sidecar_config(&client, &ns.name, "auth").await?;
        ensure!(
            keys.keys
                .iter()
                .any(|k| k.kid.as_deref() == Some(kid.as_str())),
            "repaired with another key"
        );
        Ok(())
    })
    .await
    .unwrap();

    // Deleting the policy garbage-collects everything it owns (kube-controller-manager), but
    // not the signing keys: tokens they signed are still live.
    let kept = signing_keys(&client, &ns.name, "auth").await.unwrap();
    api.delete("auth", &DeleteParams::default()).await.unwrap();
    eventually("children garbage-collected", || async {
        for name in ["auth-tls", "auth-clients"] {
            ensure!(
                Api::<Secret>::namespaced(client.clone(), &ns.name)
                    .get_opt(name)
                    .await?
                    .is_none(),
                "{name} remains"
            );
        }
        for name in ["auth-jwks", "auth-sidecar"] {
            ensure!(
                Api::<ConfigMap>::namespaced(client.clone(), &ns.name)
                    .get_opt(name)
                    .await?
                    .is_none(),
                "{name} remains"
            );
        }
        Ok(())
    })
    .await
    .unwrap();
    assert_eq!(
        signing_keys(&client, &ns.name, "auth").await.unwrap(),
        kept,
        "the signing keys are retained"
    );
    // The policy back (a GitOps prune and re-sync): it adopts its keys, no new key is made.
    apply_yaml::<AuthPolicy>(
        &client,
        &ns.name,
        &operator_issuer(&ns.name, "auth", "ES256").yaml(),
    )
    .await
    .unwrap();
    eventually("the keys adopted and published again", || async {
        let published = jwks(&client, &ns.name, "auth").await?;
        ensure!(
            published
                .keys
                .iter()
                .any(|k| k.kid.as_deref() == Some(kid.as_str())),
            "the retained key is not published"
        );
        let secret = Api::<Secret>::namespaced(client.clone(), &ns.name)
            .get("auth-signing-keys")
            .await?;
        ensure!(
            secret.metadata.owner_references.is_none(),
            "the keys Secret is owned again"
        );
        Ok(())
    })
    .await
    .unwrap();
    let adopted = signing_keys(&client, &ns.name, "auth").await.unwrap();
    assert!(
        adopted.keys.iter().any(|k| k.kid == kid),
        "the old key was adopted, not replaced"
    );
    ns.delete().await.unwrap();
}

/// Checks the rotation invariants from the API objects at one moment.
fn check_invariants(
    keys: &SigningKeys,
    published: &Jwks,
    propagation: i64,
    first_kid: &str,
    at: i64,
) -> anyhow::Result<()> {
    let published: BTreeSet<_> = published
        .keys
        .iter()
        .filter_map(|k| k.kid.clone())
        .collect();
    for key in &keys.keys {
        match key.state(at) {
            KeyState::Active | KeyState::Retiring => {
                // A key that may have signed an unexpired token is published.
                ensure!(
                    published.contains(&key.kid),
                    "{} ({:?}) is not in the JWKS",
                    key.kid,
                    key.state(at)
                );
            }
            _ => {}
        }
        if key.state(at) == KeyState::Active && key.kid != first_kid {
            ensure!(
                key.activates_at - key.published_at >= propagation,
                "{} signs after too short a publication",
                key.kid
            );
        }
    }
    ensure!(keys.keys.len() <= 3, "{} keys", keys.keys.len());
    Ok(())
}

#[tokio::test]
async fn a_rotation_with_lifetimes_of_seconds_passes_through_every_state() {
    let (client, ns) = with_shared_operator("rotation").await;
    // rotationPeriod is at least 1h (the schema refuses less), so the rotation is asked for
    // with the annotation; the period's own schedule is unit-tested in operator/src/rotation.rs.
    let issuer = operator_issuer(&ns.name, "auth", "ES256")
        .with("propagation: 3s")
        .with("tokens: {accessTokenTtl: 3s, leeway: 1s}");
    apply_yaml::<AuthPolicy>(&client, &ns.name, &issuer.yaml())
        .await
        .unwrap();
    wait_policy_ready(&client, &ns.name, "auth").await.unwrap();
    let first = signing_keys(&client, &ns.name, "auth").await.unwrap().keys[0]
        .kid
        .clone();
    let rotate = serde_json::json!({"metadata": {"annotations": {"scopegate.dev/rotate": "1"}}});
    Api::<AuthPolicy>::namespaced(client.clone(), &ns.name)
        .patch("auth", &PatchParams::default(), &Patch::Merge(&rotate))
        .await
        .unwrap();

    // Observe until the first key has been active, retiring and removed, and a successor went
    // from next to active; check the invariants at every observation.
    let mut seen: BTreeSet<(String, &'static str)> = BTreeSet::new();
    let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(60);
    let mut interval = tokio::time::interval(std::time::Duration::from_millis(200));
    let mut successor_ok = false;
    loop {
        interval.tick().await;
        assert!(
            tokio::time::Instant::now() < deadline,
            "rotation did not complete; saw {seen:?}"
        );
        let at = now();
        let keys = signing_keys(&client, &ns.name, "auth").await.unwrap();
        let published = jwks(&client, &ns.name, "auth").await.unwrap();
        check_invariants(&keys, &published, 3, &first, at).unwrap();
        for key in &keys.keys {
            seen.insert((key.kid.clone(), key.state(at).as_str()));
            if key.kid != first && key.state(at) == KeyState::Active {
                successor_ok = seen.contains(&(key.kid.clone(), "next"));
            }
        }
        if !keys.keys.iter().any(|k| k.kid == first) {
            seen.insert((first.clone(), "removed"));
        }
        let first_done = ["active", "retiring", "removed"]
            .iter()
            .all(|s| seen.contains(&(first.clone(), *s)));
        if first_done && successor_ok {
            break;
        }
    }
    // The status follows.
    let status = wait_policy_ready(&client, &ns.name, "auth")
        .await
        .unwrap()
        .status
        .unwrap();
    assert_ne!(status.active_kid.as_deref(), Some(first.as_str()));
    ns.delete().await.unwrap();
}

#[tokio::test]
async fn manual_rotation_waits_for_propagation_and_emergency_revocation_is_immediate() {
    let (client, ns) = with_shared_operator("revoke").await;
    let issuer = operator_issuer(&ns.name, "auth", "ES256").with("propagation: 4s");
    apply_yaml::<AuthPolicy>(&client, &ns.name, &issuer.yaml())
        .await
        .unwrap();
    let api: Api<AuthPolicy> = Api::namespaced(client.clone(), &ns.name);
    wait_policy_ready(&client, &ns.name, "auth").await.unwrap();
    let first = signing_keys(&client, &ns.name, "auth").await.unwrap().keys[0]
        .kid
        .clone();

    let rotate = serde_json::json!({"metadata": {"annotations": {"scopegate.dev/rotate": "1"}}});
    api.patch("auth", &PatchParams::default(), &Patch::Merge(&rotate))
        .await
        .unwrap();
    let keys = eventually("a successor key", || async {
        let keys = signing_keys(&client, &ns.name, "auth").await?;
        ensure!(keys.keys.len() == 2, "{} keys", keys.keys.len());
        Ok(keys)
    })
    .await
    .unwrap();
    let successor = keys.keys.iter().find(|k| k.kid != first).unwrap().clone();
    assert!(
        successor.activates_at - successor.published_at >= 4,
        "published before it signs"
    );
    // Acting on the same annotation value twice makes no third key.
    api.patch(
        "auth",
        &PatchParams::default(),
        &Patch::Merge(&serde_json::json!({"metadata": {"labels": {"touch": "1"}}})),
    )
    .await
    .unwrap();
    eventually("the successor signing", || async {
        let p = auth_policy(&client, &ns.name, "auth").await?;
        ensure!(
            p.status.and_then(|s| s.active_kid).as_deref() == Some(successor.kid.as_str()),
            "not yet"
        );
        Ok(())
    })
    .await
    .unwrap();
    assert_eq!(
        signing_keys(&client, &ns.name, "auth")
            .await
            .unwrap()
            .keys
            .len(),
        2,
        "no duplicate key"
    );

    // Emergency: the active key disappears from the Secret, the JWKS and the sidecar config.
    let revoke = serde_json::json!({"metadata": {"annotations": {"scopegate.dev/revoke-kid": successor.kid}}});
    api.patch("auth", &PatchParams::default(), &Patch::Merge(&revoke))
        .await
        .unwrap();
    eventually("the revoked kid gone everywhere", || async {
        let keys = signing_keys(&client, &ns.name, "auth").await?;
        ensure!(
            keys.keys.iter().all(|k| k.kid != successor.kid),
            "still in the Secret"
        );
        ensure!(
            jwks(&client, &ns.name, "auth")
                .await?
                .find(&successor.kid)
                .is_none(),
            "still in the JWKS"
        );
        ensure!(
            !trusted_kids(&sidecar_config(&client, &ns.name, "auth").await?)
                .contains(&successor.kid),
            "still trusted"
        );
        ensure!(keys.signing_key(now()).is_some(), "nothing signs");
        Ok(())
    })
    .await
    .unwrap();
    let events = Api::<k8s_openapi::api::events::v1::Event>::namespaced(client.clone(), &ns.name)
        .list(&Default::default())
        .await
        .unwrap();
    assert!(
        events
            .items
            .iter()
            .any(|e| e.reason.as_deref() == Some("KeyRevoked")),
        "a Warning event tells"
    );
    ns.delete().await.unwrap();
}

#[tokio::test]
async fn policy_ref_across_namespaces_follows_rotation_and_drops_keys_when_the_issuer_goes() {
    let (client, issuer_ns) = with_shared_operator("issuerns").await;
    let verifier_ns = TestNamespace::create(&client, "verifierns").await.unwrap();
    // At first the issuer admits no other namespace.
    apply_yaml::<AuthPolicy>(
        &client,
        &issuer_ns.name,
        &operator_issuer(&issuer_ns.name, "auth", "ES256")
            .with("propagation: 2s")
            .yaml(),
    )
    .await
    .unwrap();
    wait_policy_ready(&client, &issuer_ns.name, "auth")
        .await
        .unwrap();
    let admits_verifier = format!("allowedClientNamespaces: [{}]", verifier_ns.name);
    let verifier = format!(
        r#"
apiVersion: scopegate.dev/v1alpha1
kind: AuthPolicy
metadata: {{name: orders}}
spec:
  selector: {{matchLabels: {{app: orders}}}}
  issuer: {{policyRef: {{name: auth, namespace: {}}}}}
  audiences: [https://orders.{}.svc]
  upstream: {{port: 8080}}
"#,
        issuer_ns.name, verifier_ns.name
    );
    apply_yaml::<AuthPolicy>(&client, &verifier_ns.name, &verifier)
        .await
        .unwrap();
    eventually("a policyRef the issuer does not admit refused", || async {
        let status = auth_policy(&client, &verifier_ns.name, "orders")
            .await?
            .status
            .context("status")?;
        let ready = condition(&status.conditions, "Ready").context("Ready")?;
        ensure!(
            ready.status == "False" && ready.reason == "PolicyRefNotAllowed",
            "{ready:?}"
        );
        ensure!(
            ready.message.contains("allowedClientNamespaces"),
            "{}",
            ready.message
        );
        let config = sidecar_config(&client, &verifier_ns.name, "orders").await?;
        ensure!(trusted_kids(&config).is_empty(), "no key crossed over");
        Ok(())
    })
    .await
    .unwrap();
    apply_yaml::<AuthPolicy>(
        &client,
        &issuer_ns.name,
        &operator_issuer(&issuer_ns.name, "auth", "ES256")
            .with("propagation: 2s")
            .with(&admits_verifier)
            .yaml(),
    )
    .await
    .unwrap();
    wait_policy_ready(&client, &verifier_ns.name, "orders")
        .await
        .unwrap();
    let first = signing_keys(&client, &issuer_ns.name, "auth")
        .await
        .unwrap()
        .keys[0]
        .kid
        .clone();
    assert_eq!(
        trusted_kids(
            &sidecar_config(&client, &verifier_ns.name, "orders")
                .await
                .unwrap()
        ),
        BTreeSet::from([first.clone()])
    );

    // The issuer rotates: the copy in the verifier's namespace follows.
    let rotate = serde_json::json!({"metadata": {"annotations": {"scopegate.dev/rotate": "now"}}});
    Api::<AuthPolicy>::namespaced(client.clone(), &issuer_ns.name)
        .patch("auth", &PatchParams::default(), &Patch::Merge(&rotate))
        .await
        .unwrap();
    eventually("the verifier trusting both keys", || async {
        let kids = trusted_kids(&sidecar_config(&client, &verifier_ns.name, "orders").await?);
        ensure!(kids.len() == 2 && kids.contains(&first), "{kids:?}");
        Ok(())
    })
    .await
    .unwrap();

    // The issuer is deleted: the verifier drops its keys and says why.
    Api::<AuthPolicy>::namespaced(client.clone(), &issuer_ns.name)
        .delete("auth", &DeleteParams::default())
        .await
        .unwrap();
    eventually("keys dropped and Degraded", || async {
        ensure!(
            trusted_kids(&sidecar_config(&client, &verifier_ns.name, "orders").await?).is_empty(),
            "keys still trusted"
        );
        let status = auth_policy(&client, &verifier_ns.name, "orders")
            .await?
            .status
            .context("status")?;
        let degraded = condition(&status.conditions, "Degraded").context("Degraded")?;
        ensure!(
            degraded.status == "True" && degraded.reason == "PolicyRefNotFound",
            "{degraded:?}"
        );
        ensure!(
            degraded
                .message
                .contains(&format!("policyRef {}/auth not found", issuer_ns.name)),
            "{}",
            degraded.message
        );
        Ok(())
    })
    .await
    .unwrap();

    // An HS256 issuer cannot be trusted by reference.
    apply_yaml::<AuthPolicy>(
        &client,
        &issuer_ns.name,
        &operator_issuer(&issuer_ns.name, "auth", "HS256")
            .with(&admits_verifier)
            .yaml(),
    )
    .await
    .unwrap();
    eventually("HS256 refused", || async {
        let status = auth_policy(&client, &verifier_ns.name, "orders")
            .await?
            .status
            .context("status")?;
        let ready = condition(&status.conditions, "Ready").context("Ready")?;
        ensure!(
            ready.status == "False" && ready.reason == "PolicyRefHS256",
            "{ready:?}"
        );
        Ok(())
    })
    .await
    .unwrap();
    verifier_ns.delete().await.unwrap();
    issuer_ns.delete().await.unwrap();
}

#[tokio::test]
async fn oauth_client_lifecycle_registry_rotation_overlap_and_refusals() {
    let (client, ns) = with_shared_operator("clients").await;
    let other = TestNamespace::create(&client, "clientsother")
        .await
        .unwrap();
    apply_yaml::<AuthPolicy>(
        &client,
        &ns.name,
        &operator_issuer(&ns.name, "auth", "ES256").yaml(),
    )
    .await
    .unwrap();
    wait_policy_ready(&client, &ns.name, "auth").await.unwrap();

    // A confidential client gets a generated secret; the registry holds only its hash.
    apply_yaml::<OAuthClient>(
        &client,
        &ns.name,
        &client_yaml("billing", &ns.name, "secretName: billing-creds"),
    )
    .await
    .unwrap();
    let (id, secret) = eventually("billing registered", || async {
        let Ready {
            status,
            reason,
            message,
        } = client_ready(&client, &ns.name, "billing").await?;
        ensure!(status == "True", "{reason}: {message}");
        let id = secret_text(&client, &ns.name, "billing-creds", "client_id")
            .await?
            .context("client_id")?;
        let secret = secret_text(&client, &ns.name, "billing-creds", "client_secret")
            .await?
            .context("client_secret")?;
        Ok((id, secret))
    })
    .await
    .unwrap();
    assert_eq!(id, format!("{}.billing", ns.name));
    assert_eq!(secret.len(), 43, "256 bits, base64url");
    let entry = client_registry(&client, &ns.name, "auth")
        .await
        .unwrap()
        .find(&id)
        .cloned()
        .expect("registered");
    assert!(
        !serde_json::to_string(&entry).unwrap().contains(&secret),
        "no plaintext in the registry"
    );
    assert!(secret_hash::verify(&entry.secrets[0].phc, &secret).unwrap());

    // Rotation: a new secret, and the old one keeps working during the overlap.
    let rotate =
        serde_json::json!({"metadata": {"annotations": {"scopegate.dev/rotate-secret": "1"}}});
    Api::<OAuthClient>::namespaced(client.clone(), &ns.name)
        .patch("billing", &PatchParams::default(), &Patch::Merge(&rotate))
        .await
        .unwrap();
    let new_secret = eventually("rotated secret in the registry", || async {
        let new = secret_text(&client, &ns.name, "billing-creds", "client_secret")
            .await?
            .context("secret")?;
        ensure!(new != secret, "not rotated yet");
        let entry = client_registry(&client, &ns.name, "auth")
            .await?
            .find(&id)
            .cloned()
            .context("entry")?;
        ensure!(entry.secrets.len() == 2, "{} hashes", entry.secrets.len());
        let works = |plain: &str| {
            entry
                .secrets
                .iter()
                .any(|h| secret_hash::verify(&h.phc, plain).unwrap_or(false))
        };
        ensure!(
            works(&new) && works(&secret),
            "both must work during the overlap"
        );
        Ok(new)
    })
    .await
    .unwrap();
    assert_ne!(new_secret, secret);

    // An unknown scope and a disallowed namespace are reported in status, not registered.
    apply_yaml::<OAuthClient>(
        &client,
        &ns.name,
        &client_yaml("greedy", &ns.name, "scopes: [read, write:x]"),
    )
    .await
    .unwrap();
    apply_yaml::<OAuthClient>(&client, &other.name, &client_yaml("foreign", &ns.name, ""))
        .await
        .unwrap();
    eventually("refusals in status", || async {
        let Ready {
            status,
            reason,
            message,
        } = client_ready(&client, &ns.name, "greedy").await?;
        ensure!(status == "False" && reason == "UnknownScope", "{reason}");
        ensure!(
            message
                == format!(
                    "scope write:x is not declared by the issuer {}/auth",
                    ns.name
                ),
            "{message}"
        );
        let Ready { status, reason, .. } = client_ready(&client, &other.name, "foreign").await?;
        ensure!(
            status == "False" && reason == "NamespaceNotAllowed",
            "{reason}"
        );
        let registry = client_registry(&client, &ns.name, "auth").await?;
        ensure!(
            registry.find(&format!("{}.greedy", ns.name)).is_none(),
            "greedy registered"
        );
        ensure!(
            registry.find(&format!("{}.foreign", other.name)).is_none(),
            "foreign registered"
        );
        // A namespace with only a client still gets the CA bundle its apps need.
        ensure!(
            config_map_text(&client, &other.name, "scopegate-ca", "ca.crt")
                .await?
                .is_some(),
            "no scopegate-ca in a client-only namespace"
        );
        Ok(())
    })
    .await
    .unwrap();

    // A secretName pointing at someone else's Secret is refused and the Secret is untouched.
    let foreign_secret: Secret = serde_json::from_value(serde_json::json!({
        "apiVersion": "v1", "kind": "Secret", "metadata": {"name": "not-yours"}, "stringData": {"client_secret": "keep-me"}
    }))
    .unwrap();
    Api::<Secret>::namespaced(client.clone(), &ns.name)
        .create(&Default::default(), &foreign_secret)
        .await
        .unwrap();
    apply_yaml::<OAuthClient>(
        &client,
        &ns.name,
        &client_yaml("squatter", &ns.name, "secretName: not-yours"),
    )
    .await
    .unwrap();
    eventually("foreign Secret refused", || async {
        let Ready {
            status,
            reason,
            message,
        } = client_ready(&client, &ns.name, "squatter").await?;
        ensure!(
            status == "False" && reason == "SecretNotOwned",
            "{reason}: {message}"
        );
        Ok(())
    })
    .await
    .unwrap();
    assert_eq!(
        secret_text(&client, &ns.name, "not-yours", "client_secret")
            .await
            .unwrap()
            .as_deref(),
        Some("keep-me")
    );

    // A secret a person chose is hashed with argon2id.
    let chosen: Secret = serde_json::from_value(serde_json::json!({
        "apiVersion": "v1", "kind": "Secret",
        "metadata": {"name": "chosen"},
        "stringData": {"password": "correct horse battery staple"}
    }))
    .unwrap();
    Api::<Secret>::namespaced(client.clone(), &ns.name)
        .create(&Default::default(), &chosen)
        .await
        .unwrap();
    apply_yaml::<OAuthClient>(
        &client,
        &ns.name,
        &client_yaml(
            "human",
            &ns.name,
            "existingSecret: {name: chosen, key: password}",
        ),
    )
    .await
    .unwrap();
    eventually("argon2id hash for a chosen secret", || async {
        let entry = client_registry(&client, &ns.name, "auth")
            .await?
            .find(&format!("{}.human", ns.name))
            .cloned()
            .context("entry")?;
        let phc = &entry.secrets.first().context("no hash")?.phc;
        ensure!(phc.starts_with("$argon2id$"), "{phc}");
        ensure!(
            secret_hash::verify(phc, "correct horse battery staple")?,
            "does not verify"
        );
        Ok(())
    })
    .await
    .unwrap();

    // The kill switch reaches the issuer's sidecar config and its registry.
    let clients = Api::<OAuthClient>::namespaced(client.clone(), &ns.name);
    let cutoff = serde_json::json!({"spec": {"revokeTokensIssuedBefore": "2026-01-01T00:00:00Z"}});
    clients
        .patch("billing", &PatchParams::default(), &Patch::Merge(&cutoff))
        .await
        .unwrap();
    cutoff_in_force(&client, &ns.name, &id, |c| c == 1_767_225_600)
        .await
        .unwrap();
    // A time in the future would refuse every token the client gets until then (CEL has no
    // clock to refuse it at apply): it is clamped to when the operator first saw it, and
    // status says so.
    let before = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64;
    let cutoff = serde_json::json!({"spec": {"revokeTokensIssuedBefore": "2030-01-01T00:00:00Z"}});
    clients
        .patch("billing", &PatchParams::default(), &Patch::Merge(&cutoff))
        .await
        .unwrap();
    let clamped = cutoff_in_force(&client, &ns.name, &id, |c| c != 1_767_225_600)
        .await
        .unwrap();
    assert!(
        (before - 1..=before + 60).contains(&clamped),
        "clamped to {clamped}, set at about {before}"
    );
    eventually("the clamp reported", || async {
        let status = clients.get("billing").await?.status.context("status")?;
        let degraded = condition(&status.conditions, "Degraded").context("Degraded")?;
        ensure!(
            degraded.reason == "RevocationCutoffInFuture"
                && degraded.message.contains("2030-01-01T00:00:00Z"),
            "{degraded:?}"
        );
        let ready = condition(&status.conditions, "Ready").context("Ready")?;
        ensure!(ready.status == "True", "{ready:?}");
        let recorded = status.revocation_cutoff.context("revocationCutoff")?;
        ensure!(recorded.effective.0.as_second() == clamped, "{recorded:?}");
        Ok(())
    })
    .await
    .unwrap();

    // Deleting a client removes it from the registry.
    Api::<OAuthClient>::namespaced(client.clone(), &ns.name)
        .delete("billing", &DeleteParams::default())
        .await
        .unwrap();
    eventually("billing leaves the registry", || async {
        if client_registry(&client, &ns.name, "auth")
            .await?
            .find(&id)
            .is_some()
        {
            bail!("still registered");
        }
        Ok(())
    })
    .await
    .map_err(|e| anyhow!(e))
    .unwrap();
    other.delete().await.unwrap();
    ns.delete().await.unwrap();
}

/// Waits until `id`'s cut-off in the issuer's sidecar config and in its client registry agree
/// and pass `expected`; returns it.
async fn cutoff_in_force(
    client: &kube::Client,
    ns: &str,
    id: &str,
    expected: impl Fn(i64) -> bool,
) -> anyhow::Result<i64> {
    eventually(
        "client cut-off in the sidecar config and registry",
        || async {
            let config = sidecar_config(client, ns, "auth").await?;
            let cut = config.revocation.client_cutoffs.get(id).copied();
            let entry = client_registry(client, ns, "auth").await?.find(id).cloned();
            let registered = entry.and_then(|e| e.revoke_before);
            ensure!(cut == registered, "config {cut:?}, registry {registered:?}");
            ensure!(cut.is_some_and(&expected), "{cut:?}");
            Ok(cut.unwrap_or_default())
        },
    )
    .await
}
