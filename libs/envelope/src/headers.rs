//! Header names: the wire contract between producers, stages and operators.
//!
//! Producers set [`NATS_MSG_ID`] (their idempotency key), optionally [`TENANT`] (must equal the
//! subject's tenant), [`CONTENT_TYPE`] and the W3C trace headers. Ingress stamps every
//! `Switchyard-*` header, replacing any a producer sent; later stages only read them (egress
//! and replays update the attempt headers). Every hop's [`NATS_MSG_ID`] is the deterministic
//! hop id from [`crate::Envelope::hop_msg_id`], so the producer's id travels in [`MSG_ID`].

/// JetStream's de-duplication header; on ingress subjects, the producer's idempotency key.
pub const NATS_MSG_ID: &str = "Nats-Msg-Id";
/// The envelope id (UUIDv7), stamped by ingress; also the webhook id.
pub const ID: &str = "Switchyard-Id";
/// The tenant (set by ingress from the subject; a producer may set it as a claim).
pub const TENANT: &str = "Switchyard-Tenant";
/// The team.
pub const TEAM: &str = "Switchyard-Team";
/// The platform.
pub const PLATFORM: &str = "Switchyard-Platform";
/// The producer's message id, preserved across hops.
pub const MSG_ID: &str = "Switchyard-Msg-Id";
/// When ingress received the message (RFC 3339, UTC): the ingress stream's timestamp.
pub const RECEIVED_AT: &str = "Switchyard-Received-At";
/// The envelope schema version.
pub const SCHEMA: &str = "Switchyard-Schema";
/// Delivery attempts made so far by egress.
pub const ATTEMPT: &str = "Switchyard-Attempt";
/// How many times the message was replayed from the DLQ.
pub const REPLAY: &str = "Switchyard-Replay";
/// On a sealed payload (envelope schema version 2, [`crate::schema`]): the id of the data key
/// it was sealed with. Its presence means the payload is ciphertext; `libs/crypt` writes and
/// reads it.
pub const SEAL_KEY: &str = "Switchyard-Key";
/// On a sealed payload: its 96-bit nonce, standard base64 (16 characters).
pub const SEAL_NONCE: &str = "Switchyard-Nonce";
/// Where ingress read the message: `<stream>:<sequence>`.
pub const SOURCE: &str = "Switchyard-Source";
/// Which destination a fanned-out copy is for (`orders-hook`, or `_route`); absent before
/// egress fans a message out ([`crate::Destination`]).
pub const DESTINATION: &str = "Switchyard-Destination";
/// The producer's event type, matched by destination subscriptions' `event_types` (a producer
/// header: any text, passed on as it is).
pub const EVENT_TYPE: &str = "Event-Type";
/// The payload's media type, passed through to sinks.
pub const CONTENT_TYPE: &str = "Content-Type";
/// W3C trace context.
pub const TRACEPARENT: &str = "traceparent";
/// W3C trace state.
pub const TRACESTATE: &str = "tracestate";

/// `name` as a header name that borrows the static text. Setting a header by `&str` copies the
/// name into a new allocation whenever the map does not hold it yet; the stages' hot paths set
/// their headers through this instead.
pub const fn name(name: &'static str) -> async_nats::HeaderName {
    async_nats::HeaderName::from_static(name)
}

/// Headers the server interprets on publish (`Nats-Msg-Id`, `Nats-Expected-*`, `Nats-TTL`,
/// `Nats-Schedule*`, …) start with this prefix. Stages never copy them from a message they
/// read onto a message they publish: each publish sets exactly the ones it means.
pub const SERVER_PREFIX: &str = "Nats-";

/// A copy of `headers` without the server-interpreted `Nats-*` ones.
pub fn without_server_headers(headers: Option<&async_nats::HeaderMap>) -> async_nats::HeaderMap {
    copy_except(headers, |name| has_prefix(name, SERVER_PREFIX))
}

/// A copy of `headers` without those whose name `drop` accepts. Names and values are cloned as
/// they are (a reference count each: the client holds them as slices of the received block);
/// parsing a name again would only check what was checked.
fn copy_except(
    headers: Option<&async_nats::HeaderMap>,
    drop: impl Fn(&str) -> bool,
) -> async_nats::HeaderMap {
    let mut out = async_nats::HeaderMap::with_capacity(headers.map_or(0, |h| h.len()));
    for (key, values) in headers.into_iter().flat_map(|h| h.iter()) {
        if drop(key.as_ref()) {
            continue;
        }
        for value in values {
            out.append(key.clone(), value.clone());
        }
    }
    out
}

/// The size of a message with `headers` and `payload` in bytes, as sized stages classify it
/// (`switchyard_subjects::SizeClass`): [`wire_size`] of the headers plus the payload.
pub fn message_size(headers: &async_nats::HeaderMap, payload: &[u8]) -> usize {
    wire_size(headers) + payload.len()
}

/// The size of `headers` on the wire in bytes, less the `NATS/1.0` status line and the closing
/// blank line: `<name>: <value>\r\n` for each value. What counts against nats-server's
/// 65,535-byte header limit and a stream's message size.
pub fn wire_size(headers: &async_nats::HeaderMap) -> usize {
    headers
        .iter()
        .map(|(name, values)| {
            let name: &str = name.as_ref();
            values
                .iter()
                .map(|v| name.len() + v.as_str().len() + 4)
                .sum::<usize>()
        })
        .sum()
}

/// Every Switchyard header starts with this prefix; only stages set them.
pub const SWITCHYARD_PREFIX: &str = "Switchyard-";

fn has_prefix(name: &str, prefix: &str) -> bool {
    name.len() >= prefix.len() && name[..prefix.len()].eq_ignore_ascii_case(prefix)
}

/// A producer's headers as ingress passes them on: without `Nats-*` (server-interpreted) and
/// without any `Switchyard-*` header (only stages may set those; a producer's copy is never
/// trusted, apart from the `Switchyard-Tenant` claim ingress checks before dropping it).
pub fn producer_headers(headers: Option<&async_nats::HeaderMap>) -> async_nats::HeaderMap {
    copy_except(headers, |name| {
        has_prefix(name, SERVER_PREFIX) || has_prefix(name, SWITCHYARD_PREFIX)
    })
}

/// The attempt history carried by messages between egress retries: a JSON array of
/// [`crate::AttemptRecord`] (the last [`crate::attempt::MAX_HISTORY`]), written with
/// [`crate::attempt::encode_history`]. A replay clears it.
pub const ATTEMPTS_LOG: &str = "Switchyard-Attempts-Log";

/// On egress's parked copy of a decided dead letter (its tenant held its share of the DLQ):
/// the code to write it with. A copy carrying it is dead-lettered, not delivered, when it comes
/// back. A replay clears it, with [`PARKED_REASON`] and [`PARKED_ATTEMPTS`].
pub const PARKED_CODE: &str = "Switchyard-Parked-Code";

/// On a parked dead letter: its reason.
pub const PARKED_REASON: &str = "Switchyard-Parked-Reason";

/// On a parked dead letter: the delivery attempts made.
pub const PARKED_ATTEMPTS: &str = "Switchyard-Parked-Attempts";

/// On egress's rescheduled copies of a replayed message: `<replay>;<unix ms>`, the replay
/// counter and when egress first handled that replay's copy, which anchors its delivery
/// deadline. A value for another replay counter (carried over from an earlier replay's DLQ
/// record) is ignored.
pub const DEADLINE_FROM: &str = "Switchyard-Deadline-From";
