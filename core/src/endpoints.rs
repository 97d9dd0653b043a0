//! The issuer role's own paths: requests for them are answered by the issuer, before any
//! rule or rate limit of the policy applies. The OpenID discovery document's paths are among
//! them: the issuer is no OpenID provider and answers them 404, where the policy's rules
//! would have asked for a token.

/// Where each upstream identity provider's login legs live:
/// `{prefix}/oauth2/upstream/{name}/...`.
pub const UPSTREAM_PREFIX: &str = "/oauth2/upstream/";

/// The issuer URL's path without a trailing slash: every endpoint lives under it.
pub fn path_prefix(issuer_url: &str) -> Option<String> {
    let url: http::Uri = issuer_url.parse().ok()?;
    Some(url.path().trim_end_matches('/').to_owned())
}

/// Where OpenID Connect discovery looks (appended to the issuer URL, or inserted before its
/// path as RFC 8414 §5 does): the issuer answers 404.
pub const OPENID_CONFIGURATION: &str = "/.well-known/openid-configuration";

/// The endpoint a normalised request path is for, after the issuer URL's path prefix
/// (RFC 8414 puts the metadata document's suffix after the well-known path), or `None` when
/// the path is the app's.
pub fn endpoint<'a>(prefix: &str, path: &'a str) -> Option<&'a str> {
    const WELL_KNOWN_AS: &str = "/.well-known/oauth-authorization-server";
    for well_known in [WELL_KNOWN_AS, OPENID_CONFIGURATION] {
        if let Some(rest) = path.strip_prefix(well_known)
            && rest == prefix
        {
            return Some(well_known);
        }
    }
    let local = path.strip_prefix(prefix)?;
    if local.starts_with(UPSTREAM_PREFIX) {
        return Some(local);
    }
    matches!(
        local,
        "/oauth2/token"
            | "/oauth2/authorize"
            | "/oauth2/authorize/resume"
            | "/oauth2/revoke"
            | "/oauth2/introspect"
            | "/oauth2/revocations"
            | "/.well-known/jwks.json"
            | OPENID_CONFIGURATION
    )
    .then_some(local)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn routes_under_the_issuer_path() {
        assert_eq!(endpoint("", "/oauth2/token"), Some("/oauth2/token"));
        assert_eq!(endpoint("", "/oauth2/token/"), None);
        assert_eq!(
            endpoint("", "/.well-known/oauth-authorization-server"),
            Some("/.well-known/oauth-authorization-server")
        );
        assert_eq!(endpoint("/t", "/t/oauth2/token"), Some("/oauth2/token"));
        assert_eq!(endpoint("/t", "/oauth2/token"), None);
        assert_eq!(
            endpoint("/t", "/.well-known/oauth-authorization-server/t"),
            Some("/.well-known/oauth-authorization-server")
        );
        assert_eq!(
            endpoint("/t", "/.well-known/oauth-authorization-server"),
            None
        );
        assert_eq!(endpoint("", "/items"), None);
        for (prefix, path) in [
            ("", "/.well-known/openid-configuration"),
            ("/t", "/t/.well-known/openid-configuration"),
            ("/t", "/.well-known/openid-configuration/t"),
        ] {
            assert_eq!(
                endpoint(prefix, path),
                Some(OPENID_CONFIGURATION),
                "{prefix} {path}"
            );
        }
        assert_eq!(endpoint("/t", "/.well-known/openid-configuration"), None);
        assert_eq!(
            endpoint("", "/oauth2/upstream/google/callback"),
            Some("/oauth2/upstream/google/callback")
        );
        assert_eq!(
            path_prefix("https://auth.shop.svc/t/").as_deref(),
            Some("/t")
        );
        assert_eq!(path_prefix("https://auth.shop.svc").as_deref(), Some(""));
    }
}
