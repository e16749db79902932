//! The streams and buckets commands work on, opened through the topology's one opener
//! (`ResolvedTopology::open_*`), whose error says to run `switchyard provision` when the
//! deployment has not been provisioned.

use async_nats::jetstream::{self, kv, stream};
use switchyard_topology::{BucketName, OpenError, ResolvedTopology, StreamName};

/// The DLQ stream.
pub async fn dlq_stream(
    js: &jetstream::Context,
    topology: &ResolvedTopology,
) -> Result<stream::Stream, OpenError> {
    Ok(topology.open_stream(js, StreamName::Dlq).await?.1)
}

/// A declared KV bucket (`routes`, `tenants`), after prefix and overrides.
pub async fn bucket(
    js: &jetstream::Context,
    topology: &ResolvedTopology,
    bucket: BucketName,
) -> Result<kv::Store, OpenError> {
    Ok(topology.open_bucket(js, bucket).await?.1)
}
