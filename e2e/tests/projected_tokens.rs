//! Projected ServiceAccount tokens as the kubelet stand-in plays them: a pod's projected
//! `serviceAccountToken` volume holds a token the real API server issued through the
//! TokenRequest API (its audience, its ServiceAccount, bound to the pod, signed with a key of
//! the API server's JWKS), read by the container through its mount, and replaced on schedule.
//! A pod whose ServiceAccount does not exist does not start, and says which one it waited for.

use std::net::SocketAddr;
use std::time::Duration;

use anyhow::{Context as _, ensure};
use k8s_openapi::api::core::v1::{Pod, ServiceAccount};
use kube::Client;
use kube::api::{Api, PostParams};
use scopegate_core::jose::jws;
use scopegate_core::jose::keys::{Alg, KeyMap, load_jwks};
use scopegate_e2e::http::request;
use scopegate_e2e::kubelet::{Images, PodNetwork, RunningPod, StartOptions};
use scopegate_e2e::setup::logs_dir;
use scopegate_e2e::{ControlPlane, TestNamespace, eventually};
use serde_json::{Value, json};

const AUDIENCE: &str = "https://issuer.test";
const TOKENS: &str = "/var/run/secrets/tokens";
const PORT: u16 = 8080;

/// The program of image `e2e/files`: serves a directory's files over HTTP (args: port,
/// directory). Not `python3 -m http.server`, which looks up the host's name before it listens:
/// with no DNS server in the pod's network, that takes 10 s.
const FILE_SERVER: &str = "import functools, http.server, socketserver, sys\n\
    handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=sys.argv[2])\n\
    socketserver.TCPServer(('', int(sys.argv[1])), handler).serve_forever()";

fn images() -> Images {
    let command = ["python3", "-c", FILE_SERVER].map(str::to_owned);
    Images::from([("e2e/files".to_owned(), command.to_vec())])
}

/// A pod of ServiceAccount `account` that serves its projected token volume over HTTP.
fn token_pod(name: &str, account: &str) -> Pod {
    serde_json::from_value(json!({
        "apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": name},
        "spec": {
            "serviceAccountName": account,
            "containers": [{
                "name": "files", "image": "e2e/files",
                "args": [PORT.to_string(), TOKENS],
                "volumeMounts": [{"name": "tokens", "mountPath": TOKENS, "readOnly": true}]
            }],
            "volumes": [{"name": "tokens", "projected": {"sources": [
                {"serviceAccountToken": {
                    "audience": AUDIENCE, "expirationSeconds": 600, "path": "token"
                }}
            ]}}]
        }
    }))
    .expect("pod")
}

async fn create_account(client: &Client, namespace: &str, name: &str) {
    let account: ServiceAccount =
        serde_json::from_value(json!({"metadata": {"name": name}})).expect("account");
    Api::<ServiceAccount>::namespaced(client.clone(), namespace)
        .create(&PostParams::default(), &account)
        .await
        .expect("ServiceAccount created");
}

async fn create_pod(client: &Client, namespace: &str, pod: &Pod) -> Pod {
    Api::<Pod>::namespaced(client.clone(), namespace)
        .create(&PostParams::default(), pod)
        .await
        .expect("pod created")
}

/// The token as the pod's container reads it through its mount.
async fn served_token(pod: &RunningPod) -> String {
    let addr = SocketAddr::from((pod.ip, PORT));
    eventually("the pod serving its token", || async move {
        let response = request(addr, "GET", "/token", &[], "")?;
        ensure!(response.status == 200, "GET /token: {}", response.status);
        Ok(response.body)
    })
    .await
    .expect("the token")
}

/// The API server's service-account signing keys, from /openid/v1/jwks.
async fn api_server_keys(client: &Client) -> KeyMap {
    let request = http::Request::get("/openid/v1/jwks")
        .body(Vec::new())
        .expect("request");
    let body = client.request_text(request).await.expect("the JWKS");
    let (keys, skipped) = load_jwks(body.as_bytes(), &[Alg::Rs256]).expect("a JWKS");
    assert!(!keys.is_empty(), "no usable key in {body} ({skipped:?})");
    keys
}

/// The claims of `token`, after checking its signature with `keys`.
fn verified_claims(token: &str, keys: &KeyMap) -> Value {
    let jws = jws::parse(token).expect("a compact JWS");
    jws.verify_with(keys)
        .expect("signed with a key of the API server's JWKS");
    serde_json::from_slice(jws.payload()).expect("JSON claims")
}

#[tokio::test]
async fn a_pod_reads_its_projected_token_signed_by_the_cluster_and_rotated_on_schedule() {
    let plane = ControlPlane::from_env().expect("control plane");
    let client = plane.client().await.expect("client");
    let ns = TestNamespace::create(&client, "projected-tokens")
        .await
        .expect("namespace");
    create_account(&client, &ns.name, "reader").await;
    let steady_pod = create_pod(&client, &ns.name, &token_pod("token-steady", "reader")).await;
    let rotating_pod = create_pod(&client, &ns.name, &token_pod("token-rotating", "reader")).await;
    let network = PodNetwork::create().expect("pod network (needs root)");
    let logs = logs_dir();
    let images = images();
    let steady = RunningPod::start(&client, &network, &steady_pod, &images, &[], &logs)
        .await
        .expect("the pod on the kubelet's schedule runs");
    let options = StartOptions {
        token_refresh: Some(Duration::from_secs(2)),
    };
    let rotating = RunningPod::start_with(
        &client,
        &network,
        &rotating_pod,
        &images,
        &[],
        &logs,
        &options,
    )
    .await
    .expect("the pod refreshing every 2 s runs");
    let keys = api_server_keys(&client).await;

    let first = served_token(&rotating).await;
    let claims = verified_claims(&first, &keys);
    assert_eq!(claims["aud"], json!([AUDIENCE]), "{claims}");
    assert_eq!(
        claims["sub"],
        format!("system:serviceaccount:{}:reader", ns.name),
        "{claims}"
    );
    assert_eq!(claims["kubernetes.io"]["namespace"], ns.name, "{claims}");
    assert_eq!(
        claims["kubernetes.io"]["pod"]["name"], "token-rotating",
        "bound to the pod: {claims}"
    );
    assert_eq!(
        claims["kubernetes.io"]["pod"]["uid"],
        json!(rotating_pod.metadata.uid),
        "{claims}"
    );
    let lifetime = |claims: &Value| claims["exp"].as_i64().zip(claims["iat"].as_i64());
    assert_eq!(
        lifetime(&claims).map(|(exp, iat)| exp - iat),
        Some(600),
        "{claims}"
    );
    let steady_first = served_token(&steady).await;
    let steady_claims = verified_claims(&steady_first, &keys);
    assert_eq!(
        steady_claims["kubernetes.io"]["pod"]["name"], "token-steady",
        "{steady_claims}"
    );

    // The knob: a new token once the last is 2 s old, through the same mount.
    let started = std::time::Instant::now();
    let second = eventually("a refreshed token", || {
        let (rotating, first) = (&rotating, &first);
        async move {
            let token = served_token(rotating).await;
            ensure!(&token != first, "still the first token");
            Ok(token)
        }
    })
    .await
    .unwrap();
    let waited = started.elapsed();
    assert!(
        waited < Duration::from_secs(10),
        "refreshed after {waited:?}"
    );
    let renewed = verified_claims(&second, &keys);
    assert_ne!(renewed["jti"], claims["jti"], "a new token: {renewed}");
    assert!(
        renewed["iat"].as_i64() > claims["iat"].as_i64(),
        "issued later: {renewed} after {claims}"
    );
    assert_eq!(renewed["aud"], json!([AUDIENCE]), "{renewed}");
    assert_eq!(lifetime(&renewed).map(|(exp, iat)| exp - iat), Some(600));
    // Without the knob, a 600 s token is kept until 480 s: unchanged meanwhile. (Compared,
    // never printed: a failing test shows no token.)
    assert!(
        served_token(&steady).await == steady_first,
        "the kubelet's schedule keeps a 600 s token for 480 s: it was replaced after {:?}",
        started.elapsed()
    );

    drop(rotating);
    drop(steady);
    drop(network);
    ns.delete().await.context("cleanup").unwrap();
}

#[tokio::test]
async fn a_pod_of_a_missing_service_account_does_not_start_and_names_it() {
    let plane = ControlPlane::from_env().expect("control plane");
    let client = plane.client().await.expect("client");
    let ns = TestNamespace::create(&client, "projected-ghost")
        .await
        .expect("namespace");
    let pod = create_pod(&client, &ns.name, &token_pod("token-ghost", "ghost")).await;
    let network = PodNetwork::create().expect("pod network (needs root)");
    let logs = logs_dir();
    let images = images();

    let Err(err) = RunningPod::start(&client, &network, &pod, &images, &[], &logs).await else {
        panic!("a pod whose ServiceAccount does not exist started");
    };
    let message = format!("{err:#}");
    assert!(
        message.contains(&format!("ServiceAccount {}/ghost", ns.name))
            && message.contains(r#"serviceaccounts "ghost" not found"#),
        "{message}"
    );
    let log = std::fs::read_to_string(logs.join("token-ghost-volumes.log")).unwrap_or_default();
    assert!(
        log.contains(r#"serviceaccounts "ghost" not found"#),
        "the volume's error is logged: {log}"
    );

    // A kubelet keeps trying: the same pod starts once its ServiceAccount appears.
    let appear = async {
        tokio::time::sleep(Duration::from_secs(2)).await;
        create_account(&client, &ns.name, "ghost").await;
    };
    let (running, ()) = tokio::join!(
        RunningPod::start(&client, &network, &pod, &images, &[], &logs),
        appear
    );
    let running = running.expect("the pod starts once its ServiceAccount exists");
    let claims = verified_claims(
        &served_token(&running).await,
        &api_server_keys(&client).await,
    );
    assert_eq!(
        claims["sub"],
        format!("system:serviceaccount:{}:ghost", ns.name),
        "{claims}"
    );
    let log = std::fs::read_to_string(logs.join("token-ghost-volumes.log")).unwrap_or_default();
    assert!(
        log.contains("synced again"),
        "the recovery is logged: {log}"
    );

    drop(running);
    drop(network);
    ns.delete().await.context("cleanup").unwrap();
}
