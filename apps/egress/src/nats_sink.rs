//! NATS delivery: publish the payload to the route's subject with the envelope headers.
//!
//! Headers are the message's own less the server-interpreted `Nats-*` ones, egress's attempt
//! log and the seal headers (`Switchyard-Key`, `Switchyard-Nonce`: the sink gets the payload in
//! clear, so `Switchyard-Schema` is 1, the version of a plain payload), plus `Nats-Msg-Id` =
//! the copy key ([`Envelope::copy_key`]: the envelope id, with `_<destination>` on a fanned-out
//! copy), so a JetStream sink drops a redelivered copy within its duplicate window but stores
//! each destination's copy of one message, even when one stream captures several destinations'
//! subjects.
//! How an attempt is confirmed depends on the route:
//!
//! | route | sent as | delivered when | nobody listening |
//! |---|---|---|---|
//! | `jetstream: true` | JetStream publish | the stream acks | no responders (no stream): retryable |
//! | core (default) | request, reply inbox, the route's `timeout_ms` | any reply arrives (content not read) | no responders: retryable |
//! | core, `fire_and_forget: true` | publish | flushed to the server | not detectable: counts as delivered |

use async_nats::client::RequestErrorKind;
use async_nats::jetstream::{self, context::PublishErrorKind};
use async_nats::{HeaderMap, Request};
use bytes::Bytes;
use switchyard_envelope::headers::ATTEMPTS_LOG;
use switchyard_envelope::{Envelope, headers, schema_for};
use switchyard_registry::NatsRoute;
use switchyard_subjects::{DlqFilter, InputStage, Namespace};

use crate::classify::{Attempted, NatsFailure};

/// Publishes messages to NATS routes.
#[derive(Clone)]
pub struct NatsSink {
    client: async_nats::Client,
    js: jetstream::Context,
}

impl NatsSink {
    /// A sink publishing through `client` (core) and `js` (JetStream routes).
    pub fn new(client: async_nats::Client, js: jetstream::Context) -> Self {
        Self { client, js }
    }

    /// Publishes one message and reports what happened. The caller bounds the time it takes.
    pub async fn publish(
        &self,
        route: &NatsRoute,
        envelope: &Envelope,
        incoming: Option<&HeaderMap>,
        payload: Bytes,
    ) -> Attempted {
        let h = sink_headers(envelope, incoming);
        let subject = route.subject.clone();
        if route.jetstream {
            let ack = match self.js.publish_with_headers(subject, h, payload).await {
                Ok(ack) => ack.await,
                Err(error) => Err(error),
            };
            match ack {
                Ok(_) => Attempted::NatsPublished,
                Err(error) => {
                    let kind = match error.kind() {
                        PublishErrorKind::StreamNotFound => NatsFailure::NoResponders,
                        PublishErrorKind::TimedOut => NatsFailure::Timeout,
                        PublishErrorKind::BrokenPipe => NatsFailure::Connection,
                        PublishErrorKind::MaxPayloadExceeded => NatsFailure::TooLarge,
                        _ => NatsFailure::Refused,
                    };
                    Attempted::NatsFailed {
                        kind,
                        error: error.to_string(),
                    }
                }
            }
        } else if !route.fire_and_forget {
            let request = Request::new()
                .headers(h)
                .payload(payload)
                .timeout(Some(std::time::Duration::from_millis(route.timeout_ms)));
            match self.client.send_request(subject, request).await {
                // Any reply is the subscriber's acknowledgement; its content is not read.
                Ok(_reply) => Attempted::NatsPublished,
                Err(error) => {
                    let (kind, error) = match error.kind() {
                        RequestErrorKind::NoResponders => (
                            NatsFailure::NoResponders,
                            format!(
                                "no responders on {}: nobody is subscribed to the route's subject",
                                route.subject
                            ),
                        ),
                        RequestErrorKind::TimedOut => (
                            NatsFailure::Timeout,
                            format!(
                                "no reply on {} within {} ms",
                                route.subject, route.timeout_ms
                            ),
                        ),
                        RequestErrorKind::MaxPayloadExceeded => {
                            (NatsFailure::TooLarge, error.to_string())
                        }
                        RequestErrorKind::InvalidSubject | RequestErrorKind::Other => {
                            (NatsFailure::Connection, error.to_string())
                        }
                    };
                    Attempted::NatsFailed { kind, error }
                }
            }
        } else {
            if let Err(error) = self.client.publish_with_headers(subject, h, payload).await {
                let kind = match error.kind() {
                    async_nats::client::PublishErrorKind::MaxPayloadExceeded => {
                        NatsFailure::TooLarge
                    }
                    _ => NatsFailure::Connection,
                };
                return Attempted::NatsFailed {
                    kind,
                    error: error.to_string(),
                };
            }
            match self.client.flush().await {
                Ok(()) => Attempted::NatsPublished,
                Err(error) => Attempted::NatsFailed {
                    kind: NatsFailure::Connection,
                    error: error.to_string(),
                },
            }
        }
    }
}

/// The headers a NATS sink receives.
pub fn sink_headers(envelope: &Envelope, incoming: Option<&HeaderMap>) -> HeaderMap {
    let mut h = headers::without_server_headers(incoming);
    h.retain(|name| {
        !(name.eq_ignore_ascii_case(ATTEMPTS_LOG)
            || switchyard_crypt::cache::SEAL_HEADERS
                .iter()
                .any(|seal| name.eq_ignore_ascii_case(seal)))
    });
    envelope.write_headers(&mut h);
    // The sink's copy carries the plaintext: the lowest version that describes it is 1.
    h.insert(
        headers::name(headers::SCHEMA),
        schema_for(false).to_string(),
    );
    // The copy key, not the envelope id: JetStream de-duplicates by `Nats-Msg-Id` across a whole
    // stream, so two destinations whose subjects one stream captures would otherwise get the
    // first copy stored and the second acked as a duplicate, never stored.
    h.insert(headers::NATS_MSG_ID, envelope.copy_key());
    // The sink's copy is a child of this delivery's span (same trace).
    switchyard_runtime::telemetry::inject_current(&mut h);
    h
}

/// Switchyard's own subject filters in one deployment (every stage's input and delay
/// subjects, the DLQ's, receipts', control, alerts', attempts' and events'), which no NATS
/// route may publish into. Built once per namespace: a route is checked at every attempt.
#[derive(Debug, Clone)]
pub struct OwnSubjects {
    filters: std::sync::Arc<[String]>,
}

impl OwnSubjects {
    /// The filters of namespace `ns`.
    pub fn of(ns: &Namespace) -> Self {
        let mut filters: Vec<String> = InputStage::ALL
            .iter()
            .flat_map(|stage| [ns.stage_filter(*stage, None), ns.delay_filter(*stage)])
            .collect();
        filters.push(ns.dlq_filter(&DlqFilter::default()));
        filters.push(ns.receipt_filter(None));
        filters.push(ns.control_filter());
        filters.push(ns.alert_filter(None));
        filters.push(ns.attempt_filter(None));
        filters.push(ns.event_filter(None, None));
        Self {
            filters: filters.into(),
        }
    }

    /// Why a route's subject must not be published to: a subject inside one of these filters
    /// (publishing to `egress.v1.…` would feed egress itself) or a system subject (`$JS.…`,
    /// `$KV.…`, `$SYS.…`). `None` when the subject is fine.
    pub fn forbidden(&self, subject: &str) -> Option<String> {
        if subject.starts_with('$') {
            return Some(format!(
                "route subject {subject:?} is a NATS system subject"
            ));
        }
        self.filters
            .iter()
            .find(|filter| switchyard_subjects::pattern_matches(filter, subject))
            .map(|filter| {
                format!("route subject {subject:?} is inside Switchyard's own subjects ({filter})")
            })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_nats_sink_gets_the_plaintext_as_a_version_1_envelope_without_seal_headers() {
        let source = switchyard_envelope::SourceRef {
            stream: "INGRESS_acme".into(),
            sequence: 1,
        };
        let received_at = time::OffsetDateTime::now_utc();
        let envelope = Envelope {
            id: switchyard_envelope::EnvelopeId::derive(&source, received_at),
            address: switchyard_keys::Address::parse("acme", "ops", "billing").unwrap(),
            msg_id: switchyard_keys::MsgId::new("order-1").unwrap(),
            received_at,
            content_type: None,
            trace: Default::default(),
            schema_version: switchyard_envelope::schema_for(true),
            attempt: Default::default(),
            source,
            destination: None,
        };
        let mut incoming = HeaderMap::new();
        envelope.write_headers(&mut incoming);
        incoming.insert(switchyard_crypt::KEY_HEADER, "3f9c0a7de21b4c55");
        incoming.insert(switchyard_crypt::NONCE_HEADER, "AAAAAAAAAAAAAAAA");
        incoming.insert("X-Order", "42");
        let h = sink_headers(&envelope, Some(&incoming));
        assert!(h.get(switchyard_crypt::KEY_HEADER).is_none());
        assert!(h.get(switchyard_crypt::NONCE_HEADER).is_none());
        assert_eq!(
            h.get(headers::SCHEMA).map(|v| v.as_str()),
            Some("1"),
            "the plaintext copy is a version 1 envelope"
        );
        assert_eq!(h.get("X-Order").map(|v| v.as_str()), Some("42"));
    }

    #[test]
    fn pipeline_and_system_subjects_are_refused() {
        let own = OwnSubjects::of(&Namespace::default());
        assert!(own.forbidden("egress.v1.acme.ops.slack").is_some());
        assert!(own.forbidden("ingress.v1.acme.ops.slack").is_some());
        assert!(own.forbidden("dlq.v1.acme.egress.slack").is_some());
        assert!(own.forbidden("$JS.API.STREAM.LIST").is_some());
        assert!(own.forbidden("sink.acme.billing").is_none());
        assert!(own.forbidden("egress.v1.acme").is_some());
        assert!(own.forbidden("delay.v1.egress.a.b.c.k").is_some());
        assert!(own.forbidden("delivered.v1.acme.ops.slack").is_some());
        assert!(own.forbidden("attempts.v1.acme").is_some());
        assert!(own.forbidden("events.v1.acme.breaker_opened").is_some());
        assert!(own.forbidden("egress.v2.acme.ops.slack").is_none());
        assert!(own.forbidden("egress.v1").is_none());
        let staging = OwnSubjects::of(&Namespace::new(Some("staging".parse().unwrap())));
        assert!(staging.forbidden("staging.egress.v1.a.b.c").is_some());
        assert!(staging.forbidden("egress.v1.a.b.c").is_none());
    }
}
