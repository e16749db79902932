//! The idempotency service's configuration: built-in defaults (`config/defaults.toml`) → file
//! → `SWITCHYARD_IDEMPOTENCY_*` environment, validated at start-up against the resolved
//! topology ([`IdempotencySettings::validate`]).

use std::path::PathBuf;

use serde::Deserialize;
use switchyard_runtime::config::HttpConfig;
use switchyard_runtime::{ConfigError, ConfigSource, NatsConfig, StorageConfig, TelemetryConfig};
use switchyard_subjects::InputStage;
use switchyard_topology::{BucketName, DeploymentConfig, ResolvedTopology};

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
    /// Storage health bounds (`[storage]`; every key has a default).
    #[serde(default)]
    pub storage: StorageConfig,
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
    /// Most bytes of messages held at once (fetched, not yet settled), default 8 MiB; at least
    /// one message of the largest size the streams admit, 1 MiB + 64 KiB
    /// ([`switchyard_service::budget`]).
    pub max_in_flight_bytes: usize,
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

/// The longest `kv_wait_max_secs`: an hour (a longer hold only hides an outage).
pub const MAX_KV_WAIT_SECS: u64 = 3600;

/// A setting that loaded but cannot work: `invalid setting idempotency.<key>: <reason>`.
pub use switchyard_runtime::InvalidSetting;

impl IdempotencySettings {
    /// Checks every value against its range and the resolved `idempotency` bucket (per-key
    /// TTLs allowed, `max_age`); the first problem is returned.
    pub fn validate(&self, topology: &ResolvedTopology) -> Result<(), InvalidSetting> {
        let fail = |key, reason: String| {
            Err(InvalidSetting {
                section: "idempotency",
                key,
                reason,
            })
        };
        if let Err(why) =
            switchyard_service::budget::check_max_in_flight_bytes(self.max_in_flight_bytes)
        {
            return fail("max_in_flight_bytes", why);
        }
        if self.concurrency == 0 {
            return fail(
                "concurrency",
                "0 handles nothing; set at least 1 (default 64)".into(),
            );
        }
        if self.ttl_secs == 0 {
            return fail(
                "ttl_secs",
                "0 turns de-duplication off; set the window in seconds, at least 1 (default \
                 129600 = 36 h)"
                    .into(),
            );
        }
        if let Some(bucket) = topology
            .buckets
            .iter()
            .find(|b| b.base == BucketName::Idempotency.base())
        {
            if bucket.config.limit_markers.is_none() {
                return fail(
                    "ttl_secs",
                    format!(
                        "the {} bucket does not allow per-key TTLs (no limit_markers_secs in the \
                         topology), so no claim could be written; declare limit_markers_secs",
                        bucket.config.bucket
                    ),
                );
            }
            let max_age = bucket.config.max_age.as_secs();
            if max_age > 0 && self.ttl_secs > max_age {
                return fail(
                    "ttl_secs",
                    format!(
                        "{} outlives the {} bucket's max_age ({max_age} s), which would end every \
                         claim early; set at most {max_age}, or raise the bucket's max_age_secs",
                        self.ttl_secs, bucket.config.bucket
                    ),
                );
            }
        }
        if self.next_stage != InputStage::Backpressure && self.next_stage != InputStage::Egress {
            return fail(
                "next_stage",
                format!(
                    "{:?} is not after idempotency (it would feed itself or an earlier stage); \
                     set \"backpressure\" (default) or \"egress\"",
                    self.next_stage
                ),
            );
        }
        if self.kv_wait_max_secs == 0 || self.kv_wait_max_secs > MAX_KV_WAIT_SECS {
            return fail(
                "kv_wait_max_secs",
                format!(
                    "{} is outside [1, {MAX_KV_WAIT_SECS}]; the default is 60",
                    self.kv_wait_max_secs
                ),
            );
        }
        if self.local_window_max_keys == 0 {
            return fail(
                "local_window_max_keys",
                "0 keeps no key, so the local window would pass every duplicate; set at least 1 \
                 (default 1000000)"
                    .into(),
            );
        }
        Ok(())
    }
}

impl IdempotencyConfig {
    /// Checks every setting against the topology this configuration resolves to.
    pub fn validate(&self) -> anyhow::Result<()> {
        self.storage.validate()?;
        let topology = self.deployment.resolve()?;
        self.idempotency.validate(&topology)?;
        Ok(())
    }

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
#[allow(
    clippy::result_large_err,
    reason = "figment::Jail's closures return figment's own (large) error type"
)]
mod tests {
    use figment::Jail;

    use super::*;

    /// One change to the default settings.
    type Change = Box<dyn FnOnce(&mut IdempotencySettings)>;

    #[test]
    fn defaults_match_the_docs() {
        let config = IdempotencyConfig::defaults().unwrap();
        assert_eq!(config.idempotency.ttl_secs, 36 * 3600);
        assert_eq!(config.idempotency.kv_unavailable, KvUnavailable::Wait);
        assert_eq!(config.idempotency.next_stage, InputStage::Backpressure);
        config.validate().unwrap();
    }

    #[test]
    fn every_unworkable_setting_is_refused_by_name() {
        let config = IdempotencyConfig::defaults().unwrap();
        let topology = config.deployment.resolve().unwrap();
        let cases: Vec<(&str, Change)> = vec![
            ("concurrency", Box::new(|s| s.concurrency = 0)),
            (
                "max_in_flight_bytes",
                Box::new(|s| s.max_in_flight_bytes = 1 << 20),
            ),
            ("ttl_secs", Box::new(|s| s.ttl_secs = 0)),
            ("ttl_secs", Box::new(|s| s.ttl_secs = 129_601)),
            (
                "next_stage",
                Box::new(|s| s.next_stage = InputStage::Idempotency),
            ),
            (
                "next_stage",
                Box::new(|s| s.next_stage = InputStage::Ingress),
            ),
            ("kv_wait_max_secs", Box::new(|s| s.kv_wait_max_secs = 0)),
            ("kv_wait_max_secs", Box::new(|s| s.kv_wait_max_secs = 3601)),
            (
                "local_window_max_keys",
                Box::new(|s| s.local_window_max_keys = 0),
            ),
        ];
        for (key, change) in cases {
            let mut settings = config.idempotency.clone();
            change(&mut settings);
            let message = settings.validate(&topology).unwrap_err().to_string();
            assert!(
                message.starts_with(&format!("invalid setting idempotency.{key}: ")),
                "{key}: {message}"
            );
        }
    }

    #[test]
    fn a_zero_ttl_from_the_environment_is_refused_not_silently_disabling_deduplication() {
        Jail::expect_with(|jail| {
            jail.set_env("SWITCHYARD_IDEMPOTENCY_IDEMPOTENCY__TTL_SECS", "0");
            let config = IdempotencyConfig::load(None).unwrap();
            let err = format!("{:#}", config.validate().unwrap_err());
            assert!(
                err.contains("invalid setting idempotency.ttl_secs"),
                "{err}"
            );
            assert!(err.contains("de-duplication off"), "{err}");
            Ok(())
        });
    }
}
