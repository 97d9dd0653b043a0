//! Unit tests of sidecar injection: decisions, the rendered sidecar, and the checks of pods
//! that arrive carrying injection's marks.

use k8s_openapi::api::core::v1::{Container, EnvVar, Volume};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;

use super::sidecar::*;
use super::*;
use crate::names::{APP_CA_MOUNT_DIR, MINT_SOCKET_DIR, PORT_LOCK_NAME, SIDECAR_NAME};

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

/// What the webhook decides for a pod of policies without egress.
fn decide_without_egress(
    pod: &Pod,
    policies: &[&AuthPolicy],
    settings: &InjectionSettings,
) -> Decision {
    decide(pod, policies, settings, &|_| TokenAudiences::default())
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
    let Decision::Patch(ops) = decide_without_egress(pod, &[policy], settings) else {
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
        decide_without_egress(&pod("{app: other}"), &[&p], &settings(true)),
        Decision::Unchanged
    );
}

#[test]
fn a_verifier_pod_gets_a_locked_down_native_sidecar_and_rewritten_probes() {
    let p = policy("orders", "{matchLabels: {app: orders}}", false);
    let original = pod("{app: orders}");
    let Decision::Patch(ops) = decide_without_egress(&original, &[&p], &settings(true)) else {
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
    let Decision::Patch(ops) = decide_without_egress(&original, &[&p], &settings(true)) else {
        panic!("no patch")
    };
    let once = apply(&original, &ops);
    assert_eq!(
        decide_without_egress(&once, &[&p], &settings(true)),
        Decision::Unchanged
    );
}

/// The pod as the API server stores it after injection: defaults filled in.
fn injected_and_defaulted(original: &Pod, p: &AuthPolicy) -> Pod {
    let Decision::Patch(ops) = decide_without_egress(original, &[p], &settings(true)) else {
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
    value["spec"]["initContainers"][0]["terminationMessagePath"] = "/dev/termination-log".into();
    serde_json::from_value(value).unwrap()
}

fn denial(pod: &Pod, p: &AuthPolicy) -> String {
    match decide_without_egress(pod, &[p], &settings(true)) {
        Decision::Deny(message) => message,
        other => panic!("admitted: {other:?}"),
    }
}

#[test]
fn an_injected_pod_read_back_from_the_api_server_is_admitted_unchanged() {
    let p = policy("auth", "{matchLabels: {app: auth}}", true);
    let stored = injected_and_defaulted(&pod("{app: auth}"), &p);
    assert_eq!(
        decide_without_egress(&stored, &[&p], &settings(true)),
        Decision::Unchanged
    );
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
    let message = tamper(&|c| c.args = Some(vec!["--config".into(), "/tmp/allow-all.json".into()]));
    assert!(
        message.contains(
            "its scopegate-sidecar container is not the one the webhook renders: it differs in args"
        ),
        "{message}"
    );
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
    assert_eq!(
        decide_without_egress(&pod, &[&p], &settings(true)),
        Decision::Unchanged
    );
}

#[test]
fn of_two_selecting_policies_the_older_keeps_the_pod() {
    let created = |p: &mut AuthPolicy, secs: i64| {
        p.metadata.creation_timestamp = Some(k8s_openapi::apimachinery::pkg::apis::meta::v1::Time(
            k8s_openapi::jiff::Timestamp::from_second(secs).unwrap(),
        ));
    };
    let mut older = policy("z-older", "{matchLabels: {app: orders}}", false);
    created(&mut older, 100);
    // A newer policy selecting every pod of the namespace blocks nothing.
    let mut everything = policy("a-newer", "{}", false);
    created(&mut everything, 200);
    for order in [[&older, &everything], [&everything, &older]] {
        let Decision::Patch(ops) =
            decide_without_egress(&pod("{app: orders}"), &order, &settings(true))
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
        decide_without_egress(&pod("{app: web}"), &[&older, &everything], &settings(true))
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
    let Decision::Patch(ops) = decide_without_egress(original, &[p], &settings(true)) else {
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
        decide_without_egress(&genuine, &[&p], &settings(true)),
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

#[test]
fn an_egress_policy_gives_the_sidecar_alone_a_short_token_for_the_issuer() {
    let mut p = policy("billing", "{matchLabels: {app: billing}}", false);
    p.spec.egress = Some(
        serde_yaml_ng::from_str(
            "clientRef: {name: billing}\ntargets: [{name: orders, url: 'http://orders.shop.svc', audience: 'https://orders.shop.svc'}]",
        )
        .unwrap(),
    );
    let issuer = |_: &AuthPolicy| TokenAudiences {
        egress: Some("https://auth.shop.svc".to_owned()),
        sessions: None,
    };
    let original = pod("{app: billing}");
    let Decision::Patch(ops) = decide(&original, &[&p], &settings(true), &issuer) else {
        panic!("no patch")
    };
    let injected = apply(&original, &ops);
    let spec = injected.spec.clone().unwrap();
    let volume = (spec.volumes.iter().flatten())
        .find(|v| v.name == "scopegate-issuer-token")
        .expect("the token volume");
    let projection = volume.projected.as_ref().unwrap().sources.as_ref().unwrap()[0]
        .service_account_token
        .clone()
        .unwrap();
    assert_eq!(
        projection.audience.as_deref(),
        Some("https://auth.shop.svc")
    );
    assert_eq!(projection.expiration_seconds, Some(ISSUER_TOKEN_SECONDS));
    let mounted_by = |c: &Container| {
        (c.volume_mounts.iter().flatten()).any(|m| m.name == "scopegate-issuer-token")
    };
    let sidecar = (spec.init_containers.iter().flatten())
        .find(|c| c.name == SIDECAR_NAME)
        .unwrap();
    assert!(mounted_by(sidecar));
    assert!(!spec.containers.iter().any(mounted_by), "never the app");
    // The pod as stored passes the check of a resubmitted pod; one that lends the token to
    // the app does not.
    assert_eq!(
        decide(&injected, &[&p], &settings(true), &issuer),
        Decision::Unchanged
    );
    let mut lending = injected.clone();
    let app = &mut lending.spec.as_mut().unwrap().containers[0];
    app.volume_mounts
        .get_or_insert_with(Vec::new)
        .push(k8s_openapi::api::core::v1::VolumeMount {
            name: "scopegate-issuer-token".into(),
            mount_path: "/token".into(),
            ..Default::default()
        });
    assert!(matches!(
        decide(&lending, &[&p], &settings(true), &issuer),
        Decision::Deny(_)
    ));
    // A hostNetwork pod's loopback is the node's: no egress for it.
    let mut on_the_node = original.clone();
    on_the_node.spec.as_mut().unwrap().host_network = Some(true);
    let Decision::Deny(why) = decide(&on_the_node, &[&p], &settings(true), &issuer) else {
        panic!("a hostNetwork pod with egress admitted")
    };
    assert!(why.contains("hostNetwork"), "{why}");
    // Before the client resolves, no token: the sidecar's egress answers 503 until then.
    let Decision::Patch(ops) = decide_without_egress(&original, &[&p], &settings(true)) else {
        panic!("no patch")
    };
    let unresolved = apply(&original, &ops).spec.unwrap();
    assert!(!(unresolved.volumes.iter().flatten()).any(|v| v.name == "scopegate-issuer-token"));
}

#[test]
fn a_sessions_policy_mounts_the_keys_and_a_token_into_the_sidecar_alone() {
    let mut p = policy("web", "{matchLabels: {app: web}}", false);
    p.spec.sessions = Some(
        serde_yaml_ng::from_str(
            "clientRef: {name: web}\nredirectUri: https://shop.example.com/.scopegate/callback\npaths: [/account/**]",
        )
        .unwrap(),
    );
    p.spec.egress = Some(
        serde_yaml_ng::from_str(
            "clientRef: {name: billing}\ntargets: [{name: orders, url: 'http://orders.shop.svc', audience: 'https://orders.shop.svc'}]",
        )
        .unwrap(),
    );
    // Both features on, with clients of different issuers: one token each.
    let issuers = |_: &AuthPolicy| TokenAudiences {
        egress: Some("https://auth.shop.svc".to_owned()),
        sessions: Some("https://login.shop.svc".to_owned()),
    };
    let original = pod("{app: web}");
    let Decision::Patch(ops) = decide(&original, &[&p], &settings(true), &issuers) else {
        panic!("no patch")
    };
    let injected = apply(&original, &ops);
    let spec = injected.spec.clone().unwrap();
    let volume = |name: &str| {
        (spec.volumes.iter().flatten())
            .find(|v| v.name == name)
            .cloned()
            .unwrap_or_else(|| panic!("no volume {name}"))
    };
    let keys = volume("scopegate-session-keys").secret.unwrap();
    assert_eq!(keys.secret_name.as_deref(), Some("web-session-keys"));
    let tokens: Vec<(String, String)> = (volume("scopegate-issuer-token").projected.unwrap())
        .sources
        .unwrap()
        .into_iter()
        .map(|s| s.service_account_token.unwrap())
        .map(|t| (t.path, t.audience.unwrap()))
        .collect();
    assert_eq!(
        tokens,
        [
            ("token".to_owned(), "https://auth.shop.svc".to_owned()),
            (
                "session-token".to_owned(),
                "https://login.shop.svc".to_owned()
            )
        ]
    );
    let mounts = |c: &Container| -> Vec<(String, String)> {
        (c.volume_mounts.iter().flatten())
            .map(|m| (m.name.clone(), m.mount_path.clone()))
            .collect()
    };
    let sidecar = (spec.init_containers.iter().flatten())
        .find(|c| c.name == SIDECAR_NAME)
        .unwrap();
    assert!(mounts(sidecar).contains(&(
        "scopegate-session-keys".to_owned(),
        "/etc/scopegate/session-keys".to_owned()
    )));
    for app in &spec.containers {
        let app_mounts = mounts(app);
        assert!(
            !app_mounts
                .iter()
                .any(|(name, _)| name == "scopegate-session-keys"
                    || name == "scopegate-issuer-token"),
            "the app mounts {app_mounts:?}"
        );
    }
    // The pod as stored passes the check of a resubmitted pod; one that lends the keys to the
    // app does not, nor a pod not yet injected that brings a volume of that name.
    assert_eq!(
        decide(&injected, &[&p], &settings(true), &issuers),
        Decision::Unchanged
    );
    let mut lending = injected.clone();
    lending.spec.as_mut().unwrap().containers[0]
        .volume_mounts
        .get_or_insert_with(Vec::new)
        .push(k8s_openapi::api::core::v1::VolumeMount {
            name: "scopegate-session-keys".into(),
            mount_path: "/keys".into(),
            ..Default::default()
        });
    let Decision::Deny(why) = decide(&lending, &[&p], &settings(true), &issuers) else {
        panic!("a pod lending the session keys to the app was admitted")
    };
    assert!(
        why.contains("its app container mounts scopegate volumes"),
        "{why}"
    );
    let mut borrowing = original.clone();
    let spec = borrowing.spec.as_mut().unwrap();
    spec.volumes = Some(vec![Volume {
        name: "scopegate-session-keys".into(),
        secret: Some(k8s_openapi::api::core::v1::SecretVolumeSource {
            secret_name: Some("web-session-keys".into()),
            ..Default::default()
        }),
        ..Default::default()
    }]);
    assert!(matches!(
        decide(&borrowing, &[&p], &settings(true), &issuers),
        Decision::Deny(_)
    ));
    // Without sessions, neither the keys nor a session token.
    p.spec.sessions = None;
    let Decision::Patch(ops) = decide(&original, &[&p], &settings(true), &issuers) else {
        panic!("no patch")
    };
    let plain = apply(&original, &ops).spec.unwrap();
    assert!(!(plain.volumes.iter().flatten()).any(|v| v.name == "scopegate-session-keys"));
    let token = (plain.volumes.iter().flatten())
        .find(|v| v.name == "scopegate-issuer-token")
        .unwrap();
    assert_eq!(
        token
            .projected
            .as_ref()
            .unwrap()
            .sources
            .as_ref()
            .unwrap()
            .len(),
        1
    );
}
