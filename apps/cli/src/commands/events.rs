//! `switchyard events ls`: the operational events (stream `EVENTS`, `switchyard_service::events`)
//! — destinations disabled and enabled, breakers opened and closed, DLQ inflow over threshold,
//! replay jobs finished, admission closed and reopened —
//! read through an ordered consumer (nothing is consumed), oldest first.

use std::collections::VecDeque;
use std::process::ExitCode;

use anstream::{print, println};
use async_nats::jetstream::{self, stream::Stream};
use clap::Subcommand;
use serde::Serialize;
use switchyard_keys::TenantId;
use switchyard_service::events::OpEvent;
use switchyard_subjects::EventKind;
use switchyard_topology::{ResolvedTopology, StreamName};
use time::OffsetDateTime;

use crate::commands::attempts::read_log;
use crate::output::{self, Output, Table};
use crate::parse::{self, show_time};

/// Arguments of `events`.
#[derive(Debug, clap::Args)]
pub struct EventsArgs {
    /// The subcommand.
    #[command(subcommand)]
    pub command: EventsCommand,
}

/// The `events` subcommands.
#[derive(Debug, Subcommand)]
pub enum EventsCommand {
    /// List events, oldest first (the most recent `--limit` that match).
    Ls(LsArgs),
}

/// Which events `events ls` lists.
#[derive(Debug, Clone, clap::Args)]
pub struct LsArgs {
    /// Only this tenant's events (its own subjects: fast).
    #[arg(long)]
    pub tenant: Option<TenantId>,
    /// Only events of this kind (destination_disabled, destination_enabled, breaker_opened,
    /// breaker_closed, dlq_inflow, dlq_expiring, replay_job_finished, admission_closed,
    /// admission_reopened, attempts_exhausted, quota_near_full, storage_near_full,
    /// secret_rotated, session_ended, tenant_disabled).
    #[arg(long)]
    pub kind: Option<EventKind>,
    /// Only events at or after this time (RFC 3339, or an age: 30s, 15m, 2h, 3d, 1w).
    #[arg(long, value_name = "TIME", value_parser = parse::time)]
    pub since: Option<OffsetDateTime>,
    /// At most this many (the most recent).
    #[arg(long, value_name = "N", default_value_t = 100,
          value_parser = clap::value_parser!(u64).range(1..=100_000))]
    pub limit: u64,
}

/// One event and its sequence in `EVENTS`.
#[derive(Debug, Clone, Serialize)]
pub struct ListedEvent {
    /// Its sequence.
    pub seq: u64,
    /// The event.
    #[serde(flatten)]
    pub event: OpEvent,
}

/// The events `args` selects, oldest first, at most the last `args.limit`.
pub async fn list(
    stream: &Stream,
    topology: &ResolvedTopology,
    args: &LsArgs,
) -> anyhow::Result<Vec<ListedEvent>> {
    let filter = topology
        .namespace
        .event_filter(args.tenant.as_ref(), args.kind);
    let mut kept = VecDeque::new();
    read_log(
        stream,
        &filter,
        args.since,
        None,
        "the events",
        |seq, _, payload| match serde_json::from_slice::<OpEvent>(payload) {
            Ok(event) => {
                kept.push_back(ListedEvent { seq, event });
                if kept.len() as u64 > args.limit {
                    kept.pop_front();
                }
            }
            Err(err) => eprintln!(
                "warning: event {seq} is not an operational event: {}",
                output::printable(&err.to_string())
            ),
        },
    )
    .await?;
    Ok(kept.into())
}

/// Runs an `events` command.
pub async fn run(
    js: &jetstream::Context,
    topology: &ResolvedTopology,
    args: &EventsArgs,
    out: &Output,
) -> anyhow::Result<ExitCode> {
    let (_, stream) = topology.open_stream(js, StreamName::Events).await?;
    let EventsCommand::Ls(ls) = &args.command;
    let listed = list(&stream, topology, ls).await?;
    if out.is_json() {
        out.json(&listed)?;
    } else if listed.is_empty() {
        println!("no events match");
    } else {
        let mut table = Table::new(["SEQ", "AT", "TENANT", "KIND", "ABOUT", "SOURCE", "DETAIL"]);
        for l in &listed {
            let e = &l.event;
            table.row([
                l.seq.to_string(),
                show_time(e.at),
                e.tenant.clone().unwrap_or_else(|| "-".to_owned()),
                e.kind.clone(),
                e.about.clone().unwrap_or_else(|| "-".to_owned()),
                e.source.clone(),
                output::truncate(&e.detail, 80),
            ]);
        }
        print!("{}", table.render());
    }
    Ok(ExitCode::SUCCESS)
}
