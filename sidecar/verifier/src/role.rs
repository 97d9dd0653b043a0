//! The seam to the issuer role (an OAuth2 authorization server in pods of an `issuer.self`
//! policy). The verifier compiles and serves it only through these traits, so that it never
//! depends on the issuer: the issuer implements them, and the sidecar binary hands the
//! verifier its [`Role`].

use std::future::Future;
use std::net::IpAddr;
use std::pin::Pin;
use std::sync::Arc;

use http::{Request, Response};
use hyper::body::Incoming;
use scopegate_core::config::SidecarConfig;
use scopegate_sidecar_kit::body::ProxyBody;
use scopegate_sidecar_kit::budget::RateStore;
use scopegate_sidecar_kit::exposition::MetricsCollector;

use crate::inputs::{CompileInput, SkippedKey};
use crate::metrics::Metrics;

/// Why the role's part of a config was refused (its message names fields and files, never
/// their secret content).
pub type RoleError = Box<dyn std::error::Error + Send + Sync>;

/// The answer to a request for one of the role's endpoints.
pub type RoleResponse = Pin<Box<dyn Future<Output = Response<ProxyBody>> + Send>>;

/// The role's state that outlives config reloads.
pub trait Role: Send + Sync {
    /// Compiles the role's part of a config load (called when the config has an issuer
    /// section); an error refuses the whole load and the last good config keeps serving.
    fn compile(
        &self,
        config: &SidecarConfig,
        input: &CompileInput<'_>,
    ) -> Result<Arc<dyn CompiledRole>, RoleError>;

    /// The store that per-route rate limits share with other replicas (the issuer's Redis
    /// store); `None` keeps budgets in this process.
    fn shared_budgets(&self) -> Option<Arc<dyn RateStore>>;

    /// The role's metrics, read on each scrape of `/metrics`; `None` when it runs nothing.
    fn collector(&self) -> Option<Box<dyn MetricsCollector>>;
}

/// The role compiled from one config load, served while that config is in force.
pub trait CompiledRole: Send + Sync {
    /// Whether a request path (normalised, forwarded form) is one of the role's endpoints.
    fn serves(&self, path: &str) -> bool;

    /// Answers a request for one of the role's endpoints; `client_ip` is the client address
    /// as `trustedProxies` defines it.
    fn handle(
        self: Arc<Self>,
        client_ip: IpAddr,
        path: &str,
        req: Request<Incoming>,
    ) -> RoleResponse;

    /// When the role's keys change next (Unix seconds): the config is recompiled then.
    fn next_change(&self, now: i64) -> Option<i64>;

    /// The role's keys left out because they do not load.
    fn skipped_keys(&self) -> Vec<SkippedKey>;

    /// Puts this load in force: called whenever the config it belongs to goes in force.
    fn put_in_force(&self, metrics: &Arc<Metrics>);

    /// Appends the role's lines to the `/readyz` detail (never a readiness condition).
    fn readiness(&self, detail: &mut String);
}
