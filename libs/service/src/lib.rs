//! What every pipeline service shares, so each service's code is only its own logic:
//!
//! - [`budget`]: the bytes of messages a service's loops hold at once, under its
//!   `max_in_flight_bytes`: fetches wait for room and are sized by it.
//! - [`settle`]: the one place a stage's [`Outcome`] becomes ack / nak-with-delay / DLQ record +
//!   ack, with the per-message tracing span and the in-place hold for transient failures; used
//!   by the worker and by the backpressure service's per-tenant loops.
//! - [`worker`]: the consume loop. A service implements [`worker::Handler`] and returns a
//!   [`Handled`]; the loop bounds concurrency, settles each message through [`settle`], and
//!   drains in-flight work on shutdown.
//! - [`handoff`]: publishing to the next stage with the deterministic hop `Nats-Msg-Id`, and
//!   scheduling a delayed re-entry (egress retries) through a JetStream message schedule.
//! - [`dlq_quota`]: each tenant's share of the DLQ, checked before a record is written.
//! - [`events`]: durable operational events per tenant (stream `EVENTS`).
//! - [`high_water`]: the fill of a stream that must discard old (`EGRESS`), above which
//!   hand-offs and schedules into it wait instead of making it evict.
//! - [`lease`]: global rate limits across replicas, by leasing GCRA slots from KV (a tenant's
//!   limit at backpressure, a destination's at egress).
//! - [`metrics`]: the core metric set every service emits, in Prometheus text.
//! - [`pull`]: a consume loop's pulls, one at a time, through one inbox it keeps.
//! - [`probes`]: `/healthz`, `/readyz`, `/metrics` over HTTP.
//! - [`launch`]: the one start-up path: take the listener (an address or a bound listener),
//!   and a second one where the probes live apart ([`launch_with`]: ingress), serve the routes
//!   and run the service's work beside them ([`Running`]).
//! - [`serve`]: one listener served with a deadline on each request's headers, and drained on
//!   shutdown.
//! - [`shutdown`]: SIGTERM / Ctrl-C as a cancellation token.
//! - [`storage`]: storage health (KV and publish round trips, fill of shared streams and
//!   buckets) measured every interval, for `/readyz` and `/metrics` ([`StorageProbe`]).

pub mod budget;
pub mod dlq_quota;
pub mod events;
pub mod handoff;
pub mod high_water;
pub mod launch;
pub mod lease;
pub mod metrics;
pub mod probes;
pub mod pull;
pub mod serve;
pub mod settle;
pub mod shutdown;
pub mod storage;
pub mod worker;

pub use dlq_quota::DlqQuota;
pub use handoff::{Handoff, HandoffError};
pub use high_water::HighWater;
pub use launch::{HttpServer, LaunchError, Listen, Running, launch, launch_with};
pub use metrics::Metrics;
pub use probes::{Readiness, router};
pub use settle::{Handled, Outcome, SettleSettings, Settler};
pub use storage::StorageProbe;
pub use worker::{Ended, Gate, Handler, Meter, Worker, WorkerSettings};
