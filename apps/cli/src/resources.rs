//! The streams and buckets commands work on, opened through the topology's one opener
//! (`ResolvedTopology::open_*`), whose error says to run `switchyard provision` when the
//! deployment has not been provisioned.

use async_nats::jetstream::{self, kv, stream};
use switchyard_topology::{OpenError, ResolvedTopology};

/// The DLQ stream (`topology.stream_name("DLQ")`).
pub async fn dlq_stream(
    js: &jetstream::Context,
    topology: &ResolvedTopology,
) -> Result<stream::Stream, OpenError> {
    Ok(topology.open_stream(js, "DLQ").await?.1)
}

/// A declared KV bucket by base name (`routes`, `tenants`), after prefix and overrides.
pub async fn bucket(
    js: &jetstream::Context,
    topology: &ResolvedTopology,
    base: &str,
) -> Result<kv::Store, OpenError> {
    Ok(topology.open_bucket(js, base).await?.1)
}
