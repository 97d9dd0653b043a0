//! What the webhook adds to a pod for a policy: the sidecar container (and the port lock's
//! init container), the volumes it mounts, the app containers' mounts of the CA bundle and
//! the mint socket, and the app's HTTP probes routed through the sidecar's admin port.

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::{
    Capabilities, ConfigMapVolumeSource, Container, ContainerPort, EmptyDirVolumeSource, EnvVar,
    EnvVarSource, HTTPGetAction, ObjectFieldSelector, Pod, Probe, ProjectedVolumeSource,
    ResourceRequirements, SeccompProfile, SecretVolumeSource, SecurityContext,
    ServiceAccountTokenProjection, Volume, VolumeMount, VolumeProjection,
};
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use kube::ResourceExt;
use scopegate_crds::v1alpha1::AuthPolicy;
use serde::{Deserialize, Serialize};

use crate::names::{
    self, APP_CA_MOUNT_DIR, CA_CONFIGMAP, INJECTED_ANNOTATION, LISTEN_TLS_MOUNT_DIR,
    MINT_SOCKET_DIR, Names, PORT_LOCK_NAME, SIDECAR_NAME,
};

/// Env var carrying the app's original HTTP probes, which the sidecar's admin port serves at
/// `/app-health/<container>/<kind>`.
pub const APP_PROBES_ENV: &str = "SCOPEGATE_APP_PROBES";

/// What the injector needs to know about the cluster and the sidecar.
#[derive(Debug, Clone)]
pub struct InjectionSettings {
    /// Sidecar image reference.
    pub image: String,
    /// Image pull policy.
    pub pull_policy: String,
    /// Run the sidecar as a native sidecar (an init container with restartPolicy Always,
    /// Kubernetes ≥ 1.29); else as a regular container.
    pub native_sidecar: bool,
    /// CPU request, e.g. `10m`.
    pub cpu_request: String,
    /// Memory request, e.g. `32Mi`.
    pub memory_request: String,
    /// Memory limit, e.g. `128Mi`.
    pub memory_limit: String,
    /// The HTTPS proxy the sidecar's own requests (identity providers, external JWKS) go
    /// through, as `HTTPS_PROXY`; none when empty.
    pub https_proxy: String,
    /// Hosts reached directly even with a proxy, as `NO_PROXY` (set with `https_proxy` only).
    pub no_proxy: String,
}

/// `HTTPS_PROXY` and `NO_PROXY` for the sidecar, when a proxy is configured.
fn proxy_env(settings: &InjectionSettings) -> Vec<EnvVar> {
    if settings.https_proxy.is_empty() {
        return Vec::new();
    }
    let var = |name: &str, value: &str| EnvVar {
        name: name.into(),
        value: Some(value.into()),
        ..Default::default()
    };
    let mut env = vec![var("HTTPS_PROXY", &settings.https_proxy)];
    if !settings.no_proxy.is_empty() {
        env.push(var("NO_PROXY", &settings.no_proxy));
    }
    env
}

/// An original app probe, as the sidecar replays it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AppProbe {
    /// The app's port.
    pub port: i32,
    /// The path probed.
    pub path: String,
}

/// Prefix of every volume the injection adds.
pub const VOLUME_PREFIX: &str = "scopegate-";

/// The names of the containers the injection adds.
pub fn own_container(name: &str) -> bool {
    name == SIDECAR_NAME || name == PORT_LOCK_NAME
}

/// The audiences of the ServiceAccount tokens the sidecar presents to issuers, mounted into
/// the sidecar only: the URL of the issuer of the policy's egress client and of its sessions'
/// client, each when the policy has it and the client resolves.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TokenAudiences {
    /// For egress (file [`names::SA_TOKEN_FILE`]).
    pub egress: Option<String>,
    /// For sessions (file [`names::SESSION_SA_TOKEN_FILE`]).
    pub sessions: Option<String>,
}

/// Adds the sidecar, its volumes and the app-side mounts to `pod`.
pub fn inject(
    pod: &mut Pod,
    policy: &AuthPolicy,
    settings: &InjectionSettings,
    audiences: &TokenAudiences,
) {
    let spec = pod.spec.get_or_insert_with(Default::default);
    let Volumes {
        volumes,
        sidecar_mounts,
        app_mount,
        mint_mount,
    } = volumes(policy, audiences);
    // The mint socket goes only into the containers the policy names (default: the first).
    let minters = minting_containers(policy, &spec.containers);
    // The app's HTTP probes go through the sidecar's admin port, which replays them.
    let mut probes: BTreeMap<String, AppProbe> = BTreeMap::new();
    for container in &mut spec.containers {
        probes.extend(route_probes(container));
        let mounts = container.volume_mounts.get_or_insert_with(Vec::new);
        mounts.push(app_mount.clone());
        if let Some(mint) = &mint_mount
            && minters.contains(&container.name)
        {
            mounts.push(mint.clone());
        }
    }
    let sidecar = sidecar(policy, settings, &probes, sidecar_mounts);
    if settings.native_sidecar {
        spec.init_containers
            .get_or_insert_with(Vec::new)
            .insert(0, sidecar);
    } else {
        spec.containers.insert(0, sidecar);
    }
    if policy.spec.inbound.port_lock {
        // First of all: no container of the pod runs before the lock is in place.
        spec.init_containers
            .get_or_insert_with(Vec::new)
            .insert(0, port_lock(policy, settings));
    }
    spec.volumes.get_or_insert_with(Vec::new).extend(volumes);
    pod.metadata
        .annotations
        .get_or_insert_with(BTreeMap::new)
        .insert(INJECTED_ANNOTATION.into(), policy.name_any());
}

/// Lifetime asked for the sidecar's ServiceAccount token: the API server's minimum, since the
/// token is good for nothing but the issuer (the kubelet renews it at 80 %).
pub const ISSUER_TOKEN_SECONDS: i64 = 600;

/// The volumes injection adds and who mounts them.
struct Volumes {
    /// The pod's new volumes, in order.
    volumes: Vec<Volume>,
    /// The sidecar's mounts of them.
    sidecar_mounts: Vec<VolumeMount>,
    /// Every app container's mount of the CA bundle.
    app_mount: VolumeMount,
    /// The mint socket's mount, for the containers that mint (issuers only).
    mint_mount: Option<VolumeMount>,
}

fn config_map_volume(name: &str, config_map: String, optional: bool) -> Volume {
    Volume {
        name: name.into(),
        config_map: Some(ConfigMapVolumeSource {
            name: config_map,
            optional: optional.then_some(true),
            ..Default::default()
        }),
        ..Volume::default()
    }
}

fn secret_volume(name: &str, secret: String, optional: bool) -> Volume {
    Volume {
        name: name.into(),
        secret: Some(SecretVolumeSource {
            secret_name: Some(secret),
            optional: optional.then_some(true),
            ..Default::default()
        }),
        ..Volume::default()
    }
}

/// The volumes for `policy`: its sidecar config and the CA bundle always; an issuer's keys,
/// client registry, certificate, mint socket and upstream secrets; the Redis credentials and
/// the listener certificate when the spec names them; the ServiceAccount tokens for egress
/// and sessions, and the session keys.
fn volumes(policy: &AuthPolicy, audiences: &TokenAudiences) -> Volumes {
    let names_of = Names::of(&policy.name_any());
    let mut volumes = vec![
        config_map_volume("scopegate-config", names_of.sidecar.clone(), false),
        config_map_volume("scopegate-ca", CA_CONFIGMAP.into(), true),
    ];
    let mut sidecar_mounts = vec![mount("scopegate-config", names::CONFIG_MOUNT_DIR)];
    let mut mint_mount = None;
    let own = policy.spec.issuer.self_.as_ref();
    if own.is_some() {
        for (volume, secret, dir) in [
            (
                "scopegate-signing-keys",
                &names_of.signing_keys,
                names::SIGNING_KEYS_MOUNT_DIR,
            ),
            (
                "scopegate-clients",
                &names_of.clients,
                names::CLIENTS_MOUNT_DIR,
            ),
            ("scopegate-tls", &names_of.tls, names::TLS_MOUNT_DIR),
        ] {
            volumes.push(secret_volume(volume, secret.clone(), false));
            sidecar_mounts.push(mount(volume, dir));
        }
        volumes.push(Volume {
            name: "scopegate-mint".into(),
            empty_dir: Some(EmptyDirVolumeSource {
                medium: Some("Memory".into()),
                ..Default::default()
            }),
            ..Volume::default()
        });
        let writable = VolumeMount {
            read_only: Some(false),
            ..mount("scopegate-mint", MINT_SOCKET_DIR)
        };
        sidecar_mounts.push(writable.clone());
        mint_mount = Some(writable);
        // Upstream client secrets: issuer pods only, never the app container. Mounted even
        // before any upstream is declared (the Secret is optional), so that adding one to a
        // running issuer needs no restart.
        volumes.push(secret_volume(
            "scopegate-upstreams",
            names_of.upstreams,
            true,
        ));
        sidecar_mounts.push(mount(
            "scopegate-upstreams",
            scopegate_core::upstream::SECRETS_DIR,
        ));
    }
    let redis_credentials = own
        .and_then(|own| own.store.redis.as_ref())
        .and_then(|redis| redis.credentials_secret.clone());
    if let Some(secret) = redis_credentials {
        volumes.push(secret_volume("scopegate-redis", secret, false));
        sidecar_mounts.push(mount("scopegate-redis", names::REDIS_CREDENTIALS_MOUNT_DIR));
    }
    if let Some(tls) = &policy.spec.listen.tls_secret {
        volumes.push(secret_volume("scopegate-listen-tls", tls.clone(), false));
        sidecar_mounts.push(mount("scopegate-listen-tls", LISTEN_TLS_MOUNT_DIR));
    }
    let tokens: Vec<VolumeProjection> = [
        (
            policy.spec.egress.is_some(),
            &audiences.egress,
            names::SA_TOKEN_FILE,
        ),
        (
            policy.spec.sessions.is_some(),
            &audiences.sessions,
            names::SESSION_SA_TOKEN_FILE,
        ),
    ]
    .into_iter()
    .filter_map(|(wanted, audience, file)| {
        Some(token_projection(
            audience.as_ref().filter(|_| wanted)?,
            file,
        ))
    })
    .collect();
    if !tokens.is_empty() {
        // The pod's own identity, for the issuers only: short-lived, in the sidecar only.
        volumes.push(Volume {
            name: "scopegate-issuer-token".into(),
            projected: Some(ProjectedVolumeSource {
                sources: Some(tokens),
                ..ProjectedVolumeSource::default()
            }),
            ..Volume::default()
        });
        sidecar_mounts.push(mount("scopegate-issuer-token", names::SA_TOKEN_MOUNT_DIR));
    }
    if policy.spec.sessions.is_some() {
        // The keys that seal session cookies: the sidecar only, never the app. Optional, so
        // that a pod made before the operator wrote them starts and gets them once they exist.
        volumes.push(secret_volume(
            "scopegate-session-keys",
            names_of.session_keys.clone(),
            true,
        ));
        sidecar_mounts.push(mount(
            "scopegate-session-keys",
            scopegate_core::session::SESSION_KEYS_MOUNT_DIR,
        ));
    }
    Volumes {
        volumes,
        sidecar_mounts,
        app_mount: mount("scopegate-ca", APP_CA_MOUNT_DIR),
        mint_mount,
    }
}

/// A ServiceAccount token for `audience`, at `file` of the token volume.
fn token_projection(audience: &str, file: &str) -> VolumeProjection {
    VolumeProjection {
        service_account_token: Some(ServiceAccountTokenProjection {
            audience: Some(audience.to_owned()),
            expiration_seconds: Some(ISSUER_TOKEN_SECONDS),
            path: file.to_owned(),
            user: None,
        }),
        ..VolumeProjection::default()
    }
}

/// Points `container`'s HTTP probes at the sidecar's admin port, and returns the originals,
/// keyed `<container>/<kind>`, for the sidecar to replay.
fn route_probes(container: &mut Container) -> Vec<(String, AppProbe)> {
    let mut originals = Vec::new();
    let ports = container.ports.clone().unwrap_or_default();
    for (kind, probe) in [
        ("liveness", &mut container.liveness_probe),
        ("readiness", &mut container.readiness_probe),
        ("startup", &mut container.startup_probe),
    ] {
        let Some(get) = probe.as_mut().and_then(|p| p.http_get.as_mut()) else {
            continue;
        };
        let port = match &get.port {
            IntOrString::Int(p) => *p,
            IntOrString::String(name) => ports
                .iter()
                .find(|p| p.name.as_deref() == Some(name))
                .map_or(0, |p| p.container_port),
        };
        originals.push((
            format!("{}/{kind}", container.name),
            AppProbe {
                port,
                path: get.path.clone().unwrap_or_else(|| "/".into()),
            },
        ));
        get.port = IntOrString::Int(i32::from(names::SIDECAR_ADMIN_PORT));
        get.path = Some(format!("/app-health/{}/{kind}", container.name));
        get.scheme = Some("HTTP".into());
        get.host = None;
    }
    originals
}

/// The sidecar container.
fn sidecar(
    policy: &AuthPolicy,
    settings: &InjectionSettings,
    probes: &BTreeMap<String, AppProbe>,
    mounts: Vec<VolumeMount>,
) -> Container {
    let port = |name: &str, number: i32| ContainerPort {
        name: Some(name.into()),
        container_port: number,
        ..Default::default()
    };
    Container {
        name: SIDECAR_NAME.into(),
        image: Some(settings.image.clone()),
        image_pull_policy: Some(settings.pull_policy.clone()),
        args: Some(vec![
            "--config".into(),
            format!(
                "{}/{}",
                names::CONFIG_MOUNT_DIR,
                scopegate_core::config::CONFIG_FILE
            ),
        ]),
        env: Some(sidecar_env(settings, probes)),
        ports: Some(vec![
            port("scopegate", policy.spec.listen.port),
            port("scopegate-admin", i32::from(names::SIDECAR_ADMIN_PORT)),
        ]),
        restart_policy: settings.native_sidecar.then(|| "Always".to_owned()),
        startup_probe: Some(http_probe("/healthz", 1, 60)),
        readiness_probe: Some(http_probe("/readyz", 5, 3)),
        liveness_probe: Some(http_probe("/healthz", 10, 3)),
        resources: Some(resources(settings)),
        security_context: Some(SecurityContext {
            run_as_non_root: Some(true),
            run_as_user: Some(65532),
            run_as_group: Some(65532),
            capabilities: Some(Capabilities {
                drop: Some(vec!["ALL".into()]),
                ..Default::default()
            }),
            ..locked_down()
        }),
        volume_mounts: Some(mounts),
        ..Container::default()
    }
}

/// The sidecar's environment: its pod's name and namespace, the app probes it replays, and
/// the proxy.
fn sidecar_env(settings: &InjectionSettings, probes: &BTreeMap<String, AppProbe>) -> Vec<EnvVar> {
    let field = |name: &str, path: &str| EnvVar {
        name: name.into(),
        value_from: Some(EnvVarSource {
            field_ref: Some(ObjectFieldSelector {
                field_path: path.into(),
                ..Default::default()
            }),
            ..Default::default()
        }),
        ..Default::default()
    };
    vec![
        field("POD_NAME", "metadata.name"),
        field("POD_NAMESPACE", "metadata.namespace"),
        EnvVar {
            name: APP_PROBES_ENV.into(),
            value: Some(serde_json::to_string(probes).unwrap_or_default()),
            ..Default::default()
        },
    ]
    .into_iter()
    .chain(proxy_env(settings))
    .collect()
}

/// Requests and limits of the containers injection adds.
fn resources(settings: &InjectionSettings) -> ResourceRequirements {
    ResourceRequirements {
        requests: Some(BTreeMap::from([
            ("cpu".to_owned(), Quantity(settings.cpu_request.clone())),
            (
                "memory".to_owned(),
                Quantity(settings.memory_request.clone()),
            ),
        ])),
        limits: Some(BTreeMap::from([(
            "memory".to_owned(),
            Quantity(settings.memory_limit.clone()),
        )])),
        ..Default::default()
    }
}

/// What every container injection adds runs with: a read-only root, no privilege
/// escalation, the runtime's seccomp profile.
fn locked_down() -> SecurityContext {
    SecurityContext {
        read_only_root_filesystem: Some(true),
        allow_privilege_escalation: Some(false),
        seccomp_profile: Some(SeccompProfile {
            type_: "RuntimeDefault".into(),
            ..Default::default()
        }),
        ..Default::default()
    }
}

/// A read-only mount of volume `name` at `path`.
pub(super) fn mount(name: &str, path: &str) -> VolumeMount {
    VolumeMount {
        name: name.to_owned(),
        mount_path: path.to_owned(),
        read_only: Some(true),
        ..VolumeMount::default()
    }
}

fn http_probe(path: &str, period: i32, failures: i32) -> Probe {
    Probe {
        http_get: Some(HTTPGetAction {
            path: Some(path.to_owned()),
            port: IntOrString::Int(i32::from(names::SIDECAR_ADMIN_PORT)),
            ..HTTPGetAction::default()
        }),
        period_seconds: Some(period),
        failure_threshold: Some(failures),
        ..Probe::default()
    }
}

/// The names of the app containers that get the mint socket: those `mintSocketContainers`
/// names, or the first container when it names none.
fn minting_containers(policy: &AuthPolicy, containers: &[Container]) -> Vec<String> {
    let named = policy
        .spec
        .issuer
        .self_
        .as_ref()
        .map(|own| own.mint_socket_containers.clone())
        .unwrap_or_default();
    if named.is_empty() {
        containers
            .first()
            .map(|c| c.name.clone())
            .into_iter()
            .collect()
    } else {
        containers
            .iter()
            .filter(|c| named.contains(&c.name))
            .map(|c| c.name.clone())
            .collect()
    }
}

/// The init container that installs the inbound port lock: the sidecar image in its
/// `port-lock` mode, allowing the sidecar's listener and its admin port (the kubelet's
/// probes). It runs as root with NET_ADMIN only: capabilities added to a non-root user are not
/// effective without file capabilities, which a scratch image does not carry.
pub fn port_lock(policy: &AuthPolicy, settings: &InjectionSettings) -> Container {
    Container {
        name: PORT_LOCK_NAME.into(),
        image: Some(settings.image.clone()),
        image_pull_policy: Some(settings.pull_policy.clone()),
        args: Some(vec![
            "port-lock".into(),
            "--allow".into(),
            policy.spec.listen.port.to_string(),
            "--allow".into(),
            names::SIDECAR_ADMIN_PORT.to_string(),
        ]),
        resources: Some(resources(settings)),
        security_context: Some(SecurityContext {
            run_as_non_root: Some(false),
            run_as_user: Some(0),
            run_as_group: Some(0),
            capabilities: Some(Capabilities {
                add: Some(vec!["NET_ADMIN".into()]),
                drop: Some(vec!["ALL".into()]),
            }),
            ..locked_down()
        }),
        ..Container::default()
    }
}
