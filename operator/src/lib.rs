//! scopegate-operator: the controllers that turn AuthPolicy and OAuthClient resources into
//! signing keys, JWKS, certificates, client registries and sidecar configuration.

pub mod keygen;
pub mod rotation;
