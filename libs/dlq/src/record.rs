//! Writing a DLQ record ([`DeadLetter`]) and reading one back ([`DlqEntry`]).

use std::collections::BTreeMap;

use async_nats::HeaderMap;
use async_nats::jetstream::{self, context::PublishAckFuture};
use bytes::Bytes;
use serde::{Deserialize, Serialize};
use switchyard_envelope::headers::wire_size;
use switchyard_envelope::{PayloadView, headers as env_headers};
use switchyard_keys::{PlatformId, Stage, TenantId};
use switchyard_subjects::{DlqSubject, Namespace, SubjectKind};
use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;

use crate::{DlqCode, headers};
use switchyard_envelope::AttemptRecord;
use switchyard_envelope::attempt::{decode_history, encode_history};

/// Why a DLQ record could not be written or read.
#[derive(Debug, thiserror::Error)]
pub enum DlqError {
    /// Publishing the record failed (the stage must not ack the original).
    #[error("publishing the dlq record failed")]
    Publish(#[source] async_nats::jetstream::context::PublishError),
    /// A stored entry lacks a DLQ header or has a malformed one.
    #[error("dlq entry {seq} has a missing or malformed {header} header")]
    Malformed {
        /// The entry's DLQ stream sequence.
        seq: u64,
        /// The header.
        header: &'static str,
    },
    /// A stored entry's subject is not a DLQ subject.
    #[error("dlq entry {seq} has subject {subject:?}, not a dlq subject")]
    Subject {
        /// The entry's DLQ stream sequence.
        seq: u64,
        /// The subject.
        subject: String,
    },
}

/// The longest reason kept, in characters.
const MAX_REASON_CHARS: usize = 1000;

/// Room a record's own headers need beyond the message it keeps (whose headers travel with
/// it): stage, code, a reason of at most 1000 characters, attempts, two timestamps, the
/// source stream, sequence and subject, the original and the record's `Nats-Msg-Id`, and a
/// history of at most 20 attempts with errors of at most 200 characters — about 25 KiB at
/// worst, so 64 KiB leaves room. The DLQ stream's `max_msg_size` must exceed every stage
/// stream's by this much, or a message a stage holds cannot be dead-lettered
/// (`switchyard_topology::check_server_limits` refuses such a topology).
pub const RECORD_HEADER_ROOM: usize = 64 * 1024;

/// What a stage writes when it gives up on a message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeadLetter {
    /// The stage that gives up.
    pub stage: Stage,
    /// Why.
    pub code: DlqCode,
    /// A human reason (one line; truncated to 1000 characters).
    pub reason: String,
    /// The tenant, if the message names a valid one.
    pub tenant: Option<TenantId>,
    /// The platform, if the message names a valid one.
    pub platform: Option<PlatformId>,
    /// Delivery attempts made (0 when the stage never tried to deliver).
    pub attempts: u32,
    /// When the first failure happened.
    pub first_failure: OffsetDateTime,
    /// When the last failure happened.
    pub last_failure: OffsetDateTime,
    /// The stream the message was read from.
    pub source_stream: String,
    /// Its sequence there.
    pub source_seq: u64,
    /// When the stream stored it (the server's timestamp), when known: part of the record's
    /// id, so a stream deleted and re-created — its sequences starting over — never gives a
    /// new message the id of an earlier one's record.
    pub source_time: Option<OffsetDateTime>,
    /// The subject it was read from.
    pub source_subject: String,
    /// The attempt history (may be empty).
    pub history: Vec<AttemptRecord>,
}

fn rfc3339(t: OffsetDateTime) -> String {
    t.format(&Rfc3339).unwrap_or_default()
}

impl DeadLetter {
    /// A record for `msg` as read by `stage`, with no delivery attempts: source stream,
    /// sequence and subject from the message, first and last failure now.
    pub fn for_message(
        msg: &jetstream::Message,
        stage: Stage,
        code: DlqCode,
        reason: impl Into<String>,
        tenant: Option<TenantId>,
        platform: Option<PlatformId>,
    ) -> Self {
        let now = OffsetDateTime::now_utc();
        let (source_stream, source_seq, source_time) = msg
            .info()
            .map(|i| (i.stream.to_owned(), i.stream_sequence, Some(i.published)))
            .unwrap_or_default();
        Self {
            stage,
            code,
            reason: reason.into(),
            tenant,
            platform,
            attempts: 0,
            first_failure: now,
            last_failure: now,
            source_stream,
            source_seq,
            source_time,
            source_subject: msg.subject.to_string(),
            history: Vec::new(),
        }
    }

    /// The record's `Nats-Msg-Id`: one record per stored source message, so a stage that
    /// crashes after writing the record and before acking does not write it twice (and the
    /// safety net's record for the same message is dropped): `dlq:<stream>:<seq>:<stored ms>`,
    /// the source message's stream, sequence and stored time in Unix milliseconds; without a
    /// stored time, `dlq:<stream>:<seq>`.
    pub fn msg_id(&self) -> String {
        match self.source_time {
            Some(at) => format!(
                "dlq:{}:{}:{}",
                self.source_stream,
                self.source_seq,
                at.unix_timestamp_nanos() / 1_000_000
            ),
            None => format!("dlq:{}:{}", self.source_stream, self.source_seq),
        }
    }

    /// The DLQ subject the record goes to.
    pub fn subject(&self, ns: &Namespace) -> String {
        DlqSubject {
            tenant: self.tenant.clone(),
            stage: self.stage,
            platform: self.platform.clone(),
        }
        .format(ns)
    }

    /// The record's headers: the original ones (less `Nats-*`) plus the DLQ headers. Original
    /// headers over [`MAX_ORIGINAL_HEADER_BYTES`] are dropped and
    /// [`headers::HEADERS_DROPPED`] says so, so that a record can always be stored.
    pub fn headers(&self, original: Option<&HeaderMap>) -> HeaderMap {
        let mut h = env_headers::without_server_headers(original);
        cap_unparsed_headers(&mut h);
        let kept = wire_size(&h);
        if kept > MAX_ORIGINAL_HEADER_BYTES {
            let count = h.iter().map(|(_, values)| values.len()).sum::<usize>();
            h = HeaderMap::new();
            h.insert(
                headers::HEADERS_DROPPED,
                format!(
                    "{count} original headers of {kept} bytes, over the record's \
                     {MAX_ORIGINAL_HEADER_BYTES}-byte share of the server's header limit"
                ),
            );
        }
        let reason = self.reason.replace(['\r', '\n'], " ");
        let reason = match reason.char_indices().nth(MAX_REASON_CHARS) {
            Some((at, _)) => format!("{}…", &reason[..at]),
            None => reason,
        };
        h.insert(headers::STAGE, self.stage.as_str());
        h.insert(headers::CODE, self.code.as_str());
        h.insert(headers::REASON, reason);
        h.insert(headers::ATTEMPTS, self.attempts.to_string());
        h.insert(headers::FIRST_FAILURE, rfc3339(self.first_failure));
        h.insert(headers::LAST_FAILURE, rfc3339(self.last_failure));
        h.insert(headers::SOURCE_STREAM, self.source_stream.as_str());
        h.insert(headers::SOURCE_SEQ, self.source_seq.to_string());
        h.insert(headers::SOURCE_SUBJECT, self.source_subject.as_str());
        h.insert(headers::HISTORY, encode_history(&self.history));
        if let Some(id) = original.and_then(|o| o.get(env_headers::NATS_MSG_ID)) {
            h.insert(headers::ORIGINAL_MSG_ID, id.as_str());
        }
        h.insert(env_headers::NATS_MSG_ID, self.msg_id());
        h
    }

    /// Publishes the record. Await the returned future for the stream's ack before acking
    /// the original: only a stored record makes it safe to let go of the message.
    pub async fn publish(
        &self,
        js: &jetstream::Context,
        ns: &Namespace,
        original_headers: Option<&HeaderMap>,
        payload: Bytes,
    ) -> Result<PublishAckFuture, DlqError> {
        js.publish_with_headers(self.subject(ns), self.headers(original_headers), payload)
            .await
            .map_err(DlqError::Publish)
    }
}

/// The most bytes of original headers a record keeps (names, values and separators): the
/// rest of nats-server's 65,535-byte header block limit (JetStream error 10097) is the
/// record's own headers'. Over it, the original headers are dropped, not the record. It
/// holds the largest cut of an unparsed block ([`MAX_UNPARSED_HEADER_CHARS`] characters of up
/// to 4 bytes each).
pub const MAX_ORIGINAL_HEADER_BYTES: usize = 33 * 1024;

/// The most characters of an unparsed header block a record keeps.
pub const MAX_UNPARSED_HEADER_CHARS: usize = 8 * 1024;

/// Caps the escaped header block the client could not parse (`Async-Nats-Unparsed-Headers`,
/// up to 4 characters a byte) at [`MAX_UNPARSED_HEADER_CHARS`], so that the record still fits
/// in [`RECORD_HEADER_ROOM`] over the original message's size. A cut block ends with
/// `…[cut at N of M characters]`.
fn cap_unparsed_headers(h: &mut HeaderMap) {
    let name = async_nats::connection::UNPARSED_HEADERS;
    let Some(value) = h.get(name).map(|v| v.as_str().to_owned()) else {
        return;
    };
    // The client writes ASCII here, but a producer may set the same name itself.
    if let Some((at, _)) = value.char_indices().nth(MAX_UNPARSED_HEADER_CHARS) {
        h.insert(
            name,
            format!(
                "{}…[cut at {MAX_UNPARSED_HEADER_CHARS} of {} characters]",
                &value[..at],
                value.chars().count()
            ),
        );
    }
}

/// A DLQ entry as stored: the record, the original message, and where it sits.
#[derive(Debug, Clone)]
pub struct DlqEntry {
    /// Sequence in the DLQ stream (the entry's id for `show`, `replay`, `purge`).
    pub seq: u64,
    /// When the DLQ stream stored it.
    pub stored_at: OffsetDateTime,
    /// The DLQ subject.
    pub subject: String,
    /// The record.
    pub record: DeadLetter,
    /// The original headers (without the DLQ headers and the server's `Nats-*` headers).
    pub original_headers: HeaderMap,
    /// The producer's original `Nats-Msg-Id`, if any.
    pub original_msg_id: Option<String>,
    /// What [`headers::HEADERS_DROPPED`] says, when the original headers were over the
    /// record's share and were not kept (`original_headers` is then empty).
    pub headers_dropped: Option<String>,
    /// The original payload, byte for byte.
    pub payload: Bytes,
}

fn header<'a>(h: &'a HeaderMap, seq: u64, name: &'static str) -> Result<&'a str, DlqError> {
    h.get(name)
        .map(|v| v.as_str())
        .ok_or(DlqError::Malformed { seq, header: name })
}

fn parsed<T: std::str::FromStr>(
    h: &HeaderMap,
    seq: u64,
    name: &'static str,
) -> Result<T, DlqError> {
    header(h, seq, name)?
        .parse()
        .map_err(|_| DlqError::Malformed { seq, header: name })
}

fn time_header(h: &HeaderMap, seq: u64, name: &'static str) -> Result<OffsetDateTime, DlqError> {
    OffsetDateTime::parse(header(h, seq, name)?, &Rfc3339)
        .map_err(|_| DlqError::Malformed { seq, header: name })
}

impl DlqEntry {
    /// Reads an entry from a stored DLQ message.
    pub fn from_message(
        ns: &Namespace,
        seq: u64,
        stored_at: OffsetDateTime,
        subject: &str,
        headers: Option<&HeaderMap>,
        payload: Bytes,
    ) -> Result<Self, DlqError> {
        let empty = HeaderMap::new();
        let h = headers.unwrap_or(&empty);
        let parsed_subject = DlqSubject::parse(ns, subject).map_err(|_| DlqError::Subject {
            seq,
            subject: subject.to_owned(),
        })?;
        let record = DeadLetter {
            stage: parsed(h, seq, headers::STAGE)?,
            code: parsed(h, seq, headers::CODE)?,
            reason: header(h, seq, headers::REASON)?.to_owned(),
            tenant: parsed_subject.tenant,
            platform: parsed_subject.platform,
            attempts: parsed(h, seq, headers::ATTEMPTS)?,
            first_failure: time_header(h, seq, headers::FIRST_FAILURE)?,
            last_failure: time_header(h, seq, headers::LAST_FAILURE)?,
            source_stream: header(h, seq, headers::SOURCE_STREAM)?.to_owned(),
            source_seq: parsed(h, seq, headers::SOURCE_SEQ)?,
            // Not a header of its own: it lives in the record's `Nats-Msg-Id`.
            source_time: None,
            source_subject: header(h, seq, headers::SOURCE_SUBJECT)?.to_owned(),
            history: decode_history(h.get(headers::HISTORY).map(|v| v.as_str())).map_err(|_| {
                DlqError::Malformed {
                    seq,
                    header: headers::HISTORY,
                }
            })?,
        };
        let mut original_headers = HeaderMap::new();
        for (name, values) in h.iter() {
            let name: &str = name.as_ref();
            // The record's own headers, and the server's (`Nats-Msg-Id`, and the
            // `Nats-Sequence`, `Nats-Time-Stamp`, … a direct get adds): not the original's.
            let server = name
                .get(..env_headers::SERVER_PREFIX.len())
                .is_some_and(|p| p.eq_ignore_ascii_case(env_headers::SERVER_PREFIX));
            if name.starts_with(headers::PREFIX) || server {
                continue;
            }
            for value in values {
                original_headers.append(name, value.as_str());
            }
        }
        Ok(Self {
            seq,
            stored_at,
            subject: subject.to_owned(),
            original_msg_id: h
                .get(headers::ORIGINAL_MSG_ID)
                .map(|v| v.as_str().to_owned()),
            headers_dropped: h
                .get(headers::HEADERS_DROPPED)
                .map(|v| v.as_str().to_owned()),
            record,
            original_headers,
            payload,
        })
    }

    /// The JSON view for the CLI.
    pub fn view(&self) -> DlqEntryView {
        let r = &self.record;
        let mut original_headers: BTreeMap<String, Vec<String>> = BTreeMap::new();
        for (name, values) in self.original_headers.iter() {
            let name: &str = name.as_ref();
            original_headers
                .entry(name.to_owned())
                .or_default()
                .extend(values.iter().map(|v| v.as_str().to_owned()));
        }
        DlqEntryView {
            seq: self.seq,
            stored_at: rfc3339(self.stored_at),
            subject: self.subject.clone(),
            tenant: r.tenant.as_ref().map(ToString::to_string),
            stage: r.stage,
            platform: r.platform.as_ref().map(ToString::to_string),
            code: r.code,
            reason: r.reason.clone(),
            attempts: r.attempts,
            first_failure: rfc3339(r.first_failure),
            last_failure: rfc3339(r.last_failure),
            source_stream: r.source_stream.clone(),
            source_seq: r.source_seq,
            source_subject: r.source_subject.clone(),
            original_msg_id: self.original_msg_id.clone(),
            history: r.history.clone(),
            headers: original_headers,
            payload: PayloadView::of(&self.payload),
        }
    }
}

/// The JSON shape of a DLQ entry (`switchyard dlq show --json`, `ls --json`, `tail --json`,
/// and each line of `dlq export`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DlqEntryView {
    /// DLQ stream sequence.
    pub seq: u64,
    /// When the DLQ stored it.
    pub stored_at: String,
    /// DLQ subject.
    pub subject: String,
    /// Tenant, if known.
    pub tenant: Option<String>,
    /// The stage that gave up.
    pub stage: Stage,
    /// Platform, if known.
    pub platform: Option<String>,
    /// Code.
    pub code: DlqCode,
    /// Reason.
    pub reason: String,
    /// Attempts made.
    pub attempts: u32,
    /// First failure.
    pub first_failure: String,
    /// Last failure.
    pub last_failure: String,
    /// Source stream.
    pub source_stream: String,
    /// Source sequence.
    pub source_seq: u64,
    /// Source subject.
    pub source_subject: String,
    /// Producer's original `Nats-Msg-Id`.
    pub original_msg_id: Option<String>,
    /// Attempt history.
    pub history: Vec<AttemptRecord>,
    /// Original headers.
    pub headers: BTreeMap<String, Vec<String>>,
    /// Original payload.
    pub payload: PayloadView,
}

#[cfg(test)]
mod tests {
    use super::*;
    use switchyard_envelope::attempt::MAX_HISTORY;

    #[test]
    fn the_largest_record_headers_fit_their_room() {
        let at = OffsetDateTime::from_unix_timestamp(1_700_000_000).unwrap();
        // Four-byte characters everywhere text is kept, and every field at its longest.
        let wide = "\u{1F4A5}".repeat(5000);
        let record = DeadLetter {
            stage: Stage::Egress,
            code: DlqCode::ExhaustedDeliveries,
            reason: wide.clone(),
            tenant: None,
            platform: None,
            attempts: u32::MAX,
            first_failure: at,
            last_failure: at,
            source_stream: "X".repeat(255),
            source_seq: u64::MAX,
            source_time: None,
            source_subject: "s".repeat(1024),
            history: (0..MAX_HISTORY * 2)
                .map(|i| {
                    AttemptRecord::new(at, "http_status", Some(599), i as u64, Some(wide.clone()))
                })
                .collect(),
        };
        let original = HeaderMap::new();
        let own = wire_size(&record.headers(Some(&original)));
        assert!(
            own < RECORD_HEADER_ROOM,
            "{own} bytes of record headers exceed {RECORD_HEADER_ROOM}"
        );
        // With the most original headers a record keeps, it stays under the server's header
        // block limit (65,535 bytes, error 10097).
        assert!(
            own + MAX_ORIGINAL_HEADER_BYTES + b"NATS/1.0\r\n\r\n".len() < 65_535,
            "{own} bytes of record headers leave no room for the original ones"
        );
        // Original headers over the share are dropped, and the record says so.
        let mut big = HeaderMap::new();
        for i in 0..3_000 {
            big.insert(format!("X-Pad-{i}").as_str(), "p".repeat(16));
        }
        let kept = record.headers(Some(&big));
        assert!(kept.get("X-Pad-1").is_none());
        assert!(
            kept.get(headers::HEADERS_DROPPED)
                .unwrap()
                .as_str()
                .starts_with("3000 original headers of ")
        );
        assert!(wire_size(&kept) < 65_535 - 12);
        // A header block the client could not parse arrives escaped, up to four times its
        // size (or forged by a producer with wide characters): the record keeps a bounded cut.
        for escaped in ["\\xff".repeat(50_000), wide.repeat(10)] {
            let mut unparsed = HeaderMap::new();
            unparsed.insert(async_nats::connection::UNPARSED_HEADERS, escaped.as_str());
            let headers = record.headers(Some(&unparsed));
            let own = wire_size(&headers);
            assert!(
                own < RECORD_HEADER_ROOM,
                "{own} bytes of record headers exceed {RECORD_HEADER_ROOM}"
            );
            let kept = headers
                .get(async_nats::connection::UNPARSED_HEADERS)
                .unwrap()
                .as_str();
            assert!(kept.ends_with(&format!(
                "…[cut at {MAX_UNPARSED_HEADER_CHARS} of {} characters]",
                escaped.chars().count()
            )));
        }
    }

    #[test]
    fn a_record_id_names_the_stored_message_so_a_recreated_stream_gets_new_ids() {
        let at = OffsetDateTime::from_unix_timestamp_nanos(1_800_000_000_123_456_789).unwrap();
        let record = |source_time| DeadLetter {
            stage: Stage::Egress,
            code: DlqCode::PermanentFailure,
            reason: "x".into(),
            tenant: None,
            platform: None,
            attempts: 1,
            first_failure: at,
            last_failure: at,
            source_stream: "EGRESS".into(),
            source_seq: 7,
            source_time,
            source_subject: "egress.v1.acme.ops.slack".into(),
            history: Vec::new(),
        };
        assert_eq!(record(Some(at)).msg_id(), "dlq:EGRESS:7:1800000000123");
        let later = at + time::Duration::minutes(1);
        assert_ne!(
            record(Some(at)).msg_id(),
            record(Some(later)).msg_id(),
            "seq 7 of a re-created stream is another message"
        );
        assert_eq!(record(None).msg_id(), "dlq:EGRESS:7");
    }
}
