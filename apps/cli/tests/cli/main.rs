//! The `switchyard` binary against a real nats-server: what it prints and how it exits. One
//! test binary, one module per command group.

mod attempts;
mod backup;
mod destinations;
mod dlq_browse;
mod dlq_change;
mod dlq_duplicates;
mod dlq_export;
mod dlq_jobs;
mod dlq_stats;
mod doctor;
mod encryption;
mod fixtures;
mod json_output;
mod keys;
mod provision;
mod publish;
mod registry;
mod server_limits;
mod terminal;

use std::io::Write;
use std::process::{Command, Output, Stdio};

use switchyard_testkit::NatsServer;

/// The terminal settings a test's environment might carry in, removed so that output is
/// what a plain pipe gets (each test sets what it checks).
pub const TERMINAL_ENV: [&str; 5] = ["COLUMNS", "NO_COLOR", "CLICOLOR", "CLICOLOR_FORCE", "TERM"];

/// The binary, pointed at `server`, with the terminal settings of the environment removed.
pub fn command(server: &str, args: &[&str]) -> Command {
    let mut command = Command::new(env!("CARGO_BIN_EXE_switchyard"));
    command
        .args(["--server", server])
        .args(args)
        .env_remove("SWITCHYARD_CLI_NATS__URL");
    for variable in TERMINAL_ENV {
        command.env_remove(variable);
    }
    command
}

/// Runs the binary against `server` and waits for it (blocking).
pub fn switchyard_blocking(server: &str, args: &[&str], stdin: Option<&[u8]>) -> Output {
    let mut child = command(server, args)
        .stdin(if stdin.is_some() {
            Stdio::piped()
        } else {
            Stdio::null()
        })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start switchyard");
    if let Some(input) = stdin {
        let mut pipe = child.stdin.take().expect("stdin pipe");
        pipe.write_all(input).expect("write stdin");
    }
    child.wait_with_output().expect("run switchyard")
}

/// Runs the binary without blocking the test's runtime (stdin is empty, not a terminal).
pub async fn switchyard(server: &str, args: &[&str]) -> Output {
    let (server, args) = (
        server.to_owned(),
        args.iter().map(|a| (*a).to_owned()).collect::<Vec<_>>(),
    );
    tokio::task::spawn_blocking(move || {
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        switchyard_blocking(&server, &args, None)
    })
    .await
    .expect("join")
}

/// Runs the binary and asserts it succeeded; returns stdout.
pub async fn ok(server: &str, args: &[&str]) -> String {
    let output = switchyard(server, args).await;
    assert!(
        output.status.success(),
        "switchyard {args:?} failed: {}",
        stderr(&output)
    );
    stdout(&output)
}

/// Runs the binary and asserts it failed with exit code 1; returns stderr.
pub async fn fails(server: &str, args: &[&str]) -> String {
    let output = switchyard(server, args).await;
    assert_eq!(
        output.status.code(),
        Some(1),
        "switchyard {args:?} should fail: {}{}",
        stdout(&output),
        stderr(&output)
    );
    stderr(&output)
}

/// Stdout as text.
pub fn stdout(output: &Output) -> String {
    String::from_utf8_lossy(&output.stdout).into_owned()
}

/// Stderr as text.
pub fn stderr(output: &Output) -> String {
    String::from_utf8_lossy(&output.stderr).into_owned()
}

/// A nats-server with the stock 1 MiB `max_payload` (below what the topology declares) and
/// JetStream, as `nats-server -js` runs; the temporary directory holds its config.
pub async fn stock_payload_server() -> (NatsServer, tempfile::TempDir) {
    let dir = tempfile::tempdir().unwrap();
    let conf = dir.path().join("stock-payload.conf");
    std::fs::write(
        &conf,
        "max_payload: 1MB\njetstream {\n  max_memory_store: 256MB\n  max_file_store: 1GB\n}\n",
    )
    .unwrap();
    let server = NatsServer::start_with_args(&["-c", conf.to_str().unwrap()]).await;
    (server, dir)
}

/// Changes the shared `EGRESS` stream's `max_bytes` to 512 MiB behind provisioning's back
/// (drift it can fix in place).
pub async fn drift_egress(js: &async_nats::jetstream::Context) {
    let mut egress = js
        .get_stream("EGRESS")
        .await
        .unwrap()
        .cached_info()
        .config
        .clone();
    egress.max_bytes = 1 << 29;
    js.update_stream(egress).await.unwrap();
}

/// A server with the topology provisioned by the binary itself.
pub async fn provisioned() -> NatsServer {
    let server = NatsServer::start().await;
    ok(&server.url(), &["provision"]).await;
    server
}
