//! The ingress stage's handler: validate, stamp the envelope, hand on — or dead-letter.
//!
//! **Encryption at the edge.** For a tenant with encryption on, the payload handed on is
//! sealed under the tenant's current data key, bound to the tenant and the envelope id
//! ([`switchyard_crypt::KeyCache::seal`]; `Switchyard-Key` and `Switchyard-Nonce` carry the
//! key id and nonce), so every later stream, the DLQ included, holds only ciphertext. A
//! payload the HTTP API sealed before storing it (bound to `ingress:<msg id>`,
//! [`switchyard_crypt::edge_seal_id`]) is opened first, validated in clear and sealed again
//! under the envelope id. One that does not open is dead-lettered `payload_tampered`,
//! `unknown_data_key` or `tenant_shredded`; one that cannot be sealed now (no KEK) is held.
//! The envelope's `Switchyard-Schema` is the lowest version that describes it: 1 for a plain
//! payload, 2 for a sealed one ([`switchyard_envelope::schema`]).

use std::sync::Arc;

use async_nats::jetstream;
use bytes::Bytes;
use switchyard_crypt::{KeyCache, OpenError, edge_seal_id, insert_seal_headers};
use switchyard_dlq::DeadLetter;
use switchyard_envelope::{
    Attempt, Envelope, EnvelopeId, SourceRef, TraceContext, headers, schema_for,
};
use switchyard_keys::{Stage, TenantId};
use switchyard_service::{Handled, Handler, Handoff, Outcome};
use switchyard_subjects::{InputStage, StageSubject, SubjectKind};
use switchyard_topology::ResolvedTopology;
use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;

use crate::validate::{Accepted, Validator};

/// Validates producer messages and hands them on to `next`.
pub struct IngressHandler {
    /// The checks.
    pub validator: Arc<Validator>,
    /// The publisher.
    pub handoff: Handoff,
    /// The stage to hand on to.
    pub next: InputStage,
    /// The topology, to tell whose stream a message was read from.
    pub topology: ResolvedTopology,
    /// The tenants' data keys: which tenants have encryption on, and the keys that seal and
    /// open their payloads.
    pub sealing: Arc<KeyCache>,
}

/// How long a message of a tenant with encryption on waits before it is tried again when its
/// payload cannot be sealed or opened now (no KEK, an unreadable key record, KV unreachable).
pub const SEAL_RETRY: std::time::Duration = std::time::Duration::from_secs(5);

/// A trace context for a message that arrived without one: the envelope id as the trace id
/// (one trace per message, from ingress to sink) and the stream sequence as the span id.
fn trace_for(given: TraceContext, id: EnvelopeId, source: &SourceRef) -> TraceContext {
    if given.traceparent.is_some() {
        return given;
    }
    let span = source.sequence.max(1);
    TraceContext {
        traceparent: Some(format!("00-{}-{span:016x}-01", id.0.simple())),
        tracestate: None,
    }
}

/// How far a `Switchyard-Received-At` the message carries may lie from the stream's own
/// timestamp and still be taken as the message's received-at.
const RECEIVED_AT_TOLERANCE: time::Duration = time::Duration::minutes(5);

/// When the message was received: the `Switchyard-Received-At` the HTTP API stamps before it
/// publishes (so the `202` can name the envelope id before the worker reads the message), when
/// present and within five minutes of the stream's timestamp `stored`; else `stored`. A NATS
/// producer setting the header moves only its own message's id within those minutes: the id's
/// random part comes from the tenant's own stream and sequence, so it stays unique. Always in
/// UTC: a producer's `+05:00` names the same instant, and the envelope's field is UTC with `Z`.
pub fn received_at(
    headers: Option<&async_nats::HeaderMap>,
    stored: OffsetDateTime,
) -> OffsetDateTime {
    headers
        .and_then(|h| h.get(headers::RECEIVED_AT))
        .and_then(|v| OffsetDateTime::parse(v.as_str(), &Rfc3339).ok())
        .filter(|at| (*at - stored).abs() <= RECEIVED_AT_TOLERANCE)
        .unwrap_or(stored)
        .to_offset(time::UtcOffset::UTC)
}

/// Stamps the envelope of an accepted message, as one with a plain payload (schema version 1;
/// the handler stamps version 2 once it has sealed the payload, [`schema_for`]).
pub fn stamp(accepted: Accepted, source: SourceRef, received_at: OffsetDateTime) -> Envelope {
    let id = EnvelopeId::derive(&source, received_at);
    Envelope {
        id,
        trace: trace_for(accepted.trace, id, &source),
        address: accepted.address,
        msg_id: accepted.msg_id,
        received_at,
        content_type: accepted.content_type,
        schema_version: schema_for(false),
        attempt: Attempt::default(),
        source,
        destination: None,
    }
}

impl Handler for IngressHandler {
    /// A producer message without a `traceparent` is traced under its envelope id (the same
    /// trace [`stamp`] writes into the envelope).
    fn trace_fallback(&self, msg: &jetstream::Message) -> Option<String> {
        let info = msg.info().ok()?;
        let source = SourceRef {
            stream: info.stream.to_owned(),
            sequence: info.stream_sequence,
        };
        let id = EnvelopeId::derive(&source, received_at(msg.headers.as_ref(), info.published));
        trace_for(TraceContext::default(), id, &source).traceparent
    }

    async fn handle(&self, msg: &jetstream::Message) -> Handled {
        let Ok(info) = msg.info() else {
            return Handled {
                tenant: None,
                outcome: Outcome::Retry {
                    after: std::time::Duration::from_secs(1),
                    reason: "no message metadata".into(),
                },
            };
        };
        let source = SourceRef {
            stream: info.stream.to_owned(),
            sequence: info.stream_sequence,
        };
        let received_at = received_at(msg.headers.as_ref(), info.published);
        let payload = match self.edge_payload(msg).await {
            Ok(payload) => payload,
            Err(handled) => return *handled,
        };
        match self
            .validator
            .check(&msg.subject, msg.headers.as_ref(), &payload, &source)
        {
            Err(rejection) => {
                // A subject that names no valid tenant was still read from one tenant's own
                // stream: the record (and its share of the DLQ) is that tenant's.
                let tenant = rejection.tenant.or_else(|| {
                    self.topology
                        .tenant_of_stream(info.stream)
                        .map(|(_, tenant)| tenant)
                });
                Handled {
                    tenant: tenant.clone(),
                    outcome: Outcome::DeadLetter(Box::new(DeadLetter::for_message(
                        msg,
                        Stage::Ingress,
                        rejection.code,
                        rejection.reason,
                        tenant,
                        rejection.platform,
                    ))),
                }
            }
            Ok(accepted) => {
                let mut envelope = stamp(accepted, source, received_at);
                let tenant = Some(envelope.address.tenant.clone());
                let (payload, seal) = match self.sealing.seal(
                    &envelope.address.tenant,
                    &envelope.id.to_string(),
                    &payload,
                ) {
                    Ok(None) => (payload, None),
                    Ok(Some(sealed)) => (Bytes::from(sealed.ciphertext), Some(sealed.headers)),
                    Err(error) => {
                        tracing::error!(%error, "a payload cannot be sealed: the message is held");
                        return Handled {
                            tenant,
                            outcome: Outcome::Retry {
                                after: SEAL_RETRY,
                                reason: error.to_string(),
                            },
                        };
                    }
                };
                // The lowest version that describes it: a sealed payload is version 2, so a
                // build that reads only version 1 refuses it rather than deliver ciphertext.
                envelope.schema_version = schema_for(seal.is_some());
                let mut h = headers::producer_headers(msg.headers.as_ref());
                envelope.write_headers(&mut h);
                if let Some(seal) = &seal {
                    insert_seal_headers(&mut h, seal);
                }
                let outcome = match self.handoff.forward(self.next, &envelope, h, payload).await {
                    Ok(()) => Outcome::Forwarded,
                    Err(e) => e.outcome(msg, Stage::Ingress, &envelope),
                };
                Handled { tenant, outcome }
            }
        }
    }
}

impl IngressHandler {
    /// The producer's payload in clear: as it came, or — when it carries seal headers (the HTTP
    /// API sealed it before storing it) — opened for the subject's tenant, bound to
    /// `ingress:<Nats-Msg-Id>`. Seal headers on a message of a tenant that never had
    /// encryption on are a producer's own noise: they are dropped with the other
    /// `Switchyard-*` headers and the payload is taken as it is. `Err` is the decision for a
    /// payload that does not open: dead-lettered with its precise code, or held while it
    /// cannot be opened now.
    async fn edge_payload(&self, msg: &jetstream::Message) -> Result<Bytes, Box<Handled>> {
        let h = msg.headers.as_ref();
        let sealed = h.is_some_and(|h| {
            h.get(switchyard_crypt::KEY_HEADER).is_some()
                || h.get(switchyard_crypt::NONCE_HEADER).is_some()
        });
        if !sealed {
            return Ok(msg.payload.clone());
        }
        // A subject without a valid tenant is refused by validation, whatever the payload.
        let Ok(subject) = StageSubject::parse(&self.validator.ns, &msg.subject) else {
            return Ok(msg.payload.clone());
        };
        let tenant: TenantId = subject.address.tenant.clone();
        let msg_id = h
            .and_then(|h| h.get(headers::NATS_MSG_ID))
            .map_or("", |v| v.as_str());
        match self
            .sealing
            .open(&tenant, &edge_seal_id(msg_id), h, &msg.payload)
            .await
        {
            Ok(opened) => Ok(opened.payload().clone()),
            Err(OpenError::NotEncrypted { .. }) => Ok(msg.payload.clone()),
            Err(error) => {
                let outcome = match error.dlq_code() {
                    Some(code) => Outcome::DeadLetter(Box::new(DeadLetter::for_message(
                        msg,
                        Stage::Ingress,
                        code,
                        error.to_string(),
                        Some(tenant.clone()),
                        Some(subject.address.platform.clone()),
                    ))),
                    None => {
                        tracing::error!(%error, "a sealed payload cannot be opened now: the message is held");
                        Outcome::Retry {
                            after: SEAL_RETRY,
                            reason: error.to_string(),
                        }
                    }
                };
                Err(Box::new(Handled {
                    tenant: Some(tenant),
                    outcome,
                }))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_producers_received_at_within_the_tolerance_is_taken_in_utc() {
        let stored = OffsetDateTime::parse("2026-11-23T10:00:00Z", &Rfc3339).unwrap();
        let mut h = async_nats::HeaderMap::new();
        h.insert(headers::RECEIVED_AT, "2026-11-23T15:01:00.123+05:00");
        let at = received_at(Some(&h), stored);
        assert_eq!(at.format(&Rfc3339).unwrap(), "2026-11-23T10:01:00.123Z");
        h.insert(headers::RECEIVED_AT, "2026-11-23T16:00:00+05:00");
        assert_eq!(
            received_at(Some(&h), stored),
            stored,
            "an hour off: the stream's time"
        );
    }
}
