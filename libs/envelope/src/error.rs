//! Why headers did not make a valid envelope.

/// Why a message's headers did not make a valid envelope or producer message.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum EnvelopeError {
    /// A required header is absent (or the message has no headers at all).
    #[error("missing header {0}")]
    MissingHeader(&'static str),
    /// A header is present but its value is not valid.
    #[error("header {name} has an invalid value {value:?}: {reason}")]
    InvalidHeader {
        /// The header's name.
        name: &'static str,
        /// The refused value (truncated to 80 characters).
        value: String,
        /// Why it was refused.
        reason: String,
    },
    /// `Switchyard-Schema` is a version this build does not read (it names the version found
    /// and the range read).
    #[error(transparent)]
    UnsupportedSchema(#[from] crate::UnsupportedSchema),
}

impl EnvelopeError {
    pub(crate) fn invalid(name: &'static str, value: &str, reason: impl ToString) -> Self {
        let value = match value.char_indices().nth(80) {
            Some((at, _)) => format!("{}…", &value[..at]),
            None => value.to_owned(),
        };
        Self::InvalidHeader {
            name,
            value,
            reason: reason.to_string(),
        }
    }
}
