//! Reading a document from a file or an https URL (a JWKS, an OpenAPI document).

use std::time::Duration;

use anyhow::{Context as _, bail};

use crate::Failure;

/// Largest document read over the network.
const MAX_BYTES: usize = 16 * 1024 * 1024;

/// Reads `location`: an `https://` URL (verified against the system roots plus `ca_pem`), or
/// a file path (`-` is standard input).
pub async fn read(location: &str, ca_pem: Option<&str>) -> anyhow::Result<Vec<u8>> {
    if location.starts_with("https://") {
        return get(location, ca_pem).await;
    }
    if location.starts_with("http://") {
        bail!("{location}: only https URLs are fetched (keys over plain HTTP could be anyone's)");
    }
    if location == "-" {
        let mut buf = Vec::new();
        std::io::Read::read_to_end(&mut std::io::stdin(), &mut buf)?;
        return Ok(buf);
    }
    std::fs::read(location).map_err(|err| match err.kind() {
        std::io::ErrorKind::NotFound => {
            Failure::NotFound(format!("{location}: no such file")).into()
        }
        _ => anyhow::Error::new(err).context(format!("reading {location}")),
    })
}

/// GETs an https URL: the system roots plus `ca_pem`, through the environment's proxy.
pub async fn get(url: &str, ca_pem: Option<&str>) -> anyhow::Result<Vec<u8>> {
    let client = scopegate_fetch::client(ca_pem)?;
    let body = scopegate_fetch::get(&client, url, Duration::from_secs(15), MAX_BYTES)
        .await
        .with_context(|| format!("GET {url}"))?;
    Ok(body.to_vec())
}
