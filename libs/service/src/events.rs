//! Operational events: durable, per tenant, on `[p.]events.v1.<tenant or _>.<kind>` (stream
//! `EVENTS`: limits retention, the last 10,000 of each kind of each tenant for 30 days), read
//! with `switchyard events ls` and the management API. Emitted where the thing happens:
//! egress (a breaker opened or closed, a destination disabled because it stayed down), the CLI
//! and the management API (a destination disabled or enabled), the dlq service (DLQ inflow over
//! threshold, a replay job finished), backpressure (a tenant's admission closed or reopened).
//!
//! An event is published and its ack awaited off the caller's path ([`EventLog::emit`]): an
//! event the stream does not confirm is counted and logged and never changes what the caller
//! does. Events are reports, not commands: nothing in Switchyard acts on them.

use async_nats::jetstream;
use prometheus_client::metrics::counter::Counter;
use serde::{Deserialize, Serialize};
use switchyard_keys::TenantId;
use switchyard_subjects::{EventKind, EventSubject, Namespace, SubjectKind};
use time::OffsetDateTime;

/// The longest `detail`, in characters (an event stays small: its stream's limits count
/// events).
pub const MAX_DETAIL_CHARS: usize = 500;

/// One operational event (JSON).
///
/// ```json
/// {"id": "0193a1b2-c3d4-7e5f-8a9b-0c1d2e3f4a5b", "kind": "destination_disabled", "tenant": "acme", "about": "crm",
///  "at": "2026-12-06T10:00:00Z", "source": "egress",
///  "detail": "down for 3600 s (circuit breaker open since); its messages are parked"}
/// ```
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct OpEvent {
    /// A UUID v7 of its own (the `webhook-id` when it is delivered as a webhook; events stored
    /// before ids were given have none).
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub id: String,
    /// What happened (`EventKind::as_str`).
    pub kind: String,
    /// The tenant it is about; absent for the deployment.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tenant: Option<String>,
    /// What it is about within the tenant: a destination id, a route key, a job id.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub about: Option<String>,
    /// When.
    #[serde(with = "time::serde::rfc3339")]
    pub at: OffsetDateTime,
    /// Who said so: `egress`, `cli`, `api`, `dlq`.
    pub source: String,
    /// For people (at most [`MAX_DETAIL_CHARS`]).
    pub detail: String,
}

impl OpEvent {
    /// An event of `kind` about `tenant` (and `about` within it), now.
    pub fn new(
        kind: EventKind,
        tenant: Option<&TenantId>,
        about: Option<&str>,
        source: &str,
        detail: &str,
    ) -> Self {
        Self {
            id: uuid::Uuid::now_v7().to_string(),
            kind: kind.as_str().to_owned(),
            tenant: tenant.map(ToString::to_string),
            about: about.map(str::to_owned),
            at: OffsetDateTime::now_utc(),
            source: source.to_owned(),
            detail: detail.chars().take(MAX_DETAIL_CHARS).collect(),
        }
    }

    /// Its subject in `ns`.
    pub fn subject(&self, ns: &Namespace, kind: EventKind) -> String {
        EventSubject {
            tenant: self.tenant.as_deref().and_then(|t| t.parse().ok()),
            kind,
        }
        .format(ns)
    }
}

/// Publishes operational events for one component.
#[derive(Clone)]
pub struct EventLog {
    js: jetstream::Context,
    ns: Namespace,
    source: &'static str,
    /// Events the stream did not confirm (`switchyard_<service>_events_failed_total` where a
    /// service registers it).
    pub failed: Counter,
}

impl EventLog {
    /// A log writing as `source` (`egress`, `cli`, …).
    pub fn new(js: jetstream::Context, ns: Namespace, source: &'static str) -> Self {
        Self {
            js,
            ns,
            source,
            failed: Counter::default(),
        }
    }

    /// Emits an event; the stream's ack is awaited in a task of its own (see the module page).
    pub fn emit(
        &self,
        kind: EventKind,
        tenant: Option<&TenantId>,
        about: Option<&str>,
        detail: &str,
    ) {
        let event = OpEvent::new(kind, tenant, about, self.source, detail);
        let subject = event.subject(&self.ns, kind);
        let js = self.js.clone();
        let failed = self.failed.clone();
        tokio::spawn(async move {
            if let Err(error) = publish(&js, subject, &event).await {
                failed.inc();
                tracing::warn!(%error, kind = %event.kind, "an operational event was not stored");
            }
        });
    }

    /// Emits an event and waits until the stream stored it (for short-lived callers: the CLI).
    ///
    /// Errors: the publish or its ack failed.
    pub async fn emit_and_wait(
        &self,
        kind: EventKind,
        tenant: Option<&TenantId>,
        about: Option<&str>,
        detail: &str,
    ) -> Result<(), jetstream::context::PublishError> {
        let event = OpEvent::new(kind, tenant, about, self.source, detail);
        let subject = event.subject(&self.ns, kind);
        publish(&self.js, subject, &event).await
    }
}

async fn publish(
    js: &jetstream::Context,
    subject: String,
    event: &OpEvent,
) -> Result<(), jetstream::context::PublishError> {
    let payload = serde_json::to_vec(event).unwrap_or_default();
    js.publish(subject, payload.into()).await?.await.map(|_| ())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_event_names_its_tenant_subject_and_stays_small() {
        let acme: TenantId = "acme".parse().unwrap();
        let long = "x".repeat(10 * MAX_DETAIL_CHARS);
        let event = OpEvent::new(
            EventKind::DestinationDisabled,
            Some(&acme),
            Some("crm"),
            "egress",
            &long,
        );
        assert_eq!(event.detail.chars().count(), MAX_DETAIL_CHARS);
        let ns = Namespace::default();
        assert_eq!(
            event.subject(&ns, EventKind::DestinationDisabled),
            "events.v1.acme.destination_disabled"
        );
        let deployment = OpEvent::new(EventKind::ReplayJobFinished, None, None, "dlq", "done");
        assert_eq!(
            deployment.subject(&ns, EventKind::ReplayJobFinished),
            "events.v1._.replay_job_finished"
        );
        let json = serde_json::to_string(&deployment).unwrap();
        assert!(!json.contains("tenant"), "{json}");
        assert_eq!(serde_json::from_str::<OpEvent>(&json).unwrap(), deployment);
    }
}
