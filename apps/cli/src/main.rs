//! `switchyard`: the operator CLI. Parses arguments, loads config, initialises telemetry and
//! runs one command.

use clap::Parser;
use switchyard_cli::{Cli, config::CliConfig, run};

#[tokio::main]
async fn main() -> std::process::ExitCode {
    let cli = Cli::parse();
    let result = async {
        let config = CliConfig::load(&cli)?;
        let _telemetry = switchyard_runtime::init(&config.telemetry, "switchyard-cli")?;
        run(cli, config).await
    }
    .await;
    match result {
        Ok(code) => code,
        Err(err) => {
            eprintln!("error: {err:#}");
            std::process::ExitCode::FAILURE
        }
    }
}
