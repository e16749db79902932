//! The replay step, the same for `switchyard dlq replay` and the dlq service's jobs: publish
//! a planned copy ([`crate::ReplayPlan`]), await the target stream's ack, apply the duplicate
//! rule, and only then remove the entry from the DLQ.
//!
//! **The duplicate rule.** A copy's `Nats-Msg-Id` is deterministic (the hop id with the replay
//! counter + 1; for ingress, the producer's id), so a duplicate ack says the target already
//! holds a message with that id. Only when that message is the very one the entry was read
//! from ([`ReplayPlan::source`]: on ingress, the producer's original, still inside the stream's
//! duplicate window) was nothing new stored, and the entry stays ([`Stepped::KeptDuplicate`]).
//! Any other duplicate is this message already re-entered — an earlier copy of this replay
//! stored before a crash, or a replay of another entry for the same message — so the copy is
//! durably stored and the entry goes like any replayed one.
//!
//! **The delete.** One request per entry (`STREAM.MSG.DELETE` without secure erase: the entry
//! is gone from the stream at once either way, and erasing makes each delete many times
//! slower); an entry already gone (an earlier attempt deleted it, or it was purged) counts as
//! deleted, since its copy is stored.

use async_nats::jetstream::context::{PublishError, RequestError};
use async_nats::jetstream::publish::PublishAck;
use async_nats::jetstream::response::Response;
use async_nats::jetstream::stream::{DeleteStatus, Stream};
use async_nats::jetstream::{self, ErrorCode};
use tokio::sync::Semaphore;

use crate::ReplayPlan;

/// How a replay step ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Stepped {
    /// The copy is stored in `stream` at `seq` and the entry was removed from the DLQ.
    Replayed {
        /// The stream that holds the copy.
        stream: String,
        /// Its sequence there.
        seq: u64,
        /// Whether the ack was a duplicate (the copy was already stored).
        duplicate: bool,
    },
    /// The ack is a duplicate of the message the entry was read from: nothing was stored, and
    /// the entry stays.
    KeptDuplicate {
        /// The stream that holds the original.
        stream: String,
        /// Its sequence there.
        seq: u64,
    },
}

/// Why removing a replayed entry failed.
#[derive(Debug, thiserror::Error)]
pub enum DeleteError {
    /// The request did not complete.
    #[error("the delete request failed")]
    Request(#[source] RequestError),
    /// The server refused it.
    #[error("the server refused the delete")]
    Refused(#[source] jetstream::Error),
}

/// Why a replay step failed.
#[derive(Debug, thiserror::Error)]
pub enum StepError {
    /// Publishing the copy failed.
    #[error("replaying entry {seq} to {subject}")]
    Publish {
        /// The entry.
        seq: u64,
        /// The target subject.
        subject: String,
        /// The client's error.
        #[source]
        source: PublishError,
    },
    /// The target stream's ack did not come.
    #[error("replaying entry {seq} to {subject}: waiting for the ack")]
    Ack {
        /// The entry.
        seq: u64,
        /// The target subject.
        subject: String,
        /// The client's error.
        #[source]
        source: PublishError,
    },
    /// The copy is stored, but the entry could not be removed from the DLQ.
    #[error("entry {seq} was replayed ({stream} seq {stored}) but could not be deleted")]
    Delete {
        /// The entry.
        seq: u64,
        /// The stream that holds the copy.
        stream: String,
        /// Its sequence there.
        stored: u64,
        /// What went wrong.
        #[source]
        source: DeleteError,
    },
}

/// Whether an ack means the copy is stored (see the module docs): anything but a duplicate
/// pointing at the message the entry was read from.
pub fn copy_stored(ack: &PublishAck, plan: &ReplayPlan) -> bool {
    let original = plan
        .source
        .as_ref()
        .is_some_and(|(stream, seq)| ack.stream == *stream && ack.sequence == *seq);
    !(ack.duplicate && original)
}

/// Replays DLQ entry `seq` (in `dlq`) by `plan`: publishes the copy, awaits the ack, and
/// removes the entry unless the duplicate rule keeps it. `deletes` bounds how many deletes
/// wait at the JetStream API at once (they are served one at a time per stream), so other
/// clients' API calls are not starved. Retrying after an error is safe: a copy stored by the
/// failed attempt makes the next ack a duplicate of it, and the entry goes.
pub async fn replay(
    js: &jetstream::Context,
    dlq: &Stream,
    deletes: &Semaphore,
    seq: u64,
    plan: &ReplayPlan,
) -> Result<Stepped, StepError> {
    let ack = js
        .publish_with_headers(
            plan.subject.clone(),
            plan.headers.clone(),
            plan.payload.clone(),
        )
        .await
        .map_err(|source| StepError::Publish {
            seq,
            subject: plan.subject.clone(),
            source,
        })?
        .await
        .map_err(|source| StepError::Ack {
            seq,
            subject: plan.subject.clone(),
            source,
        })?;
    if !copy_stored(&ack, plan) {
        return Ok(Stepped::KeptDuplicate {
            stream: ack.stream,
            seq: ack.sequence,
        });
    }
    // Only a closed semaphore fails to give a permit, and nothing closes it.
    let _permit = deletes.acquire().await.ok();
    if let Err(source) = delete(js, dlq, seq).await {
        return Err(StepError::Delete {
            seq,
            stream: ack.stream,
            stored: ack.sequence,
            source,
        });
    }
    Ok(Stepped::Replayed {
        stream: ack.stream,
        seq: ack.sequence,
        duplicate: ack.duplicate,
    })
}

/// Removes entry `seq` from the DLQ without secure erase; an entry already gone counts.
async fn delete(js: &jetstream::Context, dlq: &Stream, seq: u64) -> Result<(), DeleteError> {
    let response: Response<DeleteStatus> = js
        .request(
            format!("STREAM.MSG.DELETE.{}", dlq.cached_info().config.name),
            &serde_json::json!({ "seq": seq, "no_erase": true }),
        )
        .await
        .map_err(DeleteError::Request)?;
    match response {
        Response::Ok(_) => Ok(()),
        Response::Err { error }
            if matches!(
                error.error_code(),
                ErrorCode::NO_MESSAGE_FOUND | ErrorCode::STREAM_MESSAGE_DELETE_FAILED
            ) =>
        {
            Ok(())
        }
        Response::Err { error } => Err(DeleteError::Refused(error)),
    }
}
