//! The demo `make up` ends with: the story of `examples/` on the local control plane, told as
//! a short transcript. Needs the env of `e2e/scripts/operator-up.sh` and `E2E_SIDECAR_BIN`,
//! and root (pods run in network namespaces of their own).

use std::sync::Arc;
use std::time::Instant;

use anyhow::Context as _;
use scopegate_e2e::ControlPlane;
use scopegate_e2e::story::{self, Shop};

#[tokio::main(flavor = "current_thread")]
async fn main() -> anyhow::Result<()> {
    let started = Instant::now();
    let plane = ControlPlane::from_env()?;
    let client = plane.client().await?;
    let logs = std::path::PathBuf::from(
        std::env::var("E2E_DIR").context("E2E_DIR: the control plane's directory")?,
    )
    .join("logs");
    let step = std::cell::Cell::new(0);
    let say = |line: &str| {
        step.set(step.get() + 1);
        println!("\n{:>2}. {line}", step.get());
    };
    println!("scopegate demo: the shop of examples/, on the local control plane");
    let shop = Arc::new(Shop::start(&client, "shop", &logs, &say).await?);
    story::play(shop, &say).await?;
    println!(
        "\nThe story took {:.0} s. Sidecar and app logs: {}",
        started.elapsed().as_secs_f64(),
        logs.display()
    );
    Ok(())
}
