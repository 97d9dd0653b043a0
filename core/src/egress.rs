//! The egress section's grammar, shared by the check both sides run and the sidecar's egress
//! proxy: a target's URL parsed into the host and port an app's request must name, how a
//! requested host is compared with it, and what makes an egress section unusable.

use http::Uri;

use crate::config::{EgressConfig, SidecarConfig};
use crate::scope::is_scope_token;

/// A target's URL, parsed: where its calls go, and what a request must name to reach it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TargetUrl {
    /// `https` (else plain `http`, for an in-cluster target only).
    pub https: bool,
    /// The host in lower case, without a trailing dot (an IPv6 literal keeps its brackets).
    pub host: String,
    /// The port the URL names, or its scheme's default.
    pub port: u16,
}

impl TargetUrl {
    /// Parses `http(s)://host[:port]` (a trailing `/` allowed); `None` for anything else: other
    /// schemes, userinfo, a path, a query, a fragment, port 0.
    pub fn parse(url: &str) -> Option<TargetUrl> {
        if url.contains('#') {
            return None;
        }
        let uri: Uri = url.parse().ok()?;
        let https = match uri.scheme_str()? {
            "https" => true,
            "http" => false,
            _ => return None,
        };
        let authority = uri.authority()?;
        // The Authority grammar of the http crate takes `user@host`; a target never has one.
        if authority.as_str().contains('@')
            || uri.query().is_some()
            || !matches!(uri.path(), "" | "/")
        {
            return None;
        }
        let host = normalized_host(authority.host())?;
        let port = match authority.port() {
            Some(port) => port.as_u16(),
            None if https => 443,
            None => 80,
        };
        (port != 0).then_some(TargetUrl { https, host, port })
    }

    /// The Host header of a call to this target: the host, and the port unless it is the
    /// scheme's default.
    pub fn authority(&self) -> String {
        let default = if self.https { 443 } else { 80 };
        if self.port == default {
            self.host.clone()
        } else {
            format!("{}:{}", self.host, self.port)
        }
    }
}

/// A host as a target's URL holds it: lower case, one trailing dot removed; `None` when
/// nothing is left.
fn normalized_host(host: &str) -> Option<String> {
    let host = host.strip_suffix('.').unwrap_or(host);
    (!host.is_empty()).then(|| host.to_ascii_lowercase())
}

/// Whether a host a request names (`requested`, any case, perhaps with one trailing dot) is
/// the target host `target` ([`TargetUrl::host`]).
pub fn same_host(target: &str, requested: &str) -> bool {
    let requested = requested.strip_suffix('.').unwrap_or(requested);
    requested.eq_ignore_ascii_case(target)
}

/// Why an egress section is refused. Messages name fields, never a token or an assertion.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum EgressError {
    /// The token endpoint is not an https URL.
    #[error("egress.tokenEndpoint must be an https URL without userinfo, query or fragment")]
    TokenEndpoint,
    /// No CA bundle to trust the token endpoint with.
    #[error("egress needs caBundlePem: the token endpoint is trusted with the operator's CA only")]
    NoCaBundle,
    /// An empty client id or assertion path.
    #[error("egress.clientId and egress.assertionPath must not be empty")]
    Client,
    /// The egress port is the proxy port.
    #[error("egress.port must differ from listen.port")]
    Port,
    /// A target's name is empty or another target's.
    #[error("egress.targets: name {0:?} is empty or listed twice")]
    TargetName(String),
    /// A target's URL is unusable.
    #[error(
        "egress target {0:?}: url must be https://host[:port] (http:// for an in-cluster target only), without userinfo, path, query or fragment"
    )]
    TargetUrl(String),
    /// Two targets with one host: a request naming no port could mean either.
    #[error("egress target {0:?}: its host is another target's too")]
    TargetHost(String),
    /// A target without an audience.
    #[error("egress target {0:?}: audience must not be empty")]
    Audience(String),
    /// A scope that is not a scope token.
    #[error("egress target {0:?}: a scope is not an RFC 6749 scope token")]
    Scope(String),
}

/// Checks the egress section of `config`, if it has one.
pub fn check(config: &SidecarConfig) -> Result<(), EgressError> {
    let Some(egress) = &config.egress else {
        return Ok(());
    };
    if config.ca_bundle_pem.is_none() {
        return Err(EgressError::NoCaBundle);
    }
    if egress.port != 0 && egress.port == config.listen.port {
        return Err(EgressError::Port);
    }
    if !token_endpoint(&egress.token_endpoint) {
        return Err(EgressError::TokenEndpoint);
    }
    if egress.client_id.is_empty() || egress.assertion_path.is_empty() {
        return Err(EgressError::Client);
    }
    targets(egress)
}

/// Whether a token endpoint is an https URL with a host, without userinfo, query or fragment.
fn token_endpoint(url: &str) -> bool {
    let Ok(uri) = url.parse::<Uri>() else {
        return false;
    };
    uri.scheme_str() == Some("https")
        && uri
            .authority()
            .is_some_and(|a| !a.host().is_empty() && !a.as_str().contains('@'))
        && uri.query().is_none()
        && !url.contains('#')
}

/// Checks each target: a unique name, a usable URL (plain http for in-cluster ones only), a
/// host of its own, an audience and scope tokens.
fn targets(egress: &EgressConfig) -> Result<(), EgressError> {
    let mut hosts: Vec<String> = Vec::with_capacity(egress.targets.len());
    for (i, target) in egress.targets.iter().enumerate() {
        let name = &target.name;
        if name.is_empty() || egress.targets[..i].iter().any(|t| &t.name == name) {
            return Err(EgressError::TargetName(name.clone()));
        }
        let url = TargetUrl::parse(&target.url)
            .filter(|url| url.https || target.in_cluster)
            .ok_or_else(|| EgressError::TargetUrl(name.clone()))?;
        if hosts.contains(&url.host) {
            return Err(EgressError::TargetHost(name.clone()));
        }
        hosts.push(url.host);
        if target.audience.is_empty() {
            return Err(EgressError::Audience(name.clone()));
        }
        if !target.scopes.iter().all(|s| is_scope_token(s)) {
            return Err(EgressError::Scope(name.clone()));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_target_url_names_a_host_and_a_port() {
        let url = |https, host: &str, port| {
            Some(TargetUrl {
                https,
                host: host.into(),
                port,
            })
        };
        for (text, parsed) in [
            ("https://api.example.com", url(true, "api.example.com", 443)),
            (
                "https://API.Example.com./",
                url(true, "api.example.com", 443),
            ),
            (
                "https://api.example.com:8443",
                url(true, "api.example.com", 8443),
            ),
            ("http://orders.shop.svc", url(false, "orders.shop.svc", 80)),
            (
                "http://orders.shop.svc:8080/",
                url(false, "orders.shop.svc", 8080),
            ),
            ("https://[::1]:9443", url(true, "[::1]", 9443)),
            ("https://user@api.example.com", None),
            ("https://user:pw@api.example.com", None),
            ("https://api.example.com/v1", None),
            ("https://api.example.com?x=1", None),
            ("https://api.example.com#f", None),
            ("https://api.example.com:0", None),
            ("ftp://api.example.com", None),
            ("api.example.com", None),
            ("https://.", None),
            ("", None),
        ] {
            assert_eq!(TargetUrl::parse(text), parsed, "{text}");
        }
    }

    #[test]
    fn the_host_header_leaves_out_a_default_port() {
        let parse = |u| TargetUrl::parse(u).unwrap().authority();
        assert_eq!(parse("https://api.example.com:443"), "api.example.com");
        assert_eq!(parse("https://api.example.com:80"), "api.example.com:80");
        assert_eq!(parse("http://orders.shop.svc:8080"), "orders.shop.svc:8080");
        assert_eq!(parse("http://orders.shop.svc:80"), "orders.shop.svc");
    }

    #[test]
    fn a_requested_host_matches_in_any_case_with_one_trailing_dot() {
        assert!(same_host("orders.shop.svc", "orders.shop.svc"));
        assert!(same_host("orders.shop.svc", "Orders.SHOP.svc."));
        assert!(!same_host("orders.shop.svc", "orders.shop.svc.."));
        assert!(!same_host(
            "orders.shop.svc",
            "orders.shop.svc.cluster.local"
        ));
        assert!(!same_host("orders.shop.svc", "evil-orders.shop.svc"));
        assert!(!same_host("orders.shop.svc", ""));
    }

    fn config() -> SidecarConfig {
        let mut config: SidecarConfig = serde_json::from_value(serde_json::json!({
            "apiVersion": "sidecar.scopegate.dev/v2",
            "policy": {"namespace": "shop", "name": "billing", "generation": 1},
            "listen": {"port": 15080},
            "upstream": {"port": 8080},
            "verify": {"issuers": [], "audiences": ["billing"], "leewaySecs": 30},
            "caBundlePem": "-----BEGIN CERTIFICATE-----\n-----END CERTIFICATE-----\n",
            "egress": {
                "port": 15081,
                "tokenEndpoint": "https://auth.shop.svc/oauth2/token",
                "clientId": "shop.billing",
                "tokenAudience": "https://auth.shop.svc",
                "assertionPath": "/var/run/secrets/tokens/issuer",
                "targets": [
                    {"name": "orders", "url": "http://orders.shop.svc:8080", "inCluster": true,
                     "address": "orders.shop.svc.cluster.local:8080",
                     "audience": "https://orders.shop.svc", "scopes": ["read:orders"]},
                    {"name": "payments", "url": "https://api.payments.example", "inCluster": false,
                     "address": "api.payments.example:443",
                     "audience": "https://api.payments.example", "scopes": []}
                ]
            }
        }))
        .unwrap();
        config.api_version = config.required_api_version().into();
        config
    }

    #[test]
    fn a_sound_egress_section_passes() {
        check(&config()).unwrap();
    }

    #[test]
    fn each_refusal_names_the_field() {
        type Break = fn(&mut SidecarConfig);
        fn egress(c: &mut SidecarConfig) -> &mut EgressConfig {
            c.egress.as_mut().unwrap()
        }
        let cases: Vec<(Break, EgressError)> = vec![
            (|c| c.ca_bundle_pem = None, EgressError::NoCaBundle),
            (|c| c.listen.port = 15081, EgressError::Port),
            (
                |c| egress(c).token_endpoint = "http://auth.shop.svc/oauth2/token".into(),
                EgressError::TokenEndpoint,
            ),
            (
                |c| egress(c).token_endpoint = "https://u@auth.shop.svc/oauth2/token".into(),
                EgressError::TokenEndpoint,
            ),
            (|c| egress(c).client_id.clear(), EgressError::Client),
            (|c| egress(c).assertion_path.clear(), EgressError::Client),
            (
                |c| egress(c).targets[1].name = "orders".into(),
                EgressError::TargetName("orders".into()),
            ),
            (
                |c| egress(c).targets[0].name.clear(),
                EgressError::TargetName(String::new()),
            ),
            (
                // Plain http leaves the cluster for no one.
                |c| egress(c).targets[1].url = "http://api.payments.example".into(),
                EgressError::TargetUrl("payments".into()),
            ),
            (
                |c| egress(c).targets[1].url = "https://api.payments.example/v1".into(),
                EgressError::TargetUrl("payments".into()),
            ),
            (
                |c| egress(c).targets[1].url = "https://ORDERS.shop.svc.:9443".into(),
                EgressError::TargetHost("payments".into()),
            ),
            (
                |c| egress(c).targets[0].audience.clear(),
                EgressError::Audience("orders".into()),
            ),
            (
                |c| egress(c).targets[0].scopes = vec!["read orders".into()],
                EgressError::Scope("orders".into()),
            ),
        ];
        for (edit, expected) in cases {
            let mut config = config();
            edit(&mut config);
            assert_eq!(check(&config), Err(expected));
        }
    }
}
