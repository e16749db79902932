//! `switchyard dlq export --file F [filters]`: write the selected entries to an NDJSON file,
//! one [`ExportLine`] per line (the entry's JSON view with its payload, plus every header as
//! stored), oldest first, without removing anything. `dlq import` restores them. The format is
//! described in `docs/dlq-wire-format.md`.

use anstream::println;
use std::fs::{File, OpenOptions};
use std::io::{BufWriter, Write};
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use serde::Serialize;
use switchyard_dlq_ops::{DlqReader, ExportLine};

use super::read;
use super::{FilterArgs, TimeArgs};
use crate::output::Output;
use crate::progress::Progress;

/// Arguments of `dlq export`.
#[derive(Debug, clap::Args)]
pub struct ExportArgs {
    /// The file to write (`-` for stdout).
    #[arg(long, value_name = "FILE")]
    pub file: PathBuf,
    /// Which entries (default: every entry).
    #[command(flatten)]
    pub filters: FilterArgs,
    /// When they were stored (e.g. `--until 13d` for the entries about to age out of a
    /// 14-day DLQ).
    #[command(flatten)]
    pub times: TimeArgs,
    /// Replace the file if it exists.
    #[arg(long)]
    pub force: bool,
}

/// What `export --json` prints.
#[derive(Debug, Serialize)]
pub struct ExportReport {
    /// The file written.
    pub file: String,
    /// Entries written.
    pub exported: u64,
    /// The first and last DLQ sequence written.
    pub seqs: Option<(u64, u64)>,
    /// Stored messages skipped because they are not valid DLQ records.
    pub skipped: Vec<u64>,
}

fn open(args: &ExportArgs) -> anyhow::Result<Box<dyn Write>> {
    if args.file.as_os_str() == "-" {
        return Ok(Box::new(BufWriter::new(std::io::stdout().lock())));
    }
    let mut options = OpenOptions::new();
    options.write(true);
    if args.force {
        options.create(true).truncate(true);
    } else {
        options.create_new(true);
    }
    let file: File = options.open(&args.file).with_context(|| {
        format!(
            "creating {} (it must not exist; --force replaces it)",
            args.file.display()
        )
    })?;
    Ok(Box::new(BufWriter::new(file)))
}

/// Runs `dlq export`.
/// A write's outcome: exporting to stdout, a reader that went away (`| head`) ends the export
/// quietly with status 0, as a Unix tool killed by SIGPIPE would.
fn written(result: std::io::Result<()>, args: &ExportArgs) -> anyhow::Result<()> {
    match result {
        Err(err)
            if err.kind() == std::io::ErrorKind::BrokenPipe && args.file.as_os_str() == "-" =>
        {
            std::process::exit(0)
        }
        other => other.context("writing the export"),
    }
}

pub async fn run(reader: &DlqReader, args: &ExportArgs, out: &Output) -> anyhow::Result<ExitCode> {
    let ns = reader.namespace();
    let selection = args.filters.selection(&args.times)?;
    let mut writer = open(args)?;
    let mut report = ExportReport {
        file: args.file.display().to_string(),
        exported: 0,
        seqs: None,
        skipped: Vec::new(),
    };
    let mut read = reader.select(&selection);
    // Exporting to stdout: the lines are the output, and a counter would land between them.
    let progress = if args.file.as_os_str() == "-" {
        Progress::hidden()
    } else {
        Progress::counter(out, "exported")
    };
    while let Some((message, delivered)) = read.next().await? {
        match &delivered.entry {
            Ok(entry) if selection.matches(entry) => {}
            Ok(_) => continue,
            Err(err) => {
                read::warn_malformed(delivered.seq, err);
                if selection.in_time(delivered.stored_at) && !selection.reads_records() {
                    report.skipped.push(delivered.seq);
                }
                continue;
            }
        }
        let line = ExportLine::of_read(ns, &message, &delivered)
            .with_context(|| format!("exporting DLQ entry {}", delivered.seq))?;
        let mut bytes = serde_json::to_vec(&line).context("encoding the export")?;
        bytes.push(b'\n');
        written(writer.write_all(&bytes), args)?;
        report.exported += 1;
        progress.inc(1);
        report.seqs = Some(match report.seqs {
            None => (delivered.seq, delivered.seq),
            Some((first, _)) => (first, delivered.seq),
        });
    }
    written(writer.flush(), args)?;
    drop(writer);
    progress.finish();
    if args.file.as_os_str() == "-" {
        if !report.skipped.is_empty() {
            eprintln!("skipped {} invalid records", report.skipped.len());
        }
        return Ok(ExitCode::SUCCESS);
    }
    if out.is_json() {
        out.json(&report)?;
    } else {
        let n = report.exported;
        let mut line = format!(
            "exported {n} {} to {}",
            if n == 1 { "entry" } else { "entries" },
            report.file
        );
        if let Some((first, last)) = report.seqs {
            line.push_str(&format!(" (seq {first}..{last})"));
        }
        if !report.skipped.is_empty() {
            line.push_str(&format!(
                "; skipped {} invalid records",
                report.skipped.len()
            ));
        }
        println!("{line}");
    }
    Ok(ExitCode::SUCCESS)
}
