//! Key handling, pure: the operator's CAs and the certificates they issue ([`ca`]), issuers'
//! signing keys ([`keygen`]) and their publish-before-sign rotation ([`rotation`]), and the
//! client registry with its hashed secrets ([`registry`]). No client, no clock: what keeps
//! these in the cluster sits above them ([`crate::ca_store`] for the CAs, the AuthPolicy
//! controller's issuer steps for keys and registries), so this folder depends on nothing of
//! the operator but [`crate::names`].

pub mod ca;
pub mod keygen;
pub mod registry;
pub mod rotation;
