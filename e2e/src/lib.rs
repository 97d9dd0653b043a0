//! Helpers for the end-to-end tests, which run against the local control plane that
//! `e2e/scripts/cluster-up.sh` starts (real kube-apiserver, etcd and kube-controller-manager).
//!
//! The tests find it through `KUBECONFIG` and the `E2E_*` variables of the env file that
//! cluster-up writes. Without them a test fails with instructions: an e2e test never skips.

pub mod endpoint;
pub mod fault_proxy;
pub mod google;
pub mod http;
pub mod kubelet;
pub mod manifests;
pub mod node_idp;
pub mod ports;
pub mod ready;
pub mod rendered;
pub mod setup;
pub mod story;
pub mod tokens;

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use anyhow::{Context, bail};
use k8s_openapi::api::core::v1::Namespace;
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::api::{Api, DeleteParams, Patch, PatchParams, PostParams};
use kube::config::{KubeConfigOptions, Kubeconfig};
use kube::runtime::wait::{await_condition, conditions};
use kube::{Client, Config};

/// Field manager of every write the tests make.
pub const FIELD_MANAGER: &str = "scopegate-e2e";

/// How long a test waits for the API server to reach a state before failing.
pub const WAIT: Duration = Duration::from_secs(60);

/// Where the running control plane is.
#[derive(Debug, Clone)]
pub struct ControlPlane {
    /// Admin kubeconfig (a client certificate in system:masters).
    pub kubeconfig: PathBuf,
    /// The kubectl built with the control plane.
    pub kubectl: PathBuf,
}

impl ControlPlane {
    /// Finds the control plane from the environment, or explains how to start one.
    pub fn from_env() -> anyhow::Result<Self> {
        let hint = "the e2e tests need the local control plane: run `make test` (starts and stops one), \
                    or `make up` and then `source ~/.cache/scopegate/up/env`";
        let kubeconfig = std::env::var_os("KUBECONFIG")
            .map(PathBuf::from)
            .context(hint)?;
        let kubectl = std::env::var_os("E2E_KUBECTL")
            .map(PathBuf::from)
            .context(hint)?;
        if !kubeconfig.is_file() {
            bail!("KUBECONFIG {} does not exist: {hint}", kubeconfig.display());
        }
        Ok(Self {
            kubeconfig,
            kubectl,
        })
    }

    /// An admin client for the control plane.
    pub async fn client(&self) -> anyhow::Result<Client> {
        self.client_with(true).await
    }

    /// An admin client that sees a 503 (or 429, 504) at once instead of retrying it.
    pub async fn client_without_retries(&self) -> anyhow::Result<Client> {
        self.client_with(false).await
    }

    async fn client_with(&self, retry: bool) -> anyhow::Result<Client> {
        let kubeconfig = Kubeconfig::read_from(&self.kubeconfig)
            .with_context(|| format!("reading {}", self.kubeconfig.display()))?;
        let mut config = Config::from_custom_kubeconfig(kubeconfig, &KubeConfigOptions::default())
            .await
            .context("building a client config from the e2e kubeconfig")?;
        config.default_retry = retry;
        let client = Client::try_from(config).context("building the client")?;
        let version = client
            .apiserver_version()
            .await
            .context("the control plane does not answer: is it running?")?;
        eprintln!("e2e: talking to kube-apiserver {}", version.git_version);
        Ok(client)
    }

    /// Runs kubectl against the control plane and returns its stdout; fails on a non-zero exit.
    pub fn kubectl(&self, args: &[&str]) -> anyhow::Result<String> {
        let output = std::process::Command::new(&self.kubectl)
            .arg("--kubeconfig")
            .arg(&self.kubeconfig)
            .args(args)
            .output()
            .with_context(|| format!("running {}", self.kubectl.display()))?;
        if !output.status.success() {
            bail!(
                "kubectl {} failed: {}",
                args.join(" "),
                String::from_utf8_lossy(&output.stderr)
            );
        }
        Ok(String::from_utf8_lossy(&output.stdout).into_owned())
    }
}

/// The repository root.
pub fn repo_root() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("the e2e crate sits in the repository")
}

/// Installs the checked-in CRDs (the files the chart ships) by server-side apply and waits
/// until each is Established. Idempotent, so every test may call it.
pub async fn install_crds(client: &Client) -> anyhow::Result<()> {
    let api: Api<CustomResourceDefinition> = Api::all(client.clone());
    for file in ["crds/authpolicy.yaml", "crds/oauthclient.yaml"] {
        let text = std::fs::read_to_string(repo_root().join(file))
            .with_context(|| format!("reading {file}"))?;
        let crd: CustomResourceDefinition =
            serde_yaml_ng::from_str(&text).with_context(|| format!("parsing {file}"))?;
        let name = crd.metadata.name.clone().context("CRD without a name")?;
        api.patch(
            &name,
            &PatchParams::apply(FIELD_MANAGER).force(),
            &Patch::Apply(&crd),
        )
        .await
        .with_context(|| format!("applying {file}"))?;
        wait(
            &format!("CRD {name} Established"),
            await_condition(api.clone(), &name, conditions::is_crd_established()),
        )
        .await?
        .with_context(|| format!("watching CRD {name}"))?;
    }
    Ok(())
}

/// Awaits `future` for at most [`WAIT`], naming `what` on timeout.
pub async fn wait<F: std::future::Future>(what: &str, future: F) -> anyhow::Result<F::Output> {
    tokio::time::timeout(WAIT, future)
        .await
        .with_context(|| format!("timed out after {WAIT:?} waiting for {what}"))
}

/// A namespace of one test's own, deleted by [`TestNamespace::delete`].
pub struct TestNamespace {
    /// The namespace's name.
    pub name: String,
    client: Client,
}

impl TestNamespace {
    /// Creates a fresh namespace named after the test.
    pub async fn create(client: &Client, test: &str) -> anyhow::Result<Self> {
        static COUNTER: AtomicU32 = AtomicU32::new(0);
        let name = format!(
            "e2e-{test}-{}-{}",
            std::process::id(),
            COUNTER.fetch_add(1, Ordering::Relaxed)
        );
        let ns: Namespace = serde_json::from_value(serde_json::json!({
            "apiVersion": "v1", "kind": "Namespace", "metadata": { "name": name }
        }))?;
        Api::<Namespace>::all(client.clone())
            .create(&PostParams::default(), &ns)
            .await
            .with_context(|| format!("creating namespace {name}"))?;
        Ok(Self {
            name,
            client: client.clone(),
        })
    }

    /// Deletes the namespace (the controller manager removes its contents).
    pub async fn delete(self) -> anyhow::Result<()> {
        Api::<Namespace>::all(self.client)
            .delete(&self.name, &DeleteParams::default())
            .await
            .with_context(|| format!("deleting namespace {}", self.name))?;
        Ok(())
    }
}

/// Retries `attempt` until it succeeds or [`WAIT`] passes, for states the API server reaches
/// asynchronously without a watchable condition (e.g. the published OpenAPI document that
/// `kubectl explain` reads). Fails with the last error.
pub async fn eventually<T, F, Fut>(what: &str, mut attempt: F) -> anyhow::Result<T>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = anyhow::Result<T>>,
{
    let deadline = tokio::time::Instant::now() + WAIT;
    let mut interval = tokio::time::interval(Duration::from_millis(250));
    loop {
        interval.tick().await;
        match attempt().await {
            Ok(value) => return Ok(value),
            Err(err) if tokio::time::Instant::now() >= deadline => {
                return Err(err.context(format!("gave up after {WAIT:?} waiting for {what}")));
            }
            Err(_) => {}
        }
    }
}

/// Reads one key of a Secret as text (None when the Secret or key is missing).
pub async fn secret_text(
    client: &Client,
    namespace: &str,
    name: &str,
    key: &str,
) -> anyhow::Result<Option<String>> {
    let secret = Api::<k8s_openapi::api::core::v1::Secret>::namespaced(client.clone(), namespace)
        .get_opt(name)
        .await?;
    Ok(secret
        .and_then(|s| s.data)
        .and_then(|d| d.get(key).cloned())
        .map(|b| String::from_utf8_lossy(&b.0).into_owned()))
}

/// Reads one key of a ConfigMap (None when missing).
pub async fn config_map_text(
    client: &Client,
    namespace: &str,
    name: &str,
    key: &str,
) -> anyhow::Result<Option<String>> {
    let cm = Api::<k8s_openapi::api::core::v1::ConfigMap>::namespaced(client.clone(), namespace)
        .get_opt(name)
        .await?;
    Ok(cm.and_then(|c| c.data).and_then(|d| d.get(key).cloned()))
}

/// Server-side applies a YAML document as `kind` into `namespace`.
pub async fn apply_yaml<K>(client: &Client, namespace: &str, yaml: &str) -> anyhow::Result<K>
where
    K: kube::Resource<DynamicType = (), Scope = k8s_openapi::NamespaceResourceScope>
        + Clone
        + serde::Serialize
        + serde::de::DeserializeOwned
        + std::fmt::Debug,
{
    let mut object: K = serde_yaml_ng::from_str(yaml).context("parsing test YAML")?;
    object.meta_mut().namespace = Some(namespace.to_owned());
    let name = object.meta().name.clone().context("object without name")?;
    let api: Api<K> = Api::namespaced(client.clone(), namespace);
    api.patch(
        &name,
        &PatchParams::apply(FIELD_MANAGER).force(),
        &Patch::Apply(&object),
    )
    .await
    .with_context(|| format!("applying {name}"))
}

/// AuthPolicy `namespace/name` as the API server has it.
pub async fn auth_policy(
    client: &Client,
    namespace: &str,
    name: &str,
) -> anyhow::Result<scopegate_crds::v1alpha1::AuthPolicy> {
    Api::<scopegate_crds::v1alpha1::AuthPolicy>::namespaced(client.clone(), namespace)
        .get(name)
        .await
        .with_context(|| format!("reading AuthPolicy {namespace}/{name}"))
}

/// The status of condition `type_` on an object's `status.conditions`.
pub fn condition<'a>(
    conditions: &'a [k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition],
    type_: &str,
) -> Option<&'a k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition> {
    conditions.iter().find(|c| c.type_ == type_)
}

/// An operator process started by a test, as the operator's ServiceAccount. Killed on drop.
pub struct OperatorProcess {
    child: std::process::Child,
    /// Its admin address.
    pub admin: std::net::SocketAddr,
    /// Its leader-election identity.
    pub identity: String,
}

/// How a test runs an operator beyond the defaults.
#[derive(Debug, Clone, Default)]
pub struct OperatorOptions {
    /// Serve the webhook where the API server calls it (`E2E_WEBHOOK_PORT`), as the shared
    /// operator does (only one process at a time can).
    pub webhook: bool,
    /// A kubeconfig other than the ServiceAccount's (e.g. through a [`fault_proxy`]).
    pub kubeconfig: Option<PathBuf>,
    /// Extra environment variables.
    pub env: Vec<(String, String)>,
    /// Extra arguments.
    pub args: Vec<String>,
}

impl OperatorProcess {
    /// Starts the operator binary with its own admin port, competing for `lease`.
    pub fn start(identity: &str, lease: &str) -> anyhow::Result<Self> {
        let kubeconfig =
            std::env::var("E2E_OPERATOR_KUBECONFIG").context("E2E_OPERATOR_KUBECONFIG")?;
        Self::start_as(
            identity,
            lease,
            Path::new(&kubeconfig),
            &["--webhook-addr", "127.0.0.1:0"],
        )
    }

    /// Starts the operator binary with its own admin port, competing for `lease`, as the
    /// identity of `kubeconfig`, with `extra` arguments, logging at `$E2E_OPERATOR_LOG` (a
    /// RUST_LOG filter, default `info,kube=warn`).
    pub fn start_as(
        identity: &str,
        lease: &str,
        kubeconfig: &Path,
        extra: &[&str],
    ) -> anyhow::Result<Self> {
        Self::spawn(identity, lease, kubeconfig, extra, &[])
    }

    /// Starts the operator binary with `options`; its log is appended to (a test may restart
    /// one identity many times).
    pub fn start_with(
        identity: &str,
        lease: &str,
        options: &OperatorOptions,
    ) -> anyhow::Result<Self> {
        let kubeconfig = match &options.kubeconfig {
            Some(path) => path.clone(),
            None => PathBuf::from(
                std::env::var("E2E_OPERATOR_KUBECONFIG").context("E2E_OPERATOR_KUBECONFIG")?,
            ),
        };
        let webhook = if options.webhook {
            let port = std::env::var("E2E_WEBHOOK_PORT").context("E2E_WEBHOOK_PORT")?;
            format!("127.0.0.1:{port}")
        } else {
            "127.0.0.1:0".to_owned()
        };
        let mut extra = vec![
            "--webhook-addr",
            &webhook,
            "--webhook-ip-san",
            "127.0.0.1",
            "--sidecar-image",
            "scopegate/sidecar:e2e",
        ];
        extra.extend(options.args.iter().map(String::as_str));
        Self::spawn(identity, lease, &kubeconfig, &extra, &options.env)
    }

    fn spawn(
        identity: &str,
        lease: &str,
        kubeconfig: &Path,
        extra: &[&str],
        env: &[(String, String)],
    ) -> anyhow::Result<Self> {
        let bin = std::env::var("E2E_OPERATOR_BIN")
            .context("E2E_OPERATOR_BIN: run the tests through `make test`")?;
        let dir = std::env::var("E2E_DIR").context("E2E_DIR")?;
        let port = ports::free_port();
        let admin: std::net::SocketAddr = ([127, 0, 0, 1], port).into();
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(format!("{dir}/logs/operator-{identity}.log"))?;
        let child = std::process::Command::new(bin)
            .env("KUBECONFIG", kubeconfig)
            .env(
                "RUST_LOG",
                std::env::var("E2E_OPERATOR_LOG").unwrap_or_else(|_| "info,kube=warn".into()),
            )
            .envs(env.iter().map(|(k, v)| (k, v)))
            .args([
                "--namespace",
                "scopegate-system",
                "--identity",
                identity,
                "--lease-name",
                lease,
            ])
            .args(["--lease-seconds", "4", "--admin-addr", &admin.to_string()])
            .args(extra)
            .stdout(log.try_clone()?)
            .stderr(log)
            .spawn()
            .context("starting the operator")?;
        Ok(Self {
            child,
            admin,
            identity: identity.to_owned(),
        })
    }

    /// The operator's /metrics text (empty when it does not answer).
    pub fn metrics(&self) -> String {
        self.admin_get("/metrics")
    }

    /// The raw HTTP answer of its admin server at `path` (empty when it does not answer).
    pub fn admin_get(&self, path: &str) -> String {
        use std::io::{Read, Write};
        let Ok(mut stream) =
            std::net::TcpStream::connect_timeout(&self.admin, Duration::from_secs(1))
        else {
            return String::new();
        };
        let _ = stream.set_read_timeout(Some(Duration::from_secs(2)));
        let _ =
            stream.write_all(format!("GET {path} HTTP/1.0\r\nHost: operator\r\n\r\n").as_bytes());
        let mut body = String::new();
        let _ = stream.read_to_string(&mut body);
        body
    }

    /// Whether it holds the lease, by its own metric.
    pub fn is_leader(&self) -> bool {
        self.metrics()
            .lines()
            .any(|l| l == "scopegate_operator_leader 1")
    }

    /// The value of a counter line starting with `prefix` (0 when absent).
    pub fn counter(&self, prefix: &str) -> f64 {
        self.metrics()
            .lines()
            .filter(|l| l.starts_with(prefix))
            .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
            .sum()
    }

    /// The tail of its log, for failure messages.
    pub fn log_tail(&self) -> String {
        let dir = std::env::var("E2E_DIR").unwrap_or_default();
        let text = std::fs::read_to_string(format!("{dir}/logs/operator-{}.log", self.identity))
            .unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(20)..].join("\n")
    }

    /// Whether the process is still running.
    pub fn is_running(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(None))
    }

    /// SIGKILLs it and reaps it.
    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for OperatorProcess {
    fn drop(&mut self) {
        self.kill();
    }
}

/// Makes sure some pod of `namespace` is selected by AuthPolicy `policy` (one that selects no
/// pod is not Ready): creates pod `<policy>-pod` with the selector's `matchLabels` when none is.
/// It is never scheduled (no node) and, in a namespace without the injection label, gets no
/// sidecar: the policy reports it as Degraded, not as not Ready.
pub async fn ensure_selected_pod(
    client: &Client,
    namespace: &str,
    policy: &str,
) -> anyhow::Result<()> {
    use k8s_openapi::api::core::v1::Pod;
    let object = Api::<scopegate_crds::v1alpha1::AuthPolicy>::namespaced(client.clone(), namespace)
        .get(policy)
        .await
        .with_context(|| format!("reading AuthPolicy {namespace}/{policy}"))?;
    let labels = object
        .spec
        .selector
        .match_labels
        .clone()
        .unwrap_or_default();
    let selector = labels
        .iter()
        .map(|(k, v)| format!("{k}={v}"))
        .collect::<Vec<_>>()
        .join(",");
    let pods: Api<Pod> = Api::namespaced(client.clone(), namespace);
    if !pods
        .list(&kube::api::ListParams::default().labels(&selector))
        .await?
        .items
        .is_empty()
    {
        return Ok(());
    }
    let pod: Pod = serde_json::from_value(serde_json::json!({
        "apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": format!("{policy}-pod"), "labels": labels},
        "spec": {"containers": [{"name": "app", "image": "example/app"}]},
    }))?;
    match pods.create(&PostParams::default(), &pod).await {
        Ok(_) => Ok(()),
        Err(kube::Error::Api(status)) if status.code == 409 => Ok(()),
        Err(err) => Err(err).with_context(|| format!("creating a pod for {policy}")),
    }
}
