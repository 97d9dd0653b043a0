//! Pure sidecar injection: given a pod and the AuthPolicies of its namespace, decide whether
//! to admit it unchanged, inject the sidecar, or refuse it — and build the JSON patch.

use std::collections::BTreeMap;

use crate::names::{
    self, APP_CA_MOUNT_DIR, CA_CONFIGMAP, INJECTED_ANNOTATION, LISTEN_TLS_MOUNT_DIR,
    MINT_SOCKET_DIR, Names, PORT_LOCK_NAME, SIDECAR_NAME,
};
use k8s_openapi::api::core::v1::{
    Capabilities, ConfigMapVolumeSource, Container, ContainerPort, EmptyDirVolumeSource, EnvVar,
    EnvVarSource, HTTPGetAction, ObjectFieldSelector, Pod, Probe, ResourceRequirements,
    SeccompProfile, SecretVolumeSource, SecurityContext, Volume, VolumeMount,
};
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelector;
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use kube::ResourceExt;
use scopegate_crds::v1alpha1::AuthPolicy;
use serde::{Deserialize, Serialize};

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

/// The injector's verdict.
#[derive(Debug, Clone, PartialEq)]
pub enum Decision {
    /// Admit the pod as it is.
    Unchanged,
    /// Admit it with this JSON patch (RFC 6902) applied.
    Patch(Vec<serde_json::Value>),
    /// Refuse it, saying why.
    Deny(String),
}

/// Whether `selector` selects `labels` (matchLabels and matchExpressions).
pub fn selects(selector: &LabelSelector, labels: &BTreeMap<String, String>) -> bool {
    let labels_match = selector
        .match_labels
        .iter()
        .flatten()
        .all(|(k, v)| labels.get(k) == Some(v));
    let expressions_match = selector.match_expressions.iter().flatten().all(|e| {
        let value = labels.get(&e.key);
        let values = e.values.clone().unwrap_or_default();
        match e.operator.as_str() {
            "In" => value.is_some_and(|v| values.contains(v)),
            "NotIn" => value.is_none_or(|v| !values.contains(v)),
            "Exists" => value.is_some(),
            "DoesNotExist" => value.is_none(),
            _ => false,
        }
    });
    labels_match && expressions_match
}

/// The order in which policies claim a pod several of them select: the oldest first (by
/// creation time, then name, so that the order is total).
pub fn seniority(policy: &AuthPolicy) -> (Option<k8s_openapi::jiff::Timestamp>, String) {
    (
        policy.metadata.creation_timestamp.as_ref().map(|t| t.0),
        policy.name_any(),
    )
}

/// An original app probe, as the sidecar replays it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AppProbe {
    /// The app's port.
    pub port: i32,
    /// The path probed.
    pub path: String,
}

/// Decides what to do with `pod` given every AuthPolicy of its namespace.
pub fn decide(pod: &Pod, policies: &[&AuthPolicy], settings: &InjectionSettings) -> Decision {
    let labels = pod.labels();
    let selecting: Vec<&AuthPolicy> = policies
        .iter()
        .copied()
        .filter(|p| selects(&p.spec.selector, labels))
        .collect();
    // When several select it, the oldest keeps it (the others report a Conflict): a newer
    // policy, however wide its selector, never takes pods from one that was there first nor
    // blocks their creation.
    let Some(policy) = selecting.into_iter().min_by_key(|p| seniority(p)) else {
        return Decision::Unchanged;
    };
    if carries_marks(pod) {
        return match verify_injected(pod, policy, settings) {
            Ok(()) => Decision::Unchanged,
            Err(why) => Decision::Deny(why),
        };
    }
    if let Some(why) = borrows_our_volumes(pod) {
        return Decision::Deny(format!(
            "pod refused: {why}; the scopegate-* volumes are the webhook's to add and mount (the mint socket goes only into the containers AuthPolicy {} names in issuer.self.mintSocketContainers)",
            policy.name_any()
        ));
    }
    let mut mutated = pod.clone();
    inject(&mut mutated, policy, settings);
    let original = serde_json::to_value(pod).unwrap_or_default();
    let changed = serde_json::to_value(&mutated).unwrap_or_default();
    Decision::Patch(diff(&original, &changed))
}

/// Prefix of every volume the injection adds.
const VOLUME_PREFIX: &str = "scopegate-";

/// The names of the containers the injection adds.
fn own_container(name: &str) -> bool {
    name == SIDECAR_NAME || name == PORT_LOCK_NAME
}

/// Whether the pod carries anything only the injection should write: a container with one of
/// its names, or its annotation.
fn carries_marks(pod: &Pod) -> bool {
    let spec = pod.spec.as_ref();
    let containers = spec
        .into_iter()
        .flat_map(|s| s.init_containers.iter().flatten().chain(&s.containers));
    containers.map(|c| c.name.as_str()).any(own_container)
        || pod.annotations().contains_key(INJECTED_ANNOTATION)
}

/// Whether a pod not yet injected names a volume only injection adds, in its volumes or in a
/// container's mounts (a mount of `scopegate-mint` would become valid once the webhook adds
/// the volume, handing that container the mint socket). Says which.
fn borrows_our_volumes(pod: &Pod) -> Option<String> {
    let spec = pod.spec.as_ref()?;
    if let Some(volume) = spec
        .volumes
        .iter()
        .flatten()
        .find(|v| v.name.starts_with(VOLUME_PREFIX))
    {
        return Some(format!("it declares the volume {}", volume.name));
    }
    spec.init_containers
        .iter()
        .flatten()
        .chain(&spec.containers)
        .find_map(|c| {
            c.volume_mounts
                .iter()
                .flatten()
                .find(|m| m.name.starts_with(VOLUME_PREFIX))
                .map(|m| format!("its {} container mounts the volume {}", c.name, m.name))
        })
}

/// The pod without what injection adds: its containers, its volumes, the app containers'
/// mounts of them and the annotation (the app's rewritten probes stay; nothing compared here
/// reads them).
fn strip(pod: &Pod) -> Pod {
    let mut base = pod.clone();
    if let Some(annotations) = base.metadata.annotations.as_mut() {
        annotations.remove(INJECTED_ANNOTATION);
    }
    if let Some(spec) = base.spec.as_mut() {
        if let Some(init) = spec.init_containers.as_mut() {
            init.retain(|c| !own_container(&c.name));
        }
        spec.containers.retain(|c| !own_container(&c.name));
        if let Some(volumes) = spec.volumes.as_mut() {
            volumes.retain(|v| !v.name.starts_with(VOLUME_PREFIX));
        }
        for container in spec
            .init_containers
            .iter_mut()
            .flatten()
            .chain(spec.containers.iter_mut())
        {
            if let Some(mounts) = container.volume_mounts.as_mut() {
                mounts.retain(|m| !m.name.starts_with(VOLUME_PREFIX));
            }
        }
    }
    base
}

/// A container's fields that decide what it runs and what it can reach, with the API
/// server's defaults and the pod-dependent probe list taken out.
fn essential(container: &Container) -> Container {
    let env = container.env.clone().map(|env| {
        env.into_iter()
            .map(|mut var| {
                if var.name == APP_PROBES_ENV {
                    var.value = None;
                }
                if let Some(field) = var.value_from.as_mut().and_then(|f| f.field_ref.as_mut()) {
                    field.api_version = None;
                }
                var
            })
            .collect()
    });
    let volume_mounts = container.volume_mounts.clone().map(|mounts| {
        mounts
            .into_iter()
            .map(|mut m| {
                if m.read_only == Some(false) {
                    m.read_only = None;
                }
                m
            })
            .collect()
    });
    Container {
        name: container.name.clone(),
        image: container.image.clone(),
        command: container.command.clone(),
        args: container.args.clone(),
        env,
        env_from: container.env_from.clone(),
        volume_mounts,
        volume_devices: container.volume_devices.clone(),
        security_context: container.security_context.clone(),
        restart_policy: container.restart_policy.clone(),
        lifecycle: container.lifecycle.clone(),
        working_dir: container.working_dir.clone(),
        ..Container::default()
    }
}

/// The fields in which two essential containers differ, by their pod-spec names.
fn differences(got: &Container, want: &Container) -> Vec<&'static str> {
    let fields: [(&str, bool); 12] = [
        ("image", got.image == want.image),
        ("command", got.command == want.command),
        ("args", got.args == want.args),
        ("env", got.env == want.env),
        ("envFrom", got.env_from == want.env_from),
        ("volumeMounts", got.volume_mounts == want.volume_mounts),
        ("volumeDevices", got.volume_devices == want.volume_devices),
        (
            "securityContext",
            got.security_context == want.security_context,
        ),
        ("restartPolicy", got.restart_policy == want.restart_policy),
        ("lifecycle", got.lifecycle == want.lifecycle),
        ("workingDir", got.working_dir == want.working_dir),
        ("name", got.name == want.name),
    ];
    fields
        .into_iter()
        .filter(|(_, same)| !same)
        .map(|(name, _)| name)
        .collect()
}

/// A volume with the API server's defaults taken out.
fn essential_volume(volume: &Volume) -> Volume {
    let mut volume = volume.clone();
    if let Some(cm) = volume.config_map.as_mut()
        && cm.default_mode == Some(0o644)
    {
        cm.default_mode = None;
    }
    if let Some(secret) = volume.secret.as_mut()
        && secret.default_mode == Some(0o644)
    {
        secret.default_mode = None;
    }
    volume
}

/// Where a container sits: (in initContainers, the container).
fn find_container<'a>(pod: &'a Pod, name: &str) -> Option<(bool, &'a Container)> {
    let spec = pod.spec.as_ref()?;
    spec.init_containers
        .iter()
        .flatten()
        .find(|c| c.name == name)
        .map(|c| (true, c))
        .or_else(|| {
            spec.containers
                .iter()
                .find(|c| c.name == name)
                .map(|c| (false, c))
        })
}

/// Checks that a pod carrying injection's marks carries exactly what the webhook renders for
/// `policy`: its containers (image, command, args, env, mounts, security context, ...), the
/// volumes they and the app containers mount, and the annotation. Says why not.
pub fn verify_injected(
    pod: &Pod,
    policy: &AuthPolicy,
    settings: &InjectionSettings,
) -> Result<(), String> {
    let name = policy.name_any();
    let refuse = |why: String| {
        Err(format!(
            "{why}; a pod may not bring its own scopegate sidecar or mark: remove the {SIDECAR_NAME} container, the scopegate-* volumes and the {INJECTED_ANNOTATION} annotation, and the webhook injects the sidecar of AuthPolicy {name}"
        ))
    };
    let mut rendered = strip(pod);
    inject(&mut rendered, policy, settings);

    let mut problems = Vec::new();
    match pod.annotations().get(INJECTED_ANNOTATION) {
        Some(value) if *value == name => {}
        Some(value) => problems.push(format!(
            "its {INJECTED_ANNOTATION} annotation names AuthPolicy {value}, but {name} selects it"
        )),
        None => problems.push(format!(
            "it carries a {SIDECAR_NAME} container without the {INJECTED_ANNOTATION} annotation"
        )),
    }
    let rendered_spec = rendered.spec.clone().unwrap_or_default();
    let ours: Vec<(bool, &Container)> = rendered_spec
        .init_containers
        .iter()
        .flatten()
        .map(|c| (true, c))
        .chain(rendered_spec.containers.iter().map(|c| (false, c)))
        .filter(|(_, c)| own_container(&c.name))
        .collect();
    for (init, want) in &ours {
        match find_container(pod, &want.name) {
            None if problems.is_empty() => problems.push(format!(
                "it carries the {INJECTED_ANNOTATION} annotation but no {} container",
                want.name
            )),
            None => problems.push(format!("it has no {} container", want.name)),
            Some((got_init, got)) => {
                let mut fields = differences(&essential(got), &essential(want));
                if got_init != *init {
                    fields.push(if *init {
                        "placement (it belongs in initContainers)"
                    } else {
                        "placement (it belongs in containers)"
                    });
                }
                if !fields.is_empty() {
                    problems.push(format!(
                        "its {} container is not the one the webhook renders: it differs in {}",
                        want.name,
                        fields.join(", ")
                    ));
                }
            }
        }
    }
    // A container of injection's names that the webhook does not render for this policy
    // (a port lock of the pod's own making, say).
    for (_, got) in pod
        .spec
        .iter()
        .flat_map(|s| {
            s.init_containers
                .iter()
                .flatten()
                .map(|c| (true, c))
                .chain(s.containers.iter().map(|c| (false, c)))
        })
        .filter(|(_, c)| own_container(&c.name))
    {
        if !ours.iter().any(|(_, want)| want.name == got.name) {
            problems.push(format!(
                "it carries a {} container that the webhook does not render for AuthPolicy {name}",
                got.name
            ));
        }
    }
    // The app containers' mounts of injected volumes (the mint socket goes only where the
    // policy says), and the volumes themselves.
    let spec = pod.spec.clone().unwrap_or_default();
    let mounts_of = |containers: &[Container], name: &str| -> Vec<VolumeMount> {
        containers
            .iter()
            .find(|c| c.name == name)
            .and_then(|c| c.volume_mounts.clone())
            .unwrap_or_default()
            .into_iter()
            .filter(|m| m.name.starts_with(VOLUME_PREFIX))
            .map(|mut m| {
                if m.read_only == Some(false) {
                    m.read_only = None;
                }
                m
            })
            .collect()
    };
    let all = |s: &k8s_openapi::api::core::v1::PodSpec| -> Vec<Container> {
        s.init_containers
            .iter()
            .flatten()
            .chain(&s.containers)
            .filter(|c| !own_container(&c.name))
            .cloned()
            .collect()
    };
    let (app, rendered_app) = (all(&spec), all(&rendered_spec));
    for container in &rendered_app {
        if mounts_of(&app, &container.name) != mounts_of(&rendered_app, &container.name) {
            problems.push(format!(
                "its {} container mounts scopegate volumes other than the webhook renders for it",
                container.name
            ));
        }
    }
    let volumes: BTreeMap<&str, &Volume> = spec
        .volumes
        .iter()
        .flatten()
        .map(|v| (v.name.as_str(), v))
        .collect();
    for want in rendered_spec.volumes.iter().flatten() {
        if !want.name.starts_with(VOLUME_PREFIX) {
            continue;
        }
        match volumes.get(want.name.as_str()) {
            Some(got) if essential_volume(got) == essential_volume(want) => {}
            Some(_) => problems.push(format!(
                "its volume {} is not the one the webhook renders",
                want.name
            )),
            None => problems.push(format!("it lacks the volume {}", want.name)),
        }
    }
    let rendered_names: Vec<&str> = rendered_spec
        .volumes
        .iter()
        .flatten()
        .map(|v| v.name.as_str())
        .collect();
    for extra in volumes
        .keys()
        .filter(|v| v.starts_with(VOLUME_PREFIX) && !rendered_names.contains(v))
    {
        problems.push(format!("its volume {extra} is not one the webhook renders"));
    }
    match problems.as_slice() {
        [] => Ok(()),
        _ => refuse(format!("pod refused: {}", problems.join("; "))),
    }
}

/// Top-level JSON patch from `before` to `after` for the fields injection touches.
fn diff(before: &serde_json::Value, after: &serde_json::Value) -> Vec<serde_json::Value> {
    let mut ops = Vec::new();
    for path in [
        "/metadata/annotations",
        "/spec/initContainers",
        "/spec/containers",
        "/spec/volumes",
    ] {
        let (old, new) = (before.pointer(path), after.pointer(path));
        if old != new {
            let op = if old.is_some() { "replace" } else { "add" };
            ops.push(serde_json::json!({"op": op, "path": path, "value": new}));
        }
    }
    ops
}

fn mount(name: &str, path: &str) -> VolumeMount {
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

/// Adds the sidecar, its volumes and the app-side mounts to `pod`.
pub fn inject(pod: &mut Pod, policy: &AuthPolicy, settings: &InjectionSettings) {
    let names_of = Names::of(&policy.name_any());
    let issuer = policy.spec.issuer.self_.is_some();
    let spec = pod.spec.get_or_insert_with(Default::default);

    let mut volumes = vec![Volume {
        name: "scopegate-config".into(),
        config_map: Some(ConfigMapVolumeSource {
            name: names_of.sidecar.clone(),
            ..Default::default()
        }),
        ..Volume::default()
    }];
    let mut sidecar_mounts = vec![mount("scopegate-config", names::CONFIG_MOUNT_DIR)];
    let app_mount = mount("scopegate-ca", APP_CA_MOUNT_DIR);
    let mut mint_mount = None;
    volumes.push(Volume {
        name: "scopegate-ca".into(),
        config_map: Some(ConfigMapVolumeSource {
            name: CA_CONFIGMAP.into(),
            optional: Some(true),
            ..Default::default()
        }),
        ..Volume::default()
    });
    if issuer {
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
            volumes.push(Volume {
                name: volume.into(),
                secret: Some(SecretVolumeSource {
                    secret_name: Some(secret.clone()),
                    ..Default::default()
                }),
                ..Volume::default()
            });
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
    }
    // The mint socket goes only into the containers the policy names (default: the first).
    let minters = minting_containers(policy, &spec.containers);
    if policy.spec.issuer.self_.is_some() {
        // Upstream client secrets: issuer pods only, never the app container. Mounted even
        // before any upstream is declared (the Secret is optional), so that adding one to a
        // running issuer needs no restart.
        volumes.push(Volume {
            name: "scopegate-upstreams".into(),
            secret: Some(SecretVolumeSource {
                secret_name: Some(scopegate_core::upstream::secret_name(&policy.name_any())),
                optional: Some(true),
                ..Default::default()
            }),
            ..Volume::default()
        });
        sidecar_mounts.push(mount(
            "scopegate-upstreams",
            scopegate_core::upstream::SECRETS_DIR,
        ));
    }
    let redis_credentials = policy
        .spec
        .issuer
        .self_
        .as_ref()
        .and_then(|own| own.store.redis.as_ref())
        .and_then(|redis| redis.credentials_secret.clone());
    if let Some(secret) = redis_credentials {
        volumes.push(Volume {
            name: "scopegate-redis".into(),
            secret: Some(SecretVolumeSource {
                secret_name: Some(secret),
                ..Default::default()
            }),
            ..Volume::default()
        });
        sidecar_mounts.push(mount("scopegate-redis", names::REDIS_CREDENTIALS_MOUNT_DIR));
    }
    if let Some(tls) = &policy.spec.listen.tls_secret {
        volumes.push(Volume {
            name: "scopegate-listen-tls".into(),
            secret: Some(SecretVolumeSource {
                secret_name: Some(tls.clone()),
                ..Default::default()
            }),
            ..Volume::default()
        });
        sidecar_mounts.push(mount("scopegate-listen-tls", LISTEN_TLS_MOUNT_DIR));
    }

    // The app's HTTP probes go through the sidecar's admin port, which replays them.
    let mut probes: BTreeMap<String, AppProbe> = BTreeMap::new();
    for container in &mut spec.containers {
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
                IntOrString::String(name) => container
                    .ports
                    .iter()
                    .flatten()
                    .find(|p| p.name.as_deref() == Some(name))
                    .map_or(0, |p| p.container_port),
            };
            probes.insert(
                format!("{}/{kind}", container.name),
                AppProbe {
                    port,
                    path: get.path.clone().unwrap_or_else(|| "/".into()),
                },
            );
            get.port = IntOrString::Int(i32::from(names::SIDECAR_ADMIN_PORT));
            get.path = Some(format!("/app-health/{}/{kind}", container.name));
            get.scheme = Some("HTTP".into());
            get.host = None;
        }
        let mounts = container.volume_mounts.get_or_insert_with(Vec::new);
        mounts.push(app_mount.clone());
        if let Some(mint) = &mint_mount
            && minters.contains(&container.name)
        {
            mounts.push(mint.clone());
        }
    }

    let field = |path: &str| EnvVarSource {
        field_ref: Some(ObjectFieldSelector {
            field_path: path.into(),
            ..Default::default()
        }),
        ..Default::default()
    };
    let sidecar = Container {
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
        env: Some(
            vec![
                EnvVar {
                    name: "POD_NAME".into(),
                    value_from: Some(field("metadata.name")),
                    ..Default::default()
                },
                EnvVar {
                    name: "POD_NAMESPACE".into(),
                    value_from: Some(field("metadata.namespace")),
                    ..Default::default()
                },
                EnvVar {
                    name: APP_PROBES_ENV.into(),
                    value: Some(serde_json::to_string(&probes).unwrap_or_default()),
                    ..Default::default()
                },
            ]
            .into_iter()
            .chain(proxy_env(settings))
            .collect(),
        ),
        ports: Some(vec![
            ContainerPort {
                name: Some("scopegate".into()),
                container_port: policy.spec.listen.port,
                ..Default::default()
            },
            ContainerPort {
                name: Some("scopegate-admin".into()),
                container_port: i32::from(names::SIDECAR_ADMIN_PORT),
                ..Default::default()
            },
        ]),
        restart_policy: settings.native_sidecar.then(|| "Always".to_owned()),
        startup_probe: Some(http_probe("/healthz", 1, 60)),
        readiness_probe: Some(http_probe("/readyz", 5, 3)),
        liveness_probe: Some(http_probe("/healthz", 10, 3)),
        resources: Some(ResourceRequirements {
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
        }),
        security_context: Some(SecurityContext {
            run_as_non_root: Some(true),
            run_as_user: Some(65532),
            run_as_group: Some(65532),
            read_only_root_filesystem: Some(true),
            allow_privilege_escalation: Some(false),
            capabilities: Some(Capabilities {
                drop: Some(vec!["ALL".into()]),
                ..Default::default()
            }),
            seccomp_profile: Some(SeccompProfile {
                type_: "RuntimeDefault".into(),
                ..Default::default()
            }),
            ..Default::default()
        }),
        volume_mounts: Some(sidecar_mounts),
        ..Container::default()
    };
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
        resources: Some(ResourceRequirements {
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
        }),
        security_context: Some(SecurityContext {
            run_as_non_root: Some(false),
            run_as_user: Some(0),
            run_as_group: Some(0),
            read_only_root_filesystem: Some(true),
            allow_privilege_escalation: Some(false),
            capabilities: Some(Capabilities {
                add: Some(vec!["NET_ADMIN".into()]),
                drop: Some(vec!["ALL".into()]),
            }),
            seccomp_profile: Some(SeccompProfile {
                type_: "RuntimeDefault".into(),
                ..Default::default()
            }),
            ..Default::default()
        }),
        ..Container::default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn settings(native: bool) -> InjectionSettings {
        InjectionSettings {
            image: "scopegate/sidecar:test".into(),
            pull_policy: "IfNotPresent".into(),
            native_sidecar: native,
            cpu_request: "10m".into(),
            memory_request: "32Mi".into(),
            memory_limit: "128Mi".into(),
            https_proxy: String::new(),
            no_proxy: String::new(),
        }
    }

    fn policy(name: &str, selector: &str, issuer: bool) -> AuthPolicy {
        let issuer = if issuer {
            "self: {url: https://auth.example, service: {name: auth, port: 443}}"
        } else {
            "policyRef: {name: auth}"
        };
        serde_yaml_ng::from_str(&format!(
            "apiVersion: scopegate.dev/v1alpha1\nkind: AuthPolicy\nmetadata: {{name: {name}, namespace: shop}}\nspec:\n  selector: {selector}\n  issuer: {{{issuer}}}\n  audiences: [x]\n  upstream: {{port: 8080}}\n"
        ))
        .unwrap()
    }

    fn pod(labels: &str) -> Pod {
        serde_yaml_ng::from_str(&format!(
            r#"
apiVersion: v1
kind: Pod
metadata: {{name: p, namespace: shop, labels: {labels}}}
spec:
  containers:
    - name: app
      image: app
      ports: [{{name: http, containerPort: 8080}}]
      readinessProbe: {{httpGet: {{path: /ready, port: http}}}}
      livenessProbe: {{httpGet: {{path: /live, port: 8080}}}}
"#
        ))
        .unwrap()
    }

    /// The pod spec after injecting for `policy` (which must patch).
    fn injected_spec(
        pod: &Pod,
        policy: &AuthPolicy,
        settings: &InjectionSettings,
    ) -> k8s_openapi::api::core::v1::PodSpec {
        let Decision::Patch(ops) = decide(pod, &[policy], settings) else {
            panic!("no patch")
        };
        apply(pod, &ops).spec.unwrap()
    }

    fn apply(pod: &Pod, ops: &[serde_json::Value]) -> Pod {
        let mut value = serde_json::to_value(pod).unwrap();
        for op in ops {
            let path = op["path"].as_str().unwrap();
            let (parent, key) = path.rsplit_once('/').unwrap();
            let target = if parent.is_empty() {
                &mut value
            } else {
                value.pointer_mut(parent).unwrap()
            };
            target[key] = op["value"].clone();
        }
        serde_json::from_value(value).unwrap()
    }

    #[test]
    fn an_unselected_pod_is_untouched() {
        let p = policy("orders", "{matchLabels: {app: orders}}", false);
        assert_eq!(
            decide(&pod("{app: other}"), &[&p], &settings(true)),
            Decision::Unchanged
        );
    }

    #[test]
    fn a_verifier_pod_gets_a_locked_down_native_sidecar_and_rewritten_probes() {
        let p = policy("orders", "{matchLabels: {app: orders}}", false);
        let original = pod("{app: orders}");
        let Decision::Patch(ops) = decide(&original, &[&p], &settings(true)) else {
            panic!("no patch")
        };
        let injected = apply(&original, &ops);
        let spec = injected.spec.clone().unwrap();
        let sidecar = &spec.init_containers.as_ref().unwrap()[0];
        assert_eq!(sidecar.name, SIDECAR_NAME);
        assert_eq!(sidecar.restart_policy.as_deref(), Some("Always"));
        assert!(sidecar.startup_probe.is_some());
        let security = sidecar.security_context.as_ref().unwrap();
        assert_eq!(security.run_as_non_root, Some(true));
        assert_eq!(security.read_only_root_filesystem, Some(true));
        assert_eq!(
            security.capabilities.as_ref().unwrap().drop.as_deref(),
            Some(&["ALL".to_owned()][..])
        );
        let app = &spec.containers[0];
        let readiness = app
            .readiness_probe
            .as_ref()
            .unwrap()
            .http_get
            .as_ref()
            .unwrap();
        assert_eq!(readiness.port, IntOrString::Int(15090));
        assert_eq!(readiness.path.as_deref(), Some("/app-health/app/readiness"));
        let probes = sidecar
            .env
            .as_ref()
            .unwrap()
            .iter()
            .find(|e| e.name == APP_PROBES_ENV)
            .unwrap();
        let probes: BTreeMap<String, AppProbe> =
            serde_json::from_str(probes.value.as_deref().unwrap()).unwrap();
        assert_eq!(
            probes["app/readiness"],
            AppProbe {
                port: 8080,
                path: "/ready".into()
            }
        );
        assert_eq!(
            probes["app/liveness"],
            AppProbe {
                port: 8080,
                path: "/live".into()
            }
        );
        let volumes: Vec<_> = spec.volumes.unwrap().into_iter().map(|v| v.name).collect();
        assert_eq!(
            volumes,
            ["scopegate-config", "scopegate-ca"],
            "a verifier mounts no secret"
        );
        assert_eq!(injected.annotations()[INJECTED_ANNOTATION], "orders");
    }

    #[test]
    fn an_issuer_pod_mounts_its_secrets_and_shares_the_mint_socket_with_the_app() {
        let p = policy("auth", "{matchLabels: {app: auth}}", true);
        let original = pod("{app: auth}");
        let spec = injected_spec(&original, &p, &settings(true));
        let volumes: Vec<_> = spec.volumes.unwrap().into_iter().map(|v| v.name).collect();
        for v in [
            "scopegate-signing-keys",
            "scopegate-clients",
            "scopegate-tls",
            "scopegate-mint",
        ] {
            assert!(volumes.contains(&v.to_owned()), "{v}");
        }
        let app_mounts: Vec<_> = spec.containers[0]
            .volume_mounts
            .clone()
            .unwrap()
            .into_iter()
            .map(|m| m.mount_path)
            .collect();
        assert!(app_mounts.contains(&MINT_SOCKET_DIR.to_owned()));
        assert!(app_mounts.contains(&APP_CA_MOUNT_DIR.to_owned()));
    }

    #[test]
    fn a_configured_proxy_reaches_the_sidecar_only() {
        let original = pod("{app: auth}");
        let env_of = |settings: &InjectionSettings| {
            let plain = policy("auth", "{matchLabels: {app: auth}}", true);
            let spec = injected_spec(&original, &plain, settings);
            let sidecar = spec
                .init_containers
                .unwrap_or_default()
                .into_iter()
                .find(|c| c.name == SIDECAR_NAME)
                .unwrap();
            let names = |c: &Container| -> Vec<(String, Option<String>)> {
                c.env
                    .clone()
                    .unwrap_or_default()
                    .into_iter()
                    .map(|e| (e.name, e.value))
                    .filter(|(n, _)| n.contains("PROXY"))
                    .collect()
            };
            (names(&sidecar), names(&spec.containers[0]))
        };
        assert_eq!(
            env_of(&settings(true)),
            (vec![], vec![]),
            "no proxy, no env"
        );
        let proxied = InjectionSettings {
            https_proxy: "http://proxy.corp:3128".into(),
            no_proxy: ".svc,.cluster.local".into(),
            ..settings(true)
        };
        let (sidecar, app) = env_of(&proxied);
        assert_eq!(
            sidecar,
            [
                (
                    "HTTPS_PROXY".to_owned(),
                    Some("http://proxy.corp:3128".to_owned())
                ),
                (
                    "NO_PROXY".to_owned(),
                    Some(".svc,.cluster.local".to_owned())
                ),
            ]
        );
        assert!(app.is_empty(), "the app's environment is its own");
    }

    #[test]
    fn upstream_client_secrets_are_mounted_into_the_sidecar_only() {
        let original = pod("{app: auth}");
        let verifier = policy("orders", "{matchLabels: {app: auth}}", false);
        let spec = injected_spec(&original, &verifier, &settings(true));
        assert!(
            !spec
                .volumes
                .unwrap()
                .iter()
                .any(|v| v.name == "scopegate-upstreams"),
            "a verifier pod gets no upstream secrets"
        );
        // An issuer without upstreams yet gets the optional volume, so that adding one later
        // needs no restart.
        let plain = policy("auth", "{matchLabels: {app: auth}}", true);
        let spec = injected_spec(&original, &plain, &settings(true));
        let volume = spec
            .volumes
            .unwrap()
            .into_iter()
            .find(|v| v.name == "scopegate-upstreams")
            .expect("the upstreams volume before any upstream");
        assert_eq!(volume.secret.unwrap().optional, Some(true));
        let mut with = plain.clone();
        with.spec.issuer.self_.as_mut().unwrap().upstreams = serde_yaml_ng::from_str(
            "[{name: google, clientId: c, clientSecretRef: {name: g, key: k}, oidc: {issuer: https://accounts.google.com}}]",
        )
        .unwrap();
        let spec = injected_spec(&original, &with, &settings(true));
        let volume = spec
            .volumes
            .unwrap()
            .into_iter()
            .find(|v| v.name == "scopegate-upstreams")
            .expect("the upstreams volume");
        let source = volume.secret.unwrap();
        assert_eq!(source.secret_name.as_deref(), Some("auth-upstreams"));
        let sidecar = spec
            .init_containers
            .unwrap_or_default()
            .into_iter()
            .chain(spec.containers.clone())
            .find(|c| c.name == "scopegate-sidecar")
            .expect("the sidecar");
        assert!(sidecar.volume_mounts.unwrap().iter().any(|m| {
            m.name == "scopegate-upstreams" && m.mount_path == scopegate_core::upstream::SECRETS_DIR
        }));
        let app = &spec.containers[0];
        assert_ne!(app.name, "scopegate-sidecar");
        assert!(
            !app.volume_mounts
                .clone()
                .unwrap_or_default()
                .iter()
                .any(|m| m.name == "scopegate-upstreams"),
            "the app never sees the upstream secrets"
        );
    }

    #[test]
    fn injecting_twice_injects_once() {
        let p = policy("orders", "{matchLabels: {app: orders}}", false);
        let original = pod("{app: orders}");
        let Decision::Patch(ops) = decide(&original, &[&p], &settings(true)) else {
            panic!("no patch")
        };
        let once = apply(&original, &ops);
        assert_eq!(decide(&once, &[&p], &settings(true)), Decision::Unchanged);
    }

    /// The pod as the API server stores it after injection: defaults filled in.
    fn injected_and_defaulted(original: &Pod, p: &AuthPolicy) -> Pod {
        let Decision::Patch(ops) = decide(original, &[p], &settings(true)) else {
            panic!("no patch")
        };
        let mut value = serde_json::to_value(apply(original, &ops)).unwrap();
        for volume in value["spec"]["volumes"].as_array_mut().unwrap() {
            for source in ["configMap", "secret"] {
                if volume.get(source).is_some() {
                    volume[source]["defaultMode"] = 420.into();
                }
            }
        }
        for env in value["spec"]["initContainers"][0]["env"]
            .as_array_mut()
            .unwrap()
        {
            if let Some(field) = env.pointer_mut("/valueFrom/fieldRef") {
                field["apiVersion"] = "v1".into();
            }
        }
        value["spec"]["initContainers"][0]["terminationMessagePath"] =
            "/dev/termination-log".into();
        serde_json::from_value(value).unwrap()
    }

    fn denial(pod: &Pod, p: &AuthPolicy) -> String {
        match decide(pod, &[p], &settings(true)) {
            Decision::Deny(message) => message,
            other => panic!("admitted: {other:?}"),
        }
    }

    #[test]
    fn an_injected_pod_read_back_from_the_api_server_is_admitted_unchanged() {
        let p = policy("auth", "{matchLabels: {app: auth}}", true);
        let stored = injected_and_defaulted(&pod("{app: auth}"), &p);
        assert_eq!(decide(&stored, &[&p], &settings(true)), Decision::Unchanged);
    }

    #[test]
    fn a_forged_injected_annotation_is_refused_saying_why() {
        let p = policy("orders", "{matchLabels: {app: orders}}", false);
        let mut forged = pod("{app: orders}");
        forged.metadata.annotations = Some(BTreeMap::from([(
            INJECTED_ANNOTATION.into(),
            "orders".into(),
        )]));
        let message = denial(&forged, &p);
        assert!(
            message.contains(
                "carries the scopegate.dev/injected annotation but no scopegate-sidecar container"
            ),
            "{message}"
        );
        assert!(message.contains("may not bring its own"), "{message}");
    }

    #[test]
    fn a_look_alike_sidecar_is_refused_naming_what_differs() {
        let p = policy("orders", "{matchLabels: {app: orders}}", false);
        let genuine = injected_and_defaulted(&pod("{app: orders}"), &p);
        let tamper = |edit: &dyn Fn(&mut Container)| {
            let mut pod = genuine.clone();
            edit(&mut pod.spec.as_mut().unwrap().init_containers.as_mut().unwrap()[0]);
            denial(&pod, &p)
        };
        let message =
            tamper(&|c| c.args = Some(vec!["--config".into(), "/tmp/allow-all.json".into()]));
        assert!(message.contains("its scopegate-sidecar container is not the one the webhook renders: it differs in args"), "{message}");
        let message = tamper(&|c| c.image = Some("evil/sidecar".into()));
        assert!(message.contains("differs in image"), "{message}");
        let message = tamper(&|c| {
            c.env.as_mut().unwrap().push(EnvVar {
                name: "SCOPEGATE_PORT".into(),
                value: Some("9999".into()),
                ..Default::default()
            })
        });
        assert!(message.contains("differs in env"), "{message}");
        let message = tamper(&|c| {
            c.volume_mounts
                .as_mut()
                .unwrap()
                .push(mount("app-certs", "/etc/ssl/certs"))
        });
        assert!(message.contains("differs in volumeMounts"), "{message}");
        let message = tamper(&|c| {
            c.security_context.as_mut().unwrap().run_as_user = Some(0);
            c.command = Some(vec!["/bin/sh".into()]);
        });
        assert!(
            message.contains("differs in command, securityContext"),
            "{message}"
        );

        // The same container as a regular one, outside initContainers.
        let mut moved = genuine.clone();
        let spec = moved.spec.as_mut().unwrap();
        let sidecar = spec.init_containers.take().unwrap().remove(0);
        spec.containers.push(sidecar);
        let message = denial(&moved, &p);
        assert!(message.contains("placement"), "{message}");

        // A config volume pointing at a ConfigMap of the attacker's choosing.
        let mut swapped = genuine.clone();
        swapped.spec.as_mut().unwrap().volumes.as_mut().unwrap()[0]
            .config_map
            .as_mut()
            .unwrap()
            .name = "allow-all".into();
        let message = denial(&swapped, &p);
        assert!(
            message.contains("its volume scopegate-config is not the one the webhook renders"),
            "{message}"
        );

        // The annotation naming another policy.
        let mut renamed = genuine.clone();
        renamed
            .metadata
            .annotations
            .as_mut()
            .unwrap()
            .insert(INJECTED_ANNOTATION.into(), "payments".into());
        let message = denial(&renamed, &p);
        assert!(
            message.contains("names AuthPolicy payments, but orders selects it"),
            "{message}"
        );
    }

    #[test]
    fn a_sidecar_without_the_annotation_is_refused() {
        let p = policy("orders", "{matchLabels: {app: orders}}", false);
        let mut pod = injected_and_defaulted(&pod("{app: orders}"), &p);
        pod.metadata.annotations = None;
        let message = denial(&pod, &p);
        assert!(
            message.contains("without the scopegate.dev/injected annotation"),
            "{message}"
        );
    }

    #[test]
    fn an_unselected_pod_with_a_sidecar_of_its_own_is_none_of_our_business() {
        let p = policy("orders", "{matchLabels: {app: orders}}", false);
        let mut pod = injected_and_defaulted(&pod("{app: orders}"), &p);
        pod.metadata.labels = Some(BTreeMap::from([("app".into(), "other".into())]));
        assert_eq!(decide(&pod, &[&p], &settings(true)), Decision::Unchanged);
    }

    #[test]
    fn of_two_selecting_policies_the_older_keeps_the_pod() {
        let created = |p: &mut AuthPolicy, secs: i64| {
            p.metadata.creation_timestamp =
                Some(k8s_openapi::apimachinery::pkg::apis::meta::v1::Time(
                    k8s_openapi::jiff::Timestamp::from_second(secs).unwrap(),
                ));
        };
        let mut older = policy("z-older", "{matchLabels: {app: orders}}", false);
        created(&mut older, 100);
        // A newer policy selecting every pod of the namespace blocks nothing.
        let mut everything = policy("a-newer", "{}", false);
        created(&mut everything, 200);
        for order in [[&older, &everything], [&everything, &older]] {
            let Decision::Patch(ops) = decide(&pod("{app: orders}"), &order, &settings(true))
            else {
                panic!("not injected")
            };
            let injected = apply(&pod("{app: orders}"), &ops);
            assert_eq!(
                injected
                    .annotations()
                    .get(INJECTED_ANNOTATION)
                    .map(String::as_str),
                Some("z-older")
            );
        }
        // Pods only the newer one selects are its own.
        let Decision::Patch(ops) =
            decide(&pod("{app: web}"), &[&older, &everything], &settings(true))
        else {
            panic!("not injected")
        };
        let injected = apply(&pod("{app: web}"), &ops);
        assert_eq!(
            injected
                .annotations()
                .get(INJECTED_ANNOTATION)
                .map(String::as_str),
            Some("a-newer")
        );
    }

    #[test]
    fn older_servers_get_a_classic_container() {
        let p = policy("orders", "{matchLabels: {app: orders}}", false);
        let original = pod("{app: orders}");
        let spec = injected_spec(&original, &p, &settings(false));
        assert_eq!(spec.containers[0].name, SIDECAR_NAME);
        assert!(spec.containers[0].restart_policy.is_none());
        assert!(spec.init_containers.is_none());
    }

    fn locked(name: &str) -> AuthPolicy {
        let mut p = policy(name, "{matchLabels: {app: orders}}", false);
        p.spec.inbound.port_lock = true;
        p
    }

    fn patched(original: &Pod, p: &AuthPolicy) -> Pod {
        let Decision::Patch(ops) = decide(original, &[p], &settings(true)) else {
            panic!("no patch")
        };
        apply(original, &ops)
    }

    #[test]
    fn the_port_lock_runs_first_with_net_admin_only_and_allows_the_sidecar_ports() {
        let mut p = locked("orders");
        p.spec.listen.port = 9443;
        let spec = injected_spec(&pod("{app: orders}"), &p, &settings(true));
        let init = spec.init_containers.unwrap();
        assert_eq!(
            init.iter().map(|c| c.name.as_str()).collect::<Vec<_>>(),
            [PORT_LOCK_NAME, SIDECAR_NAME]
        );
        let lock = &init[0];
        assert_eq!(lock.image.as_deref(), Some("scopegate/sidecar:test"));
        assert_eq!(
            lock.args.as_deref().unwrap(),
            ["port-lock", "--allow", "9443", "--allow", "15090"]
        );
        let security = lock.security_context.clone().unwrap();
        let capabilities = security.capabilities.unwrap();
        assert_eq!(capabilities.add.as_deref().unwrap(), ["NET_ADMIN"]);
        assert_eq!(capabilities.drop.as_deref().unwrap(), ["ALL"]);
        assert_eq!(security.allow_privilege_escalation, Some(false));
        assert_eq!(security.read_only_root_filesystem, Some(true));
        assert!(lock.restart_policy.is_none(), "runs to completion");
        // Classic sidecars too: the lock is an init container either way.
        let spec = injected_spec(&pod("{app: orders}"), &p, &settings(false));
        assert_eq!(spec.init_containers.unwrap()[0].name, PORT_LOCK_NAME);
        // Without portLock, no lock.
        let plain = policy("orders", "{matchLabels: {app: orders}}", false);
        let spec = injected_spec(&pod("{app: orders}"), &plain, &settings(true));
        assert!(
            !spec
                .init_containers
                .unwrap()
                .iter()
                .any(|c| c.name == PORT_LOCK_NAME)
        );
    }

    #[test]
    fn a_port_lock_is_admitted_as_rendered_and_refused_otherwise() {
        let p = locked("orders");
        let genuine = patched(&pod("{app: orders}"), &p);
        assert_eq!(
            decide(&genuine, &[&p], &settings(true)),
            Decision::Unchanged
        );
        let tamper = |edit: &dyn Fn(&mut Vec<Container>)| {
            let mut pod = genuine.clone();
            edit(pod.spec.as_mut().unwrap().init_containers.as_mut().unwrap());
            denial(&pod, &p)
        };
        let message = tamper(&|init| {
            init[0]
                .args
                .as_mut()
                .unwrap()
                .extend(["--allow".into(), "8080".into()])
        });
        assert!(
            message.contains("its scopegate-port-lock container is not the one the webhook renders: it differs in args"),
            "{message}"
        );
        let message = tamper(&|init| {
            init[0]
                .security_context
                .as_mut()
                .unwrap()
                .capabilities
                .as_mut()
                .unwrap()
                .add = Some(vec!["NET_ADMIN".into(), "SYS_ADMIN".into()])
        });
        assert!(message.contains("differs in securityContext"), "{message}");
        let message = tamper(&|init| {
            init.remove(0);
        });
        assert!(
            message.contains("but no scopegate-port-lock container"),
            "{message}"
        );
        // A lock on a pod whose policy renders none.
        let plain = policy("orders", "{matchLabels: {app: orders}}", false);
        let mut foreign = patched(&pod("{app: orders}"), &plain);
        let lock = port_lock(&p, &settings(true));
        foreign
            .spec
            .as_mut()
            .unwrap()
            .init_containers
            .as_mut()
            .unwrap()
            .insert(0, lock);
        let message = denial(&foreign, &plain);
        assert!(
            message.contains(
                "it carries a scopegate-port-lock container that the webhook does not render for AuthPolicy orders"
            ),
            "{message}"
        );
    }

    fn two_containers() -> Pod {
        let mut pod = pod("{app: auth}");
        let mut helper = pod.spec.as_ref().unwrap().containers[0].clone();
        helper.name = "helper".into();
        helper.readiness_probe = None;
        helper.liveness_probe = None;
        pod.spec.as_mut().unwrap().containers.push(helper);
        pod
    }

    fn mints(spec: &k8s_openapi::api::core::v1::PodSpec) -> Vec<String> {
        spec.containers
            .iter()
            .filter(|c| c.name != SIDECAR_NAME)
            .filter(|c| {
                c.volume_mounts
                    .iter()
                    .flatten()
                    .any(|m| m.name == "scopegate-mint")
            })
            .map(|c| c.name.clone())
            .collect()
    }

    #[test]
    fn the_mint_socket_goes_to_the_first_container_or_the_named_ones_only() {
        let mut p = policy("auth", "{matchLabels: {app: auth}}", true);
        let spec = injected_spec(&two_containers(), &p, &settings(true));
        assert_eq!(mints(&spec), ["app"]);
        let both_get_the_ca = spec.containers.iter().all(|c| {
            c.volume_mounts
                .iter()
                .flatten()
                .any(|m| m.name == "scopegate-ca")
        });
        assert!(both_get_the_ca);
        // Classic sidecars: the sidecar is not the "first container".
        let spec = injected_spec(&two_containers(), &p, &settings(false));
        assert_eq!(mints(&spec), ["app"]);
        p.spec.issuer.self_.as_mut().unwrap().mint_socket_containers =
            vec!["helper".into(), "absent".into()];
        let spec = injected_spec(&two_containers(), &p, &settings(true));
        assert_eq!(mints(&spec), ["helper"]);
    }

    #[test]
    fn a_pod_mounting_the_mint_volume_itself_is_refused() {
        let p = policy("auth", "{matchLabels: {app: auth}}", true);
        let mut borrowing = two_containers();
        borrowing.spec.as_mut().unwrap().containers[1].volume_mounts =
            Some(vec![mount("scopegate-mint", MINT_SOCKET_DIR)]);
        let message = denial(&borrowing, &p);
        assert!(
            message.contains("its helper container mounts the volume scopegate-mint"),
            "{message}"
        );
        let mut declaring = two_containers();
        declaring.spec.as_mut().unwrap().volumes = Some(vec![Volume {
            name: "scopegate-mint".into(),
            ..Volume::default()
        }]);
        assert!(denial(&declaring, &p).contains("it declares the volume scopegate-mint"));
        // After injection: the helper given the app's mount.
        let mut widened = patched(&two_containers(), &p);
        let spec = widened.spec.as_mut().unwrap();
        let app_mint = spec.containers[0]
            .volume_mounts
            .clone()
            .unwrap()
            .into_iter()
            .find(|m| m.name == "scopegate-mint")
            .unwrap();
        spec.containers[1]
            .volume_mounts
            .get_or_insert_with(Vec::new)
            .push(app_mint);
        let message = denial(&widened, &p);
        assert!(
            message.contains(
                "its helper container mounts scopegate volumes other than the webhook renders for it"
            ),
            "{message}"
        );
    }

    #[test]
    fn selector_expressions() {
        let labels = BTreeMap::from([("app".to_owned(), "x".to_owned())]);
        let sel = |yaml: &str| -> LabelSelector { serde_yaml_ng::from_str(yaml).unwrap() };
        assert!(selects(
            &sel("{matchExpressions: [{key: app, operator: Exists}]}"),
            &labels
        ));
        assert!(!selects(
            &sel("{matchExpressions: [{key: app, operator: DoesNotExist}]}"),
            &labels
        ));
        assert!(selects(
            &sel("{matchExpressions: [{key: tier, operator: NotIn, values: [a]}]}"),
            &labels
        ));
        assert!(!selects(
            &sel("{matchExpressions: [{key: app, operator: Bogus}]}"),
            &labels
        ));
        assert!(
            selects(&sel("{}"), &labels),
            "an empty selector selects every pod of the namespace"
        );
    }
}
