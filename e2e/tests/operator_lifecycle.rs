//! Operators that the tests start and kill themselves: leader election between two replicas,
//! and convergence after a SIGKILL in the middle of reconciles. Runs after the shared
//! operator of the other e2e tests has stopped, one test at a time.

use std::collections::BTreeSet;

use anyhow::{Context as _, ensure};
use kube::api::{Api, Patch, PatchParams};
use scopegate_core::config::{KeySource, SidecarConfig};
use scopegate_core::jwk::Jwks;
use scopegate_core::keys::SigningKeys;
use scopegate_crds::v1alpha1::AuthPolicy;
use scopegate_e2e::{
    ControlPlane, OperatorProcess, TestNamespace, apply_yaml, condition, config_map_text,
    eventually, secret_text,
};

fn issuer(name: &str) -> String {
    format!(
        r#"
apiVersion: scopegate.dev/v1alpha1
kind: AuthPolicy
metadata: {{name: {name}}}
spec:
  selector: {{}}
  issuer:
    self:
      url: https://{name}.example.svc
      service: {{name: {name}, port: 443}}
      signing: {{algorithm: RS256}}
      scopes: {{read: Read}}
  upstream: {{port: 8080}}
"#
    )
}

async fn ready_generation(client: &kube::Client, ns: &str, name: &str) -> anyhow::Result<i64> {
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
    apply_yaml::<AuthPolicy>(&client, &ns.name, &issuer("auth"))
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
        apply_yaml::<AuthPolicy>(&client, &ns.name, &issuer(name))
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
            let keys: SigningKeys = serde_json::from_str(
                &secret_text(
                    &client,
                    &ns.name,
                    &format!("{name}-signing-keys"),
                    "keys.json",
                )
                .await?
                .context("keys")?,
            )?;
            ensure!(keys.keys.len() == 1, "{name}: {} keys", keys.keys.len());
            let kid = keys.keys[0].kid.clone();
            let jwks: Jwks = serde_json::from_str(
                &config_map_text(&client, &ns.name, &format!("{name}-jwks"), "jwks.json")
                    .await?
                    .context("jwks")?,
            )?;
            let published: BTreeSet<_> = jwks.keys.iter().filter_map(|k| k.kid.clone()).collect();
            ensure!(
                published == BTreeSet::from([kid.clone()]),
                "{name}: JWKS {published:?} vs key {kid}"
            );
            let config = SidecarConfig::from_json(
                &config_map_text(&client, &ns.name, &format!("{name}-sidecar"), "config.json")
                    .await?
                    .context("config")?,
            )?;
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
