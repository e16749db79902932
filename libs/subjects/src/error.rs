//! Why a subject did not parse.

use switchyard_keys::KeyError;

/// Why a subject did not parse as the expected kind.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SubjectError {
    /// The subject lacks this deployment's prefix.
    #[error("subject {subject:?} does not start with the deployment prefix {prefix:?}")]
    WrongPrefix {
        /// The subject.
        subject: String,
        /// The expected prefix.
        prefix: String,
    },
    /// The subject's root token names another kind.
    #[error("subject {subject:?} is not a {expected} subject")]
    WrongKind {
        /// The subject.
        subject: String,
        /// The kind that was expected.
        expected: &'static str,
    },
    /// The version token is not `v1`.
    #[error("subject {subject:?} has version {found:?}; this build speaks v1")]
    UnsupportedVersion {
        /// The subject.
        subject: String,
        /// The version token found.
        found: String,
    },
    /// Too few or too many tokens after the version.
    #[error(
        "subject {subject:?} has {found} tokens after the version; a {kind} subject has {expected}"
    )]
    TokenCount {
        /// The subject.
        subject: String,
        /// The kind being parsed.
        kind: &'static str,
        /// How many tokens that kind has after the version.
        expected: usize,
        /// How many were found.
        found: usize,
    },
    /// A sharded stage's subject names a shard other than its tenant's.
    #[error("subject {subject:?} names the wrong shard: its tenant's shard is {expected}")]
    WrongShard {
        /// The subject.
        subject: String,
        /// The tenant's shard.
        expected: crate::Shard,
    },
    /// A sized stage's subject ends in a token that is no [`crate::SizeClass`].
    #[error(
        "subject {subject:?} ends in {token:?}, which is no size class (1k, 2k, … 512k, 1m, … 64m)"
    )]
    InvalidSizeClass {
        /// The subject.
        subject: String,
        /// The last token.
        token: String,
    },
    /// A token is not a valid id.
    #[error("subject {subject:?}: {source}")]
    InvalidToken {
        /// The subject.
        subject: String,
        /// The id validation error.
        #[source]
        source: KeyError,
    },
}

impl SubjectError {
    /// The same error about `subject` (a parse of part of it reports the whole).
    pub(crate) fn naming(mut self, whole: &str) -> Self {
        match &mut self {
            SubjectError::WrongPrefix { subject, .. }
            | SubjectError::WrongKind { subject, .. }
            | SubjectError::UnsupportedVersion { subject, .. }
            | SubjectError::TokenCount { subject, .. }
            | SubjectError::WrongShard { subject, .. }
            | SubjectError::InvalidSizeClass { subject, .. }
            | SubjectError::InvalidToken { subject, .. } => *subject = whole.to_owned(),
        }
        self
    }
}
