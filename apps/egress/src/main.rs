//! `switchyard-egress`: the delivery stage. Parses arguments, loads config, initialises
//! telemetry, connects, and runs the service until SIGTERM or Ctrl-C.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use clap::Parser;
use switchyard_egress::EgressConfig;

/// Delivers pipeline messages to webhooks and NATS subjects.
#[derive(Debug, Parser)]
#[command(name = "switchyard-egress", version, about)]
struct Args {
    /// A TOML file layered over the built-in defaults (then SWITCHYARD_EGRESS_* variables).
    #[arg(long, value_name = "FILE")]
    config: Option<PathBuf>,
}

#[tokio::main]
async fn main() -> ExitCode {
    let args = Args::parse();
    let result = async {
        let config = EgressConfig::load(args.config)?;
        // Bad settings stop the service before it connects (start validates again).
        config.validate()?;
        let _telemetry = switchyard_runtime::init(&config.telemetry, "switchyard-egress")?;
        // One crypto provider for every TLS connection the process makes.
        let _ = rustls::crypto::ring::default_provider().install_default();
        let client = switchyard_runtime::connect(&config.nats)
            .await
            .context("connecting to nats")?;
        let shutdown = switchyard_service::shutdown::on_signal();
        switchyard_egress::run(config, client, shutdown).await
    }
    .await;
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("error: {err:#}");
            ExitCode::FAILURE
        }
    }
}
