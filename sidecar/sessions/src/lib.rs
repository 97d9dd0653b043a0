//! scopegate-sessions: browser sessions at the sidecar, the token-mediating backend of the
//! OAuth 2.0 for Browser-Based Apps BCP. A browser without a token on the policy's session
//! paths is sent to log in at the issuer (code + PKCE S256); the callback redeems the code and
//! keeps the tokens in one cookie sealed with the policy's session key, so the sidecar keeps no
//! per-session state and the browser's JavaScript never sees a token. A request with the cookie
//! goes on through the verifier as if it carried the access token.
//!
//! The verifier calls [`Sessions::before`] on every request of a policy with sessions (the
//! cookie opened, refreshed when due, CSRF checked, `Authorization` set, our cookies removed
//! from what the app gets), [`Sessions::refused`] when it refuses one (a login redirect for a
//! browser), and [`Sessions::serve`] for the reserved paths (callback, logout). The config is
//! compiled per load ([`Compiled`]); the keys follow their mounted file ([`Sessions::load_keys`]).

pub mod budget;
pub mod cookies;
mod endpoints;
pub mod flight;
mod gate;
pub mod issuer;
pub mod keys;
pub mod login;
pub mod metrics;
mod reply;
pub mod revoked;
pub mod seal;
pub mod state;

use std::fmt::Write as _;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};

use arc_swap::ArcSwapOption;
use aws_lc_rs::digest;
use http::Uri;
use scopegate_core::config::SidecarConfig;
use scopegate_core::path::Pattern;
use scopegate_core::session::{CALLBACK_PATH, SessionConfig};
use scopegate_sidecar_kit::exposition::MetricsCollector;
use scopegate_sidecar_kit::unix_now;

pub use gate::Prepared;

use crate::budget::CodeBudget;
use crate::flight::Flights;
use crate::issuer::IssuerClient;
use crate::keys::Keyring;
use crate::metrics::SessionMetrics;
use crate::revoked::Revoked;

/// Why a sessions section cannot be put in force. Names fields, never values of secrets.
#[derive(Debug, thiserror::Error)]
pub enum SessionsError {
    /// Sessions need the operator's CA to trust the issuer's endpoints.
    #[error("sessions: no caBundlePem to trust the issuer with")]
    NoCaBundle,
    /// A URL field is not an absolute https URL (loopback http allowed where noted).
    #[error("sessions: {0} is not an absolute https URL")]
    Url(&'static str),
    /// The redirect URI's path is not the callback path.
    #[error("sessions: redirectUri must end in {CALLBACK_PATH}, with no query or fragment")]
    RedirectPath,
    /// `afterLogout` is not a path of the app's origin.
    #[error("sessions: afterLogout must be a path of the app's origin (starting with one '/')")]
    AfterLogout,
    /// A session path pattern does not parse.
    #[error("sessions: path pattern {0:?} is not valid")]
    Path(String),
    /// `maxLifetimeSecs` is 0, or the audience or client is empty.
    #[error("sessions: {0} must not be empty or zero")]
    Empty(&'static str),
    /// The TLS client could not be built.
    #[error("sessions: TLS client setup failed")]
    Tls(#[source] scopegate_fetch::TlsSetupError),
}

/// A sessions section, compiled: what requests need.
pub struct Compiled {
    /// The section as written.
    pub config: SessionConfig,
    /// `<namespace>/<name>` of the policy: bound into every cookie.
    pub policy: String,
    /// Where a browser without a session is sent to log in.
    pub paths: Vec<Pattern>,
    /// The app's origin, `scheme://host[:port]` of the redirect URI.
    pub origin: String,
    /// The issuer's endpoints, as the policy's client.
    pub issuer: IssuerClient,
}

impl Compiled {
    /// Compiles the sessions section of `config`; `None` when it has none.
    pub fn new(config: &SidecarConfig) -> Result<Option<Compiled>, SessionsError> {
        let Some(section) = &config.sessions else {
            return Ok(None);
        };
        let ca = config
            .ca_bundle_pem
            .as_deref()
            .ok_or(SessionsError::NoCaBundle)?;
        for (field, value) in [
            ("clientId", &section.client_id),
            ("audience", &section.audience),
            ("issuer", &section.issuer),
        ] {
            if value.is_empty() {
                return Err(SessionsError::Empty(field));
            }
        }
        if section.max_lifetime_secs == 0 {
            return Err(SessionsError::Empty("maxLifetimeSecs"));
        }
        web_url(&section.authorization_endpoint, true)
            .ok_or(SessionsError::Url("authorizationEndpoint"))?;
        let token =
            web_url(&section.token_endpoint, false).ok_or(SessionsError::Url("tokenEndpoint"))?;
        let revocation = web_url(&section.revocation_endpoint, false)
            .ok_or(SessionsError::Url("revocationEndpoint"))?;
        let redirect =
            web_url(&section.redirect_uri, true).ok_or(SessionsError::Url("redirectUri"))?;
        if redirect.path() != CALLBACK_PATH || redirect.query().is_some() {
            return Err(SessionsError::RedirectPath);
        }
        let (Some(scheme), Some(authority)) = (redirect.scheme_str(), redirect.authority()) else {
            return Err(SessionsError::Url("redirectUri"));
        };
        let origin = format!("{scheme}://{}", authority.as_str().to_ascii_lowercase());
        if !login::is_local_path(&section.after_logout) {
            return Err(SessionsError::AfterLogout);
        }
        let paths = section
            .paths
            .iter()
            .map(|p| Pattern::parse(p).map_err(|_| SessionsError::Path(p.clone())))
            .collect::<Result<_, _>>()?;
        let issuer = IssuerClient::new(
            token,
            revocation,
            &section.client_id,
            &section.assertion_path,
            &section.token_audience,
            &section.redirect_uri,
            ca,
        )
        .map_err(SessionsError::Tls)?;
        Ok(Some(Compiled {
            config: section.clone(),
            policy: format!("{}/{}", config.policy.namespace, config.policy.name),
            paths,
            origin,
            issuer,
        }))
    }

    /// Whether a browser on `route_path` without a session is sent to log in.
    pub fn logs_in(&self, route_path: &str) -> bool {
        self.paths.iter().any(|p| p.matches_loosely(route_path))
    }
}

/// An absolute `https://` URL with a host and no fragment; `http://` too for a loopback host
/// when `loopback_http` (a browser on the developer's machine, RFC 8252 §7.3).
fn web_url(text: &str, loopback_http: bool) -> Option<Uri> {
    if text.contains('#') {
        return None;
    }
    let uri: Uri = text.parse().ok()?;
    let host = uri.host()?;
    let loopback = matches!(host, "127.0.0.1" | "[::1]");
    match uri.scheme_str()? {
        "https" => Some(uri),
        "http" if loopback_http && loopback => Some(uri),
        _ => None,
    }
}

/// Where the session keys come from, and what the last read of them found.
#[derive(Default)]
struct KeysSource {
    /// The file read last.
    path: Option<String>,
    /// SHA-256 of its text, when it was read.
    seen: Option<[u8; 32]>,
    /// Why the newest file is not in force, when it is not.
    error: Option<String>,
}

/// The sessions' live state: keys (swapped whole when their file changes), the single-flight
/// refreshes, the callback's budget of refused codes, the refresh tokens revoked lately and
/// the counters. It outlives config reloads.
#[derive(Default)]
pub struct Sessions {
    keys: ArcSwapOption<Keyring>,
    source: Mutex<KeysSource>,
    flights: Flights,
    codes: CodeBudget,
    revoked: Revoked,
    metrics: Arc<SessionMetrics>,
}

impl Sessions {
    /// Empty: no keys, sessions off until [`Sessions::load_keys`] finds some.
    pub fn new() -> Arc<Sessions> {
        Arc::new(Sessions::default())
    }

    /// The keys in force.
    pub fn keys(&self) -> Option<Arc<Keyring>> {
        self.keys.load_full()
    }

    /// Takes what a read of the key file at `path` found (`None`: the config has no sessions).
    /// An unchanged file is nothing new; a file that does not parse, or cannot be read, keeps
    /// the keys in force (and says so in logs, metrics and `/readyz`); another path starts
    /// afresh.
    pub fn load_keys(&self, path: Option<&str>, read: Option<std::io::Result<String>>) {
        let mut source = self.source.lock().unwrap_or_else(|p| p.into_inner());
        let Some(path) = path else {
            if source.path.is_some() {
                self.keys.store(None);
                *source = KeysSource::default();
            }
            return;
        };
        if source.path.as_deref() != Some(path) {
            // Keys of another file never open this policy's cookies.
            self.keys.store(None);
            *source = KeysSource {
                path: Some(path.to_owned()),
                ..KeysSource::default()
            };
        }
        let text = match read {
            Some(Ok(text)) => text,
            Some(Err(err)) => {
                let error = format!("cannot read the session-keys file {path}: {}", err.kind());
                if source.error.as_ref() != Some(&error) {
                    tracing::error!(%error, "session keys unreadable; the last good keys (if any) serve");
                    self.metrics.key_reload(false);
                }
                source.error = Some(error);
                source.seen = None;
                return;
            }
            None => return,
        };
        let hash = digest::digest(&digest::SHA256, text.as_bytes());
        let mut fingerprint = [0u8; 32];
        fingerprint.copy_from_slice(hash.as_ref());
        if source.seen == Some(fingerprint) {
            return;
        }
        source.seen = Some(fingerprint);
        match Keyring::parse(&text) {
            Ok(keys) => {
                let open = keys.open_count(unix_now());
                self.metrics
                    .keys
                    .store(i64::try_from(open).unwrap_or(i64::MAX), Ordering::Relaxed);
                if open == 0 {
                    tracing::warn!(
                        path,
                        "the session-keys file holds no key in force: browser sessions are off"
                    );
                } else {
                    tracing::info!(path, keys = open, "session keys loaded");
                }
                self.keys.store(Some(Arc::new(keys)));
                self.metrics.key_reload(true);
                source.error = None;
            }
            Err(err) => {
                tracing::error!(path, error = %err, "session-keys file refused; the last good keys (if any) serve");
                self.metrics.key_reload(false);
                source.error = Some(format!("the session-keys file {path} is refused: {err}"));
            }
        }
    }

    /// Reads the key file of `compiled` (none without sessions) and takes what it finds.
    pub async fn reload_keys(&self, compiled: Option<&Compiled>) {
        let path = compiled.map(|c| c.config.keys_path.as_str());
        let read = match path {
            Some(path) => Some(tokio::fs::read_to_string(path).await),
            None => None,
        };
        self.load_keys(path, read);
    }

    /// [`Sessions::reload_keys`] without a runtime, for the first config.
    pub fn reload_keys_now(&self, compiled: Option<&Compiled>) {
        let path = compiled.map(|c| c.config.keys_path.as_str());
        let read = path.map(std::fs::read_to_string);
        self.load_keys(path, read);
    }

    /// Appends the sessions' lines to the `/readyz` detail (never a readiness condition: the
    /// pod's bearer traffic works without them).
    pub fn readiness(&self, compiled: Option<&Compiled>, detail: &mut String) {
        let Some(compiled) = compiled else {
            return;
        };
        let source = self.source.lock().unwrap_or_else(|p| p.into_inner());
        let open = self.keys().map_or(0, |k| k.open_count(unix_now()));
        if open == 0 {
            let _ = writeln!(
                detail,
                "sessions: OFF, no session key in force from {} ({}): browsers get 401",
                compiled.config.keys_path,
                source
                    .error
                    .as_deref()
                    .unwrap_or("the file holds no key in force")
            );
        } else {
            let _ = writeln!(
                detail,
                "sessions: {open} key(s) in force, {} refresh(es) held",
                self.flights.len()
            );
            if let Some(error) = &source.error {
                let _ = writeln!(detail, "sessions: {error}; the last good keys serve");
            }
        }
    }

    /// The sessions' metrics, read on each scrape.
    pub fn collector(&self) -> Box<dyn MetricsCollector> {
        self.metrics.refreshes_held.store(
            i64::try_from(self.flights.len()).unwrap_or(i64::MAX),
            Ordering::Relaxed,
        );
        Box::new(metrics::Scrape(self.metrics.clone()))
    }

    /// The counters.
    pub fn metrics(&self) -> &SessionMetrics {
        &self.metrics
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::keys::tests::entry;
    use serde_json::json;

    #[test]
    fn a_refused_key_file_keeps_the_last_good_keys_and_says_so() {
        let sessions = Sessions::new();
        let good = json!({"keys": [entry("k1", 1, 0, None)]}).to_string();
        sessions.load_keys(Some("/keys"), Some(Ok(good.clone())));
        assert!(sessions.keys().unwrap().opening("k1", 10).is_some());
        sessions.load_keys(Some("/keys"), Some(Ok("{broken".into())));
        assert!(sessions.keys().unwrap().opening("k1", 10).is_some(), "kept");
        assert_eq!(sessions.metrics.keys_failing.load(Ordering::Relaxed), 1);
        let missing = std::io::Error::from(std::io::ErrorKind::NotFound);
        sessions.load_keys(Some("/keys"), Some(Err(missing)));
        assert!(sessions.keys().is_some(), "kept");
        sessions.load_keys(Some("/keys"), Some(Ok(good)));
        assert_eq!(sessions.metrics.keys_failing.load(Ordering::Relaxed), 0);
        // Another file: the old keys never open its cookies.
        sessions.load_keys(Some("/other"), Some(Ok("{broken".into())));
        assert!(sessions.keys().is_none());
        sessions.load_keys(None, None);
        assert!(sessions.keys().is_none());
    }

    #[test]
    fn urls_are_https_or_loopback_http_where_a_browser_goes() {
        assert!(web_url("https://auth.shop.svc/oauth2/token", false).is_some());
        assert!(web_url("http://auth.shop.svc/oauth2/token", false).is_none());
        assert!(web_url("http://127.0.0.1:8080/.scopegate/callback", true).is_some());
        assert!(web_url("http://127.0.0.1:8080/x", false).is_none());
        assert!(web_url("http://app.example/x", true).is_none());
        assert!(web_url("https://app.example/x#f", true).is_none());
        assert!(web_url("/relative", true).is_none());
    }
}
