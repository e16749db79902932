//! The service library against a real nats-server: rate leases on a real bucket, a loop's
//! pulls, and the worker's consume loop (one test binary, as the style asks).

#[path = "service/lease.rs"]
mod lease;
#[path = "service/pull.rs"]
mod pull;
#[path = "service/worker.rs"]
mod worker;
