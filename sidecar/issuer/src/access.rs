//! RFC 9068 access tokens: `typ: at+jwt`, claims iss, sub, aud, exp, iat, nbf, jti,
//! client_id, scope and (for an exchanged token, RFC 8693 §4.1) act, signed by the key active now, with `exp` capped so that no token
//! outlives its key's place in the JWKS.

use serde::Serialize;

use crate::IssuerSettings;
use crate::error::OAuthError;
use crate::keys::{JwsKind, Signer};
use crate::random_token;
use aws_lc_rs::rand::SystemRandom;

/// What a token is for.
#[derive(Debug, Clone)]
pub struct Grant<'a> {
    /// The subject.
    pub sub: &'a str,
    /// The client.
    pub client_id: &'a str,
    /// Audiences (one is written as a string).
    pub aud: &'a [String],
    /// Scopes.
    pub scope: &'a [String],
    /// The chain of actors of an exchanged token (`act`); `None` for every other grant.
    pub act: Option<&'a Actor>,
}

/// An `act` claim (RFC 8693 §4.1): the client that exchanged the token, and the actor of the
/// token it exchanged, when that was an exchanged token too.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Actor {
    /// The acting client's id.
    pub sub: String,
    /// The previous actor, outermost first.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub act: Option<Box<Actor>>,
}

impl Actor {
    /// How many actors the chain names (1 for an actor without a previous one).
    pub fn depth(&self) -> usize {
        let mut depth = 1;
        let mut at = self;
        while let Some(previous) = &at.act {
            depth += 1;
            at = previous;
        }
        depth
    }
}

/// A token about to be signed: key chosen, times and jti fixed.
#[derive(Debug)]
pub struct Planned<'s> {
    signer: &'s Signer,
    /// `jti`.
    pub jti: String,
    /// `iat` and `nbf`.
    pub iat: i64,
    /// `exp`.
    pub exp: i64,
}

/// Chooses the key and the times of a token with lifetime `ttl` at `now`. Refuses when no
/// key may sign, or when the signing key's removal leaves no lifetime.
pub fn plan(settings: &IssuerSettings, now: i64, ttl: i64) -> Result<Planned<'_>, OAuthError> {
    let signer = settings.keys.signer(now).ok_or_else(|| {
        tracing::error!("no signing key may sign now (none active, or the mounted keys are stale)");
        OAuthError::TemporarilyUnavailable("no signing key is active")
    })?;
    let exp = now
        .saturating_add(ttl)
        .min(signer.max_expiry(settings.leeway));
    if exp <= now {
        tracing::error!(kid = %signer.kid, "the signing key leaves the JWKS before a token could expire");
        return Err(OAuthError::TemporarilyUnavailable(
            "no signing key is active",
        ));
    }
    Ok(Planned {
        signer,
        jti: random_token(16),
        iat: now,
        exp,
    })
}

#[derive(Serialize)]
#[serde(untagged)]
enum Aud<'a> {
    One(&'a str),
    Many(&'a [String]),
}

#[derive(Serialize)]
struct Claims<'a> {
    iss: &'a str,
    sub: &'a str,
    aud: Aud<'a>,
    exp: i64,
    iat: i64,
    nbf: i64,
    jti: &'a str,
    client_id: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    scope: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    act: Option<&'a Actor>,
}

impl Planned<'_> {
    /// Signs the token.
    pub fn sign(
        &self,
        issuer: &str,
        grant: &Grant<'_>,
        rng: &SystemRandom,
    ) -> Result<String, OAuthError> {
        let claims = Claims {
            iss: issuer,
            sub: grant.sub,
            aud: match grant.aud {
                [one] => Aud::One(one),
                many => Aud::Many(many),
            },
            exp: self.exp,
            iat: self.iat,
            nbf: self.iat,
            jti: &self.jti,
            client_id: grant.client_id,
            scope: (!grant.scope.is_empty()).then(|| grant.scope.join(" ")),
            act: grant.act,
        };
        let payload = serde_json::to_vec(&claims).map_err(|_| OAuthError::ServerError)?;
        self.signer
            .sign(JwsKind::AccessToken, &payload, rng)
            .map_err(|_| OAuthError::ServerError)
    }
}
