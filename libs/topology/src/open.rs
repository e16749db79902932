//! Opening a declared stream, consumer or bucket on the server: the one opener every service
//! and the CLI use. A missing item is [`OpenError::NotFound`] (with the fix, `switchyard
//! provision`); any other failure is [`OpenError::Failed`]; both keep the client's error as
//! their source.

use std::fmt;

use async_nats::jetstream::consumer::PullConsumer;
use async_nats::jetstream::context::{GetStreamError, GetStreamErrorKind, KeyValueError};
use async_nats::jetstream::stream::{ConsumerError, ConsumerErrorKind, Stream};
use async_nats::jetstream::{self, ErrorCode, kv};

use crate::ResolvedTopology;
use crate::names::{BucketName, ConsumerName, StreamName};

/// What kind of declared item.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Resource {
    /// A stream.
    Stream,
    /// A durable consumer.
    Consumer,
    /// A KV bucket.
    Bucket,
}

impl fmt::Display for Resource {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Resource::Stream => "stream",
            Resource::Consumer => "consumer",
            Resource::Bucket => "bucket",
        })
    }
}

/// The client's error behind an [`OpenError`].
pub type OpenSource = Box<dyn std::error::Error + Send + Sync>;

/// Why a declared item could not be opened.
#[derive(Debug, thiserror::Error)]
pub enum OpenError {
    /// The topology declares no such item (a programming or configuration error).
    #[error("the topology declares no {resource} {base}")]
    Undeclared {
        /// What was asked for.
        resource: Resource,
        /// The declared (base) name asked for.
        base: String,
    },
    /// The item is declared but does not exist on the server: the deployment is not
    /// provisioned.
    #[error("the {base} {resource} {name} does not exist: run `switchyard provision`")]
    NotFound {
        /// What was asked for.
        resource: Resource,
        /// The declared (base) name.
        base: String,
        /// The concrete name on the server (`stream/consumer` for a consumer).
        name: String,
        /// The server's answer.
        #[source]
        source: OpenSource,
    },
    /// The server could not say (no responders, timeout, permissions, …).
    #[error("opening the {base} {resource} {name}")]
    Failed {
        /// What was asked for.
        resource: Resource,
        /// The declared (base) name.
        base: String,
        /// The concrete name on the server (`stream/consumer` for a consumer).
        name: String,
        /// The client's error.
        #[source]
        source: OpenSource,
    },
}

impl OpenError {
    /// Whether the item is declared but missing on the server (run `switchyard provision`).
    pub fn is_not_found(&self) -> bool {
        matches!(self, OpenError::NotFound { .. })
    }

    fn from_client(
        resource: Resource,
        base: &str,
        name: String,
        not_found: bool,
        source: impl std::error::Error + Send + Sync + 'static,
    ) -> Self {
        let base = base.to_owned();
        let source = Box::new(source);
        if not_found {
            OpenError::NotFound {
                resource,
                base,
                name,
                source,
            }
        } else {
            OpenError::Failed {
                resource,
                base,
                name,
                source,
            }
        }
    }
}

/// Whether `err` is the server saying the stream does not exist.
pub fn is_stream_not_found(err: &GetStreamError) -> bool {
    matches!(err.kind(), GetStreamErrorKind::JetStream(j) if j.error_code() == ErrorCode::STREAM_NOT_FOUND)
}

fn is_consumer_not_found(err: &ConsumerError) -> bool {
    matches!(err.kind(), ConsumerErrorKind::JetStream(j)
        if j.error_code() == ErrorCode::CONSUMER_NOT_FOUND || j.error_code() == ErrorCode::STREAM_NOT_FOUND)
}

fn is_bucket_not_found(err: &KeyValueError) -> bool {
    std::error::Error::source(err)
        .and_then(|source| source.downcast_ref::<GetStreamError>())
        .is_some_and(is_stream_not_found)
}

impl ResolvedTopology {
    /// Opens the declared stream `stream` (`INGRESS`): its concrete name and handle.
    pub async fn open_stream(
        &self,
        js: &jetstream::Context,
        stream: StreamName,
    ) -> Result<(String, Stream), OpenError> {
        let base = stream.base();
        let name = self
            .stream_name(stream)
            .ok_or_else(|| OpenError::Undeclared {
                resource: Resource::Stream,
                base: base.to_owned(),
            })?
            .to_owned();
        match js.get_stream(&name).await {
            Ok(stream) => Ok((name, stream)),
            Err(err) => {
                let missing = is_stream_not_found(&err);
                Err(OpenError::from_client(
                    Resource::Stream,
                    base,
                    name,
                    missing,
                    err,
                ))
            }
        }
    }

    /// Opens every concrete stream of the shared or sharded declaration `stream` (one, or one
    /// per shard in shard order): their names and handles. Errors as [`Self::open_stream`];
    /// `Undeclared` for a per-tenant declaration.
    pub async fn open_streams(
        &self,
        js: &jetstream::Context,
        stream: StreamName,
    ) -> Result<Vec<(String, Stream)>, OpenError> {
        let base = stream.base();
        let names = self.stream_names(stream);
        if names.is_empty() {
            return Err(OpenError::Undeclared {
                resource: Resource::Stream,
                base: base.to_owned(),
            });
        }
        let mut opened = Vec::with_capacity(names.len());
        for name in names {
            match js.get_stream(&name).await {
                Ok(handle) => opened.push((name, handle)),
                Err(err) => {
                    let missing = is_stream_not_found(&err);
                    return Err(OpenError::from_client(
                        Resource::Stream,
                        base,
                        name,
                        missing,
                        err,
                    ));
                }
            }
        }
        Ok(opened)
    }

    /// Opens the declared bucket `bucket` (`routes`): its concrete name (after prefix and
    /// overrides) and handle.
    pub async fn open_bucket(
        &self,
        js: &jetstream::Context,
        bucket: BucketName,
    ) -> Result<(String, kv::Store), OpenError> {
        let base = bucket.base();
        let name = self
            .bucket_name(bucket)
            .ok_or_else(|| OpenError::Undeclared {
                resource: Resource::Bucket,
                base: base.to_owned(),
            })?
            .to_owned();
        match js.get_key_value(&name).await {
            Ok(store) => Ok((name, store)),
            Err(err) => {
                let missing = is_bucket_not_found(&err);
                Err(OpenError::from_client(
                    Resource::Bucket,
                    base,
                    name,
                    missing,
                    err,
                ))
            }
        }
    }

    /// Opens the declared shared durable pull consumer `consumer` (`egress-worker`) on its
    /// stream.
    pub async fn open_consumer(
        &self,
        js: &jetstream::Context,
        consumer: ConsumerName,
    ) -> Result<PullConsumer, OpenError> {
        let durable = consumer.base();
        let declared = self
            .consumer(consumer)
            .ok_or_else(|| OpenError::Undeclared {
                resource: Resource::Consumer,
                base: durable.to_owned(),
            })?;
        match js.get_consumer_from_stream(durable, &declared.stream).await {
            Ok(consumer) => Ok(consumer),
            Err(err) => {
                let missing = is_consumer_not_found(&err);
                Err(OpenError::from_client(
                    Resource::Consumer,
                    durable,
                    format!("{}/{durable}", declared.stream),
                    missing,
                    err,
                ))
            }
        }
    }
}
