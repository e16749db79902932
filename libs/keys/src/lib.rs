//! Validated ids, the reversible token encoding for user text, and the tenant-scoped KV key
//! schemas. Every subject token and KV key Switchyard writes is built from these types, so no
//! input can add a token, a wildcard or a key separator.
//!
//! - [`id`]: [`TenantId`], [`TeamId`], [`PlatformId`], [`DeploymentPrefix`], [`Stage`] and
//!   [`Address`] — strict charset `[a-z0-9][a-z0-9_-]{0,63}`.
//! - [`token`]: [`MsgId`] (any UTF-8, 1..=1024 bytes) and the `=XX` escape encoding that maps
//!   it to `[A-Za-z0-9_=-]`, valid both as a subject token and as a KV key token.
//! - [`display`]: invisible formatting characters, refused or escaped in user text.
//! - [`kv`]: the key schemas of each bucket, with render/parse round trips and per-tenant
//!   list/watch filters.

pub mod display;
pub mod error;
pub mod id;
pub mod kv;
pub mod token;

pub use error::KeyError;
pub use id::{Address, DeploymentPrefix, DestinationId, PlatformId, Stage, TeamId, TenantId};
pub use kv::{
    ApiKeyKey, BreakerKey, DestinationKey, IdempotencyKey, KvKey, RateKey, RateRecord, RateScope,
    ReplicaKey, RouteKey, RouteTeam, TenantKey,
};
pub use token::{MsgId, decode_token, encode_token};
