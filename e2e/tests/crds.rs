//! The CRDs on a real kube-apiserver: they install and become Established, `kubectl explain`
//! shows our docs, every example applies, and each CEL rule refuses a bad object at apply
//! time with its message.

use std::collections::BTreeMap;

use kube::Client;
use kube::api::{Api, DynamicObject, Patch, PatchParams, PostParams};
use kube::core::{ApiResource, GroupVersionKind};
use scopegate_crds::v1alpha1::{AuthPolicy, OAuthClient};
use scopegate_e2e::{
    ControlPlane, FIELD_MANAGER, TestNamespace, eventually, install_crds, repo_root,
};
use serde::Deserialize;
use serde_json::{Value, json};

async fn setup() -> (ControlPlane, Client) {
    let plane = ControlPlane::from_env().expect("control plane");
    let client = plane.client().await.expect("client");
    install_crds(&client)
        .await
        .expect("CRDs install and become Established");
    (plane, client)
}

fn api_resource(kind: &str) -> ApiResource {
    match kind {
        "AuthPolicy" => ApiResource::erase::<AuthPolicy>(&()),
        "OAuthClient" => ApiResource::erase::<OAuthClient>(&()),
        other => ApiResource::from_gvk(&GroupVersionKind::gvk("", "v1", other)),
    }
}

/// Collapses kubectl's line wrapping so that a sentence can be searched for.
fn squash(text: &str) -> String {
    text.split_whitespace().collect::<Vec<_>>().join(" ")
}

#[tokio::test]
async fn crds_are_established_and_explained() {
    let (plane, _client) = setup().await;

    // The OpenAPI document that explain reads is published shortly after Established.
    let issuer = eventually("kubectl explain authpolicy.spec.issuer", || async {
        plane.kubectl(&["explain", "authpolicy.spec.issuer"])
    })
    .await
    .map(|text| squash(&text))
    .expect("explain works");
    assert!(
        issuer.contains("exactly one of self, policyRef or external"),
        "kubectl explain authpolicy.spec.issuer shows our docs:\n{issuer}"
    );
    assert!(
        issuer.contains("policyRef") && issuer.contains("external"),
        "{issuer}"
    );

    let redirect = squash(
        &plane
            .kubectl(&["explain", "oauthclient.spec.redirectUris"])
            .expect("explain works"),
    );
    assert!(redirect.contains("RFC 8252"), "{redirect}");

    let rotation = squash(
        &plane
            .kubectl(&["explain", "ap.spec.issuer.self.propagation"])
            .expect("short name works with explain"),
    );
    assert!(
        rotation.contains("published at least this long"),
        "{rotation}"
    );
}

#[tokio::test]
async fn every_example_applies() {
    let (plane, client) = setup().await;
    let ns = TestNamespace::create(&client, "examples")
        .await
        .expect("namespace");

    let mut applied = Vec::new();
    let mut files: Vec<_> = std::fs::read_dir(repo_root().join("examples"))
        .expect("examples/")
        .map(|e| e.expect("entry").path())
        .filter(|p| p.extension().is_some_and(|e| e == "yaml"))
        .collect();
    files.sort();
    for path in files {
        let text = std::fs::read_to_string(&path).expect("readable");
        for document in serde_yaml_ng::Deserializer::from_str(&text) {
            let mut object: DynamicObject =
                DynamicObject::deserialize(document).expect("example is a Kubernetes object");
            let kind = object
                .types
                .as_ref()
                .map(|t| t.kind.clone())
                .unwrap_or_default();
            if kind == "Namespace" {
                continue; // each test has its own namespace
            }
            let name = object.metadata.name.clone().expect("named");
            object.metadata.namespace = Some(ns.name.clone());
            let api: Api<DynamicObject> =
                Api::namespaced_with(client.clone(), &ns.name, &api_resource(&kind));
            api.patch(
                &name,
                &PatchParams::apply(FIELD_MANAGER),
                &Patch::Apply(&object),
            )
            .await
            .unwrap_or_else(|e| panic!("{} ({kind} {name}) applies: {e}", path.display()));
            applied.push(format!("{kind}/{name}"));
        }
    }
    assert!(applied.len() >= 5, "applied {applied:?}");

    // The printer columns and short names a person uses.
    let table = plane
        .kubectl(&["get", "ap", "-n", &ns.name])
        .expect("kubectl get ap");
    for column in [
        "NAME",
        "READY",
        "ISSUER",
        "ACTIVE KEY",
        "ENFORCEMENT",
        "AGE",
        "auth",
        "orders",
        "reports",
    ] {
        assert!(
            table.contains(column),
            "`kubectl get ap` shows {column}:\n{table}"
        );
    }
    let table = plane
        .kubectl(&["get", "oac", "-n", &ns.name])
        .expect("kubectl get oac");
    for column in ["CLIENT ID", "ISSUER", "billing", "storefront"] {
        assert!(
            table.contains(column),
            "`kubectl get oac` shows {column}:\n{table}"
        );
    }
    // Defaults from the schema are filled in by the API server.
    let api: Api<AuthPolicy> = Api::namespaced(client.clone(), &ns.name);
    let orders = api.get("orders").await.expect("orders policy");
    assert_eq!(orders.spec.headers.identity.subject, "x-auth-subject");
    // The issuerRef field selector that the operator uses to list an issuer's clients.
    let clients: Api<OAuthClient> = Api::namespaced(client.clone(), &ns.name);
    let of_auth = clients
        .list(&kube::api::ListParams::default().fields("spec.issuerRef.name=auth"))
        .await
        .expect("field selector on spec.issuerRef.name");
    let examples_clients = (applied.iter())
        .filter(|a| a.starts_with("OAuthClient/"))
        .count();
    assert_eq!(of_auth.items.len(), examples_clients, "{applied:?}");

    ns.delete().await.expect("cleanup");
}

/// A valid self-issuing AuthPolicy that each case breaks in one way.
fn issuer_policy() -> Value {
    json!({
        "apiVersion": "scopegate.dev/v1alpha1", "kind": "AuthPolicy",
        "metadata": { "name": "cel-case" },
        "spec": {
            "selector": { "matchLabels": { "app": "auth" } },
            "issuer": { "self": {
                "url": "https://auth.example.svc.cluster.local",
                "service": { "name": "auth", "port": 443 },
                "scopes": { "read:items": "Read", "write:items": "Write" },
                "loginUrl": "https://shop.example.com/login",
                "mint": { "subjects": ["user:*"], "scopes": ["read:items"] }
            } },
            "upstream": { "port": 8080 },
            "rules": [ { "paths": ["/items/**"], "require": ["read:items"] } ]
        }
    })
}

/// A valid policy rolled out in DryRun, one rule kept enforced and one public.
fn dry_run_policy() -> Value {
    let mut v = issuer_policy();
    v["spec"]["enforcement"] = json!("DryRun");
    v["spec"]["rules"] = json!([
        {"name": "items", "paths": ["/items/**"], "require": ["read:items"], "enforcement": "Enforce"},
        {"name": "write", "methods": ["POST"], "paths": ["/items/**"], "require": ["write:items"], "enforcement": "DryRun"},
        {"name": "health", "paths": ["/healthz"], "public": true}
    ]);
    v
}

/// A valid verifier AuthPolicy with an external issuer.
fn external_policy() -> Value {
    json!({
        "apiVersion": "scopegate.dev/v1alpha1", "kind": "AuthPolicy",
        "metadata": { "name": "cel-case" },
        "spec": {
            "selector": { "matchExpressions": [ { "key": "app", "operator": "In", "values": ["orders"] } ] },
            "issuer": { "external": {
                "issuer": "https://login.example.com/",
                "jwksUri": "https://login.example.com/jwks.json",
                "algorithms": ["RS256"]
            } },
            "audiences": ["api://x"],
            "upstream": { "port": 8080 },
            "trustedProxies": { "hops": 1 }
        }
    })
}

/// A valid confidential OAuthClient.
fn confidential_client() -> Value {
    json!({
        "apiVersion": "scopegate.dev/v1alpha1", "kind": "OAuthClient",
        "metadata": { "name": "cel-case" },
        "spec": {
            "issuerRef": { "name": "auth" },
            "grantTypes": ["client_credentials"],
            "scopes": ["read:items", "write:items"],
            "defaultScopes": ["read:items"],
            "secretName": "cel-case-credentials"
        }
    })
}

/// A valid public OAuthClient.
fn public_client() -> Value {
    json!({
        "apiVersion": "scopegate.dev/v1alpha1", "kind": "OAuthClient",
        "metadata": { "name": "cel-case" },
        "spec": {
            "issuerRef": { "name": "auth" },
            "public": true,
            "tokenEndpointAuthMethod": "none",
            "grantTypes": ["authorization_code", "refresh_token"],
            "scopes": ["read:items"],
            "redirectUris": ["https://app.example.com/cb", "http://127.0.0.1/cb", "http://[::1]:8080/cb"]
        }
    })
}

/// A valid self-issuing AuthPolicy with upstream identity providers (Delegate mode).
fn upstream_policy() -> Value {
    let mut v = issuer_policy();
    let own = &mut v["spec"]["issuer"]["self"];
    own["publicUrl"] = json!("https://login.example.com");
    own["upstreams"] = json!([
        {"name": "google", "displayName": "Google", "clientId": "1234.apps.googleusercontent.com",
         "clientSecretRef": {"name": "google-oauth", "key": "client_secret"},
         "oidc": {"issuer": "https://accounts.google.com", "issuerAliases": ["accounts.google.com"],
                  "algorithms": ["RS256"], "hostedDomains": ["example.com"],
                  "claims": {"subject": "oid"}, "trustUnverifiedEmail": "WhenMissing"},
         "allow": {"emailDomains": ["example.com"]}},
        {"name": "github", "clientId": "Iv23li", "clientSecretRef": {"name": "gh", "key": "secret"},
         "github": {"orgs": [{"name": "acme", "teams": ["sre"]}]}}
    ]);
    own["identity"] = json!({"maxUpstreamAge": "24h"});
    v
}

/// A valid Direct-mode issuer: upstreams without the app's login page.
fn direct_upstream_policy() -> Value {
    let mut v = upstream_policy();
    let own = &mut v["spec"]["issuer"]["self"];
    own.as_object_mut().expect("an object").remove("loginUrl");
    own["identity"] = json!({"mode": "Direct", "directScopes": ["read:items"],
        "scopesFromGroups": [{"upstream": "github", "group": "acme:sre", "scopes": ["read:items"]}]});
    v
}

/// A valid confidential client limited to some login choices.
fn upstream_client() -> Value {
    let mut v = confidential_client();
    v["spec"]["upstreams"] = json!(["google", "local"]);
    v
}

/// One bad object: (description, a valid base, the one change that breaks it, what the
/// API server's refusal must say).
type Case = (&'static str, fn() -> Value, fn(&mut Value), &'static str);

fn cases() -> Vec<Case> {
    vec![
        (
            "enforcement that is not a mode",
            dry_run_policy,
            |v| v["spec"]["enforcement"] = json!("Audit"),
            "spec.enforcement: Unsupported value: \"Audit\"",
        ),
        (
            "enforcement spelled in camelCase",
            dry_run_policy,
            |v| v["spec"]["enforcement"] = json!("dryRun"),
            "spec.enforcement: Unsupported value: \"dryRun\"",
        ),
        (
            "rule enforcement that is not a mode",
            dry_run_policy,
            |v| v["spec"]["rules"][1]["enforcement"] = json!("Off"),
            "spec.rules[1].enforcement: Unsupported value: \"Off\"",
        ),
        (
            "enforcement on a public rule",
            dry_run_policy,
            |v| v["spec"]["rules"][2]["enforcement"] = json!("DryRun"),
            "a public rule refuses nothing, so enforcement has no effect on it",
        ),
        (
            "issuer with nothing set",
            issuer_policy,
            |v| v["spec"]["issuer"] = json!({}),
            "issuer must set exactly one of self, policyRef or external",
        ),
        (
            "issuer with self and policyRef",
            issuer_policy,
            |v| v["spec"]["issuer"]["policyRef"] = json!({"name": "other"}),
            "issuer must set exactly one of self, policyRef or external",
        ),
        (
            "duration in days",
            issuer_policy,
            |v| v["spec"]["issuer"]["self"]["rotationPeriod"] = json!("30d"),
            "a duration is hours, minutes and seconds in that order",
        ),
        (
            "zero duration",
            issuer_policy,
            |v| v["spec"]["issuer"]["self"]["tokens"] = json!({"accessTokenTtl": "0s"}),
            "must be greater than zero",
        ),
        (
            "rotation not longer than propagation",
            issuer_policy,
            |v| {
                v["spec"]["issuer"]["self"]["rotationPeriod"] = json!("5m");
                v["spec"]["issuer"]["self"]["propagation"] = json!("10m");
            },
            "rotationPeriod must be greater than propagation",
        ),
        (
            "code TTL above 10m",
            issuer_policy,
            |v| v["spec"]["issuer"]["self"]["tokens"] = json!({"codeTtl": "11m"}),
            "codeTtl must be at most 10m",
        ),
        (
            "leeway above 60s",
            issuer_policy,
            |v| v["spec"]["issuer"]["self"]["tokens"] = json!({"leeway": "61s"}),
            "leeway must be at most 60s",
        ),
        (
            "refresh idle longer than the refresh lifetime",
            issuer_policy,
            |v| {
                v["spec"]["issuer"]["self"]["tokens"] =
                    json!({"refreshTokenTtl": "24h", "refreshTokenIdle": "25h"})
            },
            "refreshTokenIdle must be at most refreshTokenTtl",
        ),
        (
            "plain http issuer url",
            issuer_policy,
            |v| v["spec"]["issuer"]["self"]["url"] = json!("http://auth.example.com"),
            "url must be an absolute https URL without query or fragment",
        ),
        (
            "issuer url with fragment",
            issuer_policy,
            |v| v["spec"]["issuer"]["self"]["url"] = json!("https://auth.example.com/#x"),
            "url must be an absolute https URL without query or fragment",
        ),
        (
            "login url on localhost over http",
            issuer_policy,
            |v| v["spec"]["issuer"]["self"]["loginUrl"] = json!("http://localhost:3000/login"),
            "http only for 127.0.0.1 or [::1], not localhost",
        ),
        (
            "scope name with a space",
            issuer_policy,
            |v| v["spec"]["issuer"]["self"]["scopes"]["read items"] = json!("bad"),
            "scope names must be RFC 6749 scope-tokens",
        ),
        (
            "scope name with a double quote",
            issuer_policy,
            |v| v["spec"]["issuer"]["self"]["scopes"]["read\"items"] = json!("bad"),
            "scope names must be RFC 6749 scope-tokens",
        ),
        (
            "rule path without leading slash",
            issuer_policy,
            |v| v["spec"]["rules"][0]["paths"] = json!(["items"]),
            PATH_WORDS,
        ),
        (
            "rule path with a dot-dot segment",
            issuer_policy,
            |v| v["spec"]["rules"][0]["paths"] = json!(["/items/../admin"]),
            PATH_WORDS,
        ),
        (
            "rule path with percent-encoding",
            issuer_policy,
            |v| v["spec"]["rules"][0]["paths"] = json!(["/items%2Fadmin"]),
            PATH_WORDS,
        ),
        (
            "public rule requiring scopes",
            issuer_policy,
            |v| v["spec"]["rules"][0]["public"] = json!(true),
            "a public rule needs no token, so it cannot require scopes",
        ),
        (
            "rule with require and anyOf",
            issuer_policy,
            |v| v["spec"]["rules"][0]["anyOf"] = json!([["write:items"]]),
            "set either require (all of these scopes) or anyOf",
        ),
        (
            "rule naming an undeclared scope",
            issuer_policy,
            |v| v["spec"]["rules"][0]["require"] = json!(["write:x"]),
            "every scope that rules require (require and anyOf) must be declared in issuer.self.scopes",
        ),
        (
            "mint scope outside the vocabulary",
            issuer_policy,
            |v| v["spec"]["issuer"]["self"]["mint"]["scopes"] = json!(["admin"]),
            "mint.scopes names a scope not declared in scopes: admin",
        ),
        (
            "listen port equals upstream port",
            issuer_policy,
            |v| v["spec"]["listen"] = json!({"port": 8080}),
            "listen.port and upstream.port must differ",
        ),
        (
            "port out of range",
            issuer_policy,
            |v| v["spec"]["upstream"]["port"] = json!(70000),
            "spec.upstream.port",
        ),
        (
            "too many mint socket containers",
            issuer_policy,
            |v| {
                v["spec"]["issuer"]["self"]["mintSocketContainers"] =
                    json!(["a", "b", "c", "d", "e", "f", "g", "h", "i"])
            },
            "spec.issuer.self.mintSocketContainers: Too many: 9: must have at most 8 items",
        ),
        (
            "a mint socket container named twice",
            issuer_policy,
            |v| v["spec"]["issuer"]["self"]["mintSocketContainers"] = json!(["app", "app"]),
            "spec.issuer.self.mintSocketContainers[1]: Duplicate value: \"app\"",
        ),
        (
            "a mint socket container without a name",
            issuer_policy,
            |v| v["spec"]["issuer"]["self"]["mintSocketContainers"] = json!([""]),
            "spec.issuer.self.mintSocketContainers[0]",
        ),
        (
            "a port lock that is not a boolean",
            external_policy,
            |v| v["spec"]["inbound"] = json!({"portLock": "yes"}),
            "spec.inbound.portLock: Invalid value: \"string\": spec.inbound.portLock in body must be of type boolean",
        ),
        (
            "listening on the admin port",
            issuer_policy,
            |v| v["spec"]["listen"] = json!({"port": 15090}),
            "port 15090 is the sidecar's admin port",
        ),
        (
            "rsaBits with ES256",
            issuer_policy,
            |v| {
                v["spec"]["issuer"]["self"]["signing"] =
                    json!({"algorithm": "ES256", "rsaBits": 3072})
            },
            "rsaBits applies only to algorithm RS256",
        ),
        (
            "issuer signing with ES384",
            issuer_policy,
            |v| v["spec"]["issuer"]["self"]["signing"] = json!({"algorithm": "ES384"}),
            r#"supported values: "ES256", "RS256", "EdDSA", "HS256""#,
        ),
        (
            "redis store without redis",
            issuer_policy,
            |v| v["spec"]["issuer"]["self"]["store"] = json!({"type": "Redis"}),
            "set redis exactly when type is Redis",
        ),
        (
            "identity headers that collide",
            issuer_policy,
            |v| {
                v["spec"]["headers"] =
                    json!({"identity": {"subject": "X-User", "scopes": "x-user"}})
            },
            "identity header names must differ",
        ),
        (
            "too many scopes in a rule",
            issuer_policy,
            |v| {
                v["spec"]["rules"][0]["require"] =
                    json!((0..65).map(|i| format!("s{i}")).collect::<Vec<_>>())
            },
            "must have at most 64 items",
        ),
        (
            "external issuer without algorithms",
            external_policy,
            |v| v["spec"]["issuer"]["external"]["algorithms"] = json!([]),
            "spec.issuer.external.algorithms",
        ),
        (
            "external issuer with HS256",
            external_policy,
            |v| v["spec"]["issuer"]["external"]["algorithms"] = json!(["HS256"]),
            r#"Unsupported value: "HS256""#,
        ),
        (
            "external jwksUri over http",
            external_policy,
            |v| v["spec"]["issuer"]["external"]["jwksUri"] = json!("http://login.example.com/jwks"),
            "jwksUri must be an absolute https URL without fragment",
        ),
        (
            "trusted proxies by hops and cidrs",
            external_policy,
            |v| v["spec"]["trustedProxies"] = json!({"hops": 1, "cidrs": ["10.0.0.0/8"]}),
            "trustedProxies sets exactly one of hops or cidrs",
        ),
        (
            "trusted proxy that is not a CIDR",
            external_policy,
            |v| v["spec"]["trustedProxies"] = json!({"cidrs": ["10.0.0.300/8"]}),
            "cidrs must be CIDRs such as 10.0.0.0/8 or fd00::/8: 10.0.0.300/8",
        ),
        (
            "public client with client_credentials",
            public_client,
            |v| v["spec"]["grantTypes"] = json!(["client_credentials"]),
            "a public client has no secret to authenticate with",
        ),
        (
            "public client with a secret method",
            public_client,
            |v| v["spec"]["tokenEndpointAuthMethod"] = json!("client_secret_basic"),
            "tokenEndpointAuthMethod none is for public clients and only for them",
        ),
        (
            "confidential client with method none",
            confidential_client,
            |v| v["spec"]["tokenEndpointAuthMethod"] = json!("none"),
            "tokenEndpointAuthMethod none is for public clients and only for them",
        ),
        (
            "public client with a secretName",
            public_client,
            |v| v["spec"]["secretName"] = json!("x"),
            "a public client has no secret: remove secretName",
        ),
        (
            "egress on the sidecar's listen port",
            issuer_policy,
            |v| {
                v["spec"]["egress"] = json!({"clientRef": {"name": "billing"}, "port": 15080,
                    "targets": [{"name": "orders", "url": "http://orders.shop.svc", "audience": "https://orders.shop.svc"}]})
            },
            "egress.port must differ from upstream.port, listen.port and 15090",
        ),
        (
            "plain-HTTP egress to a host outside the cluster",
            issuer_policy,
            |v| {
                v["spec"]["egress"] = json!({"clientRef": {"name": "billing"},
                    "targets": [{"name": "api", "url": "http://api.example.com", "audience": "https://api.example.com"}]})
            },
            "url must be https://host[:port], or http://<service>.<namespace>.svc[:port]",
        ),
        (
            "egress url with user info and a path",
            issuer_policy,
            |v| {
                v["spec"]["egress"] = json!({"clientRef": {"name": "billing"},
                    "targets": [{"name": "api", "url": "https://me@api.example.com/x", "audience": "https://api.example.com"}]})
            },
            "url must be https://host[:port], or http://<service>.<namespace>.svc[:port]",
        ),
        (
            "ServiceAccount client with a secretName",
            confidential_client,
            |v| v["spec"]["serviceAccounts"] = json!(["billing"]),
            "a client that authenticates with ServiceAccount tokens has no secret and is not public",
        ),
        (
            "public ServiceAccount client",
            public_client,
            |v| v["spec"]["serviceAccounts"] = json!(["billing"]),
            "a client that authenticates with ServiceAccount tokens has no secret and is not public",
        ),
        (
            "ServiceAccount client with a secret method",
            confidential_client,
            |v| {
                v["spec"]
                    .as_object_mut()
                    .map(|spec| spec.remove("secretName"));
                v["spec"]["serviceAccounts"] = json!(["billing"]);
                v["spec"]["tokenEndpointAuthMethod"] = json!("client_secret_post");
            },
            "a client that authenticates with ServiceAccount tokens has no secret and is not public",
        ),
        (
            "another namespace's ServiceAccount",
            confidential_client,
            |v| {
                v["spec"]
                    .as_object_mut()
                    .map(|spec| spec.remove("secretName"));
                v["spec"]["serviceAccounts"] = json!(["system:serviceaccount:other:billing"]);
            },
            "should match",
        ),
        (
            "secretName and existingSecret",
            confidential_client,
            |v| v["spec"]["existingSecret"] = json!({"name": "mine", "key": "secret"}),
            "set secretName (the operator generates the secret) or existingSecret",
        ),
        (
            "token exchange on a public client",
            public_client,
            |v| v["spec"]["tokenExchange"] = json!({"subjectAudiences": ["https://a.example"], "audiences": ["https://b.example"]}),
            "a public client cannot exchange tokens",
        ),
        (
            "token exchange to no audience",
            confidential_client,
            |v| {
                v["spec"]["tokenExchange"] =
                    json!({"subjectAudiences": ["https://a.example"], "audiences": []})
            },
            "should have at least 1 items",
        ),
        (
            "token exchange deeper than four actors",
            confidential_client,
            |v| {
                v["spec"]["tokenExchange"] = json!({"subjectAudiences": ["https://a.example"],
                    "audiences": ["https://b.example"], "maxDepth": 5})
            },
            "should be less than or equal to 4",
        ),
        (
            "default scope outside scopes",
            confidential_client,
            |v| v["spec"]["defaultScopes"] = json!(["read:items", "admin"]),
            "defaultScopes must be a subset of scopes; not in scopes: admin",
        ),
        (
            "authorization_code without redirect URIs",
            confidential_client,
            |v| v["spec"]["grantTypes"] = json!(["authorization_code"]),
            "the authorization_code grant needs at least one redirectUri",
        ),
        (
            "refresh_token with client_credentials only",
            confidential_client,
            |v| v["spec"]["grantTypes"] = json!(["client_credentials", "refresh_token"]),
            "refresh_token needs authorization_code",
        ),
        (
            "redirect URI on localhost",
            public_client,
            |v| v["spec"]["redirectUris"] = json!(["http://localhost:8080/cb"]),
            "redirectUris must be absolute https URLs without fragment (http only for 127.0.0.1 or [::1], not localhost): http://localhost:8080/cb",
        ),
        (
            "redirect URI with fragment",
            public_client,
            |v| v["spec"]["redirectUris"] = json!(["https://app.example.com/cb#frag"]),
            "redirectUris must be absolute https URLs without fragment",
        ),
        (
            "upstream with both oidc and github",
            upstream_policy,
            |v| {
                v["spec"]["issuer"]["self"]["upstreams"][1]["oidc"] =
                    json!({"issuer": "https://a.example"})
            },
            "an upstream sets exactly one of oidc or github",
        ),
        (
            "upstream with neither oidc nor github",
            upstream_policy,
            |v| {
                v["spec"]["issuer"]["self"]["upstreams"][1]
                    .as_object_mut()
                    .expect("an object")
                    .remove("github");
            },
            "an upstream sets exactly one of oidc or github",
        ),
        (
            "upstream named local",
            upstream_policy,
            |v| v["spec"]["issuer"]["self"]["upstreams"][0]["name"] = json!("local"),
            "the upstream name local is reserved",
        ),
        (
            "upstream name that is not a DNS label",
            upstream_policy,
            |v| v["spec"]["issuer"]["self"]["upstreams"][0]["name"] = json!("Google_1"),
            "spec.issuer.self.upstreams[0].name",
        ),
        (
            "two upstreams of one name",
            upstream_policy,
            |v| v["spec"]["issuer"]["self"]["upstreams"][1]["name"] = json!("google"),
            "Duplicate value",
        ),
        (
            "nine upstreams",
            upstream_policy,
            |v| {
                let one = v["spec"]["issuer"]["self"]["upstreams"][0].clone();
                let many: Vec<Value> = (0..9)
                    .map(|i| {
                        let mut u = one.clone();
                        u["name"] = json!(format!("idp{i}"));
                        u
                    })
                    .collect();
                v["spec"]["issuer"]["self"]["upstreams"] = json!(many);
            },
            "must have at most 8 items",
        ),
        (
            "plain http OIDC issuer",
            upstream_policy,
            |v| {
                v["spec"]["issuer"]["self"]["upstreams"][0]["oidc"]["issuer"] =
                    json!("http://idp.example.com")
            },
            "issuer must be an absolute https URL without query or fragment",
        ),
        (
            "OIDC scopes without openid",
            upstream_policy,
            |v| v["spec"]["issuer"]["self"]["upstreams"][0]["oidc"]["scopes"] = json!(["email"]),
            "scopes must contain openid",
        ),
        (
            "a caBundle that is not PEM certificates",
            upstream_policy,
            |v| {
                v["spec"]["issuer"]["self"]["upstreams"][0]["caBundle"] =
                    json!("-----BEGIN PRIVATE KEY-----\nAAAA\n-----END PRIVATE KEY-----\n")
            },
            "caBundle must hold PEM certificates (-----BEGIN CERTIFICATE-----)",
        ),
        (
            "users keyed on an email claim",
            upstream_policy,
            |v| {
                v["spec"]["issuer"]["self"]["upstreams"][0]["oidc"]["claims"] =
                    json!({"subject": "preferred_username"})
            },
            "claims.subject must be a stable id claim (sub, oid), never an email",
        ),
        (
            "HS256 ID tokens",
            upstream_policy,
            |v| {
                v["spec"]["issuer"]["self"]["upstreams"][0]["oidc"]["algorithms"] =
                    json!(["RS256", "HS256"])
            },
            "ID tokens signed with HS256 are refused",
        ),
        (
            "Delegate mode without loginUrl",
            upstream_policy,
            |v| {
                v["spec"]["issuer"]["self"]
                    .as_object_mut()
                    .expect("an object")
                    .remove("loginUrl");
            },
            "upstreams with identity.mode Delegate (the default) need loginUrl",
        ),
        (
            "Direct scopes outside the vocabulary",
            direct_upstream_policy,
            |v| {
                v["spec"]["issuer"]["self"]["identity"]["directScopes"] =
                    json!(["read:items", "admin"])
            },
            "identity.directScopes names a scope not declared in scopes: admin",
        ),
        (
            "group scopes outside the vocabulary",
            direct_upstream_policy,
            |v| {
                v["spec"]["issuer"]["self"]["identity"]["scopesFromGroups"][0]["scopes"] =
                    json!(["read:items", "root"])
            },
            "identity.scopesFromGroups names a scope not declared in scopes",
        ),
        (
            "group scopes for an upstream that is not declared",
            direct_upstream_policy,
            |v| {
                v["spec"]["issuer"]["self"]["identity"]["scopesFromGroups"][0]["upstream"] =
                    json!("gitlab")
            },
            "identity.scopesFromGroups names an upstream not in upstreams",
        ),
        (
            "group scopes in Delegate mode",
            direct_upstream_policy,
            |v| {
                v["spec"]["issuer"]["self"]["identity"]["mode"] = json!("Delegate");
                v["spec"]["issuer"]["self"]["loginUrl"] = json!("https://shop.example/login");
            },
            "identity.scopesFromGroups applies to identity.mode Direct only",
        ),
        (
            "plain http publicUrl",
            upstream_policy,
            |v| v["spec"]["issuer"]["self"]["publicUrl"] = json!("http://login.example.com"),
            "publicUrl must be an absolute https URL without query or fragment",
        ),
        (
            "maxUpstreamAge in days",
            upstream_policy,
            |v| v["spec"]["issuer"]["self"]["identity"]["maxUpstreamAge"] = json!("1d"),
            "a duration is hours, minutes and seconds in that order",
        ),
        (
            "client login choice that is not a name",
            upstream_client,
            |v| v["spec"]["upstreams"] = json!(["Google!"]),
            "spec.upstreams[0]",
        ),
        (
            "relative redirect URI",
            public_client,
            |v| v["spec"]["redirectUris"] = json!(["/cb"]),
            "redirectUris must be absolute https URLs without fragment",
        ),
        (
            "custom-scheme redirect URI",
            public_client,
            |v| v["spec"]["redirectUris"] = json!(["javascript://app.example.com/%0aalert(1)"]),
            "redirectUris must be absolute https URLs without fragment",
        ),
        (
            "client scope with a backslash",
            confidential_client,
            |v| v["spec"]["scopes"] = json!(["read\\items"]),
            "spec.scopes[0]",
        ),
        (
            "issuer service named like a foreign host",
            issuer_policy,
            |v| v["spec"]["issuer"]["self"]["service"]["name"] = json!("accounts.google.com"),
            "service.name must be the name of a Service in this namespace",
        ),
        (
            "issuer service named like another namespace's Service",
            issuer_policy,
            |v| v["spec"]["issuer"]["self"]["service"]["name"] = json!("auth.shop.svc"),
            "service.name must be the name of a Service in this namespace",
        ),
        (
            "issuer service named with a wildcard",
            issuer_policy,
            |v| v["spec"]["issuer"]["self"]["service"]["name"] = json!("*"),
            "service.name must be the name of a Service in this namespace",
        ),
        (
            "issuer service name in upper case",
            issuer_policy,
            |v| v["spec"]["issuer"]["self"]["service"]["name"] = json!("Auth"),
            "service.name must be the name of a Service in this namespace",
        ),
        (
            "external caBundle that is not PEM certificates",
            external_policy,
            |v| v["spec"]["issuer"]["external"]["caBundle"] = json!("not a certificate"),
            "caBundle must hold PEM certificates (-----BEGIN CERTIFICATE-----)",
        ),
        (
            "client without grants",
            confidential_client,
            |v| v["spec"]["grantTypes"] = json!([]),
            "spec.grantTypes",
        ),
        // Issue 16 §2: what can never be right is refused at apply, in words.
        (
            "empty selector",
            issuer_policy,
            |v| v["spec"]["selector"] = json!({}),
            SELECTOR_WORDS,
        ),
        (
            "selector with empty matchLabels and matchExpressions",
            issuer_policy,
            |v| v["spec"]["selector"] = json!({"matchLabels": {}, "matchExpressions": []}),
            SELECTOR_WORDS,
        ),
        (
            "selector of NotIn terms only",
            issuer_policy,
            |v| {
                v["spec"]["selector"] = json!({"matchExpressions": [
                    {"key": "app", "operator": "NotIn", "values": ["db"]}]})
            },
            SELECTOR_WORDS,
        ),
        (
            "selector of DoesNotExist terms only",
            issuer_policy,
            |v| {
                v["spec"]["selector"] =
                    json!({"matchExpressions": [{"key": "canary", "operator": "DoesNotExist"}]})
            },
            SELECTOR_WORDS,
        ),
        (
            "selector operator that does not exist",
            issuer_policy,
            |v| {
                v["spec"]["selector"] = json!({"matchExpressions": [
                    {"key": "app", "operator": "Equals", "values": ["auth"]}]})
            },
            r#"supported values: "In", "NotIn", "Exists", "DoesNotExist""#,
        ),
        (
            "selector In without values",
            issuer_policy,
            |v| {
                v["spec"]["selector"] =
                    json!({"matchExpressions": [{"key": "app", "operator": "In"}]})
            },
            "operators In and NotIn need values",
        ),
        (
            "selector Exists with values",
            issuer_policy,
            |v| {
                v["spec"]["selector"] = json!({"matchExpressions": [
                    {"key": "app", "operator": "Exists", "values": ["auth"]}]})
            },
            "operators Exists and DoesNotExist take no values",
        ),
        (
            "policy name too long for its label",
            issuer_policy,
            |v| v["metadata"]["name"] = json!("p".repeat(64)),
            "metadata.name must be at most 63 characters: the operator labels the objects it renders for this policy with its name (scopegate.dev/policy)",
        ),
        (
            "client name too long for its label",
            confidential_client,
            |v| v["metadata"]["name"] = json!("c".repeat(64)),
            "metadata.name must be at most 63 characters: the operator labels the objects it renders for this client with its name (scopegate.dev/oauth-client)",
        ),
        (
            "two rules for one path, one public",
            issuer_policy,
            |v| {
                v["spec"]["rules"] = json!([
                    {"paths": ["/items/**"], "require": ["read:items"]},
                    {"paths": ["/other", "/items/**"], "public": true}])
            },
            RULE_CONFLICT_WORDS,
        ),
        (
            "two rules for one method and path, requiring different scopes",
            issuer_policy,
            |v| {
                v["spec"]["rules"] = json!([
                    {"methods": ["POST", "GET"], "paths": ["/items/**"], "require": ["read:items"]},
                    {"methods": ["GET"], "paths": ["/items/**"], "require": ["write:items"]}])
            },
            RULE_CONFLICT_WORDS,
        ),
        (
            "two rules for one path, one dry",
            issuer_policy,
            |v| {
                v["spec"]["rules"] = json!([
                    {"paths": ["/items/**"], "require": ["read:items"]},
                    {"paths": ["/items/**"], "require": ["read:items"], "enforcement": "DryRun"}])
            },
            RULE_CONFLICT_WORDS,
        ),
        (
            "rotation every 30 minutes",
            issuer_policy,
            |v| v["spec"]["issuer"]["self"]["rotationPeriod"] = json!("30m"),
            "rotationPeriod must be at least 1h",
        ),
        (
            "access tokens for a day and a half",
            issuer_policy,
            |v| {
                v["spec"]["issuer"]["self"]["rotationPeriod"] = json!("720h");
                v["spec"]["issuer"]["self"]["tokens"] = json!({"accessTokenTtl": "36h"})
            },
            "accessTokenTtl must be at most 24h",
        ),
        (
            "rotation faster than the access-token lifetime",
            issuer_policy,
            |v| {
                v["spec"]["issuer"]["self"]["rotationPeriod"] = json!("2h");
                v["spec"]["issuer"]["self"]["tokens"] = json!({"accessTokenTtl": "3h"})
            },
            "rotationPeriod must be at least accessTokenTtl and mint.maxTtl",
        ),
        (
            "minted tokens for two days",
            issuer_policy,
            |v| v["spec"]["issuer"]["self"]["mint"]["maxTtl"] = json!("48h"),
            "mint.maxTtl must be at most 24h",
        ),
        (
            "wildcard redirect URI",
            public_client,
            |v| v["spec"]["redirectUris"] = json!(["https://app.example.com/*"]),
            "redirectUris are compared exactly and cannot hold wildcards (*): https://app.example.com/*",
        ),
        (
            "redirect URI with userinfo",
            public_client,
            |v| v["spec"]["redirectUris"] = json!(["https://app.example.com@evil.example/cb"]),
            "redirectUris cannot carry userinfo (user:password@ before the host)",
        ),
        (
            "sidecar on a privileged port",
            issuer_policy,
            |v| v["spec"]["listen"] = json!({"port": 443}),
            "listen.port must be 1024 or above",
        ),
        (
            "rule path with a dot segment",
            issuer_policy,
            |v| v["spec"]["rules"][0]["paths"] = json!(["/items/./x"]),
            PATH_WORDS,
        ),
        (
            "rule path with an empty segment",
            issuer_policy,
            |v| v["spec"]["rules"][0]["paths"] = json!(["/items//x"]),
            PATH_WORDS,
        ),
        (
            "rule path with ** inside",
            issuer_policy,
            |v| v["spec"]["rules"][0]["paths"] = json!(["/items/**/x"]),
            PATH_WORDS,
        ),
    ]
}

const SELECTOR_WORDS: &str = "selector must pick pods by at least one label they have";
const RULE_CONFLICT_WORDS: &str = "two rules match the same method and path with different actions: the earlier one always decides";
const PATH_WORDS: &str = "a path pattern starts with '/' and is made of segments";

/// One accepted object: (description, a valid base, the change that must stay accepted).
type Variant = (&'static str, fn() -> Value, fn(&mut Value));

/// Objects close to the refused ones that must stay accepted: the refusals are no broader
/// than what can never be right.
fn accepted_variants() -> Vec<Variant> {
    vec![
        ("a name of 63 characters", issuer_policy, |v| {
            v["metadata"]["name"] = json!("p".repeat(63))
        }),
        ("a selector of one In term", issuer_policy, |v| {
            v["spec"]["selector"] =
                json!({"matchExpressions": [{"key": "app", "operator": "In", "values": ["auth"]}]})
        }),
        ("a selector of Exists and NotIn terms", issuer_policy, |v| {
            v["spec"]["selector"] = json!({"matchExpressions": [
                {"key": "app", "operator": "Exists"},
                {"key": "tier", "operator": "NotIn", "values": ["db"]}]})
        }),
        (
            "one path, different methods, different actions",
            issuer_policy,
            |v| {
                v["spec"]["rules"] = json!([
                {"methods": ["GET"], "paths": ["/items/**"], "require": ["read:items"]},
                {"methods": ["POST"], "paths": ["/items/**"], "require": ["write:items"]}])
            },
        ),
        (
            "one path, a rule naming methods beside one naming none",
            issuer_policy,
            |v| {
                v["spec"]["rules"] = json!([
                {"paths": ["/items/**"], "require": ["write:items"]},
                {"methods": ["GET"], "paths": ["/items/**"], "require": ["read:items"]}])
            },
        ),
        ("the same rule twice", issuer_policy, |v| {
            v["spec"]["rules"] = json!([
                {"paths": ["/items/**"], "require": ["read:items"]},
                {"paths": ["/items/**"], "require": ["read:items"]}])
        }),
        ("hourly rotation of 15-minute tokens", issuer_policy, |v| {
            v["spec"]["issuer"]["self"]["rotationPeriod"] = json!("1h")
        }),
        ("day-long tokens rotated daily", issuer_policy, |v| {
            v["spec"]["issuer"]["self"]["rotationPeriod"] = json!("24h");
            v["spec"]["issuer"]["self"]["tokens"] = json!({"accessTokenTtl": "24h"})
        }),
        ("a loopback redirect with a port", public_client, |v| {
            v["spec"]["redirectUris"] =
                json!(["http://127.0.0.1:8765/cb", "https://app.example.com/a@b"])
        }),
        ("the sidecar on port 1024", issuer_policy, |v| {
            v["spec"]["listen"] = json!({"port": 1024})
        }),
        (
            "a client of two ServiceAccounts, no secret",
            confidential_client,
            |v| {
                v["spec"]
                    .as_object_mut()
                    .map(|spec| spec.remove("secretName"));
                v["spec"]["serviceAccounts"] = json!(["billing", "billing.batch-2"]);
            },
        ),
    ]
}

async fn dry_run_create(client: &Client, ns: &str, object: &Value) -> Result<(), kube::Error> {
    let kind = object["kind"].as_str().unwrap_or_default();
    let api: Api<DynamicObject> = Api::namespaced_with(client.clone(), ns, &api_resource(kind));
    let object: DynamicObject = serde_json::from_value(object.clone()).expect("object shape");
    api.create(
        &PostParams {
            dry_run: true,
            ..Default::default()
        },
        &object,
    )
    .await
    .map(|_| ())
}

#[tokio::test]
async fn cel_rules_refuse_bad_objects_with_their_message() {
    let (_plane, client) = setup().await;
    let ns = TestNamespace::create(&client, "cel")
        .await
        .expect("namespace");

    // The valid bases are accepted, so each refusal below is caused by its one change.
    for base in [
        issuer_policy,
        dry_run_policy,
        upstream_policy,
        direct_upstream_policy,
        upstream_client,
        external_policy,
        confidential_client,
        public_client,
    ] {
        let object = base();
        dry_run_create(&client, &ns.name, &object)
            .await
            .unwrap_or_else(|e| panic!("valid base {} is accepted: {e}", object["kind"]));
    }

    let mut failures = Vec::new();
    for (description, base, mutate) in accepted_variants() {
        let mut object = base();
        mutate(&mut object);
        if let Err(e) = dry_run_create(&client, &ns.name, &object).await {
            failures.push(format!("{description}: refused but must be accepted: {e}"));
        }
    }
    for (description, base, mutate, expected) in cases() {
        let mut object = base();
        mutate(&mut object);
        match dry_run_create(&client, &ns.name, &object).await {
            Ok(()) => failures.push(format!("{description}: accepted")),
            // Words, never the grammar's regular expression.
            Err(kube::Error::Api(status))
                if expected == PATH_WORDS && status.message.contains("should match") =>
            {
                failures.push(format!("{description}: a regex dump: {}", status.message))
            }
            Err(kube::Error::Api(status))
                if status.code == 422 && status.message.contains(expected) => {}
            Err(kube::Error::Api(status)) => failures.push(format!(
                "{description}: refused with {} but without {expected:?}: {}",
                status.code, status.message
            )),
            Err(other) => failures.push(format!("{description}: {other}")),
        }
    }
    assert!(
        failures.is_empty(),
        "{} case(s) failed:\n{}",
        failures.len(),
        failures.join("\n")
    );

    ns.delete().await.expect("cleanup");
}

/// The API server's verdict on path patterns (the CEL rule in the CRD) agrees with the core
/// parser the sidecar and the operator use, on spellings near every edge of the grammar.
#[tokio::test]
async fn the_path_rule_agrees_with_the_core_grammar() {
    let (_plane, client) = setup().await;
    let ns = TestNamespace::create(&client, "paths")
        .await
        .expect("namespace");
    let paths = [
        "/",
        "/**",
        "/a",
        "/a/",
        "/a/*",
        "/a/*/",
        "/a/**",
        "/a/*/**",
        "/*/*",
        "//",
        "/a//b",
        "/.",
        "/..",
        "/./a",
        "/a/.",
        "/a/..",
        "/a/./b",
        "/.a",
        "/..a",
        "/...",
        "/a.",
        "/a/.b/c",
        "/a/**/b",
        "/**/",
        "/a/b*",
        "/*a",
        "/***",
        "/a/**/",
        "/a%20b",
        "/a;b",
        "/a?b",
        "/a#b",
        "a",
        "/ä",
        "/a b",
        "/:id",
        "/v1/orders:cancel",
        "/@me",
        "/~u",
        "/a'b",
        "/a\"b",
        "/a\\b",
        "/(x)+,=$&!",
    ];
    let mut disagreements = Vec::new();
    for path in paths {
        let mut object = issuer_policy();
        object["spec"]["rules"][0]["paths"] = json!([path]);
        let server = dry_run_create(&client, &ns.name, &object).await.is_ok();
        let core = scopegate_core::path::Pattern::parse(path).is_ok();
        if server != core {
            disagreements.push(format!("{path:?}: API server {server}, core {core}"));
        }
    }
    assert!(disagreements.is_empty(), "{disagreements:#?}");
    ns.delete().await.expect("cleanup");
}

/// The objects of `examples/` (but the Namespace) moved into `namespace`, in one file; and
/// how many there are.
fn examples_file(namespace: &str) -> (std::path::PathBuf, usize) {
    let mut files: Vec<_> = std::fs::read_dir(repo_root().join("examples"))
        .expect("examples/")
        .map(|e| e.expect("entry").path())
        .filter(|p| p.extension().is_some_and(|e| e == "yaml"))
        .collect();
    files.sort();
    let mut documents = Vec::new();
    for path in files {
        let text = std::fs::read_to_string(&path).expect("readable");
        for document in serde_yaml_ng::Deserializer::from_str(&text) {
            let mut object = Value::deserialize(document).expect("a YAML object");
            if object["kind"] == "Namespace" {
                continue;
            }
            object["metadata"]["namespace"] = json!(namespace);
            documents.push(serde_yaml_ng::to_string(&object).expect("YAML"));
        }
    }
    let file = std::env::temp_dir().join(format!("scopegate-{namespace}.yaml"));
    std::fs::write(&file, documents.join("---\n")).expect("written");
    (file, documents.len())
}

/// Client-side `kubectl apply` of unchanged examples reports `unchanged`: no default inside
/// a list item makes the live object differ from what was applied.
#[tokio::test]
async fn client_side_apply_of_unchanged_examples_reports_unchanged() {
    let (plane, client) = setup().await;
    let ns = TestNamespace::create(&client, "unchanged")
        .await
        .expect("namespace");
    let (file, count) = examples_file(&ns.name);
    let file_arg = file.to_string_lossy().into_owned();
    let first = plane
        .kubectl(&["apply", "-f", &file_arg])
        .expect("first apply");
    assert_eq!(first.lines().count(), count, "{first}");
    let second = plane
        .kubectl(&["apply", "-f", &file_arg])
        .expect("second apply");
    let _ = std::fs::remove_file(&file);
    let changed: Vec<&str> = second
        .lines()
        .filter(|l| !l.ends_with(" unchanged"))
        .collect();
    assert!(
        changed.is_empty() && second.lines().count() == count,
        "every object unchanged:\n{second}"
    );
    ns.delete().await.expect("cleanup");
}

/// What a re-apply by `manager` could change on each scopegate object of `namespace`: its
/// generation, spec, labels, annotations and `manager`'s managed-fields entry (whose time
/// moves with any write it makes); and whether the operator has written a status.
fn applied_state(
    plane: &ControlPlane,
    namespace: &str,
    manager: &str,
) -> anyhow::Result<BTreeMap<String, (Value, bool)>> {
    let mut state = BTreeMap::new();
    for kind in ["authpolicies", "oauthclients"] {
        let listed: Value = serde_json::from_str(&plane.kubectl(&[
            "get",
            kind,
            "-n",
            namespace,
            "-o",
            "json",
            "--show-managed-fields",
        ])?)?;
        for item in listed["items"].as_array().cloned().unwrap_or_default() {
            let meta = &item["metadata"];
            let entry = meta["managedFields"]
                .as_array()
                .and_then(|fields| fields.iter().find(|f| f["manager"] == manager).cloned());
            let applied = json!({
                "generation": meta["generation"],
                "labels": meta["labels"],
                "annotations": meta["annotations"],
                "spec": item["spec"],
                "managed": entry,
            });
            let operator_only_status = meta["managedFields"]
                .as_array()
                .into_iter()
                .flatten()
                .filter(|f| f["manager"] == FIELD_MANAGER)
                .all(|f| f["subresource"] == "status");
            anyhow::ensure!(
                operator_only_status,
                "the operator manages more than status: {meta}"
            );
            state.insert(
                format!("{kind}/{}", meta["name"].as_str().unwrap_or_default()),
                (applied, !item["status"].is_null()),
            );
        }
    }
    Ok(state)
}

/// A GitOps controller applies `examples/` server-side under its own field manager and
/// re-applies it once the operator has rendered: the re-apply writes nothing, `kubectl diff`
/// shows no drift, and the operator owns nothing but `status`.
#[tokio::test]
async fn a_gitops_server_side_reapply_writes_nothing_and_sees_no_drift() {
    let (plane, client) = setup().await;
    let ns = TestNamespace::create(&client, "gitops")
        .await
        .expect("namespace");
    let (file, count) = examples_file(&ns.name);
    let file = file.to_string_lossy().into_owned();
    let manager = "argocd-controller";
    let apply = [
        "apply",
        "--server-side",
        "--field-manager",
        manager,
        "-f",
        &file,
    ];
    let first = plane.kubectl(&apply).expect("first apply");
    assert_eq!(first.lines().count(), count, "{first}");
    let rendered = eventually("every status written", || async {
        let state = applied_state(&plane, &ns.name, manager)?;
        anyhow::ensure!(
            state.len() == count && state.values().all(|(_, status)| *status),
            "not yet: {state:?}"
        );
        Ok(state)
    })
    .await
    .expect("rendered");

    let second = plane.kubectl(&apply).expect("second apply");
    let after = applied_state(&plane, &ns.name, manager).expect("state");
    for (name, (applied, _)) in &rendered {
        assert_eq!(
            Some(applied),
            after.get(name).map(|(a, _)| a),
            "the re-apply wrote {name}:\n{second}"
        );
    }
    // kubectl diff exits non-zero on any difference.
    let diff = plane.kubectl(&[
        "diff",
        "--server-side",
        "--field-manager",
        manager,
        "-f",
        &file,
    ]);
    let _ = std::fs::remove_file(&file);
    assert!(diff.is_ok(), "drift after a re-apply: {diff:?}");
    ns.delete().await.expect("cleanup");
}
