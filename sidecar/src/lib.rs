//! scopegate-sidecar: the binary that runs in every protected pod, wiring the verifier
//! ([`scopegate_verifier`], the verifying reverse proxy in front of the app), in pods of an
//! `issuer.self` policy the issuer ([`scopegate_issuer`], the OAuth2 authorization server),
//! and in pods whose policy declares egress the egress proxy ([`scopegate_egress`], the app's
//! outbound calls with tokens the sidecar obtains) into one process.
//!
//! A library with a thin binary: [`start`] runs a whole sidecar (proxy port, admin port,
//! hot reload, key fetchers, revocation feed, issuer endpoints and mint socket, egress port)
//! inside the caller's Tokio runtime, so tests run it in-process on `127.0.0.1:0` exactly as
//! the binary runs it in a pod.

pub mod port_lock;

use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use scopegate_core::config::SidecarConfig;
use scopegate_egress::Egress;
use scopegate_issuer::role::IssuerRole;
use scopegate_issuer::{Issuer, IssuerStartError, IssuerTuning};
use scopegate_sidecar_kit::exposition::MetricsCollector;
use scopegate_verifier::app_probes::AppProbes;
use scopegate_verifier::companion::Companion;
use scopegate_verifier::reload::{self, LoadError};
use scopegate_verifier::role::Role;
use scopegate_verifier::settings::Settings;
use scopegate_verifier::state::{ConnectionTuning, Shared};
use scopegate_verifier::tls::{self, ServerTlsError};
use scopegate_verifier::{remote_keys, server};
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio::task::JoinHandle;

/// How to run a sidecar.
#[derive(Debug, Clone)]
pub struct Options {
    /// The sidecar config document.
    pub config_path: PathBuf,
    /// Address the proxy port binds (the port comes from the config).
    pub bind_ip: IpAddr,
    /// Use this proxy port instead of the config's (tests use 0).
    pub port_override: Option<u16>,
    /// Address of the admin port.
    pub admin_addr: SocketAddr,
    /// How often the config file is polled.
    pub reload_interval: Duration,
    /// How long open connections may drain after shutdown starts.
    pub drain_timeout: Duration,
    /// Tunables of the issuer role.
    pub issuer_tuning: IssuerTuning,
    /// The app's probes to replay on the admin port.
    pub app_probes: AppProbes,
    /// Idle timeouts of client connections and request bodies.
    pub connection: ConnectionTuning,
}

/// Why a sidecar did not start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    /// The config is unreadable or invalid (exit 64).
    #[error("invalid config")]
    Config(#[source] LoadError),
    /// The TLS listener could not be set up from the mounted files (exit 64).
    #[error("invalid TLS setup")]
    Tls(#[source] ServerTlsError),
    /// The issuer role's store is misconfigured (exit 64).
    #[error("invalid issuer setup")]
    Issuer(#[source] IssuerStartError),
    /// The egress section cannot be set up (exit 64).
    #[error("invalid egress setup")]
    Egress(#[source] scopegate_egress::settings::SetupError),
    /// The mint socket could not be bound.
    #[error("cannot bind the mint socket {path}")]
    MintSocket {
        /// The socket path.
        path: String,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// A port could not be bound.
    #[error("cannot bind {addr}")]
    Bind {
        /// The address.
        addr: SocketAddr,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
}

impl StartError {
    /// The error and its causes on one line, for the exit message.
    pub fn describe(&self) -> String {
        match self {
            // The config's causes only as far as they are safe to show (no file content).
            StartError::Config(err) => format!("{self}: {}", err.describe()),
            other => scopegate_core::error_chain(other),
        }
    }

    /// Whether the operator's input is at fault (EX_USAGE-like exit 64) rather than the
    /// environment.
    pub fn is_config(&self) -> bool {
        matches!(
            self,
            StartError::Config(_)
                | StartError::Tls(_)
                | StartError::Issuer(_)
                | StartError::Egress(_)
        )
    }
}

/// A running sidecar.
pub struct Running {
    proxy_addr: SocketAddr,
    admin_addr: SocketAddr,
    egress_addr: Option<SocketAddr>,
    shared: Arc<Shared>,
    shutdown: watch::Sender<bool>,
    proxy_task: JoinHandle<()>,
    egress_task: Option<JoinHandle<()>>,
    other_tasks: Vec<JoinHandle<()>>,
}

impl Running {
    /// Where the proxy port listens.
    pub fn proxy_addr(&self) -> SocketAddr {
        self.proxy_addr
    }

    /// Where the admin port listens.
    pub fn admin_addr(&self) -> SocketAddr {
        self.admin_addr
    }

    /// Where the egress port listens (on 127.0.0.1), when the config declares egress.
    pub fn egress_addr(&self) -> Option<SocketAddr> {
        self.egress_addr
    }

    /// The live state (metrics, readiness).
    pub fn shared(&self) -> &Arc<Shared> {
        &self.shared
    }

    /// Stops accepting, fails `/readyz`, drains open connections (bounded by the drain
    /// timeout) and stops background work.
    pub async fn shutdown(self) {
        self.shared
            .draining
            .store(true, std::sync::atomic::Ordering::Release);
        let _ = self.shutdown.send(true);
        let _ = self.proxy_task.await;
        if let Some(egress) = self.egress_task {
            let _ = egress.await;
        }
        for task in self.other_tasks {
            task.abort();
        }
        self.shared.stop_background();
    }
}

/// The first config, compiled, with what it sets up before anything is bound.
struct FirstLoad {
    settings: Settings,
    certificates: Option<Arc<tls::CertificateSource>>,
    tls_config: Option<Arc<tokio_rustls::rustls::ServerConfig>>,
    issuer: Option<Arc<Issuer>>,
    role: Arc<dyn Role>,
}

/// Compiles the first config: once to learn whether the listener serves TLS and whether the
/// pod runs the issuer, then (when either is so) again with the right values.
fn first_load(inputs: &reload::Inputs, tuning: &IssuerTuning) -> Result<FirstLoad, StartError> {
    let mut fresh = |spec| remote_keys::RemoteKeySet::new(spec);
    let checking = IssuerRole::new(None);
    let probe =
        reload::compile(inputs, false, &mut fresh, Some(&checking)).map_err(StartError::Config)?;
    let certificates = probe
        .config
        .listen
        .tls
        .as_ref()
        .map(tls::CertificateSource::load)
        .transpose()
        .map_err(StartError::Tls)?;
    let tls_config = certificates
        .as_ref()
        .map(|source| source.server_config())
        .transpose()
        .map_err(StartError::Tls)?;
    let issuer = probe
        .config
        .issuer
        .as_ref()
        .map(|role| Issuer::new(role, probe.config.ca_bundle_pem.as_deref(), tuning.clone()))
        .transpose()
        .map_err(StartError::Issuer)?;
    let role: Arc<dyn Role> = Arc::new(IssuerRole::new(issuer.clone()));
    let settings = if tls_config.is_some() || issuer.is_some() {
        reload::compile(inputs, tls_config.is_some(), &mut fresh, Some(&*role))
            .map_err(StartError::Config)?
    } else {
        probe
    };
    Ok(FirstLoad {
        settings,
        certificates,
        tls_config,
        issuer,
        role,
    })
}

/// Binds `addr`, and learns the address bound (the port when `addr` asks for any).
async fn bind(addr: SocketAddr) -> Result<(TcpListener, SocketAddr), StartError> {
    let bind_error = |source| StartError::Bind { addr, source };
    let listener = TcpListener::bind(addr).await.map_err(bind_error)?;
    let bound = listener.local_addr().map_err(bind_error)?;
    Ok((listener, bound))
}

/// The egress proxy of the first config and its listener on 127.0.0.1, when the config
/// declares egress.
async fn egress(
    config: &SidecarConfig,
) -> Result<Option<(Arc<Egress>, TcpListener, SocketAddr)>, StartError> {
    let (Some(egress), Some(section)) = (
        Egress::new(config).map_err(StartError::Egress)?,
        config.egress.as_ref(),
    ) else {
        return Ok(None);
    };
    let addr = SocketAddr::from(([127, 0, 0, 1], section.port));
    let bind_error = |source| StartError::Bind { addr, source };
    let listener = scopegate_egress::server::bind(section.port)
        .await
        .map_err(bind_error)?;
    let bound = listener.local_addr().map_err(bind_error)?;
    Ok(Some((egress, listener, bound)))
}

/// The egress proxy as the verifier sees it: it follows every reload, and its counters and
/// readiness lines join the admin port's.
struct EgressCompanion(Arc<Egress>);

impl Companion for EgressCompanion {
    fn put_in_force(&self, config: &SidecarConfig) {
        self.0.put_in_force(config);
    }

    fn collector(&self) -> Box<dyn MetricsCollector> {
        self.0.collector()
    }

    fn readiness(&self, detail: &mut String) {
        self.0.readiness(detail);
    }
}

/// Loads and checks the config, binds the ports, and starts serving. Nothing is bound when
/// the config is refused.
pub async fn start(options: Options) -> Result<Running, StartError> {
    let inputs = reload::read(&options.config_path)
        .await
        .map_err(StartError::Config)?;
    let first = first_load(&inputs, &options.issuer_tuning)?;
    let port = options
        .port_override
        .unwrap_or(first.settings.config.listen.port);
    let (proxy_listener, proxy_addr) = bind(SocketAddr::new(options.bind_ip, port)).await?;
    let (admin_listener, admin_addr) = bind(options.admin_addr).await?;
    let egress = egress(&first.settings.config).await?;
    let mint_socket = first
        .settings
        .config
        .issuer
        .as_ref()
        .map(|role| role.mint_socket_path.clone());
    let shared = Shared::new(
        first.settings,
        first.certificates,
        Some(first.role),
        options.app_probes,
        options.connection,
    );
    // Attached before the reload watcher starts, so that no reload passes egress by.
    if let Some((egress, _, _)) = &egress {
        shared.attach(Arc::new(EgressCompanion(egress.clone())));
    }
    shared.start_background();
    let (shutdown, stop) = watch::channel(false);
    let (egress_task, egress_addr) = match egress {
        Some((egress, listener, addr)) => {
            let serving = scopegate_egress::server::serve(
                egress,
                listener,
                stop.clone(),
                options.drain_timeout,
            );
            (Some(tokio::spawn(serving)), Some(addr))
        }
        None => (None, None),
    };
    let mut other_tasks = Vec::new();
    if let (Some(issuer), Some(path)) = (first.issuer, mint_socket) {
        other_tasks.push(tokio::spawn(issuer.clone().run_background()));
        let mint = issuer
            .start_mint(std::path::Path::new(&path), stop.clone())
            .map_err(|source| StartError::MintSocket {
                path: path.clone(),
                source,
            })?;
        other_tasks.push(mint);
    }
    let proxy_task = tokio::spawn(server::serve_proxy(
        proxy_listener,
        first.tls_config.map(tokio_rustls::TlsAcceptor::from),
        shared.clone(),
        stop.clone(),
        options.drain_timeout,
    ));
    let admin_task = tokio::spawn(server::serve_admin(
        admin_listener,
        shared.clone(),
        stop.clone(),
    ));
    let reload_task = tokio::spawn(reload::watch(
        shared.clone(),
        options.config_path.clone(),
        options.reload_interval,
        inputs.fingerprint,
        stop,
    ));
    tracing::info!(%proxy_addr, %admin_addr, egress_addr = ?egress_addr, "sidecar serving");
    other_tasks.push(admin_task);
    other_tasks.push(reload_task);
    Ok(Running {
        proxy_addr,
        admin_addr,
        egress_addr,
        shared,
        shutdown,
        proxy_task,
        egress_task,
        other_tasks,
    })
}
