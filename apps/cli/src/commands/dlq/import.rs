//! `switchyard dlq import --file F`: restore entries from a `dlq export` file. The whole file
//! is checked first (every line must restore to a valid DLQ record in this deployment), then
//! each entry the DLQ does not hold already is republished to its DLQ subject with its stored
//! headers and payload; only `Nats-Msg-Id` changes (`import:<run>/<identity>`,
//! [`export::restore`]). "Already held" is decided by the entry's identity against every entry
//! stored now ([`export::stored_identities`]), never by the duplicate window: importing a file
//! twice, or into the DLQ it came from, stores each entry once, and an import after a purge
//! restores everything. Restored entries get new sequences and storage times; the dlq service
//! does not count them as new inflow.

use anstream::println;
use std::fs::File;
use std::io::{BufRead, BufReader};
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use async_nats::jetstream::{self, stream::Stream};
use serde::Serialize;
use switchyard_dlq_ops::{DlqReader, export};
use switchyard_subjects::Namespace;

use crate::output::Output;
use crate::progress::Progress;

/// Arguments of `dlq import`.
#[derive(Debug, clap::Args)]
pub struct ImportArgs {
    /// The export file to read (`-` for stdin).
    #[arg(long, value_name = "FILE")]
    pub file: PathBuf,
    /// Check the file and print what would be restored; publish nothing.
    #[arg(long)]
    pub dry_run: bool,
}

/// What `import --json` prints.
#[derive(Debug, Default, Serialize)]
pub struct ImportReport {
    /// Whether this was a dry run.
    pub dry_run: bool,
    /// `[exported seq, new seq]` of each restored entry (new seq 0 on a dry run).
    pub restored: Vec<(u64, u64)>,
    /// Exported seqs the DLQ already held (the original, an earlier restore, or an earlier
    /// line of the same file), left alone.
    pub already_stored: Vec<u64>,
}

fn lines(args: &ImportArgs) -> anyhow::Result<Box<dyn BufRead>> {
    if args.file.as_os_str() == "-" {
        return Ok(Box::new(BufReader::new(std::io::stdin())));
    }
    let file =
        File::open(&args.file).with_context(|| format!("opening {}", args.file.display()))?;
    Ok(Box::new(BufReader::new(file)))
}

/// Runs `dlq import`.
pub async fn run(
    js: &jetstream::Context,
    stream: &Stream,
    ns: &Namespace,
    args: &ImportArgs,
    out: &Output,
) -> anyhow::Result<ExitCode> {
    let run = format!(
        "{:x}",
        time::OffsetDateTime::now_utc().unix_timestamp_nanos()
    );
    let mut restores = Vec::new();
    for (n, line) in lines(args)?.lines().enumerate() {
        let line =
            line.with_context(|| format!("reading line {} of {}", n + 1, args.file.display()))?;
        if line.trim().is_empty() {
            continue;
        }
        let restore = export::restore(ns, &line, &run)
            .with_context(|| format!("line {} of {}", n + 1, args.file.display()))?;
        restores.push(restore);
    }
    let mut report = ImportReport {
        dry_run: args.dry_run,
        ..ImportReport::default()
    };
    let reader = DlqReader::new(stream.clone(), ns.clone());
    let mut held = Progress::during(out, "reading the DLQ", export::stored_identities(&reader))
        .await
        .context("reading the identities of the entries stored now")?;
    let progress = Progress::bar(
        out,
        restores.len() as u64,
        if args.dry_run {
            "checking"
        } else {
            "restoring"
        },
    );
    for restore in restores {
        progress.inc(1);
        if !held.insert(restore.identity.clone()) {
            // Counted in the summary line; `--json` lists their exported sequences.
            report.already_stored.push(restore.exported_seq);
            continue;
        }
        if args.dry_run {
            if !out.is_json() {
                progress.println(format_args!(
                    "would restore seq {} -> {}",
                    restore.exported_seq, restore.subject
                ));
            }
            report.restored.push((restore.exported_seq, 0));
            continue;
        }
        let ack = js
            .publish_with_headers(restore.subject.clone(), restore.headers, restore.payload)
            .await
            .with_context(|| format!("restoring entry {}", restore.exported_seq))?
            .await
            .with_context(|| {
                format!(
                    "restoring entry {}: waiting for the ack",
                    restore.exported_seq
                )
            })?;
        anyhow::ensure!(
            !ack.duplicate,
            "restoring entry {}: the DLQ dropped it as a duplicate of seq {} although this run's id is new; nothing after it was imported",
            restore.exported_seq,
            ack.sequence
        );
        report.restored.push((restore.exported_seq, ack.sequence));
    }
    progress.finish();
    if out.is_json() {
        out.json(&report)?;
    } else {
        let n = report.restored.len();
        let mut line = format!(
            "{} {n} {}",
            if args.dry_run {
                "would restore"
            } else {
                "restored"
            },
            if n == 1 { "entry" } else { "entries" }
        );
        if !report.already_stored.is_empty() {
            line.push_str(&format!(
                "; {} already stored (left alone)",
                report.already_stored.len()
            ));
        }
        println!("{line}");
    }
    Ok(ExitCode::SUCCESS)
}
