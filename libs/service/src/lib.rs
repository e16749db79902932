//! What every pipeline service shares, so each service's code is only its own logic:
//!
//! - [`worker`]: the consume loop. A service implements [`worker::Handler`] and returns an
//!   [`worker::Outcome`]; the loop maps outcomes to ack / nak-with-delay / DLQ record + ack in
//!   exactly one place, bounds concurrency, and drains in-flight work on shutdown.
//! - [`handoff`]: publishing to the next stage with the deterministic hop `Nats-Msg-Id`, and
//!   scheduling a delayed re-entry (egress retries) through a JetStream message schedule.
//! - [`open`]: opening the streams, consumers and buckets a service needs, with one error.
//! - [`metrics`]: the core metric set every service emits, in Prometheus text.
//! - [`probes`]: `/healthz`, `/readyz`, `/metrics` over HTTP.
//! - [`launch`]: binding the listener and running a service's work beside its routes.
//! - [`shutdown`]: SIGTERM / Ctrl-C as a cancellation token.

pub mod handoff;
pub mod launch;
pub mod metrics;
pub mod open;
pub mod probes;
pub mod shutdown;
pub mod worker;

pub use handoff::{Handoff, HandoffError};
pub use launch::{LaunchError, Running, launch};
pub use metrics::Metrics;
pub use open::{Deployment, OpenError};
pub use probes::{Readiness, router};
pub use worker::{Handled, Handler, Outcome, Worker, WorkerSettings};
