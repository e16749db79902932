//! `switchyard status`: streams, consumers (lag), buckets (fill, and hours of headroom for the
//! idempotency claims) and per-tenant backlog; with `--watch`, the same refreshed in place on a
//! terminal until Ctrl-C.

use std::collections::BTreeMap;
use std::io::{IsTerminal, Write};
use std::process::ExitCode;
use std::time::Duration;

use anstream::print;
use anyhow::Context;
use async_nats::jetstream;
use switchyard_keys::{RateKey, RateRecord, RateScope};
use switchyard_registry::{LimitRecord, PressureRecord, Store};
use switchyard_topology::{BucketName, ResolvedTopology, StatusReport, status};

use crate::output::{self, Output, Table, style};
use crate::parse::show_time;

/// Arguments of `status`.
#[derive(Debug, clap::Args)]
pub struct StatusArgs {
    /// Refresh until Ctrl-C: redrawn in place on a terminal; elsewhere one snapshot after
    /// another (with `--json`, one JSON object per line).
    #[arg(long)]
    pub watch: bool,
    /// Seconds between refreshes with `--watch`.
    #[arg(long, value_name = "SECS", default_value_t = 2, requires = "watch",
          value_parser = clap::value_parser!(u64).range(1..=3600))]
    pub interval: u64,
}

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

/// A limit for people: `1.0 GiB`, or `-` when there is none.
fn limit_bytes(max: i64) -> String {
    u64::try_from(max)
        .ok()
        .filter(|m| *m > 0)
        .map_or("-".to_owned(), human_bytes)
}

/// Fill for people: `12.5%` (the fuller of bytes and messages), `-` when absent.
fn fill(present: bool, fill_pct: f64) -> String {
    if present {
        format!("{fill_pct:.1}%")
    } else {
        "-".to_owned()
    }
}

fn present<T: ToString>(present: bool, value: T) -> String {
    if present {
        value.to_string()
    } else {
        "-".to_owned()
    }
}

/// `ok` in green, `missing` in red.
fn state(present: bool) -> String {
    if present {
        output::paint(style::GOOD, "ok")
    } else {
        output::paint(style::BAD, "missing")
    }
}

/// Renders the report as tables.
pub fn render(report: &StatusReport) -> String {
    let mut streams = Table::new([
        "STREAM",
        "STATE",
        "MESSAGES",
        "BYTES",
        "MAX BYTES",
        "FILL",
        "FIRST",
        "LAST",
        "CONSUMERS",
        "REPLICAS",
        "LEADER",
    ]);
    for s in &report.streams {
        streams.painted_row(vec![
            s.name.clone(),
            state(s.present),
            present(s.present, s.messages),
            present(s.present, human_bytes(s.bytes)),
            limit_bytes(s.max_bytes),
            fill(s.present, s.fill_pct),
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
        consumers.painted_row(vec![
            format!("{}/{}", c.stream, c.name),
            state(c.present),
            present(c.present, c.pending),
            present(c.present, c.ack_pending),
            present(c.present, c.redelivered),
            present(c.present, c.waiting),
        ]);
    }
    let mut buckets = Table::new([
        "BUCKET",
        "STATE",
        "VALUES",
        "BYTES",
        "MAX BYTES",
        "FILL",
        "HEADROOM",
    ]);
    for b in &report.buckets {
        buckets.painted_row(vec![
            b.name.clone(),
            state(b.present),
            present(b.present, b.values),
            present(b.present, human_bytes(b.bytes)),
            limit_bytes(b.max_bytes),
            fill(b.present, b.fill_pct),
            b.headroom_hours
                .map_or("-".to_owned(), |h| format!("{h:.1} h")),
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
    if !report.tenant_streams.is_empty() {
        let mut quotas = Table::new([
            "TENANT",
            "INGRESS STREAM",
            "MESSAGES",
            "BYTES",
            "QUOTA FILL",
        ]);
        for t in &report.tenant_streams {
            let max_msgs = if t.max_msgs > 0 {
                format!("{}/{}", t.messages, t.max_msgs)
            } else {
                t.messages.to_string()
            };
            quotas.row([
                t.tenant.clone(),
                t.name.clone(),
                max_msgs,
                format!("{}/{}", t.bytes, t.max_bytes),
                format!("{:.1}%", t.fill_pct),
            ]);
        }
        out.push('\n');
        out.push_str(&quotas.render());
    }
    if !report.tenant_dlq.is_empty() {
        let mut shares = Table::new(["TENANT", "DLQ ENTRIES", "OF ITS SHARE"]);
        for t in &report.tenant_dlq {
            shares.row([
                t.tenant.clone(),
                t.entries.to_string(),
                t.share.map_or("-".to_owned(), |share| {
                    format!(
                        "{:.1}% of {share}",
                        t.entries as f64 * 100.0 / share.max(1) as f64
                    )
                }),
            ]);
        }
        out.push('\n');
        out.push_str(&shares.render());
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

/// Runs `status`: exit 0, or 3 while declared streams, consumers or buckets are missing. With
/// `--watch`, refreshes every `--interval` seconds until Ctrl-C (exit 0).
pub async fn run(
    js: &jetstream::Context,
    topology: &ResolvedTopology,
    args: &StatusArgs,
    out: &Output,
) -> anyhow::Result<ExitCode> {
    if !args.watch {
        let (report, tenants, trips) = read(js, topology).await?;
        if out.is_json() {
            out.json(&StatusView {
                report: &report,
                tenants: &tenants,
                round_trips: &trips,
            })?;
        } else {
            print!("{}", render_all(&report, &tenants, &trips));
        }
        return Ok(exit_code(&report));
    }
    let terminal = !out.is_json() && std::io::stdout().is_terminal();
    let mut every = tokio::time::interval(Duration::from_secs(args.interval));
    every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let ctrl_c = tokio::signal::ctrl_c();
    tokio::pin!(ctrl_c);
    loop {
        // Ctrl-C ends the watch at once, while waiting and while reading alike.
        tokio::select! {
            _ = &mut ctrl_c => return Ok(ExitCode::SUCCESS),
            _ = every.tick() => {}
        }
        let snapshot = tokio::select! {
            _ = &mut ctrl_c => return Ok(ExitCode::SUCCESS),
            snapshot = read(js, topology) => snapshot,
        };
        let now = show_time(time::OffsetDateTime::now_utc());
        // A failed read (the server restarting, a leader election) is shown and retried at the
        // next tick: a watch outlives what it watches.
        let body = match (&snapshot, out.is_json()) {
            (Ok((report, tenants, trips)), true) => {
                let view = StatusView {
                    report,
                    tenants,
                    round_trips: trips,
                };
                format!("{}\n", serde_json::to_string(&view)?)
            }
            (Err(err), true) => {
                format!(
                    "{}\n",
                    serde_json::json!({"at": now, "error": format!("{err:#}")})
                )
            }
            (Ok((report, tenants, trips)), false) => render_all(report, tenants, trips),
            (Err(err), false) => format!(
                "{}\n",
                output::paint(
                    style::BAD,
                    &format!("error: {err:#} (retrying every {}s)", args.interval)
                )
            ),
        };
        let frame = if terminal {
            // Redraw in place: the screen is cleared through the terminal itself (colour
            // settings do not apply to it), then the snapshot under a header line.
            if console::Term::stdout().clear_screen().is_err() {
                return Ok(ExitCode::SUCCESS);
            }
            format!(
                "{}\n\n{body}",
                output::paint(
                    style::DIM,
                    &format!("every {}s · {now} · Ctrl-C to stop", args.interval)
                )
            )
        } else if out.is_json() {
            body
        } else {
            format!("--- {now}\n{body}\n")
        };
        // A reader that went away (`status --watch | head`) ends the watch quietly.
        let mut stdout = anstream::stdout().lock();
        if stdout
            .write_all(frame.as_bytes())
            .and_then(|()| stdout.flush())
            .is_err()
        {
            return Ok(ExitCode::SUCCESS);
        }
    }
}

/// One status snapshot: the topology report and every tenant's rate limit and admission state
/// (the console's overview reads the same).
pub(crate) async fn snapshot(
    js: &jetstream::Context,
    topology: &ResolvedTopology,
) -> anyhow::Result<(StatusReport, Vec<TenantRate>)> {
    let report = status(js, topology).await.context("reading status")?;
    let tenants = tenant_rates(js, topology).await;
    Ok((report, tenants))
}

/// What `status` prints: the snapshot and the round trips it measured.
async fn read(
    js: &jetstream::Context,
    topology: &ResolvedTopology,
) -> anyhow::Result<(StatusReport, Vec<TenantRate>, RoundTrips)> {
    let (report, tenants) = snapshot(js, topology).await?;
    let trips = RoundTrips::measure(js, topology).await;
    Ok((report, tenants, trips))
}

/// The round trips this command measured, as each service's storage check does
/// (`switchyard_service::storage`): a KV read from the `tenants` bucket and a publish the DLQ's
/// leader refuses unstored. `null`/absent in JSON when that probe failed; `*_error` says why.
#[derive(Debug, serde::Serialize)]
pub struct RoundTrips {
    /// The KV read, milliseconds.
    kv_ms: Option<f64>,
    /// Why the KV read failed.
    #[serde(skip_serializing_if = "Option::is_none")]
    kv_error: Option<String>,
    /// The stream publish, milliseconds.
    publish_ms: Option<f64>,
    /// Why the publish failed.
    #[serde(skip_serializing_if = "Option::is_none")]
    publish_error: Option<String>,
}

impl RoundTrips {
    async fn measure(js: &jetstream::Context, topology: &ResolvedTopology) -> Self {
        use switchyard_service::storage;
        // Milliseconds to two decimals: what a person reads, and what a script compares.
        let ms = |d: Duration| (d.as_secs_f64() * 100_000.0).round() / 100.0;
        let kv = match topology.bucket_name(BucketName::Tenants) {
            Some(bucket) => storage::kv_round_trip(js, bucket).await,
            None => Err("no tenants bucket declared".to_owned()),
        };
        let subject = storage::probe_subject(&topology.namespace, switchyard_keys::Stage::Dlq);
        let publish = storage::publish_round_trip(js, &subject).await;
        Self {
            kv_ms: kv.as_ref().ok().map(|d| ms(*d)),
            kv_error: kv.err(),
            publish_ms: publish.as_ref().ok().map(|d| ms(*d)),
            publish_error: publish.err(),
        }
    }

    /// `round trips: KV read 0.4 ms, stream publish 0.6 ms` (or why one failed).
    fn line(&self) -> String {
        let one = |value: Option<f64>, error: &Option<String>| match (value, error) {
            (Some(ms), _) => format!("{ms:.1} ms"),
            (None, Some(error)) => output::paint(style::BAD, &format!("failed: {error}")),
            (None, None) => "-".to_owned(),
        };
        format!(
            "round trips (from here): KV read {}, stream publish {}\n",
            one(self.kv_ms, &self.kv_error),
            one(self.publish_ms, &self.publish_error)
        )
    }
}

/// Like `provision`'s drift: 3 while declared items are missing, so a script or a probe can
/// tell an unprovisioned deployment from a healthy one.
fn exit_code(report: &StatusReport) -> ExitCode {
    if report.missing().is_empty() {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(3)
    }
}

/// The report's tables, then the tenants' limits and admission states.
fn render_all(report: &StatusReport, tenants: &[TenantRate], trips: &RoundTrips) -> String {
    let mut out = trips.line();
    out.push('\n');
    out.push_str(&render(report));
    if !tenants.is_empty() {
        let mut table = Table::new([
            "TENANT",
            "RATE/S",
            "BURST",
            "ADMISSION",
            "BACKLOG AT CHANGE",
        ]);
        for t in tenants {
            table.row([
                t.tenant.clone(),
                t.limit
                    .as_ref()
                    .map_or("default".to_owned(), |l| l.rate_per_sec.to_string()),
                t.limit
                    .as_ref()
                    .map_or("-".to_owned(), |l| l.burst.to_string()),
                t.pressure.as_ref().map_or("open".to_owned(), |p| {
                    format!("{:?}", p.admission).to_lowercase()
                }),
                t.pressure
                    .as_ref()
                    .map_or("-".to_owned(), |p| p.backlog.to_string()),
            ]);
        }
        out.push('\n');
        out.push_str(&table.render());
    }
    out
}

/// `status --json`: the topology report's fields plus `tenants`.
#[derive(Debug, serde::Serialize)]
struct StatusView<'a> {
    #[serde(flatten)]
    report: &'a switchyard_topology::StatusReport,
    tenants: &'a [TenantRate],
    round_trips: &'a RoundTrips,
}

/// One tenant's rate limit and admission state.
#[derive(Debug, serde::Serialize)]
pub struct TenantRate {
    /// Tenant id (or `_default`).
    pub tenant: String,
    /// Its own limit, if set.
    pub limit: Option<LimitRecord>,
    /// Its admission state, if the backpressure service has written one.
    pub pressure: Option<PressureRecord>,
}

/// Limits and admission states from the `rate-limits` bucket (empty if it is missing).
async fn tenant_rates(js: &jetstream::Context, topology: &ResolvedTopology) -> Vec<TenantRate> {
    let Ok((_, bucket)) = topology.open_bucket(js, BucketName::RateLimits).await else {
        return Vec::new();
    };
    let limits: Store<RateKey, LimitRecord> = Store::new(bucket.clone());
    let pressure: Store<RateKey, PressureRecord> = Store::new(bucket);
    let mut rows: BTreeMap<String, TenantRate> = BTreeMap::new();
    let name_of = |scope: &RateScope| match scope {
        RateScope::Default => "_default".to_owned(),
        RateScope::Tenant(t) => t.to_string(),
    };
    for (key, limit) in limits
        .list(RateRecord::Limit.filter())
        .await
        .unwrap_or_default()
    {
        let tenant = name_of(&key.scope);
        rows.entry(tenant.clone())
            .or_insert(TenantRate {
                tenant,
                limit: None,
                pressure: None,
            })
            .limit = limit.ok();
    }
    for (key, record) in pressure
        .list(RateRecord::Pressure.filter())
        .await
        .unwrap_or_default()
    {
        let tenant = name_of(&key.scope);
        rows.entry(tenant.clone())
            .or_insert(TenantRate {
                tenant,
                limit: None,
                pressure: None,
            })
            .pressure = record.ok();
    }
    rows.into_values().collect()
}
