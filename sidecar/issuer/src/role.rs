//! The issuer as the verifier sees it ([`scopegate_verifier::role`]): compiled with every
//! config load, served on the verifier's listener ahead of the proxy.

use std::fmt;
use std::net::IpAddr;
use std::sync::Arc;

use http::Request;
use hyper::body::Incoming;
use scopegate_core::config::{SidecarConfig, StoreConfig};
use scopegate_sidecar_kit::budget::RateStore;
use scopegate_sidecar_kit::exposition::{Encoder, MetricsCollector};
use scopegate_verifier::metrics::Metrics;
use scopegate_verifier::role::{CompiledRole, Role, RoleError, RoleResponse};
use scopegate_verifier::settings::{CompileInput, SkippedKey};

use crate::{Context, Issuer, IssuerSettings};

/// The issuer role of a sidecar. Without a runtime (a pod started without an issuer section)
/// it still compiles, and so checks, the issuer section of a reloaded config, but serves
/// nothing until a restart.
pub struct IssuerRole {
    runtime: Option<Arc<Issuer>>,
}

impl IssuerRole {
    /// The role around the issuer's lasting state, if the pod runs one.
    pub fn new(runtime: Option<Arc<Issuer>>) -> IssuerRole {
        IssuerRole { runtime }
    }
}

impl Role for IssuerRole {
    fn compile(
        &self,
        config: &SidecarConfig,
        input: &CompileInput<'_>,
    ) -> Result<Arc<dyn CompiledRole>, RoleError> {
        let Some(issuer) = &config.issuer else {
            return Err("no issuer section to compile".into());
        };
        let settings = IssuerSettings::compile(
            config,
            issuer,
            input.signing_keys_text,
            input.clients_text,
            input.now,
        )?;
        Ok(Arc::new(Bound {
            runtime: self.runtime.clone(),
            settings: Arc::new(settings),
        }))
    }

    fn collector(&self) -> Option<Box<dyn MetricsCollector>> {
        let issuer = self.runtime.clone()?;
        Some(Box::new(IssuerMetrics(issuer)))
    }

    fn shared_budgets(&self) -> Option<Arc<dyn RateStore>> {
        let issuer = self.runtime.as_ref()?;
        matches!(issuer.store_config, StoreConfig::Redis { .. }).then(|| {
            let store: Arc<dyn RateStore> = issuer.store.clone();
            store
        })
    }
}

/// The issuer compiled from one config load, with the runtime that serves it.
struct Bound {
    runtime: Option<Arc<Issuer>>,
    settings: Arc<IssuerSettings>,
}

impl CompiledRole for Bound {
    fn serves(&self, path: &str) -> bool {
        self.runtime.is_some() && crate::is_issuer_path(&self.settings, path)
    }

    fn handle(
        self: Arc<Self>,
        client_ip: IpAddr,
        path: &str,
        req: Request<Incoming>,
    ) -> RoleResponse {
        let path = path.to_owned();
        Box::pin(async move {
            let Some(issuer) = &self.runtime else {
                return crate::reply::status(http::StatusCode::NOT_FOUND);
            };
            let ctx = Context {
                issuer,
                settings: &self.settings,
                client_ip,
            };
            crate::handle(ctx, &path, req).await
        })
    }

    fn next_change(&self, now: i64) -> Option<i64> {
        self.settings.keys.next_change(now)
    }

    fn skipped_keys(&self) -> Vec<SkippedKey> {
        let settings = &self.settings;
        let skipped = settings.keys.skipped().iter().map(|err| SkippedKey {
            issuer: settings.config.url.clone(),
            kid: err.kid().to_owned(),
            reason: err.to_string(),
        });
        skipped.collect()
    }

    fn put_in_force(&self, metrics: &Arc<Metrics>) {
        if let Some(issuer) = &self.runtime {
            issuer.upstreams.reconcile(&self.settings.config, metrics);
            issuer.in_force.store(Some(self.settings.clone()));
        }
    }

    fn readiness(&self, detail: &mut String) {
        if let Some(issuer) = &self.runtime {
            issuer.upstreams.readiness(&self.settings.config, detail);
        }
    }
}

/// The issuer's metrics on a `/metrics` scrape: its defences' counters, and the upstream
/// providers of the settings in force.
struct IssuerMetrics(Arc<Issuer>);

impl fmt::Debug for IssuerMetrics {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("IssuerMetrics")
    }
}

impl MetricsCollector for IssuerMetrics {
    fn encode(&self, mut encoder: Encoder<'_>) -> fmt::Result {
        let issuer = &self.0;
        issuer.counters.encode(&mut encoder)?;
        let settings = issuer.in_force.load();
        let config = settings.as_ref().map(|s| &s.config);
        issuer.upstreams.encode_metrics(config, &mut encoder)
    }
}
