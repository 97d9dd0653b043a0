//! The body of every response the sidecar sends, the app's and its own alike.

use bytes::Bytes;
use http_body_util::combinators::BoxBody;
use http_body_util::{BodyExt, Full};

/// The body of every response the sidecar sends.
pub type ProxyBody = BoxBody<Bytes, hyper::Error>;

/// A body of `bytes`, sent whole.
pub fn full(bytes: impl Into<Bytes>) -> ProxyBody {
    Full::new(bytes.into())
        .map_err(|never| match never {})
        .boxed()
}
