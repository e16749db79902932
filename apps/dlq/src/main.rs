//! `switchyard-dlq`: the dlq service. Parses arguments, loads config, initialises telemetry,
//! connects, and runs until SIGTERM or Ctrl-C (then drains: jobs hand their leases back).

use std::path::PathBuf;

use anyhow::Context;
use clap::Parser;
use switchyard_dlq_service::{DlqConfig, run};

/// Safety net, replay jobs, stats and alerts for the DLQ.
#[derive(Debug, Parser)]
#[command(name = "switchyard-dlq", version, about)]
struct Args {
    /// A TOML file layered over the built-in defaults (then SWITCHYARD_DLQ_* variables).
    #[arg(long, value_name = "FILE")]
    config: Option<PathBuf>,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let config = DlqConfig::load(args.config).context("loading configuration")?;
    // Bad settings stop the service before it connects (start validates again).
    config.validate()?;
    let _telemetry = switchyard_runtime::init(&config.telemetry, "switchyard-dlq")?;
    let client = switchyard_runtime::connect(&config.nats).await?;
    run(config, client, switchyard_service::shutdown::on_signal()).await
}
