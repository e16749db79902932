//! The ingress service's configuration: built-in defaults (`config/defaults.toml`) → file →
//! `SWITCHYARD_INGRESS_*` environment.

use std::path::PathBuf;

use serde::Deserialize;
use switchyard_envelope::MsgIdPolicy;
use switchyard_runtime::config::HttpConfig;
use switchyard_runtime::{ConfigError, ConfigSource, NatsConfig, TelemetryConfig};
use switchyard_subjects::InputStage;
use switchyard_topology::DeploymentConfig;

/// The built-in defaults, every key documented.
pub const DEFAULTS: &str = include_str!("../config/defaults.toml");

/// Environment prefix.
pub const ENV_PREFIX: &str = "SWITCHYARD_INGRESS_";

/// Everything ingress is configured with.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct IngressConfig {
    /// How to reach NATS.
    pub nats: NatsConfig,
    /// Logging and trace export.
    pub telemetry: TelemetryConfig,
    /// Which deployment (prefix, bucket overrides).
    #[serde(default)]
    pub deployment: DeploymentConfig,
    /// The HTTP listener (`[http]`; default `listen = "0.0.0.0:9101"`).
    pub http: HttpConfig,
    /// Validation and hand-off.
    pub ingress: IngressSettings,
}

/// Validation and hand-off settings.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct IngressSettings {
    /// Messages handled at once (default 64).
    pub concurrency: usize,
    /// Most messages one tenant's stream is fetched at a time (default 16): the
    /// `concurrency` slots go round the tenants with messages in batches of at most this.
    pub tenant_batch: usize,
    /// Largest accepted payload in bytes (default 1 MiB).
    pub max_payload_bytes: usize,
    /// What to do without `Nats-Msg-Id` (default `require`).
    pub msg_id_policy: MsgIdPolicy,
    /// Whether a tenant must be in the registry (default true).
    pub require_registered_tenant: bool,
    /// Whether HTTP producers must present their tenant's API key (default true; `false`
    /// only behind a gateway that authenticates producers itself).
    pub require_api_key: bool,
    /// The stage to hand on to (default `idempotency`).
    pub next_stage: InputStage,
}

impl IngressConfig {
    /// Loads defaults → `file` → environment.
    pub fn load(file: Option<PathBuf>) -> Result<Self, ConfigError> {
        switchyard_runtime::load(
            &ConfigSource::new(DEFAULTS, ENV_PREFIX)
                .with_file(file)
                .with_bucket_env_overrides(true),
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_load_and_match_the_docs() {
        let config: IngressConfig = switchyard_runtime::load(&ConfigSource::new(
            DEFAULTS,
            "SWITCHYARD_INGRESS_TEST_UNUSED_",
        ))
        .unwrap();
        assert_eq!(config.ingress.max_payload_bytes, 1_048_576);
        assert_eq!(config.ingress.msg_id_policy, MsgIdPolicy::Require);
        assert_eq!(config.ingress.next_stage, InputStage::Idempotency);
        assert_eq!(config.http.listen.port(), 9101);
    }
}
