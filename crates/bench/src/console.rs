//! `--console-dlq N`: the web console's DLQ page with `N` entries stored (issue goal: the first
//! page under 300 ms on 2 cores), and the console process's memory.
//!
//! One server; the topology provisioned; `N` DLQ records written over 3 tenants (one in a
//! hundred `retries_exhausted`, the rest `no_route`); `switchyard api serve` (the release
//! binary next to this one) started as its own process with a fresh operator token; then each
//! page asked for 20 times over HTTP with an operator session cookie (signed with the same
//! keys the console derives from the token), timing the whole answer. Pages: the first page of
//! every entry, of one tenant, of one code (filtered by reading: up to 5,000 messages a page),
//! and one entry. The process's peak resident memory (`VmHWM`) is read at the end.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use futures::StreamExt;
use switchyard_dlq::DlqCode;
use switchyard_fixtures::Orders;
use switchyard_keys::Stage;
use switchyard_subjects::Namespace;
use switchyard_testkit::{free_port, wait_for};
use switchyard_topology::{DeploymentConfig, provision};

use crate::report::peak_rss;
use crate::servers::Servers;

/// Requests per page measured.
const TRIES: usize = 20;

/// One GET with a cookie; returns the status line and the time to the whole answer.
fn get(port: u16, path: &str, cookie: &str) -> (String, Duration) {
    let started = Instant::now();
    let Ok(mut stream) = TcpStream::connect(("127.0.0.1", port)) else {
        return ("no connection".into(), started.elapsed());
    };
    let _ = stream.write_all(
        format!(
            "GET {path} HTTP/1.1\r\nHost: bench\r\nCookie: sy_session={cookie}\r\nConnection: close\r\n\r\n"
        )
        .as_bytes(),
    );
    let mut response = Vec::new();
    let _ = stream.read_to_end(&mut response);
    let elapsed = started.elapsed();
    let text = String::from_utf8_lossy(&response);
    (text.lines().next().unwrap_or_default().to_owned(), elapsed)
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

/// Runs the measurement and prints it.
pub async fn run(entries: u64, bin_dir: Option<std::path::PathBuf>) -> anyhow::Result<()> {
    let servers = Servers::start(false).await;
    let client = servers.client().await;
    let js = crate::traffic::jetstream(&client);
    let topology = DeploymentConfig::default().resolve()?;
    provision(&js, &topology, false).await?;

    let ns = Namespace::default();
    let orders = Orders {
        deliveries: 3,
        text: None,
        failure: (12, "HTTP 503"),
    };
    let seeding = Instant::now();
    let tenants = ["acme", "globex", "initech"];
    let acks = futures::stream::iter(1..=entries)
        .map(|n| {
            let js = js.clone();
            let ns = ns.clone();
            let orders = &orders;
            async move {
                let tenant = tenants[(n % 3) as usize];
                let code = if n % 100 == 0 {
                    DlqCode::RetriesExhausted
                } else {
                    DlqCode::NoRoute
                };
                let env = orders.envelope(tenant, n);
                let record = orders.record(&ns, Stage::Egress, code, n, &env);
                orders.publish(&js, &ns, record, n).await.await
            }
        })
        .buffer_unordered(256);
    let failed = acks
        .filter(|ack| futures::future::ready(ack.is_err()))
        .count()
        .await;
    anyhow::ensure!(failed == 0, "{failed} DLQ records were not stored");
    println!(
        "seeded {entries} DLQ entries in {:.1} s",
        seeding.elapsed().as_secs_f64()
    );

    let dir = tempfile::tempdir()?;
    let token = format!("{:032x}{:032x}", rand_u128(), rand_u128());
    let token_file = dir.path().join("operator-token");
    std::fs::write(&token_file, &token)?;
    let bin_dir = match bin_dir {
        Some(dir) => dir,
        None => std::env::current_exe()?
            .parent()
            .map(std::path::PathBuf::from)
            .unwrap_or_default(),
    };
    let port = free_port();
    let mut api = Command::new(bin_dir.join("switchyard"))
        .args(["--server", &servers.urls().join(",")])
        .args(["api", "serve", "--listen", &format!("127.0.0.1:{port}")])
        .arg("--operator-token-file")
        .arg(&token_file)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .map_err(|e| anyhow::anyhow!("starting switchyard api serve ({e}); build it first"))?;
    let pid = api.id();
    wait_for(
        "the API to be ready",
        Duration::from_secs(60),
        || async move {
            let (status, _) = tokio::task::spawn_blocking(move || get(port, "/readyz", ""))
                .await
                .ok()?;
            status.contains(" 200").then_some(())
        },
    )
    .await;
    let keys = switchyard_cli::console::Keys::new(&token);
    let (cookie, _) = keys.issue(
        &switchyard_cli::console::Who::Operator,
        time::OffsetDateTime::now_utc().unix_timestamp(),
    )?;

    println!(
        "console DLQ page, {entries} entries, {TRIES} requests each (ms: p50 / max); machine: {} cores",
        std::thread::available_parallelism().map_or(0, |n| n.get())
    );
    for (what, path) in [
        ("first page, every entry", "/ui/dlq".to_owned()),
        ("first page, one tenant", "/ui/dlq?tenant=globex".to_owned()),
        (
            "first page, one code (1 in 100)",
            "/ui/dlq?code=retries_exhausted".to_owned(),
        ),
        (
            "a page deep in the stream",
            format!("/ui/dlq?after={}", entries.saturating_sub(100)),
        ),
        ("one entry", format!("/ui/dlq/{}", entries / 2)),
    ] {
        let mut times = Vec::new();
        let mut status = String::new();
        for _ in 0..TRIES {
            let (path, cookie) = (path.clone(), cookie.clone());
            let (s, t) = tokio::task::spawn_blocking(move || get(port, &path, &cookie)).await?;
            status = s;
            times.push(t);
        }
        times.sort();
        println!(
            "  {what:<34} {:>7.1} / {:>7.1}   ({status})",
            ms(times[TRIES / 2]),
            ms(times[TRIES - 1])
        );
    }
    if let Some(bytes) = peak_rss(pid) {
        println!(
            "switchyard api serve (API + console) peak RSS: {:.1} MiB",
            bytes as f64 / 1048576.0
        );
    }
    let _ = api.kill();
    let _ = api.wait();
    Ok(())
}

/// 128 random bits (for the run's operator token).
fn rand_u128() -> u128 {
    let mut bytes = [0u8; 16];
    if let Ok(mut f) = std::fs::File::open("/dev/urandom") {
        let _ = f.read_exact(&mut bytes);
    }
    u128::from_le_bytes(bytes)
}
