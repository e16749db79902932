//! Plumbing every Switchyard service and the CLI share: layered configuration ([`config`]),
//! logging and trace export ([`telemetry`]), the NATS connection ([`nats`]), and retrying
//! ([`retry`]).
//!
//! A binary's `main` calls, in order, [`config::load`], [`telemetry::init`], [`nats::connect`]
//! and [`nats::jetstream`], then hands the results to its service's `run`.

pub mod config;
pub mod nats;
pub mod retry;
pub mod telemetry;

pub use config::{
    ConfigError, ConfigSource, InvalidSetting, LogFormat, NatsConfig, StorageConfig,
    TelemetryConfig, load,
};
pub use nats::{ConnectError, connect, jetstream};
pub use retry::{Backoff, RetryPolicy};
pub use telemetry::{TelemetryError, TelemetryGuard, init, init_for_tests};
