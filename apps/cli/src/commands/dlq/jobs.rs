//! `switchyard dlq replay --job` and `switchyard dlq jobs`: durable replay jobs executed by the
//! dlq service.
//!
//! `submit` writes a [`JobRecord`] to the `dlq-jobs` bucket (the selection, target stage, rate,
//! dry run, the entries it covers) and announces it on `control.v1.dlq.replay` so a running
//! dlq service starts it at once; `jobs` lists, shows, follows (a progress bar on a terminal,
//! a line per second otherwise) and cancels them ([`cancel_job`], shared with the management
//! API). The CLI never replays a job's entries itself.

use anstream::{print, println};
use std::process::ExitCode;
use std::time::{Duration, Instant};

use anyhow::Context;
use async_nats::jetstream;
use switchyard_dlq_ops::{
    DlqReader, JobRecord, JobSpec, JobState, JobStore, Selection, StoreError, Written,
};
use switchyard_subjects::{ControlCommand, ControlSubject, SubjectKind};
use switchyard_topology::{BucketName, ResolvedTopology};
use time::OffsetDateTime;

use super::read::Target;
use super::replay::ReplayArgs;
use crate::output::{self, Output, Table, fields};
use crate::parse::show_time;
use crate::progress::Progress;
use crate::{prompt, resources};

/// The most sequences one job may list.
const MAX_LISTED: usize = 10_000;
/// How often `--follow` looks at the job.
const POLL: Duration = Duration::from_millis(250);
/// After this long in `pending`, `--follow` warns that no dlq service seems to run.
const UNCLAIMED_WARNING: Duration = Duration::from_secs(10);

/// Arguments of `dlq jobs`.
#[derive(Debug, clap::Args)]
pub struct JobsArgs {
    /// Show this job in full (default: list every job).
    #[arg(value_name = "JOB")]
    pub id: Option<String>,
    /// Follow the job's progress until it finishes.
    #[arg(long, requires = "id")]
    pub follow: bool,
    /// Cancel the job (entries already replayed stay replayed; the rest stay in the DLQ).
    #[arg(long, requires = "id", conflicts_with = "follow")]
    pub cancel: bool,
}

async fn store(js: &jetstream::Context, topology: &ResolvedTopology) -> anyhow::Result<JobStore> {
    Ok(JobStore::new(
        resources::bucket(js, topology, BucketName::DlqJobs).await?,
    ))
}

/// Creates a job for `dlq replay --job` (after the same confirmation an immediate replay needs)
/// and, with `--follow`, follows it.
pub async fn submit(
    js: &jetstream::Context,
    topology: &ResolvedTopology,
    reader: &DlqReader,
    target: Target,
    args: &ReplayArgs,
    out: &Output,
) -> anyhow::Result<ExitCode> {
    let store = store(js, topology).await?;
    let (selection, total, upper_seq) = match &target {
        Target::Seqs(seqs) => {
            let selection = Selection::listed(seqs.clone());
            if selection.seqs.len() > MAX_LISTED {
                anyhow::bail!(
                    "a job lists at most {MAX_LISTED} sequences; select the entries with filters instead"
                );
            }
            let upper = selection.seqs.last().copied().unwrap_or(0);
            let total = selection.seqs.len() as u64;
            (selection, total, upper)
        }
        Target::Filter(selection) => {
            let needs_confirmation = !args.dry_run && !args.yes;
            if needs_confirmation {
                prompt::ensure_can_confirm("replay DLQ entries selected by a filter", args.yes)?;
            }
            let (mut count, mut upper) = (0u64, 0u64);
            let mut read = reader.select(selection);
            while let Some((_, delivered)) = read.next().await? {
                if let Ok(entry) = &delivered.entry
                    && selection.matches(entry)
                {
                    count += 1;
                    upper = upper.max(entry.seq);
                }
            }
            if count == 0 {
                if out.is_json() {
                    out.json(&serde_json::json!({"job": null, "matched": 0}))?;
                } else {
                    println!(
                        "no DLQ entries match ({}): no job created",
                        selection.describe()
                    );
                }
                return Ok(ExitCode::SUCCESS);
            }
            let question = format!(
                "create a job replaying {count} DLQ entries ({}) at {}/s?",
                selection.describe(),
                args.rate
            );
            if needs_confirmation && !prompt::confirm(&question)? {
                anyhow::bail!("cancelled: no job was created");
            }
            (selection.clone(), count, upper)
        }
    };
    let job = JobRecord::new(
        JobSpec {
            selection,
            target: args.to,
            rate: args.rate,
            dry_run: args.dry_run,
            upper_seq,
            total,
        },
        OffsetDateTime::now_utc(),
    );
    store.create(&job).await?;
    announce(js, topology, &job.id).await;
    if out.is_json() && !args.follow {
        out.json(&job)?;
    } else if !out.is_json() {
        println!(
            "job {} created: replay {} {} ({}) at {}/s{}",
            job.id,
            total,
            if total == 1 { "entry" } else { "entries" },
            job.spec.selection.describe(),
            job.spec.rate,
            if job.spec.dry_run { ", dry run" } else { "" }
        );
        if !args.follow {
            println!("follow it with: switchyard dlq jobs {} --follow", job.id);
        }
    }
    if args.follow {
        return follow(&store, &job.id, out).await;
    }
    Ok(ExitCode::SUCCESS)
}

/// Tells running dlq services about a new job (best effort: they also scan the bucket).
pub async fn announce(js: &jetstream::Context, topology: &ResolvedTopology, id: &str) {
    let subject = ControlSubject {
        command: ControlCommand::Replay,
    }
    .format(&topology.namespace);
    let body = serde_json::json!({ "job": id }).to_string();
    let client = js.client();
    if client.publish(subject, body.into()).await.is_err() || client.flush().await.is_err() {
        eprintln!("warning: could not announce the job; the dlq service finds it on its next scan");
    }
}

/// Runs `dlq jobs`.
pub async fn run(
    js: &jetstream::Context,
    topology: &ResolvedTopology,
    args: &JobsArgs,
    out: &Output,
) -> anyhow::Result<ExitCode> {
    let store = store(js, topology).await?;
    let Some(id) = &args.id else {
        return list(&store, out).await;
    };
    if args.cancel {
        return cancel(&store, id, out).await;
    }
    if args.follow {
        return follow(&store, id, out).await;
    }
    let (job, _) = store
        .get(id)
        .await?
        .with_context(|| format!("no replay job {id}"))?;
    if out.is_json() {
        out.json(&job)?;
    } else {
        print!("{}", render(&job));
    }
    Ok(ExitCode::SUCCESS)
}

/// `2500/5000 (50%)`.
fn progress_cell(job: &JobRecord) -> String {
    format!(
        "{}/{} ({:.0}%)",
        job.progress.handled,
        job.spec.total,
        job.percent()
    )
}

async fn list(store: &JobStore, out: &Output) -> anyhow::Result<ExitCode> {
    let jobs = store.list().await?;
    let mut ok = Vec::new();
    for job in jobs {
        match job {
            Ok((job, _)) => ok.push(job),
            Err(err) => eprintln!("warning: {}", output::printable(&err.to_string())),
        }
    }
    if out.is_json() {
        out.json(&ok)?;
        return Ok(ExitCode::SUCCESS);
    }
    if ok.is_empty() {
        println!("no replay jobs");
        return Ok(ExitCode::SUCCESS);
    }
    let mut table = Table::new([
        "JOB",
        "STATE",
        "SELECTION",
        "RATE",
        "PROGRESS",
        "REPLAYED",
        "KEPT",
        "LAST SEQ",
        "UPDATED",
    ]);
    for job in &ok {
        table.row([
            job.id.clone(),
            if job.spec.dry_run {
                format!("{} (dry run)", job.state)
            } else {
                job.state.to_string()
            },
            job.spec.selection.describe(),
            format!("{}/s", job.spec.rate),
            progress_cell(job),
            if job.spec.dry_run {
                format!("{} (would)", job.progress.would_replay)
            } else {
                job.progress.replayed.to_string()
            },
            job.progress.kept_total().to_string(),
            job.progress.last_seq.to_string(),
            show_time(job.updated_at),
        ]);
    }
    print!("{}", table.render());
    Ok(ExitCode::SUCCESS)
}

/// A job in full.
fn render(job: &JobRecord) -> String {
    let p = &job.progress;
    let kept = if p.kept.is_empty() {
        "0".to_owned()
    } else {
        let parts: Vec<String> = p.kept.iter().map(|(r, n)| format!("{n} {r}")).collect();
        format!("{} ({})", p.kept_total(), parts.join(", "))
    };
    let mut pairs = vec![
        ("job", job.id.clone()),
        ("state", job.state.to_string()),
        ("selection", job.spec.selection.describe()),
        (
            "target",
            job.spec.target.map_or(
                "the stage that gave up on each entry (egress: backpressure)".to_owned(),
                |t| t.to_string(),
            ),
        ),
        ("rate", format!("{}/s", job.spec.rate)),
        (
            "dry run",
            if job.spec.dry_run { "yes" } else { "no" }.to_owned(),
        ),
        (
            "covers",
            format!("DLQ entries up to seq {}", job.spec.upper_seq),
        ),
        ("progress", progress_cell(job)),
        ("replayed", p.replayed.to_string()),
    ];
    if job.spec.dry_run {
        pairs.push(("would replay", p.would_replay.to_string()));
    }
    pairs.push(("kept", kept));
    pairs.push(("missing", p.missing.to_string()));
    pairs.push(("last seq", p.last_seq.to_string()));
    pairs.push(("claims", job.claims.to_string()));
    if let Some(lease) = &job.lease {
        pairs.push((
            "lease",
            format!("{} until {}", lease.owner, show_time(lease.expires_at)),
        ));
    }
    pairs.push(("created", show_time(job.created_at)));
    if let Some(at) = job.started_at {
        pairs.push(("started", show_time(at)));
    }
    pairs.push(("updated", show_time(job.updated_at)));
    if let Some(at) = job.finished_at {
        pairs.push(("finished", show_time(at)));
    }
    if let Some(err) = &job.error {
        pairs.push(("error", output::printable(err)));
    }
    fields(&pairs)
}

/// What [`cancel_job`] did.
#[derive(Debug)]
pub enum Cancelled {
    /// The job is cancelled now: entries already replayed stay replayed, the rest stay in the
    /// DLQ.
    Cancelled(JobRecord),
    /// The job had finished already (done, failed or cancelled): nothing changed.
    Finished(JobRecord),
    /// There is no such job.
    NoSuchJob,
    /// The job kept changing under the compare-and-set (its runner records progress); nothing
    /// changed.
    KeptChanging,
}

/// Cancels job `id` by compare-and-set; the dlq service running it stops at its next step.
/// `allowed` sees the stored job first and may refuse (`false`: [`Cancelled::NoSuchJob`], as
/// for a job the caller may not see).
///
/// Errors: a read or write of the `dlq-jobs` bucket failed, or `id` is not a job id.
pub async fn cancel_job(
    store: &JobStore,
    id: &str,
    allowed: impl Fn(&JobRecord) -> bool,
) -> Result<Cancelled, StoreError> {
    for _ in 0..CANCEL_TRIES {
        let Some((mut job, revision)) = store.get(id).await? else {
            return Ok(Cancelled::NoSuchJob);
        };
        if !allowed(&job) {
            return Ok(Cancelled::NoSuchJob);
        }
        if job.state.is_finished() {
            return Ok(Cancelled::Finished(job));
        }
        let now = OffsetDateTime::now_utc();
        job.state = JobState::Cancelled;
        job.finished_at = Some(now);
        job.updated_at = now;
        if let Written::Stored(_) = store.update(&job, revision).await? {
            return Ok(Cancelled::Cancelled(job));
        }
    }
    Ok(Cancelled::KeptChanging)
}

/// Compare-and-set rounds of [`cancel_job`].
const CANCEL_TRIES: usize = 10;

async fn cancel(store: &JobStore, id: &str, out: &Output) -> anyhow::Result<ExitCode> {
    match cancel_job(store, id, |_| true).await? {
        Cancelled::Cancelled(job) => {
            if out.is_json() {
                out.json(&job)?;
            } else {
                println!(
                    "job {id} cancelled after {} replayed; its remaining entries stay in the DLQ",
                    job.progress.replayed
                );
            }
            Ok(ExitCode::SUCCESS)
        }
        Cancelled::Finished(job) => anyhow::bail!("job {id} is already {}", job.state),
        Cancelled::NoSuchJob => anyhow::bail!("no replay job {id}"),
        Cancelled::KeptChanging => anyhow::bail!("job {id} keeps changing; try again"),
    }
}

/// The progress of a job in words: `2500/5000 50%  replayed 2500  kept 0  498/s  eta 5s` (the
/// line `--follow` prints when no bar is drawn).
fn progress_line(job: &JobRecord, rate: Option<f64>) -> String {
    let mut line = format!(
        "{}  replayed {}  kept {}",
        progress_cell(job),
        if job.spec.dry_run {
            job.progress.would_replay
        } else {
            job.progress.replayed
        },
        job.progress.kept_total()
    );
    if let Some(rate) = rate.filter(|r| *r > 0.0) {
        line.push_str(&format!("  {rate:.0}/s"));
        let left = job.spec.total.saturating_sub(job.progress.handled);
        if left > 0 && !job.state.is_finished() {
            line.push_str(&format!("  eta {:.0}s", left as f64 / rate));
        }
    }
    line
}

/// The last line of a followed job.
fn final_line(job: &JobRecord) -> String {
    let took = match (job.started_at, job.finished_at) {
        (Some(start), Some(end)) => format!(" in {:.1}s", (end - start).as_seconds_f64()),
        _ => String::new(),
    };
    let p = &job.progress;
    if job.spec.dry_run {
        format!(
            "job {} {}: would replay {}, would keep {} of {}{took}; dry run: nothing changed",
            job.id,
            job.state,
            p.would_replay,
            p.kept_total(),
            job.spec.total
        )
    } else {
        format!(
            "job {} {}: replayed {}, kept {}, missing {} of {}{took}",
            job.id,
            job.state,
            p.replayed,
            p.kept_total(),
            p.missing,
            job.spec.total
        )
    }
}

/// Follows a job until it finishes (or Ctrl-C, which leaves the job running).
pub async fn follow(store: &JobStore, id: &str, out: &Output) -> anyhow::Result<ExitCode> {
    // A bar on a terminal; otherwise (and never with --json) a line per change, at most one
    // a second.
    let bar = Progress::bar(out, 0, format!("job {id}"));
    let started = Instant::now();
    let mut warned = false;
    let mut last_shown: Option<(u64, JobState)> = None;
    let mut last_line = Instant::now() - Duration::from_secs(10);
    let mut first_seen: Option<(Instant, u64)> = None;
    let ctrl_c = tokio::signal::ctrl_c();
    tokio::pin!(ctrl_c);
    loop {
        let (job, _) = store
            .get(id)
            .await?
            .with_context(|| format!("no replay job {id}"))?;
        let now = (job.progress.handled, job.state);
        if job.state == JobState::Running && first_seen.is_none() {
            first_seen = Some((Instant::now(), job.progress.handled));
        }
        let rate = first_seen.and_then(|(at, handled)| {
            let secs = at.elapsed().as_secs_f64();
            (secs >= 1.0).then(|| job.progress.handled.saturating_sub(handled) as f64 / secs)
        });
        let changed = last_shown != Some(now);
        if out.is_json() {
            if changed {
                out.json_line(&job)?;
            }
        } else if bar.is_shown() {
            bar.set(job.progress.handled, job.spec.total);
            bar.set_message(format!("job {id} {}", job.state));
        } else if changed
            && (last_line.elapsed() >= Duration::from_secs(1) || job.state.is_finished())
        {
            println!(
                "job {} {}: {}",
                job.id,
                job.state,
                progress_line(&job, rate)
            );
            last_line = Instant::now();
        }
        if changed {
            last_shown = Some(now);
        }
        if job.state.is_finished() {
            bar.finish();
            if !out.is_json() {
                println!("{}", final_line(&job));
            }
            return match job.state {
                JobState::Done => Ok(ExitCode::SUCCESS),
                state => Err(anyhow::anyhow!(
                    "job {id} {state}{}",
                    job.error
                        .map(|e| format!(": {}", output::printable(&e)))
                        .unwrap_or_default()
                )),
            };
        }
        if job.state == JobState::Pending && !warned && started.elapsed() >= UNCLAIMED_WARNING {
            warned = true;
            bar.warn(format_args!(
                "warning: no dlq service has claimed job {id} after {}s; is switchyard-dlq running?",
                UNCLAIMED_WARNING.as_secs()
            ));
        }
        tokio::select! {
            _ = &mut ctrl_c => {
                bar.finish();
                eprintln!("stopped following; job {id} continues (switchyard dlq jobs {id})");
                return Ok(ExitCode::SUCCESS);
            }
            _ = tokio::time::sleep(POLL) => {}
        }
    }
}
