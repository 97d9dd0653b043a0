//! The scopegate operator binary: flags, logging, leader election, then the controllers.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use anyhow::Context as _;
use clap::Parser;
use scopegate_operator::admin::{self, Health};
use scopegate_operator::leader::{Elector, LeaseConfig};
use scopegate_operator::metrics::Metrics;
use scopegate_operator::{ca_store, controllers};
use tokio::sync::watch;

/// Command-line interface of the operator.
#[derive(Parser, Debug)]
#[command(
    version,
    about = "scopegate operator: reconciles AuthPolicy and OAuthClient resources"
)]
struct Cli {
    /// Namespace the operator runs in: its CA Secret and leader Lease live here.
    #[arg(long, env = "POD_NAMESPACE", default_value = "scopegate-system")]
    namespace: String,
    /// This replica's identity for leader election (defaults to the host name and pid).
    #[arg(long, env = "POD_NAME")]
    identity: Option<String>,
    /// Name of the leader Lease.
    #[arg(long, default_value = "scopegate-operator")]
    lease_name: String,
    /// Lease duration in seconds: a crashed leader is replaced after at most this long.
    #[arg(long, default_value_t = 15)]
    lease_seconds: u64,
    /// Address of the admin server (/healthz, /readyz, /metrics).
    #[arg(long, env = "SCOPEGATE_ADMIN_ADDR", default_value = "0.0.0.0:8080")]
    admin_addr: SocketAddr,
    /// Log as JSON lines instead of text.
    #[arg(long, env = "SCOPEGATE_LOG_JSON")]
    log_json: bool,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info,kube=warn"));
    if cli.log_json {
        tracing_subscriber::fmt()
            .json()
            .with_env_filter(filter)
            .init();
    } else {
        let ansi = std::io::IsTerminal::is_terminal(&std::io::stdout());
        tracing_subscriber::fmt()
            .with_ansi(ansi)
            .with_env_filter(filter)
            .init();
    }
    let _ = rustls::crypto::aws_lc_rs::default_provider().install_default();

    let identity = cli.identity.clone().unwrap_or_else(|| {
        let host = std::fs::read_to_string("/proc/sys/kernel/hostname").unwrap_or_default();
        format!("{}-{}", host.trim(), std::process::id())
    });
    let metrics = Arc::new(Metrics::default());
    let health = Arc::new(Health::default());
    let listener = admin::bind(cli.admin_addr)
        .await
        .with_context(|| format!("binding the admin server on {}", cli.admin_addr))?;
    tracing::info!(addr = %cli.admin_addr, "admin server listening");
    tokio::spawn(admin::serve(listener, metrics.clone(), health.clone()));

    let client = kube::Client::try_default()
        .await
        .context("connecting to the Kubernetes API")?;
    let elector = Elector::new(
        client.clone(),
        LeaseConfig {
            name: cli.lease_name.clone(),
            namespace: cli.namespace.clone(),
            identity: identity.clone(),
            duration: Duration::from_secs(cli.lease_seconds),
            retry: Duration::from_secs((cli.lease_seconds / 3).max(1)),
        },
    );
    // A standby is healthy and ready: it serves nothing yet.
    health.ready.store(true, Ordering::Relaxed);
    tokio::select! {
        () = elector.acquire() => {}
        () = shutdown_signal() => return Ok(()),
    }
    health.ready.store(false, Ordering::Relaxed);
    metrics.leader.set(1);

    let (ca_sender, ca_receiver) = watch::channel(None);
    tokio::spawn(ca_store::run(
        client.clone(),
        cli.namespace.clone(),
        ca_sender,
    ));

    let ready = {
        let health = health.clone();
        move || health.ready.store(true, Ordering::Relaxed)
    };
    let shutdown = futures::FutureExt::shared(Box::pin(shutdown_signal()));
    tokio::select! {
        () = controllers::run(client, metrics, ca_receiver, identity, shutdown.clone(), ready) => {
            tracing::info!("controllers stopped");
            Ok(())
        }
        lost = elector.hold() => {
            // Exit rather than risk two writers; the replica restarts as a candidate.
            Err(anyhow::Error::new(lost).context("leadership lost"))
        }
    }
}

async fn shutdown_signal() {
    let mut terminate =
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(signal) => signal,
            Err(_) => return std::future::pending().await,
        };
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = terminate.recv() => {}
    }
    tracing::info!("shutting down");
}
