//! `switchyard`: the operator CLI. Parses arguments, loads config, initialises telemetry and
//! runs one command.

use clap::Parser;
use switchyard_cli::{Cli, config::CliConfig, run};

#[tokio::main]
async fn main() -> std::process::ExitCode {
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        // Help and --version print and exit 0; a usage error exits 1 like any other error.
        Err(err) => {
            let _ = err.print();
            return if err.use_stderr() {
                std::process::ExitCode::FAILURE
            } else {
                std::process::ExitCode::SUCCESS
            };
        }
    };
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
