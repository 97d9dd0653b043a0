//! Upstream identity providers of an issuer (`issuer.self.upstreams`) and what happens after
//! an upstream login (`issuer.self.identity`): users log in with Google (any OpenID Connect
//! provider) or GitHub, and always leave with a token this issuer signs.

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use super::common::{Algorithm, PositiveDuration, SecretKeyRef, is_default, scope_list};

/// An identity provider users may log in with. Set exactly one of oidc or github.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
#[schemars(extend("x-kubernetes-validations" = [
    {
        "rule": "has(self.oidc) != has(self.github)",
        "message": "an upstream sets exactly one of oidc or github"
    }
]))]
pub struct UpstreamProvider {
    /// The upstream's name: a DNS label of at most 32 characters, not "local" (the app's own
    /// login). It names the callback path /oauth2/upstream/{name}/callback, the upstream=
    /// hint of /oauth2/authorize, and the subject prefix in Direct mode. Renaming it changes
    /// every user key the app holds for this provider.
    #[schemars(
        length(min = 1, max = 32),
        regex(pattern = r"^[a-z0-9]([-a-z0-9]{0,30}[a-z0-9])?$")
    )]
    #[schemars(extend("x-kubernetes-validations" = [
        { "rule": "self != 'local'", "message": "the upstream name local is reserved for the app's own login (loginUrl)" }
    ]))]
    pub name: String,
    /// Text of this provider's button on the chooser page (default: the name).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 64))]
    pub display_name: Option<String>,
    /// The client_id this issuer was registered with at the provider.
    #[schemars(length(min = 1, max = 256))]
    pub client_id: String,
    /// The Secret key, in this namespace, holding the client secret from the provider. The
    /// operator copies it into the Secret <policy>-upstreams that only issuer pods mount, and
    /// rolls a changed secret in without a restart.
    pub client_secret_ref: SecretKeyRef,
    /// PEM certificates (CAs) trusted when connecting to this provider only, in addition to
    /// the system roots: for a provider behind a private CA (an in-house Keycloak, GitHub
    /// Enterprise Server). Not needed for Google or github.com. An unparsable bundle leaves
    /// the upstream out of the issuer's config with reason CaBundleInvalid in status.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 65536))]
    #[schemars(extend("x-kubernetes-validations" = [
        {
            "rule": "self.contains('-----BEGIN CERTIFICATE-----')",
            "message": "caBundle must hold PEM certificates (-----BEGIN CERTIFICATE-----)"
        }
    ]))]
    pub ca_bundle: Option<String>,
    /// An OpenID Connect provider (Google: issuer https://accounts.google.com).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub oidc: Option<OidcProvider>,
    /// GitHub or GitHub Enterprise Server.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub github: Option<GithubProvider>,
    /// Who may log in through this provider: every rule given must pass.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub allow: Option<AllowRules>,
    /// Email domains this provider alone hands out addresses of (your company's SSO for your
    /// company's domain). A verified email in one of them is marked emailAuthoritative in the
    /// identity the app reads, the one case in which matching an existing account by email is
    /// safe. Google logins in one of oidc.hostedDomains are authoritative for that domain
    /// without being listed. Never list a domain the provider does not own.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 16), inner(length(min = 1, max = 253)))]
    #[schemars(extend("x-kubernetes-list-type" = "set"))]
    pub authoritative_email_domains: Vec<String>,
}

/// An OpenID Connect provider, found by discovery.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct OidcProvider {
    /// The provider's issuer identifier, an https URL: discovery is read from
    /// {issuer}/.well-known/openid-configuration, whose issuer must equal it, and ID tokens
    /// must carry it as iss.
    #[schemars(length(min = 1, max = 512))]
    #[schemars(extend("x-kubernetes-validations" = [
        {
            "rule": "isURL(self) && url(self).getScheme() == 'https' && url(self).getHostname() != '' && !self.contains('#') && !self.contains('?')",
            "message": "issuer must be an absolute https URL without query or fragment"
        }
    ]))]
    pub issuer: String,
    /// Other exact iss values accepted in ID tokens (Google also uses accounts.google.com).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 4), inner(length(min = 1, max = 512)))]
    #[schemars(extend("x-kubernetes-list-type" = "set"))]
    pub issuer_aliases: Vec<String>,
    /// Scopes asked of the provider (default openid, email, profile); must contain openid.
    #[serde(
        default = "default_oidc_scopes",
        skip_serializing_if = "is_default_oidc_scopes"
    )]
    #[schemars(length(min = 1, max = 16), inner(length(min = 1, max = 128)))]
    #[schemars(extend("x-kubernetes-list-type" = "set", "x-kubernetes-validations" = [
        { "rule": "'openid' in self", "message": "scopes must contain openid" }
    ]))]
    pub scopes: Vec<String>,
    /// ID-token signature algorithms accepted, intersected with those the provider's
    /// discovery names (default RS256, PS256, ES256, EdDSA). Never none; HS256 is refused.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 8))]
    #[schemars(extend("x-kubernetes-list-type" = "set", "x-kubernetes-validations" = [
        {
            "rule": "!('HS256' in self)",
            "message": "ID tokens signed with HS256 are refused: the shared secret would be our client secret"
        }
    ]))]
    pub algorithms: Vec<Algorithm>,
    /// When the userinfo endpoint is asked: Never, IfMissing (default: when the ID token has
    /// no email) or Always. Its sub must equal the ID token's; it only fills missing claims.
    #[serde(default, skip_serializing_if = "is_default")]
    pub userinfo: UserinfoMode,
    /// How the issuer authenticates at the provider's token endpoint.
    #[serde(default, skip_serializing_if = "is_default")]
    pub token_endpoint_auth_method: UpstreamAuthMethod,
    /// Google Workspace domains: the ID token's hd claim must be one of them. A filter only,
    /// never an identity.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 16), inner(length(min = 1, max = 253)))]
    #[schemars(extend("x-kubernetes-list-type" = "set"))]
    pub hosted_domains: Vec<String>,
    /// The claim holding group names, for allow.groups (default groups).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 64))]
    pub groups_claim: Option<String>,
    /// Which claims hold the identity, for providers that differ from the OIDC defaults
    /// (Azure AD keys users on oid). Unset parts keep their defaults.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub claims: Option<ClaimNames>,
    /// Never (default): an email without email_verified is unverified. WhenMissing: it counts
    /// as verified when the provider sends no email_verified at all (Azure AD, Cognito and
    /// Cloudflare Access never do); an explicit false always stays false. Only for providers
    /// that verify every address they hand out.
    #[serde(default, skip_serializing_if = "is_default")]
    pub trust_unverified_email: TrustUnverifiedEmail,
}

/// Claim names of an OIDC identity.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ClaimNames {
    /// The stable, never reassigned user key (default sub), read from the ID token only.
    /// Never an email, user name or display name: those change and can be claimed by
    /// someone else.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 64))]
    #[schemars(extend("x-kubernetes-validations" = [
        {
            "rule": "!(self in ['email', 'preferred_username', 'name', 'upn', 'unique_name', 'nickname', 'given_name', 'family_name'])",
            "message": "claims.subject must be a stable id claim (sub, oid), never an email, user name or display name: those change and can be taken over"
        }
    ]))]
    pub subject: Option<String>,
    /// The email address (default email).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 64))]
    pub email: Option<String>,
    /// Whether the email is verified (default email_verified).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 64))]
    pub email_verified: Option<String>,
    /// The display name (default name).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 64))]
    pub name: Option<String>,
    /// The user name (default preferred_username).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 64))]
    pub username: Option<String>,
}

/// Whether an email without email_verified counts as verified.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, Default, JsonSchema)]
pub enum TrustUnverifiedEmail {
    /// A missing email_verified means unverified.
    #[default]
    Never,
    /// A missing email_verified means verified; false stays false.
    WhenMissing,
}

fn default_oidc_scopes() -> Vec<String> {
    vec!["openid".into(), "email".into(), "profile".into()]
}

/// Upstreams are list items: their defaults stay out of the schema (see [`is_default`]).
fn is_default_oidc_scopes(scopes: &[String]) -> bool {
    scopes == default_oidc_scopes()
}

/// When the userinfo endpoint is asked.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, Default, JsonSchema)]
pub enum UserinfoMode {
    /// Never.
    Never,
    /// When the ID token carries no email.
    #[default]
    IfMissing,
    /// After every login.
    Always,
}

/// Client authentication at a provider's token endpoint.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, Default, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum UpstreamAuthMethod {
    /// HTTP Basic.
    #[default]
    ClientSecretBasic,
    /// In the form body.
    ClientSecretPost,
}

/// GitHub as an identity provider (an OAuth App). The subject is the numeric user id, never
/// the login, which can be renamed and then claimed by someone else.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct GithubProvider {
    /// GitHub Enterprise Server host name; empty for github.com.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 253))]
    pub host_name: Option<String>,
    /// Organisations a user must belong to (any one), optionally narrowed to teams.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 16))]
    pub orgs: Vec<GithubOrg>,
}

/// A GitHub organisation, and optionally teams in it.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct GithubOrg {
    /// The organisation's login.
    #[schemars(length(min = 1, max = 39))]
    pub name: String,
    /// Team slugs; empty means any member of the organisation.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 32), inner(length(min = 1, max = 100)))]
    pub teams: Vec<String>,
}

/// Allow rules on an upstream identity.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct AllowRules {
    /// The email must be verified by the provider and in one of these domains.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 16), inner(length(min = 1, max = 253)))]
    #[schemars(extend("x-kubernetes-list-type" = "set"))]
    pub email_domains: Vec<String>,
    /// The identity must carry one of these groups.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 32), inner(length(min = 1, max = 256)))]
    #[schemars(extend("x-kubernetes-list-type" = "set"))]
    pub groups: Vec<String>,
}

/// What an upstream login leads to.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct Identity {
    /// Delegate (default): the app reads the upstream identity on the mint socket, upserts its
    /// user keyed by (upstream, subject) and accepts the login with its own subject; needs
    /// loginUrl. Direct: the subject is {upstream}:{subject} and no app code runs.
    #[serde(default)]
    pub mode: IdentityMode,
    /// Direct mode: the scopes an upstream-authenticated user may get; the client's request
    /// is narrowed to these (declared in scopes).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(schema_with = "scope_list")]
    pub direct_scopes: Vec<String>,
    /// Direct mode: more scopes for members of a group at one upstream (OIDC: the groups
    /// claim; GitHub: "org" and "org:team-slug" of the orgs listed under github.orgs). A user
    /// may get directScopes plus the scopes of every listed group they are in; the client's
    /// request is narrowed to that.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 32))]
    pub scopes_from_groups: Vec<GroupScopes>,
    /// Refresh-token families born from an upstream login end this long after it; the user
    /// then logs in at the provider again (e.g. 24h).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_upstream_age: Option<PositiveDuration>,
}

/// Scopes for the members of one group at one upstream.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct GroupScopes {
    /// The upstream the group belongs to; the same group name at another upstream grants
    /// nothing.
    #[schemars(length(min = 1, max = 32))]
    pub upstream: String,
    /// The group, matched exactly (GitHub: "acme" or "acme:sre").
    #[schemars(length(min = 1, max = 256))]
    pub group: String,
    /// The scopes its members may get (declared in scopes).
    #[schemars(schema_with = "scope_list")]
    pub scopes: Vec<String>,
}

/// Who decides the subject after an upstream login.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, Default, JsonSchema)]
pub enum IdentityMode {
    /// The app decides (the login challenge carries the upstream identity).
    #[default]
    Delegate,
    /// The subject is {upstream}:{subject}.
    Direct,
}

/// An upstream in status: what to register at the provider, and whether it is usable.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct UpstreamStatus {
    /// The upstream's name.
    pub name: String,
    /// The redirect URI to register at the provider, exactly.
    pub callback_url: String,
    /// Whether the operator could render it (its client secret was found). The provider's
    /// own health is in the issuer pods' /readyz detail and metrics.
    pub ready: bool,
    /// Why it is not ready.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_subject_rule_refuses_every_claim_the_sidecar_refuses() {
        let schema = serde_json::to_string(&schemars::schema_for!(ClaimNames)).unwrap();
        for claim in scopegate_core::upstream::UNSTABLE_SUBJECT_CLAIMS {
            assert!(schema.contains(&format!("'{claim}'")), "{claim}");
        }
    }
}
