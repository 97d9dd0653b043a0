//! An issuer pod's OAuth endpoints, reached from the test host as its Service would lead there:
//! curl connects to the pod's address, names the Service's host and trusts the operator's CA.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::Context as _;
use kube::Client;
use serde_json::Value;

use crate::config_map_text;

/// The issuer `https://<service>.<namespace>.svc`, served by a pod at `address`.
#[derive(Debug, Clone)]
pub struct IssuerEndpoint {
    /// Its URL.
    pub url: String,
    host: String,
    address: SocketAddr,
    ca_file: PathBuf,
}

impl IssuerEndpoint {
    /// The issuer of Service `service` in `namespace`, served at `address`; the operator's CA
    /// is written into `dir`.
    pub async fn new(
        client: &Client,
        namespace: &str,
        service: &str,
        address: SocketAddr,
        dir: &Path,
    ) -> anyhow::Result<IssuerEndpoint> {
        let ca = config_map_text(client, namespace, "scopegate-ca", "ca.crt")
            .await?
            .context("no scopegate-ca ConfigMap in the namespace")?;
        std::fs::create_dir_all(dir)?;
        let ca_file = dir.join("ca.crt");
        std::fs::write(&ca_file, ca)?;
        let host = format!("{service}.{namespace}.svc");
        Ok(IssuerEndpoint {
            url: format!("https://{host}"),
            host,
            address,
            ca_file,
        })
    }

    /// POSTs `form` to `path`, with HTTP Basic `basic` when given: (status, JSON body, or the
    /// text as a JSON string when it is not JSON; status 0 when curl got no answer).
    pub fn post(&self, path: &str, form: &[(&str, &str)], basic: Option<&str>) -> (u16, Value) {
        let mut command = Command::new("curl");
        command
            .args(["-sS", "--max-time", "10", "-o", "-", "-w", "\n%{http_code}"])
            .arg("--connect-to")
            .arg(format!(
                "{}:443:{}:{}",
                self.host,
                self.address.ip(),
                self.address.port()
            ))
            .arg("--cacert")
            .arg(&self.ca_file);
        if let Some(basic) = basic {
            command.arg("-u").arg(basic);
        }
        for (name, value) in form {
            command
                .arg("--data-urlencode")
                .arg(format!("{name}={value}"));
        }
        let output = command
            .arg(format!("{}{path}", self.url))
            .output()
            .expect("curl runs");
        let text = String::from_utf8_lossy(&output.stdout).into_owned();
        let (body, status) = text.rsplit_once('\n').unwrap_or(("", &text));
        let body = serde_json::from_str(body).unwrap_or(Value::String(body.to_owned()));
        (status.trim().parse().unwrap_or(0), body)
    }

    /// POSTs `form` to `/oauth2/token`.
    pub fn token(&self, form: &[(&str, &str)]) -> (u16, Value) {
        self.post("/oauth2/token", form, None)
    }
}
