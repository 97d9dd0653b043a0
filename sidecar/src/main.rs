//! The scopegate sidecar binary. The verifier lands with the sidecar issue; today it only
//! reports its version.

use clap::Parser;

/// Command-line interface of the sidecar.
#[derive(Parser, Debug)]
#[command(
    version,
    about = "scopegate sidecar: verifying reverse proxy and OAuth2 issuer"
)]
struct Cli {}

fn main() -> anyhow::Result<()> {
    let _cli = Cli::parse();
    println!(
        "scopegate-sidecar {} (admin port {})",
        env!("CARGO_PKG_VERSION"),
        scopegate_core::names::SIDECAR_ADMIN_PORT
    );
    Ok(())
}
