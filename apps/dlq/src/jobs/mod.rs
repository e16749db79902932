//! Replay jobs: finding, claiming and executing the jobs operators create with
//! `switchyard dlq replay --job`.
//!
//! The job records in the `dlq-jobs` bucket are the source of truth. The [`JobRunner`] scans
//! them every `jobs.scan_interval_secs`, and at once when the CLI announces a new job on
//! `control.v1.dlq.replay`. A job is claimable when it is not finished and no other instance
//! holds a live lease on it; claiming is a compare-and-set on the record's revision, so of
//! several replicas exactly one wins. The winner executes it ([`execute`]), renewing the lease
//! with every progress write; if it dies, the lease lapses and another instance (or the same
//! one restarted) resumes from the recorded progress.

pub mod execute;
pub mod source;
pub mod step;

use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::Duration;

use async_nats::jetstream::{self, stream::Stream};
use futures::StreamExt;
use switchyard_dlq_ops::{DlqReader, JobStore, Leaseholder, Markers};
use switchyard_subjects::Namespace;
use time::OffsetDateTime;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

use crate::config::JobSettings;
use crate::metrics::DlqMetrics;

/// What every job execution of one instance shares.
pub struct JobRunner {
    /// The `dlq-jobs` bucket.
    pub store: JobStore,
    /// The DLQ stream.
    pub dlq: Stream,
    /// For publishing replays.
    pub js: jetstream::Context,
    /// The `dlq-replays` bucket (replays under way).
    pub markers: Markers,
    /// The deployment namespace.
    pub ns: Namespace,
    /// This instance's id (the lease owner).
    pub owner: String,
    /// Settings.
    pub settings: JobSettings,
    /// Metrics.
    pub metrics: DlqMetrics,
    /// Operational events: `replay_job_finished` when a job ends here.
    pub events: switchyard_service::events::EventLog,
}

impl JobRunner {
    /// The lease length.
    pub fn lease(&self) -> Duration {
        Duration::from_secs(self.settings.lease_secs)
    }

    /// This instance's side of job leases.
    pub fn holder(&self) -> Leaseholder {
        Leaseholder::new(self.owner.clone(), self.lease())
    }

    /// The DLQ, read without consuming.
    pub fn reader(&self) -> DlqReader {
        DlqReader::new(self.dlq.clone(), self.ns.clone())
    }

    /// Scans and executes jobs until `shutdown`; then lets every execution release its lease
    /// and waits for them.
    pub async fn run(
        self: Arc<Self>,
        mut control: async_nats::Subscriber,
        shutdown: CancellationToken,
    ) {
        let mut tasks: JoinSet<String> = JoinSet::new();
        let mut running: BTreeSet<String> = BTreeSet::new();
        let mut ticker =
            tokio::time::interval(Duration::from_secs(self.settings.scan_interval_secs));
        ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = shutdown.cancelled() => break,
                _ = ticker.tick() => {}
                Some(_) = control.next() => {}
                Some(done) = tasks.join_next(), if !tasks.is_empty() => {
                    if let Ok(id) = done {
                        running.remove(&id);
                    }
                }
            }
            while let Some(done) = tasks.try_join_next() {
                if let Ok(id) = done {
                    running.remove(&id);
                }
            }
            self.scan(&mut tasks, &mut running, &shutdown).await;
            self.metrics.jobs_running.set(running.len() as i64);
        }
        while tasks.join_next().await.is_some() {}
        self.metrics.jobs_running.set(0);
    }

    async fn scan(
        self: &Arc<Self>,
        tasks: &mut JoinSet<String>,
        running: &mut BTreeSet<String>,
        shutdown: &CancellationToken,
    ) {
        let jobs = match self.store.list().await {
            Ok(jobs) => jobs,
            Err(error) => {
                tracing::warn!(
                    error = &error as &dyn std::error::Error,
                    "listing replay jobs failed; retrying next scan"
                );
                return;
            }
        };
        for job in jobs {
            let (job, revision) = match job {
                Ok(found) => found,
                Err(error) => {
                    tracing::warn!(
                        error = &error as &dyn std::error::Error,
                        "skipping an unreadable job record"
                    );
                    continue;
                }
            };
            if running.len() >= self.settings.max_concurrent {
                break;
            }
            if running.contains(&job.id)
                || !job.claimable_by(&self.holder(), OffsetDateTime::now_utc())
            {
                continue;
            }
            match execute::Execution::claim(self.clone(), job, revision).await {
                Ok(Some(execution)) => {
                    running.insert(execution.id().to_owned());
                    tasks.spawn(execution.run(shutdown.clone()));
                }
                Ok(None) => {}
                Err(error) => tracing::warn!(%error, "claiming a replay job failed"),
            }
        }
    }
}
