//! The message envelope: Switchyard's metadata about a message, carried in NATS headers next
//! to payload bytes that no stage ever re-encodes.
//!
//! - [`headers`]: the header names (the wire contract).
//! - [`attempt`]: [`AttemptRecord`], one delivery attempt in a message's attempt history.
//! - [`producer`]: what a producer may send, and the policy for messages without a
//!   `Nats-Msg-Id`.
//! - [`envelope`]: the typed [`Envelope`] stamped by ingress, its header mapping, the
//!   deterministic ids and hop `Nats-Msg-Id`s, and the JSON view for the CLI and HTTP.
//! - [`schema`]: the `Switchyard-Schema` versions, which this build reads and writes, and the
//!   upgrade steps a DLQ replay applies.

pub mod attempt;
pub mod envelope;
mod error;
pub mod headers;
pub mod producer;
pub mod schema;

pub use attempt::{AttemptRecord, LoggedAttempt, clean_error, mask_credentials};
pub use envelope::{
    Attempt, Destination, Envelope, EnvelopeId, EnvelopeView, PayloadView, SourceRef, TraceContext,
};
pub use error::EnvelopeError;
pub use producer::{MsgIdPolicy, ProducerHeaders};
pub use schema::{
    MIN_SCHEMA_VERSION, SCHEMA_VERSION, SchemaError, UnsupportedSchema, Upgrade, schema_for,
};
