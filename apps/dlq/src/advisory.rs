//! JetStream's consumer advisories as the safety net reads them: the subject says which kind,
//! stream and consumer (parsed by `switchyard_subjects::advisory`); the JSON body says which
//! stream sequence and how many deliveries.

use serde::Deserialize;
use switchyard_subjects::advisory::{self, AdvisoryKind};

/// The fields of `io.nats.jetstream.advisory.v1.max_deliver` and
/// `io.nats.jetstream.advisory.v1.terminated` the safety net uses.
#[derive(Debug, Clone, Deserialize)]
struct Body {
    stream: String,
    consumer: String,
    stream_seq: u64,
    deliveries: u64,
    #[serde(default)]
    reason: Option<String>,
}

/// One advisory: a consumer gave up on (or terminated) one stored message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Advisory {
    /// Max deliveries or terminated.
    pub kind: AdvisoryKind,
    /// The stream (deployed name).
    pub stream: String,
    /// The consumer's name.
    pub consumer: String,
    /// The message's stream sequence.
    pub stream_seq: u64,
    /// Deliveries made.
    pub deliveries: u64,
    /// The `+TERM` reason, when one was given.
    pub reason: Option<String>,
}

/// Why an advisory was not understood.
#[derive(Debug, thiserror::Error)]
pub enum AdvisoryError {
    /// The subject is not a consumer advisory this service handles.
    #[error("subject {0:?} is not a max-deliveries or terminated advisory")]
    Subject(String),
    /// The body is not the advisory JSON.
    #[error("advisory body is not valid: {0}")]
    Body(#[from] serde_json::Error),
    /// Subject and body disagree.
    #[error(
        "advisory subject names {subject_stream}/{subject_consumer}, body {body_stream}/{body_consumer}"
    )]
    Mismatch {
        /// Stream in the subject.
        subject_stream: String,
        /// Consumer in the subject.
        subject_consumer: String,
        /// Stream in the body.
        body_stream: String,
        /// Consumer in the body.
        body_consumer: String,
    },
}

/// Reads an advisory message.
pub fn parse(subject: &str, payload: &[u8]) -> Result<Advisory, AdvisoryError> {
    let (kind, stream, consumer) =
        advisory::parse(subject).ok_or_else(|| AdvisoryError::Subject(subject.to_owned()))?;
    let body: Body = serde_json::from_slice(payload)?;
    if body.stream != stream || body.consumer != consumer {
        return Err(AdvisoryError::Mismatch {
            subject_stream: stream.to_owned(),
            subject_consumer: consumer.to_owned(),
            body_stream: body.stream,
            body_consumer: body.consumer,
        });
    }
    Ok(Advisory {
        kind,
        stream: body.stream,
        consumer: body.consumer,
        stream_seq: body.stream_seq,
        deliveries: body.deliveries,
        reason: body.reason.filter(|r| !r.is_empty()),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_the_server_s_advisories() {
        // As nats-server 2.15 sends them.
        let max = parse(
            "$JS.EVENT.ADVISORY.CONSUMER.MAX_DELIVERIES.EGRESS.egress-worker",
            br#"{"type":"io.nats.jetstream.advisory.v1.max_deliver","id":"x","timestamp":"2026-11-23T02:54:43.385459873Z","stream":"EGRESS","consumer":"egress-worker","stream_seq":1,"deliveries":2}"#,
        )
        .unwrap();
        assert_eq!(max.kind, AdvisoryKind::MaxDeliveries);
        assert_eq!((max.stream_seq, max.deliveries), (1, 2));
        let term = parse(
            "$JS.EVENT.ADVISORY.CONSUMER.MSG_TERMINATED.EGRESS.egress-worker",
            br#"{"type":"io.nats.jetstream.advisory.v1.terminated","stream":"EGRESS","consumer":"egress-worker","consumer_seq":2,"stream_seq":2,"deliveries":1,"reason":"bad"}"#,
        )
        .unwrap();
        assert_eq!(term.kind, AdvisoryKind::Terminated);
        assert_eq!(term.reason.as_deref(), Some("bad"));
        assert!(parse("$JS.EVENT.ADVISORY.CONSUMER.MAX_DELIVERIES.EGRESS.x", b"{}").is_err());
        assert!(
            parse(
                "$JS.EVENT.ADVISORY.CONSUMER.MAX_DELIVERIES.EGRESS.x",
                br#"{"stream":"OTHER","consumer":"x","stream_seq":1,"deliveries":2}"#
            )
            .is_err()
        );
    }
}
