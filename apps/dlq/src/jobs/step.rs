//! One entry's step in a replay job: nothing to do (skip, keep, count), or publish the copy,
//! await the target stream's ack, and delete the entry from the DLQ.

use std::future::Future;
use std::pin::Pin;

use switchyard_dlq_ops::{ReplayPlan, Replayer, StepError, Stepped, step};
use tokio::sync::Semaphore;

use super::JobRunner;
use super::source::{Candidate, Work};

/// DLQ deletes one execution has waiting at the JetStream API at once.
pub const MAX_DELETES: usize = 16;

/// How one entry ended.
pub enum Done {
    /// Not selected.
    Skipped,
    /// A listed sequence not in the DLQ.
    Missing,
    /// Left in the DLQ, for this reason.
    Kept(&'static str),
    /// Dry run: would be replayed.
    WouldReplay,
    /// Copy stored, entry deleted.
    Replayed,
}

/// A step under way; yields the entry's sequence and how it ended.
pub type Step = Pin<Box<dyn Future<Output = (u64, Done)> + Send>>;

/// A decided entry that needs no I/O.
pub fn ready(candidate: Candidate) -> Step {
    let done = match candidate.work {
        Work::Skip => Done::Skipped,
        Work::Missing => Done::Missing,
        Work::Keep(why) => Done::Kept(why),
        Work::WouldReplay => Done::WouldReplay,
        Work::Replay { .. } => Done::Kept("unreserved"),
    };
    Box::pin(std::future::ready((candidate.seq, done)))
}

/// Publishes one copy, awaits its ack, deletes the entry (one attempt of the shared replay
/// step, [`switchyard_dlq_ops::step`], which holds the duplicate rule).
pub async fn replay_once(
    runner: &JobRunner,
    deletes: &Semaphore,
    seq: u64,
    plan: &ReplayPlan,
) -> Result<Done, StepError> {
    let replayer = Replayer {
        js: &runner.js,
        dlq: &runner.dlq,
        markers: &runner.markers,
        deletes,
    };
    Ok(match step::replay(&replayer, seq, plan, false).await? {
        Stepped::Replayed { .. } => Done::Replayed,
        Stepped::KeptDuplicate { .. } => Done::Kept("duplicate"),
        // An earlier replay of it began too long ago to publish again safely: the CLI's
        // `dlq replay <seq> --force` decides.
        Stepped::KeptUncertain { .. } => Done::Kept("uncertain"),
    })
}
