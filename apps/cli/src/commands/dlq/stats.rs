//! `switchyard dlq stats`: DLQ inflow per tenant, stage and code, as counted by the dlq
//! service into the `dlq-stats` bucket (cheap to read: one KV record per counter). Counts are
//! inflow since counting began — replayed or purged entries stay counted; `dlq ls` shows what
//! is stored now.

use anstream::{print, println};
use std::process::ExitCode;

use async_nats::jetstream::{self, stream::Stream};
use serde::Serialize;
use switchyard_dlq::DlqCode;
use switchyard_dlq_ops::{StatsRecord, StatsStore};
use switchyard_keys::{KvKey, Stage, TenantId, kv};
use switchyard_topology::{BucketName, ResolvedTopology};

use crate::output::{Output, Table};
use crate::parse::{self, show_time};
use crate::resources;

/// Arguments of `dlq stats`.
#[derive(Debug, clap::Args)]
pub struct StatsArgs {
    /// Only this tenant's counters.
    #[arg(long)]
    pub tenant: Option<TenantId>,
    /// Only counters of this stage.
    #[arg(long)]
    pub stage: Option<Stage>,
    /// Only counters of this code.
    #[arg(long, value_parser = parse::dlq_code)]
    pub code: Option<DlqCode>,
}

/// What `dlq stats --json` prints.
#[derive(Debug, Serialize)]
pub struct StatsReport {
    /// The counters, largest first.
    pub counters: Vec<StatsRecord>,
    /// Entries counted by the selected counters.
    pub total: u64,
    /// Every DLQ entry up to this sequence is counted (0: nothing counted yet).
    pub counted_through: u64,
    /// The DLQ's newest sequence now.
    pub dlq_last_seq: u64,
    /// Stored messages that were not valid records (never counted).
    pub malformed: u64,
    /// Restored entries skipped (not new inflow).
    pub imported: u64,
}

/// Runs `dlq stats`.
pub async fn run(
    js: &jetstream::Context,
    topology: &ResolvedTopology,
    stream: &Stream,
    args: &StatsArgs,
    out: &Output,
) -> anyhow::Result<ExitCode> {
    let store = StatsStore::new(resources::bucket(js, topology, BucketName::DlqStats).await?);
    let filter = args
        .tenant
        .as_ref()
        .map_or(">".to_owned(), kv::tenant_filter);
    let mut counters = Vec::new();
    for counter in store.counters(&filter).await? {
        match counter {
            Ok(c)
                if args.stage.is_none_or(|s| s == c.stage)
                    && args.code.is_none_or(|k| k == c.code) =>
            {
                counters.push(c)
            }
            Ok(_) => {}
            Err(err) => eprintln!("warning: {err}"),
        }
    }
    counters.sort_by(|a, b| {
        b.count
            .cmp(&a.count)
            .then_with(|| a.key().render().cmp(&b.key().render()))
    });
    let state = store.state().await?.map(|(s, _)| s).unwrap_or_default();
    let mut stream = stream.clone();
    let dlq_last_seq = stream
        .info()
        .await
        .map(|i| i.state.last_sequence)
        .unwrap_or(0);
    let report = StatsReport {
        total: counters.iter().map(|c| c.count).sum(),
        counters,
        counted_through: state.cursor,
        dlq_last_seq,
        malformed: state.malformed,
        imported: state.imported,
    };
    if out.is_json() {
        out.json(&report)?;
        return Ok(ExitCode::SUCCESS);
    }
    if report.counters.is_empty() {
        println!(
            "no DLQ inflow counted{}",
            if state.cursor == 0 {
                " yet (the dlq service counts it; is switchyard-dlq running?)"
            } else {
                " for this selection"
            }
        );
    } else {
        let mut table = Table::new([
            "TENANT",
            "STAGE",
            "CODE",
            "COUNT",
            "FIRST SEEN",
            "LAST SEEN",
        ]);
        for c in &report.counters {
            table.row([
                c.tenant
                    .as_ref()
                    .map_or("_".to_owned(), ToString::to_string),
                c.stage.to_string(),
                c.code.to_string(),
                c.count.to_string(),
                show_time(c.first_seen),
                show_time(c.last_seen),
            ]);
        }
        print!("{}", table.render());
    }
    let behind = report.dlq_last_seq.saturating_sub(report.counted_through);
    println!(
        "total {} {}; counted through DLQ seq {}{}",
        report.total,
        if report.total == 1 {
            "entry"
        } else {
            "entries"
        },
        report.counted_through,
        if behind > 0 {
            format!(" ({behind} newer not yet counted)")
        } else {
            String::new()
        }
    );
    Ok(ExitCode::SUCCESS)
}
