//! Where a DLQ entry re-enters the pipeline, and with which headers.
//!
//! An entry re-enters at the stage that gave up (an egress entry: backpressure, so the tenant's
//! rate limit paces replays), so a replayed message is not dropped as a duplicate by the
//! idempotency stage it already passed:
//!
//! - **ingress** failures are republished to their original producer subject with the
//!   producer's `Nats-Msg-Id` (only codes an operator can fix: unknown or disabled tenant, or
//!   a crash). Within the ingress stream's duplicate window the stream drops such a copy;
//!   the publish ack says so and the entry stays in the DLQ.
//! - later stages' failures are republished to that stage's input subject with the envelope
//!   unchanged except: replay counter + 1 (so the hop `Nats-Msg-Id` is new), delivery
//!   attempts reset to 0, and the attempt history cleared. First its `Switchyard-Schema` is
//!   brought to the version this build would stamp ([`switchyard_envelope::schema::upgrade`]);
//!   an entry whose version this build does not read, or whose headers contradict their
//!   version, is refused ([`ReplayError::Schema`], naming the versions) and stays in the DLQ.
//!
//! Publishing a plan, the duplicate rule and removing the entry are [`crate::step`].

use async_nats::HeaderMap;
use bytes::Bytes;
use switchyard_dlq::{DlqCode, DlqEntry};
use switchyard_envelope::{
    Envelope, EnvelopeError, MsgIdPolicy, SchemaError, SourceRef, headers as env_headers, schema,
};
use switchyard_keys::Stage;
use switchyard_keys::kv::DlqReplayKey;
use switchyard_subjects::{InputStage, Namespace, SizeClass, StageSubject, SubjectKind};

/// A replay ready to publish.
#[derive(Debug, Clone)]
pub struct ReplayPlan {
    /// The stage the message re-enters.
    pub stage: InputStage,
    /// The subject to publish to.
    pub subject: String,
    /// The headers, `Nats-Msg-Id` included.
    pub headers: HeaderMap,
    /// The original payload.
    pub payload: Bytes,
    /// For a replay to ingress, the producer's original message the entry was read from (its
    /// record's source stream and sequence): the copy carries the producer's id, so a
    /// duplicate ack pointing there means the stream still holds that original and nothing
    /// was stored ([`crate::step`]). `None` for later stages, whose copy's hop id (replay
    /// counter + 1) no stored original carries.
    pub source: Option<(String, u64)>,
    /// The entry's key in the `dlq-replays` bucket ([`crate::step`]).
    pub marker: DlqReplayKey,
}

/// Why an entry cannot be replayed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ReplayError {
    /// The code is a producer error: replaying would fail the same way.
    #[error(
        "entry {seq} was refused at {stage} with code {code}: the message itself is invalid, so a replay would fail the same way (fix the producer and publish again)"
    )]
    NotReplayable {
        /// The entry.
        seq: u64,
        /// Its stage.
        stage: Stage,
        /// Its code.
        code: DlqCode,
    },
    /// The entry's envelope headers are unreadable.
    #[error("entry {seq} has no readable envelope: {source}")]
    NoEnvelope {
        /// The entry.
        seq: u64,
        /// The envelope error.
        #[source]
        source: EnvelopeError,
    },
    /// The entry's envelope schema version cannot be brought to one this build writes: a
    /// version it does not read (the error names it and the range read), headers that
    /// contradict their version, or no readable version at all.
    #[error("entry {seq} cannot be replayed by this build: {source}")]
    Schema {
        /// The entry.
        seq: u64,
        /// Why the upgrade refused it.
        #[source]
        source: SchemaError,
    },
    /// The entry's original headers were over the record's share and were not kept: a copy
    /// would carry the payload without them (its content type, trace context, the producer's
    /// own headers), so it is not made. `dlq export` still has the payload.
    #[error(
        "entry {seq}'s original headers were not kept ({dropped}): a replay would deliver its payload without them"
    )]
    HeadersDropped {
        /// The entry.
        seq: u64,
        /// What the record says was dropped.
        dropped: String,
    },
    /// The entry cannot re-enter the requested stage.
    #[error(
        "entry {seq} was dead-lettered at {stage} and cannot be replayed to {target}: only entries from ingress re-enter ingress (with the producer's message), and only entries with an envelope re-enter a later stage"
    )]
    TargetRefused {
        /// The entry.
        seq: u64,
        /// Its stage.
        stage: Stage,
        /// The stage asked for.
        target: InputStage,
    },
}

impl ReplayError {
    /// The short reason an entry is kept for: `not replayable`, `no envelope`, `unsupported
    /// schema` (a version this build does not read), `inconsistent schema` (headers its
    /// version does not describe), `headers dropped`, `target refused`.
    pub fn reason(&self) -> &'static str {
        match self {
            ReplayError::NotReplayable { .. } => "not replayable",
            ReplayError::NoEnvelope { .. } => "no envelope",
            ReplayError::Schema { source, .. } => match source {
                SchemaError::Unsupported(_) => "unsupported schema",
                SchemaError::Inconsistent { .. } => "inconsistent schema",
                SchemaError::Missing | SchemaError::Invalid { .. } => "no envelope",
            },
            ReplayError::HeadersDropped { .. } => "headers dropped",
            ReplayError::TargetRefused { .. } => "target refused",
        }
    }
}

/// The stage an entry of `stage` re-enters by default: the stage that gave up, except that an
/// egress entry re-enters backpressure, so a replay is paced by the tenant's rate limit and
/// counted against its admission like any other message (a replay straight to egress, `--to
/// egress`, bypasses both).
fn default_target(stage: Stage) -> Option<InputStage> {
    match stage {
        Stage::Ingress => Some(InputStage::Ingress),
        Stage::Idempotency => Some(InputStage::Idempotency),
        Stage::Backpressure | Stage::Egress => Some(InputStage::Backpressure),
        Stage::Dlq => None,
    }
}

/// Plans the replay of one entry to its default target ([`plan_replay_to`] with `None`).
pub fn plan_replay(ns: &Namespace, entry: &DlqEntry) -> Result<ReplayPlan, ReplayError> {
    plan_replay_to(ns, entry, None)
}

/// Plans the replay of one entry to `target`, or (with `None`) to its default: the stage that
/// gave up on it, or backpressure for an egress entry (so the tenant's rate limit applies). An
/// ingress entry can only re-enter ingress; an entry with an envelope can re-enter any stage
/// after ingress (the copy's hop `Nats-Msg-Id` is the one for that stage).
pub fn plan_replay_to(
    ns: &Namespace,
    entry: &DlqEntry,
    target: Option<InputStage>,
) -> Result<ReplayPlan, ReplayError> {
    let record = &entry.record;
    let refuse = || ReplayError::NotReplayable {
        seq: entry.seq,
        stage: record.stage,
        code: record.code,
    };
    let own = default_target(record.stage).ok_or_else(refuse)?;
    let stage = target.unwrap_or(own);
    if (own == InputStage::Ingress) != (stage == InputStage::Ingress) {
        return Err(ReplayError::TargetRefused {
            seq: entry.seq,
            stage: record.stage,
            target: stage,
        });
    }
    if let Some(dropped) = &entry.headers_dropped {
        return Err(ReplayError::HeadersDropped {
            seq: entry.seq,
            dropped: dropped.clone(),
        });
    }
    if stage == InputStage::Ingress {
        if !matches!(
            record.code,
            DlqCode::UnknownTenant
                | DlqCode::TenantDisabled
                | DlqCode::ExhaustedDeliveries
                | DlqCode::Terminated
        ) {
            return Err(refuse());
        }
        // Only ever to a valid ingress subject of this deployment, whatever the record says.
        match StageSubject::parse(ns, &record.source_subject) {
            Ok(s) if s.stage == InputStage::Ingress => {}
            _ => return Err(refuse()),
        }
        let mut h = env_headers::without_server_headers(Some(&entry.original_headers));
        // The producer's id. An `unknown_tenant` or `tenant_disabled` entry without one came
        // past ingress's id check (which comes first), so under `msg_id_policy =
        // "assign_from_source"`: its copy gets the id ingress gives the original,
        // `seq:<its stream>:<its sequence>`, so every copy of the entry is one message to the
        // pipeline (`INGRESS`'s duplicate window, the idempotency claim) — a copy stored twice
        // (a crash between its ack and the delete, a second replay) is delivered once. Other
        // entries without one (dead-lettered before that check) go without, and ingress applies
        // its policy to the copy.
        let id = match &entry.original_msg_id {
            Some(id) => Some(id.to_string()),
            None if matches!(
                record.code,
                DlqCode::UnknownTenant | DlqCode::TenantDisabled
            ) =>
            {
                let source = SourceRef {
                    stream: record.source_stream.clone(),
                    sequence: record.source_seq,
                };
                let assigned = MsgIdPolicy::AssignFromSource.resolve(None, &source);
                Some(assigned.map_err(|_| refuse())?.to_string())
            }
            None => None,
        };
        if let Some(id) = id {
            h.insert(env_headers::NATS_MSG_ID, id.as_str());
        }
        return Ok(ReplayPlan {
            stage,
            subject: record.source_subject.clone(),
            headers: h,
            payload: entry.payload.clone(),
            source: Some((record.source_stream.clone(), record.source_seq)),
            marker: marker(entry),
        });
    }
    if record.code == DlqCode::InvalidEnvelope {
        return Err(refuse());
    }
    let mut h = env_headers::without_server_headers(Some(&entry.original_headers));
    schema::upgrade(&mut h).map_err(|source| ReplayError::Schema {
        seq: entry.seq,
        source,
    })?;
    let mut envelope = Envelope::from_headers(Some(&h)).map_err(|e| ReplayError::NoEnvelope {
        seq: entry.seq,
        source: e,
    })?;
    envelope.attempt.replay += 1;
    envelope.attempt.delivery = 0;
    let mut cleaned = HeaderMap::new();
    for (name, values) in h.iter() {
        let name: &str = name.as_ref();
        if [
            env_headers::ATTEMPTS_LOG,
            env_headers::PARKED_CODE,
            env_headers::PARKED_REASON,
            env_headers::PARKED_ATTEMPTS,
        ]
        .iter()
        .any(|cleared| name.eq_ignore_ascii_case(cleared))
        {
            continue;
        }
        for value in values {
            cleaned.append(name, value.as_str());
        }
    }
    h = cleaned;
    envelope.write_headers(&mut h);
    h.insert(env_headers::NATS_MSG_ID, envelope.hop_msg_id(stage.stage()));
    let subject = StageSubject {
        stage,
        address: envelope.address.clone(),
    }
    .format_sized(
        ns,
        SizeClass::of(env_headers::message_size(&h, &entry.payload)),
    );
    Ok(ReplayPlan {
        stage,
        subject,
        headers: h,
        payload: entry.payload.clone(),
        source: None,
        marker: marker(entry),
    })
}

/// The entry's key in the `dlq-replays` bucket: tenant, DLQ sequence, storage time.
fn marker(entry: &DlqEntry) -> DlqReplayKey {
    DlqReplayKey {
        tenant: entry.record.tenant.clone(),
        seq: entry.seq,
        stored_ms: i64::try_from(entry.stored_at.unix_timestamp_nanos() / 1_000_000)
            .unwrap_or_default(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use switchyard_dlq::DeadLetter;
    use switchyard_envelope::{Attempt, EnvelopeId, TraceContext};
    use switchyard_keys::{Address, MsgId, TenantId};
    use time::OffsetDateTime;

    /// An egress entry (`permanent_failure`) of a message whose envelope is `envelope`,
    /// with `extra` headers on the original.
    fn entry_of(envelope: &Envelope, extra: &[(&str, &str)]) -> DlqEntry {
        let at = envelope.received_at;
        let mut original = HeaderMap::new();
        envelope.write_headers(&mut original);
        for (name, value) in extra {
            original.insert(*name, *value);
        }
        let record = DeadLetter {
            stage: Stage::Egress,
            code: DlqCode::PermanentFailure,
            reason: "refused".into(),
            tenant: Some(envelope.address.tenant.clone()),
            platform: Some(envelope.address.platform.clone()),
            attempts: 1,
            first_failure: at,
            last_failure: at,
            source_stream: "EGRESS".into(),
            source_seq: 9,
            source_time: Some(at),
            source_subject: "egress.v1.acme.ops.slack".into(),
            history: Vec::new(),
        };
        DlqEntry {
            seq: 1,
            stored_at: at,
            subject: "dlq.v1.acme.egress.slack".into(),
            record,
            original_headers: original,
            original_msg_id: None,
            headers_dropped: None,
            payload: Bytes::from_static(b"x"),
        }
    }

    fn envelope(schema_version: u16) -> Envelope {
        let at = OffsetDateTime::now_utc();
        let source = SourceRef {
            stream: "INGRESS_acme".into(),
            sequence: 1,
        };
        Envelope {
            id: EnvelopeId::derive(&source, at),
            address: Address::parse("acme", "ops", "slack").unwrap(),
            msg_id: MsgId::new("order-1").unwrap(),
            received_at: at,
            content_type: None,
            trace: TraceContext::default(),
            schema_version,
            attempt: Attempt::default(),
            source,
            destination: None,
        }
    }

    const SEALED: [(&str, &str); 2] = [
        (env_headers::SEAL_KEY, "3f9c0a7de21b4c55"),
        (env_headers::SEAL_NONCE, "AAAAAAAAAAAAAAAA"),
    ];

    /// An ingress entry (`tenant_disabled`) of a message that came without a producer id.
    fn ingress_entry() -> DlqEntry {
        let at = OffsetDateTime::now_utc();
        let mut original = HeaderMap::new();
        original.insert("Content-Type", "text/plain");
        DlqEntry {
            seq: 3,
            stored_at: at,
            subject: "dlq.v1.acme.ingress.slack".into(),
            record: DeadLetter {
                stage: Stage::Ingress,
                code: DlqCode::TenantDisabled,
                reason: "disabled".into(),
                tenant: Some(TenantId::new("acme").unwrap()),
                platform: None,
                attempts: 1,
                first_failure: at,
                last_failure: at,
                source_stream: "INGRESS_acme".into(),
                source_seq: 41,
                source_time: Some(at),
                source_subject: "ingress.v1.acme.ops.slack".into(),
                history: Vec::new(),
            },
            original_headers: original,
            original_msg_id: None,
            headers_dropped: None,
            payload: Bytes::from_static(b"x"),
        }
    }

    #[test]
    fn an_ingress_entry_without_a_producer_id_replays_under_the_id_ingress_gives_it() {
        let entry = ingress_entry();
        let ns = Namespace::default();
        let plan = plan_replay(&ns, &entry).unwrap();
        let id = plan.headers.get(env_headers::NATS_MSG_ID).unwrap().as_str();
        assert_eq!(
            id, "seq:INGRESS_acme:41",
            "as assign_from_source names the original"
        );
        assert_eq!(
            plan_replay(&ns, &entry)
                .unwrap()
                .headers
                .get(env_headers::NATS_MSG_ID),
            plan.headers.get(env_headers::NATS_MSG_ID),
            "every copy the same"
        );
    }

    #[test]
    fn an_entry_dead_lettered_before_ingress_checked_its_id_replays_without_one() {
        let mut entry = ingress_entry();
        entry.record.code = DlqCode::ExhaustedDeliveries;
        let plan = plan_replay(&Namespace::default(), &entry).unwrap();
        assert_eq!(
            plan.headers.get(env_headers::NATS_MSG_ID),
            None,
            "ingress applies its msg_id_policy to the copy"
        );
    }

    #[test]
    fn an_entry_whose_original_headers_were_dropped_is_not_replayed_without_them() {
        let mut entry = ingress_entry();
        entry.original_headers = HeaderMap::new();
        entry.headers_dropped = Some("3000 original headers of 70000 bytes".into());
        let err = plan_replay(&Namespace::default(), &entry).unwrap_err();
        assert_eq!(err.reason(), "headers dropped");
        assert!(err.to_string().contains("3000 original headers"), "{err}");
    }

    #[test]
    fn a_replayed_copy_carries_no_attempt_history_and_no_parking() {
        let entry = entry_of(
            &envelope(1),
            &[
                (env_headers::ATTEMPTS_LOG, "[]"),
                (env_headers::PARKED_CODE, "permanent_failure"),
                (env_headers::PARKED_REASON, "refused"),
                (env_headers::PARKED_ATTEMPTS, "1"),
            ],
        );
        let plan = plan_replay(&Namespace::default(), &entry).unwrap();
        for cleared in [
            env_headers::ATTEMPTS_LOG,
            env_headers::PARKED_CODE,
            env_headers::PARKED_REASON,
            env_headers::PARKED_ATTEMPTS,
        ] {
            assert!(plan.headers.get(cleared).is_none(), "{cleared} cleared");
        }
        assert_eq!(plan.stage, InputStage::Backpressure);
    }

    fn schema_of(plan: &ReplayPlan) -> &str {
        plan.headers.get(env_headers::SCHEMA).unwrap().as_str()
    }

    #[test]
    fn replayed_copies_carry_the_lowest_version_that_describes_them() {
        let ns = Namespace::default();
        let plain_v1 = plan_replay(&ns, &entry_of(&envelope(1), &[])).unwrap();
        assert_eq!(schema_of(&plain_v1), "1");
        let sealed_v2 = plan_replay(&ns, &entry_of(&envelope(2), &SEALED)).unwrap();
        assert_eq!(schema_of(&sealed_v2), "2");
        assert!(sealed_v2.headers.get(env_headers::SEAL_KEY).is_some());
        let plain_v2 = plan_replay(&ns, &entry_of(&envelope(2), &[])).unwrap();
        assert_eq!(
            schema_of(&plain_v2),
            "1",
            "a plain copy is written as version 1"
        );
        for plan in [plain_v1, sealed_v2, plain_v2] {
            let copy = Envelope::from_headers(Some(&plan.headers)).unwrap();
            assert_eq!(copy.attempt.replay, 1);
        }
    }

    #[test]
    fn an_entry_this_build_cannot_upgrade_is_refused_naming_the_versions() {
        let ns = Namespace::default();
        let err = plan_replay(&ns, &entry_of(&envelope(3), &[])).unwrap_err();
        assert_eq!(err.reason(), "unsupported schema");
        assert_eq!(
            err.to_string(),
            "entry 1 cannot be replayed by this build: envelope schema version 3 is not one this build reads (it reads versions 1..=2)"
        );
        let err = plan_replay(&ns, &entry_of(&envelope(1), &SEALED)).unwrap_err();
        assert_eq!(err.reason(), "inconsistent schema");
        assert!(
            err.to_string()
                .contains("envelope schema version 1 does not describe header Switchyard-Key"),
            "{err}"
        );
        let mut garbled = entry_of(&envelope(1), &[]);
        garbled.original_headers.insert(env_headers::SCHEMA, "one");
        assert_eq!(
            plan_replay(&ns, &garbled).unwrap_err().reason(),
            "no envelope"
        );
    }
}
