//! The whole story, asserted: Helm-installed scopegate, the operator as its ServiceAccount,
//! the webhook injecting the sidecar into the `auth` and `orders` pods, both pods running as a
//! kubelet would, a client getting tokens from the issuer over TLS and calling `orders`;
//! keys rotating under load with zero rejected valid requests; a revoked token refused.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use anyhow::ensure;
use scopegate_e2e::story::Shop;
use scopegate_e2e::{ControlPlane, eventually};

#[tokio::test]
async fn the_shop_issues_verifies_rotates_under_load_and_revokes() {
    let plane = ControlPlane::from_env().expect("control plane");
    let client = plane.client().await.expect("client");
    let namespace = format!("e2e-story-{}", std::process::id());
    let logs = std::path::PathBuf::from(std::env::var("E2E_DIR").unwrap_or_else(|_| "/tmp".into()))
        .join("logs");
    std::fs::create_dir_all(&logs).unwrap();
    let shop = Arc::new(
        Shop::start(&client, &namespace, &logs, &|step| {
            eprintln!("story: {step}")
        })
        .await
        .expect("the shop runs"),
    );

    // client_credentials over TLS, then every answer the policy defines.
    let read = shop.billing_token("read:orders").expect("token");
    let write = shop.billing_token("write:orders").expect("token");
    assert_eq!(
        shop.orders("GET", "/orders", Some(&read)).unwrap().status,
        200
    );
    assert_eq!(shop.orders("GET", "/orders", None).unwrap().status, 401);
    let denied = shop.orders("POST", "/orders", Some(&read)).unwrap();
    assert_eq!(denied.status, 403);
    assert!(
        denied
            .header("www-authenticate")
            .unwrap_or_default()
            .contains("insufficient_scope")
    );
    assert_eq!(
        shop.orders("GET", "/orders", Some("not a token"))
            .unwrap()
            .status,
        400
    );
    let posts: Vec<u16> = (0..4)
        .map(|_| shop.orders("POST", "/orders", Some(&write)).unwrap().status)
        .collect();
    assert_eq!(posts, [201, 201, 201, 429]);

    // A user logs in through the app's own login page (authorization code + PKCE).
    let login = shop.login("alice", "wonderland").expect("login flow");
    let user_token = login["access_token"]
        .as_str()
        .expect("access token")
        .to_owned();
    assert!(
        login["refresh_token"].is_string(),
        "a refresh token for the public client"
    );
    let mine = shop.orders("GET", "/orders", Some(&user_token)).unwrap();
    assert_eq!(mine.status, 200);
    assert!(mine.body.contains("user:alice"), "{}", mine.body);
    assert!(
        shop.login("alice", "wrong").is_err(),
        "a wrong password gets no code"
    );

    // Keys rotate twice under load: no valid request may be rejected.
    let stop = Arc::new(AtomicBool::new(false));
    let load = {
        let (shop, stop) = (shop.clone(), stop.clone());
        std::thread::spawn(move || {
            let (mut ok, mut failed) = (0u32, Vec::new());
            let mut token = shop.billing_token("read:orders").expect("token");
            let mut i = 0u32;
            while !stop.load(Ordering::Relaxed) {
                if i.is_multiple_of(5) {
                    match shop.billing_token("read:orders") {
                        Ok(fresh) => token = fresh,
                        Err(err) => failed.push(format!("token: {err}")),
                    }
                }
                match shop.orders("GET", "/orders", Some(&token)) {
                    Ok(r) if r.status == 200 => ok += 1,
                    Ok(r) => {
                        failed.push(format!("{} {:?}", r.status, r.header("www-authenticate")))
                    }
                    Err(err) => failed.push(err.to_string()),
                }
                i += 1;
                std::thread::sleep(Duration::from_millis(100));
            }
            (ok, failed)
        })
    };
    let mut kids = vec![shop.active_kid().await.unwrap()];
    for round in ["1", "2"] {
        shop.rotate(round).await.unwrap();
        let previous = kids.last().cloned().unwrap_or_default();
        let next = eventually("the successor key signing", || {
            let (shop, previous) = (shop.clone(), previous.clone());
            async move {
                let kid = shop.active_kid().await?;
                ensure!(kid != previous, "still {kid}");
                Ok(kid)
            }
        })
        .await
        .unwrap();
        kids.push(next);
        // Let tokens signed by the new key flow for a while.
        tokio::time::sleep(Duration::from_secs(3)).await;
    }
    stop.store(true, Ordering::Relaxed);
    let (ok, failed) = tokio::task::spawn_blocking(move || load.join().expect("load thread"))
        .await
        .unwrap();
    eprintln!(
        "story: rotated {} -> {} -> {} under load: {ok} requests accepted, {} rejected",
        kids[0],
        kids[1],
        kids[2],
        failed.len()
    );
    assert!(ok > 50, "the load ran ({ok} requests)");
    assert!(
        failed.is_empty(),
        "valid requests rejected during rotation: {failed:?}"
    );

    // A revoked token is refused at the verifier, through the issuer's signed feed.
    let doomed = shop.billing_token("read:orders").unwrap();
    assert_eq!(
        shop.orders("GET", "/orders", Some(&doomed)).unwrap().status,
        200
    );
    let revoked_at = Instant::now();
    shop.revoke(&doomed).unwrap();
    eventually("the revoked token refused", || {
        let (shop, doomed) = (shop.clone(), doomed.clone());
        async move {
            let response = shop.orders("GET", "/orders", Some(&doomed))?;
            ensure!(response.status == 401, "still {}", response.status);
            Ok(())
        }
    })
    .await
    .unwrap();
    let took = revoked_at.elapsed();
    eprintln!("story: revoked token refused after {took:?}");
    assert!(
        took < Duration::from_secs(60),
        "within the feed's staleness bound"
    );
    assert_eq!(
        shop.orders("GET", "/orders", Some(&read)).unwrap().status,
        200,
        "other tokens still work"
    );
}
