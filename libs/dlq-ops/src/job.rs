//! Replay jobs: what an operator asked for ([`JobSpec`]), how far the dlq service got
//! ([`JobProgress`]), and who is executing it ([`Lease`]), kept as one JSON record per job in
//! the `dlq-jobs` bucket ([`JobRecord`], read and written through [`crate::JobStore`]).
//!
//! A job covers the entries its [`Selection`] matches with a DLQ sequence at or below
//! [`JobSpec::upper_seq`] (the newest matching entry when the job was created), so entries
//! that arrive later — including replays that fail again — never extend a running job.

use std::collections::BTreeMap;
use std::fmt;

use serde::{Deserialize, Serialize};
use switchyard_subjects::InputStage;
use time::OffsetDateTime;

use crate::{Lease, Leaseholder, Selection};

/// What the operator asked for.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct JobSpec {
    /// Which entries.
    pub selection: Selection,
    /// Where they re-enter; `None`: the stage that gave up on each.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub target: Option<InputStage>,
    /// At most this many replays per second.
    pub rate: u32,
    /// Only plan: publish nothing, delete nothing.
    pub dry_run: bool,
    /// The highest DLQ sequence the job covers.
    pub upper_seq: u64,
    /// How many entries matched when the job was created (the progress bar's 100 %).
    pub total: u64,
}

impl JobSpec {
    /// Checks what the types cannot: a positive rate, and a valid selection
    /// ([`Selection::validate`]). A dlq service fails a job that breaks these.
    pub fn validate(&self) -> Result<(), String> {
        if self.rate == 0 {
            return Err("rate must be at least 1 per second".to_owned());
        }
        self.selection.validate()
    }
}

/// Where a job stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum JobState {
    /// Written by the CLI; no dlq service has claimed it yet.
    Pending,
    /// A dlq service holds its lease and is executing it.
    Running,
    /// Every covered entry was handled.
    Done,
    /// Stopped on an error it cannot get past (see `error`).
    Failed,
    /// Cancelled by an operator; entries already replayed stay replayed.
    Cancelled,
}

impl JobState {
    /// Whether the job will not run again.
    pub fn is_finished(self) -> bool {
        matches!(
            self,
            JobState::Done | JobState::Failed | JobState::Cancelled
        )
    }

    /// The state as shown and stored.
    pub fn as_str(self) -> &'static str {
        match self {
            JobState::Pending => "pending",
            JobState::Running => "running",
            JobState::Done => "done",
            JobState::Failed => "failed",
            JobState::Cancelled => "cancelled",
        }
    }
}

impl fmt::Display for JobState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// How far a job got. Written after every entry it handles.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct JobProgress {
    /// Every covered entry at or below this DLQ sequence has been handled.
    pub last_seq: u64,
    /// Matching entries handled (replayed, would replay, kept or missing).
    pub handled: u64,
    /// Replayed, stored by the target stream, and removed from the DLQ.
    pub replayed: u64,
    /// Dry run: entries that would be replayed.
    pub would_replay: u64,
    /// Left in the DLQ, by reason (`not replayable`, `no envelope`, `unsupported schema`,
    /// `inconsistent schema`, `target refused`, `headers dropped`, `duplicate`, `invalid
    /// record`, `uncertain`,
    /// `publish failed`: refused or unanswered for `jobs.entry_retry_secs`, `not deleted`: the
    /// copy stored but the entry not deleted for as long, `aborted`: cancelled or the lease
    /// lost while its copy was being retried).
    pub kept: BTreeMap<String, u64>,
    /// Listed sequences that were no longer in the DLQ.
    pub missing: u64,
    /// Entries the executor may have replayed since this write (it lists them here before it
    /// publishes them). A resumed job counts those no longer in the DLQ as replayed (the crash
    /// came after their copies were stored and they were deleted, before the next write) and
    /// handles the others normally.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub in_flight: Vec<u64>,
}

impl JobProgress {
    /// Entries kept, over every reason.
    pub fn kept_total(&self) -> u64 {
        self.kept.values().sum()
    }

    /// Counts one kept entry.
    pub fn keep(&mut self, reason: &str) {
        *self.kept.entry(reason.to_owned()).or_default() += 1;
        self.handled += 1;
    }
}

/// One replay job, as stored under its id in the `dlq-jobs` bucket.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct JobRecord {
    /// The job id (a lower-case UUIDv7; also the KV key).
    pub id: String,
    /// When the CLI created it.
    #[serde(with = "time::serde::rfc3339")]
    pub created_at: OffsetDateTime,
    /// What was asked for.
    pub spec: JobSpec,
    /// Where it stands.
    pub state: JobState,
    /// How far it got.
    pub progress: JobProgress,
    /// Who executes it (absent while pending and once finished).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub lease: Option<Lease>,
    /// How many times a dlq service claimed it (more than 1: it resumed after a crash,
    /// restart or lost lease).
    #[serde(default)]
    pub claims: u32,
    /// When a dlq service first started it.
    #[serde(
        default,
        with = "time::serde::rfc3339::option",
        skip_serializing_if = "Option::is_none"
    )]
    pub started_at: Option<OffsetDateTime>,
    /// Last write.
    #[serde(with = "time::serde::rfc3339")]
    pub updated_at: OffsetDateTime,
    /// When it finished.
    #[serde(
        default,
        with = "time::serde::rfc3339::option",
        skip_serializing_if = "Option::is_none"
    )]
    pub finished_at: Option<OffsetDateTime>,
    /// Why it failed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

impl JobRecord {
    /// A new pending job.
    pub fn new(spec: JobSpec, now: OffsetDateTime) -> Self {
        Self {
            id: new_job_id(now),
            created_at: now,
            spec,
            state: JobState::Pending,
            progress: JobProgress::default(),
            lease: None,
            claims: 0,
            started_at: None,
            updated_at: now,
            finished_at: None,
            error: None,
        }
    }

    /// Whether `holder` may claim it at `now`: not finished, and no live lease held by
    /// another instance.
    pub fn claimable_by(&self, holder: &Leaseholder, now: OffsetDateTime) -> bool {
        !self.state.is_finished() && holder.may_take(self.lease.as_ref(), now)
    }

    /// Percentage of `total` handled (100 when the job covers nothing).
    pub fn percent(&self) -> f64 {
        if self.spec.total == 0 {
            return if self.state == JobState::Done {
                100.0
            } else {
                0.0
            };
        }
        (self.progress.handled as f64 * 100.0 / self.spec.total as f64).min(100.0)
    }
}

/// A fresh job id: a lower-case hyphenated UUIDv7 (sorts by creation time).
pub fn new_job_id(now: OffsetDateTime) -> String {
    let nanos = now.unix_timestamp_nanos().max(0) as u128;
    let ts = uuid::Timestamp::from_unix(
        uuid::NoContext,
        (nanos / 1_000_000_000) as u64,
        (nanos % 1_000_000_000) as u32,
    );
    uuid::Uuid::new_v7(ts).to_string()
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use switchyard_dlq::DlqCode;
    use switchyard_keys::TenantId;

    use super::*;

    fn spec() -> JobSpec {
        JobSpec {
            selection: Selection {
                tenant: Some(TenantId::new("acme").unwrap()),
                code: Some(DlqCode::NoRoute),
                ..Selection::default()
            },
            target: Some(InputStage::Egress),
            rate: 500,
            dry_run: false,
            upper_seq: 42,
            total: 7,
        }
    }

    #[test]
    fn records_round_trip_through_json() {
        let now = OffsetDateTime::now_utc().replace_nanosecond(0).unwrap();
        let mut job = JobRecord::new(spec(), now);
        job.progress.keep("duplicate");
        job.lease = Some(Lease {
            owner: "a".into(),
            expires_at: now,
        });
        let json = serde_json::to_string(&job).unwrap();
        assert!(json.contains("\"tenant\":\"acme\""), "{json}");
        assert!(json.contains("\"state\":\"pending\""), "{json}");
        assert_eq!(serde_json::from_str::<JobRecord>(&json).unwrap(), job);
        assert_eq!(job.spec.selection.describe(), "tenant=acme code=no_route");
        assert!(switchyard_keys::kv::DlqJobKey::new(job.id.clone()).is_ok());
        assert!(job.spec.validate().is_ok());
        let mut both = job.spec.clone();
        both.selection.seqs = vec![3, 4];
        assert!(both.validate().is_err());
        let mut unsorted = spec();
        unsorted.selection = Selection {
            seqs: vec![4, 3],
            ..Selection::default()
        };
        assert!(unsorted.validate().is_err());
    }

    #[test]
    fn only_a_lapsed_or_own_lease_can_be_claimed() {
        let now = OffsetDateTime::now_utc();
        let a = Leaseholder::new("a", Duration::from_secs(10));
        let b = Leaseholder::new("b", Duration::from_secs(10));
        let mut job = JobRecord::new(spec(), now);
        assert!(job.claimable_by(&a, now));
        job.lease = Some(a.grant(now));
        assert!(job.claimable_by(&a, now));
        assert!(!job.claimable_by(&b, now));
        assert!(job.claimable_by(&b, now + time::Duration::seconds(11)));
        job.state = JobState::Done;
        assert!(!job.claimable_by(&a, now));
    }
}
