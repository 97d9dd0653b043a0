//! The scopegate operator binary: flags, logging, leader election, then the controllers.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use anyhow::Context as _;
use clap::Parser;
use scopegate_operator::admin::{self, Health};
use scopegate_operator::leader::{CrashAfterWrites, Elector, Fence, FenceLayer, LeaseConfig};
use scopegate_operator::limits::Limits;
use scopegate_operator::metrics::Metrics;
use scopegate_operator::pki::ca::NameScope;
use scopegate_operator::{ca_store, controllers, webhook};
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
    /// Address of the injection webhook's TLS listener.
    #[arg(long, default_value = "0.0.0.0:9443")]
    webhook_addr: SocketAddr,
    /// Name of the Service in front of the webhook (its DNS names go into the certificate).
    #[arg(long, default_value = "scopegate-webhook")]
    webhook_service: String,
    /// IP addresses for the webhook certificate, for an API server that calls a URL (e.g.
    /// 127.0.0.1 on a local control plane). Repeatable.
    #[arg(long = "webhook-ip-san")]
    webhook_ip_sans: Vec<std::net::IpAddr>,
    /// The MutatingWebhookConfiguration whose caBundle the leader keeps current.
    #[arg(long, default_value = "scopegate-injector")]
    webhook_configuration: String,
    /// The ValidatingWebhookConfiguration whose caBundle the leader keeps current.
    #[arg(long, default_value = "scopegate-validator")]
    validating_webhook_configuration: String,
    /// Image of the injected sidecar.
    #[arg(long, env = "SCOPEGATE_SIDECAR_IMAGE", default_value = concat!("scopegate/sidecar:", env!("CARGO_PKG_VERSION")))]
    sidecar_image: String,
    /// Pull policy of the injected sidecar.
    #[arg(long, default_value = "IfNotPresent")]
    sidecar_pull_policy: String,
    /// CPU request of the injected sidecar.
    #[arg(long, default_value = "10m")]
    sidecar_cpu_request: String,
    /// Memory request of the injected sidecar.
    #[arg(long, default_value = "32Mi")]
    sidecar_memory_request: String,
    /// Memory limit of the injected sidecar.
    #[arg(long, default_value = "128Mi")]
    sidecar_memory_limit: String,
    /// HTTPS proxy for scopegate's own requests to the outside: the injected sidecars'
    /// (identity providers, external JWKS) and the operator's reads of outside issuers'
    /// discovery documents, e.g. http://proxy.corp:3128; none when empty.
    #[arg(long, default_value = "")]
    sidecar_https_proxy: String,
    /// Hosts reached without the proxy (NO_PROXY syntax), by the sidecars and the operator.
    #[arg(long, default_value = "")]
    sidecar_no_proxy: String,
    /// The cluster's DNS domain: serving certificates name `<svc>.<ns>.svc` and
    /// `<svc>.<ns>.svc.<domain>`, and the tenants' CA may certify nothing else.
    #[arg(long, env = "SCOPEGATE_CLUSTER_DOMAIN", default_value = "cluster.local", value_parser = cluster_domain)]
    cluster_domain: String,
    /// Most AuthPolicies with issuer.self served per namespace (the oldest first); the others
    /// are refused in their status. 0: no cap.
    #[arg(long, default_value_t = 20)]
    max_issuers_per_namespace: usize,
    /// Most OAuthClients served per namespace (the oldest first); the others are refused in
    /// their status and left out of every registry. 0: no cap.
    #[arg(long, default_value_t = 200)]
    max_clients_per_namespace: usize,
    /// Test hook: abort, as if killed, right after the n-th successful write into a namespace
    /// (`<namespace>:<n>`). Never set in production.
    #[arg(long, env = "SCOPEGATE_FAULT_CRASH_AFTER_WRITES", hide = true)]
    fault_crash_after_writes: Option<String>,
}

/// A cluster domain: DNS labels joined by dots, lower case.
fn cluster_domain(text: &str) -> Result<String, String> {
    let ok = !text.is_empty()
        && text.len() <= 253
        && text.split('.').all(scopegate_operator::names::is_dns_label);
    ok.then(|| text.to_owned())
        .ok_or_else(|| format!("{text:?} is not a DNS domain of lower-case RFC 1123 labels"))
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    init_tracing(cli.log_json);
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

    let config = kube::Config::infer()
        .await
        .context("finding the Kubernetes API")?;
    let client =
        kube::Client::try_from(config.clone()).context("connecting to the Kubernetes API")?;
    // Every write of the leader goes through the fence: refused once the lease may have
    // passed to another replica.
    let fence = Fence::default();
    let writer = fenced_client(config, &cli, &fence, &metrics)?;
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
    // Every replica serves the webhook from the certificate the leader keeps in a Secret.
    serve_webhook(&cli, &client, &metrics, &health).await?;

    // A standby is healthy and ready (once the webhook's cache synced): it serves the webhook
    // and writes nothing. So is a replica that lost the lease (an API outage longer than the
    // lease): it steps down, keeps serving the webhook from its caches, and campaigns again.
    health.ready.store(true, Ordering::Relaxed);
    let shutdown = futures::FutureExt::shared(Box::pin(shutdown_signal()));
    loop {
        tokio::select! {
            () = elector.acquire(&fence) => {}
            () = shutdown.clone() => return Ok(()),
        }
        health.ready.store(false, Ordering::Relaxed);
        metrics.leader.set(1);
        let term = lead(
            writer.clone(),
            &cli,
            metrics.clone(),
            health.clone(),
            identity.clone(),
            shutdown.clone(),
        );
        tokio::select! {
            () = term => {
                tracing::info!("controllers stopped");
                return Ok(());
            }
            lost = elector.hold(&fence) => {
                // Dropping `term` stopped everything the term started; the fence already
                // refuses this replica's writes.
                metrics.leader.set(0);
                metrics.leadership_lost.inc();
                health.ready.store(true, Ordering::Relaxed);
                tracing::warn!(
                    error = %scopegate_core::error_chain(&lost),
                    "leadership lost: writes stopped; serving the webhook from caches and campaigning again"
                );
            }
        }
    }
}

/// Logs as JSON lines or as text (coloured on a terminal), filtered by `RUST_LOG`.
fn init_tracing(json: bool) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info,kube=warn"));
    if json {
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
}

/// A client whose every request passes `fence` (and, for fault tests, crashes the process
/// after a number of writes).
fn fenced_client(
    config: kube::Config,
    cli: &Cli,
    fence: &Fence,
    metrics: &Arc<Metrics>,
) -> anyhow::Result<kube::Client> {
    let crash = cli
        .fault_crash_after_writes
        .as_deref()
        .map(|spec| {
            CrashAfterWrites::parse(spec)
                .context("--fault-crash-after-writes wants <namespace>:<n>, n > 0")
        })
        .transpose()?;
    Ok(kube::client::ClientBuilder::try_from(config)
        .context("building the API client")?
        .with_layer(&FenceLayer::new(fence.clone(), metrics.clone(), crash))
        .build())
}

/// Starts the webhook every replica serves: its AuthPolicy and OAuthClient caches, the certificate loaded from
/// the Secret the leader keeps, and the TLS listener.
async fn serve_webhook(
    cli: &Cli,
    client: &kube::Client,
    metrics: &Arc<Metrics>,
    health: &Arc<Health>,
) -> anyhow::Result<()> {
    let version = client
        .apiserver_version()
        .await
        .context("reading the API server version")?;
    let minor: u32 = version.minor.trim_end_matches('+').parse().unwrap_or(0);
    let native_sidecar = version.major == "1" && minor >= 29;
    tracing::info!(version = %version.git_version, native_sidecar, "API server version");
    let policies = controllers::watches::cache(
        kube::Api::<scopegate_crds::v1alpha1::AuthPolicy>::all(client.clone()),
        kube::runtime::watcher::Config::default(),
    );
    let clients = controllers::watches::cache(
        kube::Api::<scopegate_crds::v1alpha1::OAuthClient>::all(client.clone()),
        kube::runtime::watcher::Config::default(),
    );
    // Not ready, and refusing pods, until the AuthPolicy and OAuthClient caches have synced.
    tokio::spawn(webhook::track_sync(
        policies.clone(),
        clients.clone(),
        health.webhook_synced.clone(),
    ));
    let certs = Arc::new(webhook::CertSlot::default());
    tokio::spawn(webhook::cert::load(
        client.clone(),
        cli.namespace.clone(),
        certs.clone(),
    ));
    let webhook_listener = tokio::net::TcpListener::bind(cli.webhook_addr)
        .await
        .with_context(|| format!("binding the webhook on {}", cli.webhook_addr))?;
    let state = webhook::WebhookState {
        policies,
        clients,
        settings: webhook::inject::InjectionSettings {
            image: cli.sidecar_image.clone(),
            pull_policy: cli.sidecar_pull_policy.clone(),
            native_sidecar,
            cpu_request: cli.sidecar_cpu_request.clone(),
            memory_request: cli.sidecar_memory_request.clone(),
            memory_limit: cli.sidecar_memory_limit.clone(),
            https_proxy: cli.sidecar_https_proxy.clone(),
            no_proxy: cli.sidecar_no_proxy.clone(),
        },
        metrics: metrics.clone(),
        synced: health.webhook_synced.clone(),
    };
    tokio::spawn(webhook::serve(webhook_listener, certs, Arc::new(state)));
    tracing::info!(addr = %cli.webhook_addr, "webhook listening");
    Ok(())
}

/// One term as leader: the CAs, the webhook certificate and the controllers, all writing
/// through `writer`. Dropping the future ends the term and everything it started.
async fn lead(
    writer: kube::Client,
    cli: &Cli,
    metrics: Arc<Metrics>,
    health: Arc<Health>,
    identity: String,
    shutdown: impl std::future::Future<Output = ()> + Send + Sync + Clone + 'static,
) {
    let mut tasks = tokio::task::JoinSet::new();
    let (ca_sender, ca_receiver) = watch::channel(None);
    tasks.spawn(ca_store::run(
        writer.clone(),
        ca_store::CaSpec {
            namespace: cli.namespace.clone(),
            secret: ca_store::CA_SECRET,
            scope: NameScope::services(&cli.cluster_domain),
        },
        ca_sender,
    ));
    let (service, namespace) = (&cli.webhook_service, &cli.namespace);
    let webhook_names = vec![
        format!("{service}.{namespace}.svc"),
        format!("{service}.{namespace}.svc.{}", cli.cluster_domain),
    ];
    let (webhook_ca_sender, webhook_ca_receiver) = watch::channel(None);
    tasks.spawn(ca_store::run(
        writer.clone(),
        ca_store::CaSpec {
            namespace: cli.namespace.clone(),
            secret: ca_store::WEBHOOK_CA_SECRET,
            scope: NameScope::exactly(&webhook_names, &cli.webhook_ip_sans),
        },
        webhook_ca_sender,
    ));
    tasks.spawn(webhook::cert::maintain(
        writer.clone(),
        webhook::cert::WebhookIdentity {
            namespace: namespace.clone(),
            dns_names: webhook_names,
            ips: cli.webhook_ip_sans.clone(),
            configuration: cli.webhook_configuration.clone(),
            validating_configuration: cli.validating_webhook_configuration.clone(),
        },
        webhook_ca_receiver,
    ));
    let ready = move || health.ready.store(true, Ordering::Relaxed);
    let settings = controllers::RunSettings {
        cluster_domain: cli.cluster_domain.clone(),
        identity,
        limits: Limits {
            issuers_per_namespace: cli.max_issuers_per_namespace,
            clients_per_namespace: cli.max_clients_per_namespace,
        },
        proxy: outside_proxy(cli),
    };
    controllers::run(writer, metrics, ca_receiver, settings, shutdown, ready).await;
}

/// The proxy of the operator's own outside reads: the sidecars'.
fn outside_proxy(cli: &Cli) -> scopegate_operator::discovery::Proxy {
    scopegate_operator::discovery::Proxy {
        https: Some(cli.sidecar_https_proxy.clone()).filter(|p| !p.is_empty()),
        no_proxy: cli.sidecar_no_proxy.clone(),
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
