//! `switchyard dlq purge`: delete exactly the selected entries, one sequence at a time (so an
//! entry stored after the confirmation is never swept away with them). The management API's
//! purge deletes through the same [`delete`].

use anstream::println;
use std::process::ExitCode;

use async_nats::jetstream::stream::{DeleteMessageErrorKind, Stream};
use serde::Serialize;
use switchyard_dlq_ops::DlqReader;

use super::read::{self, Target};
use super::{FilterArgs, TimeArgs};
use crate::output::Output;
use crate::progress::Progress;
use crate::prompt;

/// Arguments of `dlq purge`.
#[derive(Debug, clap::Args)]
pub struct PurgeArgs {
    /// Entries to delete, by DLQ sequence (instead of filters).
    #[arg(value_name = "SEQ")]
    pub seqs: Vec<u64>,
    /// Which entries (instead of sequences).
    #[command(flatten)]
    pub filters: FilterArgs,
    /// When they were stored.
    #[command(flatten)]
    pub times: TimeArgs,
    /// Delete every entry (no filter).
    #[arg(long)]
    pub all: bool,
    /// Do not ask for confirmation (required with filters when stdin is not a terminal).
    #[arg(long, short = 'y')]
    pub yes: bool,
}

/// What `purge --json` prints.
#[derive(Debug, Default, Serialize)]
pub struct PurgeReport {
    /// Sequences deleted.
    pub removed: Vec<u64>,
    /// Sequences asked for that were not there.
    pub not_found: Vec<u64>,
}

/// The sequences a filter selects, after confirmation; `None` when there is nothing to do.
async fn selected(
    reader: &DlqReader,
    target: Target,
    yes: bool,
    out: &Output,
) -> anyhow::Result<Option<Vec<u64>>> {
    let selection = match target {
        Target::Seqs(seqs) => return Ok(Some(seqs)),
        Target::Filter(selection) => selection,
    };
    prompt::ensure_can_confirm("purge DLQ entries selected by a filter", yes)?;
    let collected = Progress::during(
        out,
        "reading the DLQ",
        reader.collect(&selection, None, read::warn_malformed),
    )
    .await?;
    let mut seqs: Vec<u64> = collected.entries.iter().map(|e| e.seq).collect();
    // A message that is not a valid record has no readable code: it goes with a subject or
    // time filter, never with a code filter.
    if !selection.reads_records() {
        seqs.extend(&collected.malformed);
        seqs.sort_unstable();
    }
    if seqs.is_empty() {
        return Ok(None);
    }
    let question = format!(
        "delete {} DLQ entries ({})?",
        seqs.len(),
        selection.describe()
    );
    if !yes && !prompt::confirm(&question)? {
        anyhow::bail!("cancelled: nothing was deleted");
    }
    Ok(Some(seqs))
}

/// Deletes exactly `seqs` from the DLQ stream, one sequence at a time (so an entry stored
/// since they were selected is never swept away with them), calling `each` after every one.
/// A sequence the stream does not hold (any more) goes to [`PurgeReport::not_found`].
///
/// Errors: a delete failed for another reason than a missing sequence; the entries before it
/// are deleted (the message says how many).
pub async fn delete(
    stream: &Stream,
    seqs: &[u64],
    mut each: impl FnMut(),
) -> anyhow::Result<PurgeReport> {
    let mut report = PurgeReport::default();
    for &seq in seqs {
        let deleted = stream.delete_message(seq).await;
        each();
        match deleted {
            Ok(true) => report.removed.push(seq),
            Ok(false) => report.not_found.push(seq),
            // The server refuses the delete of a sequence it does not hold.
            Err(err) if matches!(err.kind(), DeleteMessageErrorKind::JetStream(_)) => {
                report.not_found.push(seq)
            }
            Err(err) => {
                return Err(anyhow::Error::new(err).context(format!(
                    "deleting DLQ entry {seq} (removed {} before it)",
                    report.removed.len()
                )));
            }
        }
    }
    Ok(report)
}

/// Runs `dlq purge`.
pub async fn run(reader: &DlqReader, args: &PurgeArgs, out: &Output) -> anyhow::Result<ExitCode> {
    let target = Target::new(&args.seqs, &args.filters, &args.times, args.all)?;
    let seqs = selected(reader, target, args.yes, out)
        .await?
        .unwrap_or_default();
    let progress = Progress::bar(out, seqs.len() as u64, "deleting");
    let report = delete(reader.stream(), &seqs, || progress.inc(1)).await?;
    progress.finish();
    if out.is_json() {
        out.json(&report)?;
    } else {
        let n = report.removed.len();
        let mut line = format!("removed {n} {}", if n == 1 { "entry" } else { "entries" });
        if !report.not_found.is_empty() {
            let missing: Vec<String> = report.not_found.iter().map(u64::to_string).collect();
            line.push_str(&format!("; not found: {}", missing.join(", ")));
        }
        println!("{line}");
    }
    Ok(ExitCode::SUCCESS)
}
