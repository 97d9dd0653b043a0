//! DryRun: the hostile-request table against a sidecar whose policy is in DryRun. Every
//! request the rules would refuse reaches the app and is counted under its rule and reason;
//! what stays enforced (path spellings, identity-header stripping, rate limits) still is; and
//! switching between the modes under load drops no request.

#![allow(clippy::unwrap_used)] // test code: a panic is the failure report

mod support;

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use serde_json::json;
use support::hostile_table::{Case, Table, hostile_table, trap};
use support::*;

/// The counters of `/metrics` whose name starts with `prefix`, by series.
async fn series(admin: SocketAddr, prefix: &str) -> BTreeMap<String, u64> {
    let text = String::from_utf8(get(admin, "/metrics", &[]).await.body).unwrap();
    text.lines()
        .filter(|l| l.starts_with(prefix))
        .filter_map(|l| {
            let (name, value) = l.rsplit_once(' ')?;
            Some((name.to_owned(), value.parse().ok()?))
        })
        .collect()
}

/// The series that changed between two scrapes, with how much.
fn changed(before: &BTreeMap<String, u64>, after: &BTreeMap<String, u64>) -> Vec<(String, u64)> {
    after
        .iter()
        .filter_map(|(k, v)| {
            let was = before.get(k).copied().unwrap_or(0);
            (*v != was).then(|| (k.clone(), v - was))
        })
        .collect()
}

/// The reason a case is refused for, read off the table's expected answer (`None`: it
/// passes, or its path is refused before any rule).
fn reason(case: &Case) -> Option<&'static str> {
    let challenge = case.challenge.as_deref().unwrap_or("");
    match case.status {
        200 => None,
        400 if challenge.is_empty() => None,
        400 => Some("invalid_request"),
        401 if challenge.contains("invalid_token") => Some("invalid_token"),
        401 => Some("no_credentials"),
        403 if challenge.contains("scope=") => Some("insufficient_scope"),
        403 => Some("forbidden"),
        other => panic!("{}: unexpected status {other} in the table", case.name),
    }
}

/// The rule of the table's config that decides a case, from its path as the app routes it.
fn rule_of(case: &Case) -> &'static str {
    let path = case.target.split('?').next().unwrap().replace("%61", "a");
    if path.contains("admin") {
        "admin"
    } else if path.starts_with("/items") {
        "items"
    } else if path.starts_with("/reports") {
        "any"
    } else {
        "(default)"
    }
}

/// Whether a case carries a token the sidecar verifies (it then tells the app who it is).
fn valid_token(case: &Case) -> bool {
    matches!(
        reason(case),
        None | Some("insufficient_scope" | "forbidden")
    ) && case.status != 400
        && case
            .headers
            .iter()
            .any(|(k, _)| k.eq_ignore_ascii_case("authorization"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_hostile_table_in_dry_run_reaches_the_app_and_counts_each_refusal() {
    let upstream = Upstream::start(Duration::from_secs(0)).await;
    let dir = TempDir::new();
    let (trap_addr, trap_hits) = trap().await;
    let Table {
        config: mut cfg,
        cases,
    } = hostile_table(upstream.addr.port(), trap_addr);
    cfg["enforcement"] = json!("dryRun");
    let sidecar = start_sidecar(&dir, &cfg).await;
    let (addr, admin) = (sidecar.proxy_addr(), sidecar.admin_addr());

    let mut failures = Vec::new();
    let mut would_refuse = 0;
    for c in &cases {
        // Every request also claims an identity of its own: the app must never see it.
        let mut spoofing = Case {
            headers: c.headers.clone(),
            name: c.name.clone(),
            method: c.method,
            target: c.target.clone(),
            status: c.status,
            challenge: c.challenge.clone(),
        };
        spoofing
            .headers
            .push(("X-Auth-Subject", "spoofed-admin".into()));
        spoofing
            .headers
            .push(("x-auth-scopes", "spoofed:scope".into()));
        let before = series(admin, "scopegate_decisions_total").await;
        let hits = upstream.hits();
        let response = raw(addr, &spoofing.request()).await;
        let after = series(admin, "scopegate_decisions_total").await;
        let reached = upstream.hits() > hits;
        let path_refused = c.status == 400 && c.challenge.is_none();

        // Only a refused path spelling is still refused; everything else reaches the app.
        let (want_status, want_reach) = if path_refused {
            (400, false)
        } else {
            (200, true)
        };
        if response.status != want_status || reached != want_reach {
            failures.push(format!(
                "{}: got {} (app reached: {reached}), want {want_status}",
                c.name, response.status
            ));
        }
        if response.header("www-authenticate").is_some() {
            failures.push(format!("{}: a challenge in DryRun", c.name));
        }

        // Counted once, under its rule and reason, as not enforced.
        let want: Vec<(String, u64)> = if path_refused {
            Vec::new()
        } else {
            let outcome = reason(c).unwrap_or("allowed");
            vec![(
                format!(
                    "scopegate_decisions_total{{rule=\"{}\",outcome=\"{outcome}\",enforced=\"false\"}}",
                    rule_of(c)
                ),
                1,
            )]
        };
        let got = changed(&before, &after);
        if got != want {
            failures.push(format!("{}: counted {got:?}, want {want:?}", c.name));
        }
        would_refuse += usize::from(reason(c).is_some());

        if reached {
            let seen = upstream.last().unwrap();
            let subject = seen.headers.get("x-auth-subject").map(String::as_str);
            let scopes = seen.headers.get("x-auth-scopes").map(String::as_str);
            if valid_token(c) {
                if subject != Some("alice") || scopes.is_none_or(|s| s.contains("spoofed")) {
                    failures.push(format!(
                        "{}: a valid token, but the app saw subject {subject:?} scopes {scopes:?}",
                        c.name
                    ));
                }
            } else if subject.is_some() || scopes.is_some() {
                failures.push(format!(
                    "{}: no valid token, but the app saw subject {subject:?} scopes {scopes:?}",
                    c.name
                ));
            }
        }
    }
    assert!(
        failures.is_empty(),
        "{} of {} cases wrong:\n{}",
        failures.len(),
        cases.len(),
        failures.join("\n")
    );
    assert!(
        would_refuse > 50,
        "the table refuses most cases ({would_refuse})"
    );
    let requests = series(admin, "scopegate_sidecar_requests_total").await;
    assert_eq!(
        requests["scopegate_sidecar_requests_total{outcome=\"dry_run\"}"],
        u64::try_from(would_refuse).unwrap()
    );
    assert_eq!(
        trap_hits.load(Ordering::SeqCst),
        0,
        "a jku/x5u URL was fetched"
    );
    eprintln!(
        "{} cases in DryRun: {would_refuse} would-be refusals forwarded and counted",
        cases.len()
    );
    sidecar.shutdown().await;
}

/// A rule's own enforcement beats the policy's, both ways; the default action follows the
/// policy.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rule_enforces_or_runs_dry_on_its_own() {
    let upstream = Upstream::start(Duration::from_secs(0)).await;
    let (es, _) = SigningKey::es256();
    let dir = TempDir::new();
    let mut cfg = config(
        upstream.addr.port(),
        json!({"keys": [es.jwk("k1", Some("ES256"))]}),
    );
    cfg["rules"][1]["enforcement"] = json!("dryRun");
    // A stricter rule tried under an enforced one.
    cfg["rules"].as_array_mut().unwrap().push(json!({
        "name": "items-admin", "paths": ["/items/admin/**"], "enforcement": "dryRun",
        "action": {"type": "requireAll", "scopes": ["admin"]}
    }));
    let sidecar = start_sidecar(&dir, &cfg).await;
    let addr = sidecar.proxy_addr();
    let admin_api = sidecar.admin_addr();
    let before = series(admin_api, "scopegate_decisions_total").await;
    assert_eq!(get(addr, "/items/1", &[]).await.status, 401);
    assert_eq!(get(addr, "/nowhere", &[]).await.status, 401);
    // A rule in DryRun never opens what the policy closed before it was added: the enforced
    // rules decide where it would refuse (the default action here, `items` below).
    assert_eq!(get(addr, "/admin/x", &[]).await.status, 401);
    assert_eq!(get(addr, "/items/admin/x", &[]).await.status, 401);
    let reader = mint(&es, &header("ES256", "k1"), &claims("read:items"));
    let admin = mint(&es, &header("ES256", "k1"), &claims("admin"));
    assert_eq!(
        get_with_token(addr, "/items/admin/x", &reader).await.status,
        200
    );
    // Nor does it open what the enforced rule refuses to a token it would accept.
    let refused = get_with_token(addr, "/items/admin/x", &admin).await;
    assert_eq!(refused.status, 403);
    assert_eq!(
        changed(
            &before,
            &series(admin_api, "scopegate_decisions_total").await
        ),
        [
            ("scopegate_decisions_total{rule=\"(default)\",outcome=\"no_credentials\",enforced=\"true\"}".to_owned(), 2),
            ("scopegate_decisions_total{rule=\"admin\",outcome=\"no_credentials\",enforced=\"false\"}".to_owned(), 1),
            ("scopegate_decisions_total{rule=\"items\",outcome=\"allowed\",enforced=\"true\"}".to_owned(), 1),
            ("scopegate_decisions_total{rule=\"items\",outcome=\"insufficient_scope\",enforced=\"true\"}".to_owned(), 1),
            ("scopegate_decisions_total{rule=\"items\",outcome=\"no_credentials\",enforced=\"true\"}".to_owned(), 2),
            ("scopegate_decisions_total{rule=\"items-admin\",outcome=\"allowed\",enforced=\"false\"}".to_owned(), 1),
            ("scopegate_decisions_total{rule=\"items-admin\",outcome=\"insufficient_scope\",enforced=\"false\"}".to_owned(), 1),
            ("scopegate_decisions_total{rule=\"items-admin\",outcome=\"no_credentials\",enforced=\"false\"}".to_owned(), 1),
        ]
    );

    // The policy in DryRun, one rule still enforced.
    let mut next = cfg.clone();
    next["policy"]["generation"] = json!(2);
    next["enforcement"] = json!("dryRun");
    next["rules"][1]
        .as_object_mut()
        .unwrap()
        .remove("enforcement");
    next["rules"][0]["enforcement"] = json!("enforce");
    write_atomic(&dir.join("config.json"), &next.to_string());
    eventually("generation 2", Duration::from_secs(20), || async {
        (get(addr, "/admin/x", &[]).await.status == 200
            && get(addr, "/nowhere", &[]).await.status == 200)
            .then_some(())
    })
    .await;
    assert_eq!(get(addr, "/items/1", &[]).await.status, 401);
    assert_eq!(get(addr, "/me", &[]).await.status, 200);
    let reader = mint(&es, &header("ES256", "k1"), &claims("read:items"));
    assert_eq!(get_with_token(addr, "/items/1", &reader).await.status, 200);
    sidecar.shutdown().await;
}

/// What DryRun never opens: the app never takes a client's identity headers for ours, an
/// invalid token never yields identity headers, an ambiguous path is refused, and rate limits
/// keep counting and refusing (a would-be refusal counts as a failure, as it does enforced).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dry_run_keeps_what_it_must_still_refuse() {
    let upstream = Upstream::start(Duration::from_secs(0)).await;
    let (es, _) = SigningKey::es256();
    let (attacker, _) = SigningKey::es256();
    let dir = TempDir::new();
    let mut cfg = config(
        upstream.addr.port(),
        json!({"keys": [es.jwk("k1", Some("ES256"))]}),
    );
    cfg["enforcement"] = json!("dryRun");
    cfg["rateLimits"] = json!([
        {"name": "admin", "paths": ["/admin/**"], "requests": 3, "periodSecs": 3600}
    ]);
    let sidecar = start_sidecar(&dir, &cfg).await;
    let addr = sidecar.proxy_addr();
    let spoof = [
        ("X-Auth-Subject", "root"),
        ("X-Auth-Scopes", "admin"),
        ("X-Auth-Client-Id", "ops"),
    ];
    let forged = mint(&attacker, &header("ES256", "k1"), &claims("admin"));
    let mut expired = claims("admin");
    expired["exp"] = json!(now() - 3600);
    let expired = mint(&es, &header("ES256", "k1"), &expired);
    let reader = mint(&es, &header("ES256", "k1"), &claims("read:items"));
    let with_token = |token: &str| {
        let mut h: Vec<(&str, String)> = spoof.iter().map(|(k, v)| (*k, (*v).to_owned())).collect();
        h.push(("Authorization", format!("Bearer {token}")));
        h
    };
    for (what, headers) in [
        (
            "no token",
            spoof
                .iter()
                .map(|(k, v)| (*k, (*v).to_owned()))
                .collect::<Vec<_>>(),
        ),
        ("forged token", with_token(&forged)),
        ("expired token", with_token(&expired)),
        ("malformed token", with_token("a\"b")),
    ] {
        let refs: Vec<(&str, &str)> = headers.iter().map(|(k, v)| (*k, v.as_str())).collect();
        let response = get(addr, "/items/1", &refs).await;
        assert_eq!(response.status, 200, "{what}: forwarded in DryRun");
        let seen = upstream.last().unwrap();
        for name in ["x-auth-subject", "x-auth-scopes", "x-auth-client-id"] {
            assert_eq!(
                seen.headers.get(name),
                None,
                "{what}: the app got {name} without a valid token"
            );
        }
    }
    // A valid token without the route's scope: the app learns who it really is, nothing
    // the client claimed.
    let refs: Vec<(&str, String)> = with_token(&reader);
    let refs: Vec<(&str, &str)> = refs.iter().map(|(k, v)| (*k, v.as_str())).collect();
    assert_eq!(get(addr, "/reports/1", &refs).await.status, 200);
    let seen = upstream.last().unwrap();
    assert_eq!(seen.headers["x-auth-subject"], "alice");
    assert_eq!(seen.headers["x-auth-scopes"], "read:items");
    assert_eq!(seen.headers["x-auth-client-id"], "web");

    // Ambiguous spellings are refused before any rule, DryRun or not.
    let hits = upstream.hits();
    for target in ["/admin%2Fx", "/items/..%5Cadmin", "/admin;x=1/y"] {
        assert_eq!(get(addr, target, &[]).await.status, 400, "{target}");
    }
    assert_eq!(upstream.hits(), hits, "a refused path reached the app");

    // Rate limits stay enforced: three requests pass, the fourth is refused.
    for i in 0..3 {
        assert_eq!(get(addr, "/admin/x", &[]).await.status, 200, "request {i}");
    }
    let limited = get(addr, "/admin/x", &[]).await;
    assert_eq!(limited.status, 429);
    assert!(limited.header("retry-after").is_some());
    sidecar.shutdown().await;
}

/// Switching between Enforce and DryRun while clients keep their connections busy: every
/// request is answered (no reset, no 5xx), each as the mode in force decided it, and counted
/// under that mode.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn switching_modes_under_load_drops_no_request() {
    use http_body_util::{BodyExt, Empty};
    let upstream = Upstream::start(Duration::from_secs(0)).await;
    let (es, _) = SigningKey::es256();
    let dir = TempDir::new();
    let cfg = config(
        upstream.addr.port(),
        json!({"keys": [es.jwk("k1", Some("ES256"))]}),
    );
    let sidecar = start_sidecar(&dir, &cfg).await;
    let (addr, admin) = (sidecar.proxy_addr(), sidecar.admin_addr());
    let reader = mint(&es, &header("ES256", "k1"), &claims("read:items"));

    let stop = Arc::new(AtomicBool::new(false));
    // [no token refused (401), no token forwarded (200), with token 200]
    let tallies: Arc<[AtomicU64; 3]> = Arc::default();
    let mut clients = Vec::new();
    for _ in 0..4 {
        let (stop, tallies, reader) = (stop.clone(), tallies.clone(), reader.clone());
        clients.push(tokio::spawn(async move {
            let tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
            let (mut sender, conn) =
                hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(tcp))
                    .await
                    .unwrap();
            tokio::spawn(conn);
            let mut n = 0u64;
            while !stop.load(Ordering::Relaxed) {
                let with_token = n % 2 == 1;
                n += 1;
                let mut request = hyper::Request::get("/items/1").header("host", "app.test");
                if with_token {
                    request = request.header("authorization", format!("Bearer {reader}"));
                }
                let request = request.body(Empty::<bytes::Bytes>::new()).unwrap();
                sender.ready().await.expect("the connection stays open");
                let response = sender.send_request(request).await.expect("answered");
                let status = response.status().as_u16();
                response.into_body().collect().await.unwrap();
                let slot = match (with_token, status) {
                    (false, 401) => 0,
                    (false, 200) => 1,
                    (true, 200) => 2,
                    other => panic!("unexpected answer {other:?}"),
                };
                tallies[slot].fetch_add(1, Ordering::Relaxed);
            }
        }));
    }

    // Flip the mode a few times; each time, wait until the load sees the new answer.
    let mut generation = 1;
    for round in 0..6 {
        let dry = round % 2 == 0;
        generation += 1;
        let mut next = cfg.clone();
        next["policy"]["generation"] = json!(generation);
        if dry {
            next["enforcement"] = json!("dryRun");
        }
        let (watched, before) = if dry {
            (1, tallies[1].load(Ordering::Relaxed))
        } else {
            (0, tallies[0].load(Ordering::Relaxed))
        };
        write_atomic(&dir.join("config.json"), &next.to_string());
        eventually(
            &format!(
                "generation {generation} ({})",
                if dry { "DryRun" } else { "Enforce" }
            ),
            Duration::from_secs(20),
            || {
                let tallies = tallies.clone();
                async move {
                    // Some requests of the new mode have passed on the loaded connections.
                    (tallies[watched].load(Ordering::Relaxed) > before + 50).then_some(())
                }
            },
        )
        .await;
    }
    stop.store(true, Ordering::Relaxed);
    for client in clients {
        client
            .await
            .expect("every request was answered as one of the two modes decides");
    }
    let [refused, forwarded, with_token] = [0, 1, 2].map(|i| tallies[i].load(Ordering::Relaxed));
    let total = refused + forwarded + with_token;
    eprintln!(
        "{total} requests over 6 mode switches: {refused} refused (Enforce), {forwarded} forwarded (DryRun), {with_token} with a token"
    );
    // Each answer was counted under the mode that gave it.
    let counted = series(admin, "scopegate_decisions_total").await;
    let count = |outcome: &str, enforced: &str| {
        counted
            .get(&format!(
                "scopegate_decisions_total{{rule=\"items\",outcome=\"{outcome}\",enforced=\"{enforced}\"}}"
            ))
            .copied()
            .unwrap_or(0)
    };
    assert_eq!(count("no_credentials", "true"), refused);
    assert_eq!(count("no_credentials", "false"), forwarded);
    assert_eq!(
        count("allowed", "true") + count("allowed", "false"),
        with_token
    );
    sidecar.shutdown().await;
}

/// The issuer's endpoints are the issuer, not the policy's rules: in a pod whose policy runs
/// in DryRun they answer exactly as enforced (a bad client secret is still refused, a token
/// still needs a client).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_issuer_endpoints_are_not_in_dry_run() {
    use support::issuer::{BACKEND, Issuer, Spec, TestClient, basic};
    let issuer = Issuer::start(Spec::default()).await;
    let wrong = TestClient {
        id: BACKEND.id,
        secret: Some("not-the-secret-0123456789abcdef"),
    };
    let answers = async || {
        let bad_secret = issuer.token(&wrong, "grant_type=client_credentials").await;
        let no_client = issuer
            .post("/oauth2/token", "grant_type=client_credentials", &[])
            .await;
        let introspect = issuer
            .post(
                "/oauth2/introspect",
                "token=x",
                &[("Authorization", &basic("nobody", "nothing"))],
            )
            .await;
        let good = issuer
            .token(&BACKEND, "grant_type=client_credentials")
            .await;
        [bad_secret, no_client, introspect, good].map(|r| {
            (
                r.status,
                r.header("www-authenticate").map(str::to_owned),
                String::from_utf8_lossy(&r.body).contains("access_token"),
            )
        })
    };
    let enforced = answers().await;
    assert_eq!(
        enforced.iter().map(|a| a.0).collect::<Vec<_>>(),
        [401, 400, 401, 200],
        "{enforced:?}"
    );

    let mut dry = issuer.config.clone();
    dry["policy"]["generation"] = json!(2);
    dry["enforcement"] = json!("dryRun");
    write_atomic(&issuer.dir.join("config.json"), &dry.to_string());
    // DryRun is in force once a protected route without a token is forwarded (to an app
    // that is not there: 502) instead of refused.
    eventually("DryRun in force", Duration::from_secs(20), || async {
        (issuer.get("/items/1").await.status == 502).then_some(())
    })
    .await;
    let dry_run = answers().await;
    assert_eq!(
        dry_run
            .iter()
            .map(|a| (a.0, a.1.clone()))
            .collect::<Vec<_>>(),
        enforced
            .iter()
            .map(|a| (a.0, a.1.clone()))
            .collect::<Vec<_>>(),
        "the issuer answers alike in both modes"
    );
    assert!(dry_run[3].2, "a good client still gets a token");
    issuer.stop().await;
}
