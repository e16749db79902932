//! `switchyard status`: streams, consumers (lag), buckets and per-tenant backlog.

use std::process::ExitCode;

use anyhow::Context;
use async_nats::jetstream;
use switchyard_topology::{ResolvedTopology, StatusReport, status};

use crate::output::{Output, Table};

/// Arguments of `status`.
#[derive(Debug, clap::Args)]
pub struct StatusArgs {}

/// Bytes for people: `512 B`, `1.5 KiB`, `3.2 GiB`.
pub fn human_bytes(bytes: u64) -> String {
    const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut value = bytes as f64;
    let mut unit = 0;
    while value >= 1024.0 && unit < UNITS.len() - 1 {
        value /= 1024.0;
        unit += 1;
    }
    if unit == 0 {
        format!("{bytes} B")
    } else {
        format!("{value:.1} {}", UNITS[unit])
    }
}

fn present<T: ToString>(present: bool, value: T) -> String {
    if present {
        value.to_string()
    } else {
        "-".to_owned()
    }
}

/// Renders the report as tables.
pub fn render(report: &StatusReport) -> String {
    let mut streams = Table::new([
        "STREAM",
        "STATE",
        "MESSAGES",
        "BYTES",
        "FIRST",
        "LAST",
        "CONSUMERS",
        "REPLICAS",
        "LEADER",
    ]);
    for s in &report.streams {
        streams.row([
            s.name.clone(),
            if s.present { "ok" } else { "missing" }.to_owned(),
            present(s.present, s.messages),
            present(s.present, human_bytes(s.bytes)),
            present(s.present, s.first_seq),
            present(s.present, s.last_seq),
            present(s.present, s.consumers),
            present(s.present, s.replicas),
            s.leader.clone().unwrap_or_else(|| "-".to_owned()),
        ]);
    }
    let mut consumers = Table::new([
        "CONSUMER",
        "STATE",
        "PENDING",
        "ACK PENDING",
        "REDELIVERED",
        "WAITING",
    ]);
    for c in &report.consumers {
        consumers.row([
            format!("{}/{}", c.stream, c.name),
            if c.present { "ok" } else { "missing" }.to_owned(),
            present(c.present, c.pending),
            present(c.present, c.ack_pending),
            present(c.present, c.redelivered),
            present(c.present, c.waiting),
        ]);
    }
    let mut buckets = Table::new(["BUCKET", "STATE", "VALUES", "BYTES"]);
    for b in &report.buckets {
        buckets.row([
            b.name.clone(),
            if b.present { "ok" } else { "missing" }.to_owned(),
            present(b.present, b.values),
            present(b.present, human_bytes(b.bytes)),
        ]);
    }
    let mut out = format!(
        "{}\n{}\n{}",
        streams.render(),
        consumers.render(),
        buckets.render()
    );
    if report.tenant_backlog.is_empty() {
        out.push_str("\nno backlog: every hand-off stream is empty\n");
    } else {
        let mut backlog = Table::new(["TENANT", "WAITING IN", "MESSAGES"]);
        for t in &report.tenant_backlog {
            backlog.row([t.tenant.clone(), t.stream.clone(), t.messages.to_string()]);
        }
        out.push('\n');
        out.push_str(&backlog.render());
    }
    let missing = report.missing();
    if !missing.is_empty() {
        out.push_str(&format!(
            "\n{} declared items are missing: run `switchyard provision`\n",
            missing.len()
        ));
    }
    out
}

/// Runs `status`.
pub async fn run(
    js: &jetstream::Context,
    topology: &ResolvedTopology,
    _args: &StatusArgs,
    out: &Output,
) -> anyhow::Result<ExitCode> {
    let report = status(js, topology).await.context("reading status")?;
    if out.is_json() {
        out.json(&report)?;
    } else {
        print!("{}", render(&report));
    }
    Ok(ExitCode::SUCCESS)
}
