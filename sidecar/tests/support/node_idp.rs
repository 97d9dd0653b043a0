//! oidc-provider (the npm package scripts/setup.sh installs) run as a node process over HTTPS
//! on loopback: the upstream tests' Google stand-in and the outside IdP of outside_idp.rs.

use std::path::PathBuf;
use std::time::Duration;

use tokio::io::AsyncBufReadExt;

/// Where scripts/setup.sh installed oidc-provider.
fn idp_dir() -> PathBuf {
    std::env::var_os("SCOPEGATE_IDP_DIR").map_or_else(
        || PathBuf::from(std::env::var_os("HOME").unwrap()).join(".cache/scopegate/idp"),
        PathBuf::from,
    )
}

/// Runs `tests/idp/<script>` with `env` and waits for its `idp ready` line; the process is
/// killed when the returned child is dropped.
pub async fn spawn(script: &str, env: &[(&str, String)]) -> tokio::process::Child {
    let dir = idp_dir();
    assert!(
        dir.join("node_modules/oidc-provider").is_dir(),
        "oidc-provider is not installed in {}: run scripts/setup.sh",
        dir.display()
    );
    // The module resolves oidc-provider from its own directory.
    let copy = dir.join(format!(
        "{}-{}-{script}",
        std::process::id(),
        super::unique()
    ));
    std::fs::copy(
        PathBuf::from(env!("CARGO_MANIFEST_DIR"))
            .join("tests/idp")
            .join(script),
        &copy,
    )
    .unwrap();
    let mut child = tokio::process::Command::new("node")
        .arg(&copy)
        .envs(env.iter().map(|(k, v)| (*k, v.as_str())))
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::inherit())
        .kill_on_drop(true)
        .spawn()
        .expect("node runs");
    let stdout = child.stdout.take().unwrap();
    let mut lines = tokio::io::BufReader::new(stdout).lines();
    let line = tokio::time::timeout(Duration::from_secs(60), lines.next_line())
        .await
        .expect("the IdP starts")
        .unwrap()
        .expect("a line from the IdP");
    assert!(line.starts_with("idp ready"), "{line}");
    let _ = std::fs::remove_file(&copy);
    tokio::spawn(async move { while let Ok(Some(_)) = lines.next_line().await {} });
    child
}
