//! The admin HTTP server: `/healthz`, `/readyz` and `/metrics`.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use http_body_util::Full;
use hyper::body::Bytes;
use hyper::service::service_fn;
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::TokioIo;

use crate::metrics::Metrics;

/// Readiness shared with the admin server: ready when both are set.
#[derive(Default)]
pub struct Health {
    /// Set once this replica is ready: a standby at once, a leader when its caches synced.
    pub ready: AtomicBool,
    /// Set once the injection webhook's AuthPolicy and OAuthClient caches have synced: until then the webhook
    /// refuses every pod, and the replica must get no webhook traffic.
    pub webhook_synced: Arc<AtomicBool>,
}

/// Serves the admin endpoints on `addr` until the task is dropped.
pub async fn serve(listener: tokio::net::TcpListener, metrics: Arc<Metrics>, health: Arc<Health>) {
    loop {
        let Ok((stream, _)) = listener.accept().await else {
            continue;
        };
        let (metrics, health) = (metrics.clone(), health.clone());
        tokio::spawn(async move {
            let service = service_fn(move |request: Request<hyper::body::Incoming>| {
                let response = answer(request.uri().path(), &metrics, &health);
                async move { Ok::<_, Infallible>(response) }
            });
            let _ = hyper::server::conn::http1::Builder::new()
                .serve_connection(TokioIo::new(stream), service)
                .await;
        });
    }
}

/// Binds the admin listener.
pub async fn bind(addr: SocketAddr) -> std::io::Result<tokio::net::TcpListener> {
    tokio::net::TcpListener::bind(addr).await
}

fn answer(path: &str, metrics: &Metrics, health: &Health) -> Response<Full<Bytes>> {
    let (status, body) = match path {
        "/healthz" => (StatusCode::OK, "ok\n".to_owned()),
        "/readyz" if !health.webhook_synced.load(Ordering::Relaxed) => (
            StatusCode::SERVICE_UNAVAILABLE,
            "the webhook's AuthPolicy and OAuthClient caches have not synced yet\n".to_owned(),
        ),
        "/readyz" if health.ready.load(Ordering::Relaxed) => (StatusCode::OK, "ready\n".to_owned()),
        "/readyz" => (
            StatusCode::SERVICE_UNAVAILABLE,
            "caches not synced yet\n".to_owned(),
        ),
        "/metrics" => (StatusCode::OK, metrics.render()),
        _ => (StatusCode::NOT_FOUND, "not found\n".to_owned()),
    };
    let mut response = Response::new(Full::new(Bytes::from(body)));
    *response.status_mut() = status;
    response
}

#[cfg(test)]
mod tests {
    use super::*;

    fn readyz(health: &Health) -> (StatusCode, String) {
        let response = answer("/readyz", &Metrics::default(), health);
        let status = response.status();
        let body =
            futures::executor::block_on(http_body_util::BodyExt::collect(response.into_body()))
                .map(|b| String::from_utf8_lossy(&b.to_bytes()).into_owned())
                .unwrap_or_default();
        (status, body)
    }

    #[test]
    fn not_ready_until_the_webhook_cache_synced_and_the_replica_is_ready() {
        let health = Health::default();
        health.ready.store(true, Ordering::Relaxed);
        let (status, body) = readyz(&health);
        assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
        assert!(
            body.contains("OAuthClient caches have not synced"),
            "{body}"
        );
        health.webhook_synced.store(true, Ordering::Relaxed);
        assert_eq!(readyz(&health).0, StatusCode::OK);
        health.ready.store(false, Ordering::Relaxed);
        assert_eq!(readyz(&health).0, StatusCode::SERVICE_UNAVAILABLE);
    }
}
