//! One delivery attempt, as kept in a message's attempt history: egress carries the live
//! history between retries in [`crate::headers::ATTEMPTS_LOG`], and a DLQ record keeps it in
//! its history header. Both use the same JSON ([`encode_history`], [`decode_history`]). The
//! delivery log (`ATTEMPTS`) stores each attempt on its own, with what it was for
//! ([`LoggedAttempt`]). An attempt's error text has credentials masked
//! ([`mask_credentials`]): a sink's response may echo them.

use serde::{Deserialize, Serialize};
use time::OffsetDateTime;

/// The most attempts a history keeps (the oldest are dropped first).
pub const MAX_HISTORY: usize = 20;
/// The longest error text kept per attempt, in characters.
const MAX_ERROR_CHARS: usize = 200;

/// One attempt: when, what happened, how long it took.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AttemptRecord {
    /// When the attempt started.
    #[serde(with = "time::serde::rfc3339")]
    pub at: OffsetDateTime,
    /// What happened, in a word: `delivered`, `http_status`, `timeout`, `connect`, `nats`, …
    pub outcome: String,
    /// The HTTP status, for webhook attempts that got a response.
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub status: Option<u16>,
    /// How long it took, in milliseconds.
    pub duration_ms: u64,
    /// The error, truncated.
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub error: Option<String>,
}

impl AttemptRecord {
    /// Builds a record, truncating the error text.
    pub fn new(
        at: OffsetDateTime,
        outcome: impl Into<String>,
        status: Option<u16>,
        duration_ms: u64,
        error: Option<String>,
    ) -> Self {
        let error = error.map(|e| {
            let one_line = mask_credentials(&e.replace(['\r', '\n'], " "));
            match one_line.char_indices().nth(MAX_ERROR_CHARS) {
                Some((at, _)) => format!("{}…", &one_line[..at]),
                None => one_line,
            }
        });
        Self {
            at,
            outcome: outcome.into(),
            status,
            duration_ms,
            error,
        }
    }
}

/// Credentials a sink's response may echo, with the value that follows them: `Bearer <token>`,
/// and `token`, `api_key`, `password`, `secret`, `authorization`, `cookie`… followed by `=`,
/// `:` or a quoted JSON value.
static CREDENTIALS: std::sync::LazyLock<[regex::Regex; 2]> = std::sync::LazyLock::new(|| {
    [
        regex::Regex::new(r"(?i)\b(bearer|basic)\s+[A-Za-z0-9._~+/=-]+"),
        regex::Regex::new(
            r#"(?i)\b((?:access_|refresh_|id_|api[_-]?|auth[_-]?|session[_-]?)?(?:token|key|secret|password|passwd|pwd|authorization|cookie|credentials?))("?\s*[:=]\s*"?)([^\s"',;&}]+)"#,
        ),
    ]
    .map(|pattern| pattern.expect("a valid pattern"))
});

/// `text` with credential values replaced by `***` (the names stay, so the reason is still
/// readable): `{"token":"abc"}` → `{"token":"***"}`, `Bearer eyJ…` → `Bearer ***`.
pub fn mask_credentials(text: &str) -> String {
    let [bearer, keyed] = &*CREDENTIALS;
    let text = bearer.replace_all(text, "$1 ***");
    keyed.replace_all(&text, "$1$2***").into_owned()
}

/// One record of the delivery log: stream `ATTEMPTS`, subject `attempts.v1.<tenant>`, one per
/// attempt egress makes, delivered or not. JSON; the attempt's own fields (`at`, `outcome`,
/// `status`, `duration_ms`, `error`) are inline.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LoggedAttempt {
    /// The envelope id (the `webhook-id` the receiver saw).
    pub id: String,
    /// The producer's message id.
    pub msg_id: String,
    /// The tenant.
    pub tenant: String,
    /// The team.
    pub team: String,
    /// The platform.
    pub platform: String,
    /// The route's KV key (`<tenant>.<team or _>.<platform>`): the destination.
    pub route: String,
    /// `webhook` or `nats`.
    pub route_type: String,
    /// Which attempt (1 for the first).
    pub attempt: u32,
    /// How it counted: `delivered`, `retryable` (retried later, unless attempts or the deadline
    /// run out) or `permanent` (dead-lettered).
    pub result: String,
    /// The W3C trace id of the delivery, when known.
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub trace_id: Option<String>,
    /// When, what happened, how long it took.
    #[serde(flatten)]
    pub record: AttemptRecord,
}

/// Encodes a history as one header value (compact JSON), keeping the last [`MAX_HISTORY`].
pub fn encode_history(history: &[AttemptRecord]) -> String {
    let start = history.len().saturating_sub(MAX_HISTORY);
    serde_json::to_string(&history[start..]).unwrap_or_else(|_| "[]".to_owned())
}

/// Decodes a history header; a missing header is an empty history.
pub fn decode_history(value: Option<&str>) -> Result<Vec<AttemptRecord>, serde_json::Error> {
    value.map_or(Ok(Vec::new()), serde_json::from_str)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn credentials_in_an_error_are_masked_and_the_rest_stays_readable() {
        for (raw, masked) in [
            (
                r#"HTTP 401: {"error":"bad token","token":"abc123","user":"ann"}"#,
                r#"HTTP 401: {"error":"bad token","token":"***","user":"ann"}"#,
            ),
            (
                "HTTP 403: Authorization: Bearer eyJhbGciOi.x.y refused",
                "HTTP 403: Authorization: *** *** refused",
            ),
            ("HTTP 400: api_key=SECRET&x=1", "HTTP 400: api_key=***&x=1"),
            ("HTTP 500: password: hunter2", "HTTP 500: password: ***"),
            (
                "HTTP 503: service unavailable",
                "HTTP 503: service unavailable",
            ),
        ] {
            assert_eq!(mask_credentials(raw), masked);
        }
        let at = OffsetDateTime::from_unix_timestamp(1_700_000_000).unwrap();
        let record = AttemptRecord::new(
            at,
            "http_status",
            Some(401),
            3,
            Some(r#"{"secret":"s"}"#.into()),
        );
        assert_eq!(record.error.as_deref(), Some(r#"{"secret":"***"}"#));
    }

    #[test]
    fn history_round_trips_and_is_bounded() {
        let at = OffsetDateTime::from_unix_timestamp(1_700_000_000).unwrap();
        let history: Vec<AttemptRecord> = (0..30)
            .map(|i| AttemptRecord::new(at, "http_status", Some(500), i, Some("boom\nline".into())))
            .collect();
        let encoded = encode_history(&history);
        assert!(!encoded.contains('\n'));
        let decoded = decode_history(Some(&encoded)).unwrap();
        assert_eq!(decoded.len(), MAX_HISTORY);
        assert_eq!(decoded[0].duration_ms, 10);
        assert_eq!(decoded[0].error.as_deref(), Some("boom line"));
        assert!(decode_history(None).unwrap().is_empty());
    }
}
