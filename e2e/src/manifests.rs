//! The objects tests apply, as the YAML a team would write: issuer AuthPolicies, policies that
//! trust an external issuer, OAuthClients and pods.

use k8s_openapi::api::core::v1::Pod;

/// An AuthPolicy that runs an issuer, built line by line. Its URL names its own Service in
/// its namespace (`https://<name>.<namespace>.svc`): a URL naming another namespace's Service
/// would be that namespace's audience, and the policy not Ready.
#[derive(Debug, Clone)]
pub struct Issuer {
    name: String,
    namespace: String,
    service: String,
    scopes: String,
    issuer_lines: Vec<String>,
    spec_lines: Vec<String>,
}

/// Issuer AuthPolicy `name` in `namespace`, selecting pods `app: <name>`, serving behind
/// Service `<name>` port 443, with scope `read` and upstream port 8080.
pub fn issuer(namespace: &str, name: &str) -> Issuer {
    Issuer {
        name: name.to_owned(),
        namespace: namespace.to_owned(),
        service: name.to_owned(),
        scopes: "read: Read".to_owned(),
        issuer_lines: Vec::new(),
        spec_lines: Vec::new(),
    }
}

/// The rule most tests protect their upstream with: `/items/**` requires `read`.
pub const READ_ITEMS: &str = r#"rules: [{paths: ["/items/**"], require: [read]}]"#;

impl Issuer {
    /// The scopes it offers, as the inside of a YAML flow map (`read: Read, write: Write`).
    pub fn scopes(mut self, scopes: &str) -> Self {
        self.scopes = scopes.to_owned();
        self
    }

    /// The name of the Service in front of it (default: the policy's name).
    pub fn service(mut self, service: &str) -> Self {
        self.service = service.to_owned();
        self
    }

    /// One more field of `spec.issuer.self`, as YAML at that level (`signing: {algorithm:
    /// ES256}`); several lines are indented together.
    pub fn with(mut self, field: &str) -> Self {
        self.issuer_lines.push(field.to_owned());
        self
    }

    /// One more field of `spec`, as YAML at that level (e.g. [`READ_ITEMS`]); several lines
    /// are indented together.
    pub fn spec(mut self, field: &str) -> Self {
        self.spec_lines.push(field.to_owned());
        self
    }

    /// The YAML document.
    pub fn yaml(&self) -> String {
        let Self {
            name,
            namespace,
            service,
            scopes,
            ..
        } = self;
        format!(
            r#"
apiVersion: scopegate.dev/v1alpha1
kind: AuthPolicy
metadata: {{name: {name}}}
spec:
  selector: {{matchLabels: {{app: {name}}}}}
  issuer:
    self:
      url: https://{name}.{namespace}.svc
      service: {{name: "{service}", port: 443}}
      scopes: {{{scopes}}}
{}
  upstream: {{port: 8080}}
{}
"#,
            indent(&self.issuer_lines, 6),
            indent(&self.spec_lines, 2),
        )
    }
}

fn indent(fields: &[String], by: usize) -> String {
    let pad = " ".repeat(by);
    fields
        .iter()
        .flat_map(|f| f.lines())
        .map(|line| format!("{pad}{line}"))
        .collect::<Vec<_>>()
        .join("\n")
}

/// AuthPolicy `name` selecting pods `app: <app>` that trusts an external issuer
/// (`https://idp.example`, never contacted) for audience `orders`.
pub fn external_policy(name: &str, app: &str) -> String {
    format!(
        r#"
apiVersion: scopegate.dev/v1alpha1
kind: AuthPolicy
metadata: {{name: {name}}}
spec:
  selector: {{matchLabels: {{app: {app}}}}}
  issuer:
    external: {{issuer: "https://idp.example", jwksUri: "https://idp.example/jwks", algorithms: [ES256]}}
  audiences: [orders]
  upstream: {{port: 8080}}
"#
    )
}

/// OAuthClient `name` of the issuer `issuer_ref` (the inside of a YAML flow map: `name: auth`
/// or `name: auth, namespace: other`), granted client_credentials and, unless a field of
/// `extra` names its own `scopes:`, scope `read`. `extra` holds more fields of `spec`, as YAML
/// at that level.
pub fn oauth_client(name: &str, issuer_ref: &str, extra: &str) -> String {
    let scopes = if extra.contains("scopes:") {
        ""
    } else {
        "scopes: [read]"
    };
    format!(
        r#"
apiVersion: scopegate.dev/v1alpha1
kind: OAuthClient
metadata: {{name: {name}}}
spec:
  issuerRef: {{{issuer_ref}}}
  grantTypes: [client_credentials]
{}
"#,
        indent(&[scopes.to_owned(), extra.to_owned()], 2)
    )
}

/// Pod `name` labelled `app: <app>` with one container `app` (image `example/app`, port
/// 8080). Never scheduled: no node runs it.
pub fn app_pod(name: &str, app: &str) -> Pod {
    serde_json::from_value(serde_json::json!({
        "apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": name, "labels": {"app": app}},
        "spec": {"containers": [{
            "name": "app", "image": "example/app",
            "ports": [{"containerPort": 8080}]
        }]}
    }))
    .expect("pod")
}

/// Pod `name` running the example orders app (`examples/apps/orders.py`, image
/// `example/orders`, port 8080, ready at `/ready`), labelled `app: orders`.
pub fn orders_pod(name: &str) -> Pod {
    serde_json::from_value(serde_json::json!({
        "apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": name, "labels": {"app": "orders"}},
        "spec": {"containers": [{
            "name": "app", "image": "example/orders",
            "ports": [{"containerPort": 8080}],
            "readinessProbe": {"httpGet": {"path": "/ready", "port": 8080}}
        }]}
    }))
    .expect("pod")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_issuer_with_every_kind_of_field_parses_as_an_auth_policy() {
        let yaml = issuer("ns", "auth")
            .scopes("read: Read, write: Write")
            .with("signing: {algorithm: ES256}")
            .with("tokens:\n  accessTokenTtl: 60s")
            .spec(READ_ITEMS)
            .yaml();
        let policy: scopegate_crds::v1alpha1::AuthPolicy =
            serde_yaml_ng::from_str(&yaml).unwrap_or_else(|e| panic!("{e}: {yaml}"));
        let value = serde_json::to_value(&policy).expect("json");
        let own = &value["spec"]["issuer"]["self"];
        assert_eq!(own["url"], "https://auth.ns.svc");
        assert_eq!(own["signing"]["algorithm"], "ES256");
        assert_eq!(own["tokens"]["accessTokenTtl"], "60s");
        assert!(own["scopes"].get("write").is_some(), "{own}");
        assert_eq!(value["spec"]["rules"][0]["require"][0], "read");
    }

    #[test]
    fn a_client_keeps_its_own_scopes_and_extra_fields() {
        let default: scopegate_crds::v1alpha1::OAuthClient =
            serde_yaml_ng::from_str(&oauth_client("c", "name: auth", "")).expect("default");
        assert_eq!(default.spec.scopes, vec!["read".to_owned()]);
        let own = oauth_client(
            "c",
            "name: auth, namespace: x",
            "scopes: [write]\naudiences: [a]",
        );
        let own: scopegate_crds::v1alpha1::OAuthClient =
            serde_yaml_ng::from_str(&own).unwrap_or_else(|e| panic!("{e}: {own}"));
        assert_eq!(own.spec.scopes, vec!["write".to_owned()]);
        assert_eq!(own.spec.issuer_ref.namespace.as_deref(), Some("x"));
    }
}
