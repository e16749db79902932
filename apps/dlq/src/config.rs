//! The dlq service's configuration: built-in defaults (`config/defaults.toml`) → file →
//! `SWITCHYARD_DLQ_*` environment. Every key is documented in the defaults file.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Duration;

use serde::Deserialize;
use switchyard_keys::TenantId;
use switchyard_runtime::config::HttpConfig;
use switchyard_runtime::{ConfigError, ConfigSource, NatsConfig, StorageConfig, TelemetryConfig};
use switchyard_topology::DeploymentConfig;

/// The built-in defaults, every key documented.
pub const DEFAULTS: &str = include_str!("../config/defaults.toml");

/// Environment prefix.
pub const ENV_PREFIX: &str = "SWITCHYARD_DLQ_";

/// Everything the dlq service is configured with.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DlqConfig {
    /// How to reach NATS.
    pub nats: NatsConfig,
    /// Logging and trace export.
    pub telemetry: TelemetryConfig,
    /// Storage health bounds (`[storage]`; every key has a default).
    #[serde(default)]
    pub storage: StorageConfig,
    /// Which deployment (prefix, bucket overrides).
    #[serde(default)]
    pub deployment: DeploymentConfig,
    /// The probes listener (`[http]`; default `listen = "0.0.0.0:9105"`).
    pub http: HttpConfig,
    /// The safety net for messages JetStream gave up on.
    pub safety_net: SafetyNetSettings,
    /// Replay jobs.
    pub jobs: JobSettings,
    /// Inflow counters.
    pub stats: StatsSettings,
    /// Inflow alerts.
    pub alerts: AlertSettings,
    /// Per-tenant retention of DLQ entries, shorter than the DLQ's `max_age`.
    #[serde(default)]
    pub retention: RetentionSettings,
    /// Operational events delivered to an operator's endpoint as signed webhooks.
    pub events_webhook: EventsWebhookSettings,
}

/// `[events_webhook]`: operational events delivered to an operator's endpoint
/// ([`crate::events_webhook`]).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EventsWebhookSettings {
    /// The endpoint, `http://` or `https://`; empty turns the delivery off (default).
    pub url: String,
    /// A file holding the Standard Webhooks signing secret (`whsec_` + base64); required with
    /// `url`.
    pub secret_file: PathBuf,
    /// Only events of these kinds (`EventKind` names); empty: every kind (default).
    pub kinds: Vec<String>,
    /// One delivery's timeout, in milliseconds (default 10000; 1 to 30000).
    pub timeout_ms: u64,
}

impl EventsWebhookSettings {
    /// Whether events are delivered (a `url` is set).
    pub fn enabled(&self) -> bool {
        !self.url.is_empty()
    }
}

/// `[retention]`: an explicit per-tenant policy for how long the DLQ keeps a tenant's entries.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RetentionSettings {
    /// Tenant → seconds its DLQ entries are kept (default none: the DLQ's `max_age`, 14 d, for
    /// every tenant). Older entries of the tenant are removed by the counting instance at each
    /// expiry check, counted (`switchyard_dlq_retention_removed_total{tenant}`) and logged;
    /// `alerts.v1.<tenant>.dlq-expiring` warns before, as for `max_age`.
    #[serde(default)]
    pub tenants: BTreeMap<TenantId, u64>,
}

/// The safety net.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SafetyNetSettings {
    /// Whether to run it (default true).
    pub enabled: bool,
    /// Declared base names of the streams watched (default the four pipeline streams).
    pub streams: Vec<String>,
    /// Delay between an advisory and the rescue, in milliseconds (default 1000).
    pub rescue_delay_ms: u64,
    /// Interval of the stranded-message sweep, in seconds; 0 turns it off (default 30).
    pub sweep_interval_secs: u64,
    /// Candidates examined per stream and sweep (default 1000).
    pub sweep_max_per_stream: usize,
}

impl SafetyNetSettings {
    /// The rescue delay.
    pub fn rescue_delay(&self) -> Duration {
        Duration::from_millis(self.rescue_delay_ms)
    }
}

/// Replay jobs.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct JobSettings {
    /// Whether to execute jobs (default true).
    pub enabled: bool,
    /// Lease length, in seconds (default 15).
    pub lease_secs: u64,
    /// Interval between scans for claimable jobs, in seconds (default 5).
    pub scan_interval_secs: u64,
    /// Jobs executed at once (default 4).
    pub max_concurrent: usize,
    /// Ceiling on a job's rate, in replays per second (default 10000).
    pub max_rate: u32,
    /// How long one entry's copy is tried again, in seconds (default 60), before the job
    /// leaves the entry in the DLQ (kept `publish failed`) and goes on: a target stream that
    /// keeps refusing one tenant's copies (its quota full, say) must not hold up the rest.
    pub entry_retry_secs: u64,
}

/// Inflow counters.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StatsSettings {
    /// Whether to count (default true).
    pub enabled: bool,
    /// Lease length, in seconds (default 15).
    pub lease_secs: u64,
    /// Entries per KV write round (default 500).
    pub batch_max: usize,
}

/// Inflow alerts.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AlertSettings {
    /// Whether to publish alerts (default true; needs `stats.enabled`).
    pub enabled: bool,
    /// The sliding window, in seconds (default 60).
    pub window_secs: u64,
    /// Entries per window above which a tenant is alerted on; 0 = never (default 100).
    pub threshold: u64,
    /// Least time between two alerts for one tenant, in seconds (default 300).
    pub cooldown_secs: u64,
    /// Per-tenant thresholds replacing `threshold` (default none).
    #[serde(default)]
    pub tenant_thresholds: BTreeMap<TenantId, u64>,
    /// Entries that age out of the DLQ within this many seconds are counted and alerted on
    /// (`alerts.v1.<tenant>.dlq-expiring`); 0 = never (default 86400).
    pub expiring_within_secs: u64,
    /// How often the counting instance looks for them, in seconds (default 300).
    pub expiry_check_secs: u64,
}

impl DlqConfig {
    /// Loads defaults → `file` → environment.
    pub fn load(file: Option<PathBuf>) -> Result<Self, ConfigError> {
        switchyard_runtime::load(
            &ConfigSource::new(DEFAULTS, ENV_PREFIX)
                .with_file(file)
                .with_bucket_env_overrides(true),
        )
    }

    /// Checks what serde cannot: intervals, leases, rates and batch sizes must be positive.
    pub fn validate(&self) -> anyhow::Result<()> {
        self.storage.validate()?;
        let positive = [
            ("jobs.lease_secs", self.jobs.lease_secs),
            ("jobs.scan_interval_secs", self.jobs.scan_interval_secs),
            ("jobs.max_concurrent", self.jobs.max_concurrent as u64),
            ("jobs.max_rate", u64::from(self.jobs.max_rate)),
            ("jobs.entry_retry_secs", self.jobs.entry_retry_secs),
            ("stats.lease_secs", self.stats.lease_secs),
            ("stats.batch_max", self.stats.batch_max as u64),
            ("alerts.window_secs", self.alerts.window_secs),
            ("alerts.expiry_check_secs", self.alerts.expiry_check_secs),
            (
                "safety_net.sweep_max_per_stream",
                self.safety_net.sweep_max_per_stream as u64,
            ),
        ];
        for (name, value) in positive {
            if value == 0 {
                anyhow::bail!("invalid setting {name}: must be greater than 0");
            }
        }
        let webhook = &self.events_webhook;
        if webhook.enabled() {
            match reqwest::Url::parse(&webhook.url) {
                Ok(url) if matches!(url.scheme(), "http" | "https") && url.has_host() => {}
                _ => anyhow::bail!(
                    "invalid setting events_webhook.url: {:?} is not an http:// or https:// URL \
                     (leave it empty to turn the delivery off)",
                    switchyard_registry::route::redact_url(&webhook.url)
                ),
            }
            if webhook.secret_file.as_os_str().is_empty() {
                anyhow::bail!(
                    "invalid setting events_webhook.secret_file: required with events_webhook.url \
                     (a file holding the signing secret, whsec_ + base64)"
                );
            }
            if !(1..=30_000).contains(&webhook.timeout_ms) {
                anyhow::bail!(
                    "invalid setting events_webhook.timeout_ms: {} is not between 1 and 30000",
                    webhook.timeout_ms
                );
            }
        }
        for kind in &webhook.kinds {
            if let Err(error) = kind.parse::<switchyard_subjects::EventKind>() {
                anyhow::bail!("invalid setting events_webhook.kinds: {error}");
            }
        }
        for (tenant, secs) in &self.retention.tenants {
            if *secs == 0 {
                anyhow::bail!(
                    "invalid setting retention.tenants.{tenant}: 0 would remove every entry at \
                     once; give seconds > 0 (or remove the line for the DLQ's max_age)"
                );
            }
        }
        for base in &self.safety_net.streams {
            match switchyard_topology::StreamName::from_base(base) {
                Some(stream) if stream.per_tenant() => anyhow::bail!(
                    "invalid setting safety_net.streams: {base} is one stream per tenant and is \
                     not watched (its stage dead-letters a message on its consumer's last \
                     delivery itself); remove it"
                ),
                Some(stream) if stream.stage().is_some() => {}
                _ => anyhow::bail!(
                    "invalid setting safety_net.streams: {base:?} is not a shared pipeline \
                     stream (IDEMPOTENCY, BACKPRESSURE, EGRESS)"
                ),
            }
        }
        Ok(())
    }

    /// The defaults alone (for tests and tools).
    pub fn defaults() -> Result<Self, ConfigError> {
        switchyard_runtime::load(&ConfigSource::new(
            DEFAULTS,
            "SWITCHYARD_DLQ_DEFAULTS_ONLY_",
        ))
    }
}

#[cfg(test)]
#[allow(
    clippy::result_large_err,
    reason = "figment::Jail's closures return figment's own (large) error type"
)]
mod tests {
    use super::*;

    #[test]
    fn defaults_match_the_docs() {
        let config = DlqConfig::defaults().unwrap();
        assert_eq!(config.http.listen.port(), 9105);
        assert!(config.safety_net.enabled);
        assert_eq!(
            config.safety_net.streams,
            ["IDEMPOTENCY", "BACKPRESSURE", "EGRESS"]
        );
        assert_eq!(config.safety_net.rescue_delay(), Duration::from_secs(1));
        assert_eq!(config.safety_net.sweep_interval_secs, 30);
        assert_eq!(config.jobs.lease_secs, 15);
        assert_eq!(config.jobs.max_rate, 10_000);
        assert_eq!(config.stats.batch_max, 500);
        assert_eq!(config.alerts.window_secs, 60);
        assert_eq!(config.alerts.threshold, 100);
        assert!(config.alerts.tenant_thresholds.is_empty());
        config.validate().unwrap();
        let mut per_tenant = config.clone();
        per_tenant.safety_net.streams.push("INGRESS".into());
        let err = per_tenant.validate().unwrap_err().to_string();
        assert!(
            err.contains("safety_net.streams: INGRESS is one stream per tenant"),
            "{err}"
        );
        let mut unknown = config.clone();
        unknown.safety_net.streams = vec!["DLQ".into()];
        let err = unknown.validate().unwrap_err().to_string();
        assert!(err.contains("not a shared pipeline stream"), "{err}");
        assert!(!config.events_webhook.enabled());
        for (tune, key) in [
            (
                (|c: &mut DlqConfig| {
                    c.events_webhook.url = "htps://ops:S3cret@ops.example.com/in?token=t".into()
                }) as fn(&mut DlqConfig),
                "events_webhook.url",
            ),
            (
                |c: &mut DlqConfig| c.events_webhook.url = "https://ops.example.com/in".into(),
                "events_webhook.secret_file",
            ),
            (
                |c: &mut DlqConfig| c.events_webhook.kinds = vec!["breaker_open".into()],
                "events_webhook.kinds: unknown event kind \"breaker_open\"",
            ),
            (
                |c: &mut DlqConfig| {
                    c.events_webhook.url = "https://ops.example.com/in".into();
                    c.events_webhook.secret_file = "/run/secrets/events".into();
                    c.events_webhook.timeout_ms = 0;
                },
                "events_webhook.timeout_ms",
            ),
        ] {
            let mut bad = config.clone();
            tune(&mut bad);
            let err = bad.validate().unwrap_err().to_string();
            assert!(err.contains(key), "{key}: {err}");
            assert!(!err.contains("S3cret") && !err.contains("token=t"), "{err}");
        }
        let mut zero = config.clone();
        zero.jobs.lease_secs = 0;
        assert!(
            zero.validate()
                .unwrap_err()
                .to_string()
                .contains("jobs.lease_secs")
        );
    }

    #[test]
    fn file_then_environment_override_the_defaults() {
        figment::Jail::expect_with(|jail| {
            jail.create_file(
                "dlq.toml",
                "[alerts]\nthreshold = 5\n[alerts.tenant_thresholds]\nacme = 50\n",
            )?;
            jail.set_env("SWITCHYARD_DLQ_JOBS__LEASE_SECS", "3");
            jail.set_env("SWITCHYARD_DLQ_HTTP__LISTEN", "127.0.0.1:0");
            let config = DlqConfig::load(Some("dlq.toml".into())).unwrap();
            assert_eq!(config.alerts.threshold, 5);
            assert_eq!(
                config.alerts.tenant_thresholds[&TenantId::new("acme").unwrap()],
                50
            );
            assert_eq!(config.jobs.lease_secs, 3);
            assert_eq!(config.http.listen.port(), 0);
            Ok(())
        });
    }

    #[test]
    fn unknown_keys_and_bad_tenants_are_refused() {
        figment::Jail::expect_with(|jail| {
            jail.create_file("typo.toml", "[jobs]\nlease_sec = 3\n")?;
            assert!(DlqConfig::load(Some("typo.toml".into())).is_err());
            jail.create_file("bad.toml", "[alerts.tenant_thresholds]\nAcme = 3\n")?;
            assert!(DlqConfig::load(Some("bad.toml".into())).is_err());
            Ok(())
        });
    }
}
