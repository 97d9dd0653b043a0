//! An OAuthClient with no secret: it names a ServiceAccount, the operator reads the cluster's
//! service-account issuer through the API server (the default discovery binding is gone, so
//! only the chart's rule lets it) and renders its keys into the issuer, and a running issuer
//! pod accepts the API server's own TokenRequest tokens as client assertions (RFC 7523) — and
//! nothing else: another ServiceAccount, the same name in another namespace, the API server's
//! audience, two audiences, an expired or legacy-shaped token signed with the cluster's real
//! key, or a token of another cluster.

use std::net::SocketAddr;
use std::path::Path;

use anyhow::{Context as _, ensure};
use aws_lc_rs::rand::SystemRandom;
use aws_lc_rs::signature::{RSA_PKCS1_SHA256, RsaKeyPair};
use base64::Engine as _;
use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use k8s_openapi::api::authentication::v1::{TokenRequest, TokenRequestSpec};
use k8s_openapi::api::core::v1::{Pod, Secret, ServiceAccount};
use kube::Client;
use kube::api::{Api, PostParams};
use scopegate_crds::v1alpha1::{AuthPolicy, OAuthClient};
use scopegate_e2e::endpoint::IssuerEndpoint;
use scopegate_e2e::kubelet::{Images, PodNetwork, RunningPod, example_app, sidecar_image};
use scopegate_e2e::ready::sidecar_ready;
use scopegate_e2e::setup::logs_dir;
use scopegate_e2e::{
    ControlPlane, TestNamespace, apply_yaml, condition, config_map_text, eventually, manifests,
    secret_text,
};
use serde_json::{Value, json};

/// A ServiceAccount named `name` in `namespace`.
async fn service_account(client: &Client, namespace: &str, name: &str) {
    let account: ServiceAccount =
        serde_json::from_value(json!({"metadata": {"name": name}})).expect("a test fixture");
    Api::<ServiceAccount>::namespaced(client.clone(), namespace)
        .create(&PostParams::default(), &account)
        .await
        .unwrap_or_else(|e| panic!("ServiceAccount {namespace}/{name}: {e}"));
}

/// A token of ServiceAccount `namespace/name` from the TokenRequest API, for `audiences`
/// (none: the API server's own).
async fn token_request(client: &Client, namespace: &str, name: &str, audiences: &[&str]) -> String {
    let request = TokenRequest {
        spec: Some(TokenRequestSpec {
            audiences: (!audiences.is_empty())
                .then(|| audiences.iter().map(|a| (*a).to_owned()).collect()),
            expiration_seconds: Some(600),
            ..TokenRequestSpec::default()
        }),
        ..TokenRequest::default()
    };
    let answer = Api::<ServiceAccount>::namespaced(client.clone(), namespace)
        .create_token_request(name, &PostParams::default(), &request)
        .await
        .unwrap_or_else(|e| panic!("TokenRequest for {namespace}/{name}: {e}"));
    answer.status.and_then(|s| s.token).expect("a token")
}

/// GET `path` of the API server through the admin client, as JSON.
async fn api_server_json(client: &Client, path: &str) -> Value {
    let request = http::Request::get(path)
        .body(Vec::new())
        .expect("a test fixture");
    let text = (client.request_text(request).await).expect("the API server answers");
    serde_json::from_str(&text).expect("a test fixture")
}

/// A JWT signed RS256 by `key` (PKCS#8 DER) with `kid`.
fn rs256(key: &[u8], kid: &str, claims: &Value) -> String {
    let header = json!({"alg": "RS256", "kid": kid});
    let input = format!(
        "{}.{}",
        URL_SAFE_NO_PAD.encode(header.to_string()),
        URL_SAFE_NO_PAD.encode(claims.to_string())
    );
    let pair = RsaKeyPair::from_pkcs8(key).expect("an RSA key");
    let mut signature = vec![0; pair.public_modulus_len()];
    pair.sign(
        &RSA_PKCS1_SHA256,
        &SystemRandom::new(),
        input.as_bytes(),
        &mut signature,
    )
    .expect("a test fixture");
    format!("{input}.{}", URL_SAFE_NO_PAD.encode(signature))
}

/// The DER of a PEM file's one block.
fn pem_der(path: &Path) -> Vec<u8> {
    let pem = std::fs::read_to_string(path).expect("a test fixture");
    let body: String = pem.lines().filter(|l| !l.starts_with("-----")).collect();
    STANDARD.decode(body).expect("a test fixture")
}

/// client_credentials at `issuer` with `assertion`, and `client_id` when given.
fn with_assertion(
    issuer: &IssuerEndpoint,
    assertion: &str,
    client_id: Option<&str>,
) -> (u16, Value) {
    let mut form = vec![
        ("grant_type", "client_credentials"),
        ("scope", "read"),
        (
            "client_assertion_type",
            "urn:ietf:params:oauth:client-assertion-type:jwt-bearer",
        ),
        ("client_assertion", assertion),
    ];
    form.extend(client_id.map(|id| ("client_id", id)));
    issuer.token(&form)
}

fn assert_refused(answer: (u16, Value), case: &str) {
    assert_eq!(answer.0, 400, "{case}: {}", answer.1);
    assert_eq!(answer.1["error"], "invalid_client", "{case}: {}", answer.1);
}

/// The claims of a JWT, unverified (to read what the API server or the issuer put there).
fn claims_of(jwt: &str) -> Value {
    let payload = jwt.split('.').nth(1).expect("a JWT");
    serde_json::from_slice(&URL_SAFE_NO_PAD.decode(payload).expect("a test fixture"))
        .expect("a test fixture")
}

#[tokio::test]
async fn a_service_account_token_is_the_clients_only_credential() {
    let plane = ControlPlane::from_env().expect("control plane");
    let client = plane.client().await.expect("client");
    let ns = TestNamespace::for_injection(&client, "sa-client").await;
    let n = ns.name.as_str();
    let elsewhere = TestNamespace::create(&client, "sa-elsewhere")
        .await
        .unwrap();
    for (namespace, name) in [(n, "billing"), (n, "reports"), (&elsewhere.name, "billing")] {
        service_account(&client, namespace, name).await;
    }
    let issuer_yaml = manifests::issuer(n, "auth").scopes("read: Read").yaml();
    apply_yaml::<AuthPolicy>(&client, n, &issuer_yaml)
        .await
        .unwrap();
    let billing = manifests::oauth_client("billing", "name: auth", "serviceAccounts: [billing]");
    apply_yaml::<OAuthClient>(&client, n, &billing)
        .await
        .unwrap();

    // The operator's read equals the API server's own answer.
    let discovery = api_server_json(&client, "/.well-known/openid-configuration").await;
    let cluster_issuer = discovery["issuer"].as_str().unwrap().to_owned();
    let jwks = api_server_json(&client, "/openid/v1/jwks").await;
    let kids: Vec<Value> = (jwks["keys"].as_array().unwrap().iter())
        .map(|k| k["kid"].clone())
        .collect();
    let policies: Api<AuthPolicy> = Api::namespaced(client.clone(), n);
    eventually("the cluster's keys in the issuer's status", || async {
        let status = serde_json::to_value(policies.get("auth").await?.status)?;
        let read = &status["serviceAccountIssuer"];
        ensure!(read["keyIds"] == json!(kids), "{status}");
        ensure!(read["issuer"] == json!(cluster_issuer), "{status}");
        Ok(())
    })
    .await
    .unwrap();
    let config = config_map_text(&client, n, "auth-sidecar", "config.json")
        .await
        .unwrap()
        .unwrap();
    let config: Value = serde_json::from_str(&config).unwrap();
    assert_eq!(config["apiVersion"], "sidecar.scopegate.dev/v2");
    let rendered = &config["issuer"]["serviceAccountIssuer"];
    assert_eq!(rendered["issuer"], json!(cluster_issuer), "{rendered}");
    assert_eq!(rendered["jwks"]["keys"][0]["kid"], kids[0], "{rendered}");

    // No secret anywhere: none generated, none registered; status says how it authenticates.
    let clients: Api<OAuthClient> = Api::namespaced(client.clone(), n);
    let status = eventually("billing registered", || async {
        let status = clients.get("billing").await?.status.context("no status")?;
        ensure!(
            condition(&status.conditions, "Ready").is_some_and(|c| c.status == "True"),
            "{status:?}"
        );
        Ok(status)
    })
    .await
    .unwrap();
    assert_eq!(status.secret_name, None);
    assert_eq!(
        status.authentication.as_deref(),
        Some(
            format!(
                "ServiceAccount token of {n}/billing (audience https://auth.{n}.svc), no secret"
            )
            .as_str()
        )
    );
    let secrets: Api<Secret> = Api::namespaced(client.clone(), n);
    assert!(
        secrets
            .get_opt("billing-oauth-client")
            .await
            .unwrap()
            .is_none()
    );
    let registry = secret_text(&client, n, "auth-clients", "clients.json")
        .await
        .unwrap()
        .unwrap();
    let registry: Value = serde_json::from_str(&registry).unwrap();
    let entry = &registry["clients"][0];
    assert_eq!(entry["authMethod"], "service_account_jwt", "{registry}");
    assert_eq!(
        entry["serviceAccounts"],
        json!([format!("system:serviceaccount:{n}:billing")])
    );
    assert_eq!(entry["secrets"], json!([]), "{registry}");

    // The issuer pod, run as a kubelet would.
    let pod: Pod = serde_yaml_ng::from_str(
        "metadata: {name: auth-0, labels: {app: auth}}\nspec:\n  containers:\n    - name: app\n      image: example/auth\n      readinessProbe: {httpGet: {path: /ready, port: 8080}}\n",
    )
    .unwrap();
    let pod = Api::<Pod>::namespaced(client.clone(), n)
        .create(&PostParams::default(), &pod)
        .await
        .unwrap();
    let network = PodNetwork::create().expect("pod network (needs root)");
    let images = Images::from([
        sidecar_image().expect("the sidecar image"),
        example_app("example/auth", "auth.py"),
    ]);
    let logs = logs_dir();
    let running = RunningPod::start(&client, &network, &pod, &images, &[], &logs)
        .await
        .expect("the issuer pod runs");
    sidecar_ready(SocketAddr::from((running.ip, 15090)))
        .await
        .unwrap();
    let issuer = IssuerEndpoint::new(
        &client,
        n,
        "auth",
        SocketAddr::from((running.ip, 15080)),
        &logs.join(n),
    )
    .await
    .unwrap();
    let client_id = format!("{n}.billing");

    // A real projected-style token of billing, audience the issuer's URL: a token, with or
    // without client_id, for the client (not the ServiceAccount).
    let own = token_request(&client, n, "billing", &[&issuer.url]).await;
    for named in [None, Some(client_id.as_str())] {
        let (status, body) = with_assertion(&issuer, &own, named);
        assert_eq!(status, 200, "{body}");
        let token = claims_of(body["access_token"].as_str().unwrap());
        assert_eq!(token["client_id"], json!(client_id), "{token}");
        assert_eq!(token["sub"], json!(client_id), "{token}");
        assert_eq!(token["scope"], "read", "{token}");
    }
    // The same token names no other client, and is no secret.
    assert_refused(
        with_assertion(&issuer, &own, Some(&format!("{n}.reports"))),
        "another client_id",
    );

    // Real tokens the API server issued, for the wrong one or the wrong audience.
    let reports = token_request(&client, n, "reports", &[&issuer.url]).await;
    assert_refused(
        with_assertion(&issuer, &reports, None),
        "another ServiceAccount",
    );
    let namesake = token_request(&client, &elsewhere.name, "billing", &[&issuer.url]).await;
    assert_refused(
        with_assertion(&issuer, &namesake, None),
        "billing of another namespace",
    );
    assert_refused(
        with_assertion(&issuer, &namesake, Some(&client_id)),
        "billing of another namespace, naming the client",
    );
    let for_api_server = token_request(&client, n, "billing", &[]).await;
    assert_eq!(claims_of(&for_api_server)["aud"], json!([cluster_issuer]));
    assert_refused(
        with_assertion(&issuer, &for_api_server, None),
        "the API server's audience",
    );
    let both = token_request(
        &client,
        n,
        "billing",
        &[&issuer.url, "https://other.example"],
    )
    .await;
    assert_refused(with_assertion(&issuer, &both, None), "two audiences");

    // Tokens made with the cluster's real signing key: the control passes, so each refusal
    // below is for what it changes.
    let e2e_dir = std::env::var("E2E_DIR").expect("E2E_DIR: the control plane's directory");
    let cluster_key = pem_der(&Path::new(&e2e_dir).join("pki/sa.key"));
    let kid = kids[0].as_str().unwrap();
    let now = claims_of(&own)["iat"].as_i64().unwrap();
    let subject = format!("system:serviceaccount:{n}:billing");
    let shaped = |iat: i64, exp: i64| {
        json!({
            "iss": cluster_issuer, "aud": [issuer.url], "sub": subject,
            "iat": iat, "nbf": iat, "exp": exp,
            "kubernetes.io": {"namespace": n, "serviceaccount": {"name": "billing", "uid": "u"}}
        })
    };
    let control = rs256(&cluster_key, kid, &shaped(now, now + 600));
    assert_eq!(
        with_assertion(&issuer, &control, None).0,
        200,
        "the control"
    );
    let expired = rs256(&cluster_key, kid, &shaped(now - 1200, now - 600));
    assert_refused(with_assertion(&issuer, &expired, None), "expired");
    let year_long = rs256(&cluster_key, kid, &shaped(now, now + 365 * 86_400));
    assert_refused(
        with_assertion(&issuer, &year_long, None),
        "a year-long token",
    );
    let legacy = rs256(
        &cluster_key,
        kid,
        &json!({
            "iss": "kubernetes/serviceaccount", "sub": subject,
            "kubernetes.io/serviceaccount/namespace": n,
            "kubernetes.io/serviceaccount/service-account.name": "billing",
        }),
    );
    assert_refused(
        with_assertion(&issuer, &legacy, None),
        "a legacy Secret token",
    );
    // Another cluster: its own key under this cluster's kid, then its own issuer too.
    let other = RsaKeyPair::generate(aws_lc_rs::rsa::KeySize::Rsa2048).unwrap();
    let other_key =
        aws_lc_rs::encoding::AsDer::<aws_lc_rs::encoding::Pkcs8V1Der>::as_der(&other).unwrap();
    let forged = rs256(other_key.as_ref(), kid, &shaped(now, now + 600));
    assert_refused(
        with_assertion(&issuer, &forged, None),
        "another key, this kid",
    );
    let mut foreign = shaped(now, now + 600);
    foreign["iss"] = json!("https://other-cluster.example");
    let foreign = rs256(other_key.as_ref(), kid, &foreign);
    assert_refused(with_assertion(&issuer, &foreign, None), "another cluster");
    // One method at a time: an assertion with a client_secret is a malformed request.
    let (status, body) = issuer.token(&[
        ("grant_type", "client_credentials"),
        (
            "client_assertion_type",
            "urn:ietf:params:oauth:client-assertion-type:jwt-bearer",
        ),
        ("client_assertion", &own),
        ("client_id", &client_id),
        ("client_secret", "guess"),
    ]);
    assert_eq!(
        (status, body["error"].as_str()),
        (400, Some("invalid_request")),
        "{body}"
    );
    drop(running);
    elsewhere.delete().await.unwrap();
    ns.delete().await.unwrap();
}
