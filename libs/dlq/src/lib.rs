//! DLQ records, written by every stage through this one library.
//!
//! A DLQ entry is a message on `[p.]dlq.v1.<tenant|_>.<stage>.<platform|_>` in the DLQ stream
//! (never a work queue). Its payload is the original payload, byte for byte; its headers are
//! the original headers (less the server-interpreted `Nats-*` ones) plus the
//! `Switchyard-Dlq-*` headers of [`headers`]. The wire format is documented in
//! `docs/dlq-wire-format.md` so a stock NATS client can read it.
//!
//! - [`code`]: [`DlqCode`], the closed set of reasons.
//! - [`record`]: [`DeadLetter`] (what a stage writes) and [`DlqEntry`] (what operators read).
//! - [`headers`]: the record's header names.
//!
//! What only the dlq service and the CLI need (selecting, reading, replaying, jobs, stats,
//! export) lives in `switchyard-dlq-ops`, so a stage binary links none of it.

pub mod code;
pub mod headers;
pub mod record;

pub use code::DlqCode;
pub use record::{DeadLetter, DlqEntry, DlqEntryView, DlqError};
