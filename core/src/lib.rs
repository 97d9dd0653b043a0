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
pub mod claim_headers;
pub mod claims;
pub mod clients;
pub mod condition;
pub mod config;
pub mod credentials;
pub mod decision;
pub mod duration;
pub mod egress;
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
pub mod session;
pub mod token;
pub mod upstream;

/// An error and its causes on one line (`error: cause: cause`). Error messages name their
/// own fact only, never their source's, so that each cause shows once.
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

#[cfg(test)]
mod tests {
    use crate::jose::jws::JwsError;
    use crate::token::TokenError;

    #[test]
    fn a_chain_names_each_cause_once() {
        let refused = TokenError::Jws(JwsError::Signature);
        assert_eq!(super::error_chain(&refused), "jws: bad signature");
        let scope = crate::policy::check_scope_claim("a  b").map_err(TokenError::from);
        let scope = scope.expect_err("a doubled space is malformed");
        let text = super::error_chain(&scope);
        let fact = crate::policy::MalformedScope.to_string();
        assert_eq!(text.matches(&fact).count(), 1, "{text}");
    }
}
