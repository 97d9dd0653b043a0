//! The Google stand-in of the story: npm `oidc-provider` (OpenID Certified, installed by
//! `scripts/setup.sh`) serving `https://accounts.google.test` on the pod network's host
//! address, with a certificate from a CA made here that nothing else trusts. The issuer pod
//! reaches it through a Service-like route; the story's browser by `--connect-to`.

use std::net::{Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};

use anyhow::{Context as _, ensure};

/// The stand-in's host name (a reserved test domain).
pub const HOST: &str = "accounts.google.test";
/// The client id the issuer is registered with at the stand-in.
pub const CLIENT_ID: &str = "shop-storefront.apps.googleusercontent.test";

/// A running stand-in.
pub struct GoogleStandIn {
    /// Its issuer identifier (`https://accounts.google.test`).
    pub issuer: String,
    /// Where it listens (the pod network's host address).
    pub address: SocketAddr,
    /// The PEM of the CA that signed its certificate (the upstream's `caBundle`).
    pub ca_pem: String,
    /// The client secret registered for [`CLIENT_ID`].
    pub client_secret: String,
    child: Child,
}

impl Drop for GoogleStandIn {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn idp_dir() -> PathBuf {
    std::env::var_os("SCOPEGATE_IDP_DIR").map_or_else(
        || PathBuf::from(std::env::var_os("HOME").unwrap_or_default()).join(".cache/scopegate/idp"),
        PathBuf::from,
    )
}

fn free_port(host: Ipv4Addr) -> anyhow::Result<u16> {
    Ok(std::net::TcpListener::bind((host, 0))?.local_addr()?.port())
}

impl GoogleStandIn {
    /// Starts it on `host`, with `redirect_uri` (the issuer's callback URL) registered; its
    /// files and log go to `dir`.
    pub fn start(host: Ipv4Addr, redirect_uri: &str, dir: &Path) -> anyhow::Result<Self> {
        let modules = idp_dir();
        ensure!(
            modules.join("node_modules/oidc-provider").is_dir(),
            "oidc-provider is not installed in {}: run scripts/setup.sh",
            modules.display()
        );
        let ca_key = rcgen::KeyPair::generate()?;
        let mut ca_params = rcgen::CertificateParams::new(Vec::<String>::new())?;
        ca_params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        ca_params
            .distinguished_name
            .push(rcgen::DnType::CommonName, "Google stand-in test CA");
        let ca = ca_params.self_signed(&ca_key)?;
        let issuer_ca = rcgen::Issuer::new(ca_params, ca_key);
        let key = rcgen::KeyPair::generate()?;
        let leaf =
            rcgen::CertificateParams::new(vec![HOST.to_owned()])?.signed_by(&key, &issuer_ca)?;
        let (cert_file, key_file) = (dir.join("google.crt"), dir.join("google.key"));
        std::fs::write(&cert_file, leaf.pem())?;
        std::fs::write(&key_file, key.serialize_pem())?;

        let mut secret = [0u8; 24];
        aws_lc_rs::rand::fill(&mut secret).map_err(|_| anyhow::anyhow!("no randomness"))?;
        let client_secret: String = secret.iter().map(|b| format!("{b:02x}")).collect();
        // The module resolves oidc-provider from the directory it is in.
        let script = modules.join(format!("idp-story-{}.mjs", std::process::id()));
        std::fs::copy(
            crate::repo_root().join("sidecar/tests/idp/idp.mjs"),
            &script,
        )?;
        let port = free_port(host)?;
        let issuer = format!("https://{HOST}");
        let log = std::fs::File::create(dir.join("google-stand-in.log"))?;
        let mut child = Command::new("node")
            .arg(&script)
            .env("HOST", host.to_string())
            .env("PORT", port.to_string())
            .env("ISSUER", &issuer)
            .env("KEY", &key_file)
            .env("CERT", &cert_file)
            .env("CLIENT_ID", CLIENT_ID)
            .env("CLIENT_SECRET", &client_secret)
            .env("REDIRECT_URI", redirect_uri)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(log)
            .spawn()
            .context("starting node")?;
        let stdout = child.stdout.take().context("no stdout")?;
        let mut stdout = std::io::BufReader::new(stdout);
        let mut line = String::new();
        std::io::BufRead::read_line(&mut stdout, &mut line)?;
        let _ = std::fs::remove_file(&script);
        // The provider writes notices to stdout as it serves: keep its pipe drained.
        let mut notices = std::fs::File::create(dir.join("google-stand-in.out"))?;
        std::thread::spawn(move || std::io::copy(&mut stdout, &mut notices));
        let stand_in = Self {
            issuer,
            address: SocketAddr::from((host, port)),
            ca_pem: ca.pem(),
            client_secret,
            child,
        };
        ensure!(
            line.starts_with("idp ready"),
            "the Google stand-in did not start (see {}): {line}",
            dir.join("google-stand-in.log").display()
        );
        Ok(stand_in)
    }
}
