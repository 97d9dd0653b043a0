//! Benchmark (not a test): how the operator copes with 1,000 AuthPolicies and 1,000
//! OAuthClients on the local control plane. Run by `e2e/bench/operator-scale.sh`, which starts
//! a fresh control plane and a release-built operator and passes its pid.
//!
//! Reports: time from the first create until every object is Ready, the operator's peak RSS,
//! and CPU per no-op reconcile (label touches that change nothing the operator renders, with a
//! check that they caused no write).

use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};
use futures::{StreamExt, TryStreamExt};
use k8s_openapi::api::core::v1::Namespace;
use kube::api::{Api, ListParams, Patch, PatchParams, PostParams};
use scopegate_crds::v1alpha1::{AuthPolicy, OAuthClient};
use scopegate_e2e::{ControlPlane, condition};

const NAMESPACES: usize = 100;
const VERIFIERS_PER_NAMESPACE: usize = 9;
const CLIENTS_PER_NAMESPACE: usize = 10;
const CREATE_CONCURRENCY: usize = 16;
const LABEL: &str = "scopegate.dev/bench=scale";

fn proc_stat(pid: u32) -> anyhow::Result<(f64, u64, u64)> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"))?;
    let fields: Vec<&str> = stat
        .rsplit_once(')')
        .context("stat")?
        .1
        .split_whitespace()
        .collect();
    let ticks: f64 = fields[11].parse::<f64>()? + fields[12].parse::<f64>()?;
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    let kib = |key: &str| -> u64 {
        status
            .lines()
            .find(|l| l.starts_with(key))
            .and_then(|l| l.split_whitespace().nth(1)?.parse().ok())
            .unwrap_or(0)
    };
    Ok((ticks / 100.0, kib("VmRSS:"), kib("VmHWM:")))
}

fn metric(admin: &str, name: &str) -> anyhow::Result<f64> {
    use std::io::{Read, Write};
    let mut stream = std::net::TcpStream::connect(admin)?;
    stream.write_all(b"GET /metrics HTTP/1.0\r\n\r\n")?;
    let mut body = String::new();
    stream.read_to_string(&mut body)?;
    Ok(body
        .lines()
        .filter(|l| l.starts_with(name))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum())
}

async fn count_ready(client: &kube::Client) -> anyhow::Result<(usize, usize)> {
    let lp = ListParams::default().labels(LABEL);
    let policies = Api::<AuthPolicy>::all(client.clone()).list(&lp).await?;
    let clients = Api::<OAuthClient>::all(client.clone()).list(&lp).await?;
    let ready = |c: Option<&Vec<_>>| {
        c.and_then(|c| condition(c, "Ready"))
            .is_some_and(|r| r.status == "True")
    };
    Ok((
        policies
            .items
            .iter()
            .filter(|p| ready(p.status.as_ref().map(|s| &s.conditions)))
            .count(),
        clients
            .items
            .iter()
            .filter(|c| ready(c.status.as_ref().map(|s| &s.conditions)))
            .count(),
    ))
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let pid: u32 = std::env::var("OPERATOR_PID")
        .context("OPERATOR_PID")?
        .parse()?;
    let admin = std::env::var("OPERATOR_ADMIN").context("OPERATOR_ADMIN")?;
    let client = ControlPlane::from_env()?.client().await?;
    let policies_total = NAMESPACES * (1 + VERIFIERS_PER_NAMESPACE);
    let clients_total = NAMESPACES * CLIENTS_PER_NAMESPACE;

    let started = Instant::now();
    let (cpu_before, _, _) = proc_stat(pid)?;
    futures::stream::iter(0..NAMESPACES)
        .map(|n| {
            let client = client.clone();
            async move { create_namespace(&client, n).await }
        })
        .buffer_unordered(CREATE_CONCURRENCY)
        .try_collect::<Vec<()>>()
        .await?;
    let created = started.elapsed();
    println!(
        "created {policies_total} AuthPolicies and {clients_total} OAuthClients in {:.1}s",
        created.as_secs_f64()
    );
    wait_all_ready(&client, pid, started, policies_total, clients_total).await?;
    let all_ready = started.elapsed();
    let (cpu_after, _, hwm) = proc_stat(pid)?;
    let noop = noop_reconciles(&client, &admin, pid, policies_total + clients_total).await?;

    println!();
    println!(
        "all {policies_total} AuthPolicies and {clients_total} OAuthClients Ready in {:.1}s (creates took {:.1}s)",
        all_ready.as_secs_f64(),
        created.as_secs_f64()
    );
    println!(
        "operator CPU until all Ready: {:.1}s",
        cpu_after - cpu_before
    );
    println!(
        "operator peak RSS (VmHWM): {:.1} MiB",
        hwm.max(noop.hwm) as f64 / 1024.0
    );
    println!(
        "no-op reconciles: {} in {:.2}s CPU = {:.3} ms CPU each; writes during them: {}",
        noop.reconciles,
        noop.cpu,
        noop.cpu * 1000.0 / noop.reconciles.max(1.0),
        noop.writes
    );
    if noop.writes > 0.0 {
        bail!("the touches were not no-ops: {} writes", noop.writes);
    }
    Ok(())
}

/// Polls once a second, printing progress, until every object is Ready (600 s at most).
async fn wait_all_ready(
    client: &kube::Client,
    pid: u32,
    started: Instant,
    policies_total: usize,
    clients_total: usize,
) -> anyhow::Result<()> {
    loop {
        let (policies, clients) = count_ready(client).await?;
        let (_, rss, _) = proc_stat(pid)?;
        println!(
            "  {:>5.1}s: {policies}/{policies_total} AuthPolicies and {clients}/{clients_total} OAuthClients Ready, operator RSS {} MiB",
            started.elapsed().as_secs_f64(),
            rss / 1024
        );
        if policies == policies_total && clients == clients_total {
            return Ok(());
        }
        if started.elapsed() > Duration::from_secs(600) {
            bail!("not all Ready after 600s");
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
}

/// What reconciling unchanged objects cost the operator.
struct NoopRun {
    reconciles: f64,
    writes: f64,
    /// CPU seconds.
    cpu: f64,
    /// VmHWM after the run, KiB.
    hwm: u64,
}

/// Touches a label on every object (nothing the operator renders changes) and measures the
/// reconciles that follow until they stop.
async fn noop_reconciles(
    client: &kube::Client,
    admin: &str,
    pid: u32,
    objects: usize,
) -> anyhow::Result<NoopRun> {
    tokio::time::sleep(Duration::from_secs(5)).await;
    let reconciles_before = metric(admin, "scopegate_operator_reconciles_total")?;
    let writes_before = metric(admin, "scopegate_operator_writes_total")?;
    let (cpu_before, _, _) = proc_stat(pid)?;
    touch_all(client).await?;
    let target = reconciles_before + objects as f64;
    let touch_started = Instant::now();
    while metric(admin, "scopegate_operator_reconciles_total")? < target {
        if touch_started.elapsed() > Duration::from_secs(300) {
            bail!("no-op reconciles did not complete");
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    // Let trailing reconciles (dependents, issuers of touched clients) finish.
    let mut last = 0.0;
    loop {
        tokio::time::sleep(Duration::from_secs(2)).await;
        let now = metric(admin, "scopegate_operator_reconciles_total")?;
        if now == last {
            break;
        }
        last = now;
    }
    let (cpu_after, _, hwm) = proc_stat(pid)?;
    Ok(NoopRun {
        reconciles: last - reconciles_before,
        writes: metric(admin, "scopegate_operator_writes_total")? - writes_before,
        cpu: cpu_after - cpu_before,
        hwm,
    })
}

async fn create_namespace(client: &kube::Client, n: usize) -> anyhow::Result<()> {
    let ns = format!("scale-{n}");
    let namespace: Namespace = serde_json::from_value(
        serde_json::json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": ns}}),
    )?;
    let _ = Api::<Namespace>::all(client.clone())
        .create(&PostParams::default(), &namespace)
        .await;
    let labels = serde_json::json!({"scopegate.dev/bench": "scale"});
    let policies: Api<AuthPolicy> = Api::namespaced(client.clone(), &ns);
    let issuer: AuthPolicy = serde_json::from_value(serde_json::json!({
        "apiVersion": "scopegate.dev/v1alpha1", "kind": "AuthPolicy",
        "metadata": {"name": "auth", "labels": labels},
        "spec": {
            "selector": {"matchLabels": {"app": "auth"}},
            "issuer": {"self": {"url": format!("https://auth.{ns}.svc"), "service": {"name": "auth", "port": 443}, "scopes": {"read": "Read", "write": "Write"}}},
            "upstream": {"port": 8080},
        }
    }))?;
    policies.create(&PostParams::default(), &issuer).await?;
    for v in 0..VERIFIERS_PER_NAMESPACE {
        let verifier: AuthPolicy = serde_json::from_value(serde_json::json!({
            "apiVersion": "scopegate.dev/v1alpha1", "kind": "AuthPolicy",
            "metadata": {"name": format!("svc-{v}"), "labels": labels},
            "spec": {
                "selector": {"matchLabels": {"app": format!("svc-{v}")}},
                "issuer": {"policyRef": {"name": "auth"}},
                "audiences": [format!("https://svc-{v}.{ns}.svc")],
                "upstream": {"port": 8080},
                "rules": [{"paths": ["/read/**"], "require": ["read"]}, {"paths": ["/write/**"], "require": ["write"]}],
            }
        }))?;
        policies.create(&PostParams::default(), &verifier).await?;
    }
    let clients: Api<OAuthClient> = Api::namespaced(client.clone(), &ns);
    for c in 0..CLIENTS_PER_NAMESPACE {
        let oauth_client: OAuthClient = serde_json::from_value(serde_json::json!({
            "apiVersion": "scopegate.dev/v1alpha1", "kind": "OAuthClient",
            "metadata": {"name": format!("client-{c}"), "labels": labels},
            "spec": {"issuerRef": {"name": "auth"}, "grantTypes": ["client_credentials"], "scopes": ["read"]}
        }))?;
        clients
            .create(&PostParams::default(), &oauth_client)
            .await?;
    }
    Ok(())
}

async fn touch_all(client: &kube::Client) -> anyhow::Result<()> {
    let lp = ListParams::default().labels(LABEL);
    let patch = serde_json::json!({"metadata": {"labels": {"scopegate.dev/touched": "1"}}});
    let policies = Api::<AuthPolicy>::all(client.clone()).list(&lp).await?;
    let clients = Api::<OAuthClient>::all(client.clone()).list(&lp).await?;
    let mut work = Vec::new();
    for p in policies.items {
        let ns = p.metadata.namespace.clone().unwrap_or_default();
        let name = p.metadata.name.clone().unwrap_or_default();
        work.push((true, ns, name));
    }
    for c in clients.items {
        work.push((
            false,
            c.metadata.namespace.clone().unwrap_or_default(),
            c.metadata.name.clone().unwrap_or_default(),
        ));
    }
    futures::stream::iter(work)
        .map(|(is_policy, ns, name)| {
            let client = client.clone();
            let patch = patch.clone();
            async move {
                if is_policy {
                    Api::<AuthPolicy>::namespaced(client, &ns)
                        .patch(&name, &PatchParams::default(), &Patch::Merge(&patch))
                        .await
                        .map(|_| ())
                } else {
                    Api::<OAuthClient>::namespaced(client, &ns)
                        .patch(&name, &PatchParams::default(), &Patch::Merge(&patch))
                        .await
                        .map(|_| ())
                }
            }
        })
        .buffer_unordered(CREATE_CONCURRENCY)
        .try_collect::<Vec<()>>()
        .await?;
    Ok(())
}
