//! The DLQ record's header names (the rest of the record is the original message).

/// The stage that gave up (`ingress`, `idempotency`, `backpressure`, `egress`).
pub const STAGE: &str = "Switchyard-Dlq-Stage";
/// The [`crate::DlqCode`].
pub const CODE: &str = "Switchyard-Dlq-Code";
/// A human reason, one line.
pub const REASON: &str = "Switchyard-Dlq-Reason";
/// Delivery attempts made before giving up.
pub const ATTEMPTS: &str = "Switchyard-Dlq-Attempts";
/// First failure (RFC 3339).
pub const FIRST_FAILURE: &str = "Switchyard-Dlq-First-Failure";
/// Last failure (RFC 3339).
pub const LAST_FAILURE: &str = "Switchyard-Dlq-Last-Failure";
/// The stream the failed message was read from.
pub const SOURCE_STREAM: &str = "Switchyard-Dlq-Source-Stream";
/// Its sequence in that stream.
pub const SOURCE_SEQ: &str = "Switchyard-Dlq-Source-Seq";
/// The subject it was read from (for ingress failures, the producer's subject).
pub const SOURCE_SUBJECT: &str = "Switchyard-Dlq-Source-Subject";
/// The `Nats-Msg-Id` of the message as the stage read it: the producer's id for ingress
/// failures, the hop id (`<envelope id>:<stage>:<replay>`) for later stages.
pub const ORIGINAL_MSG_ID: &str = "Switchyard-Dlq-Original-Msg-Id";
/// The attempt history: a JSON array of [`switchyard_envelope::AttemptRecord`] (the last 20).
pub const HISTORY: &str = "Switchyard-Dlq-History";
/// Set when the original headers were too large to keep (over
/// [`crate::record::MAX_ORIGINAL_HEADER_BYTES`]): how many there were and their size. The
/// record then carries no original header.
pub const HEADERS_DROPPED: &str = "Switchyard-Dlq-Headers-Dropped";
/// Every DLQ header starts with this.
pub const PREFIX: &str = "Switchyard-Dlq-";
