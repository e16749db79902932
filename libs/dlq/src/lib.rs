//! DLQ records, written by every stage through this one library.
//!
//! A DLQ entry is a message on `[p.]dlq.v1.<tenant|_>.<stage>.<platform|_>` in the DLQ stream
//! (never a work queue). Its payload is the original payload, byte for byte; its headers are
//! the original headers (less the server-interpreted `Nats-*` ones) plus the
//! `Switchyard-Dlq-*` headers of [`headers`]. The wire format is documented in
//! `docs/dlq-wire-format.md` so a stock NATS client can read it.
//!
//! - [`code`]: [`DlqCode`], the closed set of reasons.
//! - [`record`]: [`DeadLetter`] (what a stage writes) and [`DlqEntry`] (what operators read).
//! - [`attempt`]: [`AttemptRecord`], one delivery attempt in a message's history.
//! - [`replay`]: where and how an entry re-enters the pipeline.
//! - [`job`] and [`job_store`]: durable replay jobs ([`JobRecord`]) in the `dlq-jobs` bucket.
//! - [`stats`]: inflow counters per (tenant, stage, code) in the `dlq-stats` bucket.
//! - [`export`]: the NDJSON retention export format and restoring entries from it.

pub mod attempt;
pub mod code;
pub mod export;
pub mod headers;
pub mod job;
pub mod job_store;
pub mod record;
pub mod replay;
pub mod stats;

pub use attempt::AttemptRecord;
pub use code::DlqCode;
pub use export::{EXPORT_FORMAT, ExportLine, Restore};
pub use job::{JobProgress, JobRecord, JobSelection, JobSpec, JobState, Lease};
pub use job_store::{JobStore, JobStoreError, Written};
pub use record::{DeadLetter, DlqEntry, DlqEntryView, DlqError};
pub use replay::{ReplayError, ReplayPlan, plan_replay, plan_replay_to};
pub use stats::{StatsRecord, StatsState, StatsStore, StatsStoreError};
