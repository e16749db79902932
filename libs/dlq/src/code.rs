//! The closed set of DLQ codes: why a message was dead-lettered.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

/// Why a message is in the DLQ. Closed: every stage picks one of these, and `docs/contracts.md`
/// documents each.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum DlqCode {
    /// ingress: the subject is not `ingress.v1.<tenant>.<team>.<platform>` with valid ids.
    InvalidSubject,
    /// ingress: a header is malformed (e.g. an oversize or padded `Nats-Msg-Id`).
    InvalidHeader,
    /// ingress: no `Nats-Msg-Id` and the policy requires one.
    MissingMsgId,
    /// ingress: `Switchyard-Tenant` names another tenant than the subject (spoofing).
    TenantMismatch,
    /// ingress: the payload is larger than the configured limit.
    PayloadTooLarge,
    /// ingress: the payload does not match its content type (invalid UTF-8 for `text/*`,
    /// invalid JSON — an empty payload included — for `application/json` and `+json`).
    InvalidPayload,
    /// ingress: the tenant is not in the tenant registry.
    UnknownTenant,
    /// ingress: the tenant is disabled.
    TenantDisabled,
    /// any stage after ingress: the envelope headers are missing or malformed.
    InvalidEnvelope,
    /// any stage after ingress: the envelope's `Switchyard-Schema` is a version this build does
    /// not read (written by a newer build, or older than the oldest it reads); the reason names
    /// the version and the range read. Replayable once the stage reads that version.
    UnsupportedSchema,
    /// egress: no route for (tenant, team, platform), nor a team-less default.
    NoRoute,
    /// egress: the route exists but cannot be used (bad JSON, bad URL, bad secret).
    InvalidRoute,
    /// egress: the tenant has destinations, and none of them (nor a route) takes the message;
    /// only under the tenant's default `unmatched = "dead_letter"` policy.
    NoSubscriber,
    /// egress: the sink answered with a permanent failure (4xx other than 408/429).
    PermanentFailure,
    /// egress: every attempt of the retry budget failed.
    RetriesExhausted,
    /// egress: not delivered within the delivery deadline (`[egress] delivery_deadline_secs`,
    /// counted from the envelope's `received_at`, or for a replayed copy from when egress first
    /// handled that replay), whatever held it: retries, an open breaker, a busy route or
    /// tenant. The record keeps the attempts made, possibly none.
    DeadlineExceeded,
    /// safety net: JetStream gave up redelivering (max deliveries) before the stage could
    /// dead-letter the message itself (it crashed, hung or was killed each time).
    ExhaustedDeliveries,
    /// safety net: a consumer terminated the message (`+TERM`) and no stage had dead-lettered
    /// it (Switchyard's stages never terminate: they ack after writing their own record, so a
    /// terminated message comes from something else acting on a pipeline consumer).
    Terminated,
    /// ingress or egress: a sealed payload does not authenticate — its ciphertext, nonce or
    /// key id was changed, or it was moved to another tenant or message (its seal headers
    /// malformed included). Nothing was decrypted.
    PayloadTampered,
    /// ingress or egress: a sealed payload names a data key its tenant does not have (never
    /// created, or the tenant's encryption was never on).
    UnknownDataKey,
    /// ingress or egress: the tenant's data keys were destroyed (`switchyard encryption
    /// shred`): its sealed payloads can never be decrypted again.
    TenantShredded,
}

impl DlqCode {
    /// Every code.
    pub const ALL: [DlqCode; 21] = [
        DlqCode::InvalidSubject,
        DlqCode::InvalidHeader,
        DlqCode::MissingMsgId,
        DlqCode::TenantMismatch,
        DlqCode::PayloadTooLarge,
        DlqCode::InvalidPayload,
        DlqCode::UnknownTenant,
        DlqCode::TenantDisabled,
        DlqCode::InvalidEnvelope,
        DlqCode::UnsupportedSchema,
        DlqCode::NoRoute,
        DlqCode::InvalidRoute,
        DlqCode::NoSubscriber,
        DlqCode::PermanentFailure,
        DlqCode::RetriesExhausted,
        DlqCode::DeadlineExceeded,
        DlqCode::ExhaustedDeliveries,
        DlqCode::Terminated,
        DlqCode::PayloadTampered,
        DlqCode::UnknownDataKey,
        DlqCode::TenantShredded,
    ];

    /// The code as written in headers and shown by the CLI.
    pub fn as_str(self) -> &'static str {
        match self {
            DlqCode::InvalidSubject => "invalid_subject",
            DlqCode::InvalidHeader => "invalid_header",
            DlqCode::MissingMsgId => "missing_msg_id",
            DlqCode::TenantMismatch => "tenant_mismatch",
            DlqCode::PayloadTooLarge => "payload_too_large",
            DlqCode::InvalidPayload => "invalid_payload",
            DlqCode::UnknownTenant => "unknown_tenant",
            DlqCode::TenantDisabled => "tenant_disabled",
            DlqCode::InvalidEnvelope => "invalid_envelope",
            DlqCode::UnsupportedSchema => "unsupported_schema",
            DlqCode::NoRoute => "no_route",
            DlqCode::InvalidRoute => "invalid_route",
            DlqCode::NoSubscriber => "no_subscriber",
            DlqCode::PermanentFailure => "permanent_failure",
            DlqCode::RetriesExhausted => "retries_exhausted",
            DlqCode::DeadlineExceeded => "deadline_exceeded",
            DlqCode::ExhaustedDeliveries => "exhausted_deliveries",
            DlqCode::Terminated => "terminated",
            DlqCode::PayloadTampered => "payload_tampered",
            DlqCode::UnknownDataKey => "unknown_data_key",
            DlqCode::TenantShredded => "tenant_shredded",
        }
    }
}

impl fmt::Display for DlqCode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// An unknown code string.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unknown dlq code {0:?}")]
pub struct UnknownCode(pub String);

impl FromStr for DlqCode {
    type Err = UnknownCode;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        DlqCode::ALL
            .into_iter()
            .find(|c| c.as_str() == s)
            .ok_or_else(|| UnknownCode(s.to_owned()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn codes_round_trip_and_match_serde() {
        for code in DlqCode::ALL {
            assert_eq!(code.as_str().parse::<DlqCode>().unwrap(), code);
            assert_eq!(serde_json::to_string(&code).unwrap(), format!("\"{code}\""));
        }
        assert!("boom".parse::<DlqCode>().is_err());
    }

    #[test]
    fn every_code_is_listed_once_with_a_distinct_name() {
        let names: std::collections::BTreeSet<&str> =
            DlqCode::ALL.iter().map(|c| c.as_str()).collect();
        assert_eq!(names.len(), DlqCode::ALL.len());
        assert_eq!(
            "deadline_exceeded".parse::<DlqCode>().unwrap(),
            DlqCode::DeadlineExceeded
        );
    }
}
