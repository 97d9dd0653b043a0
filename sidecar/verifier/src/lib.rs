//! scopegate-verifier: the verifying reverse proxy in front of every protected app. One
//! request is normalised, matched to a rule, rate-limited, authenticated and authorised, then
//! forwarded to the app with clean headers or refused ([`proxy`]); the config is compiled
//! ([`settings`]) and hot-reloaded ([`reload`]) into the live state ([`state`]) that the
//! proxy and admin ports ([`server`]) serve.
//!
//! In pods of an `issuer.self` policy the issuer role answers its endpoints on the same
//! listener; the verifier knows it only through [`role::Role`] and never depends on it. Roles
//! on ports of their own (the egress proxy) follow reloads through [`companion::Companion`].

pub mod admin;
pub mod app_probes;
pub mod body_deadline;
pub mod cache;
mod claims;
pub mod client_addr;
pub mod companion;
pub mod feed_client;
pub mod headers;
pub mod inputs;
pub mod metrics;
pub mod proxy;
pub mod rate_limit;
pub mod reload;
pub mod remote_keys;
pub mod role;
pub mod server;
pub mod settings;
pub mod state;
pub mod tls;
mod unread;
pub mod verify;

// Token validation, credentials and the answers to refusals live in scopegate-core, where the
// CLI's `explain` runs the very same code; these paths stay for the verifier's own modules.
pub use scopegate_core::{answer, credentials, jose, revocation, token};
pub use scopegate_fetch as https;
pub use scopegate_sidecar_kit::unix_now;
