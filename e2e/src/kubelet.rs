//! Playing a node's part for pods that exist only as API objects: each pod runs as processes
//! (its containers, from the args and env the API server stored) in a network namespace of its
//! own, on a bridge the test process can reach, with the ConfigMaps and Secrets its volumes name
//! and the ServiceAccount tokens its projected volumes ask for kept in sync the way the kubelet
//! does (a `..data` symlink swapped atomically; tokens from the TokenRequest API, refreshed on
//! the kubelet's schedule), bind-mounted at the paths its containers mount them, and Services
//! as kube-proxy makes them: names in its
//! /etc/hosts for a cluster IP, and a DNAT rule from the Service port to the endpoint. Init
//! containers run first, to completion, in the pod's network namespace (the port lock's
//! nftables rules land there).
//!
//! All containers of a pod share one mount namespace holding the union of their mounts: a
//! volume mounted into one container only (say, a token for the sidecar) is visible to the
//! others here, so which container mounts what can be asserted on the pod spec only, not on
//! the processes.
//!
//! Needs root (network and mount namespaces), like a kubelet.

use std::collections::BTreeMap;
use std::net::{Ipv4Addr, SocketAddr};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicU8, AtomicU32, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};
use k8s_openapi::api::authentication::v1::{BoundObjectReference, TokenRequest, TokenRequestSpec};
use k8s_openapi::api::core::v1::{
    ConfigMap, Container, Pod, PodSpec, ProjectedVolumeSource, Secret, ServiceAccount,
};
use kube::api::{Api, PostParams};
use kube::{Client, ResourceExt};

fn run(program: &str, args: &[&str]) -> anyhow::Result<()> {
    let status = Command::new(program)
        .args(args)
        .stderr(Stdio::null())
        .status()?;
    if !status.success() {
        bail!("{program} {} failed", args.join(" "));
    }
    Ok(())
}

/// A bridge on the host with a /24 that pods attach to.
pub struct PodNetwork {
    bridge: String,
    subnet: u8,
    next_host: AtomicU8,
    next_cluster_ip: AtomicU8,
}

/// A Service as a client pod sees it.
#[derive(Clone, Debug)]
pub struct ServiceRoute {
    /// The Service's DNS names (`name.namespace.svc`, ...).
    pub names: Vec<String>,
    /// Its cluster IP (from [`PodNetwork::cluster_ip`]).
    pub cluster_ip: Ipv4Addr,
    /// The Service port.
    pub port: u16,
    /// The endpoint: the backing pod's address and the target port.
    pub endpoint: SocketAddr,
}

impl PodNetwork {
    /// Creates a bridge with a subnet of its own (10.77.N.0/24).
    pub fn create() -> anyhow::Result<Arc<Self>> {
        static COUNTER: AtomicU32 = AtomicU32::new(0);
        let n = COUNTER.fetch_add(1, Ordering::Relaxed);
        let subnet = u8::try_from((std::process::id() * 7 + n * 13) % 250 + 1).unwrap_or(1);
        let bridge = format!("sgbr{subnet}");
        let _ = run("ip", &["link", "del", &bridge]);
        run("ip", &["link", "add", &bridge, "type", "bridge"])?;
        run(
            "ip",
            &[
                "addr",
                "add",
                &format!("10.77.{subnet}.1/24"),
                "dev",
                &bridge,
            ],
        )?;
        run("ip", &["link", "set", &bridge, "up"])?;
        Ok(Arc::new(Self {
            bridge,
            subnet,
            next_host: AtomicU8::new(2),
            next_cluster_ip: AtomicU8::new(254),
        }))
    }

    /// A fresh cluster IP for a Service (from the top of the subnet; it never reaches the wire,
    /// client pods translate it to the endpoint).
    pub fn cluster_ip(&self) -> Ipv4Addr {
        let host = self.next_cluster_ip.fetch_sub(1, Ordering::Relaxed);
        Ipv4Addr::new(10, 77, self.subnet, host)
    }

    /// The host's address on the bridge (what a pod reaches the host at).
    pub fn gateway(&self) -> Ipv4Addr {
        Ipv4Addr::new(10, 77, self.subnet, 1)
    }

    fn allocate(&self) -> (Ipv4Addr, u8) {
        let host = self.next_host.fetch_add(1, Ordering::Relaxed);
        (Ipv4Addr::new(10, 77, self.subnet, host), host)
    }
}

impl Drop for PodNetwork {
    fn drop(&mut self) {
        let _ = run("ip", &["link", "del", &self.bridge]);
    }
}

/// What each container image means on this host: a command to run (the image's entrypoint).
pub type Images = BTreeMap<String, Vec<String>>;

/// The sidecar's image, `scopegate/sidecar:e2e`: the binary `$E2E_SIDECAR_BIN`.
pub fn sidecar_image() -> anyhow::Result<(String, Vec<String>)> {
    let sidecar = std::env::var("E2E_SIDECAR_BIN")
        .context("E2E_SIDECAR_BIN: the sidecar binary to run (`make test` sets it)")?;
    Ok(("scopegate/sidecar:e2e".to_owned(), vec![sidecar]))
}

/// `image` as the example app `examples/apps/<file>` (run by python3).
pub fn example_app(image: &str, file: &str) -> (String, Vec<String>) {
    let app = crate::repo_root().join("examples/apps").join(file);
    (
        image.to_owned(),
        vec!["python3".to_owned(), app.display().to_string()],
    )
}

/// A pod running as processes.
pub struct RunningPod {
    /// The pod's name.
    pub name: String,
    /// Its address on the pod network.
    pub ip: Ipv4Addr,
    netns: String,
    host_veth: String,
    dir: PathBuf,
    launcher: Child,
    sync: tokio::task::JoinHandle<()>,
}

/// How a test runs a pod beyond what its spec says ([`RunningPod::start_with`]).
#[derive(Debug, Clone, Default)]
pub struct StartOptions {
    /// Refresh each projected ServiceAccount token once it is this old, instead of on the
    /// kubelet's schedule (at 80 % of its lifetime or 24 hours, whichever comes first): the
    /// API server issues no token for less than 10 minutes, longer than a test waits.
    pub token_refresh: Option<Duration>,
}

impl RunningPod {
    /// Runs `pod` (as stored by the API server, so after injection), with the `services` it
    /// may call.
    pub async fn start(
        client: &Client,
        network: &Arc<PodNetwork>,
        pod: &Pod,
        images: &Images,
        services: &[ServiceRoute],
        logs: &Path,
    ) -> anyhow::Result<Self> {
        let options = StartOptions::default();
        Self::start_with(client, network, pod, images, services, logs, &options).await
    }

    /// [`RunningPod::start`] with `options`.
    ///
    /// Like the kubelet, it starts no container before every volume has its content: when one
    /// cannot get it (a ServiceAccount that does not exist, a TokenRequest refused) for
    /// [`MOUNT_TIMEOUT`], it fails with the volume's last error. Each sync error, then and
    /// while the pod runs, goes to `<logs>/<pod>-volumes.log` and stderr; the sync keeps
    /// trying every 500 ms, keeping what the volume held.
    pub async fn start_with(
        client: &Client,
        network: &Arc<PodNetwork>,
        pod: &Pod,
        images: &Images,
        services: &[ServiceRoute],
        logs: &Path,
        options: &StartOptions,
    ) -> anyhow::Result<Self> {
        let name = pod.name_any();
        let namespace = pod.namespace().context("pod without namespace")?;
        let spec = pod.spec.clone().context("pod without spec")?;
        let (ip, host) = network.allocate();
        let netns = format!("sgpod{}x{host}", network.subnet);
        let host_veth = format!("sgv{}x{host}", network.subnet);
        let dir =
            std::env::temp_dir().join(format!("scopegate-pod-{netns}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(dir.join("volumes"))?;

        // As the kubelet: volumes mount before the pod's sandbox (its network) is made.
        let volumes =
            match VolumeSync::mount(client, pod, &dir.join("volumes"), logs, options).await {
                Ok(volumes) => volumes,
                Err(err) => {
                    let _ = std::fs::remove_dir_all(&dir);
                    return Err(err.context(format!("pod {namespace}/{name} does not start")));
                }
            };
        plug_in(network, &netns, &host_veth, ip, host)?;
        route_services(&netns, services)?;
        std::fs::write(dir.join("hosts"), hosts_file(ip, &name, services))?;
        let pod_env = PodEnv {
            name: &name,
            namespace: &namespace,
            dir: &dir,
            logs,
        };
        std::fs::write(
            dir.join("launch.sh"),
            launch_script(&spec, images, &pod_env)?,
        )?;
        let sync = tokio::spawn(volumes.run());
        let launcher = Command::new("ip")
            .args(["netns", "exec", &netns, "unshare", "--mount"])
            .args(["--propagation", "private", "sh"])
            .arg(dir.join("launch.sh"))
            .stdin(Stdio::null())
            .stdout(std::fs::File::create(
                logs.join(format!("{name}-launcher.log")),
            )?)
            .stderr(std::fs::File::create(
                logs.join(format!("{name}-launcher.err")),
            )?)
            .process_group(0)
            .spawn()
            .context("starting the pod")?;
        Ok(Self {
            name,
            ip,
            netns,
            host_veth,
            dir,
            launcher,
            sync,
        })
    }

    /// A command run inside the pod's network namespace, as another process of the pod (what
    /// the app could do on 127.0.0.1).
    pub fn command_in_pod(&self, program: &str) -> Command {
        let mut command = Command::new("ip");
        command.args(["netns", "exec", &self.netns, program]);
        command
    }
}

/// Creates network namespace `netns` and a veth pair from it to the bridge, with address `ip`
/// (host `host` of the subnet) and a default route through the bridge.
fn plug_in(
    network: &PodNetwork,
    netns: &str,
    host_veth: &str,
    ip: Ipv4Addr,
    host: u8,
) -> anyhow::Result<()> {
    let pod_veth = format!("sgp{}x{host}", network.subnet);
    let _ = run("ip", &["netns", "del", netns]);
    run("ip", &["netns", "add", netns])?;
    run(
        "ip",
        &[
            "link", "add", host_veth, "type", "veth", "peer", "name", &pod_veth,
        ],
    )?;
    run("ip", &["link", "set", host_veth, "master", &network.bridge])?;
    run("ip", &["link", "set", host_veth, "up"])?;
    run("ip", &["link", "set", &pod_veth, "netns", netns])?;
    let in_ns = |args: &[&str]| {
        let mut all = vec!["netns", "exec", netns, "ip"];
        all.extend_from_slice(args);
        run("ip", &all)
    };
    in_ns(&["addr", "add", &format!("{ip}/24"), "dev", &pod_veth])?;
    in_ns(&["link", "set", &pod_veth, "up"])?;
    in_ns(&["link", "set", "lo", "up"])?;
    let gateway = format!("10.77.{}.1", network.subnet);
    in_ns(&["route", "add", "default", "via", &gateway])
}

/// Services, as kube-proxy's nftables mode makes them: cluster IP and port to the endpoint.
fn route_services(netns: &str, services: &[ServiceRoute]) -> anyhow::Result<()> {
    if services.is_empty() {
        return Ok(());
    }
    let nft = |rule: &str| run("ip", &["netns", "exec", netns, "nft", rule]);
    nft("add table ip services")?;
    nft("add chain ip services output { type nat hook output priority -100 ; }")?;
    for service in services {
        nft(&format!(
            "add rule ip services output ip daddr {} tcp dport {} dnat to {}",
            service.cluster_ip, service.port, service.endpoint
        ))?;
    }
    Ok(())
}

/// The pod's /etc/hosts: itself, and each Service's names at its cluster IP.
fn hosts_file(ip: Ipv4Addr, name: &str, services: &[ServiceRoute]) -> String {
    let mut hosts = format!("127.0.0.1 localhost\n{ip} {name}\n");
    for service in services {
        hosts.push_str(&format!(
            "{} {}\n",
            service.cluster_ip,
            service.names.join(" ")
        ));
    }
    hosts
}

/// What a container's launch line needs to know about its pod.
struct PodEnv<'a> {
    name: &'a str,
    namespace: &'a str,
    dir: &'a Path,
    logs: &'a Path,
}

/// The shell script that runs the pod in one mount namespace: the union of its containers'
/// mounts (scopegate's injection never mounts two volumes at one path), then the init
/// containers (but native sidecars) one after the other, each to completion, so that one that
/// fails stops the pod before anything else starts; then the rest, in the background.
fn launch_script(spec: &PodSpec, images: &Images, pod: &PodEnv<'_>) -> anyhow::Result<String> {
    let mut script = String::from("set -e\nmount --make-rprivate /\n");
    script.push_str(&format!(
        "mount --bind {} /etc/hosts\n",
        pod.dir.join("hosts").display()
    ));
    let is_native_sidecar = |c: &&Container| c.restart_policy.as_deref() == Some("Always");
    let init: Vec<&Container> = spec
        .init_containers
        .iter()
        .flatten()
        .filter(|c| !is_native_sidecar(c))
        .collect();
    let containers: Vec<&Container> = spec
        .init_containers
        .iter()
        .flatten()
        .filter(is_native_sidecar)
        .chain(&spec.containers)
        .collect();
    let mut mounted = std::collections::BTreeSet::new();
    for container in init.iter().chain(&containers) {
        for mount in container.volume_mounts.iter().flatten() {
            if mounted.insert(mount.mount_path.clone()) {
                let source = pod.dir.join("volumes").join(&mount.name);
                script.push_str(&format!(
                    "mkdir -p {path}\nmount --bind {} {path}\n",
                    source.display(),
                    path = mount.mount_path
                ));
            }
        }
    }
    for container in &init {
        script.push_str(&launch_line(container, images, pod, false)?);
    }
    for container in &containers {
        script.push_str(&launch_line(container, images, pod, true)?);
    }
    script.push_str("wait\n");
    Ok(script)
}

/// The script line that runs `container` with its image's command, its args and env (values
/// and the pod's name and namespace from the downward API), logging to `<pod>-<name>.log`.
fn launch_line(
    container: &Container,
    images: &Images,
    pod: &PodEnv<'_>,
    background: bool,
) -> anyhow::Result<String> {
    let image = container.image.clone().unwrap_or_default();
    let command = images
        .get(&image)
        .with_context(|| format!("no command for image {image}"))?;
    let mut env = vec![format!(
        "PATH={}",
        std::env::var("PATH").unwrap_or_default()
    )];
    for var in container.env.iter().flatten() {
        let value = match (&var.value, &var.value_from) {
            (Some(value), _) => value.clone(),
            (None, Some(from)) => match from.field_ref.as_ref().map(|f| f.field_path.as_str()) {
                Some("metadata.name") => pod.name.to_owned(),
                Some("metadata.namespace") => pod.namespace.to_owned(),
                _ => String::new(),
            },
            _ => String::new(),
        };
        env.push(format!("{}={}", var.name, value));
    }
    let args = command
        .iter()
        .chain(container.args.iter().flatten())
        .map(|a| shell_quote(a))
        .collect::<Vec<_>>()
        .join(" ");
    let env = env
        .iter()
        .map(|e| shell_quote(e))
        .collect::<Vec<_>>()
        .join(" ");
    let log = pod
        .logs
        .join(format!("{}-{}.log", pod.name, container.name));
    Ok(format!(
        "env -i {env} {args} >{} 2>&1{}\n",
        log.display(),
        if background { " &" } else { "" }
    ))
}

fn shell_quote(text: &str) -> String {
    format!("'{}'", text.replace('\'', "'\\''"))
}

impl Drop for RunningPod {
    fn drop(&mut self) {
        self.sync.abort();
        // The launcher leads a process group holding every container.
        if let Ok(pid) = i32::try_from(self.launcher.id()) {
            let _ = Command::new("kill")
                .args(["-KILL", "--", &format!("-{pid}")])
                .status();
        }
        let _ = self.launcher.wait();
        let _ = run("ip", &["netns", "del", &self.netns]);
        let _ = run("ip", &["link", "del", &self.host_veth]);
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// How long [`RunningPod::start_with`] waits for a pod's volumes to get their content before
/// failing (a kubelet keeps the pod waiting; a test wants the reason).
pub const MOUNT_TIMEOUT: Duration = Duration::from_secs(10);

/// How often volumes are synced.
const SYNC_INTERVAL: Duration = Duration::from_millis(500);

/// The longest a projected token is kept before it is refreshed, whatever its lifetime (the
/// kubelet's token manager's `maxTTL`).
const MAX_TOKEN_AGE: Duration = Duration::from_secs(24 * 3600);

/// The lifetime of a projected token whose source names none (the API server's default).
const DEFAULT_TOKEN_SECONDS: i64 = 3600;

/// The volumes of one pod kept in sync with the API server, as the kubelet's volume manager
/// keeps them.
struct VolumeSync {
    client: Client,
    namespace: String,
    pod: String,
    owner: TokenOwner,
    volumes: Vec<SyncedVolume>,
    log: PathBuf,
}

/// Whose tokens projected volumes hold: the pod's ServiceAccount, bound to the pod.
struct TokenOwner {
    service_account: String,
    pod: String,
    uid: String,
    refresh: Option<Duration>,
}

/// A volume directory kept in sync, what it is synced from, and its last error (logged once).
struct SyncedVolume {
    name: String,
    target: PathBuf,
    source: VolumeSource,
    error: Option<String>,
}

enum VolumeSource {
    ConfigMap(String),
    Secret(String),
    /// A projected volume of ServiceAccount tokens (its only source kind supported here).
    Tokens(Vec<ProjectedToken>),
}

/// One `serviceAccountToken` source of a projected volume, and the token last issued for it.
struct ProjectedToken {
    path: String,
    audience: Option<String>,
    expiration_seconds: i64,
    issued: Option<IssuedToken>,
}

/// A token and when to replace it. Never logged.
struct IssuedToken {
    token: String,
    refresh_at: Instant,
}

impl VolumeSync {
    /// Makes a directory under `volumes` for each volume of `pod`, and fills those synced
    /// from the API server, retrying for up to [`MOUNT_TIMEOUT`]. Fails at once on a volume
    /// this stand-in cannot play.
    async fn mount(
        client: &Client,
        pod: &Pod,
        volumes: &Path,
        logs: &Path,
        options: &StartOptions,
    ) -> anyhow::Result<Self> {
        let spec = pod.spec.as_ref().context("pod without spec")?;
        let name = pod.name_any();
        let mut synced = Vec::new();
        for volume in spec.volumes.iter().flatten() {
            let target = volumes.join(&volume.name);
            std::fs::create_dir_all(&target)?;
            let source = if let Some(cm) = &volume.config_map {
                VolumeSource::ConfigMap(cm.name.clone())
            } else if let Some(secret) = &volume.secret {
                VolumeSource::Secret(secret.secret_name.clone().unwrap_or_default())
            } else if let Some(projected) = &volume.projected {
                VolumeSource::Tokens(
                    projected_tokens(projected)
                        .with_context(|| format!("volume {:?}", volume.name))?,
                )
            } else {
                continue;
            };
            synced.push(SyncedVolume {
                name: volume.name.clone(),
                target,
                source,
                error: None,
            });
        }
        let mut sync = Self {
            client: client.clone(),
            namespace: pod.namespace().context("pod without namespace")?,
            owner: TokenOwner {
                service_account: service_account(spec),
                pod: name.clone(),
                uid: pod.uid().context("pod without uid")?,
                refresh: options.token_refresh,
            },
            log: logs.join(format!("{name}-volumes.log")),
            pod: name,
            volumes: synced,
        };
        let deadline = Instant::now() + MOUNT_TIMEOUT;
        loop {
            match sync.sync_all().await {
                Ok(()) => return Ok(sync),
                Err(err) if Instant::now() >= deadline => {
                    return Err(err.context(format!(
                        "volumes not ready after {MOUNT_TIMEOUT:?} (log: {})",
                        sync.log.display()
                    )));
                }
                Err(_) => tokio::time::sleep(SYNC_INTERVAL).await,
            }
        }
    }

    /// Syncs every volume every 500 ms, forever.
    async fn run(mut self) {
        let mut interval = tokio::time::interval(SYNC_INTERVAL);
        loop {
            interval.tick().await;
            let _ = self.sync_all().await;
        }
    }

    /// Syncs each volume, logging each new error (and a recovery); fails with the first error.
    async fn sync_all(&mut self) -> anyhow::Result<()> {
        let mut first = None;
        for volume in &mut self.volumes {
            let result = volume
                .sync(&self.client, &self.namespace, &self.owner)
                .await
                .with_context(|| format!("volume {:?}", volume.name));
            let line = match &result {
                Err(err) => {
                    let text = format!("{err:#}");
                    if volume.error.as_deref() == Some(text.as_str()) {
                        None
                    } else {
                        volume.error = Some(text.clone());
                        Some(text)
                    }
                }
                Ok(()) => volume
                    .error
                    .take()
                    .map(|_| format!("volume {:?}: synced again", volume.name)),
            };
            if let Some(line) = line {
                log_line(
                    &self.log,
                    &format!("pod {}/{}: {line}", self.namespace, self.pod),
                );
            }
            if let Err(err) = result {
                first.get_or_insert(err);
            }
        }
        first.map_or(Ok(()), Err)
    }
}

/// Appends `line` to `log` and prints it on stderr, as a kubelet logs a volume's errors.
fn log_line(log: &Path, line: &str) {
    use std::io::Write as _;
    eprintln!("kubelet: {line}");
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    if let Ok(mut file) = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(log)
    {
        let _ = writeln!(file, "{now} {line}");
    }
}

/// The pod's ServiceAccount: `default` when the spec names none, as the ServiceAccount
/// admission plugin would have set it. That plugin is off in the e2e control plane, and the API
/// server binds a token only to a pod whose spec names its account: there, a pod with a
/// projected token must name its ServiceAccount.
fn service_account(spec: &PodSpec) -> String {
    spec.service_account_name
        .clone()
        .filter(|name| !name.is_empty())
        .unwrap_or_else(|| "default".to_owned())
}

/// The `serviceAccountToken` sources of a projected volume; refuses any other kind of source.
fn projected_tokens(projected: &ProjectedVolumeSource) -> anyhow::Result<Vec<ProjectedToken>> {
    let mut tokens = Vec::new();
    for source in projected.sources.iter().flatten() {
        let other = [
            ("configMap", source.config_map.is_some()),
            ("secret", source.secret.is_some()),
            ("downwardAPI", source.downward_api.is_some()),
            ("clusterTrustBundle", source.cluster_trust_bundle.is_some()),
            ("podCertificate", source.pod_certificate.is_some()),
        ];
        if let Some((kind, _)) = other.iter().find(|(_, present)| *present) {
            bail!(
                "projected {kind} sources are not supported by the e2e kubelet stand-in \
                 (only serviceAccountToken)"
            );
        }
        let token = source
            .service_account_token
            .as_ref()
            .context("a projected source of a kind the e2e kubelet stand-in does not know")?;
        tokens.push(ProjectedToken {
            path: token.path.clone(),
            audience: token.audience.clone().filter(|a| !a.is_empty()),
            expiration_seconds: token.expiration_seconds.unwrap_or(DEFAULT_TOKEN_SECONDS),
            issued: None,
        });
    }
    Ok(tokens)
}

/// When the kubelet's token manager replaces a token that lives `ttl`: at 80 % of its
/// lifetime, and after 24 hours at the latest (its random jitter of up to 10 s left out).
fn kubelet_refresh(ttl: Duration) -> Duration {
    (ttl * 4 / 5).min(MAX_TOKEN_AGE)
}

impl SyncedVolume {
    /// Brings the volume's files up to date with its source.
    async fn sync(
        &mut self,
        client: &Client,
        namespace: &str,
        owner: &TokenOwner,
    ) -> anyhow::Result<()> {
        let data: BTreeMap<String, Vec<u8>> = match &mut self.source {
            VolumeSource::ConfigMap(name) => {
                Api::<ConfigMap>::namespaced(client.clone(), namespace)
                    .get_opt(name)
                    .await?
                    .and_then(|cm| cm.data)
                    .unwrap_or_default()
                    .into_iter()
                    .map(|(k, v)| (k, v.into_bytes()))
                    .collect()
            }
            VolumeSource::Secret(name) => Api::<Secret>::namespaced(client.clone(), namespace)
                .get_opt(name)
                .await?
                .and_then(|s| s.data)
                .unwrap_or_default()
                .into_iter()
                .map(|(k, v)| (k, v.0))
                .collect(),
            VolumeSource::Tokens(tokens) => {
                let mut data = BTreeMap::new();
                for token in tokens {
                    data.insert(
                        token.path.clone(),
                        token.current(client, namespace, owner).await?.into_bytes(),
                    );
                }
                data
            }
        };
        write_atomically(&self.target, &data)
    }
}

impl ProjectedToken {
    /// The token to write: the one issued last, or a new one when that is due for refresh.
    /// When a refresh fails, the volume keeps the last token (the error is the caller's to
    /// log), as the kubelet's token manager serves its cached token until it expires.
    async fn current(
        &mut self,
        client: &Client,
        namespace: &str,
        owner: &TokenOwner,
    ) -> anyhow::Result<String> {
        if let Some(issued) = &self.issued
            && Instant::now() < issued.refresh_at
        {
            return Ok(issued.token.clone());
        }
        let request = TokenRequest {
            spec: Some(TokenRequestSpec {
                audiences: self.audience.clone().map(|a| vec![a]),
                expiration_seconds: Some(self.expiration_seconds),
                bound_object_ref: Some(BoundObjectReference {
                    kind: Some("Pod".to_owned()),
                    api_version: Some("v1".to_owned()),
                    name: Some(owner.pod.clone()),
                    uid: Some(owner.uid.clone()),
                }),
                ..Default::default()
            }),
            ..Default::default()
        };
        let answer = Api::<ServiceAccount>::namespaced(client.clone(), namespace)
            .create_token_request(&owner.service_account, &PostParams::default(), &request)
            .await
            .with_context(|| {
                format!(
                    "requesting a token of ServiceAccount {namespace}/{} for {:?}",
                    owner.service_account, self.path
                )
            })?;
        let token = answer
            .status
            .and_then(|s| s.token)
            .context("a TokenRequest answer without a token")?;
        // The lifetime the API server granted, which may differ from the one asked for.
        let seconds = answer
            .spec
            .and_then(|s| s.expiration_seconds)
            .unwrap_or(self.expiration_seconds);
        let ttl = Duration::from_secs(u64::try_from(seconds).unwrap_or(0));
        let refresh = owner.refresh.unwrap_or_else(|| kubelet_refresh(ttl));
        self.issued = Some(IssuedToken {
            token: token.clone(),
            refresh_at: Instant::now() + refresh,
        });
        Ok(token)
    }
}

static VERSION: AtomicU32 = AtomicU32::new(0);

/// Writes `data` (file paths in the volume, and their content) the way the kubelet's atomic
/// writer does: files in a fresh timestamped directory, `..data` pointing at it (swapped
/// atomically), and each top-level name a symlink through `..data`. Writes only when the
/// content changed.
fn write_atomically(target: &Path, data: &BTreeMap<String, Vec<u8>>) -> anyhow::Result<()> {
    let current = target.join("..data");
    let top: std::collections::BTreeSet<&str> = data
        .keys()
        .filter_map(|path| path.split('/').next())
        .collect();
    let unchanged = data
        .iter()
        .all(|(k, v)| std::fs::read(current.join(k)).ok().as_ref() == Some(v))
        && std::fs::read_dir(&current)
            .map(|d| d.count())
            .unwrap_or(usize::MAX)
            == top.len();
    if unchanged {
        return Ok(());
    }
    let version = format!(
        "..{}_{}",
        std::process::id(),
        VERSION.fetch_add(1, Ordering::Relaxed)
    );
    let fresh = target.join(&version);
    std::fs::create_dir_all(&fresh)?;
    for (path, value) in data {
        let file = fresh.join(path);
        if let Some(parent) = file.parent() {
            std::fs::create_dir_all(parent)?;
        }
        std::fs::write(file, value)?;
    }
    let tmp = target.join("..data_tmp");
    let _ = std::fs::remove_file(&tmp);
    std::os::unix::fs::symlink(&version, &tmp)?;
    let old = std::fs::read_link(&current).ok();
    std::fs::rename(&tmp, &current)?;
    for name in top {
        let link = target.join(name);
        if std::fs::symlink_metadata(&link).is_err() {
            std::os::unix::fs::symlink(format!("..data/{name}"), &link)?;
        }
    }
    if let Some(old) = old {
        let _ = std::fs::remove_dir_all(target.join(old));
    }
    Ok(())
}
