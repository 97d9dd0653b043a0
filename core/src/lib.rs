//! scopegate-core: what the operator and the sidecar agree on.
//!
//! This crate has no Kubernetes and no async runtime dependency: the sidecar compiles it
//! without ever compiling k8s-openapi. It holds the names both sides use, the grammars that
//! the CRD schema, its CEL rules and the Rust code must all agree on, and (as later work
//! lands) the versioned sidecar config document and pure policy evaluation.

pub mod clients;
pub mod config;
pub mod duration;
pub mod feed;
pub mod jwk;
pub mod keys;
pub mod names;
pub mod path;
pub mod policy;
pub mod scope;
pub mod secret_hash;
pub mod upstream;
