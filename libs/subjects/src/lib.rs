//! The subject taxonomy: every NATS subject Switchyard publishes or subscribes to is formatted
//! and parsed here, and nowhere else.
//!
//! Grammar (version `v1`; `[p.]` is the optional deployment prefix):
//!
//! | kind | subject | who publishes |
//! |---|---|---|
//! | [`StageSubject`] (ingress) | `[p.]ingress.v1.<tenant>.<team>.<platform>` | producers |
//! | [`StageSubject`] (hand-off) | `[p.]egress.v1.<tenant>.<team>.<platform>` | the stage before |
//! | [`StageSubject`] (sized hand-off) | `[p.]idempotency.v1.<tenant>.<team>.<platform>.<class>` ([`SizeClass`]) | the stage before |
//! | [`StageSubject`] (sharded, sized hand-off) | `[p.]backpressure.v1.<shard>.<tenant>.<team>.<platform>.<class>` ([`Shard`]) | the stage before |
//! | [`DlqSubject`] | `[p.]dlq.v1.<tenant>.<stage>.<platform>` | any stage that gives up |
//! | [`ReceiptSubject`] | `[p.]delivered.v1.<tenant>.<team>.<platform>` | egress, after a delivery |
//! | [`AttemptSubject`] | `[p.]attempts.v1.<tenant>` | egress, after every attempt (the delivery log) |
//! | [`EventSubject`] | `[p.]events.v1.<tenant or _>.<kind>` | egress, the CLI and API, the dlq service: operational events (stream `EVENTS`) |
//! | [`ControlSubject`] | `[p.]control.v1.dlq.<command>` | the operator CLI |
//! | [`AlertSubject`] | `[p.]alerts.v1.<tenant>.<alert>` | the dlq service |
//! | [`DelaySubject`] | `[p.]delay.v1.<stage>.<tenant>.<team>.<platform>.<key>` | a stage scheduling a retry or wait |
//!
//! A hand-off subject is named after the stage that *consumes* it, so inserting or removing a
//! stage is a change of which [`InputStage`] a service publishes to — configuration, not code.
//! Ids are validated by `switchyard-keys`, so no value can add a token, a wildcard or an
//! empty token. JetStream's own advisory subjects are in [`advisory`]; [`pattern_matches`] is
//! the server's wildcard matching.

pub mod advisory;
mod error;
mod kinds;
mod namespace;
mod shard;
mod size;
mod wildcard;

pub use error::SubjectError;
pub use kinds::{
    AlertKind, AlertSubject, AttemptSubject, ControlCommand, ControlSubject, DelaySubject,
    DlqFilter, DlqSubject, EventKind, EventSubject, InputStage, ReceiptSubject, StageSubject,
    Subject, SubjectKind, UNKNOWN_TOKEN,
};
pub use namespace::Namespace;
pub use shard::Shard;
pub use size::SizeClass;
pub use wildcard::pattern_matches;

/// The taxonomy version token every subject carries after its root.
pub const VERSION: &str = "v1";
