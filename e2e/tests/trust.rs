//! Tenant isolation on a real control plane, written as the attacker: a team owning namespace
//! `evil` writes its own AuthPolicies and OAuthClients and tries to reach trust that belongs
//! to another team. Certificates from the operator's CA name only the owner's own Services
//! and are constrained so that no forged name verifies; the webhook's certificate comes from
//! a CA no tenant leaf chains to; an audience's owner decides which clients get tokens for it.

use anyhow::{Context as _, ensure};
use k8s_openapi::api::admissionregistration::v1::MutatingWebhookConfiguration;
use kube::api::{Api, Patch, PatchParams};
use scopegate_crds::v1alpha1::{AuthPolicy, OAuthClient};
use scopegate_e2e::manifests::{issuer, oauth_client};
use scopegate_e2e::ready::{Ready, client_ready, policy_ready};
use scopegate_e2e::rendered::{client_registry, sidecar_config};
use scopegate_e2e::setup::admin_client;
use scopegate_e2e::{TestNamespace, apply_yaml, config_map_text, eventually, secret_text};

/// Runs `openssl` with `args`; whether it succeeded, and what it printed.
fn openssl(args: &[&str]) -> (bool, String) {
    let output = std::process::Command::new("openssl")
        .args(args)
        .output()
        .expect("openssl is installed by scripts/setup.sh");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    (output.status.success(), text)
}

#[tokio::test]
async fn a_tenant_gets_certificates_for_its_own_services_only_and_none_the_webhook_trusts() {
    let client = admin_client().await;
    let evil = TestNamespace::create(&client, "evilcerts")
        .await
        .expect("namespace");

    // The names a tenant would like a certificate for are refused at apply.
    for name in [
        "accounts.google.com",
        "scopegate-webhook.scopegate-system.svc",
        "*",
    ] {
        let refused = apply_yaml::<AuthPolicy>(
            &client,
            &evil.name,
            &issuer(&evil.name, "grab").service(name).yaml(),
        )
        .await
        .expect_err(name);
        let text = format!("{refused:#}");
        assert!(
            text.contains("service.name must be the name of a Service in this namespace"),
            "{name}: {text}"
        );
    }

    // A Service of its own gets exactly its two in-cluster names.
    apply_yaml::<AuthPolicy>(
        &client,
        &evil.name,
        &issuer(&evil.name, "auth").service("auth").yaml(),
    )
    .await
    .unwrap();
    let dir = std::env::temp_dir().join(format!("scopegate-e2e-trust-{}", evil.name));
    std::fs::create_dir_all(&dir).unwrap();
    let leaf = dir.join("leaf.pem");
    let tenant_bundle = dir.join("tenants.pem");
    let (cert, bundle) = eventually("the serving certificate and CA bundle", || async {
        let cert = secret_text(&client, &evil.name, "auth-tls", "tls.crt")
            .await?
            .context("no auth-tls yet")?;
        let bundle = config_map_text(&client, &evil.name, "scopegate-ca", "ca.crt")
            .await?
            .context("no scopegate-ca yet")?;
        Ok((cert, bundle))
    })
    .await
    .unwrap();
    std::fs::write(&leaf, &cert).unwrap();
    std::fs::write(&tenant_bundle, &bundle).unwrap();
    let (_, sans) = openssl(&[
        "x509",
        "-noout",
        "-ext",
        "subjectAltName",
        "-in",
        leaf.to_str().unwrap(),
    ]);
    let expected = format!(
        "DNS:auth.{ns}.svc, DNS:auth.{ns}.svc.cluster.local",
        ns = evil.name
    );
    assert_eq!(sans.lines().nth(1).map(str::trim), Some(expected.as_str()));

    // The CA every sidecar trusts carries critical name constraints for in-cluster names.
    let (_, constraints) = openssl(&[
        "x509",
        "-noout",
        "-ext",
        "nameConstraints",
        "-in",
        tenant_bundle.to_str().unwrap(),
    ]);
    assert!(constraints.contains("critical"), "{constraints}");
    assert!(constraints.contains("DNS:.svc"), "{constraints}");
    assert!(
        constraints.contains("DNS:.svc.cluster.local"),
        "{constraints}"
    );
    let verify = |bundle: &std::path::Path, host: &str| {
        openssl(&[
            "verify",
            "-CAfile",
            bundle.to_str().unwrap(),
            "-verify_hostname",
            host,
            leaf.to_str().unwrap(),
        ])
    };
    let own = format!("auth.{}.svc", evil.name);
    let (ok, text) = verify(&tenant_bundle, &own);
    assert!(ok, "the tenant's own name verifies: {text}");
    let (ok, _) = verify(&tenant_bundle, "accounts.google.com");
    assert!(!ok, "the leaf names nothing else");

    // The API server trusts the webhook through its caBundle: a CA of its own, which no
    // tenant leaf chains to and which the tenants' bundle does not hold.
    let configuration = Api::<MutatingWebhookConfiguration>::all(client.clone())
        .get("scopegate-injector")
        .await
        .unwrap();
    let webhook_bundle = configuration.webhooks.unwrap()[0]
        .client_config
        .ca_bundle
        .clone()
        .expect("the operator fills in the caBundle");
    let webhook_pem = String::from_utf8(webhook_bundle.0).unwrap();
    assert!(
        !bundle.contains(webhook_pem.trim()),
        "the tenants' bundle holds no webhook CA"
    );
    let webhook_ca = dir.join("webhook.pem");
    std::fs::write(&webhook_ca, &webhook_pem).unwrap();
    let (ok, text) = verify(&webhook_ca, &own);
    assert!(
        !ok,
        "a tenant leaf does not chain to the webhook's CA: {text}"
    );
    let (_, webhook_constraints) = openssl(&[
        "x509",
        "-noout",
        "-ext",
        "nameConstraints",
        "-in",
        webhook_ca.to_str().unwrap(),
    ]);
    let permitted: Vec<&str> = webhook_constraints
        .lines()
        .map(str::trim)
        .filter(|l| l.starts_with("DNS:") || l.starts_with("IP:"))
        .collect();
    assert_eq!(
        permitted,
        [
            "DNS:scopegate-webhook.scopegate-system.svc",
            "DNS:scopegate-webhook.scopegate-system.svc.cluster.local",
            "IP:127.0.0.1/255.255.255.255"
        ],
        "the webhook CA certifies the webhook's names only: {webhook_constraints}"
    );
    // The webhook itself still verifies with its bundle (the API server's view).
    let port = std::env::var("E2E_WEBHOOK_PORT").expect("E2E_WEBHOOK_PORT from the set-up");
    let served = std::process::Command::new("curl")
        .args(["-s", "-o", "/dev/null", "-w", "%{http_code}", "--cacert"])
        .arg(&webhook_ca)
        .args([
            "-X",
            "POST",
            &format!("https://127.0.0.1:{port}/mutate-pods"),
        ])
        .output()
        .expect("curl");
    assert_eq!(String::from_utf8_lossy(&served.stdout), "400");
    let impostor = std::process::Command::new("curl")
        .args(["-s", "-o", "/dev/null", "-w", "%{http_code}", "--cacert"])
        .arg(&tenant_bundle)
        .args([
            "-X",
            "POST",
            &format!("https://127.0.0.1:{port}/mutate-pods"),
        ])
        .output()
        .expect("curl");
    assert_eq!(
        String::from_utf8_lossy(&impostor.stdout),
        "000",
        "the tenants' bundle does not verify the webhook"
    );

    std::fs::remove_dir_all(&dir).unwrap();
    evil.delete().await.unwrap();
}

/// OAuthClient `name` of the issuer `auth` in `issuer_ns`, asking for `audiences`.
fn client_yaml(name: &str, issuer_ns: &str, audiences: &[&str]) -> String {
    oauth_client(
        name,
        &format!("name: auth, namespace: {issuer_ns}"),
        &format!("audiences: {audiences:?}"),
    )
}

#[tokio::test]
async fn an_audience_is_issued_only_to_the_clients_its_owner_admits() {
    let client = admin_client().await;
    let shop = TestNamespace::create(&client, "shop").await.unwrap();
    let partner = TestNamespace::create(&client, "partner").await.unwrap();
    let evil = TestNamespace::create(&client, "evil").await.unwrap();
    let orders = format!("https://orders.{}.svc.cluster.local", shop.name);
    let shared = format!("https://shared-{}.example", shop.name);

    // shop's issuer registers clients from both other namespaces ...
    apply_yaml::<AuthPolicy>(
        &client,
        &shop.name,
        &issuer(&shop.name, "auth")
            .with(&format!(
                "allowedClientNamespaces: [{}, {}]",
                partner.name, evil.name
            ))
            .yaml(),
    )
    .await
    .unwrap();
    // ... but its resource server admits only partner.
    let orders_policy = |admitted: &str| {
        format!(
            r#"
apiVersion: scopegate.dev/v1alpha1
kind: AuthPolicy
metadata: {{name: orders}}
spec:
  selector: {{matchLabels: {{app: orders}}}}
  issuer: {{policyRef: {{name: auth}}}}
  audiences: ["{orders}", "{shared}"]
  clients: {{namespaces: [{admitted}]}}
  upstream: {{port: 8080}}
"#
        )
    };
    apply_yaml::<AuthPolicy>(&client, &shop.name, &orders_policy(&partner.name))
        .await
        .unwrap();
    apply_yaml::<OAuthClient>(
        &client,
        &shop.name,
        &client_yaml("web", &shop.name, &[&orders]),
    )
    .await
    .unwrap();
    apply_yaml::<OAuthClient>(
        &client,
        &partner.name,
        &client_yaml("friend", &shop.name, &[&orders]),
    )
    .await
    .unwrap();
    // evil registers with the issuer (allowed) and asks for shop's audience, and for one
    // nobody owns.
    apply_yaml::<OAuthClient>(
        &client,
        &evil.name,
        &client_yaml("thief", &shop.name, &[&orders]),
    )
    .await
    .unwrap();
    apply_yaml::<OAuthClient>(
        &client,
        &evil.name,
        &client_yaml("stray", &shop.name, &["https://nobody.example"]),
    )
    .await
    .unwrap();

    let web_id = format!("{}.web", shop.name);
    let friend_id = format!("{}.friend", partner.name);
    let thief_id = format!("{}.thief", evil.name);
    eventually("the registry as the owner decided", || async {
        let registry = client_registry(&client, &shop.name, "auth").await?;
        let web = registry.find(&web_id).context("web not registered")?;
        ensure!(web.audiences == [orders.clone()], "{web:?}");
        ensure!(
            web.owned_audiences.contains(&orders),
            "the owner's own client may introspect its tokens: {web:?}"
        );
        let friend = registry.find(&friend_id).context("friend not registered")?;
        ensure!(friend.audiences == [orders.clone()], "{friend:?}");
        ensure!(
            !friend.owned_audiences.contains(&orders),
            "an admitted client is no owner: {friend:?}"
        );
        ensure!(
            registry.find(&thief_id).is_none(),
            "a client the owner does not admit is not registered for its audience"
        );
        Ok(())
    })
    .await
    .unwrap();
    eventually("the thief told why", || async {
        let Ready {
            status,
            reason,
            message,
        } = client_ready(&client, &evil.name, "thief").await?;
        ensure!(
            status == "False" && reason == "AudienceNotAdmitted",
            "{reason}: {message}"
        );
        ensure!(
            message.contains(&orders) && message.contains(&format!("{}/orders", shop.name)),
            "{message}"
        );
        let Ready {
            status,
            reason,
            message,
        } = client_ready(&client, &evil.name, "stray").await?;
        ensure!(
            status == "False" && reason == "AudienceNotAdmitted",
            "{reason}: {message}"
        );
        ensure!(message.contains("no AuthPolicy lists it"), "{message}");
        let Ready { status, reason, .. } = client_ready(&client, &partner.name, "friend").await?;
        ensure!(status == "True", "{reason}");
        Ok(())
    })
    .await
    .unwrap();

    // evil claims shop's audiences for a policy of its own: the Service-shaped one is shop's
    // whatever the age, the other is shop's as the first claimant; neither is honoured.
    // Creation times have one-second resolution: the squatter must be created in a later
    // second than orders for "first" to be decided by age (a tie goes by namespace name).
    let squat = format!(
        r#"
apiVersion: scopegate.dev/v1alpha1
kind: AuthPolicy
metadata: {{name: squat}}
spec:
  selector: {{matchLabels: {{app: squat}}}}
  issuer: {{policyRef: {{name: auth, namespace: {shop}}}}}
  audiences: ["{orders}", "{shared}", "https://squat.{evil}.svc"]
  clients: {{namespaces: ["*"]}}
  upstream: {{port: 8080}}
"#,
        shop = shop.name,
        evil = evil.name
    );
    let orders_created = Api::<AuthPolicy>::namespaced(client.clone(), &shop.name)
        .get("orders")
        .await
        .unwrap()
        .metadata
        .creation_timestamp
        .expect("created");
    eventually("the squatter created after orders", || async {
        let created = apply_yaml::<AuthPolicy>(&client, &evil.name, &squat)
            .await?
            .metadata
            .creation_timestamp
            .context("no creationTimestamp")?;
        if created.0 <= orders_created.0 {
            Api::<AuthPolicy>::namespaced(client.clone(), &evil.name)
                .delete("squat", &Default::default())
                .await?;
            anyhow::bail!("created in the same second as orders");
        }
        Ok(())
    })
    .await
    .unwrap();
    eventually("the squatter's claims refused", || async {
        let Ready {
            status,
            reason,
            message,
        } = policy_ready(&client, &evil.name, "squat").await?;
        ensure!(
            status == "False" && reason == "AudienceConflict",
            "{reason}: {message}"
        );
        ensure!(
            message.contains(&format!("names a Service of namespace {}", shop.name))
                && message.contains(&format!("AuthPolicy {}/orders listed it first", shop.name)),
            "{message}"
        );
        let config = sidecar_config(&client, &evil.name, "squat").await?;
        ensure!(
            config.verify.audiences == [format!("https://squat.{}.svc", evil.name)],
            "{:?}",
            config.verify.audiences
        );
        // And the owner is unaffected.
        let registry = client_registry(&client, &shop.name, "auth").await?;
        ensure!(registry.find(&thief_id).is_none(), "still not the thief's");
        Ok(())
    })
    .await
    .unwrap();

    // The owner stops admitting partner: its client loses the audience at once (not at
    // the next resync), and says so.
    apply_yaml::<AuthPolicy>(&client, &shop.name, &orders_policy("no-such-namespace"))
        .await
        .unwrap();
    eventually("partner's admission withdrawn", || async {
        let registry = client_registry(&client, &shop.name, "auth").await?;
        ensure!(
            registry.find(&friend_id).is_none(),
            "friend still registered: {:?}",
            registry.find(&friend_id)
        );
        let Ready { status, reason, .. } = client_ready(&client, &partner.name, "friend").await?;
        ensure!(
            status == "False" && reason == "AudienceNotAdmitted",
            "{reason}"
        );
        Ok(())
    })
    .await
    .unwrap();
    // Admitting a single client by name works too.
    let by_name = orders_policy("no-such-namespace").replace(
        "  clients: {namespaces: [no-such-namespace]}",
        &format!(
            "  clients: {{names: [{{namespace: {}, name: friend}}]}}",
            partner.name
        ),
    );
    apply_yaml::<AuthPolicy>(&client, &shop.name, &by_name)
        .await
        .unwrap();
    eventually("friend admitted by name", || async {
        let registry = client_registry(&client, &shop.name, "auth").await?;
        ensure!(registry.find(&friend_id).is_some(), "friend not registered");
        ensure!(registry.find(&thief_id).is_none(), "the thief still not");
        Ok(())
    })
    .await
    .unwrap();

    // Every audience of the squatter is another namespace's: its pods accept no token at all
    // (the last good config, with its own audience, does not stay in force).
    Api::<AuthPolicy>::namespaced(client.clone(), &evil.name)
        .patch(
            "squat",
            &PatchParams::default(),
            &Patch::Merge(serde_json::json!({"spec": {"audiences": [orders.clone()]}})),
        )
        .await
        .unwrap();
    eventually("the squatter trusts nothing", || async {
        let Ready { status, reason, .. } = policy_ready(&client, &evil.name, "squat").await?;
        ensure!(
            status == "False" && reason == "AudienceConflict",
            "{reason}"
        );
        let config = sidecar_config(&client, &evil.name, "squat").await?;
        ensure!(
            config.verify.audiences.is_empty() && config.verify.issuers.is_empty(),
            "audiences {:?}, issuers {}",
            config.verify.audiences,
            config.verify.issuers.len()
        );
        Ok(())
    })
    .await
    .unwrap();

    // The squatter goes: nothing changes for shop, whose claim never depended on it.
    Api::<AuthPolicy>::namespaced(client.clone(), &evil.name)
        .patch(
            "squat",
            &PatchParams::default(),
            &Patch::Merge(serde_json::json!({"spec": {"audiences": [format!("https://squat.{}.svc", evil.name)]}})),
        )
        .await
        .unwrap();
    eventually("the squatter without conflicts", || async {
        let Ready {
            reason, message, ..
        } = policy_ready(&client, &evil.name, "squat").await?;
        ensure!(reason != "AudienceConflict", "{message}");
        let config = sidecar_config(&client, &evil.name, "squat").await?;
        ensure!(!config.verify.issuers.is_empty(), "trusts its issuer again");
        Ok(())
    })
    .await
    .unwrap();

    evil.delete().await.unwrap();
    partner.delete().await.unwrap();
    shop.delete().await.unwrap();
}
