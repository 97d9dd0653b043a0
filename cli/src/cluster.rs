//! The live cluster: a client from the kubeconfig flags, and the objects the commands read.

use anyhow::Context as _;
use k8s_openapi::api::core::v1::ConfigMap;
use kube::config::{KubeConfigOptions, Kubeconfig};
use kube::{Api, Client, Config};
use scopegate_core::config::{CONFIG_FILE, SidecarConfig};
use scopegate_crds::v1alpha1::AuthPolicy;
use scopegate_operator::names::Names;

use crate::{Failure, Global};

/// A client and the namespace the command works in.
pub struct Cluster {
    /// The API client.
    pub client: Client,
    /// `-n`, else the context's namespace, else `default`.
    pub namespace: String,
}

/// Connects as kubectl would: `--kubeconfig`, else `$KUBECONFIG`, else `~/.kube/config`
/// (or the in-cluster config), with `--context`.
pub async fn connect(global: &Global) -> anyhow::Result<Cluster> {
    let options = KubeConfigOptions {
        context: global.context.clone(),
        ..KubeConfigOptions::default()
    };
    let config = match &global.kubeconfig {
        Some(path) => {
            let kubeconfig = Kubeconfig::read_from(path)
                .with_context(|| format!("reading kubeconfig {}", path.display()))?;
            Config::from_custom_kubeconfig(kubeconfig, &options).await?
        }
        None if global.context.is_some() => Config::from_kubeconfig(&options).await?,
        None => Config::infer().await?,
    };
    let namespace = global
        .namespace
        .clone()
        .unwrap_or_else(|| config.default_namespace.clone());
    let client = Client::try_from(config)?;
    Ok(Cluster { client, namespace })
}

impl Cluster {
    /// An AuthPolicy of the namespace.
    pub async fn policy(&self, name: &str) -> anyhow::Result<AuthPolicy> {
        let api: Api<AuthPolicy> = Api::namespaced(self.client.clone(), &self.namespace);
        api.get_opt(name).await?.ok_or_else(|| {
            Failure::NotFound(format!(
                "authpolicy {name:?} not found in namespace {:?}",
                self.namespace
            ))
            .into()
        })
    }

    /// The sidecar config the operator rendered for a policy (what its sidecars load), or
    /// `None` when it has not been rendered.
    pub async fn rendered_config(
        &self,
        policy: &AuthPolicy,
    ) -> anyhow::Result<Option<SidecarConfig>> {
        let name = policy
            .status
            .as_ref()
            .and_then(|s| s.rendered.as_ref())
            .and_then(|r| r.sidecar_config.clone())
            .unwrap_or_else(|| Names::of(&policy_name(policy)).sidecar);
        let api: Api<ConfigMap> = Api::namespaced(self.client.clone(), &self.namespace);
        let Some(map) = api.get_opt(&name).await? else {
            return Ok(None);
        };
        let Some(text) = map.data.as_ref().and_then(|d| d.get(CONFIG_FILE)) else {
            return Ok(None);
        };
        let config = SidecarConfig::from_json(text)
            .with_context(|| format!("configmap {name}: {CONFIG_FILE}"))?;
        Ok(Some(config))
    }
}

/// The name of a policy object.
pub fn policy_name(policy: &AuthPolicy) -> String {
    policy.metadata.name.clone().unwrap_or_default()
}
