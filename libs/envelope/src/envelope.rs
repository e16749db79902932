//! The typed envelope ingress stamps on every accepted message, and its header mapping.

use std::fmt;
use std::str::FromStr;

use async_nats::HeaderMap;
use base64::Engine;
use serde::{Deserialize, Serialize};
use switchyard_keys::{Address, DestinationId, MsgId, Stage};
use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;
use uuid::Uuid;

use crate::producer::text;
use crate::{EnvelopeError, headers, schema};

/// Namespace for deriving envelope ids (fixed forever: changing it changes every id).
const ID_NAMESPACE: Uuid = Uuid::from_u128(0x5d1c_7a2e_4b8f_4c3a_9e61_2f0d_8a7b_c4e9);

/// The envelope id: a UUIDv7 whose time part is when ingress stored the message and whose
/// random part is derived from the ingress stream and sequence. Deterministic, so an ingress
/// crash-redelivery stamps the same id and the hop is de-duplicated downstream.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(transparent)]
pub struct EnvelopeId(pub Uuid);

impl EnvelopeId {
    /// Derives the id of the message stored at `source` at `received_at`.
    pub fn derive(source: &SourceRef, received_at: OffsetDateTime) -> Self {
        let name = Uuid::new_v5(&ID_NAMESPACE, source.to_string().as_bytes());
        let mut tail = [0u8; 10];
        tail.copy_from_slice(&name.as_bytes()[..10]);
        let millis = u64::try_from(received_at.unix_timestamp_nanos() / 1_000_000).unwrap_or(0);
        Self(uuid::Builder::from_unix_timestamp_millis(millis, &tail).into_uuid())
    }
}

impl fmt::Display for EnvelopeId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}

impl FromStr for EnvelopeId {
    type Err = uuid::Error;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Uuid::parse_str(s).map(Self)
    }
}

/// Where ingress read a message: stream name and sequence (`<stream>:<sequence>`).
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct SourceRef {
    /// The stream (the ingress stream's name in this deployment).
    pub stream: String,
    /// The stream sequence.
    pub sequence: u64,
}

impl fmt::Display for SourceRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}", self.stream, self.sequence)
    }
}

impl FromStr for SourceRef {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let (stream, seq) = s.rsplit_once(':').ok_or("expected <stream>:<sequence>")?;
        let sequence = seq.parse().map_err(|_| "sequence is not a number")?;
        if stream.is_empty() {
            return Err("empty stream name".into());
        }
        Ok(Self {
            stream: stream.to_owned(),
            sequence,
        })
    }
}

/// W3C trace context carried across hops.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct TraceContext {
    /// `traceparent`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub traceparent: Option<String>,
    /// `tracestate`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tracestate: Option<String>,
}

impl TraceContext {
    pub(crate) fn read(headers: Option<&HeaderMap>) -> Self {
        Self {
            traceparent: text(headers, headers::TRACEPARENT).map(str::to_owned),
            tracestate: text(headers, headers::TRACESTATE).map(str::to_owned),
        }
    }
}

/// Attempt counters.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Attempt {
    /// Delivery attempts egress has made.
    pub delivery: u32,
    /// Replays from the DLQ.
    pub replay: u32,
}

/// The envelope: everything Switchyard knows about a message, apart from its payload.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Envelope {
    /// Deterministic UUIDv7.
    pub id: EnvelopeId,
    /// Tenant, team and platform, from the ingress subject.
    #[serde(flatten)]
    pub address: Address,
    /// The producer's message id.
    pub msg_id: MsgId,
    /// When the ingress stream stored the message.
    #[serde(with = "time::serde::rfc3339")]
    pub received_at: OffsetDateTime,
    /// The payload's media type.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub content_type: Option<String>,
    /// Trace context.
    pub trace: TraceContext,
    /// Envelope schema version ([`crate::schema`]): the lowest that describes the envelope, 1
    /// for a plain payload and 2 for a sealed one ([`crate::schema_for`]).
    pub schema_version: u16,
    /// Attempt counters.
    pub attempt: Attempt,
    /// Where ingress read the message.
    pub source: SourceRef,
    /// The destination this copy is for, once egress has fanned the message out to a tenant's
    /// destinations (header `Switchyard-Destination`); `None` before, and for a message
    /// delivered by its route. Each copy has its own attempts, schedules, DLQ entry and replay.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub destination: Option<Destination>,
}

/// Which of a tenant's deliveries a fanned-out copy is ([`Envelope::destination`]), as the
/// `Switchyard-Destination` header writes it.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(into = "String", try_from = "String")]
pub enum Destination {
    /// One of the tenant's destinations, by id.
    Named(DestinationId),
    /// The tenant's route for the message's (team or `_`, platform), written `_route`: the
    /// one-destination subscription every route is.
    Route,
}

impl Destination {
    /// The header value of [`Destination::Route`] (an id never starts with `_`).
    pub const ROUTE: &'static str = "_route";

    /// The header value: the destination id, or `_route`.
    pub fn as_str(&self) -> &str {
        match self {
            Destination::Named(id) => id.as_str(),
            Destination::Route => Self::ROUTE,
        }
    }
}

impl fmt::Display for Destination {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for Destination {
    type Err = switchyard_keys::KeyError;

    fn from_str(raw: &str) -> Result<Self, Self::Err> {
        if raw == Self::ROUTE {
            return Ok(Destination::Route);
        }
        raw.parse().map(Destination::Named)
    }
}

impl From<Destination> for String {
    fn from(d: Destination) -> String {
        d.as_str().to_owned()
    }
}

impl TryFrom<String> for Destination {
    type Error = switchyard_keys::KeyError;

    fn try_from(raw: String) -> Result<Self, Self::Error> {
        raw.parse()
    }
}

fn required<'a>(h: Option<&'a HeaderMap>, name: &'static str) -> Result<&'a str, EnvelopeError> {
    text(h, name).ok_or(EnvelopeError::MissingHeader(name))
}

fn parsed<T, E: fmt::Display>(
    h: Option<&HeaderMap>,
    name: &'static str,
    parse: impl FnOnce(&str) -> Result<T, E>,
) -> Result<T, EnvelopeError> {
    let raw = required(h, name)?;
    parse(raw).map_err(|e| EnvelopeError::invalid(name, raw, e))
}

fn counter(h: Option<&HeaderMap>, name: &'static str) -> Result<u32, EnvelopeError> {
    match text(h, name) {
        None => Ok(0),
        Some(raw) => raw
            .parse()
            .map_err(|e| EnvelopeError::invalid(name, raw, e)),
    }
}

impl Envelope {
    /// Writes every envelope header into `headers`, replacing any present (a producer cannot
    /// spoof them); other headers are left as they are. Does not set `Nats-Msg-Id`: the
    /// publisher sets the hop id for the subject it publishes to.
    pub fn write_headers(&self, h: &mut HeaderMap) {
        h.insert(headers::name(headers::ID), self.id.to_string());
        h.insert(headers::name(headers::TENANT), self.address.tenant.as_str());
        h.insert(headers::name(headers::TEAM), self.address.team.as_str());
        h.insert(
            headers::name(headers::PLATFORM),
            self.address.platform.as_str(),
        );
        h.insert(headers::name(headers::MSG_ID), self.msg_id.as_str());
        h.insert(
            headers::name(headers::RECEIVED_AT),
            self.received_at.format(&Rfc3339).unwrap_or_default(),
        );
        h.insert(
            headers::name(headers::SCHEMA),
            self.schema_version.to_string(),
        );
        h.insert(
            headers::name(headers::ATTEMPT),
            self.attempt.delivery.to_string(),
        );
        h.insert(
            headers::name(headers::REPLAY),
            self.attempt.replay.to_string(),
        );
        h.insert(headers::name(headers::SOURCE), self.source.to_string());
        if let Some(ct) = &self.content_type {
            h.insert(headers::name(headers::CONTENT_TYPE), ct.as_str());
        }
        if let Some(tp) = &self.trace.traceparent {
            h.insert(headers::name(headers::TRACEPARENT), tp.as_str());
        }
        if let Some(ts) = &self.trace.tracestate {
            h.insert(headers::name(headers::TRACESTATE), ts.as_str());
        }
        if let Some(destination) = &self.destination {
            h.insert(headers::name(headers::DESTINATION), destination.as_str());
        }
    }

    /// Reads an envelope stamped by ingress. Every stage after ingress calls this; an error
    /// names the missing or malformed header, or ([`EnvelopeError::UnsupportedSchema`]) the
    /// `Switchyard-Schema` version found and the range this build reads
    /// ([`schema::readable`]).
    pub fn from_headers(h: Option<&HeaderMap>) -> Result<Self, EnvelopeError> {
        let schema_version = schema::readable(parsed(h, headers::SCHEMA, u16::from_str)?)?;
        Ok(Self {
            id: parsed(h, headers::ID, EnvelopeId::from_str)?,
            address: Address::new(
                parsed(h, headers::TENANT, |raw| raw.parse())?,
                parsed(h, headers::TEAM, |raw| raw.parse())?,
                parsed(h, headers::PLATFORM, |raw| raw.parse())?,
            ),
            msg_id: parsed(h, headers::MSG_ID, |raw| MsgId::new(raw))?,
            received_at: parsed(h, headers::RECEIVED_AT, |raw| {
                OffsetDateTime::parse(raw, &Rfc3339)
            })?,
            content_type: text(h, headers::CONTENT_TYPE).map(str::to_owned),
            trace: TraceContext::read(h),
            schema_version,
            attempt: Attempt {
                delivery: counter(h, headers::ATTEMPT)?,
                replay: counter(h, headers::REPLAY)?,
            },
            source: parsed(h, headers::SOURCE, SourceRef::from_str)?,
            destination: match text(h, headers::DESTINATION) {
                None => None,
                Some(raw) => Some(
                    raw.parse()
                        .map_err(|e| EnvelopeError::invalid(headers::DESTINATION, raw, e))?,
                ),
            },
        })
    }

    /// The deterministic `Nats-Msg-Id` for publishing this message to `next`:
    /// `<envelope id>:<stage>:<replay>`. A crash-redelivered hand-off repeats it and JetStream
    /// drops the copy; a replay bumps the replay counter and so gets a fresh id.
    pub fn hop_msg_id(&self, next: Stage) -> String {
        format!("{}:{}:{}", self.copy_key(), next, self.attempt.replay)
    }

    /// What tells this copy of the message from the others: the envelope id, followed by
    /// `_<destination>` on a fanned-out copy (`0193…-…_orders-hook`; the route's copy,
    /// `_route`, gives `0193…__route`). One token
    /// of `[A-Za-z0-9_-]` (an envelope id holds no `_`, so keys of different copies never
    /// collide): the key of the copy's delay subject and the start of its hop ids.
    pub fn copy_key(&self) -> String {
        match &self.destination {
            None => self.id.to_string(),
            Some(destination) => format!("{}_{destination}", self.id),
        }
    }

    /// The JSON view for the CLI and HTTP: the envelope plus the payload.
    pub fn view<'a>(&'a self, payload: &[u8]) -> EnvelopeView<'a> {
        EnvelopeView {
            envelope: self,
            payload: PayloadView::of(payload),
        }
    }
}

/// A payload for humans and JSON: UTF-8 text as is, anything else as base64.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PayloadView {
    /// `utf8` or `base64`.
    pub encoding: String,
    /// The payload in that encoding.
    pub data: String,
    /// The payload's length in bytes.
    pub bytes: usize,
}

impl PayloadView {
    /// Views payload bytes.
    pub fn of(payload: &[u8]) -> Self {
        match std::str::from_utf8(payload) {
            Ok(text) => Self {
                encoding: "utf8".into(),
                data: text.to_owned(),
                bytes: payload.len(),
            },
            Err(_) => Self {
                encoding: "base64".into(),
                data: base64::engine::general_purpose::STANDARD.encode(payload),
                bytes: payload.len(),
            },
        }
    }

    /// The original bytes back.
    pub fn decode(&self) -> Result<Vec<u8>, String> {
        match self.encoding.as_str() {
            "utf8" => Ok(self.data.clone().into_bytes()),
            "base64" => base64::engine::general_purpose::STANDARD
                .decode(&self.data)
                .map_err(|e| e.to_string()),
            other => Err(format!("unknown payload encoding {other:?}")),
        }
    }
}

/// The JSON view of a message: `{"envelope": …, "payload": {"encoding", "data", "bytes"}}`.
#[derive(Debug, Clone, Serialize)]
pub struct EnvelopeView<'a> {
    /// The envelope.
    pub envelope: &'a Envelope,
    /// The payload.
    pub payload: PayloadView,
}

#[cfg(test)]
mod tests;
