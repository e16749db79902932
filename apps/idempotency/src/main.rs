//! `switchyard-idempotency`: load config, initialise telemetry, connect, run until SIGTERM.

use std::path::PathBuf;

use anyhow::Context;
use clap::Parser;
use switchyard_idempotency::{IdempotencyConfig, run};

/// The idempotency service.
#[derive(Parser)]
#[command(version, about)]
struct Args {
    /// A TOML config file layered over the built-in defaults.
    #[arg(long)]
    config: Option<PathBuf>,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let config = IdempotencyConfig::load(args.config).context("loading configuration")?;
    // Bad settings stop the service before it connects (start validates again).
    config.validate()?;
    let _telemetry = switchyard_runtime::init(&config.telemetry, "switchyard-idempotency")?;
    let client = switchyard_runtime::connect(&config.nats).await?;
    run(config, client, switchyard_service::shutdown::on_signal()).await
}
