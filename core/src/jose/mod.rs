//! JOSE as the verifier needs it: strict compact JWS parsing and signature verification
//! with keys parsed once, by aws-lc-rs.

pub mod b64;
pub mod json;
pub mod jws;
pub mod keys;
