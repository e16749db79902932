//! Publishing to the next stage, and scheduling a delayed re-entry.

use async_nats::HeaderMap;
use async_nats::jetstream;
use bytes::Bytes;
use switchyard_envelope::{Envelope, headers};
use switchyard_subjects::{DelaySubject, InputStage, Namespace, StageSubject, SubjectKind};
use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;

/// A hand-off that JetStream did not confirm; the message must not be acked.
#[derive(Debug, thiserror::Error)]
pub enum HandoffError {
    /// The publish was refused or not acknowledged.
    #[error("publishing to {subject} failed")]
    Publish {
        /// The subject.
        subject: String,
        /// The client's error.
        #[source]
        source: async_nats::jetstream::context::PublishError,
    },
}

/// Publishes envelopes to pipeline subjects.
#[derive(Clone)]
pub struct Handoff {
    js: jetstream::Context,
    ns: Namespace,
}

impl Handoff {
    /// A hand-off publisher in a namespace.
    pub fn new(js: jetstream::Context, ns: Namespace) -> Self {
        Self { js, ns }
    }

    /// The namespace.
    pub fn namespace(&self) -> &Namespace {
        &self.ns
    }

    /// The headers for handing `envelope` on: the incoming ones less `Nats-*`, the envelope's.
    pub fn headers(envelope: &Envelope, incoming: Option<&HeaderMap>) -> HeaderMap {
        let mut h = headers::without_server_headers(incoming);
        envelope.write_headers(&mut h);
        h
    }

    /// Publishes and awaits the stream's ack. The current span's trace context replaces the
    /// `traceparent` the headers carry, so the next hop's span is a child of this one.
    async fn publish(
        &self,
        subject: String,
        mut h: HeaderMap,
        payload: Bytes,
    ) -> Result<(), HandoffError> {
        switchyard_runtime::telemetry::inject_current(&mut h);
        let ack = self
            .js
            .publish_with_headers(subject.clone(), h, payload)
            .await;
        let result = match ack {
            Ok(future) => future.await.map(|_| ()),
            Err(e) => Err(e),
        };
        result.map_err(|source| HandoffError::Publish { subject, source })
    }

    /// Publishes to `next`'s input subject with the hop `Nats-Msg-Id`, and waits for the
    /// stream's ack. A crash-redelivered hand-off repeats the id and is dropped by the stream.
    pub async fn forward(
        &self,
        next: InputStage,
        envelope: &Envelope,
        mut h: HeaderMap,
        payload: Bytes,
    ) -> Result<(), HandoffError> {
        h.insert(headers::NATS_MSG_ID, envelope.hop_msg_id(next.stage()));
        let subject = StageSubject {
            stage: next,
            address: envelope.address.clone(),
        }
        .format(&self.ns);
        self.publish(subject, h, payload).await
    }

    /// Schedules the message to re-enter `stage` at `at` (a JetStream message schedule on the
    /// stage's delay subject). `tag` makes the publish id unique per scheduling (e.g. the
    /// attempt number); the schedule replaces any earlier one for the same envelope.
    pub async fn schedule(
        &self,
        stage: InputStage,
        envelope: &Envelope,
        mut h: HeaderMap,
        payload: Bytes,
        at: OffsetDateTime,
        tag: &str,
    ) -> Result<(), HandoffError> {
        // A schedule must lie in the future; round up to whole milliseconds ahead.
        let at = at.max(OffsetDateTime::now_utc() + time::Duration::milliseconds(50));
        let target = StageSubject {
            stage,
            address: envelope.address.clone(),
        }
        .format(&self.ns);
        let subject = DelaySubject {
            stage,
            address: envelope.address.clone(),
            key: envelope.id.to_string(),
        }
        .format(&self.ns);
        h.insert(
            "Nats-Schedule",
            format!("@at {}", at.format(&Rfc3339).unwrap_or_default()),
        );
        h.insert("Nats-Schedule-Target", target);
        h.insert(
            headers::NATS_MSG_ID,
            format!(
                "{}:delay:{}:{}:{tag}",
                envelope.id, stage, envelope.attempt.replay
            ),
        );
        self.publish(subject, h, payload).await
    }
}
