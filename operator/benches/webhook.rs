//! The cost of answering one AdmissionReview (parse, decide, build the JSON patch, encode),
//! without the network: what the webhook spends per pod on top of TLS and HTTP.

use std::sync::Arc;
use std::sync::atomic::AtomicBool;

use criterion::{Criterion, criterion_group, criterion_main};
use kube::runtime::reflector;
use kube::runtime::watcher;
use scopegate_crds::v1alpha1::AuthPolicy;
use scopegate_operator::metrics::Metrics;
use scopegate_operator::webhook::inject::InjectionSettings;
use scopegate_operator::webhook::{WebhookState, review};

fn state() -> WebhookState {
    let (reader, mut writer) = reflector::store::<AuthPolicy>();
    for (name, app) in [
        ("orders", "orders"),
        ("billing", "billing"),
        ("auth", "auth"),
    ] {
        let policy: AuthPolicy = serde_json::from_value(serde_json::json!({
            "apiVersion": "scopegate.dev/v1alpha1", "kind": "AuthPolicy",
            "metadata": {"name": name, "namespace": "shop"},
            "spec": {"selector": {"matchLabels": {"app": app}}, "issuer": {"policyRef": {"name": "auth"}},
                     "audiences": ["x"], "upstream": {"port": 8080}}
        }))
        .expect("policy");
        writer.apply_watcher_event(&watcher::Event::Apply(policy));
    }
    WebhookState {
        policies: reader,
        clients: reflector::store().0,
        settings: InjectionSettings {
            image: "scopegate/sidecar:0.1.0".into(),
            pull_policy: "IfNotPresent".into(),
            native_sidecar: true,
            cpu_request: "10m".into(),
            memory_request: "32Mi".into(),
            memory_limit: "128Mi".into(),
            https_proxy: String::new(),
            no_proxy: String::new(),
        },
        metrics: Arc::new(Metrics::default()),
        // A synced cache: the steady state being measured.
        synced: Arc::new(AtomicBool::new(true)),
    }
}

fn bench(c: &mut Criterion) {
    let state = state();
    let review_for = |app: &str| {
        serde_json::to_vec(&serde_json::json!({
            "apiVersion": "admission.k8s.io/v1", "kind": "AdmissionReview",
            "request": {"uid": "0b7e2c7c-1111-4b5e-9f3a-5a7d2c0e9e11", "namespace": "shop", "operation": "CREATE",
                "object": {"apiVersion": "v1", "kind": "Pod",
                    "metadata": {"name": "p", "namespace": "shop", "labels": {"app": app}},
                    "spec": {"containers": [{"name": "app", "image": "example/app",
                        "readinessProbe": {"httpGet": {"path": "/ready", "port": 8080}}}]}}}
        }))
        .expect("review")
    };
    let inject = review_for("orders");
    let untouched = review_for("other");
    c.bench_function("review_injects_a_selected_pod", |b| {
        b.iter(|| review(&state, &inject))
    });
    c.bench_function("review_admits_an_unselected_pod", |b| {
        b.iter(|| review(&state, &untouched))
    });
}

criterion_group!(benches, bench);
criterion_main!(benches);
