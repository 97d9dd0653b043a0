//! The revocation feed client against a small feed server over TLS speaking the
//! `scopegate_core::feed` format: signed pages apply (and flush cached tokens), forged or
//! replayed pages are refused, staleness shows in `/readyz`, fail-open by default and
//! fail-closed when configured.

#![allow(clippy::unwrap_used)] // test code: a panic is the failure report

mod support;

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use scopegate_core::feed::{
    FeedPage, JtiRevocation, SubjectCutoff, SubjectDigestCutoff, subject_digest,
};
use serde_json::{Value, json};
use support::*;

/// Pages by the cursor they answer; an unscripted cursor gets an empty page (or `fallback`).
#[derive(Default)]
struct Script {
    pages: HashMap<Option<String>, String>,
    fallback_status: Option<u16>,
}

struct Feed {
    script: Arc<Mutex<Script>>,
    server: TlsServer,
    key: SigningKey,
}

fn cursor_of(target: &str) -> Option<String> {
    let query = target.split_once('?')?.1;
    query
        .split('&')
        .find_map(|p| p.strip_prefix("cursor="))
        .map(str::to_owned)
}

fn sign_page(key: &SigningKey, kid: &str, page: &FeedPage) -> String {
    mint(
        key,
        &json!({"alg": "ES256", "kid": kid, "typ": "revocation-feed+jwt"}),
        &serde_json::to_value(page).unwrap(),
    )
}

fn page(cursor: Option<&str>, next: &str, reset: bool) -> FeedPage {
    FeedPage {
        iss: ISSUER.into(),
        iat: now(),
        cursor: cursor.map(Into::into),
        next_cursor: next.into(),
        reset,
        jtis: vec![],
        subjects: vec![],
        subject_digests: vec![],
        log_started_at: None,
        seq: None,
    }
}

/// A page at a position of the issuer's log.
fn page_at(cursor: Option<&str>, next: &str, reset: bool, position: (i64, u64)) -> FeedPage {
    FeedPage {
        log_started_at: Some(position.0),
        seq: Some(position.1),
        ..page(cursor, next, reset)
    }
}

impl Feed {
    fn answer(&self, cursor: Option<&str>, page: &FeedPage) {
        self.script
            .lock()
            .unwrap()
            .pages
            .insert(cursor.map(Into::into), sign_page(&self.key, "k1", page));
    }
}

async fn feed(key: SigningKey) -> Feed {
    let script: Arc<Mutex<Script>> = Arc::default();
    let s = script.clone();
    let server = TlsServer::start(Arc::new(move |target: String| {
        let script = s.lock().unwrap();
        let cursor = cursor_of(&target);
        if let Some(body) = script.pages.get(&cursor) {
            return (200, "application/jwt", body.clone());
        }
        match script.fallback_status {
            Some(status) => (status, "text/plain", String::new()),
            // An empty page needs a signature: the test scripts every cursor it expects.
            None => (404, "text/plain", String::new()),
        }
    }))
    .await;
    Feed {
        script,
        server,
        key,
    }
}

fn feed_config(upstream: u16, feed: &Feed, fail_closed: bool, bound: u64) -> Value {
    let mut cfg = config(
        upstream,
        json!({"keys": [feed.key.jwk("k1", Some("ES256"))]}),
    );
    cfg["revocation"] = json!({
        "clientCutoffs": {"legacy-app": now() + 10},
        "feed": {
            "url": feed.server.url("/oauth2/revocations"), "issuer": ISSUER,
            "stalenessBoundSecs": bound, "failClosed": fail_closed
        }
    });
    cfg["caBundlePem"] = json!(feed.server.ca_pem);
    cfg
}

fn token_with(key: &SigningKey, edit: impl FnOnce(&mut Value)) -> String {
    let mut c = claims("read:items");
    edit(&mut c);
    mint(key, &header("ES256", "k1"), &c)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn signed_pages_revoke_tokens_and_flush_the_cache() {
    let upstream = Upstream::start(Duration::from_secs(0)).await;
    let (key, _) = SigningKey::es256();
    let feed = feed(key).await;
    let mut first = page(None, "c1", true);
    first.jtis.push(JtiRevocation {
        jti: "revoked-1".into(),
        exp: now() + 600,
    });
    first.subjects.push(SubjectCutoff {
        sub: "mallory".into(),
        before: now() + 10,
        until: now() + 700,
    });
    feed.script
        .lock()
        .unwrap()
        .pages
        .insert(None, sign_page(&feed.key, "k1", &first));
    let cached = token_with(&feed.key, |c| c["jti"] = json!("later-revoked"));
    let dir = TempDir::new();
    let sidecar = start_sidecar(&dir, &feed_config(upstream.addr.port(), &feed, false, 60)).await;
    let addr = sidecar.proxy_addr();
    eventually("the first page", Duration::from_secs(20), || async {
        readyz(sidecar.admin_addr())
            .await
            .1
            .contains("revocation feed: fresh")
            .then_some(())
    })
    .await;
    let revoked = token_with(&feed.key, |c| c["jti"] = json!("revoked-1"));
    assert_eq!(get_with_token(addr, "/items/1", &revoked).await.status, 401);
    let cut_off = token_with(&feed.key, |c| c["sub"] = json!("mallory"));
    assert_eq!(get_with_token(addr, "/items/1", &cut_off).await.status, 401);
    let legacy = token_with(&feed.key, |c| c["client_id"] = json!("legacy-app"));
    assert_eq!(
        get_with_token(addr, "/items/1", &legacy).await.status,
        401,
        "client cut-off"
    );
    assert_eq!(get_with_token(addr, "/items/1", &cached).await.status, 200);
    assert_eq!(
        get_with_token(addr, "/items/1", &cached).await.status,
        200,
        "now cached"
    );

    // A delta page revokes the cached token: the cache must not keep it alive.
    let mut second = page(Some("c1"), "c2", false);
    second.jtis.push(JtiRevocation {
        jti: "later-revoked".into(),
        exp: now() + 600,
    });
    feed.script
        .lock()
        .unwrap()
        .pages
        .insert(Some("c1".into()), sign_page(&feed.key, "k1", &second));
    eventually(
        "the cached token to be refused",
        Duration::from_secs(20),
        || async { (get_with_token(addr, "/items/1", &cached).await.status == 401).then_some(()) },
    )
    .await;
    let metrics = String::from_utf8(get(sidecar.admin_addr(), "/metrics", &[]).await.body).unwrap();
    assert!(
        metrics.contains("scopegate_sidecar_revocation_entries 3"),
        "{metrics}"
    );
    sidecar.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forged_and_replayed_pages_are_refused() {
    let upstream = Upstream::start(Duration::from_secs(0)).await;
    let (key, _) = SigningKey::es256();
    let (attacker, _) = SigningKey::es256();
    let feed = feed(key).await;
    let mut forged = page(None, "c1", true);
    forged.jtis.push(JtiRevocation {
        jti: "victim".into(),
        exp: now() + 600,
    });
    feed.script
        .lock()
        .unwrap()
        .pages
        .insert(None, sign_page(&attacker, "k1", &forged));
    let dir = TempDir::new();
    let sidecar = start_sidecar(&dir, &feed_config(upstream.addr.port(), &feed, false, 60)).await;
    let admin = sidecar.admin_addr();
    let detail = eventually(
        "the forged page refused",
        Duration::from_secs(20),
        || async {
            let (status, text) = readyz(admin).await;
            (status == 200 && text.contains("last poll failed (bad page)")).then_some(text)
        },
    )
    .await;
    assert!(detail.contains("never polled successfully"), "{detail}");
    let victim = token_with(&feed.key, |c| c["jti"] = json!("victim"));
    assert_eq!(
        get_with_token(sidecar.proxy_addr(), "/items/1", &victim)
            .await
            .status,
        200
    );

    // A genuine page answering another cursor is a replay.
    let replay = page(Some("old"), "c9", true);
    feed.script
        .lock()
        .unwrap()
        .pages
        .insert(None, sign_page(&feed.key, "k1", &replay));
    let count = feed.server.count();
    eventually("another refused poll", Duration::from_secs(20), || async {
        (feed.server.count() > count + 1).then_some(())
    })
    .await;
    assert!(readyz(admin).await.1.contains("never polled successfully"));
    sidecar.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stale_feed_fails_open_by_default_and_closed_when_asked() {
    let upstream = Upstream::start(Duration::from_secs(0)).await;
    for fail_closed in [false, true] {
        let (key, _) = SigningKey::es256();
        let feed = feed(key).await;
        feed.script.lock().unwrap().fallback_status = Some(503);
        let dir = TempDir::new();
        let sidecar = start_sidecar(
            &dir,
            &feed_config(upstream.addr.port(), &feed, fail_closed, 1),
        )
        .await;
        let (want_ready, want_token, mode) = if fail_closed {
            (503, 503, "fail-closed")
        } else {
            (200, 200, "fail-open")
        };
        let detail = eventually("a failed poll", Duration::from_secs(20), || async {
            let (status, text) = readyz(sidecar.admin_addr()).await;
            (status == want_ready && text.contains("last poll failed (status)")).then_some(text)
        })
        .await;
        assert!(
            detail.contains(&format!(
                "STALE (never polled successfully, bound 1s, {mode})"
            )),
            "{detail}"
        );
        let token = token_with(&feed.key, |_| {});
        let r = get_with_token(sidecar.proxy_addr(), "/items/1", &token).await;
        assert_eq!(r.status, want_token, "{mode}");
        assert_eq!(
            get(sidecar.proxy_addr(), "/public/x", &[]).await.status,
            200,
            "{mode}: public routes pass"
        );
        let metrics =
            String::from_utf8(get(sidecar.admin_addr(), "/metrics", &[]).await.body).unwrap();
        assert!(
            !metrics.contains("scopegate_sidecar_revocation_feed_staleness_seconds -1"),
            "{metrics}"
        );
        sidecar.shutdown().await;
    }
}

/// A page older than one accepted cannot roll revocations back, reset pages included: the
/// verifier drops nothing it knows for it, and says so in `/readyz` and a metric. A page
/// issued too long ago (a replay) and an access token served as a page are refused whole; a
/// later log (an issuer that started again) is taken.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rolled_back_stale_and_foreign_pages_are_refused() {
    let upstream = Upstream::start(Duration::from_secs(0)).await;
    let (key, _) = SigningKey::es256();
    let feed = feed(key).await;
    let start = scopegate_issuer::store::memory::now_ms() as i64 - 60_000;
    let mut first = page_at(None, "c5", true, (start, 5));
    first.jtis.push(JtiRevocation {
        jti: "revoked-1".into(),
        exp: now() + 600,
    });
    feed.answer(None, &first);
    let dir = TempDir::new();
    let sidecar = start_sidecar(&dir, &feed_config(upstream.addr.port(), &feed, false, 60)).await;
    let (addr, admin) = (sidecar.proxy_addr(), sidecar.admin_addr());
    let revoked = token_with(&feed.key, |c| c["jti"] = json!("revoked-1"));
    eventually("the first page", Duration::from_secs(20), || async {
        (get_with_token(addr, "/items/1", &revoked).await.status == 401).then_some(())
    })
    .await;

    // The issuer "answers" the verifier's cursor with an older reset page that lacks the
    // revocation: it cannot drop it, the revocation stays.
    feed.answer(Some("c5"), &page_at(Some("c5"), "c3", true, (start, 3)));
    let detail = eventually("the rollback refused", Duration::from_secs(20), || async {
        let (_, text) = readyz(admin).await;
        text.contains("revocation feed: ROLLBACK").then_some(text)
    })
    .await;
    assert!(
        detail.contains("older than one accepted before"),
        "{detail}"
    );
    assert_eq!(get_with_token(addr, "/items/1", &revoked).await.status, 401);
    let metrics = String::from_utf8(get(admin, "/metrics", &[]).await.body).unwrap();
    let rollbacks: u64 = metrics
        .lines()
        .find_map(|l| l.strip_prefix("scopegate_sidecar_revocation_feed_rollbacks_total "))
        .unwrap()
        .parse()
        .unwrap();
    assert!(rollbacks >= 1, "{metrics}");

    // A genuine newer position, but issued long ago: a replay.
    let mut replayed = page_at(Some("c3"), "c9", true, (start, 9));
    replayed.iat = now() - 3600;
    feed.answer(Some("c3"), &replayed);
    eventually("the replay refused", Duration::from_secs(20), || async {
        let (_, text) = readyz(admin).await;
        text.contains("page issued too long ago").then_some(())
    })
    .await;
    assert_eq!(get_with_token(addr, "/items/1", &revoked).await.status, 401);

    // An access token of the issuer served as a page: its typ is not the feed's.
    let as_page = token_with(&feed.key, |c| {
        c["cursor"] = json!("c3");
        c["nextCursor"] = json!("c9");
        c["reset"] = json!(true);
    });
    feed.script
        .lock()
        .unwrap()
        .pages
        .insert(Some("c3".into()), as_page);
    let count = feed.server.count();
    eventually(
        "the token-as-page polled",
        Duration::from_secs(20),
        || async { (feed.server.count() > count + 1).then_some(()) },
    )
    .await;
    assert!(
        readyz(admin)
            .await
            .1
            .contains("last poll failed (bad page)")
    );
    assert_eq!(get_with_token(addr, "/items/1", &revoked).await.status, 401);

    // The issuer started a new log (a restart of its memory store): a reset from a later log
    // is taken, with what it says.
    feed.answer(
        Some("c3"),
        &page_at(Some("c3"), "n0", true, (start + 30_000, 0)),
    );
    eventually("the new log taken", Duration::from_secs(20), || async {
        (get_with_token(addr, "/items/1", &revoked).await.status == 200).then_some(())
    })
    .await;
    sidecar.shutdown().await;
}

/// Subject cut-offs named by keyed digest reach the subject they digest, under the feed's key
/// only; plain cut-offs (an earlier issuer's) still apply.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn digested_subject_cutoffs_apply_under_the_feed_key() {
    let upstream = Upstream::start(Duration::from_secs(0)).await;
    let (key, _) = SigningKey::es256();
    let feed = feed(key).await;
    let subject_key = [42u8; 32];
    let mut first = page(None, "c1", true);
    first.subject_digests.push(SubjectDigestCutoff {
        digest: subject_digest(&subject_key, "mallory"),
        before: now() + 10,
        until: now() + 700,
    });
    first.subjects.push(SubjectCutoff {
        sub: "trudy".into(),
        before: now() + 10,
        until: now() + 700,
    });
    feed.answer(None, &first);
    let dir = TempDir::new();
    let mut cfg = feed_config(upstream.addr.port(), &feed, false, 60);
    cfg["revocation"]["feed"]["subjectKey"] =
        json!(scopegate_core::jose::b64::encode(&subject_key));
    let sidecar = start_sidecar(&dir, &cfg).await;
    let addr = sidecar.proxy_addr();
    eventually("the first page", Duration::from_secs(20), || async {
        readyz(sidecar.admin_addr())
            .await
            .1
            .contains("revocation feed: fresh")
            .then_some(())
    })
    .await;
    for (sub, status) in [
        ("mallory", 401),
        ("trudy", 401),
        ("alice", 200),
        ("Mallory", 200),
    ] {
        let token = token_with(&feed.key, |c| c["sub"] = json!(sub));
        assert_eq!(
            get_with_token(addr, "/items/1", &token).await.status,
            status,
            "{sub}"
        );
    }
    sidecar.shutdown().await;
}

/// The attacker's case of a same-epoch rollback (a Redis failover with replication lag, or a
/// restore, keeps `feed:epoch` with a lower `feed:seq`): the verifier accepted (E,10); the log
/// goes back to (E,5) and revokes jti Y at seq 6, reusing a sequence number the verifier saw.
/// The reset page of the rolled-back log may not drop what the verifier knows (X, lost with
/// the rollback, stays revoked), but Y arrives, and still does once the log passes 10.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn revocations_written_after_a_same_epoch_rollback_still_arrive() {
    let upstream = Upstream::start(Duration::from_secs(0)).await;
    let (key, _) = SigningKey::es256();
    let feed = feed(key).await;
    let epoch = scopegate_issuer::store::memory::now_ms() as i64 - 60_000;
    let exp = now() + 600;
    let jti = |jti: &str| JtiRevocation {
        jti: jti.into(),
        exp,
    };
    let mut first = page_at(None, "c10", true, (epoch, 10));
    first.jtis.push(jti("X"));
    feed.answer(None, &first);
    let dir = TempDir::new();
    let sidecar = start_sidecar(&dir, &feed_config(upstream.addr.port(), &feed, true, 60)).await;
    let (addr, admin) = (sidecar.proxy_addr(), sidecar.admin_addr());
    let token = |id: &'static str| token_with(&feed.key, move |c| c["jti"] = json!(id));
    eventually("(E,10) accepted", Duration::from_secs(20), || async {
        (get_with_token(addr, "/items/1", &token("X")).await.status == 401).then_some(())
    })
    .await;

    // The log went back to (E,5) and revoked Y at seq 6: the issuer answers cursor c10 (ahead
    // of its head) with a reset of every live entry, Y without X, and c6 with what follows.
    let mut reset = page_at(Some("c10"), "c6", true, (epoch, 6));
    reset.jtis.push(jti("Y"));
    feed.answer(Some("c10"), &reset);
    feed.answer(Some("c6"), &page_at(Some("c6"), "c11", false, (epoch, 11)));
    eventually("the rollback reported", Duration::from_secs(20), || async {
        let (_, text) = readyz(admin).await;
        text.contains("revocation feed: ROLLBACK").then_some(())
    })
    .await;
    // The log passes 10: cursor c10 now gets the entries after 10 (without Y), and c11 the
    // revocation of Z at seq 12.
    feed.answer(
        Some("c10"),
        &page_at(Some("c10"), "c11", false, (epoch, 11)),
    );
    let mut later = page_at(Some("c11"), "c12", false, (epoch, 12));
    later.jtis.push(jti("Z"));
    feed.answer(Some("c11"), &later);
    feed.answer(
        Some("c12"),
        &page_at(Some("c12"), "c12", false, (epoch, 12)),
    );
    eventually(
        "the log past 10 followed",
        Duration::from_secs(20),
        || async {
            (get_with_token(addr, "/items/1", &token("Z")).await.status == 401).then_some(())
        },
    )
    .await;
    assert_eq!(
        get_with_token(addr, "/items/1", &token("Y")).await.status,
        401,
        "Y, revoked at a reused sequence number, is refused"
    );
    assert_eq!(
        get_with_token(addr, "/items/1", &token("X")).await.status,
        401,
        "X, lost with the rollback, stays refused"
    );
    assert_eq!(
        get_with_token(addr, "/items/1", &token("other"))
            .await
            .status,
        200
    );
    let (ready, detail) = readyz(admin).await;
    assert_eq!(ready, 200, "fail-closed, yet fresh: {detail}");
    assert!(detail.contains("revocation feed: ROLLBACK"), "{detail}");
    sidecar.shutdown().await;
}
