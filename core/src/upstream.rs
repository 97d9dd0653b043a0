//! Upstream identity providers as the issuer sidecar sees them: the part of the sidecar
//! config document ([`crate::config::IssuerConfig::upstreams`]) that the operator renders from
//! `issuer.self.upstreams`, and the names both sides agree on (callback paths, the Secret
//! that carries the upstream client secrets, outcome labels).
//!
//! Client secrets never appear here: each upstream names the file, in the Secret mounted
//! only into issuer pods, that holds its secret, so a rotated secret rolls in with the
//! kubelet's sync and without a config change.

use std::collections::BTreeSet;

use serde::{Deserialize, Serialize};

/// Most upstreams one issuer may have (the CRD's `maxItems`).
pub const MAX_UPSTREAMS: usize = 8;

/// The name of the built-in choice that sends the browser to the app's own `loginUrl`.
pub const LOCAL: &str = "local";

/// Where the Secret of upstream client secrets is mounted in issuer pods.
pub const SECRETS_DIR: &str = "/etc/scopegate/upstreams";

/// Grammar of an upstream name: a DNS label of at most 32 characters.
pub const NAME_PATTERN: &str = "^[a-z0-9]([-a-z0-9]{0,30}[a-z0-9])?$";

/// Name of the Secret (per issuing policy) that holds the upstream client secrets.
pub fn secret_name(policy: &str) -> String {
    format!("{policy}-upstreams")
}

/// Key of one upstream's client secret inside that Secret (and file name in the mount).
pub fn secret_key(upstream: &str) -> String {
    format!("{upstream}.client_secret")
}

/// The path under the issuer URL where the upstream sends the browser back.
pub fn callback_path(upstream: &str) -> String {
    format!("/oauth2/upstream/{upstream}/callback")
}

/// The callback URL an admin registers at the provider: `{publicUrl}/oauth2/upstream/{name}/callback`.
pub fn callback_url(public_url: &str, upstream: &str) -> String {
    format!(
        "{}{}",
        public_url.trim_end_matches('/'),
        callback_path(upstream)
    )
}

/// Whether `name` is a valid upstream name (and not the reserved `local`).
pub fn valid_name(name: &str) -> bool {
    let bytes = name.as_bytes();
    let inner = |b: &u8| b.is_ascii_lowercase() || b.is_ascii_digit() || *b == b'-';
    let edge = |b: &u8| b.is_ascii_lowercase() || b.is_ascii_digit();
    !bytes.is_empty()
        && bytes.len() <= 32
        && name != LOCAL
        && bytes.iter().all(inner)
        && bytes.first().is_some_and(edge)
        && bytes.last().is_some_and(edge)
}

/// Outcomes of an upstream login (the bounded `outcome` label of
/// `scopegate_upstream_logins_total`).
pub const OUTCOMES: [&str; 12] = [
    "ok",
    "denied_domain",
    "denied_group",
    "denied_org",
    "email_unverified",
    "idp_error",
    "invalid_id_token",
    "state_unknown",
    "mixup",
    "binding",
    "timeout",
    "access_denied",
];

/// One upstream identity provider.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct UpstreamIdp {
    /// The name: the `upstream=` hint, the callback path segment and the subject prefix.
    pub name: String,
    /// Text of the chooser button.
    pub display_name: String,
    /// Our client_id at the provider.
    pub client_id: String,
    /// The file that holds our client secret at the provider.
    pub client_secret_path: String,
    /// The redirect URI registered at the provider, exactly.
    pub callback_url: String,
    /// PEM certificates trusted for this provider only, next to the system roots and the
    /// sidecar's `caBundlePem` (a private provider, or a test stand-in).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ca_bundle_pem: Option<String>,
    /// What kind of provider, and its settings.
    #[serde(flatten)]
    pub kind: UpstreamKind,
    /// Allow rules: every rule given must pass.
    #[serde(default)]
    pub allow: AllowRules,
    /// Email domains this provider is the authority for (it alone hands out their addresses).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub authoritative_email_domains: Vec<String>,
}

impl UpstreamIdp {
    /// Whether this provider vouches for `identity`'s email as its domain's authority: the
    /// email is verified, and its domain is one of `authoritative_email_domains`, or (OIDC
    /// with `hosted_domains`) the Google Workspace domain the login belongs to. Never for a
    /// provider that merely says an address is verified: anyone can verify an address of a
    /// domain at a provider that does not own it (the nOAuth takeover).
    pub fn is_email_authority(&self, identity: &UpstreamIdentity) -> bool {
        let Some(domain) = identity
            .email
            .as_deref()
            .filter(|_| identity.email_verified)
            .and_then(|e| e.rsplit_once('@'))
            .map(|(_, d)| d)
            .filter(|d| !d.is_empty())
        else {
            return false;
        };
        let listed = self
            .authoritative_email_domains
            .iter()
            .any(|d| d.eq_ignore_ascii_case(domain));
        let workspace = match &self.kind {
            UpstreamKind::Oidc(oidc) => identity.hosted_domain.as_deref().is_some_and(|hd| {
                hd.eq_ignore_ascii_case(domain)
                    && oidc
                        .hosted_domains
                        .iter()
                        .any(|d| d.eq_ignore_ascii_case(hd))
            }),
            UpstreamKind::Github(_) => false,
        };
        listed || workspace
    }
}

/// The protocol an upstream speaks.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub enum UpstreamKind {
    /// An OpenID Connect provider (Google and any other).
    Oidc(Box<OidcUpstream>),
    /// GitHub or GitHub Enterprise Server (OAuth2 and the REST API, no ID token).
    Github(GithubUpstream),
}

/// An OpenID Connect provider.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct OidcUpstream {
    /// The issuer identifier; discovery is read from `{issuer}/.well-known/openid-configuration`
    /// and its `issuer` must equal this.
    pub issuer: String,
    /// Other exact `iss` values accepted in ID tokens (Google: `accounts.google.com`).
    #[serde(default)]
    pub issuer_aliases: Vec<String>,
    /// Scopes asked for; always contains `openid`.
    pub scopes: Vec<String>,
    /// ID-token signature algorithms accepted (intersected with the discovery document's).
    pub algorithms: Vec<String>,
    /// When the userinfo endpoint is asked.
    #[serde(default)]
    pub userinfo: UserinfoMode,
    /// How we authenticate at the provider's token endpoint.
    #[serde(default)]
    pub token_endpoint_auth_method: UpstreamAuthMethod,
    /// The `hd` claim (Google Workspace domain) must be one of these, when any is given.
    #[serde(default)]
    pub hosted_domains: Vec<String>,
    /// The claim that holds group names, for `allow.groups`.
    #[serde(default = "default_groups_claim")]
    pub groups_claim: String,
    /// Which claims hold the identity's parts.
    #[serde(default)]
    pub claims: ClaimNames,
    /// Whether an email the provider says nothing about (no `email_verified`) counts as
    /// verified. An explicit `false` is never overridden.
    #[serde(default)]
    pub trust_unverified_email: TrustUnverifiedEmail,
}

fn default_groups_claim() -> String {
    "groups".into()
}

/// The claim names of an OIDC identity (Azure AD: subject `oid`; some providers: `upn`).
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct ClaimNames {
    /// The stable subject; read from the ID token only (never userinfo).
    pub subject: String,
    /// The email address.
    pub email: String,
    /// Whether the email is verified.
    pub email_verified: String,
    /// The display name.
    pub name: String,
    /// The user name.
    pub username: String,
}

impl Default for ClaimNames {
    fn default() -> Self {
        ClaimNames {
            subject: "sub".into(),
            email: "email".into(),
            email_verified: "email_verified".into(),
            name: "name".into(),
            username: "preferred_username".into(),
        }
    }
}

/// Claims never accepted as the subject: they name a person in a way that changes or can be
/// claimed by someone else.
pub const UNSTABLE_SUBJECT_CLAIMS: [&str; 8] = [
    "email",
    "preferred_username",
    "name",
    "upn",
    "unique_name",
    "nickname",
    "given_name",
    "family_name",
];

/// Whether an email without a verification claim counts as verified.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, Default)]
#[serde(rename_all = "camelCase")]
pub enum TrustUnverifiedEmail {
    /// Never: a missing claim means unverified.
    #[default]
    Never,
    /// When the provider sends no verification claim at all (Azure AD, Cognito); an explicit
    /// `false` stays false.
    WhenMissing,
}

/// When the userinfo endpoint is asked.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, Default)]
#[serde(rename_all = "camelCase")]
pub enum UserinfoMode {
    /// Never: the ID token says everything.
    Never,
    /// When the ID token has no `email` (many providers put it in userinfo only).
    #[default]
    IfMissing,
    /// After every login.
    Always,
}

/// Client authentication at the provider's token endpoint.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, Default)]
#[serde(rename_all = "snake_case")]
pub enum UpstreamAuthMethod {
    /// HTTP Basic.
    #[default]
    ClientSecretBasic,
    /// In the form body.
    ClientSecretPost,
}

/// GitHub settings.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, Default)]
#[serde(rename_all = "camelCase")]
pub struct GithubUpstream {
    /// GitHub Enterprise Server host; empty for github.com.
    #[serde(default)]
    pub host_name: String,
    /// Organisations (and teams in them) a user must belong to, when any is given.
    #[serde(default)]
    pub orgs: Vec<GithubOrg>,
}

/// A GitHub organisation and, optionally, teams in it.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct GithubOrg {
    /// The organisation's login.
    pub name: String,
    /// Team slugs; empty means any member of the organisation.
    #[serde(default)]
    pub teams: Vec<String>,
}

/// Allow rules on the upstream identity.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, Default)]
#[serde(rename_all = "camelCase")]
pub struct AllowRules {
    /// The email must be verified and in one of these domains, when any is given.
    #[serde(default)]
    pub email_domains: Vec<String>,
    /// The identity must carry one of these groups, when any is given.
    #[serde(default)]
    pub groups: Vec<String>,
}

/// What happens after an upstream login.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, Default)]
#[serde(rename_all = "camelCase")]
pub struct IdentityConfig {
    /// Delegate (the app decides the subject) or Direct.
    #[serde(default)]
    pub mode: IdentityMode,
    /// Direct mode: the scopes an upstream-authenticated user may get (the client's request
    /// is narrowed to these).
    #[serde(default)]
    pub direct_scopes: Vec<String>,
    /// Direct mode: more scopes for members of an upstream's group.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub scopes_from_groups: Vec<GroupScopes>,
    /// Refresh families born from an upstream login end this long after it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_upstream_age_secs: Option<u64>,
}

/// Scopes granted, in Direct mode, to members of one group at one upstream.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct GroupScopes {
    /// The upstream whose group this is (a group of the same name elsewhere grants nothing).
    pub upstream: String,
    /// The group, exactly as the identity carries it (GitHub: `org` or `org:team-slug`).
    pub group: String,
    /// The scopes its members may get.
    pub scopes: Vec<String>,
}

impl IdentityConfig {
    /// Direct mode: the scopes `identity` may get: `direct_scopes` and those of every group
    /// of its own upstream it carries.
    pub fn direct_scopes_for(&self, identity: &UpstreamIdentity) -> BTreeSet<String> {
        let mut allowed: BTreeSet<String> = self.direct_scopes.iter().cloned().collect();
        for mapping in &self.scopes_from_groups {
            if mapping.upstream == identity.upstream && identity.groups.contains(&mapping.group) {
                allowed.extend(mapping.scopes.iter().cloned());
            }
        }
        allowed
    }
}

/// Who decides the subject after an upstream login.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, Default)]
#[serde(rename_all = "camelCase")]
pub enum IdentityMode {
    /// The identity is attached to a login challenge; the app reads it on the mint socket,
    /// upserts its user keyed by (upstream, subject) and accepts with its own subject.
    #[default]
    Delegate,
    /// The subject is `{upstream}:{upstream subject}`; no app code.
    Direct,
}

/// The normalised identity an upstream login yields: what the app reads on the mint socket.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct UpstreamIdentity {
    /// The upstream's name.
    pub upstream: String,
    /// The provider's stable subject (OIDC `sub`, GitHub numeric id): with `upstream`, the
    /// only key to a user.
    pub subject: String,
    /// An email address, if the provider gave one (an attribute, never a key).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub email: Option<String>,
    /// Whether the provider asserted the email verified (a missing claim means false).
    pub email_verified: bool,
    /// Whether the provider is the authority for the email's domain, so that the address
    /// cannot belong to anyone else (see [`UpstreamIdp::is_email_authority`]). The only case
    /// in which an app may match this identity to an existing account by email.
    #[serde(default)]
    pub email_authoritative: bool,
    /// Display name (untrusted text).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    /// Preferred user name (untrusted text, never a key).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub username: Option<String>,
    /// Groups.
    #[serde(default)]
    pub groups: Vec<String>,
    /// Google's hosted domain claim.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hosted_domain: Option<String>,
    /// When the provider authenticated the user (Unix seconds; the login time if not said).
    pub authenticated_at: i64,
}

impl UpstreamIdentity {
    /// The Direct-mode subject: `{upstream}:{subject}`.
    pub fn direct_subject(&self) -> String {
        format!("{}:{}", self.upstream, self.subject)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_follow_the_grammar() {
        let re = regex::Regex::new(NAME_PATTERN).unwrap();
        for name in [
            "google",
            "github",
            "a",
            "corp-sso",
            "x1",
            "abcdefghijklmnopqrstuvwxyz012345",
        ] {
            assert!(valid_name(name), "{name}");
            assert!(re.is_match(name), "{name}");
        }
        for name in [
            "",
            "-a",
            "a-",
            "Google",
            "a_b",
            "a.b",
            "abcdefghijklmnopqrstuvwxyz0123456",
        ] {
            assert!(!valid_name(name), "{name}");
            assert!(!re.is_match(name), "{name}");
        }
        assert!(!valid_name(LOCAL), "local is reserved");
    }

    #[test]
    fn callback_url_is_what_the_admin_registers() {
        assert_eq!(
            callback_url("https://auth.shop.example/", "google"),
            "https://auth.shop.example/oauth2/upstream/google/callback"
        );
        assert_eq!(
            callback_url("https://shop.example/auth", "github"),
            "https://shop.example/auth/oauth2/upstream/github/callback"
        );
    }

    #[test]
    fn kind_is_tagged_by_its_key() {
        let doc = serde_json::json!({
            "name": "google", "displayName": "Google", "clientId": "c",
            "clientSecretPath": "/s", "callbackUrl": "https://a/cb",
            "oidc": {"issuer": "https://accounts.google.com", "scopes": ["openid"], "algorithms": ["RS256"]}
        });
        let up: UpstreamIdp = serde_json::from_value(doc).unwrap();
        let UpstreamKind::Oidc(oidc) = &up.kind else {
            panic!("oidc expected")
        };
        assert_eq!(oidc.userinfo, UserinfoMode::IfMissing);
        assert_eq!(oidc.groups_claim, "groups");
        let back = serde_json::to_value(&up).unwrap();
        assert!(back.get("oidc").is_some(), "{back}");
        assert!(back.get("clientSecret").is_none());
    }

    #[test]
    fn direct_subject_keys_on_upstream_and_subject() {
        let id = UpstreamIdentity {
            upstream: "google".into(),
            subject: "1080".into(),
            email: Some("a@b".into()),
            email_verified: false,
            email_authoritative: false,
            name: None,
            username: None,
            groups: vec![],
            hosted_domain: None,
            authenticated_at: 0,
        };
        assert_eq!(id.direct_subject(), "google:1080");
    }

    #[test]
    fn only_a_domains_authority_vouches_for_its_addresses() {
        let upstream = |kind: serde_json::Value, domains: &[&str]| -> UpstreamIdp {
            let mut doc = serde_json::json!({
                "name": "u", "displayName": "U", "clientId": "c", "clientSecretPath": "/s",
                "callbackUrl": "https://a/cb", "authoritativeEmailDomains": domains});
            doc.as_object_mut()
                .unwrap()
                .extend(kind.as_object().unwrap().clone());
            serde_json::from_value(doc).unwrap()
        };
        let google = upstream(
            serde_json::json!({"oidc": {"issuer": "https://accounts.google.com",
                "scopes": ["openid"], "algorithms": [], "hostedDomains": ["shop.example"]}}),
            &[],
        );
        let generic = upstream(
            serde_json::json!({"oidc": {"issuer": "https://idp.example",
                "scopes": ["openid"], "algorithms": []}}),
            &[],
        );
        let corp = upstream(serde_json::json!({"github": {}}), &["Corp.Example"]);
        let person = |email: &str, verified: bool, hd: Option<&str>| UpstreamIdentity {
            upstream: "u".into(),
            subject: "1".into(),
            email: Some(email.into()),
            email_verified: verified,
            email_authoritative: false,
            name: None,
            username: None,
            groups: vec![],
            hosted_domain: hd.map(str::to_owned),
            authenticated_at: 0,
        };
        assert!(google.is_email_authority(&person("ann@shop.example", true, Some("shop.example"))));
        assert!(corp.is_email_authority(&person("bob@corp.example", true, None)));
        // The takeover attempts: verified at a provider that does not own the domain, an hd
        // claim from a provider without hostedDomains, an hd of another domain, unverified.
        assert!(!generic.is_email_authority(&person(
            "ann@shop.example",
            true,
            Some("shop.example")
        )));
        assert!(!google.is_email_authority(&person(
            "ann@shop.example",
            true,
            Some("evil.example")
        )));
        assert!(!google.is_email_authority(&person(
            "ann@evil.example",
            true,
            Some("shop.example")
        )));
        assert!(!google.is_email_authority(&person(
            "ann@shop.example",
            false,
            Some("shop.example")
        )));
        assert!(!corp.is_email_authority(&person("bob@corp.example.evil", true, None)));
        assert!(!corp.is_email_authority(&person("bob@sub.corp.example", true, None)));
        assert!(!corp.is_email_authority(&person("corp.example", true, None)));
    }

    #[test]
    fn group_scopes_count_only_for_their_own_upstream_and_exact_group() {
        let config: IdentityConfig = serde_json::from_value(serde_json::json!({
            "mode": "direct", "directScopes": ["read:items"],
            "scopesFromGroups": [
                {"upstream": "github", "group": "acme:sre", "scopes": ["write:items"]},
                {"upstream": "github", "group": "acme", "scopes": ["read:orders"]},
                {"upstream": "corp", "group": "admins", "scopes": ["admin"]}
            ]
        }))
        .unwrap();
        let person = |upstream: &str, groups: &[&str]| UpstreamIdentity {
            upstream: upstream.into(),
            subject: "1".into(),
            email: None,
            email_verified: false,
            email_authoritative: false,
            name: None,
            username: None,
            groups: groups.iter().map(|g| (*g).to_owned()).collect(),
            hosted_domain: None,
            authenticated_at: 0,
        };
        let scopes = |id: &UpstreamIdentity| -> Vec<String> {
            config.direct_scopes_for(id).into_iter().collect()
        };
        assert_eq!(
            scopes(&person("github", &["acme:sre", "acme"])),
            ["read:items", "read:orders", "write:items"]
        );
        assert_eq!(scopes(&person("github", &[])), ["read:items"]);
        // The attacker's spellings: another upstream's group of the same name, a prefix, a case.
        assert_eq!(
            scopes(&person("google", &["acme:sre", "admins"])),
            ["read:items"]
        );
        assert_eq!(
            scopes(&person("github", &["acme:sre-team", "ACME", "acme:"])),
            ["read:items"]
        );
    }
}
