//! The seam to roles that run beside the proxy on a port of their own (the egress proxy, in
//! pods whose policy declares egress). The verifier knows them only through [`Companion`]:
//! each config that goes in force is handed to them, and their metrics and readiness lines
//! join the admin port's. The sidecar binary attaches them; the verifier depends on none.

use scopegate_core::config::SidecarConfig;
use scopegate_sidecar_kit::exposition::MetricsCollector;

/// A role beside the proxy that follows the config in force.
pub trait Companion: Send + Sync {
    /// Follows a config that went in force after a reload (the first config is the
    /// companion's own business at start).
    fn put_in_force(&self, config: &SidecarConfig);

    /// The companion's metrics, read on each scrape of `/metrics`.
    fn collector(&self) -> Box<dyn MetricsCollector>;

    /// Appends the companion's lines to the `/readyz` detail (never a readiness condition).
    fn readiness(&self, detail: &mut String);
}
