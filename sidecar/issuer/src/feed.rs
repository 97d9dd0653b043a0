//! The revocation feed verifiers read (`scopegate_core::feed`): `GET ?cursor=&wait=`,
//! answered as soon as the log has entries after the cursor, or after about `wait` seconds
//! with an empty page; every page one JWS signed with the active key. A cursor is
//! `<epoch>-<seq>`: one from another epoch (a restarted memory store, a Redis that lost its
//! data) or none at all gets a reset page with every live entry. Pages name subjects by their
//! keyed digest when the issuer has a subject key, and carry the log's position (its start and
//! newest sequence number) so that verifiers refuse a rolled-back page.

use std::time::Duration;

use http::header::{self, HeaderValue};
use http::{Method, Request, Response, StatusCode};
use hyper::body::Incoming;
use scopegate_core::feed::{
    CURSOR_PARAM, FEED_CONTENT_TYPE, FeedPage, JtiRevocation, SubjectCutoff, SubjectDigestCutoff,
    WAIT_PARAM, is_cursor, subject_digest,
};
use scopegate_sidecar_kit::body::ProxyBody;
use scopegate_sidecar_kit::unix_now;

use crate::error::OAuthError;
use crate::form::Form;
use crate::keys::JwsKind;
use crate::store::{FeedHead, FeedSlice, Revocation};
use crate::{Context, reply};

/// Longest a poll is held.
pub const MAX_WAIT_SECS: u64 = 30;

/// Where a cursor points: the log's epoch and the last sequence number seen.
fn parse_cursor(cursor: &str) -> Option<(&str, u64)> {
    let (epoch, seq) = cursor.rsplit_once('-')?;
    Some((epoch, seq.parse().ok()?))
}

fn cursor_of(head: &FeedHead) -> String {
    format!("{}-{}", head.epoch, head.seq)
}

/// The page for a request with `cursor` from a slice of the log. With `subject_key`, subjects
/// appear only as keyed digests; without (a config of an earlier operator, whose verifiers
/// hold no key either) they appear as they are.
pub fn page(
    issuer: &str,
    cursor: Option<&str>,
    slice: FeedSlice,
    reset: bool,
    now: i64,
    subject_key: Option<&[u8]>,
) -> FeedPage {
    let mut jtis = Vec::new();
    let mut subjects = Vec::new();
    let mut subject_digests = Vec::new();
    for (_, entry) in slice.entries {
        match entry {
            Revocation::Jti { jti, exp } => jtis.push(JtiRevocation { jti, exp }),
            Revocation::Subject { sub, before, until } => match subject_key {
                Some(key) => subject_digests.push(SubjectDigestCutoff {
                    digest: subject_digest(key, &sub),
                    before,
                    until,
                }),
                None => subjects.push(SubjectCutoff { sub, before, until }),
            },
        }
    }
    FeedPage {
        iss: issuer.to_owned(),
        iat: now,
        cursor: cursor.map(str::to_owned),
        next_cursor: cursor_of(&slice.head),
        reset,
        jtis,
        subjects,
        subject_digests,
        log_started_at: Some(slice.head.started_at_ms()),
        seq: Some(slice.head.seq),
    }
}

/// Answers a feed poll.
pub async fn handle(ctx: &Context<'_>, req: Request<Incoming>) -> Response<ProxyBody> {
    if req.method() != Method::GET {
        let mut r = reply::status(StatusCode::METHOD_NOT_ALLOWED);
        r.headers_mut()
            .insert(header::ALLOW, HeaderValue::from_static("GET"));
        return r;
    }
    let query = Form::parse(req.uri().query().unwrap_or("").as_bytes()).unwrap_or_default();
    let cursor = query.get(CURSOR_PARAM).filter(|c| is_cursor(c));
    if query.get(CURSOR_PARAM).is_some() && cursor.is_none() {
        return reply::error(&OAuthError::InvalidRequest("malformed cursor"));
    }
    let wait = query
        .get(WAIT_PARAM)
        .and_then(|w| w.parse::<u64>().ok())
        .unwrap_or(0)
        .min(MAX_WAIT_SECS);
    match poll(ctx, cursor, Duration::from_secs(wait)).await {
        Ok(body) => {
            let mut response =
                reply::json_bytes(StatusCode::OK, body.into_bytes(), FEED_CONTENT_TYPE);
            reply::no_store(&mut response);
            response
        }
        Err(err) => reply::error(&err),
    }
}

async fn poll(
    ctx: &Context<'_>,
    cursor: Option<&str>,
    wait: Duration,
) -> Result<String, OAuthError> {
    let store = ctx.issuer.store.as_ref();
    let mut news = ctx.issuer.feed_news.subscribe();
    let deadline = tokio::time::Instant::now() + wait;
    let known = cursor.and_then(parse_cursor);
    let slice = loop {
        news.mark_unchanged();
        let head = store.feed_head().await?;
        let (after, reset) = match known {
            Some((epoch, seq)) if epoch == head.epoch && seq <= head.seq => (Some(seq), false),
            _ => (None, true),
        };
        if reset || after.is_some_and(|seq| seq < head.seq) {
            let slice = store.feed_since(after).await?;
            // Entries past the cursor may all have expired: then only the cursor moves.
            if reset || !slice.entries.is_empty() || tokio::time::Instant::now() >= deadline {
                break (slice, reset);
            }
            if slice.head.seq > head.seq {
                continue;
            }
        }
        let parked = ctx.issuer.counters.feed_poll_parked();
        let waited = tokio::time::timeout_at(deadline, news.changed()).await;
        drop(parked);
        if waited.is_err() {
            break (store.feed_since(after).await?, false);
        }
    };
    let (slice, reset) = slice;
    let now = unix_now();
    let page = page(
        &ctx.settings.config.url,
        cursor,
        slice,
        reset,
        now,
        ctx.settings.feed_subject_key.as_deref(),
    );
    let signer = ctx
        .settings
        .keys
        .signer(now)
        .ok_or(OAuthError::TemporarilyUnavailable(
            "no signing key is active",
        ))?;
    let payload = serde_json::to_vec(&page).map_err(|_| OAuthError::ServerError)?;
    signer
        .sign(JwsKind::FeedPage, &payload, &ctx.issuer.rng)
        .map_err(|_| OAuthError::ServerError)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cursors_round_trip_and_stay_query_safe() {
        let head = FeedHead {
            epoch: "AbC_-9".into(),
            seq: 42,
        };
        let cursor = cursor_of(&head);
        assert!(is_cursor(&cursor));
        assert_eq!(parse_cursor(&cursor), Some(("AbC_-9", 42)));
        assert_eq!(parse_cursor("nodash"), None);
        assert_eq!(parse_cursor("e-x"), None);
    }
}
