//! `switchyard dlq ls`: the entries stored now, oldest first, read through an ordered
//! consumer until caught up (never removes anything).

use anstream::{print, println};
use std::process::ExitCode;

use switchyard_dlq_ops::DlqReader;

use super::read;
use super::{FilterArgs, TimeArgs};
use crate::output::{Output, Table, truncate};
use crate::parse::show_time;

/// The longest reason shown in the table, in characters.
const REASON_CHARS: usize = 60;

/// Arguments of `dlq ls`.
#[derive(Debug, clap::Args)]
pub struct LsArgs {
    /// Which entries.
    #[command(flatten)]
    pub filters: FilterArgs,
    /// When they were stored.
    #[command(flatten)]
    pub times: TimeArgs,
    /// Show at most this many entries.
    #[arg(long, value_name = "N", default_value_t = 100)]
    pub limit: usize,
}

/// Runs `dlq ls`.
pub async fn run(reader: &DlqReader, args: &LsArgs, out: &Output) -> anyhow::Result<ExitCode> {
    let selection = args.filters.selection(&args.times)?;
    let collected = reader
        .collect(&selection, Some(args.limit), read::warn_malformed)
        .await?;
    if out.is_json() {
        let views: Vec<_> = collected.entries.iter().map(|e| e.view()).collect();
        out.json(&views)?;
    } else if collected.entries.is_empty() {
        println!("no DLQ entries match ({})", selection.describe());
    } else {
        let mut table = Table::new([
            "SEQ", "STORED", "TENANT", "STAGE", "PLATFORM", "CODE", "ATTEMPTS", "REASON",
        ]);
        for entry in &collected.entries {
            let r = &entry.record;
            table.row([
                entry.seq.to_string(),
                show_time(entry.stored_at),
                r.tenant
                    .as_ref()
                    .map_or("_".to_owned(), ToString::to_string),
                r.stage.to_string(),
                r.platform
                    .as_ref()
                    .map_or("_".to_owned(), ToString::to_string),
                r.code.to_string(),
                r.attempts.to_string(),
                truncate(&r.reason, REASON_CHARS),
            ]);
        }
        print!("{}", table.render());
    }
    if collected.truncated {
        eprintln!(
            "showing the first {} matching entries; more may match (raise --limit or narrow with --since)",
            args.limit
        );
    }
    Ok(ExitCode::SUCCESS)
}
