//! Checking a pod that arrives already carrying injection's marks: it is admitted only when it
//! carries exactly what the webhook renders for the policy that selects it.

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::{Container, Pod, PodSpec, Volume, VolumeMount};
use kube::ResourceExt;
use scopegate_crds::v1alpha1::AuthPolicy;

use super::sidecar::{
    APP_PROBES_ENV, InjectionSettings, TokenAudiences, VOLUME_PREFIX, inject, own_container,
};
use crate::names::{INJECTED_ANNOTATION, SIDECAR_NAME};

/// Checks that a pod carrying injection's marks carries exactly what the webhook renders for
/// `policy`: its containers (image, command, args, env, mounts, security context, ...), the
/// volumes they and the app containers mount, and the annotation. Says why not.
pub fn verify_injected(
    pod: &Pod,
    policy: &AuthPolicy,
    settings: &InjectionSettings,
    audiences: &TokenAudiences,
) -> Result<(), String> {
    let name = policy.name_any();
    let mut rendered = strip(pod);
    inject(&mut rendered, policy, settings, audiences);
    let rendered_spec = rendered.spec.clone().unwrap_or_default();
    let spec = pod.spec.clone().unwrap_or_default();

    let mut problems = annotation_problems(pod, &name);
    container_problems(pod, &rendered_spec, &name, &mut problems);
    problems.extend(mount_problems(&spec, &rendered_spec));
    problems.extend(volume_problems(&spec, &rendered_spec));
    if problems.is_empty() {
        return Ok(());
    }
    Err(format!(
        "pod refused: {}; a pod may not bring its own scopegate sidecar or mark: remove the {SIDECAR_NAME} container, the scopegate-* volumes and the {INJECTED_ANNOTATION} annotation, and the webhook injects the sidecar of AuthPolicy {name}",
        problems.join("; ")
    ))
}

/// Whether the annotation names the policy that selects the pod.
fn annotation_problems(pod: &Pod, name: &str) -> Vec<String> {
    match pod.annotations().get(INJECTED_ANNOTATION) {
        Some(value) if value == name => Vec::new(),
        Some(value) => vec![format!(
            "its {INJECTED_ANNOTATION} annotation names AuthPolicy {value}, but {name} selects it"
        )],
        None => vec![format!(
            "it carries a {SIDECAR_NAME} container without the {INJECTED_ANNOTATION} annotation"
        )],
    }
}

/// The containers of injection's names, each with whether it is an init container.
fn own_containers(spec: &PodSpec) -> Vec<(bool, &Container)> {
    spec.init_containers
        .iter()
        .flatten()
        .map(|c| (true, c))
        .chain(spec.containers.iter().map(|c| (false, c)))
        .filter(|(_, c)| own_container(&c.name))
        .collect()
}

/// Whether the pod has each container the webhook renders, as it renders it and where, and
/// no other of injection's names (a port lock of the pod's own making, say).
fn container_problems(pod: &Pod, rendered: &PodSpec, name: &str, problems: &mut Vec<String>) {
    let ours = own_containers(rendered);
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
    for (_, got) in pod.spec.iter().flat_map(own_containers) {
        if !ours.iter().any(|(_, want)| want.name == got.name) {
            problems.push(format!(
                "it carries a {} container that the webhook does not render for AuthPolicy {name}",
                got.name
            ));
        }
    }
}

/// The app containers' mounts of injected volumes: the mint socket goes only where the
/// policy says.
fn mount_problems(spec: &PodSpec, rendered: &PodSpec) -> Vec<String> {
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
    let apps = |s: &PodSpec| -> Vec<Container> {
        s.init_containers
            .iter()
            .flatten()
            .chain(&s.containers)
            .filter(|c| !own_container(&c.name))
            .cloned()
            .collect()
    };
    let (app, rendered_app) = (apps(spec), apps(rendered));
    rendered_app
        .iter()
        .filter(|c| mounts_of(&app, &c.name) != mounts_of(&rendered_app, &c.name))
        .map(|c| {
            format!(
                "its {} container mounts scopegate volumes other than the webhook renders for it",
                c.name
            )
        })
        .collect()
}

/// The injected volumes: each one the webhook renders, as it renders it, and no other.
fn volume_problems(spec: &PodSpec, rendered: &PodSpec) -> Vec<String> {
    let mut problems = Vec::new();
    let volumes: BTreeMap<&str, &Volume> = spec
        .volumes
        .iter()
        .flatten()
        .map(|v| (v.name.as_str(), v))
        .collect();
    for want in rendered.volumes.iter().flatten() {
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
    let rendered_names: Vec<&str> = rendered
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
    problems
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
    if let Some(projected) = volume.projected.as_mut()
        && projected.default_mode == Some(0o644)
    {
        projected.default_mode = None;
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
