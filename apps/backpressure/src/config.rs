//! The backpressure service's configuration: built-in defaults (`config/defaults.toml`) →
//! file → `SWITCHYARD_BACKPRESSURE_*` environment.

use std::path::PathBuf;

use serde::Deserialize;
use switchyard_registry::LimitRecord;
use switchyard_runtime::config::HttpConfig;
use switchyard_runtime::{ConfigError, ConfigSource, NatsConfig, TelemetryConfig};
use switchyard_subjects::InputStage;
use switchyard_topology::DeploymentConfig;

/// The built-in defaults, every key documented.
pub const DEFAULTS: &str = include_str!("../config/defaults.toml");

/// Environment prefix.
pub const ENV_PREFIX: &str = "SWITCHYARD_BACKPRESSURE_";

/// Everything the service is configured with.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BackpressureConfig {
    /// How to reach NATS.
    pub nats: NatsConfig,
    /// Logging and trace export.
    pub telemetry: TelemetryConfig,
    /// Which deployment.
    #[serde(default)]
    pub deployment: DeploymentConfig,
    /// The probes listener (`[http]`; default `listen = "0.0.0.0:9103"`).
    pub http: HttpConfig,
    /// Rate limiting and admission.
    pub backpressure: BackpressureSettings,
}

/// Rate limiting and admission settings.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BackpressureSettings {
    /// Where messages go once they have a token (default `egress`).
    pub next_stage: InputStage,
    /// Rate for tenants without a limit in KV (default 1000/s).
    pub default_rate_per_sec: f64,
    /// Burst for tenants without a limit in KV (default 1000).
    pub default_burst: u32,
    /// Backlog that closes admission for tenants without their own threshold (default 100000).
    pub default_backlog_high: u64,
    /// Longest stretch of a tenant's rate one lease holds, in seconds (default 0.5).
    pub lease_secs: f64,
    /// Backlog scan and tenant discovery period, in milliseconds (default 500).
    pub scan_interval_ms: u64,
    /// Replica heartbeat period, in seconds (default 5).
    pub heartbeat_secs: u64,
    /// Idle time after which a tenant loop stops, in seconds (default 60).
    pub tenant_idle_secs: u64,
    /// Messages fetched at once per tenant (default 1000).
    pub max_batch: usize,
}

impl BackpressureSettings {
    /// The limit applied when KV holds neither the tenant's nor a `_default` one.
    pub fn built_in_limit(&self) -> LimitRecord {
        LimitRecord {
            rate_per_sec: self.default_rate_per_sec,
            burst: self.default_burst,
            backlog_high: Some(self.default_backlog_high),
            backlog_low: None,
        }
    }
}

impl BackpressureConfig {
    /// Loads defaults → `file` → environment.
    pub fn load(file: Option<PathBuf>) -> Result<Self, ConfigError> {
        switchyard_runtime::load(
            &ConfigSource::new(DEFAULTS, ENV_PREFIX)
                .with_file(file)
                .with_bucket_env_overrides(true),
        )
    }

    /// The defaults alone.
    pub fn defaults() -> Result<Self, ConfigError> {
        switchyard_runtime::load(&ConfigSource::new(
            DEFAULTS,
            "SWITCHYARD_BACKPRESSURE_DEFAULTS_ONLY_",
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_match_the_docs() {
        let config = BackpressureConfig::defaults().unwrap();
        assert_eq!(config.backpressure.next_stage, InputStage::Egress);
        assert_eq!(config.backpressure.lease_secs, 0.5);
        assert!(config.backpressure.built_in_limit().validate().is_ok());
    }
}
