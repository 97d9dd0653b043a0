//! scopegate-operator: the controllers that turn AuthPolicy and OAuthClient resources into
//! signing keys, JWKS, certificates, client registries and sidecar configuration.

pub mod admin;
pub mod audiences;
pub mod ca_store;
pub mod client_checks;
pub mod clock;
pub mod conditions;
pub mod context;
pub mod controllers;
pub mod discovery;
pub mod error;
pub mod leader;
pub mod limits;
pub mod metrics;
pub mod names;
pub mod objects;
pub mod pki;
pub mod webhook;
