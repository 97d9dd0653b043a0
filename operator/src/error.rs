//! Reconcile errors. Problems with what a user wrote are not errors: they become status
//! conditions. These are failures to do the work, each with a bounded category (a metric label
//! and event reason) and whether retrying can help.

use crate::pki::ca::CaError;
use crate::pki::keygen::KeygenError;

/// A reconcile failed.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A Kubernetes API request failed.
    #[error("Kubernetes API request failed")]
    Kube(#[from] kube::Error),
    /// Generating a signing key failed.
    #[error(transparent)]
    Keygen(#[from] KeygenError),
    /// The operator's CA could not issue a certificate.
    #[error("certificate authority failed")]
    Ca(#[from] CaError),
    /// The operator's CA has not been loaded yet (the leader creates it at start-up).
    #[error("the operator's CA is not ready yet")]
    CaNotReady,
    /// A document the operator wrote earlier cannot be read back.
    #[error("{object} holds an unreadable {document} ({detail})")]
    Corrupt {
        /// namespace/name of the object.
        object: String,
        /// Which document.
        document: &'static str,
        /// Where and how it fails to parse, from [`json_problem`] (never its content).
        detail: String,
    },
    /// The system random generator failed.
    #[error("the system random generator failed")]
    Randomness,
    /// Hashing a client secret failed.
    #[error("hashing a client secret failed")]
    Hash(#[from] scopegate_core::secret_hash::HashError),
    /// Serialising a rendered document failed.
    #[error("serialising {0} failed")]
    Serialize(&'static str, #[source] serde_json::Error),
    /// The object has no namespace or name (the API server always sets them).
    #[error("object without namespace or name")]
    Unaddressable,
    /// Work handed to the blocking pool did not complete (it panicked, or the runtime is
    /// shutting down).
    #[error("a background computation did not complete")]
    Background,
}

impl Error {
    /// A short, bounded category: the `category` metric label and the Warning event reason.
    pub fn category(&self) -> &'static str {
        match self {
            Error::Kube(_) => "ApiError",
            Error::Keygen(_) | Error::Ca(_) | Error::Hash(_) | Error::Randomness => "CryptoError",
            Error::CaNotReady => "CaNotReady",
            Error::Corrupt { .. } => "CorruptData",
            Error::Serialize(..) | Error::Unaddressable | Error::Background => "InternalError",
        }
    }

    /// Whether retrying without a change to the object cannot help.
    pub fn is_permanent(&self) -> bool {
        matches!(self, Error::Corrupt { .. } | Error::Unaddressable)
    }
}

/// Describes a JSON error without quoting the input: the documents the operator keeps hold
/// private keys, and serde's messages can quote the value they choke on.
pub fn json_problem(error: &serde_json::Error) -> String {
    let what = match error.classify() {
        serde_json::error::Category::Io => "unreadable",
        serde_json::error::Category::Syntax => "not JSON",
        serde_json::error::Category::Data => "not the expected document",
        serde_json::error::Category::Eof => "cut short",
    };
    format!("{what} at line {} column {}", error.line(), error.column())
}

/// Result of reconcile steps.
pub type Result<T, E = Error> = std::result::Result<T, E>;
