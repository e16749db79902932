//! What a job works through: its covered entries in DLQ sequence order, each already decided
//! ([`Work`]): skip it, keep it (and why), only count it (dry run), or replay it (the plan).
//!
//! Filter jobs read the DLQ through an ordered consumer from the recorded progress on (no
//! acks, nothing removed; one request per batch, not per entry) and stop at the job's
//! `upper_seq`; listed-sequence jobs fetch each sequence from the stream leader.

use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use async_nats::jetstream::consumer::{DeliverPolicy, ReplayPolicy, pull};
use async_nats::jetstream::stream::LastRawMessageErrorKind;
use futures::StreamExt;
use switchyard_dlq::{DlqEntry, JobSpec, ReplayError, ReplayPlan, plan_replay_to};
use switchyard_subjects::InputStage;
use time::OffsetDateTime;
use tokio::sync::mpsc;

use super::JobRunner;

/// How long the reader waits for the next entry before checking whether any is left (entries
/// it was told about can be purged meanwhile).
const IDLE: Duration = Duration::from_secs(2);
/// Longest wait between retries of a failing read.
const MAX_BACKOFF: Duration = Duration::from_secs(10);

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
        /// Where the original was read from (stream, sequence): on ingress a duplicate ack
        /// pointing there is the original message, not an earlier copy of ours.
        source: (String, u64),
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

fn decide(
    spec: &JobSpec,
    runner: &JobRunner,
    seq: u64,
    message: &async_nats::jetstream::Message,
) -> Work {
    let stored_at = message
        .info()
        .map(|i| i.published)
        .unwrap_or(OffsetDateTime::UNIX_EPOCH);
    decide_entry(
        spec,
        runner,
        DlqEntry::from_message(
            &runner.ns,
            seq,
            stored_at,
            message.subject.as_str(),
            message.headers.as_ref(),
            message.payload.clone(),
        ),
    )
}

fn decide_entry(
    spec: &JobSpec,
    runner: &JobRunner,
    entry: Result<DlqEntry, switchyard_dlq::DlqError>,
) -> Work {
    let entry = match entry {
        Ok(entry) => entry,
        Err(_) => return Work::Keep("invalid record"),
    };
    if spec.selection.seqs.is_empty() && !spec.selection.matches(&entry) {
        return Work::Skip;
    }
    match plan_replay_to(&runner.ns, &entry, spec.target) {
        Err(ReplayError::NotReplayable { .. }) => Work::Keep("not replayable"),
        Err(ReplayError::NoEnvelope { .. }) => Work::Keep("no envelope"),
        Err(ReplayError::TargetRefused { .. }) => Work::Keep("target refused"),
        Ok(_) if spec.dry_run => Work::WouldReplay,
        Ok(plan) => Work::Replay {
            source: if plan.stage == InputStage::Ingress {
                (entry.record.source_stream.clone(), entry.record.source_seq)
            } else {
                (String::new(), 0)
            },
            plan,
        },
    }
}

/// Sends the job's candidates after `after`, in order, then closes the channel. Retries reads
/// that fail; returns when done or when the receiver is gone.
pub async fn feed(runner: Arc<JobRunner>, spec: JobSpec, after: u64, tx: mpsc::Sender<Candidate>) {
    let mut backoff = Duration::from_millis(200);
    let mut next = after + 1;
    loop {
        let result = if spec.selection.seqs.is_empty() {
            feed_filter(&runner, &spec, &mut next, &tx).await
        } else {
            feed_listed(&runner, &spec, &mut next, &tx).await
        };
        match result {
            Ok(()) => return,
            Err(error) => {
                if tx.is_closed() {
                    return;
                }
                tracing::warn!(
                    error = format!("{error:#}"),
                    ?backoff,
                    "reading a job's entries failed; retrying"
                );
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(MAX_BACKOFF);
            }
        }
    }
}

async fn feed_listed(
    runner: &JobRunner,
    spec: &JobSpec,
    next: &mut u64,
    tx: &mpsc::Sender<Candidate>,
) -> anyhow::Result<()> {
    let start = *next;
    for &seq in spec.selection.seqs.iter().filter(|&&s| s >= start) {
        let work = match runner.dlq.raw_message_builder().sequence(seq).send().await {
            Ok(message) => decide_entry(
                spec,
                runner,
                DlqEntry::from_message(
                    &runner.ns,
                    seq,
                    message.time,
                    message.subject.as_str(),
                    Some(&message.headers),
                    message.payload,
                ),
            ),
            Err(e) if matches!(e.kind(), LastRawMessageErrorKind::NoMessageFound) => Work::Missing,
            Err(e) => return Err(e).with_context(|| format!("reading DLQ entry {seq}")),
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
) -> anyhow::Result<()> {
    loop {
        if *next > spec.upper_seq {
            return Ok(());
        }
        let consumer = runner
            .dlq
            .create_consumer(pull::OrderedConfig {
                filter_subject: spec.selection.subject_filter(&runner.ns),
                deliver_policy: DeliverPolicy::ByStartSequence {
                    start_sequence: *next,
                },
                replay_policy: ReplayPolicy::Instant,
                ..Default::default()
            })
            .await
            .context("creating an ordered consumer on the DLQ")?;
        if consumer.cached_info().num_pending == 0 {
            return Ok(());
        }
        let mut messages = consumer.messages().await.context("reading the DLQ")?;
        loop {
            let message = match tokio::time::timeout(IDLE, messages.next()).await {
                // Idle: start over from `next`, which finds out whether anything is left.
                Err(_) => break,
                Ok(None) => anyhow::bail!("the DLQ reader ended"),
                Ok(Some(message)) => message.context("reading the DLQ")?,
            };
            let info = message
                .info()
                .map_err(|e| anyhow::anyhow!("reading a DLQ message's metadata: {e}"))?;
            let (seq, pending) = (info.stream_sequence, info.pending);
            if seq > spec.upper_seq {
                return Ok(());
            }
            let work = decide(spec, runner, seq, &message);
            if tx.send(Candidate { seq, work }).await.is_err() {
                return Ok(());
            }
            *next = seq + 1;
            if pending == 0 {
                return Ok(());
            }
        }
    }
}
