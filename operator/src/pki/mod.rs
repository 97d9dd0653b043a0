//! Key handling: the operator's CAs and the certificates they issue ([`ca`], kept in Secrets by
//! [`ca_store`]), issuers' signing keys ([`keygen`]) and their publish-before-sign rotation
//! ([`rotation`]), and the client registry with its hashed secrets ([`registry`]). All but
//! [`ca_store`] are pure.

pub mod ca;
pub mod ca_store;
pub mod keygen;
pub mod registry;
pub mod rotation;
