//! The scopegate sidecar binary: parses flags, starts the library's sidecar, and drains on
//! SIGTERM. A refused config exits 64 before any port is bound.

use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context as _;
use clap::Parser;
use scopegate_core::config::CONFIG_FILE;
use scopegate_core::names::{CONFIG_MOUNT_DIR, SIDECAR_ADMIN_PORT};
use scopegate_sidecar::{Options, start};
use scopegate_verifier::app_probes::{APP_PROBES_ENV, AppProbes};

/// Command-line interface of the sidecar.
#[derive(Parser, Debug)]
#[command(
    version,
    about = "scopegate sidecar: verifying reverse proxy and OAuth2 issuer",
    args_conflicts_with_subcommands = true
)]
struct Cli {
    /// Another mode than the sidecar's.
    #[command(subcommand)]
    mode: Option<Mode>,
    /// The sidecar config document.
    #[arg(long, env = "SCOPEGATE_CONFIG", default_value_t = default_config_path())]
    config: String,
    /// Address the proxy port binds.
    #[arg(long, env = "SCOPEGATE_BIND", default_value = "0.0.0.0")]
    bind: IpAddr,
    /// Proxy port instead of the config's `listen.port`.
    #[arg(long, env = "SCOPEGATE_PORT")]
    port: Option<u16>,
    /// Address of the admin port (`/healthz`, `/readyz`, `/metrics`).
    #[arg(long, env = "SCOPEGATE_ADMIN_ADDR", default_value_t = SocketAddr::from(([0, 0, 0, 0], SIDECAR_ADMIN_PORT)))]
    admin_addr: SocketAddr,
    /// How often the config file is checked for changes, in milliseconds.
    #[arg(long, env = "SCOPEGATE_RELOAD_INTERVAL_MS", default_value_t = 2000)]
    reload_interval_ms: u64,
    /// How long open connections may finish after SIGTERM, in seconds.
    #[arg(long, env = "SCOPEGATE_DRAIN_SECS", default_value_t = 20)]
    drain_secs: u64,
    /// Issuer tunables as JSON (rate limits, refresh grace, mint budget); see
    /// `scopegate_issuer::IssuerTuning`. Defaults apply to what is left out.
    #[arg(long, env = "SCOPEGATE_ISSUER_TUNING", default_value = "{}")]
    issuer_tuning: String,
    /// Log as JSON lines instead of plain text.
    #[arg(long, env = "SCOPEGATE_LOG_JSON")]
    log_json: bool,
}

/// The binary's other modes.
#[derive(clap::Subcommand, Debug)]
enum Mode {
    /// Install the inbound port lock in this network namespace (nftables rules refusing
    /// inbound connections to every port but these) and exit: the init container of a policy
    /// with inbound.portLock. Needs CAP_NET_ADMIN.
    PortLock {
        /// A TCP port that stays reachable (the sidecar's listener, its admin port).
        #[arg(long = "allow", required = true)]
        allow: Vec<u16>,
    },
}

fn default_config_path() -> String {
    format!("{CONFIG_MOUNT_DIR}/{CONFIG_FILE}")
}

/// EX_USAGE-like: the operator's config is at fault; restarting will not help.
const EXIT_CONFIG: i32 = 64;

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    if let Some(Mode::PortLock { allow }) = &cli.mode {
        scopegate_sidecar::port_lock::install(allow).context("installing the port lock")?;
        let ports: Vec<String> = allow.iter().map(ToString::to_string).collect();
        println!(
            "scopegate port lock installed: inbound connections only to TCP ports {}",
            ports.join(", ")
        );
        return Ok(());
    }
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let logs = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()));
    if cli.log_json {
        logs.json().init();
    } else {
        logs.init();
    }
    let runtime = tokio::runtime::Runtime::new().context("cannot start the async runtime")?;
    runtime.block_on(run(cli))
}

async fn run(cli: Cli) -> anyhow::Result<()> {
    let issuer_tuning = match serde_json::from_str(&cli.issuer_tuning) {
        Ok(tuning) => tuning,
        Err(err) => {
            eprintln!("scopegate-sidecar: --issuer-tuning is not valid JSON tunables: {err}");
            std::process::exit(EXIT_CONFIG);
        }
    };
    let probes = std::env::var(APP_PROBES_ENV).unwrap_or_default();
    let app_probes = match AppProbes::parse(&probes) {
        Ok(probes) => probes,
        Err(err) => {
            eprintln!("scopegate-sidecar: {err}");
            std::process::exit(EXIT_CONFIG);
        }
    };
    let options = Options {
        config_path: PathBuf::from(cli.config),
        bind_ip: cli.bind,
        port_override: cli.port,
        admin_addr: cli.admin_addr,
        reload_interval: Duration::from_millis(cli.reload_interval_ms.max(10)),
        drain_timeout: Duration::from_secs(cli.drain_secs),
        issuer_tuning,
        app_probes,
        connection: Default::default(),
    };
    let running = match start(options).await {
        Ok(running) => running,
        Err(err) if err.is_config() => {
            eprintln!("scopegate-sidecar: {}", err.describe());
            std::process::exit(EXIT_CONFIG);
        }
        Err(err) => return Err(err).context("scopegate-sidecar failed to start"),
    };
    // One machine-readable line so that scripts and tests learn the bound ports.
    let egress = running
        .egress_addr()
        .map(|addr| format!(" egress={addr}"))
        .unwrap_or_default();
    println!(
        "scopegate-sidecar listening proxy={} admin={}{egress}",
        running.proxy_addr(),
        running.admin_addr()
    );
    let mut terminate = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        .context("cannot watch SIGTERM")?;
    tokio::select! {
        _ = terminate.recv() => {}
        _ = tokio::signal::ctrl_c() => {}
    }
    tracing::info!("shutdown requested; draining");
    running.shutdown().await;
    tracing::info!("drained; exiting");
    Ok(())
}
