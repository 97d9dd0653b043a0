//! The Redis store against a real redis-server on loopback: two issuer processes sharing it
//! (a code redeemed on one fails on the other, a revocation on one reaches the other's feed,
//! rate limits hold across both, concurrent redemptions and refreshes across both), a Redis
//! crash and restart with append-only persistence that loses nothing the issuer answered
//! for, the verifier's per-route rate limits shared through it, and tokens exchanged
//! concurrently on both revoked with their subject token (RFC 8693).

#![allow(clippy::unwrap_used)] // test code: a panic is the failure report

mod support;

use std::sync::Arc;
use std::time::Duration;

use scopegate_issuer::IssuerTuning;
use scopegate_issuer::limits::EndpointLimits;
use scopegate_issuer::store::Budget;
use serde_json::{Value, json};
use support::issuer::*;
use support::redis::RedisServer;
use support::*;

/// Two replicas of one issuer sharing `redis`, as two processes of the real binary.
async fn replicas(
    redis: &RedisServer,
    tuning: IssuerTuning,
    route_limits: Value,
) -> (Arc<Issuer>, Arc<Issuer>) {
    replicas_of(
        redis,
        Spec {
            tuning,
            route_limits,
            ..Spec::default()
        },
    )
    .await
}

/// Two replicas of the issuer `spec` describes, sharing `redis`.
async fn replicas_of(redis: &RedisServer, spec: Spec) -> (Arc<Issuer>, Arc<Issuer>) {
    let store = json!({"type": "redis", "address": redis.address()});
    let a = Issuer::start(Spec {
        store: store.clone(),
        process: true,
        ..spec.clone()
    })
    .await;
    let b = Issuer::start(Spec {
        store,
        process: true,
        url: Some(a.url.clone()),
        keys: Some(a.keys.clone()),
        ..spec
    })
    .await;
    for issuer in [&a, &b] {
        let admin = issuer.admin;
        eventually(
            "the replica to be ready",
            Duration::from_secs(20),
            || async { (readyz(admin).await.0 == 200).then_some(()) },
        )
        .await;
    }
    (Arc::new(a), Arc::new(b))
}

fn generous() -> IssuerTuning {
    IssuerTuning {
        limits: EndpointLimits {
            failed_address: Budget::per_secs(10_000, 60),
            failed_client: Budget::per_secs(10_000, 60),
            ..Default::default()
        },
        ..Default::default()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_issuer_processes_share_codes_families_and_the_feed() {
    let redis = RedisServer::start().await;
    let (a, b) = replicas(&redis, generous(), json!([])).await;

    // A code from A redeemed on B fails on A afterwards.
    let code = web_code(&a, "alice").await;
    let r = redeem(&b, &code).await;
    assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
    let tokens = r.json();
    let replay = redeem(&a, &code).await;
    assert_eq!(replay.json()["error"], "invalid_grant");
    assert_eq!(
        introspect(&b, tokens["access_token"].as_str().unwrap()).await,
        json!({"active": false}),
        "the replay on A revoked what B issued"
    );

    // 50 concurrent redemptions of one code across both: at most one token, and the other 49
    // are replays that revoke whatever it issued. (A replay can even beat the winner to its
    // refresh family, and then the winner is refused too: denying is right while a code is
    // being replayed.)
    let code = web_code(&a, "bob").await;
    let tasks: Vec<_> = (0..50)
        .map(|i| {
            let issuer = if i % 2 == 0 { a.clone() } else { b.clone() };
            let code = code.clone();
            tokio::spawn(async move { redeem(&issuer, &code).await })
        })
        .collect();
    let mut issued = Vec::new();
    for t in tasks {
        let r = t.await.unwrap();
        assert!(r.status == 200 || r.status == 400, "{}", r.status);
        if r.status == 200 {
            issued.push(r.json()["access_token"].as_str().unwrap().to_owned());
        } else {
            assert_eq!(r.json()["error"], "invalid_grant");
        }
    }
    assert!(issued.len() <= 1, "{} tokens from one code", issued.len());
    for token in &issued {
        for issuer in [&a, &b] {
            assert_eq!(
                introspect(issuer, token).await,
                json!({"active": false}),
                "the replays revoked the winner's token"
            );
        }
    }

    // 20 concurrent refreshes of one token across both: a rotation and grace siblings, all
    // distinct generations; a later replay of the rotated token revokes the family.
    let first = redeem(&a, &web_code(&a, "carol").await).await.json();
    let refresh = first["refresh_token"].as_str().unwrap().to_owned();
    let tasks: Vec<_> = (0..20)
        .map(|i| {
            let issuer = if i % 2 == 0 { a.clone() } else { b.clone() };
            let refresh = refresh.clone();
            tokio::spawn(async move {
                issuer
                    .token(
                        &WEB,
                        &format!("grant_type=refresh_token&refresh_token={}", enc(&refresh)),
                    )
                    .await
            })
        })
        .collect();
    let mut generations = std::collections::BTreeSet::new();
    for t in tasks {
        let r = t.await.unwrap();
        assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
        generations.insert(
            r.json()["refresh_token"]
                .as_str()
                .unwrap()
                .split('.')
                .nth(1)
                .unwrap()
                .to_owned(),
        );
    }
    assert_eq!(generations.len(), 20);

    // A revocation on A reaches a poll already waiting on B.
    let page =
        claims_of(std::str::from_utf8(&b.get("/oauth2/revocations?wait=0").await.body).unwrap());
    let cursor = page["nextCursor"].as_str().unwrap().to_owned();
    let poller = {
        let b = b.clone();
        tokio::spawn(async move {
            b.get(&format!("/oauth2/revocations?cursor={cursor}&wait=25"))
                .await
        })
    };
    let token = a
        .token(&BACKEND, "grant_type=client_credentials")
        .await
        .json()["access_token"]
        .as_str()
        .unwrap()
        .to_owned();
    assert_eq!(
        a.post_as(
            "/oauth2/revoke",
            &BACKEND,
            &format!("token={}", enc(&token))
        )
        .await
        .status,
        200
    );
    let answer = tokio::time::timeout(Duration::from_secs(20), poller)
        .await
        .expect("B answers on news")
        .unwrap();
    let page = claims_of(std::str::from_utf8(&answer.body).unwrap());
    assert_eq!(page["jtis"][0]["jti"], claims_of(&token)["jti"], "{page}");
    assert_eq!(introspect(&b, &token).await, json!({"active": false}));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rate_limits_hold_across_replicas() {
    let redis = RedisServer::start().await;
    let tuning = IssuerTuning {
        limits: EndpointLimits {
            failed_address: Budget::per_secs(4, 60),
            ..Default::default()
        },
        ..Default::default()
    };
    let route = json!([{"name": "items", "paths": ["/items/**"], "requests": 3, "periodSecs": 60}]);
    let (a, b) = replicas(&redis, tuning, route).await;
    let wrong = basic(BACKEND.id, "guess");
    let from = ("X-Forwarded-For", "203.0.113.9");
    for issuer in [&a, &b, &a, &b] {
        let r = issuer
            .post(
                "/oauth2/token",
                "grant_type=client_credentials",
                &[("Authorization", &wrong), from],
            )
            .await;
        assert_eq!(r.status, 401);
    }
    for issuer in [&a, &b] {
        let good = basic(BACKEND.id, BACKEND.secret.unwrap());
        let r = issuer
            .post(
                "/oauth2/token",
                "grant_type=client_credentials",
                &[("Authorization", &good), from],
            )
            .await;
        assert_eq!(
            r.status, 429,
            "the address spent its failures across both replicas"
        );
        assert!(r.header("retry-after").is_some());
    }
    // The verifier's per-route limit (3 per minute per address) is shared too.
    let request = |ip: &str| {
        format!(
            "GET /items/1 HTTP/1.1\r\nHost: x\r\nConnection: close\r\nX-Forwarded-For: {ip}\r\n\r\n"
        )
    };
    let mut statuses = Vec::new();
    for issuer in [&a, &b, &a, &b] {
        statuses.push(issuer.raw(request("198.51.100.77").as_bytes()).await.status);
    }
    assert_eq!(
        statuses,
        [401, 401, 401, 429],
        "route budget shared by both replicas"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_redis_crash_with_appendonly_loses_nothing_the_issuer_answered_for() {
    let redis = RedisServer::start().await;
    let store = json!({"type": "redis", "address": redis.address()});
    let issuer = Issuer::start(Spec {
        store,
        tuning: generous(),
        ..Spec::default()
    })
    .await;
    let unspent = web_code(&issuer, "dave").await;
    let spent = web_code(&issuer, "dave").await;
    let granted = redeem(&issuer, &spent).await.json();
    let refresh = granted["refresh_token"].as_str().unwrap().to_owned();
    let revoked = issuer
        .token(&BACKEND, "grant_type=client_credentials")
        .await
        .json()["access_token"]
        .as_str()
        .unwrap()
        .to_owned();
    assert_eq!(
        issuer
            .post_as(
                "/oauth2/revoke",
                &BACKEND,
                &format!("token={}", enc(&revoked))
            )
            .await
            .status,
        200
    );
    let cut = issuer
        .mint(
            "POST",
            "/v1/subject-cutoffs",
            Some(&json!({"subject": "user:9"})),
        )
        .await;
    assert_eq!(cut.status, 200);

    let redis = redis.crash_and_restart().await;
    let r = eventually(
        "the issuer to reach Redis again",
        Duration::from_secs(30),
        || async {
            let r = redeem(&issuer, &unspent).await;
            (r.status != 503).then_some(r)
        },
    )
    .await;
    assert_eq!(
        r.status,
        200,
        "an unspent code survives: {}",
        String::from_utf8_lossy(&r.body)
    );
    let r = issuer
        .token(
            &WEB,
            &format!("grant_type=refresh_token&refresh_token={}", enc(&refresh)),
        )
        .await;
    assert_eq!(
        r.status,
        200,
        "the family survives: {}",
        String::from_utf8_lossy(&r.body)
    );
    assert_eq!(
        redeem(&issuer, &spent).await.json()["error"],
        "invalid_grant",
        "a spent code stays spent"
    );
    assert_eq!(
        introspect(&issuer, &revoked).await,
        json!({"active": false}),
        "the revocation survives"
    );
    let page = claims_of(
        std::str::from_utf8(&issuer.get("/oauth2/revocations?wait=0").await.body).unwrap(),
    );
    assert!(
        page["jtis"]
            .to_string()
            .contains(claims_of(&revoked)["jti"].as_str().unwrap()),
        "{page}"
    );
    let key = scopegate_core::feed::decode_subject_key(FEED_SUBJECT_KEY).unwrap();
    assert_eq!(
        page["subjectDigests"][0]["digest"],
        scopegate_core::feed::subject_digest(&key, "user:9"),
        "the cut-off survives, named by its digest"
    );
    drop(redis);
    issuer.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_issuer_answers_temporarily_unavailable_while_redis_is_down() {
    let port = free_port();
    let issuer = Issuer::start(Spec {
        store: json!({"type": "redis", "address": format!("127.0.0.1:{port}")}),
        ..Spec::default()
    })
    .await;
    let r = issuer
        .token(&BACKEND, "grant_type=client_credentials")
        .await;
    assert_eq!(
        (r.status, r.json()["error"].clone()),
        (503, json!("temporarily_unavailable"))
    );
    assert!(r.header("retry-after").is_some());
    let redis = RedisServer::start_on(TempDir::new(), port).await;
    eventually(
        "the issuer to reach Redis",
        Duration::from_secs(30),
        || async {
            (issuer
                .token(&BACKEND, "grant_type=client_credentials")
                .await
                .status
                == 200)
                .then_some(())
        },
    )
    .await;
    drop(redis);
    issuer.stop().await;
}

/// The bound on pending logins holds across replicas: the oldest of the address's pending
/// logins goes, wherever it was made.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pending_logins_are_bounded_across_replicas() {
    let redis = RedisServer::start().await;
    let tuning = IssuerTuning {
        pending_logins: scopegate_issuer::store::PendingBounds {
            per_address: 2,
            total: 100,
        },
        ..generous()
    };
    let (a, b) = replicas(&redis, tuning, json!([])).await;
    let mut challenges = Vec::new();
    for issuer in [&a, &b, &a] {
        let r = issuer
            .get(&format!("/oauth2/authorize?{}", web_query("s", None)))
            .await;
        let location = r.header("location").unwrap().to_owned();
        challenges.push(
            location
                .strip_prefix(&format!("{LOGIN_URL}?login_challenge="))
                .unwrap()
                .to_owned(),
        );
    }
    let mut statuses = Vec::new();
    for challenge in &challenges {
        statuses.push(
            b.mint("GET", &format!("/v1/logins/{challenge}"), None)
                .await
                .status,
        );
    }
    assert_eq!(
        statuses,
        [404, 200, 200],
        "the first, made on the other replica, evicted"
    );
}

/// The attacker's test of `/oauth2/authorize` on the Redis store (its Lua bound per address):
/// one address floods fully valid requests until refused; another address's pending login
/// survives and its next request is served.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_authorize_flood_from_one_address_leaves_other_callers_alone_on_redis() {
    let redis = RedisServer::start().await;
    let (a, _b) = replicas(&redis, authorize_flood_tuning(), json!([])).await;
    an_authorize_flood_spends_only_the_flooders_share(&a, FLOOD).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tokens_exchanged_concurrently_on_both_replicas_are_revoked_with_their_subject() {
    let redis = RedisServer::start().await;
    let (a, b) = replicas_of(
        &redis,
        Spec {
            tuning: generous(),
            extra_clients: exchange_clients(),
            ..Spec::default()
        },
    )
    .await;
    let subject = redeem(&a, &web_code(&a, "alice").await).await.json()["access_token"]
        .as_str()
        .unwrap()
        .to_owned();
    // 20 exchanges of one subject token at once, half on each replica: every one is recorded
    // under the subject token (a lost compare-and-swap would drop one from its family).
    let more = format!("&audience={}", enc(PAYMENTS));
    let tasks: Vec<_> = (0..20)
        .map(|i| {
            let issuer = if i % 2 == 0 { a.clone() } else { b.clone() };
            let (subject, more) = (subject.clone(), more.clone());
            tokio::spawn(async move { exchange(&issuer, &ORDERS_X, &subject, &more).await })
        })
        .collect();
    let mut exchanged = Vec::new();
    for task in tasks {
        let r = task.await.unwrap();
        assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
        exchanged.push(r.json()["access_token"].as_str().unwrap().to_owned());
    }
    let introspect_as = |issuer: Arc<Issuer>, token: String| async move {
        issuer
            .post_as(
                "/oauth2/introspect",
                &ORDERS_X,
                &format!("token={}", enc(&token)),
            )
            .await
            .json()["active"]
            .clone()
    };
    assert_eq!(introspect_as(b.clone(), exchanged[0].clone()).await, true);
    // Revoked on A, the subject token takes all 20 with it, on both replicas.
    let r = a
        .post_as("/oauth2/revoke", &WEB, &format!("token={}", enc(&subject)))
        .await;
    assert_eq!(r.status, 200);
    for (i, token) in exchanged.iter().enumerate() {
        let issuer = if i % 2 == 0 { b.clone() } else { a.clone() };
        assert_eq!(
            introspect_as(issuer, token.clone()).await,
            false,
            "exchanged token {i} outlived its subject token"
        );
    }
    let refused = exchange(&b, &ORDERS_X, &subject, &more).await;
    assert_eq!(refused.json()["error"], "invalid_request");
    assert_eq!(
        refused.json()["error_description"],
        "subject_token is revoked"
    );
}

/// The jtis on a feed page (a JWS body).
fn feed_jtis(page: &RawResponse) -> Vec<String> {
    let claims = claims_of(std::str::from_utf8(&page.body).unwrap());
    claims["jtis"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["jti"].as_str().unwrap().to_owned())
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_revocation_cut_short_by_the_store_tells_the_feed_and_a_retry_finishes_it() {
    let redis = RedisServer::start().await;
    let issuer = Arc::new(
        Issuer::start(Spec {
            store: json!({"type": "redis", "address": redis.address()}),
            tuning: IssuerTuning {
                // No background look at the log during the test: a feed reader of this replica
                // learns of a revocation from the revocation itself, as with the memory store.
                feed_poll_ms: 3_600_000,
                ..generous()
            },
            extra_clients: exchange_clients(),
            ..Spec::default()
        })
        .await,
    );
    let tokens = redeem(&issuer, &web_code(&issuer, "alice").await)
        .await
        .json();
    let access = tokens["access_token"].as_str().unwrap().to_owned();
    let refresh = tokens["refresh_token"].as_str().unwrap().to_owned();
    let r = exchange(
        &issuer,
        &ORDERS_X,
        &access,
        &format!("&audience={}", enc(PAYMENTS)),
    )
    .await;
    assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
    let exchanged = r.json()["access_token"].as_str().unwrap().to_owned();
    let active = |token: String| {
        let issuer = &issuer;
        async move {
            let r = issuer
                .post_as(
                    "/oauth2/introspect",
                    &ORDERS_X,
                    &format!("token={}", enc(&token)),
                )
                .await;
            assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
            r.json()["active"].as_bool().unwrap()
        }
    };
    assert!(active(exchanged.clone()).await);
    let jti = |token: &str| claims_of(token)["jti"].as_str().unwrap().to_owned();

    // A reader of the feed waits for news (30 s at most).
    let first = issuer.get("/oauth2/revocations").await;
    let cursor = claims_of(std::str::from_utf8(&first.body).unwrap())["nextCursor"]
        .as_str()
        .unwrap()
        .to_owned();
    let reader = {
        let waiting = issuer.clone();
        let cursor = cursor.clone();
        tokio::spawn(async move {
            waiting
                .get(&format!(
                    "/oauth2/revocations?cursor={}&wait=30",
                    enc(&cursor)
                ))
                .await
        })
    };
    // The reader parked on its wait, so that the revocation itself must wake it (a reader
    // that had not yet looked would find the revocation in the log either way).
    let admin = issuer.admin;
    tokio::time::timeout(Duration::from_secs(10), async move {
        while feed_polls_waiting(admin).await < 1 {
            tokio::task::yield_now().await;
        }
    })
    .await
    .expect("the feed reader parks on its wait");

    // The store refuses every use of the records of exchanged tokens: revoking the refresh
    // family marks it, revokes its access token, and fails on the way down.
    assert_eq!(
        redis
            .command(&["ACL", "SETUSER", "default", "resetkeys", "~*}:[^e]*"])
            .await,
        "+OK"
    );
    let revoke = || {
        let issuer = issuer.clone();
        let refresh = refresh.clone();
        async move {
            issuer
                .post_as(
                    "/oauth2/revoke",
                    &WEB,
                    &format!("token={}&token_type_hint=refresh_token", enc(&refresh)),
                )
                .await
        }
    };
    let failed = revoke().await;
    assert_eq!(
        failed.status,
        503,
        "{}",
        String::from_utf8_lossy(&failed.body)
    );
    // The reader is told of what was revoked before the failure: it answers on the news, not
    // at the end of its 30 s wait.
    let page = tokio::time::timeout(Duration::from_secs(20), reader)
        .await
        .expect("the feed reader was told of the access token revoked before the failure")
        .unwrap();
    assert_eq!(page.status, 200);
    assert_eq!(feed_jtis(&page), [jti(&access)]);

    // The store is whole again: revoking the (already marked) family once more reaches the
    // exchanged token that the first attempt missed.
    assert_eq!(
        redis
            .command(&["ACL", "SETUSER", "default", "resetkeys", "~*"])
            .await,
        "+OK"
    );
    assert!(
        active(exchanged.clone()).await,
        "the first attempt stopped before the exchanged token"
    );
    let retried = revoke().await;
    assert_eq!(
        retried.status,
        200,
        "{}",
        String::from_utf8_lossy(&retried.body)
    );
    assert!(!active(exchanged.clone()).await);
    let all = issuer
        .get(&format!("/oauth2/revocations?cursor={}", enc(&cursor)))
        .await;
    let revoked = feed_jtis(&all);
    assert!(revoked.contains(&jti(&exchanged)), "{revoked:?}");
}

/// Feed polls parked at the issuer whose admin port is `admin`, from its `/metrics`.
async fn feed_polls_waiting(admin: std::net::SocketAddr) -> i64 {
    let text = String::from_utf8(get(admin, "/metrics", &[]).await.body).unwrap();
    text.lines()
        .find_map(|l| {
            l.strip_prefix("scopegate_issuer_feed_polls_waiting ")?
                .parse()
                .ok()
        })
        .unwrap_or_else(|| panic!("no feed_polls_waiting in\n{text}"))
}
