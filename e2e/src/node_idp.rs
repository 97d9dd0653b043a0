//! npm `oidc-provider` (OpenID Certified, installed by `scripts/setup.sh`) run as a node
//! process over HTTPS with a certificate from a CA made here that nothing else trusts: the
//! story's Google stand-in ([`crate::google`]) and the outside identity provider of the
//! discovery test.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};

use anyhow::{Context as _, ensure};

/// A fresh CA and a certificate it signed, written to files.
pub struct TestTls {
    /// The CA's PEM (what a `caBundle` trusts).
    pub ca_pem: String,
    /// The certificate's PEM file.
    pub cert_file: PathBuf,
    /// Its key's PEM file.
    pub key_file: PathBuf,
}

impl TestTls {
    /// A CA named `ca_name` and a certificate for `names` (DNS names or IP addresses), written
    /// to `dir` as `<file>.crt` and `<file>.key`.
    pub fn new(dir: &Path, file: &str, ca_name: &str, names: &[&str]) -> anyhow::Result<Self> {
        let ca_key = rcgen::KeyPair::generate()?;
        let mut ca_params = rcgen::CertificateParams::new(Vec::<String>::new())?;
        ca_params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        ca_params
            .distinguished_name
            .push(rcgen::DnType::CommonName, ca_name);
        let ca = ca_params.self_signed(&ca_key)?;
        let issuer = rcgen::Issuer::new(ca_params, ca_key);
        let key = rcgen::KeyPair::generate()?;
        let names: Vec<String> = names.iter().map(|n| (*n).to_owned()).collect();
        let leaf = rcgen::CertificateParams::new(names)?.signed_by(&key, &issuer)?;
        let (cert_file, key_file) = (
            dir.join(format!("{file}.crt")),
            dir.join(format!("{file}.key")),
        );
        std::fs::write(&cert_file, leaf.pem())?;
        std::fs::write(&key_file, key.serialize_pem())?;
        Ok(Self {
            ca_pem: ca.pem(),
            cert_file,
            key_file,
        })
    }
}

/// Where scripts/setup.sh installed oidc-provider.
fn idp_dir() -> PathBuf {
    std::env::var_os("SCOPEGATE_IDP_DIR").map_or_else(
        || PathBuf::from(std::env::var_os("HOME").unwrap_or_default()).join(".cache/scopegate/idp"),
        PathBuf::from,
    )
}

/// Runs `sidecar/tests/idp/<script>` with `env` until its `idp ready` line; its log goes to
/// `dir/<name>.log` and `dir/<name>.out`. Kill the child to stop it.
pub fn spawn(
    script: &str,
    env: &[(&str, String)],
    dir: &Path,
    name: &str,
) -> anyhow::Result<Child> {
    let modules = idp_dir();
    ensure!(
        modules.join("node_modules/oidc-provider").is_dir(),
        "oidc-provider is not installed in {}: run scripts/setup.sh",
        modules.display()
    );
    // The module resolves oidc-provider from the directory it is in.
    let copy = modules.join(format!("{name}-{}-{script}", std::process::id()));
    std::fs::copy(
        crate::repo_root().join("sidecar/tests/idp").join(script),
        &copy,
    )?;
    let log = dir.join(format!("{name}.log"));
    let mut child = Command::new("node")
        .arg(&copy)
        .envs(env.iter().map(|(k, v)| (*k, v.as_str())))
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(std::fs::File::create(&log)?)
        .spawn()
        .context("starting node")?;
    let stdout = child.stdout.take().context("no stdout")?;
    let mut stdout = std::io::BufReader::new(stdout);
    let mut line = String::new();
    std::io::BufRead::read_line(&mut stdout, &mut line)?;
    let _ = std::fs::remove_file(&copy);
    // The provider writes notices to stdout as it serves: keep its pipe drained.
    let mut notices = std::fs::File::create(dir.join(format!("{name}.out")))?;
    std::thread::spawn(move || std::io::copy(&mut stdout, &mut notices));
    if !line.starts_with("idp ready") {
        let _ = child.kill();
        let _ = child.wait();
        anyhow::bail!("{name} did not start (see {}): {line}", log.display());
    }
    Ok(child)
}
