//! The one place that decides whether a delivery attempt succeeded, may be retried, or failed
//! for good. Sinks report what happened ([`Attempted`]); [`classify`] judges it.
//!
//! | what happened | verdict |
//! |---|---|
//! | HTTP 2xx; NATS: a reply (core route), the stream's ack (JetStream route), flushed (`fire_and_forget` route) | delivered |
//! | HTTP 408, 429, 5xx; timeouts; connect errors; other transport errors | retryable |
//! | NATS no responders (nobody subscribed to a core route, no stream for a JetStream route), no reply or ack in time, a broken connection | retryable |
//! | HTTP 1xx, 3xx (redirects are not followed), other 4xx; a request that cannot be built; a message too large for the sink | permanent |
//!
//! `Retry-After` (seconds or an HTTP date) is honoured on 429 and 503 only.

use std::time::Duration;

use time::OffsetDateTime;

use crate::backoff::parse_retry_after;

/// What replaces a response body that is not kept: the message's tenant has encryption on, and
/// receivers often echo the payload in an error.
pub const BODY_NOT_KEPT: &str = "(response body not kept: the payload is encrypted)";

impl Attempted {
    /// The same attempt without the response body's excerpt ([`BODY_NOT_KEPT`] instead): for a
    /// message whose payload is encrypted, since the attempt log, the DLQ record, the retry's
    /// history header and the operational events all keep what the sink answered, in clear.
    pub fn without_body(self) -> Self {
        match self {
            Attempted::HttpResponse {
                status,
                retry_after,
                body,
            } if !body.is_empty() => Attempted::HttpResponse {
                status,
                retry_after,
                body: BODY_NOT_KEPT.to_owned(),
            },
            other => other,
        }
    }
}

/// What one attempt did, as reported by a sink.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Attempted {
    /// The webhook answered.
    HttpResponse {
        /// The status code.
        status: u16,
        /// The `Retry-After` header, if any.
        retry_after: Option<String>,
        /// The start of the response body (for the attempt history).
        body: String,
    },
    /// The webhook request failed before a response arrived.
    HttpFailed {
        /// How it failed.
        kind: HttpFailure,
        /// The client's error.
        error: String,
    },
    /// The NATS sink took the message: a reply came (core route), the stream acknowledged it
    /// (JetStream route), or it was flushed (`fire_and_forget` route).
    NatsPublished,
    /// The NATS publish failed.
    NatsFailed {
        /// How it failed.
        kind: NatsFailure,
        /// The client's error.
        error: String,
    },
    /// The attempt did not finish within the route's timeout.
    TimedOut {
        /// The timeout.
        after: Duration,
    },
}

/// How a webhook request failed without a response.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HttpFailure {
    /// The connection could not be made (refused, DNS, TLS handshake).
    Connect,
    /// The client's own timeout fired.
    Timeout,
    /// The request could not be built (a header value the client refuses, …).
    Request,
    /// Anything else on the wire (reset connection, broken body, …).
    Transport,
}

/// How a NATS publish failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NatsFailure {
    /// Nobody listens on the subject: no subscriber (core route) or no stream (JetStream).
    NoResponders,
    /// No reply or acknowledgement in time.
    Timeout,
    /// The connection is down or the publish could not be sent.
    Connection,
    /// The message is larger than the server or stream accepts.
    TooLarge,
    /// The stream refused the message for another reason.
    Refused,
}

/// The judgement of one attempt.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// Delivered.
    Delivered,
    /// Worth trying again; `retry_after` is the sink's requested wait, if it gave one.
    Retryable {
        /// The sink's `Retry-After`, uncapped.
        retry_after: Option<Duration>,
    },
    /// Trying again would fail the same way.
    Permanent,
}

/// An attempt judged, with what goes into the attempt history.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Classified {
    /// The verdict.
    pub verdict: Verdict,
    /// One word for the history and metrics: `delivered`, `http_status`, `timeout`, `connect`,
    /// `request`, `transport`, `nats`.
    pub outcome: &'static str,
    /// The HTTP status, when there was a response.
    pub status: Option<u16>,
    /// What went wrong, for people (credentials masked, control characters escaped:
    /// [`switchyard_envelope::clean_error`]).
    pub error: Option<String>,
}

impl Classified {
    /// Whether the attempt delivered the message.
    pub fn is_delivered(&self) -> bool {
        self.verdict == Verdict::Delivered
    }
}

/// Whether an HTTP status may succeed later.
pub fn retryable_status(status: u16) -> bool {
    status == 408 || status == 429 || (500..=599).contains(&status)
}

/// Judges one attempt. `now` resolves `Retry-After` dates.
pub fn classify(attempted: &Attempted, now: OffsetDateTime) -> Classified {
    let retryable = Verdict::Retryable { retry_after: None };
    let (verdict, outcome, status, error) = match attempted {
        Attempted::HttpResponse {
            status,
            retry_after,
            body,
        } => {
            let status = *status;
            let verdict = if (200..=299).contains(&status) {
                Verdict::Delivered
            } else if retryable_status(status) {
                let honoured = matches!(status, 429 | 503);
                Verdict::Retryable {
                    retry_after: retry_after
                        .as_deref()
                        .filter(|_| honoured)
                        .and_then(|value| parse_retry_after(value, now)),
                }
            } else {
                Verdict::Permanent
            };
            let error = (verdict != Verdict::Delivered).then(|| {
                if body.is_empty() {
                    format!("HTTP {status}")
                } else {
                    format!("HTTP {status}: {body}")
                }
            });
            let outcome = if verdict == Verdict::Delivered {
                "delivered"
            } else {
                "http_status"
            };
            (verdict, outcome, Some(status), error)
        }
        Attempted::HttpFailed { kind, error } => {
            let (verdict, outcome) = match kind {
                HttpFailure::Connect => (retryable, "connect"),
                HttpFailure::Timeout => (retryable, "timeout"),
                HttpFailure::Transport => (retryable, "transport"),
                HttpFailure::Request => (Verdict::Permanent, "request"),
            };
            (verdict, outcome, None, Some(error.clone()))
        }
        Attempted::NatsPublished => (Verdict::Delivered, "delivered", None, None),
        Attempted::NatsFailed { kind, error } => {
            let verdict = match kind {
                NatsFailure::NoResponders
                | NatsFailure::Timeout
                | NatsFailure::Connection
                | NatsFailure::Refused => retryable,
                NatsFailure::TooLarge => Verdict::Permanent,
            };
            (verdict, "nats", None, Some(error.clone()))
        }
        Attempted::TimedOut { after } => (
            retryable,
            "timeout",
            None,
            Some(format!("no answer within {} ms", after.as_millis())),
        ),
    };
    Classified {
        verdict,
        outcome,
        status,
        // Cleaned once, here: the attempt history, the delivery log, the DLQ reason and the
        // logs all use this text, and a sink's answer may carry credentials or escape codes.
        error: error.map(|e| switchyard_envelope::clean_error(&e)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_attempt_without_its_body_keeps_the_status_and_says_why() {
        let answered = Attempted::HttpResponse {
            status: 422,
            retry_after: None,
            body: r#"{"card":"4111"}"#.to_owned(),
        };
        let classified = classify(&answered.clone().without_body(), OffsetDateTime::now_utc());
        assert_eq!(
            classified.error.as_deref(),
            Some("HTTP 422: (response body not kept: the payload is encrypted)")
        );
        assert_eq!(classified.status, Some(422));
        // Nothing to hide: unchanged.
        let empty = Attempted::HttpResponse {
            status: 500,
            retry_after: None,
            body: String::new(),
        };
        assert_eq!(empty.clone().without_body(), empty);
        assert_eq!(
            Attempted::NatsPublished.without_body(),
            Attempted::NatsPublished
        );
    }

    fn http(status: u16, retry_after: Option<&str>) -> Classified {
        let now = OffsetDateTime::from_unix_timestamp(1_445_412_480).unwrap();
        classify(
            &Attempted::HttpResponse {
                status,
                retry_after: retry_after.map(str::to_owned),
                body: String::new(),
            },
            now,
        )
    }

    #[test]
    fn http_statuses_are_judged_by_the_table() {
        for status in [200, 201, 204, 299] {
            assert_eq!(http(status, None).verdict, Verdict::Delivered, "{status}");
        }
        for status in [408, 429, 500, 502, 503, 504, 599] {
            assert!(
                matches!(http(status, None).verdict, Verdict::Retryable { .. }),
                "{status}"
            );
        }
        for status in [100, 301, 302, 400, 401, 403, 404, 409, 410, 413, 422] {
            assert_eq!(http(status, None).verdict, Verdict::Permanent, "{status}");
        }
        let failed = http(404, None);
        assert_eq!(failed.outcome, "http_status");
        assert_eq!(failed.status, Some(404));
        assert_eq!(failed.error.as_deref(), Some("HTTP 404"));
    }

    #[test]
    fn retry_after_counts_on_429_and_503_only() {
        let wait = |c: Classified| match c.verdict {
            Verdict::Retryable { retry_after } => retry_after,
            other => panic!("{other:?}"),
        };
        assert_eq!(wait(http(429, Some("2"))), Some(Duration::from_secs(2)));
        assert_eq!(
            wait(http(503, Some("Wed, 21 Oct 2015 07:29:00 GMT"))),
            Some(Duration::from_secs(60))
        );
        assert_eq!(wait(http(500, Some("2"))), None);
        assert_eq!(wait(http(429, Some("later"))), None);
    }

    #[test]
    fn transport_and_nats_failures_are_judged_by_the_table() {
        let now = OffsetDateTime::now_utc();
        let verdict = |a: Attempted| classify(&a, now).verdict;
        let retryable = Verdict::Retryable { retry_after: None };
        let http_failed = |kind| Attempted::HttpFailed {
            kind,
            error: "x".into(),
        };
        let nats_failed = |kind| Attempted::NatsFailed {
            kind,
            error: "x".into(),
        };
        assert_eq!(verdict(http_failed(HttpFailure::Connect)), retryable);
        assert_eq!(verdict(http_failed(HttpFailure::Timeout)), retryable);
        assert_eq!(verdict(http_failed(HttpFailure::Transport)), retryable);
        assert_eq!(
            verdict(http_failed(HttpFailure::Request)),
            Verdict::Permanent
        );
        assert_eq!(verdict(nats_failed(NatsFailure::NoResponders)), retryable);
        assert_eq!(verdict(nats_failed(NatsFailure::Timeout)), retryable);
        assert_eq!(verdict(nats_failed(NatsFailure::Connection)), retryable);
        assert_eq!(verdict(nats_failed(NatsFailure::Refused)), retryable);
        assert_eq!(
            verdict(nats_failed(NatsFailure::TooLarge)),
            Verdict::Permanent
        );
        assert_eq!(verdict(Attempted::NatsPublished), Verdict::Delivered);
        let timed_out = classify(
            &Attempted::TimedOut {
                after: Duration::from_millis(1500),
            },
            now,
        );
        assert_eq!(timed_out.verdict, retryable);
        assert_eq!(timed_out.outcome, "timeout");
        assert_eq!(timed_out.error.as_deref(), Some("no answer within 1500 ms"));
    }
}
