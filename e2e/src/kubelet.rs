//! Playing a node's part for pods that exist only as API objects: each pod runs as processes
//! (its containers, from the args and env the API server stored) in a network namespace of its
//! own, on a bridge the test process can reach, with the ConfigMaps and Secrets its volumes name
//! kept in sync the way the kubelet does (a `..data` symlink swapped atomically), bind-mounted
//! at the paths its containers mount them, and Services as kube-proxy makes them: names in its
//! /etc/hosts for a cluster IP, and a DNAT rule from the Service port to the endpoint. Init
//! containers run first, to completion, in the pod's network namespace (the port lock's
//! nftables rules land there).
//!
//! Needs root (network and mount namespaces), like a kubelet.

use std::collections::BTreeMap;
use std::net::{Ipv4Addr, SocketAddr};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicU8, AtomicU32, Ordering};
use std::time::Duration;

use anyhow::{Context as _, bail};
use k8s_openapi::api::core::v1::{ConfigMap, Container, Pod, PodSpec, Secret};
use kube::api::Api;
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

        plug_in(network, &netns, &host_veth, ip, host)?;
        route_services(&netns, services)?;
        let sync = sync_volumes(client, &namespace, &spec, &dir.join("volumes")).await?;
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

/// Makes a directory under `volumes` for each volume of `spec`; ConfigMaps and Secrets are
/// synced into theirs like the kubelet does, now and then every 500 ms by the task returned.
async fn sync_volumes(
    client: &Client,
    namespace: &str,
    spec: &PodSpec,
    volumes: &Path,
) -> anyhow::Result<tokio::task::JoinHandle<()>> {
    let mut synced: Vec<(PathBuf, VolumeSource)> = Vec::new();
    for volume in spec.volumes.iter().flatten() {
        let target = volumes.join(&volume.name);
        std::fs::create_dir_all(&target)?;
        if let Some(cm) = &volume.config_map {
            synced.push((target, VolumeSource::ConfigMap(cm.name.clone())));
        } else if let Some(secret) = &volume.secret {
            let name = secret.secret_name.clone().unwrap_or_default();
            synced.push((target, VolumeSource::Secret(name)));
        }
    }
    for (target, source) in &synced {
        sync_volume(client, namespace, target, source).await?;
    }
    let (client, namespace) = (client.clone(), namespace.to_owned());
    Ok(tokio::spawn(async move {
        let mut interval = tokio::time::interval(Duration::from_millis(500));
        loop {
            interval.tick().await;
            for (target, source) in &synced {
                let _ = sync_volume(&client, &namespace, target, source).await;
            }
        }
    }))
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

enum VolumeSource {
    ConfigMap(String),
    Secret(String),
}

static VERSION: AtomicU32 = AtomicU32::new(0);

/// Writes the object's keys the way the kubelet does: files in a fresh timestamped directory,
/// `..data` pointing at it (swapped atomically), and each key a symlink through `..data`.
/// Writes only when the content changed.
async fn sync_volume(
    client: &Client,
    namespace: &str,
    target: &Path,
    source: &VolumeSource,
) -> anyhow::Result<()> {
    let data: BTreeMap<String, Vec<u8>> = match source {
        VolumeSource::ConfigMap(name) => Api::<ConfigMap>::namespaced(client.clone(), namespace)
            .get_opt(name)
            .await?
            .and_then(|cm| cm.data)
            .unwrap_or_default()
            .into_iter()
            .map(|(k, v)| (k, v.into_bytes()))
            .collect(),
        VolumeSource::Secret(name) => Api::<Secret>::namespaced(client.clone(), namespace)
            .get_opt(name)
            .await?
            .and_then(|s| s.data)
            .unwrap_or_default()
            .into_iter()
            .map(|(k, v)| (k, v.0))
            .collect(),
    };
    let current = target.join("..data");
    let unchanged = data
        .iter()
        .all(|(k, v)| std::fs::read(current.join(k)).ok().as_ref() == Some(v))
        && std::fs::read_dir(&current)
            .map(|d| d.count())
            .unwrap_or(usize::MAX)
            == data.len();
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
    for (key, value) in &data {
        std::fs::write(fresh.join(key), value)?;
    }
    let tmp = target.join("..data_tmp");
    let _ = std::fs::remove_file(&tmp);
    std::os::unix::fs::symlink(&version, &tmp)?;
    let old = std::fs::read_link(&current).ok();
    std::fs::rename(&tmp, &current)?;
    for key in data.keys() {
        let link = target.join(key);
        if std::fs::symlink_metadata(&link).is_err() {
            std::os::unix::fs::symlink(format!("..data/{key}"), &link)?;
        }
    }
    if let Some(old) = old {
        let _ = std::fs::remove_dir_all(target.join(old));
    }
    Ok(())
}
