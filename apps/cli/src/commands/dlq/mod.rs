//! `switchyard dlq tail|ls|show|replay|jobs|stats|purge|export|import`: operating on the DLQ
//! stream.
//!
//! The DLQ is a limits-retention stream, and browsing must never remove entries: `tail`, `ls`
//! and `export` read through ordered consumers (ephemeral, no acks), `show` through a direct
//! get. Only `replay` (after the replayed copy is durably stored and not a duplicate) and
//! `purge` delete entries, one sequence at a time. `replay --job` hands the replay to the dlq
//! service as a durable job (`jobs` follows it); `stats` reads the counters the dlq service
//! keeps; `import` restores exported entries.

mod export;
mod import;
pub mod jobs;
mod ls;
pub mod purge;
mod read;
mod replay;
pub mod show;
mod stats;
mod tail;

use std::process::ExitCode;

use async_nats::jetstream;
use clap::Subcommand;
use switchyard_dlq::DlqCode;
use switchyard_dlq_ops::{DlqReader, Selection};
use switchyard_envelope::Destination;
use switchyard_keys::{PlatformId, Stage, TenantId};
use switchyard_subjects::{DlqFilter, InputStage};
use switchyard_topology::ResolvedTopology;
use time::OffsetDateTime;

use crate::output::Output;
use crate::{parse, resources};

pub use read::Target;

/// Arguments of `dlq`.
#[derive(Debug, clap::Args)]
pub struct DlqArgs {
    /// The dlq command.
    #[command(subcommand)]
    pub command: DlqCommand,
}

/// The `dlq` commands.
#[derive(Debug, Subcommand)]
pub enum DlqCommand {
    /// Follow new DLQ entries live (never removes them); --all starts at the oldest.
    Tail(tail::TailArgs),
    /// List the entries stored now, oldest first (never removes them).
    Ls(ls::LsArgs),
    /// Show one entry in full: record, headers, payload, attempt history.
    Show(show::ShowArgs),
    /// Republish entries to the stage that gave up on them (egress entries: backpressure, so the
    /// tenant's rate limit applies); remove each once stored.
    Replay(replay::ReplayArgs),
    /// List replay jobs with their progress; show, follow or cancel one.
    Jobs(jobs::JobsArgs),
    /// DLQ inflow per tenant, stage and code, as counted by the dlq service.
    Stats(stats::StatsArgs),
    /// Delete entries.
    Purge(purge::PurgeArgs),
    /// Write entries to an NDJSON file (one entry per line, payload and headers included).
    Export(export::ExportArgs),
    /// Restore entries from an export file (same payload and headers).
    Import(import::ImportArgs),
}

/// A stage a replay can re-enter: `ingress`, `idempotency`, `backpressure` or `egress`.
pub fn input_stage(raw: &str) -> Result<InputStage, String> {
    InputStage::ALL
        .into_iter()
        .find(|s| s.root() == raw)
        .ok_or_else(|| {
            format!("unknown stage {raw:?}: expected ingress, idempotency, backpressure or egress")
        })
}

/// Which entries: tenant, stage and platform select subjects; the code is checked per entry.
#[derive(Debug, Clone, Default, clap::Args)]
pub struct FilterArgs {
    /// Only this tenant's entries.
    #[arg(long)]
    pub tenant: Option<TenantId>,
    /// Only entries dead-lettered by this stage (ingress, idempotency, backpressure, egress, dlq).
    #[arg(long)]
    pub stage: Option<Stage>,
    /// Only this platform's entries.
    #[arg(long)]
    pub platform: Option<PlatformId>,
    /// Only entries with this code (e.g. retries_exhausted, no_route).
    #[arg(long, value_parser = parse::dlq_code)]
    pub code: Option<DlqCode>,
    /// Only a destination's copies (a destination id, or `_route`; with --tenant, since ids
    /// are unique within a tenant): with `replay`, re-delivers what that destination failed to
    /// take (`--since` for a window).
    #[arg(long, value_name = "DESTINATION", requires = "tenant")]
    pub destination: Option<Destination>,
}

/// When the entries were stored: RFC 3339 or an age like 15m, 2h, 3d.
#[derive(Debug, Clone, Default, clap::Args)]
pub struct TimeArgs {
    /// Only entries stored at or after this time (RFC 3339, or an age: 30s, 15m, 2h, 3d, 1w).
    #[arg(long, value_name = "TIME", value_parser = parse::time)]
    pub since: Option<OffsetDateTime>,
    /// Only entries stored at or before this time (RFC 3339, or an age).
    #[arg(long, value_name = "TIME", value_parser = parse::time)]
    pub until: Option<OffsetDateTime>,
}

impl FilterArgs {
    /// The subject part of the filter.
    pub fn subjects(&self) -> DlqFilter {
        DlqFilter {
            tenant: self.tenant.clone(),
            stage: self.stage,
            platform: self.platform.clone(),
        }
    }

    /// The selection these filters and `times` make.
    ///
    /// Errors: `--since` after `--until`.
    pub fn selection(&self, times: &TimeArgs) -> anyhow::Result<Selection> {
        let selection = Selection {
            tenant: self.tenant.clone(),
            stage: self.stage,
            platform: self.platform.clone(),
            code: self.code,
            destination: self.destination.clone(),
            since: times.since,
            until: times.until,
            seqs: Vec::new(),
        };
        selection
            .check_time_range()
            .map_err(|e| anyhow::anyhow!("--{}", e.replacen("until", "--until", 1)))?;
        Ok(selection)
    }

    /// Whether any filter is set.
    pub fn any(&self) -> bool {
        self.tenant.is_some()
            || self.stage.is_some()
            || self.platform.is_some()
            || self.code.is_some()
            || self.destination.is_some()
    }
}

/// Runs a `dlq` command. Every one of them first checks that the DLQ stream exists.
pub async fn run(
    js: &jetstream::Context,
    topology: &ResolvedTopology,
    args: &DlqArgs,
    out: &Output,
) -> anyhow::Result<ExitCode> {
    let stream = resources::dlq_stream(js, topology).await?;
    let ns = &topology.namespace;
    let reader = DlqReader::new(stream.clone(), ns.clone());
    match &args.command {
        DlqCommand::Tail(a) => tail::run(&reader, a, out).await,
        DlqCommand::Ls(a) => ls::run(&reader, a, out).await,
        DlqCommand::Show(a) => show::run(js, topology, &reader, a, out).await,
        DlqCommand::Replay(a) => replay::run(js, topology, &reader, a, out).await,
        DlqCommand::Jobs(a) => jobs::run(js, topology, a, out).await,
        DlqCommand::Stats(a) => stats::run(js, topology, &stream, a, out).await,
        DlqCommand::Purge(a) => purge::run(&reader, a, out).await,
        DlqCommand::Export(a) => export::run(&reader, a, out).await,
        DlqCommand::Import(a) => import::run(js, &stream, ns, a, out).await,
    }
}
