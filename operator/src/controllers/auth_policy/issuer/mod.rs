//! The steps of an AuthPolicy reconcile that only `issuer.self` policies have: the signing
//! keys and their JWKS ([`keys`], deciding in [`key_plan`] from [`assessment`]), the serving certificate
//! ([`tls`]), the client registry ([`registry`]) and the upstreams' client secrets
//! ([`upstreams`]).

pub mod assessment;
pub mod key_plan;
pub mod keys;
pub mod registry;
pub mod tls;
pub mod upstreams;
