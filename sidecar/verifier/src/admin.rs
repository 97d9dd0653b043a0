//! The admin server (port 15090 in a pod): `/healthz`, `/readyz` with detail, `/metrics`,
//! and the app's own probes replayed under `/app-health/<container>/<kind>`.

use std::convert::Infallible;
use std::sync::Arc;

use bytes::Bytes;
use http::{Request, Response, StatusCode, header};
use http_body_util::Full;
use hyper::body::Incoming;

use scopegate_sidecar_kit::exposition::{self, MetricsCollector};

use crate::state::Shared;

/// Answers one admin request.
pub async fn handle(shared: &Shared, req: &Request<Incoming>) -> Response<Full<Bytes>> {
    let path = req.uri().path();
    let app_probe = match path.strip_prefix("/app-health/") {
        Some(name) => shared.app_probes.check(name).await,
        None => None,
    };
    let (status, content_type, body) = match path {
        _ if app_probe.is_some() => {
            let status = app_probe.unwrap_or(StatusCode::SERVICE_UNAVAILABLE);
            let text = if status == StatusCode::OK {
                "ok\n"
            } else {
                "app probe failed\n"
            };
            (status, "text/plain", text.to_owned())
        }
        "/healthz" => (StatusCode::OK, "text/plain", "ok\n".to_owned()),
        "/readyz" => {
            let (ready, detail) = shared.readiness();
            let status = if ready {
                StatusCode::OK
            } else {
                StatusCode::SERVICE_UNAVAILABLE
            };
            let head = if ready { "ready\n" } else { "not ready\n" };
            (status, "text/plain", format!("{head}{detail}"))
        }
        "/metrics" => {
            shared.refresh_gauges();
            let mut collectors: Vec<Box<dyn MetricsCollector>> =
                vec![Box::new(shared.metrics.clone())];
            collectors.extend(shared.role.as_ref().and_then(|role| role.collector()));
            if shared.settings.load().sessions.is_some() {
                collectors.push(shared.sessions.collector());
            }
            collectors.extend(shared.companions().iter().map(|c| c.collector()));
            (
                StatusCode::OK,
                exposition::CONTENT_TYPE,
                exposition::render(collectors),
            )
        }
        _ => (
            StatusCode::NOT_FOUND,
            "text/plain",
            "not found\n".to_owned(),
        ),
    };
    let mut response = Response::new(Full::new(Bytes::from(body)));
    *response.status_mut() = status;
    let headers = response.headers_mut();
    headers.insert(
        header::CONTENT_TYPE,
        header::HeaderValue::from_static(content_type),
    );
    headers.insert(
        header::CACHE_CONTROL,
        header::HeaderValue::from_static("no-store"),
    );
    response
}

/// Serves admin requests on one connection until it closes.
pub async fn serve_connection(shared: Arc<Shared>, stream: tokio::net::TcpStream) {
    let service = hyper::service::service_fn(move |req| {
        let shared = shared.clone();
        async move { Ok::<_, Infallible>(handle(&shared, &req).await) }
    });
    let conn = hyper::server::conn::http1::Builder::new()
        .timer(hyper_util::rt::TokioTimer::new())
        .header_read_timeout(std::time::Duration::from_secs(30))
        .serve_connection(hyper_util::rt::TokioIo::new(stream), service);
    let _ = conn.await;
}
