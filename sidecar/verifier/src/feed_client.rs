//! The client side of the issuer's revocation feed ([`scopegate_core::feed`]): a long-poll
//! loop that authenticates every page with the keys already trusted for the issuer, refuses a
//! page issued longer ago than a poll takes, keeps what it knows when the feed is unreachable,
//! and reports both. A page older than the newest it accepted (a log rolled back) may drop or
//! replace nothing, but its entries are added and its cursor followed, so that revocations
//! the rolled-back log writes next still arrive.

use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use arc_swap::ArcSwap;
use scopegate_core::config::FeedConfig;
use scopegate_core::feed::{FeedPage, is_cursor, poll_query};

use crate::https::{self, HttpsClient};
use crate::jose::json;
use crate::jose::jws::{self, Typ};
use crate::revocation::{FeedRevocations, SubjectKey};
use crate::token::IssuerKeys;
use crate::unix_now;

/// Seconds the issuer may hold a poll without news.
pub const WAIT_SECS: u64 = 25;
/// Largest page read.
const MAX_PAGE_BYTES: usize = 4 << 20;
/// First retry delay after a failed poll; doubles up to [`MAX_RETRY`].
const FIRST_RETRY: Duration = Duration::from_millis(200);
const MAX_RETRY: Duration = Duration::from_secs(10);
/// Least time between two polls after an empty page.
const MIN_EMPTY_INTERVAL: Duration = Duration::from_secs(1);
/// Oldest a page may be when it arrives, beyond the leeway: the issuer makes a page when it
/// answers, so an older one is a replay.
pub const MAX_PAGE_AGE_SECS: i64 = 60;

/// Why a page was refused. Messages name the failure class only.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum PageError {
    /// Not UTF-8 or not a compact JWS.
    #[error("not a compact JWS")]
    Jws(#[from] jws::JwsError),
    /// Wrong `typ`.
    #[error("typ is not revocation-feed+jwt")]
    Typ,
    /// The feed's issuer is not trusted (any more).
    #[error("feed issuer not trusted")]
    Issuer,
    /// Payload is not a feed page, names another issuer, answers another cursor or carries
    /// an unusable next cursor.
    #[error("page does not fit the request")]
    Payload,
    /// The page was made from an older position of the issuer's log than a page accepted
    /// before: a rollback (a replayed page, or an issuer whose store went back in time).
    #[error("page older than one accepted before")]
    RolledBack,
    /// The page was issued longer ago than a poll can take: a replay.
    #[error("page issued too long ago")]
    Stale,
}

/// A page refused as older than what the verifier knew, for `/readyz`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rollback {
    /// When it was refused (Unix seconds).
    pub at: i64,
    /// Why.
    pub error: PageError,
}

/// What the sidecar knows from the feed, and how fresh it is.
pub struct FeedState {
    /// The feed settings this state belongs to.
    pub config: FeedConfig,
    /// Revocations in force.
    pub revocations: ArcSwap<FeedRevocations>,
    started_at: i64,
    last_success: AtomicI64,
    last_error: Mutex<Option<&'static str>>,
    /// The newest log position accepted (pages before it are refused).
    newest: Mutex<Option<(i64, u64)>>,
    /// Pages refused as rolled back or stale (also counted in the sidecar's metrics).
    pub rollbacks: AtomicU64,
    last_rollback: Mutex<Option<Rollback>>,
    metrics: Arc<crate::metrics::Metrics>,
}

impl FeedState {
    /// Nothing known yet. A subject key that does not decode matches no digest (the config
    /// was checked before; this cannot happen for a loaded config).
    pub fn new(config: FeedConfig, metrics: Arc<crate::metrics::Metrics>) -> Arc<FeedState> {
        let key = config
            .subject_key
            .as_deref()
            .and_then(scopegate_core::feed::decode_subject_key)
            .map(|k| SubjectKey::new(&k));
        Arc::new(FeedState {
            revocations: ArcSwap::from_pointee(FeedRevocations::new(&config.issuer, key)),
            config,
            started_at: unix_now(),
            last_success: AtomicI64::new(i64::MIN),
            last_error: Mutex::new(None),
            newest: Mutex::new(None),
            rollbacks: AtomicU64::new(0),
            last_rollback: Mutex::new(None),
            metrics,
        })
    }

    /// The last page refused as rolled back or stale, if any.
    pub fn last_rollback(&self) -> Option<Rollback> {
        self.last_rollback
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// Checks a verified page against what was accepted before: its position must not be
    /// behind the newest accepted (whether or not it resets), and it must be recent. Records
    /// its position when it passes.
    pub fn admit(&self, page: &FeedPage, now: i64, leeway: i64) -> Result<(), PageError> {
        let verdict = check_order(
            *self.newest.lock().unwrap_or_else(|p| p.into_inner()),
            page,
            now,
            leeway,
        );
        match verdict {
            Ok(position) => {
                if let Some(position) = position {
                    *self.newest.lock().unwrap_or_else(|p| p.into_inner()) = Some(position);
                }
                Ok(())
            }
            Err(error) => {
                self.rollbacks.fetch_add(1, Ordering::Relaxed);
                self.metrics.feed_rollbacks.fetch_add(1, Ordering::Relaxed);
                *self.last_rollback.lock().unwrap_or_else(|p| p.into_inner()) =
                    Some(Rollback { at: now, error });
                Err(error)
            }
        }
    }

    /// Seconds since the last successful poll; `None` before the first one.
    pub fn staleness(&self, now: i64) -> Option<i64> {
        let last = self.last_success.load(Ordering::Acquire);
        (last != i64::MIN).then(|| now - last)
    }

    /// Seconds the sidecar has gone without news it can trust: since the last successful
    /// poll, or since the feed started when none succeeded yet.
    pub fn age(&self, now: i64) -> i64 {
        now - self.staleness(now).map_or(self.started_at, |s| now - s)
    }

    /// Whether the feed is past its staleness bound (or never answered).
    pub fn is_stale(&self, now: i64) -> bool {
        let bound = i64::try_from(self.config.staleness_bound_secs).unwrap_or(i64::MAX);
        self.staleness(now).is_none_or(|s| s > bound)
    }

    /// Category of the last failure, if the last poll failed.
    pub fn last_error(&self) -> Option<&'static str> {
        *self.last_error.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// Checks one page: a JWS of `typ` [`FEED_JWS_TYP`] signed by a key trusted for the feed's
/// issuer, whose payload names that issuer and answers `cursor`.
pub fn check_page(
    body: &str,
    issuer: &str,
    keys: Option<IssuerKeys>,
    cursor: Option<&str>,
) -> Result<FeedPage, PageError> {
    let compact = jws::parse(body.trim_end())?;
    if compact.typ != Typ::RevocationFeed {
        return Err(PageError::Typ);
    }
    let keys = keys.ok_or(PageError::Issuer)?;
    compact.verify_with(&keys.keys)?;
    json::check_unique(compact.payload()).map_err(|_| PageError::Payload)?;
    let page: FeedPage =
        serde_json::from_slice(compact.payload()).map_err(|_| PageError::Payload)?;
    if page.iss != issuer || page.cursor.as_deref() != cursor || !is_cursor(&page.next_cursor) {
        return Err(PageError::Payload);
    }
    Ok(page)
}

/// Whether a page may follow what was accepted (`newest`): `Ok` with the position to remember.
pub fn check_order(
    newest: Option<(i64, u64)>,
    page: &FeedPage,
    now: i64,
    leeway: i64,
) -> Result<Option<(i64, u64)>, PageError> {
    if page.iat < now.saturating_sub(leeway.saturating_add(MAX_PAGE_AGE_SECS)) {
        return Err(PageError::Stale);
    }
    let position = page.position();
    if let (Some(newest), Some(position)) = (newest, position)
        && position < newest
    {
        return Err(PageError::RolledBack);
    }
    Ok(position)
}

/// How a page's entries join what is known.
enum Merge {
    /// An accepted page: a reset replaces, a delta adds.
    Apply,
    /// A page behind the newest accepted (rolled back): its entries are added, nothing known
    /// is dropped.
    AddOnly,
}

/// Polls forever. `keys` gives the keys trusted for an issuer now; `leeway` bounds how long
/// entries are kept past their tokens' lifetime; `changed` runs after a page with news (to
/// flush the token cache).
pub async fn run(
    state: Arc<FeedState>,
    client: HttpsClient,
    keys: impl Fn(&str) -> Option<IssuerKeys> + Send + 'static,
    leeway: i64,
    changed: impl Fn(usize) + Send + 'static,
) {
    let mut cursor: Option<String> = None;
    let mut retry = FIRST_RETRY;
    loop {
        let keys = keys(&state.config.issuer);
        match fetch_page(&state, &client, keys, cursor.as_deref(), leeway).await {
            Ok((page, merge)) => {
                let news = take_page(&state, &page, merge, leeway, &changed);
                cursor = Some(page.next_cursor);
                retry = FIRST_RETRY;
                if !news {
                    // An issuer answering at once without news must not make this a busy loop.
                    tokio::time::sleep(MIN_EMPTY_INTERVAL).await;
                }
            }
            Err(category) => {
                tracing::warn!(
                    error = category,
                    "revocation feed poll failed; keeping what is known"
                );
                *state.last_error.lock().unwrap_or_else(|p| p.into_inner()) = Some(category);
                tokio::time::sleep(retry).await;
                retry = (retry * 2).min(MAX_RETRY);
            }
        }
    }
}

/// Long-polls the feed for the page after `cursor` and checks it: its signature, its
/// issuer, and its place in the log. A failure comes back as a short category for the
/// status and the log.
async fn fetch_page(
    state: &FeedState,
    client: &HttpsClient,
    keys: Option<IssuerKeys>,
    cursor: Option<&str>,
    leeway: i64,
) -> Result<(FeedPage, Merge), &'static str> {
    let url = format!("{}?{}", state.config.url, poll_query(cursor, WAIT_SECS));
    let timeout = Duration::from_secs(WAIT_SECS + 10);
    let body = https::get(client, &url, timeout, MAX_PAGE_BYTES)
        .await
        .map_err(|e| e.category())?;
    let body = std::str::from_utf8(&body).map_err(|_| "not utf-8")?;
    let page = check_page(body, &state.config.issuer, keys, cursor).map_err(|e| {
        tracing::warn!(error = %e, "revocation feed page refused");
        "bad page"
    })?;
    match state.admit(&page, unix_now(), leeway) {
        Ok(()) => Ok((page, Merge::Apply)),
        Err(PageError::RolledBack) => {
            // The log went back in time (a restore, a failover with replication lag) and
            // goes on from there: what the page would drop or replace stays, but its
            // entries are added and its cursor taken, so that revocations written at the
            // reused sequence numbers still arrive.
            tracing::error!(error = %PageError::RolledBack, "revocation feed rolled back; its entries are added, nothing known is dropped");
            Ok((page, Merge::AddOnly))
        }
        Err(e) => {
            tracing::error!(error = %e, "revocation feed page refused; keeping what is known");
            Err("rolled back")
        }
    }
}

/// Merges an accepted page into what is known and records the success; tells whether the
/// page had news.
fn take_page(
    state: &FeedState,
    page: &FeedPage,
    merge: Merge,
    leeway: i64,
    changed: &impl Fn(usize),
) -> bool {
    let now = unix_now();
    let news = page.reset
        || !page.jtis.is_empty()
        || !page.subjects.is_empty()
        || !page.subject_digests.is_empty();
    if news {
        let known = state.revocations.load();
        let next = match merge {
            Merge::Apply => known.apply(page, now, leeway),
            Merge::AddOnly => known.add(page, now, leeway),
        };
        let entries = next.len();
        state.revocations.store(Arc::new(next));
        changed(entries);
    }
    state.last_success.store(now, Ordering::Release);
    *state.last_error.lock().unwrap_or_else(|p| p.into_inner()) = None;
    news
}

#[cfg(test)]
mod tests {
    use super::*;

    fn page(iat: i64, position: Option<(i64, u64)>) -> FeedPage {
        FeedPage {
            iss: "i".into(),
            iat,
            cursor: None,
            next_cursor: "c".into(),
            reset: true,
            jtis: vec![],
            subjects: vec![],
            subject_digests: vec![],
            log_started_at: position.map(|p| p.0),
            seq: position.map(|p| p.1),
        }
    }

    #[test]
    fn pages_behind_the_newest_or_too_old_are_refused() {
        let now = 1_000_000;
        assert_eq!(
            check_order(None, &page(now, Some((5, 9))), now, 30),
            Ok(Some((5, 9)))
        );
        assert_eq!(
            check_order(Some((5, 9)), &page(now, Some((5, 8))), now, 30),
            Err(PageError::RolledBack),
            "a reset page too"
        );
        assert_eq!(
            check_order(Some((5, 9)), &page(now, Some((4, 100))), now, 30),
            Err(PageError::RolledBack),
            "an earlier log"
        );
        assert_eq!(
            check_order(Some((5, 9)), &page(now, Some((5, 9))), now, 30),
            Ok(Some((5, 9)))
        );
        assert_eq!(
            check_order(Some((5, 9)), &page(now, Some((6, 0))), now, 30),
            Ok(Some((6, 0)))
        );
        assert_eq!(
            check_order(
                None,
                &page(now - 30 - MAX_PAGE_AGE_SECS - 1, Some((5, 9))),
                now,
                30
            ),
            Err(PageError::Stale)
        );
        assert_eq!(
            check_order(Some((5, 9)), &page(now, None), now, 30),
            Ok(None),
            "an earlier issuer's page: only its age is checked"
        );
    }
}
