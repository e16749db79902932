//! The idempotency service's configuration: built-in defaults (`config/defaults.toml`) → file
//! → `SWITCHYARD_IDEMPOTENCY_*` environment.

use std::path::PathBuf;

use serde::Deserialize;
use switchyard_runtime::config::HttpConfig;
use switchyard_runtime::{ConfigError, ConfigSource, NatsConfig, TelemetryConfig};
use switchyard_subjects::InputStage;
use switchyard_topology::DeploymentConfig;

/// The built-in defaults, every key documented.
pub const DEFAULTS: &str = include_str!("../config/defaults.toml");

/// Environment prefix.
pub const ENV_PREFIX: &str = "SWITCHYARD_IDEMPOTENCY_";

/// Everything the service is configured with.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct IdempotencyConfig {
    /// How to reach NATS.
    pub nats: NatsConfig,
    /// Logging and trace export.
    pub telemetry: TelemetryConfig,
    /// Which deployment.
    #[serde(default)]
    pub deployment: DeploymentConfig,
    /// The probes listener (`[http]`; default `listen = "0.0.0.0:9102"`).
    pub http: HttpConfig,
    /// Claiming.
    pub idempotency: IdempotencySettings,
}

/// What to do while the KV store is unreachable.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum KvUnavailable {
    /// Hold the message and retry the claim; hand it back to JetStream after
    /// `kv_wait_max_secs`. Never guesses, so never doubles.
    Wait,
    /// Claim in a local in-memory window instead (logged and counted): keeps traffic flowing,
    /// at the price of missing duplicates seen by other replicas or before a restart.
    Local,
}

/// Claiming settings.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct IdempotencySettings {
    /// Messages handled at once (default 64).
    pub concurrency: usize,
    /// Claim lifetime in seconds (default 129600 = 36 h).
    pub ttl_secs: u64,
    /// Where first sightings go (default `backpressure`).
    pub next_stage: InputStage,
    /// Policy while KV is unreachable (default `wait`).
    pub kv_unavailable: KvUnavailable,
    /// With `wait`: longest hold of one message, in seconds (default 60).
    pub kv_wait_max_secs: u64,
    /// With `local`: the in-memory window's key bound (default 1,000,000).
    pub local_window_max_keys: usize,
}

impl IdempotencyConfig {
    /// Loads defaults → `file` → environment.
    pub fn load(file: Option<PathBuf>) -> Result<Self, ConfigError> {
        switchyard_runtime::load(
            &ConfigSource::new(DEFAULTS, ENV_PREFIX)
                .with_file(file)
                .with_bucket_env_overrides(true),
        )
    }

    /// The defaults alone (for tests and tools).
    pub fn defaults() -> Result<Self, ConfigError> {
        switchyard_runtime::load(&ConfigSource::new(
            DEFAULTS,
            "SWITCHYARD_IDEMPOTENCY_DEFAULTS_ONLY_",
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_match_the_docs() {
        let config = IdempotencyConfig::defaults().unwrap();
        assert_eq!(config.idempotency.ttl_secs, 36 * 3600);
        assert_eq!(config.idempotency.kv_unavailable, KvUnavailable::Wait);
        assert_eq!(config.idempotency.next_stage, InputStage::Backpressure);
    }
}
