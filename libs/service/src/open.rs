//! Opening what a service needs from the deployment's topology — streams, consumers, buckets —
//! with one clear error (and its fix) when the deployment has not been provisioned.

use async_nats::jetstream::{self, consumer::PullConsumer, kv, stream::Stream};
use switchyard_topology::ResolvedTopology;

/// What could not be opened.
#[derive(Debug, thiserror::Error)]
pub enum OpenError {
    /// The topology declares no such item.
    #[error("the topology declares no {kind} {name}")]
    Undeclared {
        /// `stream` or `bucket`.
        kind: &'static str,
        /// The declared base name.
        name: String,
    },
    /// The item is declared but missing on the server (or the server did not answer).
    #[error("opening {kind} {name} (run `switchyard provision`): {message}")]
    Missing {
        /// `stream`, `bucket` or `consumer`.
        kind: &'static str,
        /// The concrete name.
        name: String,
        /// The client's error.
        message: String,
    },
}

/// A service's view of its deployment: JetStream plus the resolved names.
pub struct Deployment<'a> {
    /// JetStream.
    pub js: &'a jetstream::Context,
    /// The resolved topology.
    pub topology: &'a ResolvedTopology,
}

impl Deployment<'_> {
    /// A declared stream by base name (`INGRESS`): its concrete name and handle.
    pub async fn stream(&self, base: &str) -> Result<(String, Stream), OpenError> {
        let name = self
            .topology
            .stream_name(base)
            .ok_or_else(|| OpenError::Undeclared {
                kind: "stream",
                name: base.to_owned(),
            })?
            .to_owned();
        let stream = self
            .js
            .get_stream(&name)
            .await
            .map_err(|e| OpenError::Missing {
                kind: "stream",
                name: name.clone(),
                message: e.to_string(),
            })?;
        Ok((name, stream))
    }

    /// A declared bucket by base name (`routes`): its concrete name and handle.
    pub async fn bucket(&self, base: &str) -> Result<(String, kv::Store), OpenError> {
        let name = self
            .topology
            .bucket_name(base)
            .ok_or_else(|| OpenError::Undeclared {
                kind: "bucket",
                name: base.to_owned(),
            })?
            .to_owned();
        let store = self
            .js
            .get_key_value(&name)
            .await
            .map_err(|e| OpenError::Missing {
                kind: "bucket",
                name: name.clone(),
                message: e.to_string(),
            })?;
        Ok((name, store))
    }

    /// A declared durable pull consumer on a stream opened with [`Deployment::stream`].
    pub async fn consumer(
        &self,
        stream: &Stream,
        stream_name: &str,
        durable: &str,
    ) -> Result<PullConsumer, OpenError> {
        stream
            .get_consumer(durable)
            .await
            .map_err(|e| OpenError::Missing {
                kind: "consumer",
                name: format!("{stream_name}/{durable}"),
                message: e.to_string(),
            })
    }
}
