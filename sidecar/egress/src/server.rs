//! The egress listener: 127.0.0.1 only (another pod reaching the pod's address gets no
//! connection at all), HTTP/1.1, a time limit on request headers, and on shutdown a drain of
//! the calls in flight, bounded in time.

use std::convert::Infallible;
use std::net::{Ipv4Addr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use http::Request;
use http_body_util::BodyExt;
use hyper::body::Incoming;
use hyper_util::rt::{TokioIo, TokioTimer};
use scopegate_sidecar_kit::stopped;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{mpsc, watch};

use crate::Egress;

/// Time the app has to send a request's headers (and, on a kept-alive connection, to start
/// the next request).
pub const HEADER_READ_TIMEOUT: Duration = Duration::from_secs(30);

/// Binds `port` on 127.0.0.1, never on another address.
pub async fn bind(port: u16) -> std::io::Result<TcpListener> {
    TcpListener::bind(SocketAddr::from((Ipv4Addr::LOCALHOST, port))).await
}

/// Serves `listener` until `shutdown` turns true, then lets open connections finish their
/// calls for at most `drain`.
pub async fn serve(
    egress: Arc<Egress>,
    listener: TcpListener,
    mut shutdown: watch::Receiver<bool>,
    drain: Duration,
) {
    // Every connection task holds a sender: the drain ends when the last one is dropped.
    let (alive, mut all_closed) = mpsc::channel::<()>(1);
    loop {
        let stream = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok((stream, _)) => stream,
                Err(err) => {
                    // Out of file descriptors and the like: back off instead of spinning.
                    tracing::warn!(error = %err, "egress: accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
            () = stopped(&mut shutdown) => break,
        };
        let _ = stream.set_nodelay(true);
        let (egress, stop, alive) = (egress.clone(), shutdown.clone(), alive.clone());
        tokio::spawn(async move {
            connection(egress, stream, stop).await;
            drop(alive);
        });
    }
    drop(listener);
    drop(alive);
    if tokio::time::timeout(drain, all_closed.recv())
        .await
        .is_err()
    {
        tracing::warn!("egress: drain timed out; closing the remaining connections");
    }
}

/// Serves one connection's calls; on shutdown, the call in flight finishes and the
/// connection closes.
async fn connection(egress: Arc<Egress>, stream: TcpStream, mut stop: watch::Receiver<bool>) {
    let service = hyper::service::service_fn(move |req: Request<Incoming>| {
        let egress = egress.clone();
        async move { Ok::<_, Infallible>(egress.handle(req.map(BodyExt::boxed)).await) }
    });
    let conn = hyper::server::conn::http1::Builder::new()
        .timer(TokioTimer::new())
        .header_read_timeout(HEADER_READ_TIMEOUT)
        .serve_connection(TokioIo::new(stream), service);
    tokio::pin!(conn);
    tokio::select! {
        result = conn.as_mut() => {
            if let Err(err) = result {
                tracing::debug!(error = %err, "egress: connection ended with an error");
            }
        }
        () = stopped(&mut stop) => {
            conn.as_mut().graceful_shutdown();
            let _ = conn.await;
        }
    }
}
