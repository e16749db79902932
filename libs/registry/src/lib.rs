//! Configuration records kept in KV, shared by the services and the CLI:
//!
//! - [`route`]: [`Route`] — where (tenant, team or `_`, platform) is delivered: an HTTP webhook
//!   or a NATS subject; JSON in the `routes` bucket under [`switchyard_keys::RouteKey`].
//! - [`destination`]: [`Destination`] — one of a tenant's fan-out subscriptions: a route-shaped
//!   target and a [`Subscription`] (platforms, teams, event types, content filter); JSON in the
//!   `destinations` bucket under [`switchyard_keys::DestinationKey`].
//! - [`breaker`]: [`BreakerRecord`] — an open circuit breaker shared by every egress replica;
//!   JSON in the `breakers` bucket under [`switchyard_keys::BreakerKey`].
//! - [`rotation`]: a webhook route's previous signing secrets, signing until they expire.
//! - [`signing_key`]: a webhook route's optional Ed25519 key for `v1a` signatures.
//! - [`tenant`]: [`TenantRecord`] — whether a tenant may send; JSON in the `tenants` bucket
//!   under [`switchyard_keys::TenantKey`].
//! - [`store`]: [`Store`], typed get/put/list/delete over a KV bucket, with revision-aware
//!   reads and compare-and-set writes ([`Written`]); [`StoreError`] for every KV record.
//! - [`limits`]: rate limits, token state and admission state in the `rate-limits` bucket.
//! - [`cache`]: [`KvCache`], an in-memory copy of a bucket kept fresh by a KV watch.
//! - [`api_key`]: [`ApiKeyRecord`] — a tenant's API key for the producer HTTP API, stored
//!   hashed in the `api-keys` bucket under [`switchyard_keys::ApiKeyKey`].

pub mod api_key;
pub mod breaker;
pub mod cache;
pub mod destination;
pub mod limits;
pub mod rotation;
pub mod route;
pub mod signing_key;
pub mod store;
pub mod tenant;

pub use api_key::{ApiKeyError, ApiKeyRecord, ApiScope, IssuedKey};
pub use breaker::BreakerRecord;
pub use cache::KvCache;
pub use destination::{
    Destination, DestinationError, Disabled, DisabledBy, RateLimit, Subscription, Unmatched,
};
pub use limits::{
    Admission, LimitRecord, LimitSource, PressureRecord, QuotaRecord, TokenState, limit_lookup,
};
pub use rotation::{MAX_OVERLAP, MAX_PREVIOUS_SECRETS, RetiringSecret};
pub use route::{
    NatsRoute, Route, RouteError, SEALED_SECRET_PREFIX, WebhookRoute, WebhookSecret, sealed_key_id,
};
pub use signing_key::{SigningKey, sign_v1, sign_v1a};
pub use store::{Changed, Store, StoreError, Written, gone_on_delete};
pub use tenant::{TenantNameError, TenantRecord};
