//! `explain` tells the truth: the sidecar's hostile-request table (the same cases, config and
//! keys as sidecar/tests/hostile.rs) is sent to a real sidecar on loopback and given to the
//! `kubectl-scopegate` binary; status, `WWW-Authenticate` and whether the app is reached
//! must be the same, and the table's expectation, for every case.

#![allow(clippy::unwrap_used)] // test code: a panic is the failure report

#[path = "../../sidecar/tests/support/mod.rs"]
mod support;

use std::process::Command;
use std::sync::atomic::Ordering;
use std::time::Duration;

use serde_json::Value;
use support::hostile_table::{Case, Table, hostile_table, trap};
use support::*;

const CLI: &str = env!("CARGO_BIN_EXE_kubectl-scopegate");

/// What `explain -o json` says a case gets: status, challenge, forwarded; and in DryRun the
/// status and challenge it would get enforced.
fn explained(config: &std::path::Path, case: &Case) -> (Answer, Option<(u16, Option<String>)>) {
    let mut cmd = Command::new(CLI);
    cmd.arg("explain")
        .arg("--config")
        .arg(config)
        .args(["-o", "json", case.method, &case.target]);
    for (name, value) in &case.headers {
        cmd.arg("-H").arg(format!("{name}: {value}"));
    }
    let out = cmd.output().unwrap();
    assert!(
        out.status.success(),
        "{}: explain failed: {}",
        case.name,
        String::from_utf8_lossy(&out.stderr)
    );
    let report: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(report["apiVersion"], "cli.scopegate.dev/v1");
    assert_eq!(report["kind"], "Explanation");
    let decision = &report["decision"];
    let answer = |d: &Value| {
        (
            u16::try_from(d["status"].as_u64().unwrap()).unwrap(),
            d["wwwAuthenticate"].as_str().map(str::to_owned),
        )
    };
    let (status, challenge) = answer(decision);
    let would = decision.get("wouldRefuse").map(answer);
    (
        (status, challenge, decision["forwarded"].as_bool().unwrap()),
        would,
    )
}

/// `explain`'s text report on `config` for `args`.
fn explain_text(config: &std::path::Path, args: &[&str]) -> String {
    let out = Command::new(CLI)
        .arg("explain")
        .arg("--config")
        .arg(config)
        .args(args)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

/// Status, `WWW-Authenticate`, whether the app was reached.
type Answer = (u16, Option<String>, bool);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn explain_agrees_with_the_sidecar_on_the_hostile_table() {
    agree_on_the_table(false).await;
}

/// In DryRun explain says what the sidecar does (forward) and what it would do enforced (the
/// table's answer).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn explain_agrees_with_the_sidecar_on_the_hostile_table_in_dry_run() {
    agree_on_the_table(true).await;
}

async fn agree_on_the_table(dry_run: bool) {
    let upstream = Upstream::start(Duration::from_secs(0)).await;
    let dir = TempDir::new();
    let (trap_addr, trap_hits) = trap().await;
    let Table { mut config, cases } = hostile_table(upstream.addr.port(), trap_addr);
    if dry_run {
        config["enforcement"] = serde_json::json!("dryRun");
    }
    let sidecar = start_sidecar(&dir, &config).await;
    let config_path = dir.join("config.json");
    assert!(cases.len() >= 30, "{} cases", cases.len());

    let mut failures = Vec::new();
    let mut refused = 0;
    for case in &cases {
        let before = upstream.hits();
        let response = raw(sidecar.proxy_addr(), &case.request()).await;
        let by_sidecar = (
            response.status,
            response.header("www-authenticate").map(str::to_owned),
            upstream.hits() > before,
        );
        let path = config_path.clone();
        let c = Case {
            name: case.name.clone(),
            method: case.method,
            target: case.target.clone(),
            headers: case.headers.clone(),
            status: case.status,
            challenge: case.challenge.clone(),
        };
        let (by_cli, would) = tokio::task::spawn_blocking(move || explained(&path, &c))
            .await
            .unwrap();
        let table = (case.status, case.challenge.clone(), case.status == 200);
        // In DryRun only a refused path spelling is refused; the rest is forwarded, and
        // explain names the table's answer as the one it would get.
        let path_refused = case.status == 400 && case.challenge.is_none();
        let (expected, expected_would) = if dry_run && !path_refused && case.status != 200 {
            (
                (200, None, true),
                Some((case.status, case.challenge.clone())),
            )
        } else {
            (table, None)
        };
        if by_cli != by_sidecar || by_cli != expected || would != expected_would {
            failures.push(format!(
                "{}: sidecar {by_sidecar:?}, explain {by_cli:?} (would refuse {would:?}), want {expected:?} (would refuse {expected_would:?})",
                case.name
            ));
        }
        if !by_cli.2 || would.is_some() {
            refused += 1;
        }
    }
    assert!(
        failures.is_empty(),
        "{} of {} cases disagree:\n{}",
        failures.len(),
        cases.len(),
        failures.join("\n")
    );
    assert!(
        refused > 20,
        "the table refuses most of its cases ({refused})"
    );
    assert_eq!(
        trap_hits.load(Ordering::SeqCst),
        0,
        "a jku/x5u URL was fetched"
    );
    eprintln!(
        "{} cases (DryRun: {dry_run}): explain and the sidecar agree",
        cases.len()
    );
    sidecar.shutdown().await;
}

/// The table output names the rule, the failed check and the answer.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn explain_names_the_rule_the_check_and_the_answer() {
    let dir = TempDir::new();
    let (es, _) = SigningKey::es256();
    let config = config(
        9,
        serde_json::json!({"keys": [es.jwk("k1", Some("ES256"))]}),
    );
    let path = dir.join("config.json");
    write_atomic(&path, &config.to_string());
    let mut expired = claims("read:items");
    expired["exp"] = serde_json::json!(now() - 3600);
    let expired = mint(&es, &header("ES256", "k1"), &expired);
    let reader = mint(&es, &header("ES256", "k1"), &claims("read:items"));
    let run = |args: &[&str]| explain_text(&path, args);
    let text = run(&["GET", "/items/%2e%2e/admin/x", "--token", &reader]);
    for want in [
        "/items/%2e%2e/admin/x -> /admin/x",
        "\"admin\" (rules[1])",
        "require [admin]",
        "token has read:items: not enough",
        "DECISION  403 insufficient_scope",
        "WWW-Authenticate: Bearer realm=\"scopegate\", error=\"insufficient_scope\", scope=\"admin\"",
    ] {
        assert!(text.contains(want), "missing {want:?} in:\n{text}");
    }
    let text = run(&["GET", "/items/1", "--token", &expired]);
    assert!(text.contains("INVALID: expired"), "{text}");
    assert!(text.contains("DECISION  401 invalid_token"), "{text}");
    let text = run(&["GET", "/items/1", "--scopes", "read:items"]);
    assert!(
        text.contains("DECISION  forwarded to the app (allowed)"),
        "{text}"
    );
    let text = run(&["GET", "/nowhere", "--scopes", "read:items"]);
    assert!(text.contains("none matches: defaultAction deny"), "{text}");
    assert!(text.contains("DECISION  403 forbidden"), "{text}");
    let text = run(&["GET", "/items%2F..%2Fadmin"]);
    assert!(
        text.contains("refused: ambiguous percent-encoding"),
        "{text}"
    );
    assert!(text.contains("DECISION  400 bad_path"), "{text}");

    // The same policy in DryRun says so, and what enforcing would answer.
    let mut dry = config.clone();
    dry["enforcement"] = serde_json::json!("dryRun");
    dry["rules"][0]["enforcement"] = serde_json::json!("enforce");
    write_atomic(&path, &dry.to_string());
    let text = run(&["GET", "/admin/x", "--token", &reader]);
    for want in [
        "enforcement DryRun",
        "in DryRun: admin, any, me, (default)",
        "this rule is in DryRun",
        "DECISION  forwarded to the app (DryRun: enforced, it would be 403 insufficient_scope",
        "x-auth-subject: alice",
    ] {
        assert!(text.contains(want), "missing {want:?} in:\n{text}");
    }
    // A rule that keeps enforcing, and a path refusal, are answered as before.
    let text = run(&["GET", "/items/1", "--token", &expired]);
    assert!(text.contains("DECISION  401 invalid_token"), "{text}");
    let text = run(&["GET", "/admin%2Fx"]);
    assert!(text.contains("DECISION  400 bad_path"), "{text}");
    assert!(text.contains("refused in DryRun too"), "{text}");

    // A stricter rule tried under an enforced one: the enforced rule still decides, as in
    // the sidecar (sidecar/tests/dry_run.rs).
    let mut tried = config.clone();
    tried["rules"]
        .as_array_mut()
        .unwrap()
        .push(serde_json::json!({
            "name": "items-admin", "paths": ["/items/admin/**"], "enforcement": "dryRun",
            "action": {"type": "requireAll", "scopes": ["admin"]}
        }));
    write_atomic(&path, &tried.to_string());
    let text = run(&["GET", "/items/admin/x"]);
    for want in [
        "items-admin is in DryRun: the enforced rules decide as if it did not exist, and items refuses",
        "DECISION  401 no_credentials",
    ] {
        assert!(text.contains(want), "missing {want:?} in:\n{text}");
    }
    let text = run(&["GET", "/items/admin/x", "--scopes", "admin"]);
    assert!(text.contains("DECISION  403 insufficient_scope"), "{text}");
    let text = run(&["GET", "/items/admin/x", "--scopes", "read:items"]);
    assert!(
        text.contains("DECISION  forwarded to the app (DryRun: enforced, it would be 403"),
        "{text}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn explain_judges_a_when_condition_as_the_sidecar_does() {
    let dir = TempDir::new();
    let upstream = Upstream::start(Duration::from_secs(0)).await;
    let (es, _) = SigningKey::es256();
    let mut config = config(
        upstream.addr.port(),
        serde_json::json!({"keys": [es.jwk("k1", Some("ES256"))]}),
    );
    config["rules"]
        .as_array_mut()
        .unwrap()
        .push(serde_json::json!({
            "name": "admins", "paths": ["/ops/**"], "action": {"type": "authenticated"},
            "when": "\"admins\" in claims.groups"
        }));
    let path = dir.join("config.json");
    write_atomic(&path, &config.to_string());
    let sidecar = start_sidecar(&dir, &config).await;
    let token = |groups: Value| {
        let mut claims = claims("read:items");
        claims["groups"] = groups;
        mint(&es, &header("ES256", "k1"), &claims)
    };
    let run = |args: &[&str]| explain_text(&path, args);
    for (groups, status, wants) in [
        (
            serde_json::json!(["admins"]),
            200,
            [
                "the rule's when condition: true",
                "DECISION  forwarded to the app (allowed)",
            ],
        ),
        (
            serde_json::json!(["staff"]),
            403,
            [
                "the rule's when condition: false",
                "DECISION  403 condition_not_met",
            ],
        ),
        (
            serde_json::json!("admins"),
            403,
            [
                "the rule's when condition: the condition failed",
                "DECISION  403 condition_not_met",
            ],
        ),
    ] {
        let token = token(groups.clone());
        let text = run(&["GET", "/ops/x", "--token", &token]);
        for want in wants {
            assert!(
                text.contains(want),
                "{groups}: missing {want:?} in:\n{text}"
            );
        }
        let answered = get_with_token(sidecar.proxy_addr(), "/ops/x", &token).await;
        assert_eq!(answered.status, status, "{groups}: the sidecar agrees");
    }
    let text = run(&["GET", "/ops/x", "--scopes", "read:items"]);
    assert!(text.contains("not evaluated with --scopes"), "{text}");
    sidecar.shutdown().await;
}
