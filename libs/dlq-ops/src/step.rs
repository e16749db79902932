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
//! **The marker.** Before publishing, the step creates the entry's key in the `dlq-replays`
//! bucket ([`Markers`]; per-key TTL [`MARKER_TTL`], longer than the DLQ keeps an entry) and
//! purges it once the entry is removed. A key already there means an earlier replay of this
//! entry may have stored its copy and stopped before removing the entry (a crash, a lost
//! connection). Within [`SAFE_REPUBLISH`] of that attempt the target's duplicate window (5
//! minutes on the hand-off streams) still drops a second copy, so the step publishes again;
//! after it, a second copy would be stored and delivered twice, so the entry is kept
//! ([`Stepped::KeptUncertain`]) unless the caller forces it. A replay to ingress is never
//! uncertain: its copy carries the producer's id, which the idempotency stage drops for 36 h.
//!
//! **The delete.** One request per entry (`STREAM.MSG.DELETE` without secure erase: the entry
//! is gone from the stream at once either way, and erasing makes each delete many times
//! slower); an entry already gone (an earlier attempt deleted it, or it was purged) counts as
//! deleted, since its copy is stored.

use async_nats::jetstream;
use async_nats::jetstream::context::{PublishError, RequestError};
use async_nats::jetstream::publish::PublishAck;
use async_nats::jetstream::response::Response;
use async_nats::jetstream::stream::{DeleteStatus, Stream};
use std::time::Duration;

use async_nats::jetstream::kv;
use serde::{Deserialize, Serialize};
use switchyard_keys::kv::DlqReplayKey;
use switchyard_registry::{Store, StoreError, Written};
use switchyard_subjects::InputStage;
use time::OffsetDateTime;
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
    /// An earlier replay of this entry began at `since`, longer than [`SAFE_REPUBLISH`] ago,
    /// and did not finish: its copy may be stored, and another would not be dropped as a
    /// duplicate. Nothing was published; the entry stays.
    KeptUncertain {
        /// When the earlier replay began.
        since: OffsetDateTime,
        /// Where it published.
        subject: String,
    },
}

/// How long a replay's marker lives unless purged: longer than the DLQ keeps an entry (14 d).
pub const MARKER_TTL: Duration = Duration::from_secs(15 * 24 * 3600);

/// How long a purged marker's own purge record lives.
pub const PURGED_TTL: Duration = Duration::from_secs(60);

/// How long after an unfinished replay began a second copy is still dropped by the target's
/// duplicate window (300 s on `IDEMPOTENCY`, `BACKPRESSURE`, `EGRESS`), with a minute's margin.
pub const SAFE_REPUBLISH: Duration = Duration::from_secs(240);

/// What a replay marker records.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReplayIntent {
    /// When the replay began (the replaying host's clock).
    #[serde(with = "time::serde::rfc3339")]
    pub at: OffsetDateTime,
    /// The subject the copy goes to.
    pub subject: String,
}

/// The `dlq-replays` bucket.
#[derive(Clone)]
pub struct Markers {
    store: Store<DlqReplayKey, ReplayIntent>,
}

impl Markers {
    /// Wraps the `dlq-replays` bucket.
    pub fn new(kv: kv::Store) -> Self {
        Self {
            store: Store::new(kv),
        }
    }

    /// The unfinished replay recorded for `key`, if any.
    pub async fn get(&self, key: &DlqReplayKey) -> Result<Option<ReplayIntent>, StoreError> {
        self.store.get(key).await
    }

    /// The unfinished earlier replay of `plan`'s entry that makes publishing it again unsafe
    /// (begun [`SAFE_REPUBLISH`] or more before `now`; never for a replay to ingress), if any:
    /// what a replay would keep the entry as `uncertain` for.
    pub async fn uncertain(
        &self,
        plan: &ReplayPlan,
        now: OffsetDateTime,
    ) -> Result<Option<ReplayIntent>, StoreError> {
        if plan.stage == InputStage::Ingress {
            return Ok(None);
        }
        Ok(self
            .get(&plan.marker)
            .await?
            .filter(|earlier| (now - earlier.at).unsigned_abs() >= SAFE_REPUBLISH))
    }
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
    /// The `dlq-replays` bucket could not be read or written.
    #[error("replaying entry {seq}: the dlq-replays bucket")]
    Marker {
        /// The entry.
        seq: u64,
        /// The store's error.
        #[source]
        source: StoreError,
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

/// Where a replay step publishes and what it removes: the context, the DLQ, the
/// `dlq-replays` bucket, and a bound on deletes waiting at the JetStream API at once (they are
/// served one at a time per stream), so other clients' API calls are not starved.
pub struct Replayer<'a> {
    /// The JetStream context copies are published with.
    pub js: &'a jetstream::Context,
    /// The DLQ.
    pub dlq: &'a Stream,
    /// The `dlq-replays` bucket.
    pub markers: &'a Markers,
    /// The delete bound.
    pub deletes: &'a Semaphore,
}

/// Replays DLQ entry `seq` by `plan` (see the module docs): records the replay in the
/// `dlq-replays` bucket, publishes the copy, awaits the ack, removes the entry unless the
/// duplicate rule keeps it, and purges the record. `force` replays even an entry whose earlier
/// replay is uncertain. Retrying after an error is safe within [`SAFE_REPUBLISH`]: a copy
/// stored by the failed attempt makes the next ack a duplicate of it, and the entry goes.
pub async fn replay(
    r: &Replayer<'_>,
    seq: u64,
    plan: &ReplayPlan,
    force: bool,
) -> Result<Stepped, StepError> {
    let marker = |source| StepError::Marker { seq, source };
    let intent = ReplayIntent {
        at: OffsetDateTime::now_utc(),
        subject: plan.subject.clone(),
    };
    let recorded = r
        .markers
        .store
        .create_with_ttl(&plan.marker, &intent, MARKER_TTL)
        .await
        .map_err(marker)?;
    if matches!(recorded, Written::Conflict)
        && !force
        && let Some(earlier) = r.markers.uncertain(plan, intent.at).await.map_err(marker)?
    {
        return Ok(Stepped::KeptUncertain {
            since: earlier.at,
            subject: earlier.subject,
        });
    }
    let js = r.js;
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
        // Nothing was stored: no replay is under way.
        r.markers
            .store
            .purge_with_ttl(&plan.marker, PURGED_TTL)
            .await
            .map_err(marker)?;
        return Ok(Stepped::KeptDuplicate {
            stream: ack.stream,
            seq: ack.sequence,
        });
    }
    {
        // Only a closed semaphore fails to give a permit, and nothing closes it.
        let _permit = r.deletes.acquire().await.ok();
        if let Err(source) = delete(js, r.dlq, seq).await {
            return Err(StepError::Delete {
                seq,
                stream: ack.stream,
                stored: ack.sequence,
                source,
            });
        }
    }
    // The entry is gone, so no later replay of it can double; a purge that fails leaves a
    // record that ages out (MARKER_TTL) and is only read for an entry still in the DLQ.
    if let Err(error) = r
        .markers
        .store
        .purge_with_ttl(&plan.marker, PURGED_TTL)
        .await
    {
        tracing::warn!(%error, seq, "purging a finished replay's marker failed; it ages out");
    }
    Ok(Stepped::Replayed {
        stream: ack.stream,
        seq: ack.sequence,
        duplicate: ack.duplicate,
    })
}

/// Removes entry `seq` from the DLQ without secure erase; an entry already gone counts
/// ([`switchyard_registry::gone_on_delete`]). Any other refusal ("message delete not
/// permitted" on a stream with `deny_delete`, a store error) leaves the entry there, and the
/// replay unfinished.
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
        Response::Err { error } if switchyard_registry::gone_on_delete(&error) => Ok(()),
        Response::Err { error } => Err(DeleteError::Refused(error)),
    }
}
