//! The issuer driven by independent implementations from the test venv
//! (`scripts/setup.sh`): Authlib's OAuth 2.0 client runs every flow (`tests/py/oauth_flows.py`)
//! and Authlib's RFC 9068 validator, PyJWT and jwcrypto check the tokens against the issuer's
//! JWKS, for each asymmetric algorithm. A missing venv is a failure with instructions.

#![allow(clippy::unwrap_used)] // test code: a panic is the failure report

mod support;

use std::path::PathBuf;

use serde_json::json;
use support::issuer::*;

fn venv_python() -> PathBuf {
    let home = std::env::var("HOME").expect("HOME is set");
    let cache =
        std::env::var("SCOPEGATE_CACHE").unwrap_or_else(|_| format!("{home}/.cache/scopegate"));
    let python = PathBuf::from(cache).join("venv/bin/python");
    assert!(
        python.exists(),
        "the Python test peers are missing ({}): run scripts/setup.sh to install Authlib, PyJWT and jwcrypto",
        python.display()
    );
    python
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn authlib_drives_every_flow_and_three_libraries_verify_the_tokens() {
    let script = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/py/oauth_flows.py");
    for alg in ["ES256", "EdDSA", "RS256"] {
        let issuer = Issuer::start(Spec {
            alg,
            ..Spec::default()
        })
        .await;
        let ca_file = issuer.dir.join("ca.pem");
        std::fs::write(&ca_file, &issuer.certs.ca_pem).unwrap();
        let client = |c: &TestClient, method: &str| json!({"id": c.id, "secret": c.secret, "method": method});
        let mut web = client(&WEB, "client_secret_basic");
        web["redirect_uri"] = json!(WEB_REDIRECT);
        let settings = json!({
            "issuer": issuer.url,
            "ca_file": ca_file,
            "mint_socket": issuer.mint_socket,
            "audience": ORDERS,
            "clients": {
                "backend": client(&BACKEND, "client_secret_basic"),
                "poster": client(&POSTER, "client_secret_post"),
                "web": web,
                "cli": client(&CLI, "none"),
                "orders_rs": client(&ORDERS_RS, "client_secret_basic"),
            }
        });
        let output = tokio::process::Command::new(venv_python())
            .arg(&script)
            .arg(settings.to_string())
            .env("REQUESTS_CA_BUNDLE", &ca_file)
            .output()
            .await
            .unwrap();
        assert!(
            output.status.success(),
            "{alg}: oauth_flows.py failed:\n{}",
            String::from_utf8_lossy(&output.stderr)
        );
        let findings: serde_json::Value = serde_json::from_slice(&output.stdout).unwrap();
        assert_eq!(findings.as_object().unwrap().len(), 6, "{alg}: {findings}");
        eprintln!("{alg}: {findings}");
        issuer.stop().await;
    }
}
