//! The egress service's configuration: embedded defaults (`config/defaults.toml`) → `--config`
//! file → `SWITCHYARD_EGRESS_*` environment, validated once at start-up.

use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context;
use serde::Deserialize;
use switchyard_runtime::config::HttpConfig;
use switchyard_runtime::{ConfigSource, NatsConfig, StorageConfig, TelemetryConfig};
use switchyard_topology::DeploymentConfig;

/// The built-in defaults, every key documented with its default.
pub const DEFAULTS: &str = include_str!("../config/defaults.toml");

/// Environment prefix of the service's settings (`SWITCHYARD_EGRESS_EGRESS__MAX_ATTEMPTS`).
pub const ENV_PREFIX: &str = "SWITCHYARD_EGRESS_";

/// Everything the egress service is configured with.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EgressConfig {
    /// How to reach NATS.
    pub nats: NatsConfig,
    /// Logging and trace export.
    pub telemetry: TelemetryConfig,
    /// Storage health bounds (`[storage]`; every key has a default).
    #[serde(default)]
    pub storage: StorageConfig,
    /// Which deployment (prefix, bucket names) the service runs in.
    #[serde(default)]
    pub deployment: DeploymentConfig,
    /// The probe and metrics endpoint (`[http]`; default `listen = "0.0.0.0:9104"`).
    pub http: HttpConfig,
    /// Delivery behaviour.
    pub egress: EgressSettings,
    /// Payload encryption (`[encryption]`): the key-encryption key that unwraps the data keys
    /// of tenants with encryption on, to open their payloads before delivery (default: none;
    /// such a tenant's messages are then held, never delivered or dead-lettered for it).
    /// Loaded and checked at start-up.
    #[serde(default)]
    pub encryption: switchyard_crypt::EncryptionConfig,
}

/// The `[egress]` section: retries, breakers, per-route limits.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EgressSettings {
    /// Messages handled at once across all routes (default 64).
    pub concurrency: usize,
    /// Delivery attempts per message before it is dead-lettered with `retries_exhausted`
    /// (default 8).
    pub max_attempts: u32,
    /// Wait after attempt n: `backoff_secs[min(n-1, len-1)]`, jittered within `[d/2, d]`
    /// (default `[1, 5, 30, 120, 600, 1800, 3600]`).
    pub backoff_secs: Vec<u64>,
    /// Cap on a sink's `Retry-After`, in seconds (default 3600).
    pub max_retry_after_secs: u64,
    /// Consecutive retryable failures that open a route's breaker (default 5).
    pub breaker_failure_threshold: u32,
    /// The first open period of a breaker, in seconds; doubles per consecutive re-open
    /// (default 30).
    pub breaker_open_secs: u64,
    /// The longest open period, in seconds (default 300).
    pub breaker_max_open_secs: u64,
    /// The share of failed attempts among a route's last `breaker_window` that opens its
    /// breaker too (default 0.5; 0 turns the rule off; at most 1).
    pub breaker_failure_rate: f64,
    /// How many recent attempts `breaker_failure_rate` looks at (default 20; 1 to 64).
    pub breaker_window: u32,
    /// How long a message may wait for a free per-route (or per-tenant) slot before it is
    /// rescheduled, in milliseconds (default 200).
    pub route_wait_ms: u64,
    /// Most deliveries one tenant may have in flight at once, across all its routes (default
    /// 16, a quarter of the default `concurrency`): a tenant whose sinks are slow, even when
    /// they succeed, holds at most this many slots, and the rest of `concurrency` stays free
    /// for the other tenants. At least 1; above `concurrency` it limits nothing.
    pub tenant_max_in_flight: usize,
    /// Publish a delivery receipt after each delivery (default true).
    pub receipts: bool,
    /// Write every attempt to the delivery log, stream `ATTEMPTS` (default true; read with
    /// `switchyard attempts`).
    pub attempt_log: bool,
    /// How long a message may take to be delivered, in seconds (default 86400, one day),
    /// counted from its envelope's `received_at` (a replayed copy: from when egress first
    /// handled that replay). Past it the message is dead-lettered `deadline_exceeded` with
    /// its attempt history, whatever held it: retries, an open breaker, a busy route or
    /// tenant. 1 to [`MAX_DELIVERY_DEADLINE_SECS`].
    pub delivery_deadline_secs: u64,
    /// A destination whose breaker stayed open this long, in seconds, re-opens included, is
    /// disabled by egress (default 3600; 0: never). Its messages are then parked until an
    /// operator enables it again (`switchyard destinations enable`).
    pub disable_after_secs: u64,
    /// How often a parked message looks again whether its destination was enabled, in seconds
    /// (default 30; 1 to 3600): the longest a release waits.
    pub park_recheck_secs: u64,
}

/// The longest `delivery_deadline_secs` accepted: one year.
pub const MAX_DELIVERY_DEADLINE_SECS: u64 = 365 * 86_400;

/// A setting that loaded but cannot work: `invalid setting egress.<key>: <reason>`.
pub use switchyard_runtime::InvalidSetting;

/// The longest breaker open period, in seconds: a day.
pub const MAX_BREAKER_OPEN_SECS: u64 = 86_400;

impl EgressSettings {
    /// Checks every value; the first problem is returned.
    pub fn validate(&self) -> Result<(), InvalidSetting> {
        let fail = |key, reason: &str| {
            Err(InvalidSetting {
                section: "egress",
                key,
                reason: reason.to_owned(),
            })
        };
        if self.concurrency == 0 {
            return fail("concurrency", "must be at least 1");
        }
        if self.max_attempts == 0 {
            return fail("max_attempts", "must be at least 1");
        }
        if self.tenant_max_in_flight == 0 {
            return fail("tenant_max_in_flight", "must be at least 1");
        }
        if self.backoff_secs.is_empty() {
            return fail("backoff_secs", "must list at least one delay");
        }
        if self.backoff_secs.contains(&0) {
            return fail("backoff_secs", "delays must be at least 1 second");
        }
        if self.breaker_failure_threshold == 0 {
            return fail("breaker_failure_threshold", "must be at least 1");
        }
        if self.breaker_open_secs == 0 {
            return fail("breaker_open_secs", "must be at least 1");
        }
        if !(1..=MAX_DELIVERY_DEADLINE_SECS).contains(&self.delivery_deadline_secs) {
            return fail(
                "delivery_deadline_secs",
                "must be between 1 and 31536000 (one year)",
            );
        }
        if !(0.0..=1.0).contains(&self.breaker_failure_rate) {
            return fail(
                "breaker_failure_rate",
                "must be between 0 (off) and 1 (a share of the window's attempts)",
            );
        }
        if !(1..=crate::breaker::MAX_WINDOW).contains(&self.breaker_window) {
            return fail("breaker_window", "must be between 1 and 64 attempts");
        }
        if !(1..=3600).contains(&self.park_recheck_secs) {
            return fail("park_recheck_secs", "must be between 1 and 3600");
        }
        if self.breaker_max_open_secs < self.breaker_open_secs {
            return fail(
                "breaker_max_open_secs",
                "must not be below breaker_open_secs",
            );
        }
        // Bounded so that every time computed from them stays far inside the clocks' range.
        if self.breaker_max_open_secs > MAX_BREAKER_OPEN_SECS {
            return fail(
                "breaker_max_open_secs",
                "must be at most 86400 (a day; breaker_open_secs too)",
            );
        }
        if self.disable_after_secs > MAX_DELIVERY_DEADLINE_SECS {
            return fail(
                "disable_after_secs",
                "must be between 0 (never) and 31536000 (one year)",
            );
        }
        Ok(())
    }

    /// [`Self::route_wait_ms`] as a duration.
    pub fn route_wait(&self) -> Duration {
        Duration::from_millis(self.route_wait_ms)
    }

    /// [`Self::disable_after_secs`] as a duration; `None` when destinations are never
    /// disabled automatically.
    pub fn disable_after(&self) -> Option<Duration> {
        (self.disable_after_secs > 0).then(|| Duration::from_secs(self.disable_after_secs))
    }

    /// [`Self::park_recheck_secs`] as a duration.
    pub fn park_recheck(&self) -> Duration {
        Duration::from_secs(self.park_recheck_secs)
    }

    /// [`Self::delivery_deadline_secs`] as a duration.
    pub fn delivery_deadline(&self) -> Duration {
        Duration::from_secs(self.delivery_deadline_secs)
    }
}

impl EgressConfig {
    /// Loads defaults → `file` → environment, then validates.
    pub fn load(file: Option<PathBuf>) -> anyhow::Result<Self> {
        let source = ConfigSource::new(DEFAULTS, ENV_PREFIX).with_file(file);
        let config: EgressConfig =
            switchyard_runtime::load(&source).context("loading configuration")?;
        config.validate()?;
        Ok(config)
    }

    /// Checks the settings that serde cannot.
    pub fn validate(&self) -> anyhow::Result<()> {
        self.storage.validate()?;
        self.egress.validate()?;
        self.encryption.load_ring()?;
        Ok(())
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

    #[test]
    fn defaults_load_as_documented() {
        Jail::expect_with(|_| {
            let config = EgressConfig::load(None).map_err(|e| e.to_string())?;
            assert_eq!(config.http.listen.to_string(), "0.0.0.0:9104");
            let e = &config.egress;
            assert_eq!(e.concurrency, 64);
            assert_eq!(e.max_attempts, 8);
            assert_eq!(e.backoff_secs, [1, 5, 30, 120, 600, 1800, 3600]);
            assert_eq!(e.max_retry_after_secs, 3600);
            assert_eq!(e.breaker_failure_threshold, 5);
            assert_eq!(e.breaker_open_secs, 30);
            assert_eq!(e.breaker_max_open_secs, 300);
            assert_eq!(e.breaker_failure_rate, 0.5);
            assert_eq!(e.breaker_window, 20);
            assert_eq!(e.route_wait_ms, 200);
            assert_eq!(e.tenant_max_in_flight, 16);
            assert!(e.receipts);
            assert_eq!(e.disable_after_secs, 3600);
            assert_eq!(e.park_recheck_secs, 30);
            assert!(e.attempt_log);
            assert_eq!(e.delivery_deadline_secs, 86_400);
            assert_eq!(config.nats.url, "nats://127.0.0.1:4222");
            Ok(())
        });
    }

    #[test]
    fn file_then_environment_override_the_defaults() {
        Jail::expect_with(|jail| {
            jail.create_file(
                "egress.toml",
                "[egress]\nmax_attempts = 3\nbackoff_secs = [2]\n[http]\nlisten = \"127.0.0.1:0\"\n",
            )?;
            jail.set_env("SWITCHYARD_EGRESS_EGRESS__MAX_ATTEMPTS", "4");
            jail.set_env("SWITCHYARD_EGRESS_EGRESS__RECEIPTS", "false");
            jail.set_env("SWITCHYARD_EGRESS_EGRESS__BACKOFF_SECS", "[1, 10]");
            let config =
                EgressConfig::load(Some("egress.toml".into())).map_err(|e| e.to_string())?;
            assert_eq!(config.egress.max_attempts, 4);
            assert_eq!(config.egress.backoff_secs, [1, 10]);
            assert!(!config.egress.receipts);
            assert_eq!(config.http.listen.port(), 0);
            Ok(())
        });
    }

    #[test]
    fn a_missing_kek_file_is_refused_by_name() {
        Jail::expect_with(|jail| {
            let config = EgressConfig::load(None).map_err(|e| e.to_string())?;
            assert_eq!(config.encryption.kek_file, None);
            jail.create_file("kek", &"cd".repeat(32))?;
            {
                // A KEK file readable by others is refused: owner only, as deployed.
                use std::os::unix::fs::PermissionsExt;
                std::fs::set_permissions("kek", std::fs::Permissions::from_mode(0o600))
                    .map_err(|e| e.to_string())?;
            }
            jail.set_env("SWITCHYARD_EGRESS_ENCRYPTION__KEK_FILE", "kek");
            let config = EgressConfig::load(None).map_err(|e| e.to_string())?;
            assert!(config.encryption.load_ring().unwrap().is_some());
            jail.set_env("SWITCHYARD_EGRESS_ENCRYPTION__KEK_FILE", "nowhere");
            let err = EgressConfig::load(None).unwrap_err();
            assert!(
                format!("{err:#}").contains("invalid setting encryption.kek_file"),
                "{err:#}"
            );
            Ok(())
        });
    }

    #[test]
    fn unknown_keys_and_bad_values_are_refused() {
        Jail::expect_with(|jail| {
            jail.create_file("typo.toml", "[egress]\nmax_attempt = 3\n")?;
            let err = EgressConfig::load(Some("typo.toml".into())).unwrap_err();
            assert!(format!("{err:#}").contains("max_attempt"), "{err:#}");

            jail.create_file("empty.toml", "[egress]\nbackoff_secs = []\n")?;
            let err = EgressConfig::load(Some("empty.toml".into())).unwrap_err();
            assert!(
                format!("{err:#}").contains("invalid setting egress.backoff_secs"),
                "{err:#}"
            );

            jail.create_file(
                "breaker.toml",
                "[egress]\nbreaker_open_secs = 60\nbreaker_max_open_secs = 30\n",
            )?;
            let err = EgressConfig::load(Some("breaker.toml".into())).unwrap_err();
            assert!(
                format!("{err:#}").contains("breaker_max_open_secs"),
                "{err:#}"
            );

            for bad in ["0", "31536001"] {
                jail.set_env("SWITCHYARD_EGRESS_EGRESS__DELIVERY_DEADLINE_SECS", bad);
                let err = EgressConfig::load(None).unwrap_err();
                assert!(
                    format!("{err:#}").contains("invalid setting egress.delivery_deadline_secs"),
                    "{bad}: {err:#}"
                );
            }
            jail.set_env("SWITCHYARD_EGRESS_EGRESS__DELIVERY_DEADLINE_SECS", "86400");
            for (key, bad) in [
                ("breaker_failure_rate", "1.5"),
                ("breaker_failure_rate", "-0.1"),
                ("breaker_window", "0"),
                ("breaker_window", "65"),
                ("park_recheck_secs", "0"),
                ("breaker_max_open_secs", "9223372036854775807"),
                ("disable_after_secs", "9223372036854775807"),
            ] {
                let var = format!("SWITCHYARD_EGRESS_EGRESS__{}", key.to_ascii_uppercase());
                jail.set_env(&var, bad);
                let err = EgressConfig::load(None).unwrap_err();
                assert!(
                    format!("{err:#}").contains(&format!("invalid setting egress.{key}")),
                    "{key}={bad}: {err:#}"
                );
                jail.clear_env();
            }
            Ok(())
        });
    }
}
