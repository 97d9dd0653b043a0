//! Status that tells the truth, read by the tools that read it: objects of both kinds, ready,
//! in progress and broken, as the real API server returns them, judged by sigs.k8s.io/cli-utils'
//! kstatus itself (the Go program e2e/tools/kstatus, built by e2e/scripts/build-bins.sh) and by
//! the Argo CD health check in docs/status.md (run by a Lua interpreter). Also: a config the
//! sidecar would refuse is never written, and a newer policy selecting another's pods neither
//! takes them nor blocks their creation.

use std::io::Write as _;
use std::process::{Command, Stdio};

use anyhow::{Context as _, ensure};
use k8s_openapi::api::core::v1::Pod;
use kube::api::{Api, PostParams};
use kube::{Client, Resource};
use scopegate_crds::v1alpha1::{AuthPolicy, OAuthClient};
use scopegate_e2e::manifests::{issuer, oauth_client};
use scopegate_e2e::setup::admin_client;
use scopegate_e2e::{TestNamespace, apply_yaml, condition, config_map_text, eventually, repo_root};
use serde_json::Value;

async fn setup(test: &str) -> (Client, TestNamespace) {
    let client = admin_client().await;
    let ns = TestNamespace::for_injection(&client, test).await;
    (client, ns)
}

fn verifier(name: &str, ns: &str, selector: &str, extra: &str) -> String {
    format!(
        r#"
apiVersion: scopegate.dev/v1alpha1
kind: AuthPolicy
metadata: {{name: {name}}}
spec:
  selector: {selector}
  issuer: {{policyRef: {{name: auth}}}}
  audiences: [https://{name}.{ns}.svc]
  upstream: {{port: 8080}}
  rules:
    - {{paths: ["/items/**"], require: [read]}}
{extra}
"#
    )
}

/// Creates a pod once the operator has seen every AuthPolicy of `ns` (its webhook injects from
/// the same cache), so that the pod gets the sidecar of the policy that selects it.
async fn create_pod(client: &Client, ns: &str, name: &str, app: &str) -> anyhow::Result<Pod> {
    eventually("every policy seen", || async {
        for policy in Api::<AuthPolicy>::namespaced(client.clone(), ns)
            .list(&Default::default())
            .await?
        {
            let seen = policy.status.as_ref().and_then(|s| s.observed_generation);
            ensure!(
                seen == policy.metadata.generation,
                "{} not seen yet",
                policy.metadata.name.unwrap_or_default()
            );
        }
        Ok(())
    })
    .await?;
    let pod: Pod = serde_yaml_ng::from_str(&format!(
        "apiVersion: v1\nkind: Pod\nmetadata: {{name: {name}, labels: {{app: {app}}}}}\nspec:\n  containers: [{{name: app, image: example/app, ports: [{{containerPort: 8080}}]}}]\n"
    ))?;
    Ok(Api::<Pod>::namespaced(client.clone(), ns)
        .create(&PostParams::default(), &pod)
        .await?)
}

/// The Ready condition (status, reason, message) once the status is of the current generation.
fn ready_of(object: &Value) -> anyhow::Result<(String, String, String)> {
    ensure!(
        object["status"]["observedGeneration"] == object["metadata"]["generation"],
        "status is for an older generation"
    );
    let conditions = object["status"]["conditions"]
        .as_array()
        .context("no conditions")?;
    let ready = conditions
        .iter()
        .find(|c| c["type"] == "Ready")
        .context("no Ready")?;
    let text = |key: &str| ready[key].as_str().unwrap_or_default().to_owned();
    Ok((text("status"), text("reason"), text("message")))
}

async fn get_json<K>(client: &Client, ns: &str, name: &str) -> anyhow::Result<Value>
where
    K: Resource<DynamicType = (), Scope = k8s_openapi::NamespaceResourceScope>
        + Clone
        + serde::Serialize
        + serde::de::DeserializeOwned
        + std::fmt::Debug,
{
    let object = Api::<K>::namespaced(client.clone(), ns).get(name).await?;
    let mut value = serde_json::to_value(object)?;
    value["apiVersion"] = K::api_version(&()).as_ref().into();
    value["kind"] = K::kind(&()).as_ref().into();
    Ok(value)
}

/// Waits until `kind/name` has Ready with `status` and `reason`, and returns it as JSON.
async fn wait_for<K>(
    client: &Client,
    ns: &str,
    name: &str,
    status: &str,
    reason: &str,
) -> anyhow::Result<Value>
where
    K: Resource<DynamicType = (), Scope = k8s_openapi::NamespaceResourceScope>
        + Clone
        + serde::Serialize
        + serde::de::DeserializeOwned
        + std::fmt::Debug,
{
    eventually(&format!("{name} Ready={status} ({reason})"), || async {
        let object = get_json::<K>(client, ns, name).await?;
        let (got, why, message) = ready_of(&object)?;
        ensure!(
            got == status && why == reason,
            "Ready={got} {why}: {message}"
        );
        Ok(object)
    })
    .await
}

/// kstatus' verdict (Current, InProgress, Failed, ...) on each object.
fn kstatus(objects: &[&Value]) -> anyhow::Result<Vec<String>> {
    let script = repo_root().join("e2e/scripts/versions.sh");
    let out = Command::new("bash")
        .arg("-c")
        .arg(format!("source {} && echo $KSTATUS_BIN", script.display()))
        .output()?;
    let dir = String::from_utf8(out.stdout)?.trim().to_owned();
    let binary = std::path::Path::new(&dir).join("kstatus");
    ensure!(
        binary.exists(),
        "{} missing: run e2e/scripts/build-bins.sh",
        binary.display()
    );
    let mut child = Command::new(&binary)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()?;
    child
        .stdin
        .take()
        .context("stdin")?
        .write_all(serde_json::to_string(objects)?.as_bytes())?;
    let output = child.wait_with_output()?;
    ensure!(output.status.success(), "kstatus failed");
    String::from_utf8(output.stdout)?
        .lines()
        .map(|line| {
            let verdict: Value = serde_json::from_str(line)?;
            Ok(verdict["status"].as_str().unwrap_or_default().to_owned())
        })
        .collect()
}

/// The Argo CD health check, exactly as docs/status.md ships it.
fn argocd_health_check() -> String {
    let doc = std::fs::read_to_string(repo_root().join("docs/status.md")).expect("docs/status.md");
    let after = doc
        .split_once("<!-- argocd-health-check -->\n```lua\n")
        .expect("the marked Lua block")
        .1;
    after
        .split_once("```")
        .expect("end of the Lua block")
        .0
        .to_owned()
}

/// A JSON value as a Lua table constructor (as Argo CD hands `obj` to the script).
fn lua_value(value: &Value) -> String {
    match value {
        Value::Null => "nil".into(),
        Value::Bool(b) => b.to_string(),
        Value::Number(n) => n.to_string(),
        Value::String(s) => format!("{s:?}"),
        Value::Array(items) => format!(
            "{{{}}}",
            items.iter().map(lua_value).collect::<Vec<_>>().join(", ")
        ),
        Value::Object(map) => format!(
            "{{{}}}",
            map.iter()
                .map(|(k, v)| format!("[{k:?}] = {}", lua_value(v)))
                .collect::<Vec<_>>()
                .join(", ")
        ),
    }
}

/// What Argo CD would show for `object`: the health check's `status`.
fn argocd_health(object: &Value) -> anyhow::Result<String> {
    let program = format!(
        "obj = {}\nlocal function check()\n{}\nend\nlocal hs = check()\nio.write(hs.status)\n",
        lua_value(object),
        argocd_health_check()
    );
    let mut child = Command::new("lua5.4")
        .arg("-")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .context("lua5.4 (scripts/setup.sh installs it)")?;
    child
        .stdin
        .take()
        .context("stdin")?
        .write_all(program.as_bytes())?;
    let output = child.wait_with_output()?;
    ensure!(output.status.success(), "the health check failed to run");
    Ok(String::from_utf8(output.stdout)?)
}

#[tokio::test]
async fn kstatus_and_argocd_read_ready_in_progress_and_broken_objects_of_both_kinds() {
    let (client, ns) = setup("kstatus").await;
    let n = ns.name.as_str();
    apply_yaml::<AuthPolicy>(&client, n, &issuer(n, "auth").yaml())
        .await
        .unwrap();
    create_pod(&client, n, "auth-0", "auth").await.unwrap();
    apply_yaml::<AuthPolicy>(
        &client,
        n,
        &verifier("orders", n, "{matchLabels: {app: orders}}", ""),
    )
    .await
    .unwrap();
    create_pod(&client, n, "orders-0", "orders").await.unwrap();
    apply_yaml::<OAuthClient>(&client, n, &oauth_client("good", "name: auth", ""))
        .await
        .unwrap();

    // In progress: what the API server answers to a create, before the operator can have seen
    // it (observedGeneration 0, from the CRD's default).
    let unseen_policy = Api::<AuthPolicy>::namespaced(client.clone(), n)
        .create(
            &PostParams::default(),
            &serde_yaml_ng::from_str(&verifier("fresh", n, "{matchLabels: {app: fresh}}", ""))
                .unwrap(),
        )
        .await
        .unwrap();
    let unseen_client = Api::<OAuthClient>::namespaced(client.clone(), n)
        .create(
            &PostParams::default(),
            &serde_yaml_ng::from_str(&oauth_client("fresh", "name: auth", "")).unwrap(),
        )
        .await
        .unwrap();
    let typed = |mut value: Value, kind: &str| {
        value["apiVersion"] = "scopegate.dev/v1alpha1".into();
        value["kind"] = kind.into();
        value
    };
    let unseen_policy = typed(serde_json::to_value(unseen_policy).unwrap(), "AuthPolicy");
    let unseen_client = typed(serde_json::to_value(unseen_client).unwrap(), "OAuthClient");
    assert_eq!(unseen_policy["status"]["observedGeneration"], 0);

    // Broken: a policy whose rendered config the sidecar would refuse, a client whose
    // existingSecret does not exist.
    apply_yaml::<AuthPolicy>(
        &client,
        n,
        &verifier(
            "broken",
            n,
            "{matchLabels: {app: broken}}",
            "  headers: {identity: {subject: host}}",
        ),
    )
    .await
    .unwrap();
    create_pod(&client, n, "broken-0", "broken").await.unwrap();
    apply_yaml::<OAuthClient>(
        &client,
        n,
        &oauth_client(
            "broken",
            "name: auth",
            "existingSecret: {name: nowhere, key: secret}",
        ),
    )
    .await
    .unwrap();

    let ready_policy = wait_for::<AuthPolicy>(&client, n, "orders", "True", "Rendered")
        .await
        .unwrap();
    assert_eq!(ready_policy["status"]["pods"], "1/1");
    let ready_client = wait_for::<OAuthClient>(&client, n, "good", "True", "Registered")
        .await
        .unwrap();
    let broken_policy = wait_for::<AuthPolicy>(&client, n, "broken", "False", "InvalidConfig")
        .await
        .unwrap();
    let (_, _, message) = ready_of(&broken_policy).unwrap();
    assert!(
        message.contains("headers: \"host\" is not a usable header name"),
        "the sidecar's own message: {message}"
    );
    let broken_client = wait_for::<OAuthClient>(&client, n, "broken", "False", "SecretNotFound")
        .await
        .unwrap();

    let objects = [
        (&ready_policy, "Current", "Healthy"),
        (&ready_client, "Current", "Healthy"),
        (&unseen_policy, "InProgress", "Progressing"),
        (&unseen_client, "InProgress", "Progressing"),
        (&broken_policy, "Failed", "Degraded"),
        (&broken_client, "Failed", "Degraded"),
    ];
    let verdicts = kstatus(&objects.iter().map(|(o, ..)| *o).collect::<Vec<_>>()).unwrap();
    for ((object, want, health), got) in objects.iter().zip(&verdicts) {
        let name = object["metadata"]["name"].as_str().unwrap_or_default();
        let kind = object["kind"].as_str().unwrap_or_default();
        assert_eq!(got, want, "kstatus of {kind} {name}");
        assert_eq!(
            argocd_health(object).unwrap(),
            *health,
            "Argo CD health of {kind} {name}"
        );
    }

    // The broken client recovers when its Secret appears, with no change to it.
    let secret: k8s_openapi::api::core::v1::Secret = serde_json::from_value(serde_json::json!({
        "apiVersion": "v1", "kind": "Secret",
        "metadata": {"name": "nowhere"},
        "stringData": {"secret": "a-long-enough-client-secret-of-its-own"},
    }))
    .unwrap();
    Api::<k8s_openapi::api::core::v1::Secret>::namespaced(client.clone(), n)
        .create(&PostParams::default(), &secret)
        .await
        .unwrap();
    wait_for::<OAuthClient>(&client, n, "broken", "True", "Registered")
        .await
        .unwrap();
    ns.delete().await.unwrap();
}

#[tokio::test]
async fn a_config_the_sidecar_would_refuse_is_never_written_and_the_last_good_one_stays() {
    let (client, ns) = setup("refused").await;
    let n = ns.name.as_str();
    apply_yaml::<AuthPolicy>(&client, n, &issuer(n, "auth").yaml())
        .await
        .unwrap();
    let good = verifier("orders", n, "{matchLabels: {app: orders}}", "");
    apply_yaml::<AuthPolicy>(&client, n, &good).await.unwrap();
    create_pod(&client, n, "orders-0", "orders").await.unwrap();
    wait_for::<AuthPolicy>(&client, n, "orders", "True", "Rendered")
        .await
        .unwrap();
    let before = config_map_text(&client, n, "orders-sidecar", "config.json")
        .await
        .unwrap()
        .expect("a config");

    for (header, field) in [("host", "subject"), ("authorization", "scopes")] {
        let bad = verifier(
            "orders",
            n,
            "{matchLabels: {app: orders}}",
            &format!("  headers: {{identity: {{{field}: {header}}}}}"),
        );
        apply_yaml::<AuthPolicy>(&client, n, &bad).await.unwrap();
        let object = wait_for::<AuthPolicy>(&client, n, "orders", "False", "InvalidConfig")
            .await
            .unwrap();
        let stalled = object["status"]["conditions"]
            .as_array()
            .unwrap()
            .iter()
            .find(|c| c["type"] == "Stalled")
            .cloned()
            .unwrap();
        assert_eq!(stalled["status"], "True", "{stalled}");
        assert_eq!(
            config_map_text(&client, n, "orders-sidecar", "config.json")
                .await
                .unwrap()
                .as_deref(),
            Some(before.as_str()),
            "the last good config stays"
        );
    }
    // Fixed, it is Ready again.
    apply_yaml::<AuthPolicy>(&client, n, &good).await.unwrap();
    wait_for::<AuthPolicy>(&client, n, "orders", "True", "Rendered")
        .await
        .unwrap();
    ns.delete().await.unwrap();
}

#[tokio::test]
async fn a_when_condition_is_rendered_or_refused_at_apply_with_the_compilers_words() {
    let (client, ns) = setup("when").await;
    let n = ns.name.as_str();
    apply_yaml::<AuthPolicy>(&client, n, &issuer(n, "auth").yaml())
        .await
        .unwrap();
    let with_when = |when: &str| {
        verifier(
            "orders",
            n,
            "{matchLabels: {app: orders}}",
            &format!(
                "    - {{name: tenant, paths: [\"/tenants/**\"], require: [read], when: '{when}'}}"
            ),
        )
    };
    let good = with_when(r#""admins" in claims.groups"#);
    apply_yaml::<AuthPolicy>(&client, n, &good).await.unwrap();
    create_pod(&client, n, "orders-0", "orders").await.unwrap();
    wait_for::<AuthPolicy>(&client, n, "orders", "True", "Rendered")
        .await
        .unwrap();
    let before = config_map_text(&client, n, "orders-sidecar", "config.json")
        .await
        .unwrap()
        .expect("a config");
    let rendered: Value = serde_json::from_str(&before).unwrap();
    assert_eq!(
        rendered["rules"][1]["when"], r#""admins" in claims.groups"#,
        "{rendered}"
    );

    // Does not compile: refused at apply by the validating webhook, naming the rule and the
    // compiler's objection; the policy in force and its config stay as they were.
    let bad = with_when(r#"claims.groups.exists(g, g.lowerAscii() == "admins")"#);
    let refused = apply_yaml::<AuthPolicy>(&client, n, &bad).await;
    let refused = format!(
        "{:#}",
        refused.expect_err("a condition that does not compile")
    );
    assert!(
        refused.contains("spec.rules[1] (tenant).when: function \"lowerAscii\" is not available"),
        "{refused}"
    );
    let object = wait_for::<AuthPolicy>(&client, n, "orders", "True", "Rendered")
        .await
        .unwrap();
    assert_eq!(
        object["spec"]["rules"][1]["when"],
        r#""admins" in claims.groups"#
    );
    assert_eq!(
        config_map_text(&client, n, "orders-sidecar", "config.json")
            .await
            .unwrap()
            .as_deref(),
        Some(before.as_str()),
        "the last good config stays"
    );

    // On a public rule, refused at apply by the schema.
    let public = verifier(
        "orders",
        n,
        "{matchLabels: {app: orders}}",
        "    - {paths: [\"/open\"], public: true, when: 'true'}",
    );
    let refused = apply_yaml::<AuthPolicy>(&client, n, &public).await;
    let refused = format!("{:#}", refused.expect_err("a public rule cannot have when"));
    assert!(
        refused.contains("cannot have a when condition"),
        "{refused}"
    );
    ns.delete().await.unwrap();
}

#[tokio::test]
async fn missing_secrets_unknown_scopes_no_pods_and_a_vanished_issuer_each_say_so() {
    let (client, ns) = setup("truth").await;
    let n = ns.name.as_str();
    apply_yaml::<AuthPolicy>(&client, n, &issuer(n, "auth").yaml())
        .await
        .unwrap();
    create_pod(&client, n, "auth-0", "auth").await.unwrap();
    // No pod yet.
    apply_yaml::<AuthPolicy>(
        &client,
        n,
        &verifier("orders", n, "{matchLabels: {app: orders}}", ""),
    )
    .await
    .unwrap();
    let object = wait_for::<AuthPolicy>(&client, n, "orders", "False", "NoPodsSelected")
        .await
        .unwrap();
    assert_eq!(object["status"]["pods"], "0/0");
    create_pod(&client, n, "orders-0", "orders").await.unwrap();
    wait_for::<AuthPolicy>(&client, n, "orders", "True", "Rendered")
        .await
        .unwrap();

    // A rule requiring a scope the issuer never declares.
    apply_yaml::<AuthPolicy>(
        &client,
        n,
        &verifier(
            "orders",
            n,
            "{matchLabels: {app: orders}}",
            "    - {paths: [\"/admin\"], require: [admin]}",
        ),
    )
    .await
    .unwrap();
    let object = wait_for::<AuthPolicy>(&client, n, "orders", "False", "UnknownScope")
        .await
        .unwrap();
    let (_, _, message) = ready_of(&object).unwrap();
    assert!(message.contains("scope admin"), "{message}");

    // A listener certificate Secret that does not exist.
    apply_yaml::<AuthPolicy>(
        &client,
        n,
        &verifier(
            "orders",
            n,
            "{matchLabels: {app: orders}}",
            "  listen: {tlsSecret: orders-listener}",
        ),
    )
    .await
    .unwrap();
    let object = wait_for::<AuthPolicy>(&client, n, "orders", "False", "SecretNotFound")
        .await
        .unwrap();
    let (_, _, message) = ready_of(&object).unwrap();
    assert!(
        message.contains("listen.tlsSecret names Secret orders-listener"),
        "{message}"
    );

    // The issuer deleted from under its verifier.
    apply_yaml::<AuthPolicy>(
        &client,
        n,
        &verifier("orders", n, "{matchLabels: {app: orders}}", ""),
    )
    .await
    .unwrap();
    wait_for::<AuthPolicy>(&client, n, "orders", "True", "Rendered")
        .await
        .unwrap();
    Api::<AuthPolicy>::namespaced(client.clone(), n)
        .delete("auth", &Default::default())
        .await
        .unwrap();
    wait_for::<AuthPolicy>(&client, n, "orders", "False", "PolicyRefNotFound")
        .await
        .unwrap();
    ns.delete().await.unwrap();
}

#[tokio::test]
async fn a_newer_policy_over_anothers_pods_gets_a_conflict_and_blocks_no_pod() {
    let (client, ns) = setup("conflict").await;
    let n = ns.name.as_str();
    apply_yaml::<AuthPolicy>(&client, n, &issuer(n, "auth").yaml())
        .await
        .unwrap();
    apply_yaml::<AuthPolicy>(
        &client,
        n,
        &verifier("orders", n, "{matchLabels: {app: orders}}", ""),
    )
    .await
    .unwrap();
    // Another team's policy, created later (creation times have whole seconds), selecting
    // every pod with an app label. Its name sorts first: only its age decides.
    let older = Api::<AuthPolicy>::namespaced(client.clone(), n)
        .get("orders")
        .await
        .unwrap();
    let created = older.metadata.creation_timestamp.unwrap().0.as_second();
    eventually("a second later", || async {
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)?
            .as_secs();
        ensure!(i64::try_from(now)? > created, "same second");
        Ok(())
    })
    .await
    .unwrap();
    apply_yaml::<AuthPolicy>(
        &client,
        n,
        &verifier(
            "a-greedy",
            n,
            "{matchExpressions: [{key: app, operator: Exists}]}",
            "",
        ),
    )
    .await
    .unwrap();
    // Pods of both are created (none refused), each with the sidecar of its older policy.
    let orders = create_pod(&client, n, "orders-0", "orders").await.unwrap();
    let web = create_pod(&client, n, "web-0", "web").await.unwrap();
    let injected_for = |pod: &Pod| {
        pod.metadata
            .annotations
            .as_ref()
            .and_then(|a| a.get("scopegate.dev/injected").cloned())
    };
    assert_eq!(injected_for(&orders).as_deref(), Some("orders"));
    assert_eq!(injected_for(&web).as_deref(), Some("a-greedy"));

    let object = wait_for::<AuthPolicy>(&client, n, "a-greedy", "False", "Conflict")
        .await
        .unwrap();
    let (_, _, message) = ready_of(&object).unwrap();
    assert!(
        message.contains("AuthPolicy orders is older") && message.contains("orders-0"),
        "{message}"
    );
    let object = wait_for::<AuthPolicy>(&client, n, "orders", "True", "Rendered")
        .await
        .unwrap();
    assert_eq!(object["status"]["pods"], "1/1");
    let policy: AuthPolicy = serde_json::from_value(object).unwrap();
    let status = policy.status.unwrap();
    assert_eq!(
        condition(&status.conditions, "Degraded").map(|c| c.status.as_str()),
        Some("False"),
        "the older policy is not made worse by the newer one"
    );
    ns.delete().await.unwrap();
}

/// A cluster's own admission policy (here a ValidatingAdmissionPolicy, as Kyverno or
/// Gatekeeper would be) refuses a write the operator makes: the policy says so in its status
/// and in a Warning event, not only in the operator's log, and recovers once allowed.
#[tokio::test]
async fn a_write_the_api_server_refuses_becomes_a_condition_and_an_event() {
    use k8s_openapi::api::admissionregistration::v1::{
        ValidatingAdmissionPolicy, ValidatingAdmissionPolicyBinding,
    };
    let (client, ns) = setup("refusedwrite").await;
    let n = ns.name.as_str();
    let name = format!("e2e-refuse-{n}");
    let policy: ValidatingAdmissionPolicy = serde_json::from_value(serde_json::json!({
        "metadata": {"name": name},
        "spec": {
            "failurePolicy": "Fail",
            "matchConstraints": {"resourceRules": [{
                "apiGroups": [""], "apiVersions": ["v1"],
                "operations": ["CREATE", "UPDATE"], "resources": ["configmaps"]
            }]},
            "validations": [{
                "expression": "object.metadata.name != 'orders-sidecar'",
                "message": "site policy: sidecar configs need a change ticket",
                "reason": "Invalid"
            }]
        }
    }))
    .unwrap();
    let binding: ValidatingAdmissionPolicyBinding = serde_json::from_value(serde_json::json!({
        "metadata": {"name": name},
        "spec": {
            "policyName": name,
            "validationActions": ["Deny"],
            "matchResources": {"namespaceSelector": {
                "matchLabels": {"kubernetes.io/metadata.name": n}
            }}
        }
    }))
    .unwrap();
    let policies = Api::<ValidatingAdmissionPolicy>::all(client.clone());
    let bindings = Api::<ValidatingAdmissionPolicyBinding>::all(client.clone());
    policies
        .create(&PostParams::default(), &policy)
        .await
        .unwrap();
    bindings
        .create(&PostParams::default(), &binding)
        .await
        .unwrap();
    // The API server compiles and starts enforcing the policy shortly after it is created.
    let configs = Api::<k8s_openapi::api::core::v1::ConfigMap>::namespaced(client.clone(), n);
    eventually("the admission policy in force", || async {
        let probe: k8s_openapi::api::core::v1::ConfigMap =
            serde_json::from_value(serde_json::json!({"metadata": {"name": "orders-sidecar"}}))?;
        let dry_run = PostParams {
            dry_run: true,
            ..PostParams::default()
        };
        ensure!(
            configs.create(&dry_run, &probe).await.is_err(),
            "not yet enforced"
        );
        Ok(())
    })
    .await
    .unwrap();

    apply_yaml::<AuthPolicy>(&client, n, &issuer(n, "auth").yaml())
        .await
        .unwrap();
    let orders = verifier("orders", n, "{matchLabels: {app: orders}}", "");
    apply_yaml::<AuthPolicy>(&client, n, &orders).await.unwrap();
    let object = wait_for::<AuthPolicy>(&client, n, "orders", "False", "WriteRefused")
        .await
        .unwrap();
    let (_, _, message) = ready_of(&object).unwrap();
    assert!(
        message.contains("orders-sidecar") && message.contains("need a change ticket"),
        "{message}"
    );
    eventually("a Warning event", || async {
        let events = Api::<k8s_openapi::api::events::v1::Event>::namespaced(client.clone(), n)
            .list(&Default::default())
            .await?;
        ensure!(
            events
                .items
                .iter()
                .any(|e| e.reason.as_deref() == Some("WriteRefused")
                    && e.type_.as_deref() == Some("Warning")
                    && e.regarding.as_ref().and_then(|r| r.name.as_deref()) == Some("orders")),
            "no WriteRefused Warning about orders"
        );
        Ok(())
    })
    .await
    .unwrap();

    // Allowed again (and touched, as any next edit would): Ready.
    bindings.delete(&name, &Default::default()).await.unwrap();
    policies.delete(&name, &Default::default()).await.unwrap();
    eventually("the admission policy gone", || async {
        let probe: k8s_openapi::api::core::v1::ConfigMap =
            serde_json::from_value(serde_json::json!({"metadata": {"name": "orders-sidecar"}}))?;
        let dry_run = PostParams {
            dry_run: true,
            ..PostParams::default()
        };
        configs.create(&dry_run, &probe).await?;
        Ok(())
    })
    .await
    .unwrap();
    let touched = orders.replace(
        "metadata: {name: orders}",
        "metadata: {name: orders, labels: {touched: \"1\"}}",
    );
    assert_ne!(touched, orders);
    apply_yaml::<AuthPolicy>(&client, n, &touched)
        .await
        .unwrap();
    create_pod(&client, n, "orders-0", "orders").await.unwrap();
    wait_for::<AuthPolicy>(&client, n, "orders", "True", "Rendered")
        .await
        .unwrap();
    ns.delete().await.unwrap();
}
