//! The admission webhooks: sidecar injection into pods ([`inject`]) and AuthPolicy
//! validation ([`validate`]), served over TLS by every replica from the certificate the
//! leader keeps in a Secret; decisions are pure.

pub mod cert;
pub mod inject;
pub mod validate;

use std::convert::Infallible;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Instant;

use arc_swap::ArcSwapOption;
use base64::Engine;
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::Bytes;
use hyper::service::service_fn;
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use k8s_openapi::api::core::v1::Pod;
use kube::ResourceExt;
use kube::runtime::reflector::{ObjectRef, Store};
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;
use scopegate_crds::v1alpha1::{AuthPolicy, OAuthClient};
use serde_json::{Value, json};

use crate::metrics::Metrics;
use inject::{Decision, InjectionSettings};

/// Path the API server posts pod AdmissionReviews to.
pub const MUTATE_PATH: &str = "/mutate-pods";
/// Path the API server posts AuthPolicy AdmissionReviews to.
pub const VALIDATE_PATH: &str = "/validate-authpolicies";
/// Longest a policy review waits for the compiler (the API server gives up after the
/// chart's `webhook.timeoutSeconds`, 3 s by default).
const VALIDATOR_WAIT: std::time::Duration = std::time::Duration::from_secs(1);
/// Most connections served at once; more wait to be accepted.
const MAX_CONNECTIONS: usize = 256;
/// Longest a client may take to send a request's headers.
const HEADER_READ_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(5);
/// Largest AdmissionReview body accepted.
const MAX_BODY: usize = 4 * 1024 * 1024;

/// The serving certificate, swapped in place when the Secret changes.
#[derive(Debug, Default)]
pub struct CertSlot(pub ArcSwapOption<CertifiedKey>);

impl ResolvesServerCert for CertSlot {
    fn resolve(&self, _hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        self.0.load_full()
    }
}

/// What the webhook handler needs.
pub struct WebhookState {
    /// Every AuthPolicy (a cache on every replica).
    pub policies: Store<AuthPolicy>,
    /// Every OAuthClient (a cache on every replica): whose issuer a policy's egress uses.
    pub clients: Store<OAuthClient>,
    /// How to build the sidecar.
    pub settings: InjectionSettings,
    /// Metrics.
    pub metrics: Arc<Metrics>,
    /// Set once `policies` has synced ([`track_sync`]); until then every pod is refused.
    pub synced: Arc<AtomicBool>,
}

/// The refusal while the policy cache has not synced: an empty cache would answer "no policy
/// selects this pod" and admit a selected pod without its sidecar.
pub const NOT_SYNCED: &str = "scopegate's injection webhook has not yet synced its AuthPolicy and OAuthClient caches with the API server, so it cannot tell whether an AuthPolicy selects this pod (or which issuer its egress token is for): refusing it rather than admitting it without its sidecar; the create succeeds once the caches have synced (retry, or let the pod's controller retry)";

impl WebhookState {
    /// Whether the AuthPolicy and OAuthClient caches hold the API server's full lists (they have
    /// synced once).
    pub fn synced(&self) -> bool {
        self.synced.load(Ordering::Acquire)
    }
}

/// Sets `synced` once `policies` has synced (run as a task; the store's readiness has room for
/// one waiter only, so everything else reads the flag).
pub async fn track_sync(
    policies: Store<AuthPolicy>,
    clients: Store<OAuthClient>,
    synced: Arc<AtomicBool>,
) {
    if policies.wait_until_ready().await.is_ok() && clients.wait_until_ready().await.is_ok() {
        synced.store(true, Ordering::Release);
        tracing::info!("webhook AuthPolicy and OAuthClient caches synced");
    }
}

/// The URLs of the issuers of `policy`'s egress and sessions clients: the audiences of the
/// ServiceAccount tokens the sidecar presents there. Each None without the feature, or while
/// its client does not resolve.
fn token_audiences(state: &WebhookState, policy: &AuthPolicy) -> inject::TokenAudiences {
    let Some(namespace) = policy.namespace() else {
        return inject::TokenAudiences::default();
    };
    let spec = &policy.spec;
    inject::TokenAudiences {
        egress: (spec.egress.as_ref())
            .and_then(|e| client_issuer_url(state, &namespace, &e.client_ref.name)),
        sessions: (spec.sessions.as_ref())
            .and_then(|s| client_issuer_url(state, &namespace, &s.client_ref.name)),
    }
}

/// The URL of the issuer of OAuthClient `name` of `namespace` (never another namespace's),
/// when its issuer registers it as a ServiceAccount client (as the render checks).
fn client_issuer_url(state: &WebhookState, namespace: &str, name: &str) -> Option<String> {
    let client = (state.clients).get(&ObjectRef::new(name).within(namespace))?;
    let (issuer_namespace, issuer_name) = crate::client_checks::issuer_key(&client);
    let issuer = (state.policies).get(&ObjectRef::new(&issuer_name).within(&issuer_namespace))?;
    let registered = !client.spec.service_accounts.is_empty()
        && !(crate::client_checks::validate(&client, Some(&issuer)).iter())
            .any(|p| p.blocks_registration());
    registered
        .then(|| issuer.spec.issuer.self_.as_ref().map(|own| own.url.clone()))
        .flatten()
}

/// The request of an AdmissionReview body, and its uid.
pub(crate) fn admission_request(body: &[u8]) -> Result<(Value, String), String> {
    let mut review: Value =
        serde_json::from_slice(body).map_err(|e| format!("not an AdmissionReview: {e}"))?;
    let request = review
        .get_mut("request")
        .map(Value::take)
        .ok_or("AdmissionReview without request")?;
    let uid = request
        .get("uid")
        .and_then(Value::as_str)
        .ok_or("request without uid")?
        .to_owned();
    Ok((request, uid))
}

/// The AdmissionReview that carries `response`.
pub(crate) fn admission_answer(response: Value) -> Value {
    json!({"apiVersion": "admission.k8s.io/v1", "kind": "AdmissionReview", "response": response})
}

/// Answers one AdmissionReview (pure apart from the policy cache read).
pub fn review(state: &WebhookState, body: &[u8]) -> Result<Value, String> {
    let (request, uid) = admission_request(body)?;
    let pod: Pod = serde_json::from_value(request.get("object").cloned().unwrap_or(Value::Null))
        .map_err(|e| format!("request object is not a Pod: {e}"))?;
    let namespace = request
        .get("namespace")
        .and_then(Value::as_str)
        .map(str::to_owned)
        .or_else(|| pod.namespace())
        .unwrap_or_default();
    if !state.synced() {
        state
            .metrics
            .webhook_reviews
            .get_or_create(&crate::metrics::OutcomeLabels {
                outcome: "not_synced",
            })
            .inc();
        let response = json!({
            "uid": uid,
            "allowed": false,
            "status": {"code": 503, "reason": "ServiceUnavailable", "message": NOT_SYNCED},
        });
        return Ok(admission_answer(response));
    }
    let policies: Vec<Arc<AuthPolicy>> = state
        .policies
        .state()
        .into_iter()
        .filter(|p| p.namespace().as_deref() == Some(namespace.as_str()))
        .collect();
    let refs: Vec<&AuthPolicy> = policies.iter().map(AsRef::as_ref).collect();
    let audiences = |policy: &AuthPolicy| token_audiences(state, policy);
    let decision = inject::decide(&pod, &refs, &state.settings, &audiences);
    let response = match &decision {
        Decision::Unchanged => json!({"uid": uid, "allowed": true}),
        Decision::Patch(ops) => {
            let patch = serde_json::to_vec(ops).map_err(|e| e.to_string())?;
            json!({
                "uid": uid,
                "allowed": true,
                "patchType": "JSONPatch",
                "patch": base64::engine::general_purpose::STANDARD.encode(patch),
            })
        }
        Decision::Deny(message) => json!({
            "uid": uid,
            "allowed": false,
            "status": {"code": 403, "reason": "Forbidden", "message": message},
        }),
    };
    let outcome = match decision {
        Decision::Unchanged => "unchanged",
        Decision::Patch(_) => "injected",
        Decision::Deny(_) => "denied",
    };
    state
        .metrics
        .webhook_reviews
        .get_or_create(&crate::metrics::OutcomeLabels { outcome })
        .inc();
    Ok(admission_answer(response))
}

fn respond(status: StatusCode, body: Vec<u8>) -> Response<Full<Bytes>> {
    let mut response = Response::new(Full::new(Bytes::from(body)));
    *response.status_mut() = status;
    response.headers_mut().insert(
        hyper::header::CONTENT_TYPE,
        hyper::header::HeaderValue::from_static("application/json"),
    );
    response
}

async fn handle(
    state: Arc<WebhookState>,
    request: Request<hyper::body::Incoming>,
) -> Response<Full<Bytes>> {
    let path = request.uri().path();
    let validating = path == VALIDATE_PATH;
    if request.method() != Method::POST || !(validating || path == MUTATE_PATH) {
        return respond(StatusCode::NOT_FOUND, b"{}".to_vec());
    }
    let started = Instant::now();
    let body = match Limited::new(request.into_body(), MAX_BODY).collect().await {
        Ok(body) => body.to_bytes(),
        Err(_) => return respond(StatusCode::PAYLOAD_TOO_LARGE, b"{}".to_vec()),
    };
    let answered = if validating {
        validate_off_the_runtime(&state, body).await
    } else {
        review(&state, &body)
    };
    let response = match answered {
        Ok(answer) => respond(
            StatusCode::OK,
            serde_json::to_vec(&answer).unwrap_or_default(),
        ),
        Err(message) => {
            tracing::warn!(%message, "bad admission request");
            respond(
                StatusCode::BAD_REQUEST,
                serde_json::to_vec(&json!({"error": message})).unwrap_or_default(),
            )
        }
    };
    state
        .metrics
        .webhook_duration
        .observe(started.elapsed().as_secs_f64());
    response
}

/// Compiling conditions is CPU work a tenant controls: it runs on the blocking pool, one
/// review at a time, so that pod reviews (injection) are never queued behind it; a review
/// that waits longer than [`VALIDATOR_WAIT`] for its turn is refused (retry), and one whose
/// conditions did not change needs no turn at all.
async fn validate_off_the_runtime(state: &Arc<WebhookState>, body: Bytes) -> Result<Value, String> {
    static ONE_AT_A_TIME: tokio::sync::Semaphore = tokio::sync::Semaphore::const_new(1);
    let review = validate::PolicyReview::read(&body)?;
    let (answer, outcome) = if !review.must_compile() {
        review.allow()
    } else {
        match tokio::time::timeout(VALIDATOR_WAIT, ONE_AT_A_TIME.acquire()).await {
            Ok(Ok(_permit)) => tokio::task::spawn_blocking(move || review.judge())
                .await
                .map_err(|e| format!("the validation task failed: {e}"))?,
            _ => review.busy(),
        }
    };
    state
        .metrics
        .webhook_reviews
        .get_or_create(&crate::metrics::OutcomeLabels { outcome })
        .inc();
    Ok(answer)
}

/// Serves the webhook over TLS on `listener` with certificates from `certs`.
pub async fn serve(
    listener: tokio::net::TcpListener,
    certs: Arc<CertSlot>,
    state: Arc<WebhookState>,
) {
    let Ok(builder) = rustls::ServerConfig::builder_with_provider(Arc::new(
        rustls::crypto::aws_lc_rs::default_provider(),
    ))
    .with_safe_default_protocol_versions() else {
        tracing::error!("no TLS protocol versions available");
        return;
    };
    let mut config = builder.with_no_client_auth().with_cert_resolver(certs);
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(config));
    let connections = Arc::new(tokio::sync::Semaphore::new(MAX_CONNECTIONS));
    loop {
        let Ok(permit) = connections.clone().acquire_owned().await else {
            return;
        };
        let Ok((stream, _)) = listener.accept().await else {
            continue;
        };
        let (acceptor, state) = (acceptor.clone(), state.clone());
        tokio::spawn(async move {
            let _permit = permit;
            let handshake = tokio::time::timeout(HEADER_READ_TIMEOUT, acceptor.accept(stream));
            let Ok(Ok(tls)) = handshake.await else {
                return;
            };
            let service = service_fn(move |request| {
                let state = state.clone();
                async move { Ok::<_, Infallible>(handle(state, request).await) }
            });
            let _ = hyper::server::conn::http1::Builder::new()
                .timer(hyper_util::rt::TokioTimer::new())
                .header_read_timeout(HEADER_READ_TIMEOUT)
                .keep_alive(true)
                .serve_connection(TokioIo::new(tls), service)
                .await;
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use kube::runtime::reflector;
    use kube::runtime::watcher::Event;

    fn state(synced: bool) -> WebhookState {
        let (policies, mut writer) = reflector::store::<AuthPolicy>();
        let (clients, mut clients_writer) = reflector::store::<OAuthClient>();
        let flag = Arc::new(AtomicBool::new(false));
        if synced {
            writer.apply_watcher_event(&Event::Init);
            writer.apply_watcher_event(&Event::InitDone);
            clients_writer.apply_watcher_event(&Event::Init);
            clients_writer.apply_watcher_event(&Event::InitDone);
            futures::executor::block_on(track_sync(
                policies.clone(),
                clients.clone(),
                flag.clone(),
            ));
        }
        // The writers are dropped: the caches keep what they have.
        WebhookState {
            synced: flag,
            policies,
            clients,
            settings: inject::InjectionSettings {
                image: "scopegate/sidecar:test".into(),
                pull_policy: "IfNotPresent".into(),
                native_sidecar: true,
                cpu_request: "10m".into(),
                memory_request: "32Mi".into(),
                memory_limit: "128Mi".into(),
                https_proxy: String::new(),
                no_proxy: String::new(),
            },
            metrics: Arc::new(Metrics::default()),
        }
    }

    fn review_of_a_pod() -> Vec<u8> {
        serde_json::to_vec(&json!({
            "apiVersion": "admission.k8s.io/v1",
            "kind": "AdmissionReview",
            "request": {
                "uid": "u1",
                "namespace": "shop",
                "object": {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "p", "labels": {"app": "orders"}},
                           "spec": {"containers": [{"name": "app", "image": "app"}]}},
            },
        }))
        .unwrap()
    }

    #[test]
    fn before_the_policy_cache_synced_every_pod_is_refused_with_a_reason() {
        let unsynced = state(false);
        assert!(!unsynced.synced());
        let answer = review(&unsynced, &review_of_a_pod()).unwrap();
        let response = &answer["response"];
        assert_eq!(response["uid"], "u1");
        assert_eq!(response["allowed"], false);
        assert_eq!(response["status"]["code"], 503);
        assert_eq!(response["status"]["message"], NOT_SYNCED);
        assert!(
            unsynced
                .metrics
                .render()
                .contains(r#"outcome="not_synced""#)
        );

        let synced = state(true);
        assert!(synced.synced());
        let answer = review(&synced, &review_of_a_pod()).unwrap();
        assert_eq!(answer["response"]["allowed"], true, "{answer}");
    }
}
