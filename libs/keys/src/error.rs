//! The one error type of this crate: why an id, token or key was refused.

/// Why an id, encoded token or KV key was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum KeyError {
    /// The value was empty.
    #[error("{kind} must not be empty")]
    Empty {
        /// What was being validated (`tenant id`, `msg id`, …).
        kind: &'static str,
    },
    /// The value was longer than its documented limit.
    #[error("{kind} is {len} bytes long; the limit is {max}")]
    TooLong {
        /// What was being validated.
        kind: &'static str,
        /// The length seen, in bytes.
        len: usize,
        /// The documented limit, in bytes.
        max: usize,
    },
    /// Leading or trailing whitespace, which NATS header values cannot carry.
    #[error("{kind} {value:?} starts or ends with whitespace, which NATS headers do not preserve")]
    Padded {
        /// What was being validated.
        kind: &'static str,
        /// The refused value (truncated to 80 characters).
        value: String,
    },
    /// A character outside the documented charset.
    #[error(
        "{kind} {value:?} has an invalid character {found:?} at byte {at}: allowed are {allowed}"
    )]
    InvalidChar {
        /// What was being validated.
        kind: &'static str,
        /// The refused value (truncated to 80 characters).
        value: String,
        /// The offending character.
        found: char,
        /// Its byte offset.
        at: usize,
        /// The documented charset.
        allowed: &'static str,
    },
    /// An encoded token that is not the canonical encoding of any text.
    #[error("malformed encoded token {value:?}: {reason}")]
    MalformedToken {
        /// The refused token (truncated to 80 characters).
        value: String,
        /// What is wrong with it.
        reason: &'static str,
    },
    /// A stage name that is not one of the pipeline's stages.
    #[error("unknown stage {0:?}: expected ingress, idempotency, backpressure, egress or dlq")]
    UnknownStage(String),
    /// A KV key that does not follow its bucket's schema.
    #[error("key {key:?} does not match the {schema} schema: {reason}")]
    KeySchema {
        /// The key schema (`idempotency`, `route`, …).
        schema: &'static str,
        /// The refused key (truncated to 80 characters).
        key: String,
        /// What is wrong with it.
        reason: String,
    },
}

/// Truncates a refused value for an error message, so errors stay readable with 1 KiB inputs.
pub(crate) fn shown(value: &str) -> String {
    const MAX: usize = 80;
    match value.char_indices().nth(MAX) {
        Some((at, _)) => format!("{}…", &value[..at]),
        None => value.to_owned(),
    }
}
