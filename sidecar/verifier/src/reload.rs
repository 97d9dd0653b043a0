//! Hot reload: the config file (and the signing-keys document it names) is polled and
//! compared by content, because a mounted ConfigMap changes by an atomic symlink swap
//! whose own mtime says nothing. A changed, valid document is swapped in whole; a broken
//! one is refused and the last good config keeps serving.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use aws_lc_rs::digest;
use tokio::sync::watch;

use scopegate_core::error_chain;
use scopegate_sidecar_kit::stopped;

use crate::role::Role;
use crate::settings::{self, CompileInput, Settings, SettingsError};
use crate::state::Shared;
use crate::unix_now;

/// Why the config could not be loaded.
#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    /// The config file could not be read.
    #[error("cannot read config file {path}")]
    Read {
        /// The path.
        path: PathBuf,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// The document was refused.
    #[error(transparent)]
    Settings(#[from] SettingsError),
}

impl LoadError {
    /// A one-line description with the causes that are safe to show (no file content).
    pub fn describe(&self) -> String {
        match self {
            LoadError::Read { path, source } => {
                format!("cannot read config file {}: {source}", path.display())
            }
            LoadError::Settings(SettingsError::Document(
                scopegate_core::config::ConfigError::Parse(err),
            )) => format!(
                "config is not a valid sidecar config document (line {}, column {}, {:?} error)",
                err.line(),
                err.column(),
                err.classify()
            ),
            LoadError::Settings(err) => error_chain(err),
        }
    }
}

/// The raw inputs of one load and their fingerprint.
pub struct Inputs {
    config_text: String,
    signing_keys_text: Option<String>,
    clients_text: Option<String>,
    /// SHA-256 over both texts.
    pub fingerprint: [u8; 32],
}

/// Reads the config file and the documents it names (signing keys, client registry).
pub async fn read(path: &Path) -> Result<Inputs, LoadError> {
    let config_text = tokio::fs::read_to_string(path)
        .await
        .map_err(|source| LoadError::Read {
            path: path.to_owned(),
            source,
        })?;
    let (keys_path, clients_path) = settings::side_documents(&config_text);
    // A missing document is reported by compile().
    let read_side = |path: Option<String>| async move {
        match path {
            Some(path) => tokio::fs::read_to_string(path).await.ok(),
            None => None,
        }
    };
    let signing_keys_text = read_side(keys_path).await;
    let clients_text = read_side(clients_path).await;
    let mut ctx = digest::Context::new(&digest::SHA256);
    ctx.update(config_text.as_bytes());
    ctx.update(&[0]);
    ctx.update(signing_keys_text.as_deref().unwrap_or("").as_bytes());
    ctx.update(&[0]);
    ctx.update(clients_text.as_deref().unwrap_or("").as_bytes());
    let mut fingerprint = [0u8; 32];
    fingerprint.copy_from_slice(ctx.finish().as_ref());
    Ok(Inputs {
        config_text,
        signing_keys_text,
        clients_text,
        fingerprint,
    })
}

/// Compiles read inputs; `role` compiles the issuer section.
pub fn compile(
    inputs: &Inputs,
    tls: bool,
    remote: &mut dyn FnMut(crate::remote_keys::RemoteSpec) -> Arc<crate::remote_keys::RemoteKeySet>,
    role: Option<&dyn Role>,
) -> Result<Settings, LoadError> {
    let input = CompileInput {
        config_text: &inputs.config_text,
        signing_keys_text: inputs.signing_keys_text.as_deref(),
        clients_text: inputs.clients_text.as_deref(),
        now: unix_now(),
        tls,
    };
    Ok(settings::compile(&input, remote, role)?)
}

/// Polls every `interval` until `shutdown` turns true. `seen` is the fingerprint of the
/// inputs in force at start.
pub async fn watch(
    shared: Arc<Shared>,
    path: PathBuf,
    interval: Duration,
    mut seen: [u8; 32],
    mut shutdown: watch::Receiver<bool>,
) {
    loop {
        tokio::select! {
            () = tokio::time::sleep(interval) => {}
            () = stopped(&mut shutdown) => return,
        }
        if let Some(certificates) = &shared.certificates {
            match certificates.reload_if_changed() {
                Ok(true) => tracing::info!("serving certificate reloaded"),
                Ok(false) => {}
                Err(err) => tracing::error!(
                    error = %err,
                    "new serving certificate refused; keeping the last good one"
                ),
            }
        }
        // The session keys follow their own mounted file: a refused one never holds back the
        // config, nor the reverse.
        let in_force = shared.settings.load_full();
        shared
            .sessions
            .reload_keys(in_force.sessions.as_deref())
            .await;
        let due = in_force.recompile_at.is_some_and(|t| unix_now() >= t);
        let inputs = match read(&path).await {
            Ok(inputs) => inputs,
            Err(err) => {
                // Reported once per distinct failure, not on every poll.
                if seen != [0; 32] {
                    shared.reload_failed(err.describe());
                    seen = [0; 32];
                }
                continue;
            }
        };
        if inputs.fingerprint == seen && !due {
            continue;
        }
        seen = inputs.fingerprint;
        let role = shared.role.as_deref();
        match compile(
            &inputs,
            shared.tls,
            &mut |spec| shared.remote_set(spec),
            role,
        ) {
            Ok(settings) => {
                shared.apply(settings);
                let in_force = shared.settings.load_full();
                shared
                    .sessions
                    .reload_keys(in_force.sessions.as_deref())
                    .await;
            }
            Err(err) => shared.reload_failed(err.describe()),
        }
    }
}
