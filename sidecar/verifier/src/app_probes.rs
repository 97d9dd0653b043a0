//! The app's own HTTP probes, replayed on the admin port. The injection webhook points the
//! app container's liveness, readiness and startup probes at
//! `/app-health/<container>/<kind>` on the sidecar's admin port (the app port itself may be
//! closed to everything but the sidecar) and passes the originals in `SCOPEGATE_APP_PROBES`
//! as `{"<container>/<kind>": {"port": 8080, "path": "/ready"}}`. The sidecar GETs
//! `http://127.0.0.1:<port><path>` with a short timeout and answers 200 for a 2xx or 3xx,
//! 503 for anything else.

use std::collections::BTreeMap;
use std::time::Duration;

use bytes::Bytes;
use http::StatusCode;
use http_body_util::Empty;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use serde::Deserialize;

/// Name of the environment variable holding the probes.
pub const APP_PROBES_ENV: &str = "SCOPEGATE_APP_PROBES";

/// How long the app has to answer a probe.
pub const PROBE_TIMEOUT: Duration = Duration::from_secs(2);

/// One original probe.
#[derive(Deserialize, Clone, Debug, PartialEq, Eq)]
pub struct AppProbe {
    /// The app's port.
    pub port: u16,
    /// The path (with query) the probe asked for.
    pub path: String,
}

/// The probes by `<container>/<kind>`.
#[derive(Clone, Default)]
pub struct AppProbes {
    probes: BTreeMap<String, AppProbe>,
    client: Option<Client<HttpConnector, Empty<Bytes>>>,
}

impl std::fmt::Debug for AppProbes {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_map().entries(self.probes.iter()).finish()
    }
}

/// The probes document does not parse.
#[derive(Debug, thiserror::Error)]
#[error("{APP_PROBES_ENV} is not a JSON object of {{\"port\", \"path\"}} probes")]
pub struct AppProbesError(#[source] serde_json::Error);

impl AppProbes {
    /// Parses the JSON of [`APP_PROBES_ENV`] (empty text: no probes). Paths must start with `/`.
    pub fn parse(text: &str) -> Result<AppProbes, AppProbesError> {
        if text.trim().is_empty() {
            return Ok(AppProbes::default());
        }
        let mut probes: BTreeMap<String, AppProbe> =
            serde_json::from_str(text).map_err(AppProbesError)?;
        for probe in probes.values_mut() {
            if !probe.path.starts_with('/') {
                probe.path.insert(0, '/');
            }
        }
        let mut connector = HttpConnector::new();
        connector.set_connect_timeout(Some(PROBE_TIMEOUT));
        let client = Client::builder(TokioExecutor::new())
            .pool_max_idle_per_host(0)
            .build(connector);
        Ok(AppProbes {
            probes,
            client: Some(client),
        })
    }

    /// Answers `/app-health/<container>/<kind>`: `None` when no such probe is known.
    pub async fn check(&self, name: &str) -> Option<StatusCode> {
        let probe = self.probes.get(name)?;
        let client = self.client.as_ref()?;
        let uri: http::Uri = format!("http://127.0.0.1:{}{}", probe.port, probe.path)
            .parse()
            .ok()?;
        let request = http::Request::get(uri)
            .header(http::header::USER_AGENT, "scopegate-probe")
            .body(Empty::new())
            .ok()?;
        let outcome = tokio::time::timeout(PROBE_TIMEOUT, client.request(request)).await;
        let healthy =
            matches!(&outcome, Ok(Ok(r)) if r.status().is_success() || r.status().is_redirection());
        if !healthy {
            tracing::debug!(probe = name, "app probe failed");
        }
        Some(if healthy {
            StatusCode::OK
        } else {
            StatusCode::SERVICE_UNAVAILABLE
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_the_webhook_document() {
        let p = AppProbes::parse(r#"{"app/readiness": {"port": 8080, "path": "/ready"}, "app/liveness": {"port": 8080, "path": "healthz"}}"#).unwrap();
        assert_eq!(
            p.probes["app/readiness"],
            AppProbe {
                port: 8080,
                path: "/ready".into()
            }
        );
        assert_eq!(p.probes["app/liveness"].path, "/healthz");
        assert!(AppProbes::parse("").unwrap().probes.is_empty());
        assert!(AppProbes::parse("[1]").is_err());
        assert!(AppProbes::parse(r#"{"a/b": {"port": 70000, "path": "/"}}"#).is_err());
    }
}
