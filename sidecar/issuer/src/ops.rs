//! The grant logic's updates of the store: each one a compare-and-swap loop around a pure
//! transition, so replicas sharing the store agree (one redemption of a code, one winner
//! of a rotation), and revocations that also reach the feed.

use crate::codes::{self, CodeRecord, Redeemed};
use crate::error::OAuthError;
use crate::refresh::{self, Family, Rotation};
use crate::store::{self, MAX_SWAP_ATTEMPTS, Revocation};
use crate::{Context, IssuerSettings};

/// What redeeming a code found.
pub enum Redemption {
    /// This request redeemed it.
    Won(Box<CodeRecord>),
    /// It had been redeemed before: what it issued is now revoked.
    Replayed,
    /// Unknown or expired.
    Unknown,
}

/// Redeems a code atomically, recording `issued`. `binding` checks that the request is the
/// one the code was issued for (client, redirect URI, PKCE verifier) and `check` vets the rest
/// (cut-offs, audiences); a refusal by either leaves the code unspent.
///
/// A code redeemed before revokes what its first redemption issued, but only for a request
/// that passes `binding`: a stranger holding a leaked code (without the client's credentials
/// or the PKCE verifier) must not be able to end the user's session with it.
pub async fn redeem_code(
    ctx: &Context<'_>,
    key: &str,
    issued: Redeemed,
    now: i64,
    binding: impl Fn(&CodeRecord) -> Result<(), OAuthError>,
    check: impl Fn(&CodeRecord) -> Result<(), OAuthError>,
) -> Result<Redemption, OAuthError> {
    let store = ctx.issuer.store.as_ref();
    for _ in 0..MAX_SWAP_ATTEMPTS {
        let Some(read) = store::read::<CodeRecord>(store, key).await? else {
            return Ok(Redemption::Unknown);
        };
        if let Some(first) = &read.value.redeemed {
            binding(&read.value)?;
            tracing::warn!(client_id = %read.value.client_id, "authorization code replayed; revoking what it issued");
            revoke_redeemed(ctx, first, now).await?;
            return Ok(Redemption::Replayed);
        }
        if read.value.expires_at <= now {
            return Ok(Redemption::Unknown);
        }
        binding(&read.value)?;
        check(&read.value)?;
        let (next, keep_until) = codes::redeem(&read.value, issued.clone());
        if store::write(store, key, Some(&read.bytes), &next, keep_until).await? {
            return Ok(Redemption::Won(Box::new(read.value)));
        }
    }
    Err(OAuthError::TemporarilyUnavailable("too much contention"))
}

async fn revoke_redeemed(ctx: &Context<'_>, first: &Redeemed, now: i64) -> Result<(), OAuthError> {
    revoke_jtis(ctx, vec![(first.jti.clone(), first.exp)], now).await?;
    if let Some(family) = &first.family {
        revoke_family(ctx, family, now).await?;
    }
    Ok(())
}

/// Puts access tokens on the revocation feed (those already expired are skipped).
pub async fn revoke_jtis(
    ctx: &Context<'_>,
    jtis: Vec<(String, i64)>,
    now: i64,
) -> Result<(), OAuthError> {
    let entries: Vec<Revocation> = jtis
        .into_iter()
        .filter(|(_, exp)| *exp + ctx.settings.leeway > now)
        .map(|(jti, exp)| Revocation::Jti { jti, exp })
        .collect();
    if entries.is_empty() {
        return Ok(());
    }
    ctx.issuer
        .store
        .revoke(entries, ctx.settings.leeway)
        .await?;
    ctx.issuer.notify_feed();
    Ok(())
}

/// The store key of a refresh family.
pub fn family_key(id: &str) -> String {
    format!("family:{id}")
}

/// Revokes a refresh family and the access tokens issued from it. A family not written yet
/// (a replay racing the first redemption) gets a revoked placeholder, so its creation fails.
pub async fn revoke_family(ctx: &Context<'_>, id: &str, now: i64) -> Result<(), OAuthError> {
    let store = ctx.issuer.store.as_ref();
    let key = family_key(id);
    for _ in 0..MAX_SWAP_ATTEMPTS {
        let current = store::read::<Family>(store, &key).await?;
        let (expected, mut family) = match current {
            Some(read) if read.value.revoked => return Ok(()),
            Some(read) => (Some(read.bytes), read.value),
            None => (None, placeholder(ctx.settings, now)),
        };
        family.revoked = true;
        family.current.clear();
        let until = family.expires_at.max(now + 60);
        if store::write(store, &key, expected.as_deref(), &family, until).await? {
            let tokens = std::mem::take(&mut family.tokens);
            return revoke_jtis(ctx, tokens, now).await;
        }
    }
    Err(OAuthError::TemporarilyUnavailable("too much contention"))
}

fn placeholder(settings: &IssuerSettings, now: i64) -> Family {
    let ttl = i64::try_from(settings.config.refresh_token_ttl_secs).unwrap_or(i64::MAX);
    Family {
        client_id: String::new(),
        sub: String::new(),
        scope: vec![],
        audiences: vec![],
        default_audiences: vec![],
        created_at: now,
        expires_at: now.saturating_add(ttl),
        secret: String::new(),
        next_gen: 0,
        current: vec![],
        parent: None,
        revoked: true,
        tokens: vec![],
        last_used_at: None,
    }
}

/// Creates a family; `false` when its id is taken (a revoked placeholder).
pub async fn create_family(
    ctx: &Context<'_>,
    id: &str,
    family: &Family,
) -> Result<bool, OAuthError> {
    Ok(store::write(
        ctx.issuer.store.as_ref(),
        &family_key(id),
        None,
        family,
        family.expires_at,
    )
    .await?)
}

/// What presenting a refresh token did.
pub enum Refreshed {
    /// Rotated (or a sibling within the grace window): the new generation and the family.
    Rotated(u64, Box<Family>),
    /// Refused: reuse (the family is now revoked), a revoked family, or too many siblings.
    Refused(&'static str),
}

/// Rotates a family atomically for `generation`, recording the access token `(jti, exp)`.
pub async fn rotate_family(
    ctx: &Context<'_>,
    id: &str,
    read: store::Read<Family>,
    generation: u64,
    issued: (String, i64),
    now: i64,
) -> Result<Refreshed, OAuthError> {
    let store = ctx.issuer.store.as_ref();
    let key = family_key(id);
    let grace = ctx.issuer.tuning.refresh_grace_ms;
    let mut read = read;
    for _ in 0..MAX_SWAP_ATTEMPTS {
        let now_ms = store::memory::now_ms();
        let (outcome, next) = refresh::rotate(&read.value, generation, now_ms, grace);
        let refused = match outcome {
            Rotation::Rotated { generation } | Rotation::Sibling { generation } => {
                let mut next = next.ok_or(OAuthError::ServerError)?;
                next.record_token(issued.0.clone(), issued.1, now);
                next.last_used_at = Some(now);
                if store::write(store, &key, Some(&read.bytes), &next, next.expires_at).await? {
                    return Ok(Refreshed::Rotated(generation, Box::new(next)));
                }
                None
            }
            Rotation::Reuse => {
                let next = next.ok_or(OAuthError::ServerError)?;
                if store::write(store, &key, Some(&read.bytes), &next, next.expires_at).await? {
                    tracing::warn!(client_id = %read.value.client_id, "refresh token reused; family revoked");
                    revoke_jtis(ctx, read.value.tokens.clone(), now).await?;
                    return Ok(Refreshed::Refused(
                        "refresh token reused; the grant is revoked",
                    ));
                }
                None
            }
            Rotation::Revoked => Some("the grant is revoked"),
            Rotation::Exhausted => Some("too many concurrent refreshes"),
        };
        if let Some(why) = refused {
            return Ok(Refreshed::Refused(why));
        }
        read = match store::read::<Family>(store, &key).await? {
            Some(fresh) => fresh,
            None => return Ok(Refreshed::Refused("unknown refresh token")),
        };
    }
    Err(OAuthError::TemporarilyUnavailable("too much contention"))
}
