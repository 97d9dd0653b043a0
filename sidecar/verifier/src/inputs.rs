//! What compiling a config needs besides the document, and what it reports besides the
//! settings: shared by the settings and the issuer role they compile.

/// A key left out of the config in force because it does not load.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SkippedKey {
    /// The issuer whose key it is.
    pub issuer: String,
    /// Its key id (empty when it has none).
    pub kid: String,
    /// Why it does not load (never key material).
    pub reason: String,
}

/// What compiling needs besides the document.
pub struct CompileInput<'a> {
    /// The config text.
    pub config_text: &'a str,
    /// The signing-keys document text, when the config names one and it could be read.
    pub signing_keys_text: Option<&'a str>,
    /// The client registry text, in issuer pods, when it could be read.
    pub clients_text: Option<&'a str>,
    /// Unix seconds now.
    pub now: i64,
    /// Whether the listener serves TLS (for `hsts: auto`).
    pub tls: bool,
}
