//! Executing one claimed replay job at its rate, pipelined, with exact progress.
//!
//! The job's entries come in DLQ sequence order from [`source::feed`], each already decided.
//! For an entry to replay:
//!
//! 1. it is **reserved**: listed in the progress record's `in_flight` by a stored write;
//! 2. at the job's pace, its copy is published and the target stream's ack awaited. The copy's
//!    `Nats-Msg-Id` is deterministic per entry (the hop id with the replay counter + 1; for
//!    ingress, the producer's id), so a copy published again after a crash is dropped by the
//!    target stream's duplicate window (5 minutes on the hand-off streams) and its ack says
//!    `duplicate`: that copy is ours, already stored;
//! 3. only then is the entry deleted from the DLQ;
//! 4. the progress record (counts, the last sequence below which everything is handled, the
//!    entries still in flight) is written again as soon as the previous write is stored, each
//!    write a compare-and-set that also renews the lease: a conflict means an operator
//!    cancelled the job or another instance took it over.
//!
//! Several entries are in flight at once (up to a quarter second's worth of the rate), so the
//! rate is not bounded by round trips. The DLQ is the ground truth of what is left: a replayed
//! entry is gone from it, so a resumed job cannot replay it again; and a resumed job counts
//! the reserved entries that are gone as replayed, so the counts stay exact (an operator
//! purging exactly such an entry while the job is down would be counted as a replay).

use std::collections::{BTreeSet, VecDeque};
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use futures::stream::FuturesOrdered;
use switchyard_dlq_ops::{JobRecord, JobState, StepError, StoreError, Written};
use time::OffsetDateTime;
use tokio::sync::{Semaphore, mpsc};
use tokio::time::{Instant, MissedTickBehavior};
use tokio_util::sync::CancellationToken;

use super::JobRunner;
use super::source::{self, Candidate, Work};
use super::step::{self, Done, MAX_DELETES, Step};
use switchyard_runtime::RetryPolicy;

/// Why an execution stops before the job is finished.
#[derive(Debug)]
pub enum Stop {
    /// Another instance holds the lease now (or it lapsed while progress could not be written).
    LostLease,
    /// An operator cancelled the job.
    Cancelled,
    /// The record was deleted.
    Deleted,
    /// This instance is shutting down.
    Shutdown,
}

type Write = Pin<Box<dyn Future<Output = Result<Written, StoreError>> + Send>>;

/// A fetched entry waiting its turn.
struct Queued {
    candidate: Candidate,
    /// Listed in a stored progress write (needed before a replay may start).
    reserved: bool,
}

/// One job being executed by this instance.
pub struct Execution {
    runner: Arc<JobRunner>,
    job: JobRecord,
    revision: u64,
    /// The lease expiry last stored: past it, another instance may own the job.
    stored_until: OffsetDateTime,
    last_write: Instant,
}

fn now() -> OffsetDateTime {
    OffsetDateTime::now_utc()
}

impl Execution {
    /// Claims `job` (read at `revision`) for this instance; `None` if another instance was
    /// faster.
    pub async fn claim(
        runner: Arc<JobRunner>,
        mut job: JobRecord,
        revision: u64,
    ) -> anyhow::Result<Option<Self>> {
        let at = now();
        if let Err(error) = job.spec.validate() {
            tracing::error!(job = %job.id, %error, "failing an invalid replay job");
            job.state = JobState::Failed;
            job.error = Some(error);
            job.lease = None;
            job.finished_at = Some(at);
            job.updated_at = at;
            runner.store.update(&job, revision).await?;
            return Ok(None);
        }
        job.state = JobState::Running;
        job.lease = Some(runner.holder().grant(at));
        job.claims += 1;
        job.started_at.get_or_insert(at);
        job.updated_at = at;
        match runner.store.update(&job, revision).await? {
            Written::Stored(revision) => {
                tracing::info!(job = %job.id, claims = job.claims, last_seq = job.progress.last_seq, "claimed replay job");
                Ok(Some(Self {
                    stored_until: at + runner.lease(),
                    runner,
                    job,
                    revision,
                    last_write: Instant::now(),
                }))
            }
            Written::Conflict => Ok(None),
        }
    }

    /// The job id.
    pub fn id(&self) -> &str {
        &self.job.id
    }

    /// Executes the job until it is finished, cancelled, taken over or `shutdown`; returns
    /// the job id.
    pub async fn run(mut self, shutdown: CancellationToken) -> String {
        let id = self.job.id.clone();
        match self.execute(&shutdown).await {
            Ok(()) => {
                tracing::info!(job = %id, replayed = self.job.progress.replayed, kept = self.job.progress.kept_total(), "replay job done");
                self.finished("done");
            }
            Err(Stop::Shutdown) => {
                // Hand the job back at once instead of letting the lease lapse.
                self.job.lease = None;
                if self.save().await.is_ok() {
                    tracing::info!(job = %id, last_seq = self.job.progress.last_seq, "replay job released for another instance");
                }
            }
            Err(Stop::Cancelled) => {
                tracing::warn!(job = %id, "replay job cancelled");
                self.finished("cancelled");
            }
            Err(stop) => tracing::warn!(job = %id, ?stop, "replay job stopped on this instance"),
        }
        id
    }

    /// Reports the job's end as a `replay_job_finished` event, about the tenant its selection
    /// names (or the deployment).
    fn finished(&self, how: &str) {
        let p = &self.job.progress;
        self.runner.events.emit(
            switchyard_subjects::EventKind::ReplayJobFinished,
            self.job.spec.selection.tenant.as_ref(),
            Some(&self.job.id),
            &format!(
                "{how}: {} replayed, {} kept, of {} ({})",
                p.replayed,
                p.kept_total(),
                self.job.spec.total,
                self.job.spec.selection.describe()
            ),
        );
    }

    fn lease_len(&self) -> Duration {
        self.runner.lease()
    }

    /// The record as the next write stores it.
    fn snapshot(&self, in_flight: Vec<u64>) -> JobRecord {
        let mut job = self.job.clone();
        let at = now();
        job.updated_at = at;
        if job.lease.is_some() {
            job.lease = Some(self.runner.holder().grant(at));
        }
        job.progress.in_flight = in_flight;
        job
    }

    fn write(&self, record: JobRecord) -> Write {
        let store = self.runner.store.clone();
        let revision = self.revision;
        Box::pin(async move { store.update(&record, revision).await })
    }

    /// A conflicting write: re-read. A cancel is adopted (the caller then drains and stops);
    /// another owner means the lease is lost.
    async fn on_conflict(&mut self) -> Result<(), Stop> {
        match self.runner.store.get(&self.job.id).await {
            Ok(None) => Err(Stop::Deleted),
            Ok(Some((theirs, revision))) => {
                let ours = self.runner.holder().owns(theirs.lease.as_ref());
                if !ours && theirs.state != JobState::Cancelled {
                    return Err(Stop::LostLease);
                }
                self.revision = revision;
                if theirs.state == JobState::Cancelled && self.job.state != JobState::Cancelled {
                    self.job.state = JobState::Cancelled;
                    self.job.finished_at = theirs.finished_at.or(Some(now()));
                }
                Ok(())
            }
            Err(error) => {
                tracing::warn!(job = %self.job.id, error = &error as &dyn std::error::Error, "re-reading the job failed");
                self.check_lapsed()
            }
        }
    }

    fn check_lapsed(&self) -> Result<(), Stop> {
        if now() + Duration::from_millis(500) >= self.stored_until {
            tracing::error!(job = %self.job.id, "progress could not be recorded before the lease lapsed; giving the job up");
            Err(Stop::LostLease)
        } else {
            Ok(())
        }
    }

    fn stored(&mut self, revision: u64, record: &JobRecord) {
        self.revision = revision;
        self.last_write = Instant::now();
        if let Some(lease) = &record.lease {
            self.stored_until = lease.expires_at;
        }
    }

    /// Writes the whole record now (compare-and-set), retrying until stored, cancelled, lost.
    async fn save(&mut self) -> Result<(), Stop> {
        let mut backoff = RetryPolicy::INFRASTRUCTURE.backoff();
        loop {
            let record = self.snapshot(Vec::new());
            match self.runner.store.update(&record, self.revision).await {
                Ok(Written::Stored(revision)) => {
                    self.stored(revision, &record);
                    return Ok(());
                }
                Ok(Written::Conflict) => self.on_conflict().await?,
                Err(error) => {
                    tracing::warn!(job = %self.job.id, error = &error as &dyn std::error::Error, "recording progress failed; retrying");
                    self.check_lapsed()?;
                    let delay = backoff
                        .next_delay()
                        .unwrap_or(RetryPolicy::INFRASTRUCTURE.max);
                    tokio::time::sleep(delay).await;
                }
            }
        }
    }

    /// On resume: reserved entries of the previous executor that left the DLQ were replayed
    /// by it (only a replay deletes an entry while its job runs). Count them, and return their
    /// sequences: the feed passes over them (a listed one would otherwise be read again, found
    /// gone, and counted `missing` too).
    async fn settle_in_flight(&mut self) -> Result<BTreeSet<u64>, Stop> {
        let in_flight = std::mem::take(&mut self.job.progress.in_flight);
        if in_flight.is_empty() {
            return Ok(BTreeSet::new());
        }
        let mut gone = BTreeSet::new();
        let reader = self.runner.reader();
        for seq in in_flight {
            // A failed read counts as still there: the entry is handled again, not counted.
            if matches!(reader.get(seq).await, Ok(None)) {
                gone.insert(seq);
            }
        }
        tracing::info!(job = %self.job.id, gone = gone.len(), "settled the previous executor's entries in flight");
        self.job.progress.replayed += gone.len() as u64;
        self.job.progress.handled += gone.len() as u64;
        self.save().await?;
        Ok(gone)
    }

    fn apply(&mut self, seq: u64, done: Done) {
        let p = &mut self.job.progress;
        p.last_seq = p.last_seq.max(seq);
        let metrics = &self.runner.metrics;
        match done {
            Done::Skipped => {}
            Done::Missing => {
                p.missing += 1;
                p.handled += 1;
                metrics.replay("missing");
            }
            Done::Kept(why) => {
                p.keep(why);
                metrics.replay("kept");
            }
            Done::WouldReplay => {
                p.would_replay += 1;
                p.handled += 1;
                metrics.replay("would_replay");
            }
            Done::Replayed => {
                p.replayed += 1;
                p.handled += 1;
                metrics.replay("replayed");
            }
        }
    }

    /// The pipelined loop (see the module docs).
    async fn execute(&mut self, shutdown: &CancellationToken) -> Result<(), Stop> {
        let settled = self.settle_in_flight().await?;
        let rate = self
            .job
            .spec
            .rate
            .clamp(1, self.runner.settings.max_rate.max(1));
        let window = (rate as usize / 4).clamp(1, 256);
        let mut pace = tokio::time::interval(Duration::from_secs_f64(1.0 / f64::from(rate)));
        pace.set_missed_tick_behavior(MissedTickBehavior::Delay);
        let renew_every = self.lease_len() / 3;

        let (tx, mut rx) = mpsc::channel(window * 2);
        let feed = source::feed(
            self.runner.clone(),
            self.job.spec.clone(),
            self.job.progress.last_seq,
            settled,
            tx,
        );
        tokio::pin!(feed);
        let mut feeding = true;
        let mut source_done = false;
        let mut queue: VecDeque<Queued> = VecDeque::new();
        let mut running: FuturesOrdered<Step> = FuturesOrdered::new();
        let mut in_flight: BTreeSet<u64> = BTreeSet::new();
        let mut write: Option<(Write, JobRecord, Vec<u64>)> = None;
        let mut dirty = false;
        let mut write_backoff = RetryPolicy::INFRASTRUCTURE.backoff();
        // Set once the job must stop taking entries: cancel or shutdown (drain, then stop).
        let mut stopping: Option<Stop> = None;
        // Stop retries of replays under way when the lease is lost.
        let abort = CancellationToken::new();
        let deletes = Arc::new(Semaphore::new(MAX_DELETES));
        let _abort_on_exit = abort.clone().drop_guard();

        loop {
            // Entries that publish nothing start as soon as they reach the front.
            while stopping.is_none()
                && queue.front().is_some_and(|q| !q.candidate.work.publishes())
                && running.len() < window
            {
                if let Some(q) = queue.pop_front() {
                    running.push_back(step::ready(q.candidate));
                }
            }
            let front_ready = stopping.is_none()
                && queue.front().is_some_and(|q| q.reserved)
                && running.len() < window;
            let wants_reservation = stopping.is_none()
                && queue
                    .iter()
                    .any(|q| q.candidate.work.publishes() && !q.reserved);
            if write.is_none()
                && (dirty || wants_reservation || self.last_write.elapsed() >= renew_every)
            {
                let reserving: Vec<u64> = if stopping.is_some() {
                    Vec::new()
                } else {
                    queue
                        .iter()
                        .filter(|q| q.candidate.work.publishes())
                        .map(|q| q.candidate.seq)
                        .collect()
                };
                let listed: Vec<u64> = in_flight
                    .iter()
                    .copied()
                    .chain(reserving.iter().copied())
                    .collect();
                let record = self.snapshot(listed);
                write = Some((self.write(record.clone()), record, reserving));
                dirty = false;
            }
            let finished = source_done && queue.is_empty() && running.is_empty();
            if (finished || (stopping.is_some() && running.is_empty())) && write.is_none() {
                break;
            }
            let write_due = self.last_write + renew_every;
            tokio::select! {
                _ = shutdown.cancelled(), if stopping.is_none() => {
                    stopping = Some(Stop::Shutdown);
                }
                () = &mut feed, if feeding => feeding = false,
                candidate = rx.recv(), if !source_done && queue.len() < window * 2 => match candidate {
                    Some(candidate) => queue.push_back(Queued { candidate, reserved: false }),
                    None => source_done = true,
                },
                _ = pace.tick(), if front_ready => {
                    if let Some(q) = queue.pop_front() {
                        in_flight.insert(q.candidate.seq);
                        running.push_back(self.replay(q.candidate, deletes.clone(), abort.clone()));
                    }
                }
                Some((seq, done)) = running.next(), if !running.is_empty() => {
                    in_flight.remove(&seq);
                    self.apply(seq, done);
                    dirty = true;
                }
                result = async {
                    match write.as_mut() {
                        Some((pending, _, _)) => pending.await,
                        None => std::future::pending().await,
                    }
                }, if write.is_some() => {
                    let Some((_, record, reserving)) = write.take() else { continue };
                    match result {
                        Ok(Written::Stored(revision)) => {
                            self.stored(revision, &record);
                            write_backoff.reset();
                            for q in queue.iter_mut().filter(|q| reserving.contains(&q.candidate.seq)) {
                                q.reserved = true;
                            }
                        }
                        Ok(Written::Conflict) => {
                            if let Err(stop) = self.on_conflict().await {
                                abort.cancel();
                                return Err(stop);
                            }
                            if self.job.state == JobState::Cancelled && stopping.is_none() {
                                stopping = Some(Stop::Cancelled);
                                // Copies being retried stop at once (an attempt under way
                                // ends first): their entries stay in the DLQ.
                                abort.cancel();
                            }
                            dirty = true;
                        }
                        Err(error) => {
                            tracing::warn!(job = %self.job.id, error = &error as &dyn std::error::Error, "recording progress failed; retrying");
                            if let Err(stop) = self.check_lapsed() {
                                abort.cancel();
                                return Err(stop);
                            }
                            dirty = true;
                            let delay = write_backoff.next_delay().unwrap_or(RetryPolicy::INFRASTRUCTURE.max);
                            tokio::time::sleep(delay).await;
                        }
                    }
                }
                _ = tokio::time::sleep_until(write_due), if write.is_none() => {}
            }
        }
        match stopping {
            Some(Stop::Cancelled) => {
                self.job.lease = None;
                self.save().await?;
                Err(Stop::Cancelled)
            }
            Some(stop) => Err(stop),
            None => {
                self.job.state = JobState::Done;
                self.job.finished_at = Some(now());
                self.job.lease = None;
                self.save().await
            }
        }
    }

    /// Publishes one entry's copy, awaits the ack, deletes the entry; retries failures until
    /// done, for at most `jobs.entry_retry_secs` (then the entry stays in the DLQ, kept
    /// `publish failed`, and the job goes on: the steps finish in order, so one entry retried
    /// without end would hold up every entry after it), or until `abort` (a cancel, a lost
    /// lease: kept `aborted`).
    fn replay(
        &self,
        candidate: Candidate,
        deletes: Arc<Semaphore>,
        abort: CancellationToken,
    ) -> Step {
        let runner = self.runner.clone();
        let job = self.job.id.clone();
        Box::pin(async move {
            let seq = candidate.seq;
            let Work::Replay { plan } = candidate.work else {
                return (seq, Done::Skipped);
            };
            let retry_for = Duration::from_secs(runner.settings.entry_retry_secs);
            let mut backoff = RetryPolicy::INFRASTRUCTURE.within(retry_for).backoff();
            loop {
                match step::replay_once(&runner, &deletes, seq, &plan).await {
                    Ok(done) => return (seq, done),
                    Err(error) => {
                        // The copy stored, the entry not deleted: not a failed publish.
                        let why = if matches!(error, StepError::Delete { .. }) {
                            "not deleted"
                        } else {
                            "publish failed"
                        };
                        let error = format!("{:#}", anyhow::Error::from(error));
                        if backoff.wait(&abort).await {
                            tracing::warn!(%job, seq, error, "replaying an entry failed; retrying");
                        } else if abort.is_cancelled() {
                            return (seq, Done::Kept("aborted"));
                        } else {
                            tracing::error!(%job, seq, error, ?retry_for, "replaying an entry kept failing; it stays in the DLQ");
                            return (seq, Done::Kept(why));
                        }
                    }
                }
            }
        })
    }
}
