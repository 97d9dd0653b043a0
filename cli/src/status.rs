//! `status`: one screen per namespace: its policies (issuer, readiness, enforcement, active
//! key and next rotation), their keys, the OAuthClients, and every pod with the policy that
//! selects it and whether it carries the sidecar.

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::{Namespace, Pod};
use kube::Api;
use kube::core::{Selector, SelectorExt as _};
use scopegate_core::names::INJECTION_LABEL;
use scopegate_core::policy::rule_label;
use scopegate_crds::v1alpha1::{AuthPolicy, Enforcement, OAuthClient};
use scopegate_operator::names::SIDECAR_NAME;
use serde::Serialize;

use crate::Global;
use crate::output;

/// `status`.
#[derive(clap::Args, Debug)]
pub struct Args {}

#[derive(Serialize, Debug)]
#[serde(rename_all = "camelCase")]
struct Report {
    namespace: String,
    injection: bool,
    policies: Vec<PolicyRow>,
    clients: Vec<ClientRow>,
    pods: Vec<PodRow>,
}

#[derive(Serialize, Debug)]
#[serde(rename_all = "camelCase")]
struct PolicyRow {
    name: String,
    issuer: String,
    ready: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    reason: Option<String>,
    enforcement: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    active_kid: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    next_rotation: Option<String>,
    keys: Vec<KeyRow>,
    selected_pods: i32,
    injected_pods: i32,
}

#[derive(Serialize, Debug)]
#[serde(rename_all = "camelCase")]
struct KeyRow {
    kid: String,
    state: String,
    activates: String,
    signs_until: String,
    removed_after: String,
}

#[derive(Serialize, Debug)]
#[serde(rename_all = "camelCase")]
struct ClientRow {
    name: String,
    issuer: String,
    ready: String,
    grants: Vec<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    client_id: Option<String>,
}

#[derive(Serialize, Debug)]
#[serde(rename_all = "camelCase")]
struct PodRow {
    name: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    policy: Option<String>,
    sidecar: bool,
    phase: String,
}

fn condition(
    conditions: &[k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition],
    kind: &str,
) -> (String, Option<String>) {
    conditions
        .iter()
        .find(|c| c.type_ == kind)
        .map_or(("Unknown".into(), None), |c| {
            (c.status.clone(), Some(c.reason.clone()))
        })
}

fn time(t: &k8s_openapi::apimachinery::pkg::apis::meta::v1::Time, now: i64) -> String {
    output::when(t.0.as_second(), now)
}

/// Runs `status`.
pub async fn run(global: &Global, _args: Args) -> anyhow::Result<()> {
    let cluster = crate::cluster::connect(global).await?;
    let ns = cluster.namespace.clone();
    let client = cluster.client.clone();
    let now = output::unix_now();
    let namespace = Api::<Namespace>::all(client.clone())
        .get_opt(&ns)
        .await
        .ok()
        .flatten();
    let injection = namespace
        .and_then(|n| n.metadata.labels)
        .and_then(|l| l.get(INJECTION_LABEL).cloned())
        .as_deref()
        == Some("enabled");
    let policies = Api::<AuthPolicy>::namespaced(client.clone(), &ns)
        .list(&Default::default())
        .await?
        .items;
    let clients = Api::<OAuthClient>::namespaced(client.clone(), &ns)
        .list(&Default::default())
        .await?
        .items;
    let pods = Api::<Pod>::namespaced(client.clone(), &ns)
        .list(&Default::default())
        .await?
        .items;
    let (pod_rows, counts) = pod_rows(&policies, &pods);
    let report = Report {
        injection,
        policies: policies
            .iter()
            .map(|p| policy_row(p, &ns, &counts, now))
            .collect(),
        clients: clients.iter().map(|c| client_row(c, &ns)).collect(),
        pods: pod_rows,
        namespace: ns,
    };
    output::print(global.output, "NamespaceStatus", &report, || table(&report))
}

/// A row per pod with the first policy that selects it and whether it carries the sidecar,
/// and per policy the pods it selects and how many of them carry the sidecar.
fn pod_rows(policies: &[AuthPolicy], pods: &[Pod]) -> (Vec<PodRow>, BTreeMap<String, (i32, i32)>) {
    let selectors: Vec<(String, Option<Selector>)> = policies
        .iter()
        .map(|p| {
            (
                p.metadata.name.clone().unwrap_or_default(),
                Selector::try_from(p.spec.selector.clone()).ok(),
            )
        })
        .collect();
    let mut pod_rows = Vec::new();
    let mut counts: BTreeMap<String, (i32, i32)> = BTreeMap::new();
    for pod in pods {
        let labels = pod.metadata.labels.clone().unwrap_or_default();
        let policy = selectors
            .iter()
            .find(|(_, s)| s.as_ref().is_some_and(|s| s.matches(&labels)))
            .map(|(n, _)| n.clone());
        let sidecar = pod.spec.as_ref().is_some_and(|s| {
            s.containers
                .iter()
                .chain(s.init_containers.iter().flatten())
                .any(|c| c.name == SIDECAR_NAME)
        });
        if let Some(p) = &policy {
            let entry = counts.entry(p.clone()).or_default();
            entry.0 += 1;
            entry.1 += i32::from(sidecar);
        }
        pod_rows.push(PodRow {
            name: pod.metadata.name.clone().unwrap_or_default(),
            policy,
            sidecar,
            phase: pod
                .status
                .as_ref()
                .and_then(|s| s.phase.clone())
                .unwrap_or_default(),
        });
    }
    (pod_rows, counts)
}

/// A policy: its issuer, readiness, enforcement, keys and pods (`counts`: selected and
/// injected pods per policy).
fn policy_row(
    p: &AuthPolicy,
    ns: &str,
    counts: &BTreeMap<String, (i32, i32)>,
    now: i64,
) -> PolicyRow {
    let name = p.metadata.name.clone().unwrap_or_default();
    let status = p.status.clone().unwrap_or_default();
    let (ready, reason) = condition(&status.conditions, "Ready");
    let (selected, injected) = counts.get(&name).copied().unwrap_or_default();
    PolicyRow {
        issuer: issuer_text(p, ns),
        ready,
        reason,
        enforcement: enforcement(p),
        active_kid: status.active_kid.clone(),
        next_rotation: status.next_rotation.as_ref().map(|t| time(t, now)),
        keys: status
            .keys
            .iter()
            .map(|k| KeyRow {
                kid: k.kid.clone(),
                state: k.state.clone(),
                activates: time(&k.activates_at, now),
                signs_until: time(&k.signs_until, now),
                removed_after: time(&k.removed_after, now),
            })
            .collect(),
        selected_pods: selected,
        injected_pods: injected,
        name,
    }
}

/// The issuer a policy trusts: `self URL`, `policyRef NS/NAME` or `external ISS`.
fn issuer_text(p: &AuthPolicy, ns: &str) -> String {
    let issuer = &p.spec.issuer;
    if let Some(own) = &issuer.self_ {
        format!("self {}", own.url)
    } else if let Some(r) = &issuer.policy_ref {
        format!(
            "policyRef {}/{}",
            r.namespace.as_deref().unwrap_or(ns),
            r.name
        )
    } else if let Some(e) = &issuer.external {
        format!("external {}", e.issuer)
    } else {
        "-".into()
    }
}

/// An OAuthClient: its issuer, readiness, grants and client ID.
fn client_row(c: &OAuthClient, ns: &str) -> ClientRow {
    let status = c.status.clone().unwrap_or_default();
    let (ready, _) = condition(&status.conditions, "Ready");
    ClientRow {
        name: c.metadata.name.clone().unwrap_or_default(),
        issuer: format!(
            "{}/{}",
            c.spec.issuer_ref.namespace.as_deref().unwrap_or(ns),
            c.spec.issuer_ref.name
        ),
        ready,
        grants: c
            .spec
            .grant_types
            .iter()
            // As the spec spells them (client_credentials), not as Rust does.
            .filter_map(|g| {
                serde_json::to_value(g)
                    .ok()
                    .and_then(|v| v.as_str().map(str::to_owned))
            })
            .collect(),
        client_id: status.client_id.clone(),
    }
}

/// How the policy's sidecars act on refusals: Enforce, DryRun, or which rules differ.
fn enforcement(policy: &AuthPolicy) -> String {
    let spec = &policy.spec;
    let differing: Vec<String> = spec
        .rules
        .iter()
        .enumerate()
        .filter(|(_, r)| !r.public && r.enforcement.is_some_and(|e| e != spec.enforcement))
        .map(|(i, r)| rule_label(r.name.as_deref(), Some(i)))
        .collect();
    let (mode, other) = match spec.enforcement {
        Enforcement::Enforce => ("Enforce", "DryRun"),
        Enforcement::DryRun => ("DryRun", "Enforce"),
    };
    if differing.is_empty() {
        mode.to_owned()
    } else {
        format!("{mode} ({other}: {})", differing.join(", "))
    }
}

/// The namespace for people: injection, then tables of policies, their keys, clients and pods.
fn table(r: &Report) -> String {
    let mut out = format!(
        "NAMESPACE {}   injection {}\n\n",
        r.namespace,
        if r.injection {
            format!("enabled ({INJECTION_LABEL}=enabled)")
        } else {
            format!("OFF: new pods get no sidecar (label the namespace {INJECTION_LABEL}=enabled)")
        }
    );
    out.push_str(&policies_table(&r.policies));
    for p in r.policies.iter().filter(|p| !p.keys.is_empty()) {
        out.push_str(&format!("\nKEYS OF {}\n", p.name));
        out.push_str(&keys_table(&p.keys));
    }
    out.push('\n');
    out.push_str(&clients_table(&r.clients));
    out.push('\n');
    out.push_str(&pods_table(&r.pods));
    out
}

/// A header row of column names.
fn header(names: &[&str]) -> Vec<String> {
    names.iter().map(|&n| n.to_owned()).collect()
}

/// Policies: issuer, readiness, enforcement, active key, next rotation, pods with sidecar.
fn policies_table(policies: &[PolicyRow]) -> String {
    let mut rows = vec![header(&[
        "POLICY",
        "ISSUER",
        "READY",
        "ENFORCEMENT",
        "ACTIVE KEY",
        "NEXT ROTATION",
        "PODS WITH SIDECAR",
    ])];
    for p in policies {
        rows.push(vec![
            p.name.clone(),
            p.issuer.clone(),
            match &p.reason {
                Some(reason) if p.ready != "True" => format!("{} ({reason})", p.ready),
                _ => p.ready.clone(),
            },
            p.enforcement.clone(),
            p.active_kid.clone().unwrap_or_else(|| "-".into()),
            p.next_rotation.clone().unwrap_or_else(|| "-".into()),
            format!("{}/{}", p.injected_pods, p.selected_pods),
        ]);
    }
    output::columns(&rows)
}

/// A policy's signing keys and their schedule.
fn keys_table(keys: &[KeyRow]) -> String {
    let mut rows = vec![header(&[
        "KID",
        "STATE",
        "ACTIVATES",
        "SIGNS UNTIL",
        "REMOVED AFTER",
    ])];
    for k in keys {
        rows.push(vec![
            k.kid.clone(),
            k.state.clone(),
            k.activates.clone(),
            k.signs_until.clone(),
            k.removed_after.clone(),
        ]);
    }
    output::columns(&rows)
}

/// OAuthClients: issuer, readiness, grants, client ID.
fn clients_table(clients: &[ClientRow]) -> String {
    let mut rows = vec![header(&[
        "CLIENT",
        "ISSUER",
        "READY",
        "GRANTS",
        "CLIENT ID",
    ])];
    for c in clients {
        rows.push(vec![
            c.name.clone(),
            c.issuer.clone(),
            c.ready.clone(),
            c.grants.join(","),
            c.client_id.clone().unwrap_or_else(|| "-".into()),
        ]);
    }
    output::columns(&rows)
}

/// Pods: the policy that selects each, and whether its sidecar is there.
fn pods_table(pods: &[PodRow]) -> String {
    let mut rows = vec![header(&["POD", "POLICY", "SIDECAR", "PHASE"])];
    for p in pods {
        rows.push(vec![
            p.name.clone(),
            p.policy.clone().unwrap_or_else(|| "-".into()),
            match (&p.policy, p.sidecar) {
                (_, true) => "yes".into(),
                (Some(_), false) => "MISSING: restart the pod".into(),
                (None, false) => "-".into(),
            },
            p.phase.clone(),
        ]);
    }
    output::columns(&rows)
}
