//! Listeners: the proxy port (HTTP/1.1 and h2c, or TLS with ALPN) with an idle timeout per
//! connection and a time-limited drain on shutdown, and the admin port.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use hyper::rt::{Read, Write};
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{mpsc, watch};
use tokio::time::Instant;
use tokio_rustls::TlsAcceptor;

use scopegate_sidecar_kit::stopped;

use crate::admin;
use crate::proxy::{self, Connection};
use crate::state::Shared;

/// Time a client has to send request headers.
const HEADER_READ_TIMEOUT: Duration = Duration::from_secs(30);
/// Time a client has to finish a TLS handshake.
const TLS_HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// Requests in flight on one connection and when the last one ended.
struct Activity {
    in_flight: AtomicUsize,
    last_ms: std::sync::atomic::AtomicU64,
    started: Instant,
}

impl Activity {
    fn new() -> Self {
        Activity {
            in_flight: AtomicUsize::new(0),
            last_ms: std::sync::atomic::AtomicU64::new(0),
            started: Instant::now(),
        }
    }

    fn touch(&self) {
        let ms = u64::try_from(self.started.elapsed().as_millis()).unwrap_or(u64::MAX);
        self.last_ms.store(ms, Ordering::Release);
    }

    /// When the connection counts as idle if nothing happens before: `None` while a request
    /// is in flight.
    fn idle_at(&self, idle: Duration) -> Option<Instant> {
        (self.in_flight.load(Ordering::Acquire) == 0).then(|| {
            self.started + Duration::from_millis(self.last_ms.load(Ordering::Acquire)) + idle
        })
    }
}

/// Ends a request's in-flight count even when its future is dropped.
struct InFlight(Arc<Activity>);

impl InFlight {
    fn start(activity: &Arc<Activity>) -> Self {
        activity.in_flight.fetch_add(1, Ordering::AcqRel);
        activity.touch();
        InFlight(activity.clone())
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.touch();
        self.0.in_flight.fetch_sub(1, Ordering::AcqRel);
    }
}

/// Serves the proxy port until `shutdown` turns true, then drains open connections for at
/// most `drain`.
pub async fn serve_proxy(
    listener: TcpListener,
    tls: Option<TlsAcceptor>,
    shared: Arc<Shared>,
    mut shutdown: watch::Receiver<bool>,
    drain: Duration,
) {
    let mut builder = auto::Builder::new(TokioExecutor::new());
    builder
        .http1()
        .timer(TokioTimer::new())
        .header_read_timeout(HEADER_READ_TIMEOUT);
    builder.http2().timer(TokioTimer::new());
    let idle = shared.connection.idle_timeout;
    // Every connection task holds a sender: the drain ends when the last one is dropped.
    let (alive, mut all_closed) = mpsc::channel::<()>(1);
    let open = Arc::new(AtomicUsize::new(0));
    loop {
        let (stream, peer) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(pair) => pair,
                Err(err) => {
                    // Out of file descriptors and the like: back off instead of spinning.
                    tracing::warn!(error = %err, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
            () = stopped(&mut shutdown) => break,
        };
        let _ = stream.set_nodelay(true);
        let connection = ProxyConnection {
            builder: builder.clone(),
            tls: tls.clone(),
            shared: shared.clone(),
            idle,
            stop: shutdown.clone(),
        };
        let alive = alive.clone();
        let open = open.clone();
        tokio::spawn(async move {
            open.fetch_add(1, Ordering::AcqRel);
            connection.serve(stream, peer).await;
            open.fetch_sub(1, Ordering::AcqRel);
            drop(alive);
        });
    }
    drop(listener);
    drop(alive);
    tracing::info!(connections = open.load(Ordering::Acquire), "draining");
    if tokio::time::timeout(drain, all_closed.recv())
        .await
        .is_err()
    {
        tracing::warn!("drain timed out; closing the remaining connections");
    }
}

/// What one accepted proxy connection is served with.
struct ProxyConnection {
    builder: auto::Builder<TokioExecutor>,
    tls: Option<TlsAcceptor>,
    shared: Arc<Shared>,
    idle: Duration,
    stop: watch::Receiver<bool>,
}

impl ProxyConnection {
    /// Completes the TLS handshake when the listener has TLS, then serves the connection's
    /// requests through [`proxy::handle`].
    async fn serve(self, stream: TcpStream, peer: SocketAddr) {
        let activity = Arc::new(Activity::new());
        let service_activity = activity.clone();
        let shared = self.shared;
        let service = hyper::service::service_fn(move |req| {
            let shared = shared.clone();
            let in_flight = InFlight::start(&service_activity);
            async move {
                let response = proxy::handle(shared, Connection { peer }, req).await;
                drop(in_flight);
                Ok::<_, Infallible>(response)
            }
        });
        let (builder, idle, stop) = (&self.builder, self.idle, self.stop);
        match self.tls {
            None => serve(builder, TokioIo::new(stream), service, activity, idle, stop).await,
            Some(acceptor) => {
                match tokio::time::timeout(TLS_HANDSHAKE_TIMEOUT, acceptor.accept(stream)).await {
                    Ok(Ok(stream)) => {
                        serve(builder, TokioIo::new(stream), service, activity, idle, stop).await
                    }
                    _ => tracing::debug!("TLS handshake failed"),
                }
            }
        }
    }
}

/// Serves one connection: shut down gracefully once it has been idle for `idle` or the
/// sidecar stops, then served until its open requests and streams finish.
async fn serve<I, S>(
    builder: &auto::Builder<TokioExecutor>,
    io: I,
    service: S,
    activity: Arc<Activity>,
    idle: Duration,
    mut stop: watch::Receiver<bool>,
) where
    I: Read + Write + Unpin + Send + 'static,
    S: hyper::service::Service<
            http::Request<hyper::body::Incoming>,
            Response = http::Response<proxy::ProxyBody>,
            Error = Infallible,
        > + Clone
        + Send
        + 'static,
    S::Future: Send + 'static,
{
    let conn = builder.serve_connection_with_upgrades(io, service);
    tokio::pin!(conn);
    let mut closing = false;
    loop {
        // While requests are in flight, look again after `idle`: the last one ending starts
        // the countdown.
        let wake = activity
            .idle_at(idle)
            .unwrap_or_else(|| Instant::now() + idle);
        let idle_timer = tokio::time::sleep_until(wake);
        tokio::select! {
            result = conn.as_mut() => {
                if let Err(err) = result {
                    tracing::debug!(error = %err, "connection ended with an error");
                }
                return;
            }
            () = stopped(&mut stop), if !closing => {
                conn.as_mut().graceful_shutdown();
                closing = true;
            }
            () = idle_timer, if !closing => {
                // Requests may have come and gone while we slept: look again.
                if activity.idle_at(idle).is_some_and(|at| at <= Instant::now()) {
                    tracing::debug!("closing an idle connection");
                    conn.as_mut().graceful_shutdown();
                    closing = true;
                }
            }
        }
    }
}

/// Serves the admin port until `shutdown` turns true.
pub async fn serve_admin(
    listener: TcpListener,
    shared: Arc<Shared>,
    mut shutdown: watch::Receiver<bool>,
) {
    loop {
        let (stream, _) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(pair) => pair,
                Err(err) => {
                    tracing::warn!(error = %err, "admin accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
            () = stopped(&mut shutdown) => break,
        };
        tokio::spawn(admin::serve_connection(shared.clone(), stream));
    }
}
