//! Delivery receipts: after a delivery, a best-effort core NATS message on
//! `[p.]delivered.v1.<tenant>.<team>.<platform>` saying what was delivered where.
//!
//! The payload is JSON ([`Receipt`]) with header `Content-Type: application/json` and
//! `Switchyard-Id` (the envelope id). Nothing stores receipts by default; a lost receipt never
//! affects the delivery it reports.

use async_nats::HeaderMap;
use serde::{Deserialize, Serialize};
use switchyard_envelope::{Envelope, headers};
use switchyard_subjects::{Namespace, ReceiptSubject, SubjectKind};
use time::OffsetDateTime;

use crate::routing::Resolved;

fn delivered() -> String {
    "delivered".to_owned()
}

/// What a receipt says.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Receipt {
    /// The envelope id.
    pub id: String,
    /// The tenant.
    pub tenant: String,
    /// The team.
    pub team: String,
    /// The platform.
    pub platform: String,
    /// The producer's message id.
    pub msg_id: String,
    /// `delivered`, or `unmatched` (no destination took the message and the tenant's policy
    /// drops such messages: no route, no attempt).
    #[serde(default = "delivered")]
    pub result: String,
    /// The destination a fanned-out copy was for (`orders-hook`, or `_route`); absent when the
    /// tenant has no destinations.
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub destination: Option<String>,
    /// The route's KV key (`<tenant>.<team or _>.<platform>`), or the destination's
    /// (`<tenant>.<destination>`); empty for `unmatched`.
    pub route: String,
    /// `webhook` or `nats`.
    pub route_type: String,
    /// The attempt that delivered (1 for the first).
    pub attempts: u32,
    /// The webhook's HTTP status.
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub status: Option<u16>,
    /// When the delivery completed.
    #[serde(with = "time::serde::rfc3339")]
    pub delivered_at: OffsetDateTime,
}

impl Receipt {
    /// The receipt for `envelope`, delivered now over `resolved` at attempt `attempts`.
    pub fn new(
        envelope: &Envelope,
        resolved: &Resolved,
        attempts: u32,
        status: Option<u16>,
    ) -> Self {
        Self {
            id: envelope.id.to_string(),
            tenant: envelope.address.tenant.to_string(),
            team: envelope.address.team.to_string(),
            platform: envelope.address.platform.to_string(),
            msg_id: envelope.msg_id.as_str().to_owned(),
            result: delivered(),
            destination: envelope.destination.as_ref().map(ToString::to_string),
            route: resolved.id.clone(),
            route_type: resolved.kind().to_owned(),
            attempts,
            status,
            delivered_at: OffsetDateTime::now_utc(),
        }
    }

    /// The receipt of a message no destination took, dropped by the tenant's policy.
    pub fn unmatched(envelope: &Envelope) -> Self {
        Self {
            id: envelope.id.to_string(),
            tenant: envelope.address.tenant.to_string(),
            team: envelope.address.team.to_string(),
            platform: envelope.address.platform.to_string(),
            msg_id: envelope.msg_id.as_str().to_owned(),
            result: "unmatched".to_owned(),
            destination: None,
            route: String::new(),
            route_type: "none".to_owned(),
            attempts: 0,
            status: None,
            delivered_at: OffsetDateTime::now_utc(),
        }
    }

    /// The subject, headers and payload of this receipt.
    pub fn message(&self, ns: &Namespace, envelope: &Envelope) -> (String, HeaderMap, Vec<u8>) {
        let subject = ReceiptSubject {
            address: envelope.address.clone(),
        }
        .format(ns);
        let mut h = HeaderMap::new();
        h.insert(headers::CONTENT_TYPE, "application/json");
        h.insert(headers::ID, envelope.id.to_string());
        (subject, h, serde_json::to_vec(self).unwrap_or_default())
    }
}
