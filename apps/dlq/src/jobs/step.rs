//! One entry's step in a replay job: nothing to do (skip, keep, count), or publish the copy,
//! await the target stream's ack, and delete the entry from the DLQ.

use std::future::Future;
use std::pin::Pin;

use async_nats::jetstream::ErrorCode;
use async_nats::jetstream::response::Response;
use async_nats::jetstream::stream::DeleteStatus;
use switchyard_dlq::ReplayPlan;
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

/// Publishes one copy, awaits its ack, deletes the entry (one attempt).
pub async fn replay_once(
    runner: &JobRunner,
    deletes: &Semaphore,
    seq: u64,
    plan: &ReplayPlan,
    source: &(String, u64),
) -> anyhow::Result<Done> {
    let ack = runner
        .js
        .publish_with_headers(
            plan.subject.clone(),
            plan.headers.clone(),
            plan.payload.clone(),
        )
        .await?
        .await?;
    // On a hand-off stream only this replay of this entry carries this id: a duplicate is our
    // own copy, stored before a crash (or by a concurrent replay). On ingress the id is the
    // producer's, so a duplicate pointing at the original message means nothing was stored.
    if ack.duplicate && ack.stream == source.0 && ack.sequence == source.1 {
        return Ok(Done::Kept("duplicate"));
    }
    // Deletes are JetStream API requests, served one at a time per stream: bound how many
    // wait, so other clients' API calls are not starved.
    let _permit = deletes.acquire().await?;
    // No secure erase: the entry is gone from the stream at once either way, and erasing
    // (overwriting the bytes on disk) makes each delete many times slower.
    let response: Response<DeleteStatus> = runner
        .js
        .request(
            format!("STREAM.MSG.DELETE.{}", runner.dlq.cached_info().config.name),
            &serde_json::json!({ "seq": seq, "no_erase": true }),
        )
        .await?;
    match response {
        Response::Ok(_) => Ok(Done::Replayed),
        // Already gone (deleted by an earlier attempt, or purged): the copy is stored.
        Response::Err { error }
            if matches!(
                error.error_code(),
                ErrorCode::NO_MESSAGE_FOUND | ErrorCode::STREAM_MESSAGE_DELETE_FAILED
            ) =>
        {
            Ok(Done::Replayed)
        }
        Response::Err { error } => Err(anyhow::anyhow!("deleting DLQ entry {seq}: {error}")),
    }
}
