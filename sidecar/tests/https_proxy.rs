//! The sidecar's own HTTPS requests (external JWKS, upstream identity providers, the
//! revocation feed) through an HTTP CONNECT proxy, as clusters behind a corporate proxy need:
//! `HTTPS_PROXY` and `NO_PROXY` followed, TLS end to end with the destination (a proxy that
//! sends the connection elsewhere gets nothing past certificate verification), and the
//! binary picking the proxy up from its environment. All on loopback.

#![allow(clippy::unwrap_used)] // test code: a panic is the failure report

mod support;

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Empty};
use hyper_util::client::proxy::matcher::Matcher;
use serde_json::json;
use support::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// A CONNECT proxy on loopback that records each request line and tunnels to the address
/// asked for, or to `divert` when set (a proxy playing man in the middle).
struct ConnectProxy {
    url: String,
    seen: Arc<Mutex<Vec<String>>>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for ConnectProxy {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl ConnectProxy {
    async fn start(divert: Option<SocketAddr>) -> ConnectProxy {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        let seen: Arc<Mutex<Vec<String>>> = Arc::default();
        let log = seen.clone();
        let task = tokio::spawn(async move {
            while let Ok((mut client, _)) = listener.accept().await {
                let log = log.clone();
                tokio::spawn(async move {
                    let mut head = Vec::new();
                    let mut byte = [0u8; 1];
                    while !head.ends_with(b"\r\n\r\n") && head.len() < 8192 {
                        if client.read(&mut byte).await.unwrap_or(0) == 0 {
                            return;
                        }
                        head.push(byte[0]);
                    }
                    let head = String::from_utf8_lossy(&head).into_owned();
                    let line = head.lines().next().unwrap_or_default().to_owned();
                    log.lock().unwrap().push(line.clone());
                    let Some(target) = line
                        .strip_prefix("CONNECT ")
                        .and_then(|rest| rest.split(' ').next())
                    else {
                        let _ = client
                            .write_all(b"HTTP/1.1 405 Method Not Allowed\r\n\r\n")
                            .await;
                        return;
                    };
                    let to = divert.map_or_else(|| target.to_owned(), |a| a.to_string());
                    let Ok(mut server) = tokio::net::TcpStream::connect(to).await else {
                        let _ = client.write_all(b"HTTP/1.1 502 Bad Gateway\r\n\r\n").await;
                        return;
                    };
                    let _ = client
                        .write_all(b"HTTP/1.1 200 Connection established\r\n\r\n")
                        .await;
                    let _ = tokio::io::copy_bidirectional(&mut client, &mut server).await;
                });
            }
        });
        ConnectProxy { url, seen, task }
    }

    fn seen(&self) -> Vec<String> {
        self.seen.lock().unwrap().clone()
    }
}

async fn hello_server() -> TlsServer {
    TlsServer::start(Arc::new(|_target: String| {
        (200, "text/plain", "hello".to_owned())
    }))
    .await
}

/// GETs `url` with a client built for `ca` and `rules`: the body, or why not.
async fn get_through(ca: &str, rules: Matcher, url: &str) -> Result<String, String> {
    let connector = scopegate_fetch::connector_with(Some(ca), rules).unwrap();
    let client: hyper_util::client::legacy::Client<_, Empty<Bytes>> =
        hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
            .build(connector);
    let request = http::Request::get(url).body(Empty::new()).unwrap();
    let work = async {
        let response = client
            .request(request)
            .await
            .map_err(|e| format!("{e:?}"))?;
        let body = response
            .into_body()
            .collect()
            .await
            .map_err(|e| e.to_string())?;
        Ok(String::from_utf8_lossy(&body.to_bytes()).into_owned())
    };
    tokio::time::timeout(Duration::from_secs(10), work)
        .await
        .map_err(|_| "timed out".to_owned())?
}

#[tokio::test]
async fn requests_go_through_the_proxy_unless_no_proxy_names_the_host() {
    let server = hello_server().await;
    let proxy = ConnectProxy::start(None).await;
    let url = server.url("/x");
    let via = Matcher::builder().https(proxy.url.clone()).build();
    assert_eq!(
        get_through(&server.ca_pem, via, &url).await.as_deref(),
        Ok("hello")
    );
    assert_eq!(
        proxy.seen(),
        [format!("CONNECT {} HTTP/1.1", server.addr)],
        "one tunnel, to the destination by host and port only"
    );

    let bypass = Matcher::builder()
        .https(proxy.url.clone())
        .no("127.0.0.1")
        .build();
    assert_eq!(
        get_through(&server.ca_pem, bypass, &url).await.as_deref(),
        Ok("hello")
    );
    assert_eq!(proxy.seen().len(), 1, "NO_PROXY went direct");
    assert_eq!(server.count(), 2);
}

#[tokio::test]
async fn a_proxy_that_sends_the_connection_elsewhere_gets_no_answer_through() {
    let server = hello_server().await;
    // The impostor has a certificate for the same address, from a CA we do not trust.
    let impostor = hello_server().await;
    let proxy = ConnectProxy::start(Some(impostor.addr)).await;
    let via = Matcher::builder().https(proxy.url.clone()).build();
    let outcome = get_through(&server.ca_pem, via, &server.url("/x")).await;
    assert!(outcome.is_err(), "{outcome:?}");
    assert_eq!(proxy.seen().len(), 1, "the request did go to the proxy");
    assert_eq!(impostor.count(), 0, "no request reached the impostor");
}

#[tokio::test]
async fn the_binary_takes_the_proxy_from_its_environment() {
    let idp = TlsServer::start(Arc::new(|_target: String| {
        (200, "application/json", json!({"keys": []}).to_string())
    }))
    .await;
    let proxy = ConnectProxy::start(None).await;
    let upstream = Upstream::start(Duration::from_secs(0)).await;
    let mut config = config(upstream.addr.port(), json!({"keys": []}));
    config["verify"]["issuers"][0]["keys"] = json!({
        "type": "remote", "jwksUri": idp.url("/.well-known/jwks.json"),
        "algorithms": ["ES256"], "refreshIntervalSecs": 3600, "caBundlePem": idp.ca_pem
    });
    let dir = TempDir::new();
    let path = dir.join("config.json");
    std::fs::write(&path, config.to_string()).unwrap();
    let mut child = tokio::process::Command::new(env!("CARGO_BIN_EXE_scopegate-sidecar"))
        .arg("--config")
        .arg(&path)
        .args([
            "--bind",
            "127.0.0.1",
            "--admin-addr",
            "127.0.0.1:0",
            "--port",
            "0",
        ])
        .env("HTTPS_PROXY", &proxy.url)
        .env_remove("NO_PROXY")
        .env_remove("no_proxy")
        .env("RUST_LOG", "warn")
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    eventually(
        "the JWKS fetched through the proxy",
        Duration::from_secs(20),
        || async { (idp.count() > 0).then_some(()) },
    )
    .await;
    assert_eq!(proxy.seen()[0], format!("CONNECT {} HTTP/1.1", idp.addr));
    child.kill().await.unwrap();
}
