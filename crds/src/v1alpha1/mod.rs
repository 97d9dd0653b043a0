//! Version `v1alpha1` of the `scopegate.dev` API.

mod auth_policy;
mod common;
mod oauth_client;
mod upstream;

pub use auth_policy::*;
pub use common::*;
pub use oauth_client::*;
pub use upstream::*;
