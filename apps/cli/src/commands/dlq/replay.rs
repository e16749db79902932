//! `switchyard dlq replay`: republish entries to the stage that gave up on them (egress entries
//! to backpressure, so the tenant's rate limit paces them), or the stage given with `--to`
//! ([`plan_replay_to`]); await each JetStream ack, and only then delete the
//! entry — the replay step the dlq service's jobs run too ([`step`]), with its duplicate rule:
//! the entry stays only when the ack is a duplicate of the message it was read from. At a
//! bounded rate, with a dry run.
//!
//! With `--job` (or `--follow`) the CLI replays nothing itself: it writes a durable job for
//! the dlq service ([`super::jobs::submit`]), which survives the CLI, a crash or a restart.

use anstream::println;
use std::collections::BTreeMap;
use std::process::ExitCode;
use std::time::Duration;

use async_nats::jetstream;
use serde::Serialize;
use switchyard_dlq::DlqEntry;
use switchyard_dlq_ops::{DlqReader, Markers, Replayer, StepError, Stepped, plan_replay_to, step};
use switchyard_subjects::InputStage;
use switchyard_topology::{BucketName, ResolvedTopology};
use tokio::sync::Semaphore;
use tokio::time::{Interval, MissedTickBehavior};

use super::read::{self, Target};
use super::{FilterArgs, TimeArgs};
use crate::output::Output;
use crate::progress::Progress;
use crate::{prompt, resources};

/// Arguments of `dlq replay`.
#[derive(Debug, clap::Args)]
pub struct ReplayArgs {
    /// Entries to replay, by DLQ sequence (instead of filters).
    #[arg(value_name = "SEQ")]
    pub seqs: Vec<u64>,
    /// Which entries (instead of sequences).
    #[command(flatten)]
    pub filters: FilterArgs,
    /// When they were stored.
    #[command(flatten)]
    pub times: TimeArgs,
    /// Replay every entry (no filter).
    #[arg(long)]
    pub all: bool,
    /// Print what would be replayed and where; change nothing.
    #[arg(long)]
    pub dry_run: bool,
    /// At most this many replays per second.
    #[arg(long, value_name = "N", default_value_t = 100,
          value_parser = clap::value_parser!(u32).range(1..=100_000))]
    pub rate: u32,
    /// Do not ask for confirmation (required with filters when stdin is not a terminal).
    #[arg(long, short = 'y')]
    pub yes: bool,
    /// Re-enter this stage instead of the default (the stage that gave up; backpressure for
    /// egress entries): idempotency, backpressure or egress for entries with an envelope
    /// (`egress` skips the tenant's rate limit and admission); ingress only for ingress entries.
    #[arg(long, value_name = "STAGE", value_parser = super::input_stage)]
    pub to: Option<InputStage>,
    /// Hand the replay to the dlq service as a durable job (resumable after a crash, executed
    /// by one instance at the given rate) and print its id; see `dlq jobs`.
    #[arg(long)]
    pub job: bool,
    /// Create the job (implies --job) and follow its progress until it finishes.
    #[arg(long)]
    pub follow: bool,
    /// Replay even entries whose earlier replay began more than 4 minutes ago and did not
    /// finish (kept as `uncertain`: its copy may already be stored, and the target's duplicate
    /// window no longer drops a second one). Check the sink first.
    #[arg(long, conflicts_with_all = ["job", "follow", "dry_run"])]
    pub force: bool,
}

/// What happened to one entry.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum ReplayOutcome {
    /// Republished, stored, and removed from the DLQ.
    Replayed,
    /// Dry run: would be republished.
    WouldReplay,
    /// Left in the DLQ (see the reason).
    Kept,
}

/// One entry's result (`--json` prints them all).
#[derive(Debug, Clone, Serialize)]
pub struct ReplayResult {
    /// The entry's DLQ sequence.
    pub seq: u64,
    /// What happened.
    pub outcome: ReplayOutcome,
    /// Where it was (or would be) republished.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub subject: Option<String>,
    /// The stream that stored the replayed copy, and at which sequence.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub stored: Option<(String, u64)>,
    /// A short reason, when kept: `duplicate`, `not replayable`, `no envelope`, `unsupported
    /// schema`, `inconsistent schema`, `headers dropped`, `target refused`, `no such entry`,
    /// `invalid record`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub kept_because: Option<&'static str>,
    /// The details.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub detail: Option<String>,
}

impl ReplayResult {
    fn kept(seq: u64, because: &'static str, detail: String) -> Self {
        Self {
            seq,
            outcome: ReplayOutcome::Kept,
            subject: None,
            stored: None,
            kept_because: Some(because),
            detail: Some(detail),
        }
    }

    fn line(&self) -> String {
        let subject = self.subject.as_deref().unwrap_or("-");
        match self.outcome {
            ReplayOutcome::Replayed => match &self.stored {
                Some((stream, seq)) => {
                    format!(
                        "replayed seq {} -> {subject} ({stream} seq {seq})",
                        self.seq
                    )
                }
                None => format!("replayed seq {} -> {subject}", self.seq),
            },
            ReplayOutcome::WouldReplay => format!("would replay seq {} -> {subject}", self.seq),
            ReplayOutcome::Kept => format!(
                "kept seq {}: {}",
                self.seq,
                self.detail.as_deref().unwrap_or("")
            ),
        }
    }
}

/// `replayed N, kept M (1 duplicate, 2 not replayable)`.
pub fn summary(results: &[ReplayResult], dry_run: bool) -> String {
    let done = results
        .iter()
        .filter(|r| r.outcome != ReplayOutcome::Kept)
        .count();
    let mut reasons: BTreeMap<&str, usize> = BTreeMap::new();
    for because in results.iter().filter_map(|r| r.kept_because) {
        *reasons.entry(because).or_default() += 1;
    }
    let kept = results.len() - done;
    let mut line = if dry_run {
        format!("would replay {done}, would keep {kept}")
    } else {
        format!("replayed {done}, kept {kept}")
    };
    if !reasons.is_empty() {
        let parts: Vec<String> = reasons.iter().map(|(r, n)| format!("{n} {r}")).collect();
        line.push_str(&format!(" ({})", parts.join(", ")));
    }
    if dry_run {
        line.push_str("; dry run: nothing changed");
    }
    line
}

/// The entries to replay, with a result already decided for the ones that cannot be read.
async fn load(
    reader: &DlqReader,
    target: &Target,
) -> anyhow::Result<(Vec<DlqEntry>, Vec<ReplayResult>)> {
    match target {
        Target::Filter(selection) => {
            let collected = reader
                .collect(selection, None, read::warn_malformed)
                .await?;
            Ok((collected.entries, Vec::new()))
        }
        Target::Seqs(seqs) => {
            let (mut entries, mut kept) = (Vec::new(), Vec::new());
            // A sequence named twice is one entry, replayed once (in the order first named).
            let mut named = std::collections::HashSet::new();
            for &seq in seqs.iter().filter(|&&seq| named.insert(seq)) {
                match reader.get(seq).await? {
                    None => kept.push(ReplayResult::kept(
                        seq,
                        "no such entry",
                        format!("no DLQ entry with seq {seq}"),
                    )),
                    Some(message) => match reader.entry_of(&message) {
                        Ok(entry) => entries.push(entry),
                        Err(err) => {
                            kept.push(ReplayResult::kept(seq, "invalid record", err.to_string()))
                        }
                    },
                }
            }
            Ok((entries, kept))
        }
    }
}

/// Entry `seq` kept because its replay to `subject`, begun at `since`, did not finish.
fn uncertain(seq: u64, subject: &str, since: time::OffsetDateTime) -> ReplayResult {
    ReplayResult::kept(
        seq,
        "uncertain",
        format!(
            "a replay of this entry to {subject} began at {} and did not finish; its copy may be stored and a second one would not be dropped as a duplicate. Check the sink, then `dlq purge {seq}` or `dlq replay {seq} --force`",
            since
                .format(&time::format_description::well_known::Rfc3339)
                .unwrap_or_default(),
        ),
    )
}

/// Replays one entry through the shared replay step (paced by `pace`), or only plans it, on
/// a dry run (no pace).
async fn replay_one(
    replayer: &Replayer<'_>,
    reader: &DlqReader,
    entry: &DlqEntry,
    args: &ReplayArgs,
    pace: Option<&mut Interval>,
) -> anyhow::Result<ReplayResult> {
    let target = args.to;
    let plan = match plan_replay_to(reader.namespace(), entry, target) {
        Ok(plan) => plan,
        Err(err) => return Ok(ReplayResult::kept(entry.seq, err.reason(), err.to_string())),
    };
    let mut result = ReplayResult {
        seq: entry.seq,
        outcome: ReplayOutcome::WouldReplay,
        subject: Some(plan.subject.clone()),
        stored: None,
        kept_because: None,
        detail: None,
    };
    // A dry run has no pace: it publishes nothing (but says what a real run would keep).
    let Some(pace) = pace else {
        if !args.force
            && let Some(earlier) = replayer
                .markers
                .uncertain(&plan, time::OffsetDateTime::now_utc())
                .await?
        {
            return Ok(uncertain(entry.seq, &earlier.subject, earlier.at));
        }
        return Ok(result);
    };
    pace.tick().await;
    // The entries were read when the run began, minutes ago in a long one: an entry replayed
    // (by a job, another terminal) or purged since is not published again.
    if reader.get(entry.seq).await?.is_none() {
        return Ok(ReplayResult::kept(
            entry.seq,
            "no such entry",
            format!(
                "entry {} left the DLQ after this run read it (replayed or purged meanwhile)",
                entry.seq
            ),
        ));
    }
    let stored = match step::replay(replayer, entry.seq, &plan, args.force).await {
        Ok(Stepped::Replayed { stream, seq, .. }) => (stream, seq),
        Ok(Stepped::KeptUncertain { since, subject }) => {
            return Ok(uncertain(entry.seq, &subject, since));
        }
        Ok(Stepped::KeptDuplicate { stream, seq }) => {
            return Ok(ReplayResult::kept(
                entry.seq,
                "duplicate",
                format!(
                    "{stream} already holds the original at seq {seq} (inside its duplicate window), so nothing was stored; the entry stays"
                ),
            ));
        }
        // The copy is stored; only the entry could not go.
        Err(StepError::Delete {
            seq,
            stream,
            stored,
            source,
        }) => {
            eprintln!(
                "warning: entry {seq} was replayed but could not be deleted: {:#}",
                anyhow::Error::new(source)
            );
            (stream, stored)
        }
        Err(err) => return Err(err.into()),
    };
    result.outcome = ReplayOutcome::Replayed;
    result.stored = Some(stored);
    Ok(result)
}

/// Runs `dlq replay`.
pub async fn run(
    js: &jetstream::Context,
    topology: &ResolvedTopology,
    reader: &DlqReader,
    args: &ReplayArgs,
    out: &Output,
) -> anyhow::Result<ExitCode> {
    let target = Target::new(&args.seqs, &args.filters, &args.times, args.all)?;
    anyhow::ensure!(
        !args.force || matches!(target, Target::Seqs(_)),
        "--force replays entries named by sequence (each checked at its sink first), not a \
         filter: give the sequences"
    );
    if args.job || args.follow {
        return super::jobs::submit(js, topology, reader, target, args, out).await;
    }
    let needs_confirmation = matches!(target, Target::Filter(_)) && !args.dry_run && !args.yes;
    if needs_confirmation {
        prompt::ensure_can_confirm("replay DLQ entries selected by a filter", args.yes)?;
    }
    let (entries, mut results) =
        Progress::during(out, "reading the DLQ", load(reader, &target)).await?;
    if let Target::Filter(selection) = &target {
        if entries.is_empty() {
            if out.is_json() {
                out.json(&serde_json::json!({"dry_run": args.dry_run, "results": []}))?;
            } else {
                println!("no DLQ entries match ({})", selection.describe());
            }
            return Ok(ExitCode::SUCCESS);
        }
        let question = format!(
            "replay {} DLQ entries ({})?",
            entries.len(),
            selection.describe()
        );
        if needs_confirmation && !prompt::confirm(&question)? {
            anyhow::bail!("cancelled: nothing was replayed");
        }
    }
    if !out.is_json() {
        for unreadable in &results {
            println!("{}", unreadable.line());
        }
    }
    let mut pace = tokio::time::interval(Duration::from_secs_f64(1.0 / f64::from(args.rate)));
    pace.set_missed_tick_behavior(MissedTickBehavior::Delay);
    let deletes = Semaphore::new(1);
    let markers = Markers::new(resources::bucket(js, topology, BucketName::DlqReplays).await?);
    let replayer = Replayer {
        js,
        dlq: reader.stream(),
        markers: &markers,
        deletes: &deletes,
    };
    let progress = Progress::bar(
        out,
        entries.len() as u64,
        if args.dry_run {
            "checking"
        } else {
            "replaying"
        },
    );
    for entry in &entries {
        let pace = (!args.dry_run).then_some(&mut pace);
        let result = replay_one(&replayer, reader, entry, args, pace).await;
        progress.inc(1);
        match result {
            Ok(result) => {
                if !out.is_json() {
                    progress.println(result.line());
                }
                results.push(result);
            }
            Err(err) => {
                // Stop at the first failed publish; report what was done before it.
                progress.finish();
                if out.is_json() {
                    results.sort_by_key(|r| r.seq);
                    out.json(&serde_json::json!({
                        "dry_run": args.dry_run,
                        "results": results,
                        "error": format!("{err:#}"),
                    }))?;
                } else {
                    println!("{}", summary(&results, args.dry_run));
                }
                return Err(err);
            }
        }
    }
    progress.finish();
    results.sort_by_key(|r| r.seq);
    if out.is_json() {
        out.json(&serde_json::json!({"dry_run": args.dry_run, "results": results}))?;
    } else {
        println!("{}", summary(&results, args.dry_run));
    }
    Ok(ExitCode::SUCCESS)
}
