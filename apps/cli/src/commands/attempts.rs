//! `switchyard attempts ls|show`: the delivery log (stream `ATTEMPTS`), every attempt egress
//! made — delivered, retried or given up — with its route, status, latency, error class and
//! trace id. Read through an ordered consumer (nothing is consumed), oldest first, up to what
//! is stored when the command starts.

use std::collections::VecDeque;
use std::process::ExitCode;

use anstream::{print, println};
use anyhow::Context;
use async_nats::jetstream::consumer::{DeliverPolicy, ReplayPolicy, pull};
use async_nats::jetstream::stream::{DirectGetErrorKind, Stream};
use async_nats::jetstream::{self};
use clap::Subcommand;
use futures::StreamExt;
use serde::Serialize;
use switchyard_envelope::LoggedAttempt;
use switchyard_keys::TenantId;
use switchyard_topology::{ResolvedTopology, StreamName};
use time::OffsetDateTime;

use crate::output::{self, Output, Table, fields};
use crate::parse::{self, show_time};
use crate::progress::Progress;

/// The largest `--limit`.
pub const MAX_LIMIT: u64 = 1_000_000;

/// Arguments of `attempts`.
#[derive(Debug, clap::Args)]
pub struct AttemptsArgs {
    /// The subcommand.
    #[command(subcommand)]
    pub command: AttemptsCommand,
}

/// The `attempts` subcommands.
#[derive(Debug, Subcommand)]
pub enum AttemptsCommand {
    /// List attempts, oldest first (the most recent `--limit` that match).
    Ls(LsArgs),
    /// Show one attempt in full, by its sequence in the log.
    Show(ShowArgs),
}

/// Which attempts `attempts ls` lists.
#[derive(Debug, clap::Args)]
pub struct LsArgs {
    /// Only this tenant's attempts (read from its own subject: fast).
    #[arg(long)]
    pub tenant: Option<TenantId>,
    /// Only attempts over this route or destination, by its key: `acme._.slack`,
    /// `acme.orders`.
    #[arg(long, value_name = "KEY")]
    pub route: Option<String>,
    /// Only the attempts of one destination's copies (a destination id, or `_route`).
    #[arg(long, value_name = "DESTINATION")]
    pub destination: Option<switchyard_envelope::Destination>,
    /// Only attempts that came out so: `delivered`, `retryable` or `permanent`.
    #[arg(long, value_parser = ["delivered", "retryable", "permanent"])]
    pub result: Option<String>,
    /// Only attempts that did not deliver (`retryable` and `permanent`).
    #[arg(long, conflicts_with = "result")]
    pub failed: bool,
    /// Only attempts of this message, by envelope id (the `webhook-id`) or producer message id.
    #[arg(long, value_name = "ID")]
    pub message: Option<String>,
    /// Only attempts at or after this time (RFC 3339, or an age: 30s, 15m, 2h, 3d, 1w).
    #[arg(long, value_name = "TIME", value_parser = parse::time)]
    pub since: Option<OffsetDateTime>,
    /// Only attempts at or before this time (RFC 3339, or an age).
    #[arg(long, value_name = "TIME", value_parser = parse::time)]
    pub until: Option<OffsetDateTime>,
    /// At most this many (the most recent).
    #[arg(long, value_name = "N", default_value_t = 100,
          value_parser = clap::value_parser!(u64).range(1..=MAX_LIMIT))]
    pub limit: u64,
}

impl LsArgs {
    /// Every attempt, no filter, up to the largest `--limit` (what a program listing the whole
    /// log asks for).
    pub fn everything() -> Self {
        Self {
            tenant: None,
            route: None,
            destination: None,
            result: None,
            failed: false,
            message: None,
            since: None,
            until: None,
            limit: MAX_LIMIT,
        }
    }

    fn matches(&self, attempt: &LoggedAttempt) -> bool {
        self.route.as_ref().is_none_or(|r| *r == attempt.route)
            && self
                .destination
                .as_ref()
                .is_none_or(|d| attempt.destination.as_deref() == Some(d.as_str()))
            && self.result.as_ref().is_none_or(|r| *r == attempt.result)
            && (!self.failed || attempt.result != "delivered")
            && self
                .message
                .as_ref()
                .is_none_or(|m| *m == attempt.id || *m == attempt.msg_id)
            && self.since.is_none_or(|t| attempt.record.at >= t)
            && self.until.is_none_or(|t| attempt.record.at <= t)
    }
}

/// Arguments of `attempts show`.
#[derive(Debug, clap::Args)]
pub struct ShowArgs {
    /// The attempt's sequence in the log (`attempts ls` prints it).
    #[arg(value_parser = clap::value_parser!(u64).range(1..))]
    pub seq: u64,
}

/// One attempt as listed: its place in the log and the record.
#[derive(Debug, Serialize)]
pub struct Listed {
    /// Its sequence in the `ATTEMPTS` stream.
    pub seq: u64,
    /// The record.
    #[serde(flatten)]
    pub attempt: LoggedAttempt,
}

/// Runs an `attempts` command.
pub async fn run(
    js: &jetstream::Context,
    topology: &ResolvedTopology,
    args: &AttemptsArgs,
    out: &Output,
) -> anyhow::Result<ExitCode> {
    let (_, stream) = topology.open_stream(js, StreamName::Attempts).await?;
    match &args.command {
        AttemptsCommand::Ls(ls) => {
            let filter = topology.namespace.attempt_filter(ls.tenant.as_ref());
            let progress = Progress::counter(out, "reading the delivery log");
            let listed = list(&stream, &filter, ls, |_| progress.inc(1)).await?;
            progress.finish();
            if out.is_json() {
                out.json(&listed)?;
            } else if listed.is_empty() {
                println!("no attempts match");
            } else {
                print!("{}", render(&listed));
            }
        }
        AttemptsCommand::Show(show) => {
            let message = match stream.direct_get(show.seq).await {
                Ok(message) => message,
                Err(e) if matches!(e.kind(), DirectGetErrorKind::NotFound) => {
                    anyhow::bail!("no attempt with seq {} in the delivery log", show.seq)
                }
                Err(e) => return Err(e).context("reading the delivery log"),
            };
            let attempt: LoggedAttempt = serde_json::from_slice(&message.payload)
                .with_context(|| format!("attempt {} is not a delivery log record", show.seq))?;
            let listed = Listed {
                seq: show.seq,
                attempt,
            };
            if out.is_json() {
                out.json(&listed)?;
            } else {
                print!("{}", render_one(&listed));
            }
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// Every record under `filter` that `args` selects, oldest first, at most the last
/// `args.limit`, read up to what the stream holds now; `seen` is called per record read.
pub async fn list(
    stream: &Stream,
    filter: &str,
    args: &LsArgs,
    seen: impl Fn(u64),
) -> anyhow::Result<Vec<Listed>> {
    let mut kept: VecDeque<Listed> = VecDeque::new();
    read_log(
        stream,
        filter,
        args.since,
        args.until,
        "the delivery log",
        |seq, subject, payload| {
            seen(1);
            // The tenant is the one whose subject holds the record, whatever the record says.
            let subject_tenant = subject.rsplit('.').next().unwrap_or_default();
            match serde_json::from_slice::<LoggedAttempt>(payload) {
                Ok(attempt) if attempt.tenant != subject_tenant => eprintln!(
                    "warning: log record {seq} names tenant {} but is stored under {}; skipped",
                    output::printable(&attempt.tenant),
                    output::printable(subject_tenant)
                ),
                Ok(attempt) if args.matches(&attempt) => {
                    kept.push_back(Listed { seq, attempt });
                    if kept.len() as u64 > args.limit {
                        kept.pop_front();
                    }
                }
                Ok(_) => {}
                Err(err) => eprintln!(
                    "warning: log record {seq} is not a delivery attempt: {}",
                    output::printable(&err.to_string())
                ),
            }
        },
    )
    .await?;
    Ok(kept.into())
}

/// Reads every message under `filter` of a log stream (limits retention: `ATTEMPTS`,
/// `EVENTS`) through an ordered consumer — nothing is consumed — oldest first from `since`, up
/// to what the stream holds when the read starts (under a steady write rate the read still
/// ends) or past `until`, calling `each(seq, subject, payload)`. `what` names the log in
/// errors.
pub async fn read_log(
    stream: &Stream,
    filter: &str,
    since: Option<OffsetDateTime>,
    until: Option<OffsetDateTime>,
    what: &str,
    mut each: impl FnMut(u64, &str, &[u8]),
) -> anyhow::Result<()> {
    let reading = || format!("reading {what}");
    let start = since.map_or(DeliverPolicy::All, |start_time| {
        DeliverPolicy::ByStartTime { start_time }
    });
    let consumer = stream
        .create_consumer(pull::OrderedConfig {
            filter_subject: filter.to_owned(),
            deliver_policy: start,
            replay_policy: ReplayPolicy::Instant,
            ..Default::default()
        })
        .await
        .with_context(reading)?;
    if consumer.cached_info().num_pending == 0 {
        return Ok(());
    }
    let last = stream
        .get_info()
        .await
        .with_context(reading)?
        .state
        .last_sequence;
    let mut messages = consumer.messages().await.with_context(reading)?;
    while let Some(message) = messages.next().await {
        let message = message.with_context(reading)?;
        let info = message
            .info()
            .map_err(|e| anyhow::anyhow!("{}: {e}", reading()))?;
        let (seq, pending) = (info.stream_sequence, info.pending);
        each(seq, message.subject.as_str(), &message.payload);
        if pending == 0 || seq >= last || until.is_some_and(|until| info.published > until) {
            break;
        }
    }
    Ok(())
}

/// The attempts as a table.
fn render(listed: &[Listed]) -> String {
    let mut table = Table::new([
        "SEQ", "AT", "ROUTE", "ID", "ATTEMPT", "RESULT", "OUTCOME", "STATUS", "MS", "ERROR",
    ]);
    for l in listed {
        let a = &l.attempt;
        table.row([
            l.seq.to_string(),
            show_time(a.record.at),
            a.route.clone(),
            a.id.clone(),
            a.attempt.to_string(),
            a.result.clone(),
            a.record.outcome.clone(),
            a.record.status.map_or("-".to_owned(), |s| s.to_string()),
            a.record.duration_ms.to_string(),
            output::truncate(a.record.error.as_deref().unwrap_or(""), 60),
        ]);
    }
    table.render()
}

/// One attempt as `name  value` lines.
fn render_one(listed: &Listed) -> String {
    let a = &listed.attempt;
    let mut pairs = vec![
        ("seq", listed.seq.to_string()),
        ("at", show_time(a.record.at)),
        ("tenant", a.tenant.clone()),
        ("team", a.team.clone()),
        ("platform", a.platform.clone()),
        ("route", format!("{} ({})", a.route, a.route_type)),
        (
            "destination",
            a.destination.clone().unwrap_or_else(|| "-".to_owned()),
        ),
        ("id", a.id.clone()),
        ("msg id", a.msg_id.clone()),
        (
            "attempt",
            if a.replay > 0 {
                format!("{} (after replay {})", a.attempt, a.replay)
            } else {
                a.attempt.to_string()
            },
        ),
        ("result", a.result.clone()),
        ("outcome", a.record.outcome.clone()),
        (
            "status",
            a.record.status.map_or("-".to_owned(), |s| s.to_string()),
        ),
        ("duration", format!("{} ms", a.record.duration_ms)),
    ];
    if let Some(error) = &a.record.error {
        pairs.push(("error", error.clone()));
    }
    if let Some(trace) = &a.trace_id {
        pairs.push(("trace id", trace.clone()));
    }
    fields(&pairs)
}

#[cfg(test)]
mod tests {
    use switchyard_envelope::AttemptRecord;

    use super::*;

    #[test]
    fn filters_select_by_route_result_message_and_time() {
        let at = OffsetDateTime::from_unix_timestamp(1_700_000_000).unwrap();
        let attempt = LoggedAttempt {
            id: "0190-id".into(),
            msg_id: "order-1".into(),
            tenant: "acme".into(),
            team: "ops".into(),
            platform: "slack".into(),
            destination: None,
            route: "acme._.slack".into(),
            route_type: "webhook".into(),
            attempt: 2,
            replay: 0,
            result: "retryable".into(),
            trace_id: None,
            record: AttemptRecord::new(at, "http_status", Some(503), 12, None),
        };
        let args = |f: &dyn Fn(&mut LsArgs)| {
            let mut a = LsArgs::everything();
            f(&mut a);
            a.matches(&attempt)
        };
        assert!(args(&|_| {}));
        assert!(args(&|a| a.failed = true));
        assert!(!args(&|a| a.result = Some("delivered".into())));
        assert!(args(&|a| a.route = Some("acme._.slack".into())));
        assert!(!args(&|a| a.route = Some("acme.ops.slack".into())));
        assert!(
            !args(&|a| a.destination = Some("crm".parse().unwrap())),
            "not a fanned-out copy"
        );
        assert!(args(&|a| a.message = Some("order-1".into())));
        assert!(args(&|a| a.message = Some("0190-id".into())));
        assert!(!args(&|a| a.since = Some(at + time::Duration::SECOND)));
        assert!(args(&|a| a.until = Some(at)));
    }
}
