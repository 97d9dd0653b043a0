//! scopegate-operator: the controllers that turn AuthPolicy and OAuthClient resources into
//! signing keys, JWKS, certificates, client registries and sidecar configuration.

pub mod admin;
pub mod audiences;
pub mod auth_policy;
pub mod ca;
pub mod ca_store;
pub mod conditions;
pub mod context;
pub mod controllers;
pub mod error;
pub mod keygen;
pub mod leader;
pub mod limits;
pub mod metrics;
pub mod oauth_client;
pub mod registry;
pub mod rotation;
pub mod webhook;

use k8s_openapi::api::core::v1::Secret;

/// The UTF-8 text of one key of a Secret.
pub fn secret_data(secret: &Secret, key: &str) -> Option<String> {
    let bytes = secret.data.as_ref()?.get(key)?;
    String::from_utf8(bytes.0.clone()).ok()
}

/// An error and its sources on one line, for logs and events.
pub fn error_chain(error: &dyn std::error::Error) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    text
}
