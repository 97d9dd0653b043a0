//! Targets on behalf of the caller (RFC 8693): the app forwards the bearer token of the
//! request it is serving, the sidecar exchanges it at the issuer for a token of the target's
//! audience and scopes, and keeps the exchanged token per caller token and [`TokenKey`] until
//! shortly before it expires ([`crate::token::fresh_for`]).
//!
//! The cache holds at most [`MAX_EXCHANGED`] entries, keyed by the SHA-256 of the caller's
//! token: the caller's token itself is never kept, and neither it nor its hash is logged or
//! counted. Each entry is a [`TokenSlot`] of its own, so concurrent misses of one caller's
//! token ask the issuer once, and a failure is remembered for that caller's token only.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Instant;

use aws_lc_rs::digest;
use http::header::{self, HeaderMap};

use crate::issuer::{TokenFailure, TokenKey, is_b64token};
use crate::token::{FAILURE_MEMORY, TokenSlot};

/// Largest `Authorization` header taken as the caller's token, in bytes (the verifier and the
/// issuer refuse larger tokens too).
pub const MAX_AUTHORIZATION_BYTES: usize = 8 * 1024;

/// Most exchanged tokens kept at once, across targets and callers.
pub const MAX_EXCHANGED: usize = 4096;

/// Why a call on behalf of the caller carries no caller token the sidecar can exchange.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum CallerTokenError {
    /// The app sent no `Authorization` header.
    #[error("the call carries no Authorization header")]
    Missing,
    /// The app sent more than one.
    #[error("the call carries more than one Authorization header")]
    Several,
    /// Its value is longer than [`MAX_AUTHORIZATION_BYTES`].
    #[error("the Authorization header is longer than 8 KiB")]
    TooLong,
    /// Its value is not `Bearer <token>` (RFC 6750 §2.1).
    #[error("the Authorization header is not Bearer <token>")]
    NotBearer,
}

impl CallerTokenError {
    /// A short, bounded reason for answers.
    pub fn reason(&self) -> &'static str {
        match self {
            CallerTokenError::Missing => "missing",
            CallerTokenError::Several => "several",
            CallerTokenError::TooLong => "too_long",
            CallerTokenError::NotBearer => "not_bearer",
        }
    }
}

/// The caller's token the app forwarded: the one `Authorization: Bearer <token>` header.
pub fn caller_token(headers: &HeaderMap) -> Result<&str, CallerTokenError> {
    let mut values = headers.get_all(header::AUTHORIZATION).iter();
    let value = values.next().ok_or(CallerTokenError::Missing)?;
    if values.next().is_some() {
        return Err(CallerTokenError::Several);
    }
    if value.len() > MAX_AUTHORIZATION_BYTES {
        return Err(CallerTokenError::TooLong);
    }
    // Bytes, not `to_str`: the b64token check below implies visible ASCII, and one pass
    // over a token of a kilobyte is enough.
    let bytes = value.as_bytes();
    let space = (bytes.iter().position(|&b| b == b' ')).ok_or(CallerTokenError::NotBearer)?;
    let (scheme, rest) = bytes.split_at(space);
    let start = rest.iter().position(|&b| b != b' ').unwrap_or(rest.len());
    let token = &rest[start..];
    if !scheme.eq_ignore_ascii_case(b"bearer") || !is_b64token(token) {
        return Err(CallerTokenError::NotBearer);
    }
    std::str::from_utf8(token).map_err(|_| CallerTokenError::NotBearer)
}

/// Whether an issuer's refusal of an exchange with the OAuth `error` code `code` is about the
/// caller's token (expired, revoked, not sent to this client's services, a chain too deep, an
/// audience or scopes it does not reach), rather than about the pod's client
/// (`invalid_client`, `unauthorized_client`, anything else): the app gets 403, not 502.
pub fn is_callers_error(code: &str) -> bool {
    matches!(
        code,
        "invalid_request" | "invalid_grant" | "invalid_target" | "invalid_scope"
    )
}

/// Whether `failure` is the issuer refusing the caller's token ([`is_callers_error`]).
pub fn refuses_the_caller(failure: &TokenFailure) -> bool {
    matches!(failure, TokenFailure::Refused { error } if is_callers_error(error))
}

/// The SHA-256 of a caller's token. No `Debug`: it is shown nowhere.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
struct SubjectDigest([u8; 32]);

impl SubjectDigest {
    fn of(subject: &str) -> SubjectDigest {
        let d = digest::digest(&digest::SHA256, subject.as_bytes());
        let mut out = [0u8; 32];
        out.copy_from_slice(d.as_ref());
        SubjectDigest(out)
    }
}

/// One caller's exchanged tokens of one key.
struct Entry {
    slot: Arc<TokenSlot>,
    /// When the entry was made: the oldest goes first when the cache is full.
    created: Instant,
}

/// The exchanged tokens of every caller, bounded.
pub struct ExchangeCache {
    entries: Mutex<HashMap<(Arc<TokenKey>, SubjectDigest), Entry>>,
    capacity: usize,
}

impl ExchangeCache {
    /// A cache of at most `capacity` entries (at least one).
    pub fn new(capacity: usize) -> ExchangeCache {
        ExchangeCache {
            entries: Mutex::default(),
            capacity: capacity.max(1),
        }
    }

    /// The slot of the tokens of `key` exchanged for `subject`: the cached one, else a new
    /// empty one. Making room evicts the spent entries (their token expired, no failure to
    /// remember, no exchange in flight) and, when that is not enough, the oldest.
    pub fn slot(&self, key: &Arc<TokenKey>, subject: &str) -> Arc<TokenSlot> {
        let id = (key.clone(), SubjectDigest::of(subject));
        let mut entries = self.entries.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some(entry) = entries.get(&id) {
            return entry.slot.clone();
        }
        let now = Instant::now();
        if entries.len() >= self.capacity {
            make_room(&mut entries, self.capacity, now);
        }
        let slot = Arc::new(TokenSlot::for_caller(TokenKey::clone(key)));
        entries.insert(
            id,
            Entry {
                slot: slot.clone(),
                created: now,
            },
        );
        slot
    }

    /// Forgets the tokens of keys no declared target asks for any more (on a reload).
    pub fn retain_keys(&self, keys: &[Arc<TokenKey>]) {
        let mut entries = self.entries.lock().unwrap_or_else(PoisonError::into_inner);
        entries.retain(|(key, _), _| keys.iter().any(|k| k == key));
    }

    /// How many entries the cache holds.
    pub fn len(&self) -> usize {
        self.entries
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .len()
    }

    /// Whether the cache holds nothing.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// Brings `entries` below `capacity`: the spent ones go first (an entry younger than
/// [`FAILURE_MEMORY`] is kept: its first exchange may not have started yet), then the
/// oldest, one at a time.
fn make_room(
    entries: &mut HashMap<(Arc<TokenKey>, SubjectDigest), Entry>,
    capacity: usize,
    now: Instant,
) {
    entries.retain(|_, entry| {
        now.duration_since(entry.created) < FAILURE_MEMORY || !entry.slot.is_spent(now)
    });
    while entries.len() >= capacity {
        let oldest = entries
            .iter()
            .min_by_key(|(_, entry)| entry.created)
            .map(|(id, _)| id.clone());
        match oldest {
            Some(id) => entries.remove(&id),
            None => break,
        };
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::HeaderValue;

    fn headers(values: &[&str]) -> HeaderMap {
        let mut map = HeaderMap::new();
        for value in values {
            map.append(header::AUTHORIZATION, HeaderValue::from_str(value).unwrap());
        }
        map
    }

    #[test]
    fn the_caller_token_is_the_one_bearer_token() {
        assert_eq!(
            caller_token(&headers(&["Bearer eyJ.a-b.c_d"])),
            Ok("eyJ.a-b.c_d")
        );
        assert_eq!(caller_token(&headers(&["bearer  t0k=="])), Ok("t0k=="));
        assert_eq!(caller_token(&headers(&[])), Err(CallerTokenError::Missing));
        assert_eq!(
            caller_token(&headers(&["Bearer a", "Bearer b"])),
            Err(CallerTokenError::Several)
        );
        for bad in [
            "Basic YTpi",
            "Bearer",
            "Bearer ",
            "Bearer two words",
            "Bearer a,b",
            "Bearertoken",
            "DPoP eyJ.a.b",
        ] {
            assert_eq!(
                caller_token(&headers(&[bad])),
                Err(CallerTokenError::NotBearer),
                "{bad:?}"
            );
        }
        let long = format!("Bearer {}", "a".repeat(MAX_AUTHORIZATION_BYTES));
        assert_eq!(
            caller_token(&headers(&[&long])),
            Err(CallerTokenError::TooLong)
        );
        let longest = format!("Bearer {}", "a".repeat(MAX_AUTHORIZATION_BYTES - 7));
        assert!(caller_token(&headers(&[&longest])).is_ok());
    }

    #[test]
    fn only_refusals_about_the_callers_token_are_the_callers() {
        let refused = |error: &str| TokenFailure::Refused {
            error: error.to_owned(),
        };
        for code in [
            "invalid_request",
            "invalid_grant",
            "invalid_target",
            "invalid_scope",
        ] {
            assert!(refuses_the_caller(&refused(code)), "{code}");
        }
        for code in ["invalid_client", "unauthorized_client", "unknown"] {
            assert!(!refuses_the_caller(&refused(code)), "{code}");
        }
        assert!(!refuses_the_caller(&TokenFailure::Timeout));
    }

    fn key(audience: &str) -> Arc<TokenKey> {
        Arc::new(TokenKey::new(audience, &["read".into()]))
    }

    #[test]
    fn an_entry_is_one_callers_token_for_one_key() {
        let cache = ExchangeCache::new(16);
        let (inventory, payments) = (key("https://inventory"), key("https://payments"));
        let alice = cache.slot(&inventory, "alice-token");
        assert!(Arc::ptr_eq(&alice, &cache.slot(&inventory, "alice-token")));
        // Equal keys built apart are one key.
        assert!(Arc::ptr_eq(
            &alice,
            &cache.slot(&key("https://inventory"), "alice-token")
        ));
        assert!(!Arc::ptr_eq(&alice, &cache.slot(&inventory, "bob-token")));
        assert!(!Arc::ptr_eq(&alice, &cache.slot(&payments, "alice-token")));
        assert_eq!(cache.len(), 3);
        cache.retain_keys(std::slice::from_ref(&inventory));
        assert_eq!(cache.len(), 2);
        assert!(Arc::ptr_eq(&alice, &cache.slot(&inventory, "alice-token")));
    }

    #[test]
    fn a_full_cache_drops_spent_entries_then_the_oldest() {
        let cache = ExchangeCache::new(3);
        let k = key("https://inventory");
        let first = cache.slot(&k, "one");
        let _second = cache.slot(&k, "two");
        let third = cache.slot(&k, "three");
        // Young entries are never spent: the oldest goes.
        let fourth = cache.slot(&k, "four");
        assert_eq!(cache.len(), 3);
        assert!(
            !Arc::ptr_eq(&first, &cache.slot(&k, "one")),
            "one was evicted"
        );
        // "two" was the oldest left when "one" came back.
        assert!(Arc::ptr_eq(&third, &cache.slot(&k, "three")));
        assert!(Arc::ptr_eq(&fourth, &cache.slot(&k, "four")));
        // Later on, entries without a token are spent, and they go before an older one
        // that holds a token.
        let three_tokened = cache.slot(&k, "three");
        three_tokened.keep(
            crate::issuer::Granted {
                header: HeaderValue::from_static("Bearer x"),
                lifetime: std::time::Duration::from_secs(600),
            },
            "inventory",
        );
        let mut entries = cache.entries.lock().unwrap();
        make_room(&mut entries, 3, Instant::now() + FAILURE_MEMORY);
        assert_eq!(entries.len(), 1);
        assert!(Arc::ptr_eq(&entries.values().next().unwrap().slot, &third));
    }
}
