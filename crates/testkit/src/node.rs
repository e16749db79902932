//! One nats-server process: spawn, health check, kill, restart.

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::OnceLock;
use std::time::Duration;

use tempfile::TempDir;

use crate::{PINNED_VERSION, server_config_dir, wait_for, workspace_root};

/// How long a server may take to report healthy.
const START_TIMEOUT: Duration = Duration::from_secs(30);

/// Finds the pinned nats-server binary, checking its version once per process.
pub(crate) fn binary() -> PathBuf {
    static BINARY: OnceLock<PathBuf> = OnceLock::new();
    BINARY
        .get_or_init(|| {
            let path = std::env::var_os("NATS_SERVER_BIN")
                .map(PathBuf::from)
                .unwrap_or_else(|| workspace_root().join(".tools/bin/nats-server"));
            let output = Command::new(&path)
                .arg("--version")
                .output()
                .unwrap_or_else(|e| {
                    panic!(
                        "cannot run {} ({e}): run scripts/install-nats-server.sh (make test does)",
                        path.display()
                    )
                });
            let version = String::from_utf8_lossy(&output.stdout);
            let pinned = PINNED_VERSION.trim();
            assert!(
                version.trim().ends_with(&format!("v{pinned}")),
                "{} is {}, but tests are pinned to v{pinned}: run scripts/install-nats-server.sh",
                path.display(),
                version.trim()
            );
            path
        })
        .clone()
}

/// A free TCP port on loopback (bound, then released for the server to take), never one this
/// process was given before: the kernel may hand the same ephemeral port to the next bind while
/// the first taker has not bound it yet (two services of one benchmark run were once given the
/// same port that way, and the second could not start).
pub fn free_port() -> u16 {
    static GIVEN: std::sync::Mutex<std::collections::BTreeSet<u16>> =
        std::sync::Mutex::new(std::collections::BTreeSet::new());
    let mut given = GIVEN
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    for _ in 0..1_000 {
        let port = TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .map(|a| a.port())
            .expect("no free port on loopback");
        if given.insert(port) {
            return port;
        }
    }
    panic!(
        "no free loopback port this process was not given before, in 1,000 tries ({} given)",
        given.len()
    );
}

/// `GET /healthz` on the monitoring port: true when the server says it is healthy.
fn healthy(monitor_port: u16) -> bool {
    let Ok(mut stream) = TcpStream::connect(("127.0.0.1", monitor_port)) else {
        return false;
    };
    let _ = stream.set_read_timeout(Some(Duration::from_secs(2)));
    if stream
        .write_all(b"GET /healthz HTTP/1.0\r\nHost: localhost\r\n\r\n")
        .is_err()
    {
        return false;
    }
    let mut response = String::new();
    let _ = stream.read_to_string(&mut response);
    response.starts_with("HTTP/1.0 200") || response.starts_with("HTTP/1.1 200")
}

/// A node's fixed identity across restarts: its config, ports, store and extra arguments.
pub(crate) struct Node {
    pub(crate) name: String,
    pub(crate) client_port: u16,
    pub(crate) monitor_port: u16,
    config: PathBuf,
    extra_args: Vec<String>,
    store: TempDir,
    child: Option<Child>,
}

impl Node {
    pub(crate) fn new(name: &str, config: &str, extra_args: Vec<String>) -> Self {
        Self {
            name: name.to_owned(),
            client_port: free_port(),
            monitor_port: free_port(),
            config: server_config_dir().join(config),
            extra_args,
            store: tempfile::Builder::new()
                .prefix("switchyard-nats-")
                .tempdir()
                .expect("temp store dir"),
            child: None,
        }
    }

    pub(crate) fn url(&self) -> String {
        format!("nats://127.0.0.1:{}", self.client_port)
    }

    fn log_path(&self) -> PathBuf {
        self.store.path().join("server.log")
    }

    fn store_dir(&self) -> PathBuf {
        self.store.path().join("jetstream")
    }

    /// Spawns the process (without waiting for health).
    pub(crate) fn spawn(&mut self) {
        assert!(
            self.child.is_none(),
            "node {} is already running",
            self.name
        );
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.log_path())
            .expect("server log file");
        let child = Command::new(binary())
            .arg("-c")
            .arg(&self.config)
            .args(["-a", "127.0.0.1", "-n", &self.name])
            .args([
                "-p",
                &self.client_port.to_string(),
                "-m",
                &self.monitor_port.to_string(),
            ])
            .arg("-sd")
            .arg(self.store_dir())
            .args(&self.extra_args)
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("server log file"))
            .stderr(log)
            .spawn()
            .unwrap_or_else(|e| panic!("spawning nats-server {}: {e}", self.name));
        self.child = Some(child);
    }

    /// Waits until `/healthz` answers 200; panics with the log tail if the process exits or the
    /// deadline passes.
    pub(crate) async fn wait_healthy(&mut self) {
        if let Err(failure) = self.try_wait_healthy().await {
            panic!("{failure}");
        }
    }

    /// Like [`Node::wait_healthy`], but returns the failure (with the log tail) instead of
    /// panicking, so a start that lost a port race can be retried on other ports.
    pub(crate) async fn try_wait_healthy(&mut self) -> Result<(), String> {
        let port = self.monitor_port;
        let deadline = tokio::time::Instant::now() + START_TIMEOUT;
        loop {
            if let Some(status) = self
                .child
                .as_mut()
                .and_then(|c| c.try_wait().ok().flatten())
            {
                self.child = None;
                return Err(format!(
                    "nats-server {} exited with {status}:\n{}",
                    self.name,
                    self.log_tail()
                ));
            }
            let probe = tokio::task::spawn_blocking(move || healthy(port))
                .await
                .unwrap_or(false);
            if probe {
                return Ok(());
            }
            if tokio::time::Instant::now() >= deadline {
                return Err(format!(
                    "timed out waiting for nats-server {} to become healthy:\n{}",
                    self.name,
                    self.log_tail()
                ));
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Picks new free ports (after a start lost a race for its ports).
    pub(crate) fn reassign_ports(&mut self) {
        self.client_port = free_port();
        self.monitor_port = free_port();
    }

    /// Kills the process with SIGKILL (a crash: nothing is flushed) and reaps it.
    pub(crate) fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Whether the process is running.
    pub(crate) fn is_running(&self) -> bool {
        self.child.is_some()
    }

    /// The process id, while it runs.
    pub(crate) fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// The last lines of the server log, for failure messages.
    pub(crate) fn log_tail(&self) -> String {
        let log = std::fs::read_to_string(self.log_path()).unwrap_or_default();
        let lines: Vec<&str> = log.lines().collect();
        lines[lines.len().saturating_sub(30)..].join("\n")
    }

    /// Deletes the JetStream store (every stream, consumer and bucket); the log is kept. Only
    /// while the process is stopped.
    pub(crate) fn wipe_store(&mut self) {
        assert!(self.child.is_none(), "node {} is running", self.name);
        match std::fs::remove_dir_all(self.store_dir()) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => panic!("deleting the store of {}: {e}", self.name),
        }
    }

    pub(crate) fn store_path(&self) -> &Path {
        self.store.path()
    }
}

impl Drop for Node {
    fn drop(&mut self) {
        // A test failing shows what the server said: the cause of a refusal (a store it could
        // not create, say) is often only in its log, which goes with the temporary store.
        if std::thread::panicking() {
            eprintln!(
                "--- the last lines of nats-server {}'s log ---\n{}",
                self.name,
                self.log_tail()
            );
        }
        self.kill();
    }
}

/// A single JetStream-enabled nats-server, started from `nats/server/single.conf` on free
/// ports with a temporary store that is deleted on drop.
pub struct NatsServer {
    node: Node,
}

impl NatsServer {
    /// Starts a server and waits until it is healthy.
    pub async fn start() -> Self {
        Self::start_with_args(&[]).await
    }

    /// Starts a server with extra command-line arguments (e.g. `["--auth", "token"]`).
    pub async fn start_with_args(args: &[&str]) -> Self {
        let args = args.iter().map(|a| (*a).to_owned()).collect();
        let mut node = Node::new("switchyard-test", "single.conf", args);
        // Free ports are found by binding and releasing them, so another process can take one
        // before the server does: retry on fresh ports when that happens.
        for attempt in 1..=3 {
            node.spawn();
            match node.try_wait_healthy().await {
                Ok(()) => break,
                Err(failure) if attempt < 3 && failure.contains("address already in use") => {
                    node.reassign_ports()
                }
                Err(failure) => panic!("{failure}"),
            }
        }
        Self { node }
    }

    /// The client URL (`nats://127.0.0.1:<port>`).
    pub fn url(&self) -> String {
        self.node.url()
    }

    /// The client port.
    pub fn port(&self) -> u16 {
        self.node.client_port
    }

    /// The monitoring (HTTP) port.
    pub fn monitor_port(&self) -> u16 {
        self.node.monitor_port
    }

    /// A connected client.
    pub async fn client(&self) -> async_nats::Client {
        connect(&self.url()).await
    }

    /// Kills the server with SIGKILL, as a crash would. The store is kept.
    pub fn kill(&mut self) {
        self.node.kill();
    }

    /// Starts the server again on the same port and store, after [`NatsServer::kill`].
    pub async fn start_again(&mut self) {
        self.node.spawn();
        self.node.wait_healthy().await;
    }

    /// Kills the server (SIGKILL) and starts it again on the same port and store.
    pub async fn restart(&mut self) {
        self.kill();
        self.start_again().await;
    }

    /// A disaster: the server is killed (SIGKILL), its JetStream store deleted, and it is
    /// started again, empty, on the same port.
    pub async fn wipe(&mut self) {
        self.node.kill();
        self.node.wipe_store();
        self.start_again().await;
    }

    /// Whether the process is running.
    pub fn is_running(&self) -> bool {
        self.node.is_running()
    }

    /// The server process's id, while it runs.
    pub fn pid(&self) -> Option<u32> {
        self.node.pid()
    }

    /// The temporary directory holding the store and the server log.
    pub fn dir(&self) -> &Path {
        self.node.store_path()
    }
}

/// Connects to `url` (a comma-separated list is allowed), retrying while servers come up.
pub(crate) async fn connect(url: &str) -> async_nats::Client {
    let url = url.to_owned();
    wait_for(&format!("a connection to {url}"), START_TIMEOUT, || {
        let url = url.clone();
        async move {
            let servers: Vec<async_nats::ServerAddr> = url
                .split(',')
                .map(|u| u.parse().expect("valid server url"))
                .collect();
            async_nats::ConnectOptions::new()
                .connection_timeout(Duration::from_secs(2))
                .connect(servers)
                .await
                .ok()
        }
    })
    .await
}
