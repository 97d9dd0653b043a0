//! The grant logic's updates of the store: each one a compare-and-swap loop around a pure
//! transition, so replicas sharing the store agree (one redemption of a code, one winner
//! of a rotation), and revocations that also reach the feed (and every token exchanged from
//! a revoked one, RFC 8693).

use scopegate_core::clients::MAX_EXCHANGE_DEPTH;
use serde::{Deserialize, Serialize};

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

/// Puts access tokens on the revocation feed (those already expired are skipped), and every
/// token exchanged from them, level by level, at most [`MAX_EXCHANGE_DEPTH`] levels down and
/// [`MAX_CASCADE`] exchanged tokens in all. Readers of the feed are told of whatever was
/// revoked, also when a store error ends the walk early (the error is returned then).
///
/// Each level is revoked before its exchanged tokens are read: an exchange records its token
/// before it checks that its subject token is not revoked, so one of the two always sees the
/// other (see [`record_exchanged`]).
pub async fn revoke_jtis(
    ctx: &Context<'_>,
    jtis: Vec<(String, i64)>,
    now: i64,
) -> Result<(), OAuthError> {
    let mut revoked = false;
    let walked = cascade(ctx, jtis, now, &mut revoked).await;
    if revoked {
        ctx.issuer.notify_feed();
    }
    walked
}

/// Most tokens exchanged (at any depth) that one revocation walks to: 128 per subject token
/// over four levels could be millions. Those past the bound stay valid until they expire,
/// which is no later than the token they came from.
pub const MAX_CASCADE: usize = 4096;

/// The walk of [`revoke_jtis`]; `revoked` is set once anything went on the feed.
async fn cascade(
    ctx: &Context<'_>,
    jtis: Vec<(String, i64)>,
    now: i64,
    revoked: &mut bool,
) -> Result<(), OAuthError> {
    let store = ctx.issuer.store.as_ref();
    let leeway = ctx.settings.leeway;
    let mut level: Vec<(String, i64)> = jtis
        .into_iter()
        .filter(|(_, exp)| live(*exp, leeway, now))
        .collect();
    let mut budget = MAX_CASCADE;
    let mut cut = false;
    for _ in 0..=MAX_EXCHANGE_DEPTH {
        if level.is_empty() {
            break;
        }
        let entries = level
            .iter()
            .map(|(jti, exp)| Revocation::Jti {
                jti: jti.clone(),
                exp: *exp,
            })
            .collect();
        store.revoke(entries, leeway).await?;
        *revoked = true;
        let mut next = Vec::new();
        for (jti, _) in &level {
            if budget == 0 {
                cut = true;
                break;
            }
            if let Some(read) = store::read::<Exchanged>(store, &exchanged_key(jti)).await? {
                cut |= take_live(&mut next, read.value.tokens, leeway, now, &mut budget);
            }
        }
        level = next;
    }
    if cut {
        tracing::warn!(
            bound = MAX_CASCADE,
            "a revocation reached its bound of exchanged tokens; the rest stay valid until they expire"
        );
    }
    Ok(())
}

/// Whether a token expiring at `exp` may still be accepted at `now` (verifiers allow
/// `leeway` past `exp`).
fn live(exp: i64, leeway: i64, now: i64) -> bool {
    exp.saturating_add(leeway) > now
}

/// Moves the live ones of `tokens` into `into`, at most `budget` of them (spent as they are
/// taken); `true` when a live one was left out.
fn take_live(
    into: &mut Vec<(String, i64)>,
    tokens: Vec<(String, i64)>,
    leeway: i64,
    now: i64,
    budget: &mut usize,
) -> bool {
    for token in tokens
        .into_iter()
        .filter(|(_, exp)| live(*exp, leeway, now))
    {
        if *budget == 0 {
            return true;
        }
        *budget -= 1;
        into.push(token);
    }
    false
}

/// Most live tokens exchanged from one subject token.
pub const MAX_EXCHANGED: usize = 128;

/// The store key of the tokens exchanged from the access token `jti`.
pub fn exchanged_key(jti: &str) -> String {
    format!("exchanged:{jti}")
}

/// The access tokens exchanged from one subject token (RFC 8693): they are revoked with it.
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq, Eq, Default)]
pub struct Exchanged {
    /// `(jti, exp)` of each exchanged token that may still be valid.
    pub tokens: Vec<(String, i64)>,
}

impl Exchanged {
    /// The record with `issued` added and the tokens no verifier accepts any more dropped
    /// (expired for longer than `leeway`); `None` when [`MAX_EXCHANGED`] live tokens are
    /// recorded already.
    pub fn with(&self, issued: (String, i64), leeway: i64, now: i64) -> Option<Exchanged> {
        let mut tokens: Vec<(String, i64)> = self
            .tokens
            .iter()
            .filter(|(_, exp)| live(*exp, leeway, now))
            .cloned()
            .collect();
        if tokens.len() >= MAX_EXCHANGED {
            return None;
        }
        tokens.push(issued);
        Some(Exchanged { tokens })
    }
}

/// Records the token `issued` as exchanged from the subject token `subject_jti`, kept until
/// `keep_until` (the subject token's expiry plus the leeway: revoking it matters that long).
/// `false` when [`MAX_EXCHANGED`] live tokens are recorded already.
pub async fn record_exchanged(
    ctx: &Context<'_>,
    subject_jti: &str,
    keep_until: i64,
    issued: (String, i64),
    now: i64,
) -> Result<bool, OAuthError> {
    let store = ctx.issuer.store.as_ref();
    let key = exchanged_key(subject_jti);
    for _ in 0..MAX_SWAP_ATTEMPTS {
        let read = store::read::<Exchanged>(store, &key).await?;
        let (expected, current) = match read {
            Some(read) => (Some(read.bytes), read.value),
            None => (None, Exchanged::default()),
        };
        let Some(next) = current.with(issued.clone(), ctx.settings.leeway, now) else {
            return Ok(false);
        };
        if store::write(store, &key, expected.as_deref(), &next, keep_until).await? {
            return Ok(true);
        }
    }
    Err(OAuthError::TemporarilyUnavailable("too much contention"))
}

/// The store key of a refresh family.
pub fn family_key(id: &str) -> String {
    format!("family:{id}")
}

/// Revokes a refresh family and the access tokens issued from it. A family not written yet
/// (a replay racing the first redemption) gets a revoked placeholder, so its creation fails.
/// A family revoked already has its access tokens revoked again (idempotent): a revocation
/// that failed after marking the family may have missed them or what was exchanged from them.
pub async fn revoke_family(ctx: &Context<'_>, id: &str, now: i64) -> Result<(), OAuthError> {
    let store = ctx.issuer.store.as_ref();
    let key = family_key(id);
    for _ in 0..MAX_SWAP_ATTEMPTS {
        let current = store::read::<Family>(store, &key).await?;
        let (expected, mut family) = match current {
            Some(read) if read.value.revoked => {
                return revoke_jtis(ctx, read.value.tokens, now).await;
            }
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_exchanged_record_prunes_expired_tokens_and_is_capped() {
        let now = 1_000;
        let leeway = 30;
        let mut record = Exchanged {
            tokens: vec![
                ("old".into(), now - leeway),
                ("in leeway".into(), now - leeway + 1),
                ("live".into(), now + 1),
            ],
        };
        record = record.with(("new".into(), now + 60), leeway, now).unwrap();
        assert_eq!(
            record.tokens,
            [
                ("in leeway".to_owned(), now - leeway + 1),
                ("live".to_owned(), now + 1),
                ("new".to_owned(), now + 60)
            ],
            "a token expired for longer than the leeway is dropped; one verifiers still \
             accept (within the leeway) is kept, so revoking its subject still reaches it"
        );
        let full = Exchanged {
            tokens: (0..MAX_EXCHANGED)
                .map(|i| (i.to_string(), now + 5))
                .collect(),
        };
        assert_eq!(full.with(("one more".into(), now + 5), leeway, now), None);
        assert_eq!(
            full.with(("one more".into(), now + 40), leeway, now + 5),
            None,
            "still full while they are within the leeway"
        );
        assert!(
            full.with(("after".into(), now + 60), leeway, now + 5 + leeway)
                .is_some(),
            "room again once they expired for longer than the leeway"
        );
    }

    #[test]
    fn a_cascade_takes_live_tokens_within_its_bound() {
        let now = 1_000;
        let tokens = |exps: &[i64]| -> Vec<(String, i64)> {
            exps.iter().map(|e| (format!("j{e}"), *e)).collect()
        };
        let mut into = Vec::new();
        let mut budget = 3;
        let cut = take_live(
            &mut into,
            tokens(&[now - 31, now - 29, now + 5]),
            30,
            now,
            &mut budget,
        );
        assert!(!cut);
        assert_eq!(
            into,
            tokens(&[now - 29, now + 5]),
            "expired past the leeway: skipped"
        );
        assert_eq!(budget, 1, "only the live ones spend the bound");
        let cut = take_live(&mut into, tokens(&[now + 6, now + 7]), 30, now, &mut budget);
        assert!(cut, "a live one was left out");
        assert_eq!(into, tokens(&[now - 29, now + 5, now + 6]));
        assert_eq!(budget, 0);
        let cut = take_live(&mut into, tokens(&[now - 40]), 30, now, &mut budget);
        assert!(!cut, "nothing live was left out");
    }
}
