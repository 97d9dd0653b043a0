//! What is left of a request body the sidecar answers itself (a refusal, a login redirect,
//! its own endpoints) instead of forwarding it to the app.
//!
//! HTTP/2 lets a server answer before the body has arrived and then reset the stream with
//! NO_ERROR, and hyper does. Clients still uploading at that moment do not all take it well:
//! curl 7.88 (Debian 12's) reports "Stream error in the HTTP/2 framing layer" and drops the
//! answer in about one of five small form POSTs, so a 401, 403 or 429 with its
//! `WWW-Authenticate` or `Retry-After` never reaches the client. Reading a small rest of the
//! body first lets the stream end the ordinary way.

use std::time::Duration;

use http_body_util::BodyExt;
use hyper::body::{Body as _, Incoming};

/// The most of an unanswered body the sidecar reads before answering. A body that says it is
/// longer is not read at all (its answer goes out at once, as before).
pub const DRAIN_LIMIT: u64 = 64 * 1024;

/// The longest the sidecar waits for that rest: a client that trickles its body only delays
/// its own answer, by at most this.
pub const DRAIN_TIME: Duration = Duration::from_millis(500);

/// Reads and discards what is left of `body`, within [`DRAIN_LIMIT`] and [`DRAIN_TIME`].
/// Returns at once for a body that has ended (every GET) or says it is too long.
pub async fn drain(mut body: Incoming) {
    if body.is_end_stream() || body.size_hint().lower() > DRAIN_LIMIT {
        return;
    }
    let read_to_end = async {
        let mut read = 0u64;
        while let Some(Ok(frame)) = body.frame().await {
            read += frame.data_ref().map_or(0, |data| data.len() as u64);
            if read > DRAIN_LIMIT {
                break;
            }
        }
    };
    // Past the deadline the body is dropped unread, as it was before this.
    let _ = tokio::time::timeout(DRAIN_TIME, read_to_end).await;
}
