//! The service library against a real nats-server: rate leases on a real bucket, a loop's
//! pulls, the worker's consume loop, and the vendored client's write coalescing (one test
//! binary, as the style asks).

#[path = "service/client.rs"]
mod client;
#[path = "service/lease.rs"]
mod lease;
#[path = "service/pull.rs"]
mod pull;
#[path = "service/worker.rs"]
mod worker;
