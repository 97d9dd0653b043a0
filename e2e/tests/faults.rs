//! Faults that need operators of the test's own: one killed right after each write of a key
//! rotation while a client keeps calling, and an API outage longer than the lease. Runs after
//! the shared operator has stopped (these operators serve the webhook on its port), one test
//! at a time.

use std::collections::BTreeSet;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context as _, ensure};
use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::{Namespace, Pod};
use kube::Client;
use kube::api::{Api, DeleteParams, Patch, PatchParams, PostParams};
use scopegate_core::keys::SigningKeys;
use scopegate_crds::v1alpha1::AuthPolicy;
use scopegate_e2e::fault_proxy::FaultProxy;
use scopegate_e2e::manifests::{issuer, oauth_client};
use scopegate_e2e::ready::{Ready, client_ready, policy_ready};
use scopegate_e2e::rendered::{client_registry, jwks, sidecar_config, trusted_kids};
use scopegate_e2e::setup::{apply_injection_namespace, logs_dir, now};
use scopegate_e2e::story::{Load, Shop};
use scopegate_e2e::{
    ControlPlane, OperatorOptions, OperatorProcess, apply_yaml, condition, eventually, secret_text,
};

/// Waits until the API server can call the webhook (a new leader may still be issuing its
/// certificate): a dry-run pod creation in `namespace` succeeds.
async fn webhook_serving(client: &Client, namespace: &str) {
    let pod: Pod = serde_json::from_value(serde_json::json!({
        "apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": "webhook-probe"},
        "spec": {"containers": [{"name": "app", "image": "example/app"}]}
    }))
    .expect("pod");
    let api = Api::<Pod>::namespaced(client.clone(), namespace);
    let params = PostParams {
        dry_run: true,
        ..PostParams::default()
    };
    eventually("the webhook answering the API server", || async {
        api.create(&params, &pod).await?;
        Ok(())
    })
    .await
    .expect("webhook");
}

/// The write the fault hook last crashed after, from the operators' log.
fn last_crash() -> String {
    let dir = std::env::var("E2E_DIR").unwrap_or_default();
    std::fs::read_to_string(format!("{dir}/logs/operator-crash.log"))
        .unwrap_or_default()
        .lines()
        .rev()
        .find_map(|l| l.strip_prefix("fault hook: aborting after "))
        .unwrap_or("(none)")
        .to_owned()
}

async fn wait_leader(operator: &OperatorProcess) {
    eventually(&format!("{} leading", operator.identity), || async {
        ensure!(operator.is_leader(), "not yet:\n{}", operator.log_tail());
        Ok(())
    })
    .await
    .expect("leadership");
}

/// The invariant, read from the API: the key the signing-keys Secret lets the issuer sign with
/// now is in the JWKS and in every verifier's config. `Ok(Some(_))` names a violation; `Err`
/// is a failed read. The Secret is read first: configs gain a key before any Secret lets it
/// sign and keep it until long after, so reading them later can only see more.
async fn violation(client: &Client, ns: &str) -> anyhow::Result<Option<String>> {
    let Some(text) = secret_text(client, ns, "auth-signing-keys", "keys.json").await? else {
        return Ok(None);
    };
    let keys: SigningKeys = serde_json::from_str(&text)?;
    let at = now();
    let Some(signer) = keys.signing_key(at) else {
        return Ok(None);
    };
    let jwks = jwks(client, ns, "auth").await?;
    if jwks.find(&signer.kid).is_none() {
        return Ok(Some(format!(
            "at {at} {} signs and is not in the JWKS",
            signer.kid
        )));
    }
    for policy in ["auth", "orders"] {
        let config = sidecar_config(client, ns, policy).await?;
        if !trusted_kids(&config).contains(&signer.kid) {
            return Ok(Some(format!(
                "at {at} {} signs and {policy}'s sidecar config lacks it",
                signer.kid
            )));
        }
    }
    Ok(None)
}

/// Whether rotation `request` is complete: handled, its key signing, nothing pending.
async fn rotated(
    shop: &Shop,
    client: &Client,
    request: &str,
    before: &str,
) -> anyhow::Result<String> {
    let policy = Api::<AuthPolicy>::namespaced(client.clone(), &shop.namespace)
        .get("auth")
        .await?;
    let status = policy.status.context("no status")?;
    ensure!(
        status.handled_rotation.as_deref() == Some(request),
        "rotation {request} not handled yet"
    );
    ensure!(
        status.keys.iter().all(|k| k.state != "publishing"),
        "a key is still publishing"
    );
    let kid = status.active_kid.context("nothing signs")?;
    ensure!(kid != before, "{kid} still signs");
    Ok(kid)
}

#[tokio::test]
async fn an_operator_killed_after_any_write_of_a_rotation_never_lets_a_token_outrun_the_verifiers()
{
    let plane = ControlPlane::from_env().unwrap();
    let client = plane.client().await.unwrap();
    let lease = format!("e2e-crash-{}", std::process::id());
    // One identity for every process: a restarted operator takes the lease over at once.
    let identity = "crash";
    let clean = OperatorOptions {
        webhook: true,
        ..OperatorOptions::default()
    };
    let mut operator = OperatorProcess::start_with(identity, &lease, &clean).unwrap();
    wait_leader(&operator).await;
    let namespace = format!("e2e-crash-{}", std::process::id());
    apply_injection_namespace(&client, &namespace)
        .await
        .unwrap();
    webhook_serving(&client, &namespace).await;
    let say = |line: &str| eprintln!("crash: {line}");
    let shop = Arc::new(
        Shop::start(&client, &namespace, &logs_dir(), &say)
            .await
            .unwrap(),
    );
    // A retired key stays until the tokens it signed expire (access and minted tokens, 15m
    // in examples/). Rotations a few seconds apart would fill the signing-keys document (16
    // keys at most) before the crash points run out, and the operator would rightly defer
    // the next rotation: with 1-minute tokens, retired keys leave while the test runs. No
    // token exists yet.
    let short = serde_json::json!({"spec": {"issuer": {"self": {
        "tokens": {"accessTokenTtl": "1m"}, "mint": {"maxTtl": "1m"}
    }}}});
    Api::<AuthPolicy>::namespaced(client.clone(), &namespace)
        .patch("auth", &PatchParams::default(), &Patch::Merge(&short))
        .await
        .unwrap();
    eventually("the issuer's config with 1-minute tokens", || async {
        let config = sidecar_config(&client, &namespace, "auth").await?;
        let ttl = config.issuer.map(|i| i.access_token_ttl_secs);
        ensure!(ttl == Some(60), "access token TTL {ttl:?}");
        Ok(())
    })
    .await
    .unwrap();
    eventually("the issuer issuing 1-minute tokens", || async {
        let token = shop.accounting_token(None)?;
        let claims = token.split('.').nth(1).context("a JWS")?;
        let claims: serde_json::Value = serde_json::from_slice(&base64::Engine::decode(
            &base64::engine::general_purpose::URL_SAFE_NO_PAD,
            claims,
        )?)?;
        let lifetime = claims["exp"].as_i64().unwrap_or(0) - claims["iat"].as_i64().unwrap_or(0);
        ensure!(lifetime == 60, "a {lifetime} s token");
        Ok(())
    })
    .await
    .unwrap();

    // A client keeps calling with fresh tokens; the API objects are checked alongside.
    let stop = Arc::new(AtomicBool::new(false));
    // The issuer refusing to mint while no key may sign is not a rejected request; an issued
    // token that fails is.
    let load = Load::start(shop.clone(), false);
    let checker = {
        let (client, namespace, stop) = (client.clone(), namespace.clone(), stop.clone());
        tokio::spawn(async move {
            let mut found = Vec::new();
            let mut checks = 0u32;
            while !stop.load(Ordering::Relaxed) {
                if let Ok(result) = violation(&client, &namespace).await {
                    checks += 1;
                    found.extend(result);
                }
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
            (checks, found)
        })
    };

    let mut crash_points = Vec::new();
    let mut kids = vec![shop.active_kid().await.unwrap()];
    for k in 1..=40u32 {
        operator.kill();
        let faulty = OperatorOptions {
            env: vec![(
                "SCOPEGATE_FAULT_CRASH_AFTER_WRITES".into(),
                format!("{namespace}:{k}"),
            )],
            ..clean.clone()
        };
        // A restarted operator finds the namespace converged and writes nothing there until
        // asked to rotate (reconciles are idempotent). The operator it replaces may have been
        // killed with a reconcile still owed (a pod event, a due key transition): the first
        // replacement then makes that write and dies, and the next finds nothing to do. One
        // that keeps writing at start-up is not idempotent and fails the test.
        // The rotation is asked for once the replacement leads: its webhook (fail-closed)
        // admits the request, unless that owed write killed it in between, which counts as a
        // start-up write too.
        let request = format!("r{k}");
        let mut startup_writes = Vec::new();
        let mut doomed = loop {
            let mut doomed = OperatorProcess::start_with(identity, &lease, &faulty).unwrap();
            let led = eventually("the faulty operator leading", || {
                let (running, leading) = (doomed.is_running(), doomed.is_leader());
                async move {
                    if !running {
                        return Ok(false);
                    }
                    ensure!(leading, "not yet");
                    Ok(true)
                }
            })
            .await
            .unwrap();
            if led && doomed.is_running() {
                let Err(refused) = shop.rotate(&request).await else {
                    break doomed;
                };
                // The listener closes as the process exits, a moment before it can be reaped.
                eventually("the operator that refused the rotation exiting", || {
                    let running = doomed.is_running();
                    let refused = &refused;
                    async move {
                        ensure!(!running, "running, yet refused rotation: {refused:#}");
                        Ok(())
                    }
                })
                .await
                .unwrap();
            }
            doomed.kill();
            startup_writes.push(last_crash());
            assert!(
                startup_writes.len() < 3,
                "restarted operators keep writing at start-up: {startup_writes:?}"
            );
        };
        if !startup_writes.is_empty() {
            say(&format!(
                "before rotation r{k}: a restarted operator first converged ({startup_writes:?})"
            ));
        }
        let before = kids.last().cloned().unwrap_or_default();
        // It dies after its k-th write, or completes the rotation with fewer.
        let completed = eventually(
            &format!("crash after write {k} or rotation {request}"),
            || {
                let running = doomed.is_running();
                let (shop, client, request, before) = (&shop, &client, &request, &before);
                async move {
                    if !running {
                        return Ok(None);
                    }
                    Ok(Some(rotated(shop, client, request, before).await?))
                }
            },
        )
        .await
        .unwrap();
        if let Some(kid) = completed {
            say(&format!(
                "rotation {request} completed with fewer than {k} writes: every earlier write was a crash point"
            ));
            kids.push(kid);
            operator = doomed;
            break;
        }
        crash_points.push(last_crash());
        // Nobody runs the operator until every activation the Secret scheduled is due: an
        // issuer told to sign with a key no verifier has would do so now.
        let due = SigningKeys::default();
        let due = secret_text(&client, &namespace, "auth-signing-keys", "keys.json")
            .await
            .unwrap()
            .map_or(due, |t| serde_json::from_str(&t).unwrap_or_default())
            .keys
            .iter()
            .map(|key| key.activates_at)
            .max()
            .unwrap_or_default();
        eventually("the scheduled activations due", || async {
            ensure!(now() > due + 1, "not yet");
            Ok(())
        })
        .await
        .unwrap();
        operator = OperatorProcess::start_with(identity, &lease, &clean).unwrap();
        wait_leader(&operator).await;
        let kid = eventually(&format!("rotation {request} completed"), || {
            rotated(&shop, &client, &request, &before)
        })
        .await
        .unwrap();
        kids.push(kid);
    }

    // Let the last key serve for a while before the load stops.
    let last = kids.last().cloned().unwrap_or_default();
    eventually("requests accepted with the last key", || {
        let count = load.accepted_with(&last);
        async move {
            ensure!(count >= 5, "{count} so far");
            Ok(())
        }
    })
    .await
    .unwrap();
    stop.store(true, Ordering::Relaxed);
    let (accepted, rejected) = load.stop().await.expect("the load thread");
    operator.kill();
    let (checks, violations) = checker.await.unwrap();
    say(&format!(
        "crashed after: {}; {} rotations; {checks} object checks; accepted per key {:?}; rejected {}",
        crash_points.join(" | "),
        kids.len() - 1,
        kids.iter()
            .map(|k| accepted.get(k).copied().unwrap_or_default())
            .collect::<Vec<_>>(),
        rejected.len()
    ));
    assert!(violations.is_empty(), "{violations:?}");
    assert!(rejected.is_empty(), "valid requests rejected: {rejected:?}");
    assert!(
        crash_points.len() >= 5,
        "a rotation makes more writes than {crash_points:?}"
    );
    for kid in &kids[1..] {
        assert!(
            accepted.get(kid).copied().unwrap_or_default() > 0,
            "no request was accepted with a token of {kid}: the load did not span the rotations"
        );
    }
    drop(shop);
    let _ = Api::<Namespace>::all(client.clone())
        .delete(&namespace, &DeleteParams::default())
        .await;
}

/// The lease of the operators the tests start (`--lease-seconds 4`).
const LEASE: Duration = Duration::from_secs(4);

/// The operator's ServiceAccount kubeconfig, pointed at `proxy` instead of the API server.
fn kubeconfig_through(proxy: &FaultProxy) -> PathBuf {
    let original = std::env::var("E2E_OPERATOR_KUBECONFIG").expect("E2E_OPERATOR_KUBECONFIG");
    let api_port = std::env::var("E2E_API_PORT").expect("E2E_API_PORT");
    let text = std::fs::read_to_string(&original)
        .expect("kubeconfig")
        .replace(
            &format!("https://127.0.0.1:{api_port}"),
            &format!("https://127.0.0.1:{}", proxy.addr.port()),
        );
    let path = PathBuf::from(format!("{original}.proxied-{}", proxy.addr.port()));
    std::fs::write(&path, text).expect("writing the kubeconfig");
    path
}

/// Waits until the Lease has expired: its holder has not renewed it for its whole duration.
async fn lease_expired(client: &Client, lease: &str) {
    let api: Api<Lease> = Api::namespaced(client.clone(), "scopegate-system");
    eventually("the lease expired", || async {
        let spec = api.get(lease).await?.spec.context("no spec")?;
        let renewed = spec.renew_time.context("never renewed")?.0.as_second();
        let duration = i64::from(spec.lease_duration_seconds.unwrap_or(0));
        ensure!(renewed + duration < now(), "renewed at {renewed}");
        Ok(())
    })
    .await
    .expect("lease expiry");
}

async fn reconciled(client: &Client, ns: &str, generation: i64) -> anyhow::Result<()> {
    scopegate_e2e::ensure_selected_pod(client, ns, "auth").await?;
    let p = Api::<AuthPolicy>::namespaced(client.clone(), ns)
        .get("auth")
        .await?;
    let status = p.status.context("no status")?;
    ensure!(
        status.observed_generation == Some(generation),
        "observed {:?}",
        status.observed_generation
    );
    let ready = condition(&status.conditions, "Ready").context("no Ready")?;
    ensure!(ready.status == "True", "{}", ready.message);
    Ok(())
}

async fn edit(client: &Client, ns: &str, path: &str) {
    let patch = serde_json::json!({"spec": {"rules": [{"paths": [path], "public": true}]}});
    Api::<AuthPolicy>::namespaced(client.clone(), ns)
        .patch("auth", &PatchParams::default(), &Patch::Merge(&patch))
        .await
        .expect("editing the policy");
}

/// A pod created through the API server comes back with the sidecar (the API server called
/// the webhook, fail-closed).
async fn injected_pod(client: &Client, ns: &str, name: &str) -> anyhow::Result<()> {
    let pod: Pod = serde_json::from_value(serde_json::json!({
        "apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": name, "labels": {"app": "auth"}},
        "spec": {"containers": [{"name": "app", "image": "example/auth"}]}
    }))?;
    let created = Api::<Pod>::namespaced(client.clone(), ns)
        .create(&PostParams::default(), &pod)
        .await?;
    let spec = created.spec.context("no spec")?;
    let injected = spec
        .init_containers
        .iter()
        .chain(std::iter::once(&spec.containers))
        .flatten()
        .any(|c| c.name == "scopegate-sidecar");
    ensure!(injected, "pod {name} admitted without the sidecar");
    Ok(())
}

#[tokio::test]
async fn an_api_outage_longer_than_the_lease_stops_the_leader_writing_but_not_serving() {
    let plane = ControlPlane::from_env().unwrap();
    let client = plane.client().await.unwrap();
    let api_port: u16 = std::env::var("E2E_API_PORT")
        .expect("E2E_API_PORT")
        .parse()
        .unwrap();
    let proxy = FaultProxy::start(([127, 0, 0, 1], api_port).into())
        .await
        .unwrap();
    let lease = format!("e2e-outage-{}", std::process::id());
    // `a` reaches the API server through the proxy and serves the webhook the API server calls.
    let through_proxy = OperatorOptions {
        webhook: true,
        kubeconfig: Some(kubeconfig_through(&proxy)),
        ..OperatorOptions::default()
    };
    let mut a = OperatorProcess::start_with("outage-a", &lease, &through_proxy).unwrap();
    wait_leader(&a).await;
    let ns = format!("e2e-outage-{}", std::process::id());
    apply_injection_namespace(&client, &ns).await.unwrap();
    webhook_serving(&client, &ns).await;
    let issuer = format!(
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
      scopes: {{read: Read}}
  upstream: {{port: 8080}}
"#
    );
    apply_yaml::<AuthPolicy>(&client, &ns, &issuer)
        .await
        .unwrap();
    eventually("Ready", || reconciled(&client, &ns, 1))
        .await
        .unwrap();

    // 1. The API server stops answering `a` for twice the lease.
    proxy.pause();
    let paused = Instant::now();
    eventually("a steps down", || async {
        ensure!(!a.is_leader(), "still leads");
        Ok(())
    })
    .await
    .unwrap();
    assert!(a.is_running(), "the operator exited:\n{}", a.log_tail());
    // It still serves the webhook from its caches: pods are admitted with the sidecar.
    injected_pod(&client, &ns, "during-outage").await.unwrap();
    lease_expired(&client, &lease).await;
    edit(&client, &ns, "/one").await;
    eventually("an outage of twice the lease", || async {
        ensure!(paused.elapsed() > 2 * LEASE, "not yet");
        Ok(())
    })
    .await
    .unwrap();
    let writes = a.counter("scopegate_operator_writes_total");
    let resumed = Instant::now();
    proxy.resume();
    // It campaigns again, leads, and catches up.
    eventually("a leads again and reconciles the edit", || async {
        ensure!(a.is_leader(), "not leading");
        reconciled(&client, &ns, 2).await
    })
    .await
    .unwrap();
    eprintln!(
        "outage: {:.1}s without the API (lease {}s); leading again and the edit made during the outage reconciled {:.1}s after the API came back",
        (resumed - paused).as_secs_f64(),
        LEASE.as_secs(),
        resumed.elapsed().as_secs_f64()
    );
    assert!(a.counter("scopegate_operator_leadership_lost_total") >= 1.0);
    assert!(
        a.counter("scopegate_operator_writes_total") > writes,
        "it writes again"
    );

    // 2. Cut off again, while another replica can reach the API server: `b` takes over, and
    // the stale leader writes nothing, neither during the outage nor after it.
    proxy.pause();
    let mut b =
        OperatorProcess::start_with("outage-b", &lease, &OperatorOptions::default()).unwrap();
    wait_leader(&b).await;
    assert!(!a.is_leader(), "two leaders");
    let writes = a.counter("scopegate_operator_writes_total");
    edit(&client, &ns, "/two").await;
    eventually("b reconciles", || reconciled(&client, &ns, 3))
        .await
        .unwrap();
    proxy.resume();
    edit(&client, &ns, "/three").await;
    eventually("b reconciles after the outage", || {
        reconciled(&client, &ns, 4)
    })
    .await
    .unwrap();
    injected_pod(&client, &ns, "after-outage").await.unwrap();
    assert!(!a.is_leader(), "a took the lease back from a live leader");
    assert_eq!(
        a.counter("scopegate_operator_writes_total"),
        writes,
        "the stale leader wrote"
    );
    assert!(a.is_running());

    // 3. The replica that lost the lease is a candidate like any other.
    b.kill();
    wait_leader(&a).await;
    edit(&client, &ns, "/four").await;
    eventually("a reconciles again", || reconciled(&client, &ns, 5))
        .await
        .unwrap();
    a.kill();
    let _ = Api::<Namespace>::all(client.clone())
        .delete(&ns, &DeleteParams::default())
        .await;
}

#[tokio::test]
async fn a_tenant_beyond_its_namespace_caps_is_refused_with_a_reason_and_others_are_not() {
    let plane = ControlPlane::from_env().unwrap();
    let client = plane.client().await.unwrap();
    let lease = format!("e2e-caps-{}", std::process::id());
    let options = OperatorOptions {
        args: [
            "--max-issuers-per-namespace",
            "1",
            "--max-clients-per-namespace",
            "2",
        ]
        .map(String::from)
        .to_vec(),
        // The namespaces inject: the pods the policies select need the webhook.
        webhook: true,
        ..OperatorOptions::default()
    };
    let operator = OperatorProcess::start_with("caps", &lease, &options).unwrap();
    wait_leader(&operator).await;
    let evil = format!("e2e-caps-evil-{}", std::process::id());
    let other = format!("e2e-caps-other-{}", std::process::id());
    for ns in [&evil, &other] {
        apply_injection_namespace(&client, ns).await.unwrap();
    }
    let api =
        |ns: &str| Api::<scopegate_crds::v1alpha1::OAuthClient>::namespaced(client.clone(), ns);

    // Two issuers in one namespace: the older is served, the newer refused, saying why.
    apply_yaml::<AuthPolicy>(&client, &evil, &issuer(&evil, "first").yaml())
        .await
        .unwrap();
    eventually("first served", || async {
        let Ready {
            reason, message, ..
        } = policy_ready(&client, &evil, "first").await?;
        ensure!(reason == "Rendered", "{reason}: {message}");
        Ok(())
    })
    .await
    .unwrap();
    apply_yaml::<AuthPolicy>(&client, &evil, &issuer(&evil, "second").yaml())
        .await
        .unwrap();
    eventually("second refused", || async {
        let Ready {
            reason, message, ..
        } = policy_ready(&client, &evil, "second").await?;
        ensure!(reason == "NamespaceIssuerLimit", "{reason}: {message}");
        ensure!(message.contains("at most 1 per namespace"), "{message}");
        Ok(())
    })
    .await
    .unwrap();
    assert!(
        secret_text(&client, &evil, "second-signing-keys", "keys.json")
            .await
            .unwrap()
            .is_none(),
        "nothing is made for a refused issuer"
    );
    // Another tenant's issuer is not affected.
    apply_yaml::<AuthPolicy>(&client, &other, &issuer(&other, "first").yaml())
        .await
        .unwrap();

    // Three clients: the two oldest are registered, the third refused and in no registry.
    for name in ["c1", "c2", "c3"] {
        apply_yaml::<scopegate_crds::v1alpha1::OAuthClient>(
            &client,
            &evil,
            &oauth_client(name, "name: first", ""),
        )
        .await
        .unwrap();
    }
    apply_yaml::<scopegate_crds::v1alpha1::OAuthClient>(
        &client,
        &other,
        &oauth_client("c1", "name: first", ""),
    )
    .await
    .unwrap();
    let registered = |ns: String| {
        let client = client.clone();
        async move {
            let registry = client_registry(&client, &ns, "first").await?;
            Ok::<BTreeSet<String>, anyhow::Error>(
                registry.clients.into_iter().map(|c| c.client_id).collect(),
            )
        }
    };
    eventually("c3 refused, c1 and c2 registered", || async {
        let Ready {
            reason, message, ..
        } = client_ready(&client, &evil, "c3").await?;
        ensure!(reason == "NamespaceClientLimit", "{reason}: {message}");
        let ids = registered(evil.clone()).await?;
        ensure!(
            ids == BTreeSet::from([format!("{evil}.c1"), format!("{evil}.c2")]),
            "{ids:?}"
        );
        let Ready { reason, .. } = client_ready(&client, &other, "c1").await?;
        ensure!(
            reason == "Registered",
            "the other tenant's client: {reason}"
        );
        Ok(())
    })
    .await
    .unwrap();

    // Room made: the refused ones are served.
    api(&evil)
        .delete("c1", &DeleteParams::default())
        .await
        .unwrap();
    eventually("c3 registered once c1 is gone", || async {
        let Ready {
            reason, message, ..
        } = client_ready(&client, &evil, "c3").await?;
        ensure!(reason == "Registered", "{reason}: {message}");
        Ok(())
    })
    .await
    .unwrap();
    Api::<AuthPolicy>::namespaced(client.clone(), &evil)
        .delete("first", &DeleteParams::default())
        .await
        .unwrap();
    eventually("second served once first is gone", || async {
        let Ready {
            reason, message, ..
        } = policy_ready(&client, &evil, "second").await?;
        ensure!(reason == "Rendered", "{reason}: {message}");
        Ok(())
    })
    .await
    .unwrap();
    drop(operator);
    for ns in [&evil, &other] {
        let _ = Api::<Namespace>::all(client.clone())
            .delete(ns, &DeleteParams::default())
            .await;
    }
}
