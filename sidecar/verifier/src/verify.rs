//! A bearer token's validation on the request path: from the verified-token cache when it
//! was verified before, else the full check, one refetch of a remote issuer's keys for an
//! unknown kid, and revocation.

use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::cache;
use crate::jose::jws::JwsError;
use crate::revocation;
use crate::settings::{IssuerSource, Settings};
use crate::state::Shared;
use crate::token::{self, TokenError, VerifiedToken};
use crate::unix_now;

/// How long a request waits for an on-demand JWKS fetch after an unknown kid.
const UNKNOWN_KID_WAIT: Duration = Duration::from_secs(2);

/// Validates a token, from the cache when it was verified before. `epoch` is the cache's
/// epoch read before `settings` were loaded: a reload between the two then keeps the result
/// out of the cache.
pub async fn verify(
    shared: &Shared,
    settings: &Settings,
    token: &str,
    epoch: u64,
) -> Result<Arc<VerifiedToken>, TokenError> {
    let now = unix_now();
    if token.len() > settings.token_rules.max_token_bytes {
        return Err(TokenError::TooLarge);
    }
    let key = cache::hash(token);
    if let Some(hit) = shared.cache.get(&key, now, settings.serial) {
        shared.metrics.cache(true);
        return Ok(hit);
    }
    shared.metrics.cache(false);
    let started = Instant::now();
    let mut remote = None;
    let mut result = token::validate(
        token,
        &settings.token_rules,
        |iss| {
            let source = settings.issuers.get(iss)?;
            if let IssuerSource::Remote { set, .. } = source {
                remote = Some(set.clone());
            }
            Some(source.keys())
        },
        now,
    );
    shared.metrics.validation(started.elapsed());
    if let (Err(TokenError::Jws(JwsError::UnknownKid)), Some(set)) = (&result, remote)
        && let Some(mut loaded) = set.refetch_for_unknown_kid()
    {
        {
            // A key rotated at the issuer: wait briefly for the refetch, then try once more.
            let _ = tokio::time::timeout(UNKNOWN_KID_WAIT, loaded.changed()).await;
            result = token::validate(
                token,
                &settings.token_rules,
                |iss| settings.issuers.get(iss).map(IssuerSource::keys),
                unix_now(),
            );
        }
    }
    let verified = result?;
    let feed = shared.feed.load_full();
    let feed_revocations = feed.as_ref().map(|f| f.revocations.load_full());
    if let Some(reason) = revocation::revoked(
        &verified,
        &settings.client_cutoffs,
        feed_revocations.as_deref(),
    ) {
        return Err(TokenError::Revoked(reason));
    }
    let verified = Arc::new(verified);
    shared
        .cache
        .insert(key, verified.clone(), (epoch, settings.serial), now);
    Ok(verified)
}
