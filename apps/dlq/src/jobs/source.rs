//! What a job works through: its covered entries in DLQ sequence order, each already decided
//! ([`Work`]): skip it, keep it (and why), only count it (dry run), or replay it (the plan).
//!
//! Filter jobs read the DLQ with the shared non-consuming reader ([`DlqReader::catch_up`](switchyard_dlq_ops::DlqReader::catch_up):
//! an ordered consumer, one request per batch, not per entry) from the recorded progress on
//! and stop at the job's `upper_seq`; listed-sequence jobs get each sequence from the stream
//! leader ([`DlqReader::get`](switchyard_dlq_ops::DlqReader::get)).

use std::collections::BTreeSet;
use std::sync::Arc;

use async_nats::jetstream::consumer::DeliverPolicy;
use switchyard_dlq::{DlqEntry, DlqError};
use switchyard_dlq_ops::{JobSpec, ReadError, ReplayPlan, plan_replay_to};
use tokio::sync::mpsc;

use super::JobRunner;
use switchyard_runtime::RetryPolicy;

/// What to do with one entry.
pub enum Work {
    /// Not selected by the job's filter (code or time).
    Skip,
    /// A listed sequence that is not in the DLQ.
    Missing,
    /// Left in the DLQ, for this reason.
    Keep(&'static str),
    /// Dry run: would be replayed.
    WouldReplay,
    /// Replay with this plan.
    Replay {
        /// The copy to publish.
        plan: ReplayPlan,
    },
}

impl Work {
    /// Whether executing it publishes (and deletes): then it must be reserved first.
    pub fn publishes(&self) -> bool {
        matches!(self, Work::Replay { .. })
    }
}

/// One entry with its decision.
pub struct Candidate {
    /// The entry's DLQ sequence.
    pub seq: u64,
    /// The decision.
    pub work: Work,
}

fn decide(spec: &JobSpec, runner: &JobRunner, entry: Result<DlqEntry, DlqError>) -> Work {
    let entry = match entry {
        Ok(entry) => entry,
        Err(_) => return Work::Keep("invalid record"),
    };
    let selected = if spec.selection.is_listed() {
        // A listed job that names a tenant replays that tenant's entries only.
        spec.selection
            .tenant
            .as_ref()
            .is_none_or(|tenant| entry.record.tenant.as_ref() == Some(tenant))
    } else {
        spec.selection.matches(&entry)
    };
    if !selected {
        return Work::Skip;
    }
    match plan_replay_to(&runner.ns, &entry, spec.target) {
        Err(refused) => Work::Keep(refused.reason()),
        Ok(_) if spec.dry_run => Work::WouldReplay,
        Ok(plan) => Work::Replay { plan },
    }
}

/// Sends the job's candidates after `after`, in order, then closes the channel, passing over
/// `settled` (entries a previous executor replayed, counted on resume). Retries reads that
/// fail; returns when done or when the receiver is gone.
pub async fn feed(
    runner: Arc<JobRunner>,
    spec: JobSpec,
    after: u64,
    settled: BTreeSet<u64>,
    tx: mpsc::Sender<Candidate>,
) {
    let mut backoff = RetryPolicy::INFRASTRUCTURE.backoff();
    let mut next = after + 1;
    loop {
        let result = if spec.selection.seqs.is_empty() {
            feed_filter(&runner, &spec, &mut next, &tx).await
        } else {
            feed_listed(&runner, &spec, &settled, &mut next, &tx).await
        };
        match result {
            Ok(()) => return,
            Err(error) => {
                if tx.is_closed() {
                    return;
                }
                let delay = backoff
                    .next_delay()
                    .unwrap_or(RetryPolicy::INFRASTRUCTURE.max);
                tracing::warn!(
                    error = format!("{:#}", anyhow::Error::from(error)),
                    ?delay,
                    "reading a job's entries failed; retrying"
                );
                tokio::time::sleep(delay).await;
            }
        }
    }
}

async fn feed_listed(
    runner: &JobRunner,
    spec: &JobSpec,
    settled: &BTreeSet<u64>,
    next: &mut u64,
    tx: &mpsc::Sender<Candidate>,
) -> Result<(), ReadError> {
    let reader = runner.reader();
    let start = *next;
    let listed = spec.selection.seqs.iter();
    for &seq in listed.filter(|&&s| s >= start && !settled.contains(&s)) {
        let work = match reader.get(seq).await? {
            Some(message) => decide(spec, runner, reader.entry_of(&message)),
            None => Work::Missing,
        };
        if tx.send(Candidate { seq, work }).await.is_err() {
            return Ok(());
        }
        *next = seq + 1;
    }
    Ok(())
}

async fn feed_filter(
    runner: &JobRunner,
    spec: &JobSpec,
    next: &mut u64,
    tx: &mpsc::Sender<Candidate>,
) -> Result<(), ReadError> {
    if *next > spec.upper_seq {
        return Ok(());
    }
    let mut read = runner.reader().catch_up(
        spec.selection.subject_filter(&runner.ns),
        DeliverPolicy::ByStartSequence {
            start_sequence: *next,
        },
    );
    while let Some((_, delivered)) = read.next().await? {
        let seq = delivered.seq;
        if seq > spec.upper_seq {
            return Ok(());
        }
        let work = decide(spec, runner, delivered.entry);
        if tx.send(Candidate { seq, work }).await.is_err() {
            return Ok(());
        }
        *next = seq + 1;
    }
    Ok(())
}
