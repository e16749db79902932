//! `switchyard dlq tail`: follow DLQ entries live through an ordered consumer (never removes
//! anything), one line per entry, until `--limit` entries or Ctrl-C.

use std::process::ExitCode;

use anyhow::Context;
use async_nats::jetstream::consumer::DeliverPolicy;
use futures::StreamExt;
use switchyard_dlq::DlqEntry;
use switchyard_dlq_ops::DlqReader;

use super::read;
use super::{FilterArgs, TimeArgs};
use crate::output::{self, Output, paint, style};
use crate::parse::show_time;

/// Arguments of `dlq tail`.
#[derive(Debug, clap::Args)]
pub struct TailArgs {
    /// Which entries.
    #[command(flatten)]
    pub filters: FilterArgs,
    /// Start at the oldest stored entry instead of only new ones.
    #[arg(long)]
    pub all: bool,
    /// Exit after this many entries (default: run until Ctrl-C).
    #[arg(long, value_name = "N")]
    pub limit: Option<usize>,
}

/// One human line: time, seq, tenant, stage, platform, code, reason (styled; the reason made
/// printable and on one line).
pub fn line(entry: &DlqEntry) -> String {
    let r = &entry.record;
    format!(
        "{}  seq {}  {}  {}  {}  {}  {}",
        paint(style::DIM, &show_time(entry.stored_at)),
        paint(style::BOLD, &entry.seq.to_string()),
        r.tenant.as_ref().map_or("_", |t| t.as_str()),
        r.stage,
        r.platform.as_ref().map_or("_", |p| p.as_str()),
        read::code_cell(r.code),
        output::printable(&r.reason.replace(['\r', '\n'], " ")),
    )
}

/// Runs `dlq tail`.
pub async fn run(reader: &DlqReader, args: &TailArgs, out: &Output) -> anyhow::Result<ExitCode> {
    let selection = args.filters.selection(&TimeArgs::default())?;
    if args.limit == Some(0) {
        return Ok(ExitCode::SUCCESS);
    }
    let start = if args.all {
        DeliverPolicy::All
    } else {
        DeliverPolicy::New
    };
    let filter = selection.subject_filter(reader.namespace());
    let consumer = reader.ordered(&filter, start).await?;
    let mut messages = consumer
        .messages()
        .await
        .context("following the DLQ stream")?;
    let ctrl_c = tokio::signal::ctrl_c();
    tokio::pin!(ctrl_c);
    let mut shown = 0;
    loop {
        let next = tokio::select! {
            next = messages.next() => next,
            _ = &mut ctrl_c => break,
        };
        let message = next
            .context("the DLQ subscription ended")?
            .context("following the DLQ stream")?;
        let delivered = reader.delivered(&message)?;
        let entry = match delivered.entry {
            Ok(entry) => entry,
            Err(err) => {
                read::warn_malformed(delivered.seq, &err);
                continue;
            }
        };
        if !selection.matches(&entry) {
            continue;
        }
        if out.is_json() {
            out.json_line(&entry.view())?;
        } else {
            // Through `write_stdout`: a reader that went away (`| head`) ends the tail.
            output::write_stdout(&format!("{}\n", line(&entry)))?;
        }
        shown += 1;
        if args.limit.is_some_and(|limit| shown >= limit) {
            break;
        }
    }
    Ok(ExitCode::SUCCESS)
}
