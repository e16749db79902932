//! Switchyard's JetStream topology: the declarations in `nats/topology.toml`, resolved for one
//! deployment, provisioned idempotently, checked for drift, and reported on.
//!
//! - [`names`]: the typed names of every declared stream, bucket and consumer
//!   ([`StreamName`], [`BucketName`], [`ConsumerName`]); code never names one with a string.
//! - [`spec`]: the declaration file's types and validation ([`Topology::embedded`]).
//! - [`resolve`]: [`ResolvedTopology`] — concrete stream/consumer/bucket configs for a
//!   namespace, replica count and bucket overrides; services look their names up here.
//! - [`open`]: opening a declared stream, consumer or bucket, with one error that says
//!   `switchyard provision` when it is missing ([`OpenError`]).
//! - [`provision`]: create what is missing, compare what exists ([`provision::provision`]); or
//!   only compare, changing nothing ([`provision::check`]).
//! - [`limits`]: the server's `max_payload` against the declared message sizes
//!   ([`check_server_limits`], [`check_server`]).
//! - [`status`]: streams, consumers (pending, ack-pending, redelivered) and buckets.

mod deployment;
mod error;
pub mod limits;
mod lookup;
pub mod names;
pub mod open;
pub mod provision;
pub mod resolve;
pub mod spec;
pub mod status;

pub use deployment::DeploymentConfig;
pub use error::TopologyError;
pub use limits::{
    LimitProblem, MIN_SERVER_VERSION, PINNED_SERVER_VERSION, SERVER_FIX, ServerLimitError,
    check_server, check_server_limits, parse_server_version,
};
pub use names::{BucketName, ConsumerName, StreamName};
pub use open::{OpenError, Resource};
pub use provision::{
    Change, HELD_QUOTA_KEY, Outcome, ProvisionItem, ProvisionReport, advisories_follow_the_shards,
    check, check_tenant, hold_tenant_ingress, provision, provision_tenant, retire_shared_ingress,
    retire_unsharded_backpressure,
};
pub use resolve::{
    ResolvedTopology, TenantQuota, TopologyOptions, bucket_stream, shard_stream_name,
};
pub use spec::{BucketSpec, ConsumerSpec, StreamSpec, SubjectsKind, Tenancy, Topology};
pub use status::{
    Held, StatusReport, backlog_by_tenant, dlq_entries_by_tenant, held_by_tenant, status,
};
