//! Step 4: the identity a provider vouches for (bounded claims), and the allow rules it must
//! pass.

use scopegate_core::upstream::{OidcUpstream, UpstreamIdentity, UpstreamIdp};
use serde_json::{Map, Value};

use crate::error::OAuthError;
use crate::upstream::id_token;

use super::Failed;

/// Longest email, name or group kept from a provider.
const MAX_TEXT: usize = 256;
/// Most groups kept from a provider.
const MAX_GROUPS: usize = 256;

pub(super) fn text(claims: &Map<String, Value>, name: &str) -> Option<String> {
    claims
        .get(name)
        .and_then(Value::as_str)
        .filter(|s| !s.is_empty() && s.len() <= MAX_TEXT)
        .map(|s| s.chars().filter(|c| !c.is_control()).collect())
}

/// A subject from a configured claim: a string of at most 255 characters that a header carries
/// unchanged ([`scopegate_core::names::is_identity_value`]), taken as it is (never cleaned up:
/// two keys must never become one).
pub(super) fn subject_claim(claims: &Map<String, Value>, name: &str) -> Option<String> {
    claims
        .get(name)
        .and_then(Value::as_str)
        .filter(|s| s.len() <= 255 && scopegate_core::names::is_identity_value(s))
        .map(str::to_owned)
}

/// The normalised identity of a validated login.
pub(super) fn identity(
    upstream: &str,
    oidc: &OidcUpstream,
    subject: String,
    validated: &id_token::Validated,
    now: i64,
) -> UpstreamIdentity {
    let claims = &validated.claims;
    let names = &oidc.claims;
    let groups = match claims.get(&oidc.groups_claim) {
        Some(Value::Array(list)) => list
            .iter()
            .filter_map(Value::as_str)
            .filter(|g| !g.is_empty() && g.len() <= MAX_TEXT)
            .take(MAX_GROUPS)
            .map(str::to_owned)
            .collect(),
        _ => Vec::new(),
    };
    UpstreamIdentity {
        upstream: upstream.to_owned(),
        subject,
        email: text(claims, &names.email),
        email_verified: id_token::email_verified(
            claims,
            &names.email_verified,
            oidc.trust_unverified_email,
        ),
        email_authoritative: false,
        name: text(claims, &names.name),
        username: text(claims, &names.username),
        groups,
        hosted_domain: text(claims, "hd"),
        authenticated_at: claims
            .get("auth_time")
            .and_then(Value::as_i64)
            .unwrap_or(now),
    }
}

/// The allow rules: hosted domain, verified email domain, groups.
pub(super) fn allow(
    upstream: &UpstreamIdp,
    hosted_domains: &[String],
    identity: &UpstreamIdentity,
) -> Result<(), Failed> {
    let denied = |outcome| Failed(outcome, OAuthError::AccessDenied);
    if !hosted_domains.is_empty()
        && !identity
            .hosted_domain
            .as_ref()
            .is_some_and(|hd| hosted_domains.iter().any(|d| d.eq_ignore_ascii_case(hd)))
    {
        return Err(denied("denied_domain"));
    }
    let rules = &upstream.allow;
    if !rules.email_domains.is_empty() {
        let Some(email) = identity.email.as_deref() else {
            return Err(denied("denied_domain"));
        };
        if !identity.email_verified {
            return Err(denied("email_unverified"));
        }
        let domain = email.rsplit_once('@').map_or("", |(_, d)| d);
        if !rules
            .email_domains
            .iter()
            .any(|d| d.eq_ignore_ascii_case(domain))
        {
            return Err(denied("denied_domain"));
        }
    }
    if !rules.groups.is_empty() && !identity.groups.iter().any(|g| rules.groups.contains(g)) {
        return Err(denied("denied_group"));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use scopegate_core::upstream as names;
    use scopegate_core::upstream::{UpstreamAuthMethod, UpstreamKind, UserinfoMode};
    fn oidc(hosted: &[&str]) -> OidcUpstream {
        OidcUpstream {
            issuer: "https://idp".into(),
            issuer_aliases: vec![],
            scopes: vec!["openid".into()],
            algorithms: vec![],
            userinfo: UserinfoMode::Never,
            token_endpoint_auth_method: UpstreamAuthMethod::ClientSecretBasic,
            hosted_domains: hosted.iter().map(|s| (*s).to_owned()).collect(),
            groups_claim: "groups".into(),
            claims: names::ClaimNames::default(),
            trust_unverified_email: names::TrustUnverifiedEmail::Never,
        }
    }

    fn upstream(domains: &[&str], groups: &[&str]) -> UpstreamIdp {
        UpstreamIdp {
            name: "google".into(),
            display_name: "Google".into(),
            client_id: "c".into(),
            client_secret_path: "/x".into(),
            callback_url: "https://a/oauth2/upstream/google/callback".into(),
            ca_bundle_pem: None,
            kind: UpstreamKind::Oidc(Box::new(oidc(&[]))),
            allow: names::AllowRules {
                email_domains: domains.iter().map(|s| (*s).to_owned()).collect(),
                groups: groups.iter().map(|s| (*s).to_owned()).collect(),
            },
            authoritative_email_domains: vec![],
        }
    }

    fn person(
        email: Option<&str>,
        verified: bool,
        hd: Option<&str>,
        groups: &[&str],
    ) -> UpstreamIdentity {
        UpstreamIdentity {
            upstream: "google".into(),
            subject: "1".into(),
            email: email.map(str::to_owned),
            email_verified: verified,
            email_authoritative: false,
            name: None,
            username: None,
            groups: groups.iter().map(|s| (*s).to_owned()).collect(),
            hosted_domain: hd.map(str::to_owned),
            authenticated_at: 0,
        }
    }

    fn outcome(r: Result<(), Failed>) -> &'static str {
        r.err().map_or("ok", |f| f.0)
    }

    #[test]
    fn allow_rules() {
        let open = upstream(&[], &[]);
        assert_eq!(
            outcome(allow(
                &open,
                &oidc(&[]).hosted_domains,
                &person(None, false, None, &[])
            )),
            "ok"
        );
        // Hosted domain: the claim, not the email.
        let hd = oidc(&["shop.example"]);
        assert_eq!(
            outcome(allow(
                &open,
                &hd.hosted_domains,
                &person(Some("a@shop.example"), true, None, &[])
            )),
            "denied_domain"
        );
        assert_eq!(
            outcome(allow(
                &open,
                &hd.hosted_domains,
                &person(None, false, Some("evil.example"), &[])
            )),
            "denied_domain"
        );
        assert_eq!(
            outcome(allow(
                &open,
                &hd.hosted_domains,
                &person(None, false, Some("shop.example"), &[])
            )),
            "ok"
        );
        // Email domains: verified only.
        let mail = upstream(&["shop.example"], &[]);
        assert_eq!(
            outcome(allow(
                &mail,
                &oidc(&[]).hosted_domains,
                &person(Some("a@shop.example"), false, None, &[])
            )),
            "email_unverified"
        );
        assert_eq!(
            outcome(allow(
                &mail,
                &oidc(&[]).hosted_domains,
                &person(Some("a@evil.example"), true, None, &[])
            )),
            "denied_domain"
        );
        assert_eq!(
            outcome(allow(
                &mail,
                &oidc(&[]).hosted_domains,
                &person(Some("a@shop.example.evil"), true, None, &[])
            )),
            "denied_domain"
        );
        assert_eq!(
            outcome(allow(
                &mail,
                &oidc(&[]).hosted_domains,
                &person(None, true, None, &[])
            )),
            "denied_domain"
        );
        assert_eq!(
            outcome(allow(
                &mail,
                &oidc(&[]).hosted_domains,
                &person(Some("a@SHOP.example"), true, None, &[])
            )),
            "ok"
        );
        // Groups.
        let eng = upstream(&[], &["eng"]);
        assert_eq!(
            outcome(allow(
                &eng,
                &oidc(&[]).hosted_domains,
                &person(None, false, None, &["sales"])
            )),
            "denied_group"
        );
        assert_eq!(
            outcome(allow(
                &eng,
                &oidc(&[]).hosted_domains,
                &person(None, false, None, &["sales", "eng"])
            )),
            "ok"
        );
    }
}
