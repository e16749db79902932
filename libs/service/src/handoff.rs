//! Publishing to the next stage, and scheduling a delayed re-entry.

use async_nats::HeaderMap;
use async_nats::jetstream;
use async_nats::jetstream::context::PublishErrorKind;
use bytes::Bytes;
use switchyard_dlq::{DeadLetter, DlqCode};
use switchyard_envelope::{Envelope, headers};
use switchyard_keys::Stage;
use switchyard_subjects::{
    DelaySubject, InputStage, Namespace, SizeClass, StageSubject, SubjectKind,
};
use time::OffsetDateTime;

use std::sync::Arc;

use crate::high_water::HighWater;
use crate::settle::Outcome;
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
    /// The target stream is above its high-water mark ([`crate::high_water`]): nothing was
    /// published.
    #[error("{stream} is {:.0}% full, above its high-water mark; nothing was published to {subject}", fill * 100.0)]
    AboveHighWater {
        /// The stream.
        stream: String,
        /// The subject that was not published to.
        subject: String,
        /// Its fill, as a fraction of its limits.
        fill: f64,
    },
}

/// What kind of failure a [`HandoffError`] is: the one decision a stage makes on it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HandoffErrorKind {
    /// The message (payload plus headers) is larger than the server's `max_payload` or the
    /// next stream's `max_msg_size`: no retry can succeed, so it is permanent (dead-letter it
    /// `payload_too_large`).
    TooLarge,
    /// Anything else (no stream, a full stream, a timeout, a lost connection): transient.
    Other,
}

/// The JetStream error a stream answers a message over its `max_msg_size` with.
const MESSAGE_TOO_LARGE: async_nats::jetstream::ErrorCode = async_nats::jetstream::ErrorCode(10054);

/// The JetStream error a stream answers a message whose header block is over 65,535 bytes
/// with (`JSMessageHeaderTooLarge`): the stage's own headers pushed a producer's large block
/// over it, and no retry can shrink it.
const HEADER_TOO_LARGE: async_nats::jetstream::ErrorCode = async_nats::jetstream::ErrorCode(10097);

/// The text of the store failure (`10077`, which also covers a full stream) for a message
/// over a size limit.
const SIZE_EXCEEDED_TEXT: &str = "message size exceeds maximum allowed";

/// Whether JetStream refused a publish because the message can never fit: over the server's
/// `max_payload` (the client's own check), over the stream's `max_msg_size` (error 10054), a
/// header block over 65,535 bytes (10097), or the store failure (10077) whose text says a size
/// was exceeded (10077 also covers a full stream, which is not this). The one rule for every
/// publish of a message a producer or a stage cannot shrink: a stage dead-letters it
/// `payload_too_large`, ingress's HTTP API answers `413`.
pub fn too_large(error: &async_nats::jetstream::context::PublishError) -> bool {
    if error.kind() == PublishErrorKind::MaxPayloadExceeded {
        return true;
    }
    let server = std::error::Error::source(error)
        .and_then(|e| e.downcast_ref::<async_nats::jetstream::Error>());
    server.is_some_and(|e| {
        e.error_code() == MESSAGE_TOO_LARGE
            || e.error_code() == HEADER_TOO_LARGE
            || (e.error_code() == async_nats::jetstream::ErrorCode::STREAM_STORE_FAILED
                && e.to_string()
                    .to_ascii_lowercase()
                    .contains(SIZE_EXCEEDED_TEXT))
    })
}

impl HandoffError {
    /// Whether the hand-off can never succeed ([`HandoffErrorKind::TooLarge`]) or may on a
    /// retry.
    pub fn kind(&self) -> HandoffErrorKind {
        match self {
            HandoffError::Publish { source, .. } if too_large(source) => HandoffErrorKind::TooLarge,
            _ => HandoffErrorKind::Other,
        }
    }

    /// What a stage does with its failed hand-off of `msg` (one rule for every stage): a
    /// message too large for the next hop is dead-lettered `payload_too_large` at once (no
    /// retry can carry it); anything else is retried after a second.
    pub fn outcome(&self, msg: &jetstream::Message, stage: Stage, envelope: &Envelope) -> Outcome {
        match (self, self.kind()) {
            (HandoffError::Publish { subject, source }, HandoffErrorKind::TooLarge) => {
                Outcome::DeadLetter(Box::new(DeadLetter::for_message(
                    msg,
                    stage,
                    DlqCode::PayloadTooLarge,
                    format!(
                        "the message ({} bytes of payload) is too large to hand on to \
                         {subject}: {source}",
                        msg.payload.len()
                    ),
                    Some(envelope.address.tenant.clone()),
                    Some(envelope.address.platform.clone()),
                )))
            }
            (HandoffError::Publish { source, .. }, _) => Outcome::Retry {
                after: std::time::Duration::from_secs(1),
                reason: format!("{self}: {source}"),
            },
            (HandoffError::AboveHighWater { .. }, _) => Outcome::Retry {
                after: std::time::Duration::from_secs(1),
                reason: self.to_string(),
            },
        }
    }
}

/// Publishes envelopes to pipeline subjects.
#[derive(Clone)]
pub struct Handoff {
    js: jetstream::Context,
    ns: Namespace,
    /// A stream whose high-water mark stops hand-offs and schedules into it.
    high_water: Option<Arc<HighWater>>,
}

impl Handoff {
    /// A hand-off publisher in a namespace.
    pub fn new(js: jetstream::Context, ns: Namespace) -> Self {
        Self {
            js,
            ns,
            high_water: None,
        }
    }

    /// The same publisher, refusing ([`HandoffError::AboveHighWater`]) to add to `mark`'s
    /// stage while its stream is above its high-water mark.
    pub fn with_high_water(mut self, mark: Arc<HighWater>) -> Self {
        self.high_water = Some(mark);
        self
    }

    /// Takes room for a message of `bytes` in `stage`'s stream when it is watched; fails when
    /// that would pass its mark.
    fn check_room(
        &self,
        stage: InputStage,
        subject: &str,
        bytes: usize,
    ) -> Result<(), HandoffError> {
        self.check_room_for(stage, subject, bytes, 1)
    }

    /// Takes room for `messages` messages of `bytes` in all in `stage`'s stream when it is
    /// watched, all or none; fails when they would pass its mark.
    fn check_room_for(
        &self,
        stage: InputStage,
        subject: &str,
        bytes: usize,
        messages: u64,
    ) -> Result<(), HandoffError> {
        match &self.high_water {
            Some(mark) if mark.stage() == stage => {
                mark.reserve_all(bytes, messages)
                    .map_err(|fill| HandoffError::AboveHighWater {
                        stream: mark.stream().to_owned(),
                        subject: subject.to_owned(),
                        fill,
                    })
            }
            _ => Ok(()),
        }
    }

    /// A message's size as a stream counts it, near enough: subject, headers, payload.
    fn stored_size(subject: &str, h: &HeaderMap, payload: &Bytes) -> usize {
        subject.len() + switchyard_envelope::headers::wire_size(h) + payload.len()
    }

    /// The [`SizeClass`] of a hand-off with headers `h` and `payload` (their wire size, in
    /// bytes): the last token of a sized stage's subject.
    fn size_class(h: &HeaderMap, payload: &Bytes) -> SizeClass {
        SizeClass::of(headers::message_size(h, payload))
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

    /// The headers for handing on a message whose envelope this stage leaves as it is
    /// (idempotency, backpressure): the incoming ones less `Nats-*`, as they are. The same as
    /// [`Handoff::headers`] with the envelope read from them, without writing the thirteen
    /// envelope headers again.
    pub fn pass_on_headers(incoming: Option<&HeaderMap>) -> HeaderMap {
        headers::without_server_headers(incoming)
    }

    /// Publishes and awaits the stream's ack. The current span's trace context replaces the
    /// `traceparent` the headers carry, so the next hop's span is a child of this one.
    async fn publish(
        &self,
        subject: String,
        h: HeaderMap,
        payload: Bytes,
    ) -> Result<(), HandoffError> {
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
    /// A sized stage's subject carries the [`SizeClass`] of exactly what is sent (headers
    /// complete, the current trace context included).
    pub async fn forward(
        &self,
        next: InputStage,
        envelope: &Envelope,
        h: HeaderMap,
        payload: Bytes,
    ) -> Result<(), HandoffError> {
        let (subject, h) = self.hand_off_to(next, envelope, h, &payload);
        self.check_room(next, &subject, Self::stored_size(&subject, &h, &payload))?;
        self.publish(subject, h, payload).await
    }

    /// A hand-off of `envelope` to `next`, ready to publish: its subject (sized by exactly what
    /// is sent) and headers `h` with the hop `Nats-Msg-Id` and the current trace context.
    fn hand_off_to(
        &self,
        next: InputStage,
        envelope: &Envelope,
        mut h: HeaderMap,
        payload: &Bytes,
    ) -> (String, HeaderMap) {
        h.insert(headers::NATS_MSG_ID, envelope.hop_msg_id(next.stage()));
        switchyard_runtime::telemetry::inject_current(&mut h);
        let subject = StageSubject {
            stage: next,
            address: envelope.address.clone(),
        }
        .format_sized(&self.ns, Self::size_class(&h, payload));
        (subject, h)
    }

    /// Hands several copies of one message on to `next` ([`Handoff::forward`] each, at once),
    /// with room for all of them taken first: above the high-water mark none is published, so
    /// a refusal never leaves some copies stored (and delivered) while the rest wait for a
    /// redelivery that may come after the stream's duplicate window. Fails with the first
    /// error; copies stored before a publish error are dropped as duplicates when it is tried
    /// again within the window. All or nothing can wait longer than one copy would: while
    /// single hand-offs keep the stream just under its mark, a wide fan-out waits for room
    /// for all its copies.
    pub async fn forward_all(
        &self,
        next: InputStage,
        copies: Vec<(Envelope, HeaderMap)>,
        payload: &Bytes,
    ) -> Result<(), HandoffError> {
        let prepared: Vec<(String, HeaderMap)> = copies
            .into_iter()
            .map(|(envelope, h)| self.hand_off_to(next, &envelope, h, payload))
            .collect();
        let Some((first, _)) = prepared.first() else {
            return Ok(());
        };
        let bytes = prepared
            .iter()
            .map(|(subject, h)| Self::stored_size(subject, h, payload))
            .sum();
        self.check_room_for(next, first, bytes, prepared.len() as u64)?;
        let published = prepared
            .into_iter()
            .map(|(subject, h)| self.publish(subject, h, payload.clone()));
        futures::future::join_all(published)
            .await
            .into_iter()
            .collect()
    }

    /// Schedules the message to re-enter `stage` at `at` (a JetStream message schedule on the
    /// stage's delay subject). `tag` makes the publish id unique per scheduling (e.g. the
    /// attempt number); the schedule replaces any earlier one for the same copy of the
    /// envelope ([`Envelope::copy_key`]: a fanned-out copy has its own delay subject).
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
        switchyard_runtime::telemetry::inject_current(&mut h);
        let target = StageSubject {
            stage,
            address: envelope.address.clone(),
        }
        .format_sized(&self.ns, Self::size_class(&h, &payload));
        let subject = DelaySubject {
            stage,
            address: envelope.address.clone(),
            key: envelope.copy_key(),
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
                envelope.copy_key(),
                stage,
                envelope.attempt.replay
            ),
        );
        self.check_room(stage, &subject, Self::stored_size(&subject, &h, &payload))?;
        self.publish(subject, h, payload).await
    }
}

#[cfg(test)]
mod tests {
    use async_nats::jetstream::context::PublishError;

    use super::*;

    fn failed(kind: PublishErrorKind) -> HandoffError {
        HandoffError::Publish {
            subject: "idempotency.v1.acme.ops.hooks".into(),
            source: PublishError::new(kind),
        }
    }

    #[test]
    fn a_message_over_the_server_max_payload_is_too_large_and_other_failures_are_not() {
        assert_eq!(
            failed(PublishErrorKind::MaxPayloadExceeded).kind(),
            HandoffErrorKind::TooLarge
        );
        for kind in [
            PublishErrorKind::TimedOut,
            PublishErrorKind::StreamNotFound,
            PublishErrorKind::BrokenPipe,
            PublishErrorKind::Other,
        ] {
            assert_eq!(failed(kind).kind(), HandoffErrorKind::Other, "{kind:?}");
        }
    }
}
