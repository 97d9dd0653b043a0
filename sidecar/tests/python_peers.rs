//! Independent cross-check: tokens minted by PyJWT and jwcrypto (from the test venv that
//! `scripts/setup.sh` installs) pass the sidecar, and the attack shapes those libraries can
//! produce fail. A missing venv is a failure with instructions, never a skip.

#![allow(clippy::unwrap_used)] // test code: a panic is the failure report

mod support;

use std::path::PathBuf;
use std::time::Duration;

use serde_json::Value;
use support::*;

fn venv_python() -> PathBuf {
    let home = std::env::var("HOME").expect("HOME is set");
    let cache =
        std::env::var("SCOPEGATE_CACHE").unwrap_or_else(|_| format!("{home}/.cache/scopegate"));
    let python = PathBuf::from(cache).join("venv/bin/python");
    assert!(
        python.exists(),
        "the Python test peers are missing ({}): run scripts/setup.sh to install PyJWT and jwcrypto",
        python.display()
    );
    python
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pyjwt_and_jwcrypto_tokens_pass_and_their_attack_shapes_fail() {
    let script = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/py/peers.py");
    let output = tokio::process::Command::new(venv_python())
        .arg(&script)
        .args([ISSUER, AUDIENCE])
        .output()
        .await
        .unwrap();
    assert!(
        output.status.success(),
        "peers.py failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    let peers: Value = serde_json::from_slice(&output.stdout).unwrap();
    let upstream = Upstream::start(Duration::from_secs(0)).await;
    let dir = TempDir::new();
    let sidecar = start_sidecar(&dir, &config(upstream.addr.port(), peers["jwks"].clone())).await;
    let cases = peers["cases"].as_array().unwrap();
    assert!(cases.len() >= 20, "{} cases", cases.len());
    let mut failures = Vec::new();
    for case in cases {
        let name = case["name"].as_str().unwrap();
        let token = case["token"].as_str().unwrap();
        let want = case["status"].as_u64().unwrap() as u16;
        let got = get_with_token(sidecar.proxy_addr(), "/items/1", token)
            .await
            .status;
        if got != want {
            failures.push(format!("{name}: got {got}, want {want}"));
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
    eprintln!("{} PyJWT/jwcrypto cases passed", cases.len());
    sidecar.shutdown().await;
}
