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
            let one_line = clean_error(&e.replace(['\r', '\n'], " "));
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

/// The credential-masking rules, applied in order (see [`mask_credentials`]).
static CREDENTIALS: std::sync::LazyLock<Vec<(regex::Regex, &'static str)>> =
    std::sync::LazyLock::new(|| {
        // A name that says "credential": the keyword may end a longer name (`client_secret`,
        // `aws_secret_access_key`, `accessToken`, `x-api-key`).
        const NAME: &str = r"[A-Za-z0-9_-]*(?:token|secret|password|passwd|pwd|api[_-]?key|apikey|access[_-]?key|private[_-]?key|cookie|credentials?|signature|sig)";
        let rules: [(String, &'static str); 5] = [
            // URL user information: `scheme://user:password@host`.
            (
                r"(?i)\b([a-z][a-z0-9+.-]*://)[^/\s:@]+:[^/\s@]+@".to_owned(),
                "${1}***@",
            ),
            // An Authorization header or field: its whole value, whatever the scheme.
            (
                r#"(?i)\b((?:proxy-)?authorization)("?\s*[:=]\s*"?)[^"\r\n,}]*"#.to_owned(),
                "$1$2***",
            ),
            // `Bearer <token>`, `Basic <b64>`, `Token <t>` anywhere else.
            (
                r"(?i)\b(bearer|basic|token)\s+[A-Za-z0-9._~+/=-]{6,}".to_owned(),
                "$1 ***",
            ),
            // A quoted JSON value under a credential name: the whole string.
            (
                format!(r#"(?i)("{NAME}")(\s*:\s*)"(?:[^"\\]|\\.)*""#),
                r#"$1$2"***""#,
            ),
            // `name=value`, `name: value` (query strings, forms, headers, logs).
            (
                format!(r#"(?i)\b({NAME})(\s*[:=]\s*)[^\s"',;&}}]+"#),
                "$1$2***",
            ),
        ];
        rules
            .into_iter()
            .map(|(pattern, with)| (regex::Regex::new(&pattern).expect("a valid pattern"), with))
            .collect()
    });

/// `text` with credential values replaced by `***` (the names stay, so the reason is still
/// readable): URL user information, `Authorization` values, `Bearer`/`Basic`/`Token`
/// credentials, and the value of any field whose name ends in `token`, `secret`, `password`,
/// `key` (`api_key`, `aws_secret_access_key`, `accessToken`…), `cookie`, `credentials` or
/// `signature` — quoted JSON strings whole. Over-masking is preferred to a leak.
pub fn mask_credentials(text: &str) -> String {
    let mut text = text.to_owned();
    for (pattern, with) in CREDENTIALS.iter() {
        text = pattern.replace_all(&text, *with).into_owned();
    }
    text
}

/// An attempt's error text as it may be stored, logged and shown: credentials masked
/// ([`mask_credentials`]) and control characters escaped (`\u{1b}`), so a sink's answer can
/// neither leak a secret into the DLQ, the delivery log or a log line nor drive the terminal of
/// whoever reads them.
pub fn clean_error(text: &str) -> String {
    let masked = mask_credentials(text);
    if !masked.chars().any(char::is_control) {
        return masked;
    }
    let mut out = String::with_capacity(masked.len() + 8);
    for c in masked.chars() {
        if c.is_control() {
            out.extend(c.escape_default());
        } else {
            out.push(c);
        }
    }
    out
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
    /// The destination a fanned-out copy was for (`orders-hook`, or `_route` for the
    /// tenant's route); absent when the tenant has no destinations.
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub destination: Option<String>,
    /// The route's KV key (`<tenant>.<team or _>.<platform>`), or the destination's
    /// (`<tenant>.<destination>`): what was called, and whose breaker counted it.
    pub route: String,
    /// `webhook` or `nats`.
    pub route_type: String,
    /// Which attempt (1 for the first; counted again from 1 after a replay).
    pub attempt: u32,
    /// How many times the message was replayed from the DLQ before this attempt (0: never).
    #[serde(default)]
    pub replay: u32,
    /// How it counted: `delivered`, `retryable` (retried later, unless attempts or the deadline
    /// run out) or `permanent` (dead-lettered).
    pub result: String,
    /// The W3C trace id of the delivery (32 lowercase hex digits), when the message carried a
    /// valid `traceparent`.
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
                "HTTP 403: Authorization: ***",
            ),
            (
                "HTTP 403: authorization=Token abcdef123",
                "HTTP 403: authorization=***",
            ),
            ("HTTP 400: api_key=SECRET&x=1", "HTTP 400: api_key=***&x=1"),
            ("HTTP 500: password: hunter2", "HTTP 500: password: ***"),
            (
                r#"HTTP 400: {"password":"two words here","n":1}"#,
                r#"HTTP 400: {"password":"***","n":1}"#,
            ),
            (
                r#"HTTP 400: {"client_secret":"cs","aws_secret_access_key":"ak","accessToken":"t"}"#,
                r#"HTTP 400: {"client_secret":"***","aws_secret_access_key":"***","accessToken":"***"}"#,
            ),
            (
                "HTTP 302: see https://user:pw@host/x?sig=abc&ok=1",
                "HTTP 302: see https://***@host/x?sig=***&ok=1",
            ),
            ("sent Bearer abcdefgh123 to x", "sent Bearer *** to x"),
            (
                "HTTP 503: service unavailable",
                "HTTP 503: service unavailable",
            ),
        ] {
            assert_eq!(mask_credentials(raw), masked, "{raw}");
        }
        assert_eq!(clean_error("a\x1b]0;title\x07b"), "a\\u{1b}]0;title\\u{7}b");
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
