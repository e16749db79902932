//! Replay jobs: what an operator asked for ([`JobSpec`]), how far the dlq service got
//! ([`JobProgress`]), and who is executing it ([`Lease`]), kept as one JSON record per job in
//! the `dlq-jobs` bucket ([`JobRecord`], read and written through [`crate::JobStore`]).
//!
//! A job covers the entries its [`JobSelection`] matches with a DLQ sequence at or below
//! [`JobSpec::upper_seq`] (the newest matching entry when the job was created), so entries
//! that arrive later — including replays that fail again — never extend a running job.

use std::collections::BTreeMap;
use std::fmt;

use serde::{Deserialize, Serialize};
use switchyard_keys::{PlatformId, Stage, TenantId};
use switchyard_subjects::{DlqFilter, InputStage, Namespace};
use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;

use crate::{DlqCode, DlqEntry};

/// Which entries a job replays: a filter (tenant, stage, platform, code, time range) or an
/// explicit list of DLQ sequences.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct JobSelection {
    /// Only this tenant's entries.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tenant: Option<TenantId>,
    /// Only entries dead-lettered by this stage.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stage: Option<Stage>,
    /// Only this platform's entries.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub platform: Option<PlatformId>,
    /// Only entries with this code.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub code: Option<DlqCode>,
    /// Only entries stored at or after this time.
    #[serde(
        default,
        with = "time::serde::rfc3339::option",
        skip_serializing_if = "Option::is_none"
    )]
    pub since: Option<OffsetDateTime>,
    /// Only entries stored at or before this time.
    #[serde(
        default,
        with = "time::serde::rfc3339::option",
        skip_serializing_if = "Option::is_none"
    )]
    pub until: Option<OffsetDateTime>,
    /// Exactly these DLQ sequences (ascending, no duplicates); the filters above must be
    /// empty when this is set.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub seqs: Vec<u64>,
}

impl JobSelection {
    /// The subject part of the filter.
    pub fn subjects(&self) -> DlqFilter {
        DlqFilter {
            tenant: self.tenant.clone(),
            stage: self.stage,
            platform: self.platform.clone(),
        }
    }

    /// The DLQ subject filter the job reads through.
    pub fn subject_filter(&self, ns: &Namespace) -> String {
        ns.dlq_filter(&self.subjects())
    }

    /// Whether an entry read through the subject filter also passes the code and time checks.
    pub fn matches(&self, entry: &DlqEntry) -> bool {
        self.code.is_none_or(|c| c == entry.record.code)
            && self.since.is_none_or(|t| entry.stored_at >= t)
            && self.until.is_none_or(|t| entry.stored_at <= t)
    }

    /// `tenant=acme code=no_route`, `seqs 4,7,9`, or `every entry`.
    pub fn describe(&self) -> String {
        if !self.seqs.is_empty() {
            let shown: Vec<String> = self.seqs.iter().take(5).map(u64::to_string).collect();
            let more = if self.seqs.len() > 5 { ",…" } else { "" };
            return format!("seqs {}{more}", shown.join(","));
        }
        let mut parts = Vec::new();
        if let Some(t) = &self.tenant {
            parts.push(format!("tenant={t}"));
        }
        if let Some(s) = self.stage {
            parts.push(format!("stage={s}"));
        }
        if let Some(p) = &self.platform {
            parts.push(format!("platform={p}"));
        }
        if let Some(c) = self.code {
            parts.push(format!("code={c}"));
        }
        let at = |t: OffsetDateTime| t.format(&Rfc3339).unwrap_or_default();
        if let Some(t) = self.since {
            parts.push(format!("since={}", at(t)));
        }
        if let Some(t) = self.until {
            parts.push(format!("until={}", at(t)));
        }
        if parts.is_empty() {
            "every entry".to_owned()
        } else {
            parts.join(" ")
        }
    }
}

/// What the operator asked for.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct JobSpec {
    /// Which entries.
    pub selection: JobSelection,
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
    /// Checks what the types cannot: a positive rate, and listed sequences (ascending, no
    /// duplicates) or filters, not both. A dlq service fails a job that breaks these.
    pub fn validate(&self) -> Result<(), String> {
        let s = &self.selection;
        if self.rate == 0 {
            return Err("rate must be at least 1 per second".to_owned());
        }
        if !s.seqs.is_empty() {
            let filtered = s.tenant.is_some()
                || s.stage.is_some()
                || s.platform.is_some()
                || s.code.is_some()
                || s.since.is_some()
                || s.until.is_some();
            if filtered {
                return Err("a job lists sequences or has filters, not both".to_owned());
            }
            if !s.seqs.windows(2).all(|w| w[0] < w[1]) {
                return Err("listed sequences must be ascending without duplicates".to_owned());
            }
        }
        Ok(())
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
    /// Left in the DLQ, by reason (`not replayable`, `no envelope`, `target refused`,
    /// `duplicate`, `invalid record`).
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

/// Which dlq service instance executes a job, and until when its claim holds.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Lease {
    /// The instance id of the dlq service holding it.
    pub owner: String,
    /// The claim lapses at this time unless renewed (every progress write renews it).
    #[serde(with = "time::serde::rfc3339")]
    pub expires_at: OffsetDateTime,
}

impl Lease {
    /// Whether the lease still holds at `now`.
    pub fn holds_at(&self, now: OffsetDateTime) -> bool {
        self.expires_at > now
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

    /// Whether an instance may claim it at `now`: not finished, and no live lease held by
    /// another instance.
    pub fn claimable_by(&self, owner: &str, now: OffsetDateTime) -> bool {
        !self.state.is_finished()
            && self
                .lease
                .as_ref()
                .is_none_or(|l| l.owner == owner || !l.holds_at(now))
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
    use super::*;

    fn spec() -> JobSpec {
        JobSpec {
            selection: JobSelection {
                tenant: Some(TenantId::new("acme").unwrap()),
                code: Some(DlqCode::NoRoute),
                ..JobSelection::default()
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
        unsorted.selection = JobSelection {
            seqs: vec![4, 3],
            ..JobSelection::default()
        };
        assert!(unsorted.validate().is_err());
    }

    #[test]
    fn only_a_lapsed_or_own_lease_can_be_claimed() {
        let now = OffsetDateTime::now_utc();
        let mut job = JobRecord::new(spec(), now);
        assert!(job.claimable_by("a", now));
        job.lease = Some(Lease {
            owner: "a".into(),
            expires_at: now + time::Duration::seconds(10),
        });
        assert!(job.claimable_by("a", now));
        assert!(!job.claimable_by("b", now));
        assert!(job.claimable_by("b", now + time::Duration::seconds(11)));
        job.state = JobState::Done;
        assert!(!job.claimable_by("a", now));
    }
}
