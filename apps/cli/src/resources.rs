//! Opening the streams and buckets a command works on, with a clear error (and the fix) when
//! the deployment has not been provisioned.

use anyhow::Context;
use async_nats::jetstream::context::{GetStreamError, GetStreamErrorKind};
use async_nats::jetstream::{self, ErrorCode, kv, stream};
use switchyard_topology::ResolvedTopology;

fn is_not_found(err: &GetStreamError) -> bool {
    matches!(err.kind(), GetStreamErrorKind::JetStream(j) if j.error_code() == ErrorCode::STREAM_NOT_FOUND)
}

/// The DLQ stream (`topology.stream_name("DLQ")`).
pub async fn dlq_stream(
    js: &jetstream::Context,
    topology: &ResolvedTopology,
) -> anyhow::Result<stream::Stream> {
    let name = topology
        .stream_name("DLQ")
        .context("the topology declares no DLQ stream")?;
    match js.get_stream(name).await {
        Ok(stream) => Ok(stream),
        Err(err) if is_not_found(&err) => {
            anyhow::bail!("the DLQ stream {name} does not exist: run `switchyard provision`")
        }
        Err(err) => Err(err).with_context(|| format!("looking up the DLQ stream {name}")),
    }
}

/// A declared KV bucket by base name (`routes`, `tenants`), after prefix and overrides.
pub async fn bucket(
    js: &jetstream::Context,
    topology: &ResolvedTopology,
    base: &str,
) -> anyhow::Result<kv::Store> {
    let name = topology
        .bucket_name(base)
        .with_context(|| format!("the topology declares no {base} bucket"))?;
    match js.get_key_value(name).await {
        Ok(store) => Ok(store),
        Err(err) => {
            let missing = std::error::Error::source(&err)
                .and_then(|source| source.downcast_ref::<GetStreamError>())
                .is_some_and(is_not_found);
            if missing {
                anyhow::bail!("the {base} bucket {name} does not exist: run `switchyard provision`")
            }
            Err(err).with_context(|| format!("opening the {base} bucket {name}"))
        }
    }
}
