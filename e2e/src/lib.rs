//! Helpers for the end-to-end tests, which run against the local control plane that
//! `e2e/scripts/cluster-up.sh` starts (real kube-apiserver, etcd and kube-controller-manager).
//!
//! The tests find it through `KUBECONFIG` and the `E2E_*` variables of the env file that
//! cluster-up writes. Without them a test fails with instructions: an e2e test never skips.

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
        let kubeconfig = Kubeconfig::read_from(&self.kubeconfig)
            .with_context(|| format!("reading {}", self.kubeconfig.display()))?;
        let config = Config::from_custom_kubeconfig(kubeconfig, &KubeConfigOptions::default())
            .await
            .context("building a client config from the e2e kubeconfig")?;
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
