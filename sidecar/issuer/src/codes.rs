//! Authorization codes: single-use, short-lived, bound to the client, the redirect URI and
//! the PKCE challenge. Redeeming is one compare-and-swap that also records what the code
//! issued, so a replay (on any replica) finds and revokes it.

use serde::{Deserialize, Serialize};

/// An authorization code's record.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
pub struct CodeRecord {
    /// The client it was issued to.
    pub client_id: String,
    /// The redirect URI of the authorization request, exactly.
    pub redirect_uri: String,
    /// The authorization request named no redirect URI, so the token request need not
    /// (RFC 6749 §4.1.3); otherwise it must name the same.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub redirect_uri_omitted: bool,
    /// The granted scope.
    pub scope: Vec<String>,
    /// The audiences the tokens may carry.
    pub audiences: Vec<String>,
    /// The S256 PKCE challenge.
    pub challenge: String,
    /// The subject the app authenticated.
    pub sub: String,
    /// When the code was issued (Unix seconds).
    pub issued_at: i64,
    /// When it stops being redeemable.
    pub expires_at: i64,
    /// What it issued, once redeemed.
    pub redeemed: Option<Redeemed>,
    /// The latest end of a refresh family it starts (an upstream login's `maxUpstreamAge`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub family_until: Option<i64>,
}

/// What a redeemed code issued.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
pub struct Redeemed {
    /// The access token's `jti`.
    pub jti: String,
    /// Its `exp`.
    pub exp: i64,
    /// The refresh family, if one was started.
    pub family: Option<String>,
}

/// The record after redeeming, kept until what it issued has expired so a late replay
/// still finds it.
pub fn redeem(record: &CodeRecord, issued: Redeemed) -> (CodeRecord, i64) {
    let keep_until = record.expires_at.max(issued.exp);
    let mut next = record.clone();
    next.redeemed = Some(issued);
    (next, keep_until)
}
