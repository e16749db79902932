//! The backpressure service's configuration: built-in defaults (`config/defaults.toml`) →
//! file → `SWITCHYARD_BACKPRESSURE_*` environment, validated at start-up against the resolved
//! topology ([`BackpressureSettings::validate`]): a value that would stall, overflow or panic a
//! tenant loop is refused with the key and the fix, before anything runs.

use std::path::PathBuf;

use serde::Deserialize;
use switchyard_registry::LimitRecord;
use switchyard_runtime::config::HttpConfig;
use switchyard_runtime::{ConfigError, ConfigSource, NatsConfig, StorageConfig, TelemetryConfig};
use switchyard_subjects::InputStage;
use switchyard_topology::{ConsumerName, DeploymentConfig, ResolvedTopology};

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
    /// Storage health bounds (`[storage]`; every key has a default).
    #[serde(default)]
    pub storage: StorageConfig,
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
    /// Bytes a tenant's messages may take in its `BACKPRESSURE_<shard>` (counted by size
    /// class) before its admission closes, for tenants whose limit sets no
    /// `backlog_high_bytes`; it reopens under half (default 12 MiB, below
    /// ingress's `next_stage_credit_bytes`, so that a tenant of large messages is refused
    /// with `admission_closed` before ingress stops reading it).
    pub default_backlog_high_bytes: u64,
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
    /// Most bytes of messages every tenant loop together holds (fetched, not yet settled), default 8 MiB; at least
    /// one message of the largest size the streams admit, 1 MiB + 64 KiB
    /// ([`switchyard_service::budget`]).
    pub max_in_flight_bytes: usize,
    /// How often each tenant's own ingress stream is compared with its quota, in seconds
    /// (default 30; 0 = never; at most 3600).
    pub quota_check_secs: u64,
    /// The fill, in % of the quota (the fuller of bytes and messages), at which a tenant's
    /// stream is reported near full (default 80; above 10, at most 100); reported again once it
    /// fell 10 points below.
    pub quota_near_full_pct: f64,
}

/// A setting that loaded but cannot work: `invalid setting backpressure.<key>: <reason>`.
pub use switchyard_runtime::InvalidSetting;

/// The shortest lease, in seconds (a shorter one only multiplies KV writes).
pub const MIN_LEASE_SECS: f64 = 0.01;

impl BackpressureSettings {
    /// Checks every value against its range and the resolved topology (the per-tenant
    /// `backpressure-{tenant}` consumer's `ack_wait` and `max_ack_pending`); the first problem
    /// is returned.
    pub fn validate(&self, topology: &ResolvedTopology) -> Result<(), InvalidSetting> {
        let fail = |key, reason: String| {
            Err(InvalidSetting {
                section: "backpressure",
                key,
                reason,
            })
        };
        let Some(consumer) = topology
            .tenant_consumers
            .iter()
            .find(|c| c.name == ConsumerName::BackpressureTenant)
        else {
            return fail(
                "next_stage",
                "the topology declares no backpressure-{tenant} consumer".to_owned(),
            );
        };
        let ack_wait = consumer.config.ack_wait.as_secs_f64();
        let max_ack_pending = usize::try_from(consumer.config.max_ack_pending).unwrap_or(0);
        if self.next_stage != InputStage::Egress {
            return fail(
                "next_stage",
                format!(
                    "{:?} is not after backpressure (it would feed itself or an earlier stage); \
                     set it to \"egress\"",
                    self.next_stage
                ),
            );
        }
        if let Err(reason) = self.built_in_limit().validate() {
            let key = if reason.starts_with("burst") {
                "default_burst"
            } else {
                "default_rate_per_sec"
            };
            return fail(key, format!("{reason}; the default is 1000"));
        }
        // One slot per 1/rate: a message fetched for a slower rate would outwait its ack_wait
        // and be redelivered (and finally dead-lettered) while it waits for its slot.
        let min_rate = 1.0 / ack_wait.max(f64::MIN_POSITIVE);
        if self.default_rate_per_sec < min_rate {
            return fail(
                "default_rate_per_sec",
                format!(
                    "{} per second spaces slots further apart than the backpressure-{{tenant}} \
                     consumer's ack_wait ({ack_wait} s); set at least {min_rate:.4}",
                    self.default_rate_per_sec
                ),
            );
        }
        if self.default_backlog_high == 0 {
            return fail(
                "default_backlog_high",
                "0 keeps every tenant's admission closed; set at least 1 (default 100000)"
                    .to_owned(),
            );
        }
        let largest = topology.largest_shard_message_counted();
        if self.default_backlog_high_bytes < largest {
            return fail(
                "default_backlog_high_bytes",
                format!(
                    "{} is below what the largest message a BACKPRESSURE shard stores counts \
                     ({largest} bytes): one message would close admission; set at least that \
                     (default 12582912)",
                    self.default_backlog_high_bytes
                ),
            );
        }
        // Fetched messages wait up to one lease for their slots: well inside ack_wait.
        let max_lease = ack_wait / 2.0;
        if !(self.lease_secs.is_finite()
            && self.lease_secs >= MIN_LEASE_SECS
            && self.lease_secs <= max_lease)
        {
            return fail(
                "lease_secs",
                format!(
                    "{} is not a number of seconds in [{MIN_LEASE_SECS}, {max_lease}] (half the \
                     backpressure-{{tenant}} consumer's ack_wait); the default is 0.5",
                    self.lease_secs
                ),
            );
        }
        if self.scan_interval_ms == 0 || self.scan_interval_ms > 60_000 {
            return fail(
                "scan_interval_ms",
                format!(
                    "{} is outside [1, 60000] (0 spins; longer delays admission and new \
                     tenants); the default is 500",
                    self.scan_interval_ms
                ),
            );
        }
        if self.heartbeat_secs == 0 || self.heartbeat_secs > 3600 {
            return fail(
                "heartbeat_secs",
                format!(
                    "{} is outside [1, 3600]; the default is 5",
                    self.heartbeat_secs
                ),
            );
        }
        if self.tenant_idle_secs == 0 {
            return fail(
                "tenant_idle_secs",
                "0 stops a tenant loop before it fetches; set at least 1 (default 60)".to_owned(),
            );
        }
        if self.quota_check_secs > 3600 {
            return fail(
                "quota_check_secs",
                format!(
                    "{} is above 3600; set 0 (never) to 3600 (default 30)",
                    self.quota_check_secs
                ),
            );
        }
        if !(self.quota_near_full_pct > 10.0 && self.quota_near_full_pct <= 100.0) {
            return fail(
                "quota_near_full_pct",
                format!(
                    "{} is outside (10, 100]; the default is 80",
                    self.quota_near_full_pct
                ),
            );
        }
        if let Err(why) =
            switchyard_service::budget::check_max_in_flight_bytes(self.max_in_flight_bytes)
        {
            return fail("max_in_flight_bytes", why);
        }
        if self.max_batch == 0 || self.max_batch > max_ack_pending {
            return fail(
                "max_batch",
                format!(
                    "{} is outside [1, {max_ack_pending}] (the backpressure-{{tenant}} \
                     consumer's max_ack_pending); the default is 1000",
                    self.max_batch
                ),
            );
        }
        Ok(())
    }

    /// The limit applied when KV holds neither the tenant's nor a `_default` one.
    pub fn built_in_limit(&self) -> LimitRecord {
        LimitRecord {
            rate_per_sec: self.default_rate_per_sec,
            burst: self.default_burst,
            backlog_high: Some(self.default_backlog_high),
            backlog_low: None,
            backlog_high_bytes: None,
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

    /// Checks every setting against the topology this configuration resolves to.
    pub fn validate(&self) -> anyhow::Result<()> {
        self.storage.validate()?;
        let topology = self.deployment.resolve()?;
        self.backpressure.validate(&topology)?;
        Ok(())
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
#[allow(
    clippy::result_large_err,
    reason = "figment::Jail's closures return figment's own (large) error type"
)]
mod tests {
    use figment::Jail;

    use super::*;

    /// One change to the default settings.
    type Change = Box<dyn FnOnce(&mut BackpressureSettings)>;

    #[test]
    fn defaults_match_the_docs() {
        let config = BackpressureConfig::defaults().unwrap();
        assert_eq!(config.backpressure.next_stage, InputStage::Egress);
        assert_eq!(config.backpressure.lease_secs, 0.5);
        assert!(config.backpressure.built_in_limit().validate().is_ok());
        config.validate().unwrap();
    }

    /// The message `settings` is refused with, after `change`.
    fn refusal(change: impl FnOnce(&mut BackpressureSettings)) -> String {
        let config = BackpressureConfig::defaults().unwrap();
        let topology = config.deployment.resolve().unwrap();
        let mut settings = config.backpressure;
        change(&mut settings);
        settings.validate(&topology).unwrap_err().to_string()
    }

    #[test]
    fn every_setting_that_would_stall_or_panic_a_tenant_loop_is_refused_by_name() {
        let cases: Vec<(&str, Change)> = vec![
            ("max_batch", Box::new(|s| s.max_batch = 0)),
            (
                "max_in_flight_bytes",
                Box::new(|s| s.max_in_flight_bytes = 1 << 20),
            ),
            ("max_batch", Box::new(|s| s.max_batch = 10_001)),
            ("lease_secs", Box::new(|s| s.lease_secs = -1.0)),
            ("lease_secs", Box::new(|s| s.lease_secs = f64::NAN)),
            ("lease_secs", Box::new(|s| s.lease_secs = f64::INFINITY)),
            ("lease_secs", Box::new(|s| s.lease_secs = 0.0)),
            ("lease_secs", Box::new(|s| s.lease_secs = 16.0)),
            (
                "default_rate_per_sec",
                Box::new(|s| s.default_rate_per_sec = 0.0),
            ),
            (
                "default_rate_per_sec",
                Box::new(|s| s.default_rate_per_sec = -5.0),
            ),
            (
                "default_rate_per_sec",
                Box::new(|s| s.default_rate_per_sec = f64::NAN),
            ),
            (
                "default_rate_per_sec",
                Box::new(|s| s.default_rate_per_sec = 1e-300),
            ),
            (
                "default_rate_per_sec",
                Box::new(|s| s.default_rate_per_sec = 1e12),
            ),
            ("default_burst", Box::new(|s| s.default_burst = 0)),
            (
                "default_backlog_high",
                Box::new(|s| s.default_backlog_high = 0),
            ),
            (
                "default_backlog_high_bytes",
                Box::new(|s| s.default_backlog_high_bytes = 1_114_111),
            ),
            ("scan_interval_ms", Box::new(|s| s.scan_interval_ms = 0)),
            ("heartbeat_secs", Box::new(|s| s.heartbeat_secs = 0)),
            ("tenant_idle_secs", Box::new(|s| s.tenant_idle_secs = 0)),
            ("quota_check_secs", Box::new(|s| s.quota_check_secs = 3601)),
            (
                "quota_near_full_pct",
                Box::new(|s| s.quota_near_full_pct = 5.0),
            ),
            (
                "quota_near_full_pct",
                Box::new(|s| s.quota_near_full_pct = f64::NAN),
            ),
            (
                "quota_near_full_pct",
                Box::new(|s| s.quota_near_full_pct = 101.0),
            ),
            (
                "next_stage",
                Box::new(|s| s.next_stage = InputStage::Backpressure),
            ),
        ];
        for (key, change) in cases {
            let message = refusal(change);
            assert!(
                message.starts_with(&format!("invalid setting backpressure.{key}: ")),
                "{key}: {message}"
            );
        }
    }

    #[test]
    fn a_bad_value_from_a_file_or_the_environment_is_refused_at_validation() {
        Jail::expect_with(|jail| {
            jail.create_file("bp.toml", "[backpressure]\nmax_batch = 0\n")?;
            let config = BackpressureConfig::load(Some("bp.toml".into())).unwrap();
            let err = config.validate().unwrap_err();
            assert!(
                format!("{err:#}").contains("invalid setting backpressure.max_batch"),
                "{err:#}"
            );
            jail.set_env("SWITCHYARD_BACKPRESSURE_BACKPRESSURE__MAX_BATCH", "10");
            jail.set_env("SWITCHYARD_BACKPRESSURE_BACKPRESSURE__LEASE_SECS", "-0.5");
            let config = BackpressureConfig::load(Some("bp.toml".into())).unwrap();
            let err = config.validate().unwrap_err();
            assert!(
                format!("{err:#}").contains("invalid setting backpressure.lease_secs"),
                "{err:#}"
            );
            Ok(())
        });
    }
}
