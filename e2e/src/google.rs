//! The Google stand-in of the story: npm `oidc-provider` (OpenID Certified, installed by
//! `scripts/setup.sh`) serving `https://accounts.google.test` on the pod network's host
//! address, with a certificate from a CA made here that nothing else trusts. The issuer pod
//! reaches it through a Service-like route; the story's browser by `--connect-to`.

use std::net::{Ipv4Addr, SocketAddr};
use std::path::Path;
use std::process::Child;

use crate::node_idp::{self, TestTls};

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

impl GoogleStandIn {
    /// Starts it on `host`, with `redirect_uri` (the issuer's callback URL) registered; its
    /// files and log go to `dir`.
    pub fn start(host: Ipv4Addr, redirect_uri: &str, dir: &Path) -> anyhow::Result<Self> {
        let tls = TestTls::new(dir, "google", "Google stand-in test CA", &[HOST])?;
        let mut secret = [0u8; 24];
        aws_lc_rs::rand::fill(&mut secret).map_err(|_| anyhow::anyhow!("no randomness"))?;
        let client_secret: String = secret.iter().map(|b| format!("{b:02x}")).collect();
        let port = crate::ports::free_port_on(host);
        let issuer = format!("https://{HOST}");
        let env = [
            ("HOST", host.to_string()),
            ("PORT", port.to_string()),
            ("ISSUER", issuer.clone()),
            ("KEY", tls.key_file.display().to_string()),
            ("CERT", tls.cert_file.display().to_string()),
            ("CLIENT_ID", CLIENT_ID.to_owned()),
            ("CLIENT_SECRET", client_secret.clone()),
            ("REDIRECT_URI", redirect_uri.to_owned()),
        ];
        let child = node_idp::spawn("idp.mjs", &env, dir, "google-stand-in")?;
        Ok(Self {
            issuer,
            address: SocketAddr::from((host, port)),
            ca_pem: tls.ca_pem,
            client_secret,
            child,
        })
    }
}
