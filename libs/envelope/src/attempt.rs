//! One delivery attempt, as kept in a message's attempt history: egress carries the live
//! history between retries in [`crate::headers::ATTEMPTS_LOG`], and a DLQ record keeps it in
//! its history header. Both use the same JSON ([`encode_history`], [`decode_history`]).

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
            let one_line = e.replace(['\r', '\n'], " ");
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
