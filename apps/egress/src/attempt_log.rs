//! The delivery log: after every attempt, delivered or not, one [`LoggedAttempt`] on
//! `[p.]attempts.v1.<tenant>` (stream `ATTEMPTS`, limits retention, the last 100,000 per
//! tenant for at most 7 days), read by `switchyard attempts`. The record goes out right after
//! the attempt; its ack is awaited off the delivery's path, so the log costs a delivery one
//! publish, not a round trip. A record the stream does not confirm is counted
//! (`switchyard_egress_attempts_log_failed_total`) and logged; it never changes what happens to
//! the message itself.

use async_nats::jetstream;
use switchyard_envelope::{AttemptRecord, Envelope, LoggedAttempt};
use switchyard_subjects::{AttemptSubject, Namespace, SubjectKind};

use crate::metrics::EgressMetrics;
use crate::routing::Resolved;

/// The trace id of a W3C `traceparent` (`00-<32 hex>-<16 hex>-<2 hex>`), only when it is one:
/// the header comes from producers, and a record must stay small (a tenant's share of the log
/// is counted in records, not bytes).
fn trace_id(traceparent: Option<&str>) -> Option<String> {
    let id = traceparent?.split('-').nth(1)?;
    let valid = id.len() == 32
        && id.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
        && id.bytes().any(|b| b != b'0');
    valid.then(|| id.to_owned())
}

/// Writes the delivery log (`[egress] attempt_log`, default on).
#[derive(Clone)]
pub struct AttemptLog {
    /// Publishes the records.
    pub js: jetstream::Context,
    /// The deployment namespace.
    pub ns: Namespace,
    /// Whether to write at all.
    pub enabled: bool,
    /// Counts what was logged and what failed.
    pub metrics: EgressMetrics,
}

impl AttemptLog {
    /// Logs attempt number `attempt` of `envelope` over `resolved`: `result` is `delivered`,
    /// `retryable` or `permanent`, `record` what happened.
    pub async fn record(
        &self,
        envelope: &Envelope,
        resolved: &Resolved,
        attempt: u32,
        result: &str,
        record: AttemptRecord,
    ) {
        if !self.enabled {
            return;
        }
        let logged = LoggedAttempt {
            id: envelope.id.to_string(),
            msg_id: envelope.msg_id.as_str().to_owned(),
            tenant: envelope.address.tenant.to_string(),
            team: envelope.address.team.to_string(),
            platform: envelope.address.platform.to_string(),
            destination: envelope.destination.as_ref().map(ToString::to_string),
            route: resolved.id.clone(),
            route_type: resolved.kind().to_owned(),
            attempt,
            replay: envelope.attempt.replay,
            result: result.to_owned(),
            trace_id: trace_id(envelope.trace.traceparent.as_deref()),
            record,
        };
        let payload = match serde_json::to_vec(&logged) {
            Ok(payload) => payload,
            Err(error) => {
                tracing::warn!(%error, "encoding a delivery log record failed");
                self.metrics.attempts_log_failed.inc();
                return;
            }
        };
        let subject = AttemptSubject {
            tenant: envelope.address.tenant.clone(),
        }
        .format(&self.ns);
        let ack = match self.js.publish(subject, payload.into()).await {
            Ok(ack) => ack,
            Err(error) => {
                tracing::warn!(%error, "publishing a delivery log record failed");
                self.metrics.attempts_log_failed.inc();
                return;
            }
        };
        let metrics = self.metrics.clone();
        tokio::spawn(async move {
            match ack.await {
                Ok(_) => {
                    metrics.attempts_logged.inc();
                }
                Err(error) => {
                    tracing::warn!(%error, "the ATTEMPTS stream did not store a delivery log record");
                    metrics.attempts_log_failed.inc();
                }
            }
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_a_w3c_trace_id_is_logged() {
        let id = "4bf92f3577b34da6a3ce929d0e0e4736";
        assert_eq!(
            trace_id(Some(&format!("00-{id}-00f067aa0ba902b7-01"))).as_deref(),
            Some(id)
        );
        for bad in [
            format!("00-{}-00f067aa0ba902b7-01", "a".repeat(14_000)),
            "00-4BF92F3577B34DA6A3CE929D0E0E4736-00f067aa0ba902b7-01".to_owned(),
            format!("00-{}-00f067aa0ba902b7-01", "0".repeat(32)),
            "garbage".to_owned(),
        ] {
            assert_eq!(trace_id(Some(&bad)), None, "{bad:.60}");
        }
        assert_eq!(trace_id(None), None);
    }
}
