//! scopegate-core: what the operator and the sidecar agree on.
//!
//! This crate has no Kubernetes and no async runtime dependency: the sidecar compiles it
//! without ever compiling k8s-openapi. It holds the names both sides use, the grammars that
//! the CRD schema, its CEL rules and the Rust code must all agree on, the versioned sidecar
//! config document, and the verifier's pure decisions: path normalisation, rule matching,
//! credential extraction, token validation ([`token`]) and the answer to a refusal
//! ([`decision`], [`answer`]). The sidecar and `kubectl scopegate explain` call the same
//! functions, so the CLI cannot tell a story the sidecar does not act out.

pub mod answer;
pub mod check;
pub mod cidr;
pub mod clients;
pub mod condition;
pub mod config;
pub mod credentials;
pub mod decision;
pub mod duration;
pub mod endpoints;
pub mod feed;
pub mod jose;
pub mod jwk;
pub mod keys;
pub mod names;
pub mod path;
pub mod policy;
pub mod revocation;
pub mod scope;
pub mod secret_hash;
pub mod token;
pub mod upstream;
