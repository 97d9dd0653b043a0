//! The scopegate operator binary. The controllers land with the operator issue; today it
//! only reports its version and the CRDs it serves.

use clap::Parser;

/// Command-line interface of the operator.
#[derive(Parser, Debug)]
#[command(
    version,
    about = "scopegate operator: reconciles AuthPolicy and OAuthClient resources"
)]
struct Cli {}

fn main() -> anyhow::Result<()> {
    let _cli = Cli::parse();
    for crd in scopegate_crds::crds() {
        println!("{}", crd.metadata.name.unwrap_or_default());
    }
    Ok(())
}
