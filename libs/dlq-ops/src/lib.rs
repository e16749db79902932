//! What the dlq service and the operator CLI share about the DLQ, and no pipeline stage needs:
//! stages write records through `switchyard-dlq` and link none of this.
//!
//! - [`selection`]: [`Selection`], which entries an operation (or a replay job) covers.
//! - [`read`]: [`DlqReader`], reading entries without consuming them.
//! - [`replay`]: where and with which headers an entry re-enters ([`plan_replay_to`]).
//! - [`step`]: the replay step: publish, await the ack, the duplicate rule, remove the entry.
//! - [`job`] and [`job_store`]: durable replay jobs ([`JobRecord`]) in the `dlq-jobs` bucket.
//! - [`stats`]: inflow counters per (tenant, stage, code) in the `dlq-stats` bucket.
//! - [`export`]: the NDJSON retention export format and restoring entries from it.
//! - [`lease`]: the KV lease one instance holds on a job or on the stats processor, inside
//!   records changed only by compare-and-set through `switchyard_registry::Store` (whose
//!   [`StoreError`] and [`Written`] the job and stats stores return).

pub mod export;
pub mod job;
pub mod job_store;
pub mod lease;
pub mod read;
pub mod replay;
pub mod selection;
pub mod stats;
pub mod step;

pub use export::{EXPORT_FORMAT, ExportLine, ImportError, Restore, restore};
pub use job::{JobProgress, JobRecord, JobSpec, JobState};
pub use job_store::JobStore;
pub use lease::{Lease, Leaseholder};
pub use read::{CatchUp, Collected, Delivered, DlqReader, ReadError};
pub use replay::{ReplayError, ReplayPlan, plan_replay, plan_replay_to};
pub use selection::{Selection, show_time};
pub use stats::{StatsRecord, StatsState, StatsStore};
pub use step::{Markers, ReplayIntent, Replayer, StepError, Stepped};
/// What [`JobStore`] and [`StatsStore`] return: the KV store's one error type and the outcome
/// of a compare-and-set write, so their callers need not name the registry.
pub use switchyard_registry::{StoreError, Written};
