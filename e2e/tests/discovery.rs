//! An outside identity provider trusted through its discovery document, end to end: a real
//! OpenID provider (npm oidc-provider over HTTPS on loopback, issuing RFC 9068 JWT access
//! tokens with Keycloak-shaped roles and groups), an AuthPolicy naming its discoveryUrl, the
//! operator reading discovery and the JWKS and rendering the keys, and a running pod (played
//! as a kubelet would) whose sidecar never fetches anything. Then the provider goes away (the
//! last good keys stay, status says so) and comes back with a new key (picked up through the
//! operator, the old key's tokens refused). The provider's tokens must carry the audience the
//! issuer names as its own, not the policy's.

use std::net::SocketAddr;
use std::path::Path;
use std::process::Child;

use anyhow::{Context as _, ensure};
use k8s_openapi::api::core::v1::Pod;
use kube::api::{Api, PostParams};
use scopegate_crds::v1alpha1::AuthPolicy;
use scopegate_e2e::http::{Response, request};
use scopegate_e2e::kubelet::{Images, PodNetwork, RunningPod, example_app, sidecar_image};
use scopegate_e2e::manifests::orders_pod;
use scopegate_e2e::node_idp::{self, TestTls};
use scopegate_e2e::ports::free_port;
use scopegate_e2e::setup::logs_dir;
use scopegate_e2e::{ControlPlane, TestNamespace, apply_yaml, condition, eventually};

const CLIENT_ID: &str = "reports";
const CLIENT_SECRET: &str = "reports-secret";

/// The provider's process, with a signing key named `kid`; killed on drop.
struct Idp {
    port: u16,
    child: Child,
}

impl Drop for Idp {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Idp {
    fn start(tls: &TestTls, port: u16, kid: &str, audience: &str, dir: &Path) -> Idp {
        let env = [
            ("PORT", port.to_string()),
            ("KEY", tls.key_file.display().to_string()),
            ("CERT", tls.cert_file.display().to_string()),
            ("KID", kid.to_owned()),
            ("AUDIENCE", audience.to_owned()),
            ("CLIENT_ID", CLIENT_ID.to_owned()),
            ("CLIENT_SECRET", CLIENT_SECRET.to_owned()),
        ];
        let child = node_idp::spawn("resource-idp.mjs", &env, dir, &format!("outside-idp-{kid}"))
            .expect("the outside provider starts");
        Idp { port, child }
    }

    fn issuer(&self) -> String {
        format!("https://127.0.0.1:{}", self.port)
    }

    /// An access token for `audience` by client_credentials (curl, trusting the test CA).
    fn token(&self, tls: &TestTls, audience: &str) -> String {
        let output = std::process::Command::new("curl")
            .args(["-sS", "--cacert"])
            .arg(tls.cert_file.with_extension("ca"))
            .args(["-u", &format!("{CLIENT_ID}:{CLIENT_SECRET}")])
            .args([
                "-d",
                "grant_type=client_credentials",
                "-d",
                "scope=read:items",
            ])
            .args(["--data-urlencode", &format!("resource={audience}")])
            .arg(format!("{}/token", self.issuer()))
            .output()
            .expect("curl");
        let body: serde_json::Value = serde_json::from_slice(&output.stdout).unwrap_or_else(|_| {
            panic!(
                "token answer: {} {}",
                String::from_utf8_lossy(&output.stdout),
                String::from_utf8_lossy(&output.stderr)
            )
        });
        body["access_token"]
            .as_str()
            .unwrap_or_else(|| panic!("no access_token: {body}"))
            .to_owned()
    }
}

/// The policy: the provider's tokens must carry `own` (the issuer's own audience), the
/// policy's `audience` is for other issuers.
fn reports_policy(idp: &Idp, ca_pem: &str, own: &str, audience: &str) -> String {
    let bundle: String = ca_pem.lines().map(|l| format!("        {l}\n")).collect();
    format!(
        r#"
apiVersion: scopegate.dev/v1alpha1
kind: AuthPolicy
metadata: {{name: orders}}
spec:
  selector: {{matchLabels: {{app: orders}}}}
  issuer:
    external:
      issuer: {issuer}
      discoveryUrl: {issuer}/.well-known/openid-configuration
      algorithms: [ES256]
      refreshInterval: 30s
      audiences: [{own}]
      scopes: {{claim: realm_access.roles, prefix: "shop:"}}
      caBundle: |
{bundle}
  audiences: [{audience}]
  upstream: {{port: 8080}}
  rules:
    - {{name: health, paths: ["/healthz"], public: true}}
    - name: reports
      methods: [GET]
      paths: ["/orders"]
      require: [read:items]
      when: '"admins" in claims.groups'
"#,
        issuer = idp.issuer()
    )
}

/// The policy's status, once it describes the current generation.
async fn status(api: &Api<AuthPolicy>) -> anyhow::Result<serde_json::Value> {
    let policy = api.get("orders").await?;
    let status = policy.status.clone().context("no status yet")?;
    ensure!(
        status.observed_generation == policy.metadata.generation,
        "status of an older generation"
    );
    Ok(serde_json::to_value(status)?)
}

fn key_ids(status: &serde_json::Value) -> Vec<String> {
    status["discoveredIssuers"][0]["keyIds"]
        .as_array()
        .map(|ids| {
            ids.iter()
                .filter_map(|i| i.as_str().map(str::to_owned))
                .collect()
        })
        .unwrap_or_default()
}

#[tokio::test]
async fn an_outside_provider_is_trusted_through_discovery_read_by_the_operator() {
    let plane = ControlPlane::from_env().expect("control plane");
    let client = plane.client().await.expect("client");
    let ns = TestNamespace::for_injection(&client, "discovery").await;
    let logs = logs_dir();
    let dir = logs.join(&ns.name);
    std::fs::create_dir_all(&dir).unwrap();
    let tls = TestTls::new(&dir, "outside-idp", "outside IdP test CA", &["127.0.0.1"]).unwrap();
    std::fs::write(tls.cert_file.with_extension("ca"), &tls.ca_pem).unwrap();
    // The provider issues for its own name of the service and for the policy's.
    let own = format!("api://reports.{}", ns.name);
    let audience = format!("https://orders.{}.svc", ns.name);
    let both = format!("{own},{audience}");
    let port = free_port();
    let idp = Idp::start(&tls, port, "kid-one", &both, &dir);
    let policy = reports_policy(&idp, &tls.ca_pem, &own, &audience);
    apply_yaml::<AuthPolicy>(&client, &ns.name, &policy)
        .await
        .unwrap();
    let policies: Api<AuthPolicy> = Api::namespaced(client.clone(), &ns.name);
    let first = eventually("the provider's key in status", || async {
        let status = status(&policies).await?;
        ensure!(key_ids(&status) == ["kid-one"], "{status}");
        Ok(status)
    })
    .await
    .unwrap();
    assert_eq!(
        first["discoveredIssuers"][0]["jwksUri"],
        format!("{}/jwks", idp.issuer()),
        "{first}"
    );

    let pod = eventually("the pod created with the sidecar", || async {
        Ok(Api::<Pod>::namespaced(client.clone(), &ns.name)
            .create(&PostParams::default(), &orders_pod("orders-0"))
            .await?)
    })
    .await
    .unwrap();
    let network = PodNetwork::create().expect("pod network (needs root)");
    let images = Images::from([
        sidecar_image().expect("the sidecar image"),
        example_app("example/orders", "orders.py"),
    ]);
    let running = RunningPod::start(&client, &network, &pod, &images, &[], &logs)
        .await
        .expect("pod runs");
    let service = SocketAddr::from((running.ip, 15080));
    eventually("the app behind the sidecar", || async move {
        let response = request(service, "GET", "/healthz", &[], "")?;
        ensure!(response.status == 200, "healthz {}", response.status);
        Ok(())
    })
    .await
    .unwrap();
    let get = |token: &str| -> Response {
        let bearer = format!("Bearer {token}");
        request(service, "GET", "/orders", &[("Authorization", &bearer)], "").expect("request")
    };

    // The provider's token passes: its roles are the scopes, its groups meet the condition.
    let one = idp.token(&tls, &own);
    let answer = get(&one);
    assert_eq!(answer.status, 200, "{answer:?}");
    let caller: serde_json::Value = serde_json::from_str(&answer.body).unwrap();
    let mut scopes: Vec<&str> = caller["caller"]["scopes"]
        .as_str()
        .unwrap_or_default()
        .split(' ')
        .collect();
    scopes.sort_unstable();
    assert_eq!(scopes, ["read:items", "reports"], "{}", answer.body);
    // A token the provider issued for the policy's audience is not for this issuer: refused.
    let elsewhere = idp.token(&tls, &audience);
    assert_eq!(get(&elsewhere).status, 401);
    // Another provider's token naming this provider's kid is refused: the token's issuer
    // decides which keys are consulted, and that issuer is not trusted.
    let forged = {
        let other = TestTls::new(&dir, "other", "other CA", &["127.0.0.1"]).unwrap();
        std::fs::write(other.cert_file.with_extension("ca"), &other.ca_pem).unwrap();
        let impostor = Idp::start(&other, free_port(), "kid-one", &own, &dir);
        impostor.token(&other, &own)
    };
    assert_eq!(get(&forged).status, 401);
    let anonymous = request(service, "GET", "/orders", &[], "").expect("request");
    assert_eq!(anonymous.status, 401, "{anonymous:?}");

    // The provider goes away: the operator keeps the last good key and says so.
    drop(idp);
    eventually("Degraded DiscoveryFailed, still Ready", || async {
        let status = status(&policies).await?;
        let conditions: Vec<k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition> =
            serde_json::from_value(status["conditions"].clone())?;
        let degraded = condition(&conditions, "Degraded").context("no Degraded")?;
        ensure!(degraded.reason == "DiscoveryFailed", "{status}");
        let ready = condition(&conditions, "Ready").context("no Ready")?;
        ensure!(ready.status == "True", "{status}");
        ensure!(key_ids(&status) == ["kid-one"], "{status}");
        ensure!(
            status["discoveredIssuers"][0]["error"].is_string(),
            "{status}"
        );
        Ok(())
    })
    .await
    .unwrap();
    assert_eq!(get(&one).status, 200, "the last good key stays in force");

    // It comes back with a new key: read again, rendered, and the old key's tokens refused.
    let idp = Idp::start(&tls, port, "kid-two", &both, &dir);
    eventually("the new key in status and no error", || async {
        let status = status(&policies).await?;
        ensure!(key_ids(&status) == ["kid-two"], "{status}");
        ensure!(
            status["discoveredIssuers"][0]["error"].is_null(),
            "{status}"
        );
        Ok(())
    })
    .await
    .unwrap();
    let two = idp.token(&tls, &own);
    eventually("the sidecar holding the new key", || async {
        let answer = get(&two);
        ensure!(answer.status == 200, "{answer:?}");
        Ok(())
    })
    .await
    .unwrap();
    assert_eq!(get(&one).status, 401, "the retired key's token");
    ns.delete().await.unwrap();
}
