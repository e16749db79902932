//! A headless Chromium driven over WebDriver (chromedriver on a free port), for end-to-end
//! browser tests.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use fantoccini::elements::Element;
use fantoccini::{Client, ClientBuilder, Locator};
use hyper_util::client::legacy::connect::HttpConnector;
use serde_json::json;
use tempfile::TempDir;
use tokio::time::Instant;

use crate::free_port;

/// How long chromedriver may take to answer `/status`, and Chromium to open a session.
const START_TIMEOUT: Duration = Duration::from_secs(30);

/// How long chromedriver may take to quit the browser and exit after `/shutdown`.
const SHUTDOWN_TIMEOUT: Duration = Duration::from_secs(5);

/// What to do when the browser or its driver is missing.
const INSTALL_HINT: &str =
    "install them with `apt-get install chromium chromium-driver` (.ci/run does)";

/// A headless Chromium session: a chromedriver process of its own on a free port, and a
/// temporary directory holding the driver's log and a fresh browser profile.
///
/// Dropping it shuts chromedriver down (which quits the browser) and reaps the process; the
/// directory is deleted. [`Browser::close`] ends the WebDriver session first.
///
/// The browser is `/usr/bin/chromium` (override with `SWITCHYARD_CHROMIUM`); the driver is
/// `chromedriver` on `PATH` (override with `SWITCHYARD_CHROMEDRIVER`). Their major versions
/// must match, as Debian's `chromium` and `chromium-driver` packages do.
pub struct Browser {
    /// The WebDriver session.
    client: Client,
    /// The chromedriver process; shut down, killed if need be, and reaped on drop.
    driver: Child,
    /// chromedriver's port on loopback.
    port: u16,
    /// `chromedriver.log` (the driver's stdout and stderr) and `profile/` (Chromium's user data).
    dir: TempDir,
}

impl Browser {
    /// Starts chromedriver on a free port, waits until it answers, and opens a headless
    /// Chromium session with a fresh profile (1280×900 window). Panics, naming the packages to
    /// install, when the browser or the driver is missing.
    pub async fn start() -> Browser {
        let chromium = std::env::var_os("SWITCHYARD_CHROMIUM")
            .map(PathBuf::from)
            .unwrap_or_else(|| PathBuf::from("/usr/bin/chromium"));
        assert!(
            chromium.is_file(),
            "Chromium is not at {} (set SWITCHYARD_CHROMIUM to another path): {INSTALL_HINT}",
            chromium.display()
        );
        let dir = tempfile::Builder::new()
            .prefix("switchyard-browser-")
            .tempdir()
            .expect("temp browser dir");

        // Free ports are found by binding and releasing them, so another process can take one
        // before chromedriver does: retry on a fresh port when that happens.
        let mut attempt = 1;
        let (driver, port) = loop {
            let port = free_port();
            let mut driver = spawn_driver(port, &dir.path().join("chromedriver.log"));
            match wait_ready(&mut driver, port).await {
                Ok(()) => break (driver, port),
                // Only an exit is a lost port race; a driver that hangs is not retried.
                Err(failure) if attempt < 3 && failure.starts_with("chromedriver exited") => {
                    reap(&mut driver);
                    eprintln!("chromedriver on port {port} did not start, retrying: {failure}");
                    attempt += 1;
                }
                Err(failure) => {
                    reap(&mut driver);
                    panic!("{failure}:\n{}", log_tail(dir.path()));
                }
            }
        };

        let profile = dir.path().join("profile");
        let capabilities = json!({
            "goog:chromeOptions": {
                "binary": chromium,
                "args": [
                    "--headless=new",
                    // Tests run as root in CI, where Chromium's sandbox refuses to start.
                    "--no-sandbox",
                    "--disable-gpu",
                    "--disable-dev-shm-usage",
                    "--disable-background-networking",
                    "--disable-component-update",
                    "--disable-sync",
                    "--no-first-run",
                    "--window-size=1280,900",
                    format!("--user-data-dir={}", profile.display()),
                ],
            }
        });
        let serde_json::Value::Object(capabilities) = capabilities else {
            unreachable!("the capabilities are a JSON object")
        };
        let mut builder = ClientBuilder::new(HttpConnector::new());
        builder.capabilities(capabilities);
        let url = format!("http://127.0.0.1:{port}");
        let client = match tokio::time::timeout(START_TIMEOUT, builder.connect(&url)).await {
            Ok(Ok(client)) => client,
            outcome => {
                let mut driver = driver;
                shut_down(&mut driver, port);
                let why = match outcome {
                    Ok(Err(e)) => e.to_string(),
                    _ => format!("no answer within {START_TIMEOUT:?}"),
                };
                panic!(
                    "opening a Chromium session via chromedriver: {why}\n{}",
                    log_tail(dir.path())
                );
            }
        };
        Browser {
            client,
            driver,
            port,
            dir,
        }
    }

    /// The WebDriver client, for everything the helpers here do not cover.
    pub fn client(&self) -> &Client {
        &self.client
    }

    /// Navigates to `url` and waits for the page to load.
    pub async fn goto(&self, url: &str) {
        if let Err(e) = self.client.goto(url).await {
            panic!("navigating to {url}: {e}");
        }
    }

    /// Polls until an element matching the CSS selector `css` contains `text`, and returns the
    /// first that does. Panics after `timeout` with the page's URL and what the matching
    /// elements said instead.
    pub async fn wait_for_text(&self, css: &str, text: &str, timeout: Duration) -> Element {
        let deadline = Instant::now() + timeout;
        let mut pause = Duration::from_millis(20);
        let mut seen = Vec::new();
        loop {
            seen.clear();
            // An element can be replaced between the find and the read: that is a miss, and the
            // next round finds its successor.
            if let Ok(elements) = self.client.find_all(Locator::Css(css)).await {
                for element in elements {
                    if let Ok(found) = element.text().await {
                        if found.contains(text) {
                            return element;
                        }
                        seen.push(found);
                    }
                }
            }
            if Instant::now() >= deadline {
                let url = match self.client.current_url().await {
                    Ok(url) => url.to_string(),
                    Err(e) => format!("(unknown: {e})"),
                };
                panic!(
                    "timed out after {timeout:?} waiting for {css:?} to contain {text:?} on {url}; \
                     the matching elements say {seen:?}"
                );
            }
            tokio::time::sleep(pause).await;
            pause = (pause * 2).min(Duration::from_millis(100));
        }
    }

    /// Writes a PNG screenshot of the viewport to `path`, creating its parent directories.
    pub async fn screenshot(&self, path: &Path) {
        let png = self
            .client
            .screenshot()
            .await
            .unwrap_or_else(|e| panic!("taking a screenshot: {e}"));
        if let Some(parent) = path.parent() {
            std::fs::create_dir_all(parent)
                .unwrap_or_else(|e| panic!("creating {}: {e}", parent.display()));
        }
        std::fs::write(path, png).unwrap_or_else(|e| panic!("writing {}: {e}", path.display()));
    }

    /// The temporary directory holding `chromedriver.log` and the browser profile.
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// Ends the WebDriver session (the browser quits), then shuts chromedriver down.
    pub async fn close(self) {
        if let Err(e) = self.client.clone().close().await {
            eprintln!("closing the Chromium session: {e}");
        }
        // Drop shuts the driver down and reaps it.
    }
}

impl Drop for Browser {
    fn drop(&mut self) {
        shut_down(&mut self.driver, self.port);
    }
}

/// The chromedriver binary: `SWITCHYARD_CHROMEDRIVER`, or `chromedriver` on `PATH`.
fn driver_binary() -> PathBuf {
    std::env::var_os("SWITCHYARD_CHROMEDRIVER")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("chromedriver"))
}

/// Spawns chromedriver on `port` (loopback only), its output appended to `log`.
fn spawn_driver(port: u16, log: &Path) -> Child {
    let log = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(log)
        .expect("chromedriver log file");
    let binary = driver_binary();
    Command::new(&binary)
        .arg(format!("--port={port}"))
        .stdin(Stdio::null())
        .stdout(log.try_clone().expect("chromedriver log file"))
        .stderr(log)
        .spawn()
        .unwrap_or_else(|e| {
            panic!(
                "cannot run {} ({e}; set SWITCHYARD_CHROMEDRIVER to another path): {INSTALL_HINT}",
                binary.display()
            )
        })
}

/// Polls chromedriver's `/status` until it reports ready; fails if the process exits or the
/// deadline passes.
async fn wait_ready(driver: &mut Child, port: u16) -> Result<(), String> {
    let deadline = Instant::now() + START_TIMEOUT;
    loop {
        if let Ok(Some(status)) = driver.try_wait() {
            return Err(format!("chromedriver exited with {status}"));
        }
        let answer = tokio::task::spawn_blocking(move || request(port, "GET", "/status"))
            .await
            .unwrap_or_default();
        if answer.contains("\"ready\":true") || answer.contains("\"ready\": true") {
            return Ok(());
        }
        if Instant::now() >= deadline {
            return Err(format!(
                "timed out after {START_TIMEOUT:?} waiting for chromedriver on port {port}"
            ));
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// A blocking HTTP/1.1 request to chromedriver on loopback (it refuses HTTP/1.0); the whole
/// response, or an empty string when it does not answer.
fn request(port: u16, method: &str, path: &str) -> String {
    let Ok(mut stream) = TcpStream::connect(("127.0.0.1", port)) else {
        return String::new();
    };
    let _ = stream.set_read_timeout(Some(Duration::from_secs(2)));
    let head =
        format!("{method} {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nConnection: close\r\n\r\n");
    if stream.write_all(head.as_bytes()).is_err() {
        return String::new();
    }
    let mut response = String::new();
    let _ = stream.read_to_string(&mut response);
    response
}

/// Asks chromedriver to quit every browser it started and exit (`/shutdown`); kills it if it
/// has not exited within [`SHUTDOWN_TIMEOUT`]. Always reaps the process.
fn shut_down(driver: &mut Child, port: u16) {
    if let Ok(None) = driver.try_wait() {
        request(port, "GET", "/shutdown");
        let deadline = std::time::Instant::now() + SHUTDOWN_TIMEOUT;
        while std::time::Instant::now() < deadline {
            if let Ok(Some(_)) = driver.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }
    reap(driver);
}

/// Kills the process (if it still runs) and reaps it.
fn reap(driver: &mut Child) {
    let _ = driver.kill();
    let _ = driver.wait();
}

/// The last lines of chromedriver's log, for failure messages.
fn log_tail(dir: &Path) -> String {
    let log = std::fs::read_to_string(dir.join("chromedriver.log")).unwrap_or_default();
    let lines: Vec<&str> = log.lines().collect();
    lines[lines.len().saturating_sub(30)..].join("\n")
}
