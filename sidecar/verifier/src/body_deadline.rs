//! A request body on its way to the app, with an idle deadline while the sidecar waits for
//! the client.

use std::future::Future as _;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::task::Poll;
use std::time::Duration;

use bytes::Bytes;
use hyper::body::Incoming;

/// Why a request body was abandoned.
#[derive(Debug, thiserror::Error)]
pub enum BodyError {
    /// Reading from the client failed.
    #[error("request body")]
    Read(#[source] hyper::Error),
    /// The client sent nothing for the idle deadline while the sidecar waited.
    #[error("request body stalled")]
    Stalled,
}

/// A request body on its way to the app, abandoned when the client goes silent for `idle`
/// while the sidecar waits for it (a trickled body would hold a connection, a task and an
/// upstream connection for as long as the client likes). Time the app takes to read does not
/// count.
pub struct BodyDeadline {
    inner: Incoming,
    idle: Duration,
    timer: Pin<Box<tokio::time::Sleep>>,
    waiting: bool,
    /// Set once the deadline passed (the request then ends with 408).
    pub stalled: Arc<AtomicBool>,
}

impl BodyDeadline {
    /// Wraps a request body.
    pub fn new(inner: Incoming, idle: Duration) -> Self {
        BodyDeadline {
            inner,
            idle,
            timer: Box::pin(tokio::time::sleep(idle)),
            waiting: false,
            stalled: Arc::new(AtomicBool::new(false)),
        }
    }
}

impl hyper::body::Body for BodyDeadline {
    type Data = Bytes;
    type Error = BodyError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> Poll<Option<Result<hyper::body::Frame<Bytes>, BodyError>>> {
        let this = self.get_mut();
        match Pin::new(&mut this.inner).poll_frame(cx) {
            Poll::Ready(frame) => {
                this.waiting = false;
                Poll::Ready(frame.map(|f| f.map_err(BodyError::Read)))
            }
            Poll::Pending => {
                if !this.waiting {
                    this.waiting = true;
                    this.timer
                        .as_mut()
                        .reset(tokio::time::Instant::now() + this.idle);
                }
                match this.timer.as_mut().poll(cx) {
                    Poll::Ready(()) => {
                        this.stalled.store(true, Ordering::Release);
                        Poll::Ready(Some(Err(BodyError::Stalled)))
                    }
                    Poll::Pending => Poll::Pending,
                }
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> hyper::body::SizeHint {
        self.inner.size_hint()
    }
}
