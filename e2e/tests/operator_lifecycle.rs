//! Operators that the tests start and kill themselves: leader election between two replicas,
//! and convergence after a SIGKILL in the middle of reconciles. Runs after the shared
//! operator of the other e2e tests has stopped, one test at a time.

use std::collections::BTreeSet;

use anyhow::{Context as _, ensure};
use kube::api::{Api, Patch, PatchParams};
use scopegate_core::config::KeySource;
use scopegate_crds::v1alpha1::AuthPolicy;
use scopegate_e2e::manifests;
use scopegate_e2e::rendered::{jwks_kids, sidecar_config, signing_keys};
use scopegate_e2e::{
    ControlPlane, OperatorProcess, TestNamespace, apply_yaml, condition, eventually, secret_text,
};

/// Issuer `name` in `ns`, with RS256 keys (the slowest to generate).
fn issuer(ns: &str, name: &str) -> String {
    manifests::issuer(ns, name)
        .with("signing: {algorithm: RS256}")
        .yaml()
}

async fn ready_generation(client: &kube::Client, ns: &str, name: &str) -> anyhow::Result<i64> {
    scopegate_e2e::ensure_selected_pod(client, ns, name).await?;
    let p = Api::<AuthPolicy>::namespaced(client.clone(), ns)
        .get(name)
        .await?;
    let status = p.status.context("no status")?;
    let ready = condition(&status.conditions, "Ready").context("no Ready")?;
    ensure!(ready.status == "True", "{}", ready.message);
    status.observed_generation.context("no observedGeneration")
}

#[tokio::test]
async fn two_operators_one_leader_and_the_standby_takes_over() {
    let plane = ControlPlane::from_env().unwrap();
    let client = plane.client().await.unwrap();
    let ns = TestNamespace::create(&client, "leader").await.unwrap();
    let lease = format!("e2e-leader-{}", std::process::id());
    let mut a = OperatorProcess::start("replica-a", &lease).unwrap();
    let mut b = OperatorProcess::start("replica-b", &lease).unwrap();

    eventually("exactly one leader", || async {
        let leaders = [a.is_leader(), b.is_leader()]
            .iter()
            .filter(|l| **l)
            .count();
        ensure!(leaders == 1, "{leaders} leaders");
        Ok(())
    })
    .await
    .unwrap();
    apply_yaml::<AuthPolicy>(&client, &ns.name, &issuer(&ns.name, "auth"))
        .await
        .unwrap();
    eventually("reconciled by the leader", || async {
        ready_generation(&client, &ns.name, "auth").await
    })
    .await
    .unwrap();
    let (leader, standby) = if a.is_leader() {
        (&mut a, &mut b)
    } else {
        (&mut b, &mut a)
    };
    assert!(leader.counter("scopegate_operator_reconciles_total") > 0.0);
    assert_eq!(
        standby.counter("scopegate_operator_reconciles_total"),
        0.0,
        "the standby writes nothing"
    );
    assert!(!standby.is_leader());

    leader.kill();
    eventually("the standby takes over", || async {
        ensure!(
            standby.is_leader(),
            "{} does not lead yet",
            standby.identity
        );
        Ok(())
    })
    .await
    .unwrap();
    let patch = serde_json::json!({"spec": {"rules": [{"paths": ["/x"], "public": true}]}});
    Api::<AuthPolicy>::namespaced(client.clone(), &ns.name)
        .patch("auth", &PatchParams::default(), &Patch::Merge(&patch))
        .await
        .unwrap();
    eventually("the new leader reconciles an edit", || async {
        ensure!(
            ready_generation(&client, &ns.name, "auth").await? == 2,
            "generation 2 not observed"
        );
        Ok(())
    })
    .await
    .unwrap();
    ns.delete().await.unwrap();
}

#[tokio::test]
async fn an_operator_killed_mid_reconcile_converges_without_lost_or_duplicated_keys() {
    let plane = ControlPlane::from_env().unwrap();
    let client = plane.client().await.unwrap();
    let ns = TestNamespace::create(&client, "sigkill").await.unwrap();
    let lease = format!("e2e-sigkill-{}", std::process::id());
    let names: Vec<String> = (0..12).map(|i| format!("p{i}")).collect();

    let mut first = OperatorProcess::start("doomed", &lease).unwrap();
    eventually("leader", || async {
        ensure!(first.is_leader(), "not yet");
        Ok(())
    })
    .await
    .unwrap();
    for name in &names {
        apply_yaml::<AuthPolicy>(&client, &ns.name, &issuer(&ns.name, name))
            .await
            .unwrap();
    }
    // Kill it as soon as it has started writing keys (RSA key generation keeps it busy).
    eventually("the first key written", || async {
        for name in &names {
            if secret_text(
                &client,
                &ns.name,
                &format!("{name}-signing-keys"),
                "keys.json",
            )
            .await?
            .is_some()
            {
                return Ok(());
            }
        }
        anyhow::bail!("no key yet")
    })
    .await
    .unwrap();
    first.kill();

    let _second = OperatorProcess::start("survivor", &lease).unwrap();
    for name in &names {
        eventually(&format!("{name} converged"), || async {
            ready_generation(&client, &ns.name, name).await?;
            let keys = signing_keys(&client, &ns.name, name).await?;
            ensure!(keys.keys.len() == 1, "{name}: {} keys", keys.keys.len());
            let kid = keys.keys[0].kid.clone();
            let published = jwks_kids(&client, &ns.name, name).await?;
            ensure!(
                published == BTreeSet::from([kid.clone()]),
                "{name}: JWKS {published:?} vs key {kid}"
            );
            let config = sidecar_config(&client, &ns.name, name).await?;
            let KeySource::Static { jwks } = &config.verify.issuers[0].keys else {
                anyhow::bail!("not static")
            };
            ensure!(
                jwks.find(&kid).is_some(),
                "{name}: sidecar config lacks {kid}"
            );
            Ok(())
        })
        .await
        .unwrap();
    }
    ns.delete().await.unwrap();
}

#[tokio::test]
async fn an_object_that_does_not_decode_gets_a_warning_and_does_not_stall_the_others() {
    use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
    let plane = ControlPlane::from_env().unwrap();
    let client = plane.client().await.unwrap();
    let ns = TestNamespace::create(&client, "undecodable").await.unwrap();
    let lease = format!("e2e-guard-{}", std::process::id());
    let operator = OperatorProcess::start("guard", &lease).unwrap();
    eventually("leader", || async {
        ensure!(operator.is_leader(), "not yet");
        Ok(())
    })
    .await
    .unwrap();

    // Store an object the current types cannot read, as an older or newer schema could have:
    // loosen the CRD, write it, and restore the CRD (stored objects are not re-validated).
    let crds: Api<CustomResourceDefinition> = Api::all(client.clone());
    let original = crds.get("authpolicies.scopegate.dev").await.unwrap();
    let mut loose = original.clone();
    loose.metadata.managed_fields = None;
    if let Some(schema) = loose.spec.versions[0]
        .schema
        .as_mut()
        .and_then(|s| s.open_api_v3_schema.as_mut())
    {
        let spec = schema.properties.as_mut().unwrap().get_mut("spec").unwrap();
        *spec = serde_json::from_value(
            serde_json::json!({"type": "object", "x-kubernetes-preserve-unknown-fields": true}),
        )
        .unwrap();
        schema.x_kubernetes_validations = None;
    }
    crds.replace("authpolicies.scopegate.dev", &Default::default(), &loose)
        .await
        .unwrap();
    let bad = serde_json::json!({
        "apiVersion": "scopegate.dev/v1alpha1", "kind": "AuthPolicy",
        "metadata": {"name": "from-another-version"},
        "spec": {"selector": {}, "issuer": "an issuer as a string", "upstream": {"port": "eighty"}}
    });
    let dynamic = Api::<kube::api::DynamicObject>::namespaced_with(
        client.clone(),
        &ns.name,
        &kube::api::ApiResource::erase::<AuthPolicy>(&()),
    );
    eventually("the loose schema in effect", || async {
        let object: kube::api::DynamicObject = serde_json::from_value(bad.clone())?;
        dynamic.create(&Default::default(), &object).await?;
        Ok(())
    })
    .await
    .unwrap();
    let mut restored = crds.get("authpolicies.scopegate.dev").await.unwrap();
    restored.spec = original.spec.clone();
    crds.replace("authpolicies.scopegate.dev", &Default::default(), &restored)
        .await
        .unwrap();

    // Every other object is still reconciled, and the bad one is named in a Warning event.
    apply_yaml::<AuthPolicy>(&client, &ns.name, &issuer(&ns.name, "good"))
        .await
        .unwrap();
    eventually("the good policy reconciled", || async {
        ready_generation(&client, &ns.name, "good").await
    })
    .await
    .unwrap();
    eventually("a Warning event on the bad object", || async {
        let events =
            Api::<k8s_openapi::api::events::v1::Event>::namespaced(client.clone(), &ns.name)
                .list(&Default::default())
                .await?;
        ensure!(
            events
                .items
                .iter()
                .any(|e| e.reason.as_deref() == Some("InvalidObject")
                    && e.regarding.as_ref().and_then(|r| r.name.as_deref())
                        == Some("from-another-version")),
            "no InvalidObject event yet"
        );
        Ok(())
    })
    .await
    .unwrap();
    dynamic
        .delete("from-another-version", &Default::default())
        .await
        .unwrap();
    ns.delete().await.unwrap();
}
