//! `token` against a live issuer: the real issuer role of the sidecar runs in-process over
//! TLS on loopback; the CLI verifies the token it issued against the JWKS fetched from the
//! issuer's endpoint, and against the config of a policy; tokens from another key, another
//! issuer, or for another audience are refused with the check that failed.

#![allow(clippy::unwrap_used)] // test code: a panic is the failure report

#[path = "../../sidecar/tests/support/mod.rs"]
mod support;

use std::process::{Command, Output};

use serde_json::{Value, json};
use support::issuer::*;
use support::*;

const CLI: &str = env!("CARGO_BIN_EXE_kubectl-scopegate");

fn cli(args: &[&str]) -> Output {
    Command::new(CLI).args(args).output().unwrap()
}

fn report(out: &Output) -> Value {
    serde_json::from_slice(&out.stdout).unwrap_or_else(|_| {
        panic!(
            "not JSON: {}\n{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        )
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tokens_of_a_live_issuer_verify_and_forgeries_do_not() {
    let issuer = Issuer::start(Spec::default()).await;
    let r = issuer
        .token(&BACKEND, "grant_type=client_credentials&scope=read:items")
        .await;
    assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
    let token = r.json()["access_token"].as_str().unwrap().to_owned();
    let ca = issuer.dir.join("ca.pem");
    std::fs::write(&ca, &issuer.certs.ca_pem).unwrap();
    let jwks_url = format!("{}/.well-known/jwks.json", issuer.url);
    let config = issuer.dir.join("config.json");
    let ca = ca.to_str().unwrap().to_owned();
    let config = config.to_str().unwrap().to_owned();
    let url = issuer.url.clone();

    let run = move |token: String, extra: Vec<String>| {
        let jwks_url = jwks_url.clone();
        let ca = ca.clone();
        // The issuer the token must name: the live one unless the case names another.
        let url = match extra.iter().position(|a| a == "--issuer") {
            Some(_) => None,
            None => Some(url.clone()),
        };
        tokio::task::spawn_blocking(move || {
            let mut args = vec![
                "token".to_owned(),
                token,
                "--jwks".into(),
                jwks_url,
                "--ca-file".into(),
                ca,
                "--offline".into(),
                "-o".into(),
                "json".into(),
            ];
            if let Some(url) = url {
                args.extend(["--issuer".to_owned(), url]);
            }
            args.extend(extra);
            let refs: Vec<&str> = args.iter().map(String::as_str).collect();
            cli(&refs)
        })
    };

    // The issuer's own token: decoded and verified with the JWKS fetched over TLS.
    let out = run.clone()(token.clone(), vec![]).await.unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let r = report(&out);
    assert_eq!(r["kind"], "TokenReport");
    assert_eq!(r["header"]["typ"], "at+jwt");
    assert_eq!(r["claims"]["client_id"], BACKEND.id);
    assert_eq!(r["claims"]["scope"], "read:items");
    assert_eq!(r["verification"]["valid"], true, "{r:#}");
    assert!(
        r["verification"]["unchecked"]
            .to_string()
            .contains("audience"),
        "{r:#}"
    );

    // Refused: another audience, another issuer, a signature by a key of the same kid.
    let out = run.clone()(token.clone(), vec!["--audience".into(), "payments".into()])
        .await
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert_eq!(
        report(&out)["verification"]["failed"],
        "audience not accepted"
    );
    let out = run.clone()(
        token.clone(),
        vec!["--issuer".into(), "https://evil.example".into()],
    )
    .await
    .unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert_eq!(report(&out)["verification"]["failed"], "untrusted issuer");
    let header = header_of(&token);
    let claims = claims_of(&token);
    let (attacker, _) = SigningKey::es256();
    let forged = mint(&attacker, &header, &claims);
    let out = run.clone()(forged, vec![]).await.unwrap();
    assert_eq!(
        out.status.code(),
        Some(1),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(report(&out)["verification"]["valid"], false);
    assert!(
        report(&out)["verification"]["failed"]
            .as_str()
            .unwrap()
            .starts_with("jws:"),
        "{}",
        report(&out)
    );

    // Which policies would accept it: the issuer's own config trusts its keys and audience.
    let out = cli(&["token", &token, "--config", &config, "-o", "json"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let r = report(&out);
    assert_eq!(
        r["policies"],
        json!([{"policy": "shop/auth", "accepted": true}])
    );
    let expired = {
        let mut c = claims.clone();
        c["exp"] = json!(now() - 3600);
        mint(&attacker, &header, &c)
    };
    let out = cli(&["token", &expired, "--config", &config]);
    assert_eq!(out.status.code(), Some(1));
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("shop/auth   no"), "{text}");
    assert!(text.contains("ago)"), "exp shown in human time: {text}");
    issuer.stop().await;
}
