//! JetStream's own advisory subjects (not prefixed, not versioned: the server owns them), used
//! by the dlq service's safety net.

const MAX_DELIVERIES: &str = "$JS.EVENT.ADVISORY.CONSUMER.MAX_DELIVERIES";
const TERMINATED: &str = "$JS.EVENT.ADVISORY.CONSUMER.MSG_TERMINATED";

/// Which advisory a subject carries.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AdvisoryKind {
    /// A message reached its consumer's `max_deliver` without being acked.
    MaxDeliveries,
    /// A message was terminated (`+TERM`) by a consumer.
    Terminated,
}

impl AdvisoryKind {
    fn head(self) -> &'static str {
        match self {
            AdvisoryKind::MaxDeliveries => MAX_DELIVERIES,
            AdvisoryKind::Terminated => TERMINATED,
        }
    }
}

/// The subscription filter for one advisory kind on one stream (or every stream).
pub fn filter(kind: AdvisoryKind, stream: Option<&str>) -> String {
    format!("{}.{}.*", kind.head(), stream.unwrap_or("*"))
}

/// Parses an advisory subject into `(kind, stream, consumer)`.
pub fn parse(subject: &str) -> Option<(AdvisoryKind, &str, &str)> {
    [AdvisoryKind::MaxDeliveries, AdvisoryKind::Terminated]
        .into_iter()
        .find_map(|kind| {
            let rest = subject.strip_prefix(kind.head())?.strip_prefix('.')?;
            let (stream, consumer) = rest.split_once('.')?;
            (!stream.is_empty() && !consumer.is_empty() && !consumer.contains('.'))
                .then_some((kind, stream, consumer))
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn advisory_round_trip() {
        assert_eq!(
            filter(AdvisoryKind::MaxDeliveries, Some("EGRESS")),
            "$JS.EVENT.ADVISORY.CONSUMER.MAX_DELIVERIES.EGRESS.*"
        );
        assert_eq!(
            parse("$JS.EVENT.ADVISORY.CONSUMER.MSG_TERMINATED.EGRESS.egress-worker"),
            Some((AdvisoryKind::Terminated, "EGRESS", "egress-worker"))
        );
        assert_eq!(
            parse("$JS.EVENT.ADVISORY.CONSUMER.MAX_DELIVERIES.EGRESS"),
            None
        );
    }
}
