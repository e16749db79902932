//! `switchyard`: the operator CLI. Parses arguments, loads config, initialises telemetry and
//! runs one command.

use clap::Parser;
use switchyard_cli::{Cli, Command, config::CliConfig, run};

#[tokio::main]
async fn main() -> std::process::ExitCode {
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        // Help and --version print and exit 0; a usage error exits 1 like any other error
        // (2 for `doctor`, whose 1 means "warnings").
        Err(err) => {
            // clap quotes the value it refused: made printable (it may hold escape codes) and
            // cut short (it may be huge).
            let text = switchyard_cli::output::printable_text(&err.render().to_string());
            let text = match text.char_indices().nth(4096) {
                Some((at, _)) => format!("{}…\n", &text[..at]),
                None => text,
            };
            if err.use_stderr() {
                eprint!("{text}");
            } else {
                print!("{text}");
            }
            return if !err.use_stderr() {
                std::process::ExitCode::SUCCESS
            } else if std::env::args().any(|arg| arg == "doctor") {
                std::process::ExitCode::from(2)
            } else {
                std::process::ExitCode::FAILURE
            };
        }
    };
    // The doctor's exit codes are 0 ok, 1 warn, 2 fail: an error before any check (bad config,
    // an unreadable topology) is a failure, never a warning.
    let failure = if matches!(cli.command, Command::Doctor(_)) {
        std::process::ExitCode::from(2)
    } else {
        std::process::ExitCode::FAILURE
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
            // Errors quote what they could not use (a KV record, a server's answer): made
            // printable like any text from outside.
            let text = format!("{err:#}");
            eprintln!("error: {}", switchyard_cli::output::printable_text(&text));
            // The server answers nothing to a request its permissions refuse: say so.
            if text.contains("timed out") && !text.contains("cannot connect") {
                eprintln!(
                    "hint: a request that gets no answer may be refused by the NATS user's \
                     permissions (the server logs a Permissions Violation): `switchyard doctor` \
                     checks them"
                );
            }
            failure
        }
    }
}
