//! The ingress service's configuration: built-in defaults (`config/defaults.toml`) → file →
//! `SWITCHYARD_INGRESS_*` environment, validated at start-up against the resolved topology
//! ([`IngressSettings::validate`]) and the listeners' own ranges ([`IngressHttpConfig::validate`]).

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use serde::Deserialize;
use switchyard_envelope::MsgIdPolicy;
use switchyard_runtime::{ConfigError, ConfigSource, NatsConfig, StorageConfig, TelemetryConfig};
use switchyard_subjects::{InputStage, SizeClass};
use switchyard_topology::{ConsumerName, DeploymentConfig, ResolvedTopology, StreamName};

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
    /// Storage health bounds (`[storage]`; every key has a default).
    #[serde(default)]
    pub storage: StorageConfig,
    /// Which deployment (prefix, bucket overrides).
    #[serde(default)]
    pub deployment: DeploymentConfig,
    /// The HTTP listeners (`[http]`): the producer API on `listen` (default `0.0.0.0:9101`),
    /// probes and metrics on `probes_listen` (default port 9111), and the API's limits.
    pub http: IngressHttpConfig,
    /// Validation and hand-off.
    pub ingress: IngressSettings,
    /// Payload encryption (`[encryption]`): the key-encryption key that unwraps the data keys
    /// of tenants with encryption on (default: none; such a tenant's messages are then held,
    /// never handed on in clear). Loaded and checked at start-up.
    #[serde(default)]
    pub encryption: switchyard_crypt::EncryptionConfig,
}

/// Validation and hand-off settings.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct IngressSettings {
    /// Messages handled at once (default 64).
    pub concurrency: usize,
    /// Most bytes of messages held at once (fetched, not yet settled), default 8 MiB; at least
    /// one message of the largest size the streams admit, 1 MiB + 64 KiB
    /// ([`switchyard_service::budget`]).
    pub max_in_flight_bytes: usize,
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
    /// Messages one tenant may have waiting in the next stage's stream before ingress stops
    /// reading its stream (default 1000): the most any other tenant waits behind it there
    /// (`crate::credit`).
    pub next_stage_credit: u64,
    /// Bytes one tenant may hold in the shared streams of the sized stages from the next stage
    /// on (`IDEMPOTENCY` and its `BACKPRESSURE_<shard>`, counted by
    /// [`switchyard_subjects::SizeClass`]) before ingress stops reading its stream (default
    /// 16 MiB; `crate::credit`).
    pub next_stage_credit_bytes: u64,
    /// How often the next stage's stream is scanned for the credit, in ms (default 250).
    pub credit_scan_ms: u64,
}

impl IngressSettings {
    /// [`IngressSettings::credit_scan_ms`] as a duration.
    pub fn credit_scan(&self) -> std::time::Duration {
        std::time::Duration::from_millis(self.credit_scan_ms)
    }
}

/// Ingress's `[http]` section: the public producer API and, on a listener of its own, the
/// probes and metrics (so the API port can be opened to producers and the probe port kept to
/// the cluster), and what bounds the API's requests.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct IngressHttpConfig {
    /// The producer API (`POST /v1/messages…`) and nothing else (default `0.0.0.0:9101`);
    /// port 0 picks a free port.
    pub listen: SocketAddr,
    /// `/healthz`, `/readyz` and `/metrics`. Unset (the default): port
    /// [`DEFAULT_PROBES_PORT`] on `listen`'s address, or a free port when `listen`'s port is
    /// 0 (tests, several instances on one host). Port 0 picks a free port.
    #[serde(default)]
    pub probes_listen: Option<SocketAddr>,
    /// How long a producer has to send a request's headers, and then its body, and how long
    /// ingress then takes to answer, in milliseconds (default 30000). Headers not in by then:
    /// the connection is closed; a body not in: `408 request_timeout`; no answer yet: `503
    /// timeout` with `Retry-After` (a retry with the same `Idempotency-Key` is safe).
    pub request_timeout_ms: u64,
    /// Most API requests handled at once, their bodies included (default 64); one more is
    /// answered `503 overloaded` with `Retry-After` at once, never queued. Each may hold up to
    /// 2 × `ingress.max_payload_bytes` of body in memory.
    pub max_concurrent_requests: usize,
}

/// The probe listener's port when `http.probes_listen` is not set (the API's 9101 + 10).
pub const DEFAULT_PROBES_PORT: u16 = 9111;

/// `http.request_timeout_ms`'s range.
pub const REQUEST_TIMEOUT_MS: std::ops::RangeInclusive<u64> = 10..=600_000;

/// `http.max_concurrent_requests`'s range.
pub const MAX_CONCURRENT_REQUESTS: std::ops::RangeInclusive<usize> = 1..=65_536;

impl IngressHttpConfig {
    /// Where the probes listen: `probes_listen`, or its default next to `listen`.
    pub fn probes_addr(&self) -> SocketAddr {
        self.probes_listen.unwrap_or_else(|| {
            let port = if self.listen.port() == 0 {
                0
            } else {
                DEFAULT_PROBES_PORT
            };
            SocketAddr::new(self.listen.ip(), port)
        })
    }

    /// The API's request deadline.
    pub fn request_timeout(&self) -> Duration {
        Duration::from_millis(self.request_timeout_ms)
    }

    /// Checks the limits' ranges, and that the probes do not ask for the API's port.
    pub fn validate(&self) -> Result<(), InvalidSetting> {
        let fail = |key, reason: String| {
            Err(InvalidSetting {
                section: "http",
                key,
                reason,
            })
        };
        if !REQUEST_TIMEOUT_MS.contains(&self.request_timeout_ms) {
            return fail(
                "request_timeout_ms",
                format!(
                    "{} is outside [{}, {}] milliseconds; the default is 30000",
                    self.request_timeout_ms,
                    REQUEST_TIMEOUT_MS.start(),
                    REQUEST_TIMEOUT_MS.end()
                ),
            );
        }
        if !MAX_CONCURRENT_REQUESTS.contains(&self.max_concurrent_requests) {
            return fail(
                "max_concurrent_requests",
                format!(
                    "{} is outside [{}, {}]; the default is 64",
                    self.max_concurrent_requests,
                    MAX_CONCURRENT_REQUESTS.start(),
                    MAX_CONCURRENT_REQUESTS.end()
                ),
            );
        }
        let probes = self.probes_addr();
        let overlap = probes.ip() == self.listen.ip()
            || probes.ip().is_unspecified()
            || self.listen.ip().is_unspecified();
        if probes.port() != 0 && probes.port() == self.listen.port() && overlap {
            return fail(
                "probes_listen",
                format!(
                    "{probes} takes the producer API's port (http.listen = {}); the probes need \
                     a listener of their own: set another port (default {DEFAULT_PROBES_PORT})",
                    self.listen
                ),
            );
        }
        Ok(())
    }
}

/// Header room a producer message may need in its own `INGRESS_<tenant>` stream (its NATS
/// headers), on top of `max_payload_bytes`.
pub const PRODUCER_HEADER_ROOM: usize = 16 * 1024;

/// Header room a message needs in the next stage's stream (the envelope and hop headers).
pub const HOP_HEADER_ROOM: usize = 64 * 1024;

/// Room a DLQ record needs beyond the payload (the original headers plus the record's own).
pub const DLQ_RECORD_ROOM: usize = 128 * 1024;

/// A setting that loaded but cannot work: `invalid setting <section>.<key>: <reason>`.
pub use switchyard_runtime::InvalidSetting;

impl IngressSettings {
    /// Checks every value against its range and the resolved topology (the per-tenant
    /// `ingress-worker` consumer, the `INGRESS` template's, the next stage's and the DLQ's
    /// `max_msg_size`); the first problem is returned.
    pub fn validate(&self, topology: &ResolvedTopology) -> Result<(), InvalidSetting> {
        let fail = |key, reason: String| {
            Err(InvalidSetting {
                section: "ingress",
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
        let max_ack_pending = topology
            .tenant_consumers
            .iter()
            .find(|c| c.name == ConsumerName::IngressWorker)
            .map_or(0, |c| {
                usize::try_from(c.config.max_ack_pending).unwrap_or(0)
            });
        if self.tenant_batch == 0
            || self.tenant_batch > self.concurrency
            || self.tenant_batch > max_ack_pending
        {
            return fail(
                "tenant_batch",
                format!(
                    "{} is outside [1, min(ingress.concurrency = {}, the ingress-worker \
                     consumer's max_ack_pending = {max_ack_pending})]; the default is 16",
                    self.tenant_batch, self.concurrency
                ),
            );
        }
        if self.next_stage_credit < self.tenant_batch as u64 {
            return fail(
                "next_stage_credit",
                format!(
                    "{} is below ingress.tenant_batch ({}): a tenant could never fetch a whole \
                     batch; set at least that (default 1000)",
                    self.next_stage_credit, self.tenant_batch
                ),
            );
        }
        let largest = SizeClass::of(self.max_payload_bytes.saturating_add(HOP_HEADER_ROOM)).bound();
        if self.next_stage_credit_bytes < largest {
            return fail(
                "next_stage_credit_bytes",
                format!(
                    "{} is below what one message of max_payload_bytes ({}) counts ({largest} \
                     bytes): such a tenant would be paused after each message; set at least \
                     that (default 16777216)",
                    self.next_stage_credit_bytes, self.max_payload_bytes
                ),
            );
        }
        if !(10..=60_000).contains(&self.credit_scan_ms) {
            return fail(
                "credit_scan_ms",
                format!(
                    "{} is outside [10, 60000]; the default is 250",
                    self.credit_scan_ms
                ),
            );
        }
        if self.next_stage == InputStage::Ingress {
            return fail(
                "next_stage",
                "\"ingress\" would feed ingress itself; set \"idempotency\" (default), \
                 \"backpressure\" or \"egress\""
                    .into(),
            );
        }
        if self.max_payload_bytes == 0 {
            return fail(
                "max_payload_bytes",
                "0 refuses every message; set at least 1 (default 1048576)".into(),
            );
        }
        // What every later step must carry: the producer's message in its own stream, the
        // stamped envelope in the next stage's stream, and a DLQ record of it.
        let limits = [
            (
                topology
                    .tenant_streams
                    .iter()
                    .find(|s| s.base == StreamName::Ingress.base()),
                PRODUCER_HEADER_ROOM,
            ),
            (
                topology
                    .streams
                    .iter()
                    .find(|s| s.base == StreamName::input_of(self.next_stage).base()),
                HOP_HEADER_ROOM,
            ),
            (
                topology
                    .streams
                    .iter()
                    .find(|s| s.base == StreamName::Dlq.base()),
                DLQ_RECORD_ROOM,
            ),
        ];
        for (stream, room) in limits {
            let Some(stream) = stream else { continue };
            let size = usize::try_from(stream.config.max_message_size).unwrap_or(usize::MAX);
            let most = size.saturating_sub(room);
            if self.max_payload_bytes > most {
                return fail(
                    "max_payload_bytes",
                    format!(
                        "{} does not fit the {} stream's max_msg_size ({size} bytes) with {room} \
                         bytes of headers; set at most {most}, or raise max_msg_size in the \
                         topology",
                        self.max_payload_bytes, stream.base
                    ),
                );
            }
        }
        Ok(())
    }
}

impl IngressConfig {
    /// Checks every setting against the topology this configuration resolves to.
    pub fn validate(&self) -> anyhow::Result<()> {
        self.storage.validate()?;
        self.http.validate()?;
        let topology = self.deployment.resolve()?;
        self.ingress.validate(&topology)?;
        self.encryption.load_ring()?;
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
    type Change = Box<dyn FnOnce(&mut IngressSettings)>;

    fn defaults() -> IngressConfig {
        switchyard_runtime::load(&ConfigSource::new(
            DEFAULTS,
            "SWITCHYARD_INGRESS_TEST_UNUSED_",
        ))
        .unwrap()
    }

    #[test]
    fn defaults_load_and_match_the_docs() {
        let config = defaults();
        assert_eq!(config.ingress.max_payload_bytes, 1_048_576);
        assert_eq!(config.ingress.msg_id_policy, MsgIdPolicy::Require);
        assert_eq!(config.ingress.next_stage, InputStage::Idempotency);
        assert_eq!(config.ingress.next_stage_credit_bytes, 16 * 1024 * 1024);
        assert_eq!(config.http.listen.port(), 9101);
        assert_eq!(config.http.probes_listen, None);
        assert_eq!(config.http.probes_addr().to_string(), "0.0.0.0:9111");
        assert_eq!(config.http.request_timeout(), Duration::from_secs(30));
        assert_eq!(config.http.max_concurrent_requests, 64);
        config.validate().unwrap();
    }

    #[test]
    fn the_probe_listener_defaults_next_to_the_api_and_to_a_free_port_with_it() {
        let mut http = defaults().http;
        http.listen = "127.0.0.1:19101".parse().unwrap();
        assert_eq!(http.probes_addr().to_string(), "127.0.0.1:9111");
        http.listen = "[::1]:0".parse().unwrap();
        assert_eq!(http.probes_addr().to_string(), "[::1]:0");
        http.probes_listen = Some("10.0.0.1:9200".parse().unwrap());
        assert_eq!(http.probes_addr().to_string(), "10.0.0.1:9200");
        // Another address on the same port is its own listener.
        http.listen = "10.0.0.2:9200".parse().unwrap();
        http.validate().unwrap();
    }

    #[test]
    fn every_unworkable_http_setting_is_refused_by_name() {
        type HttpChange = Box<dyn FnOnce(&mut IngressHttpConfig)>;
        let cases: Vec<(&str, HttpChange)> = vec![
            ("request_timeout_ms", Box::new(|h| h.request_timeout_ms = 0)),
            ("request_timeout_ms", Box::new(|h| h.request_timeout_ms = 9)),
            (
                "request_timeout_ms",
                Box::new(|h| h.request_timeout_ms = 600_001),
            ),
            (
                "max_concurrent_requests",
                Box::new(|h| h.max_concurrent_requests = 0),
            ),
            (
                "max_concurrent_requests",
                Box::new(|h| h.max_concurrent_requests = 65_537),
            ),
            (
                "probes_listen",
                Box::new(|h| h.probes_listen = Some("127.0.0.1:9101".parse().unwrap())),
            ),
            (
                "probes_listen",
                Box::new(|h| h.listen = "[::]:9111".parse().unwrap()),
            ),
        ];
        for (key, change) in cases {
            let mut http = defaults().http;
            change(&mut http);
            let message = http.validate().unwrap_err().to_string();
            assert!(
                message.starts_with(&format!("invalid setting http.{key}: ")),
                "{key}: {message}"
            );
        }
    }

    #[test]
    fn the_kek_file_comes_from_the_environment_and_a_bad_one_is_refused_by_name() {
        Jail::expect_with(|jail| {
            assert_eq!(defaults().encryption.kek_file, None);
            jail.create_file("kek", &"ab".repeat(32))?;
            {
                // A KEK file readable by others is refused: owner only, as deployed.
                use std::os::unix::fs::PermissionsExt;
                std::fs::set_permissions("kek", std::fs::Permissions::from_mode(0o600))
                    .map_err(|e| e.to_string())?;
            }
            jail.set_env("SWITCHYARD_INGRESS_ENCRYPTION__KEK_FILE", "kek");
            let config = IngressConfig::load(None).unwrap();
            assert_eq!(
                config.encryption.kek_file.as_deref(),
                Some(std::path::Path::new("kek"))
            );
            assert!(config.encryption.load_ring().unwrap().is_some());
            jail.create_file("junk", "not a key")?;
            jail.set_env("SWITCHYARD_INGRESS_ENCRYPTION__KEK_FILE", "junk");
            let message = IngressConfig::load(None)
                .unwrap()
                .validate()
                .unwrap_err()
                .to_string();
            assert!(
                message.starts_with("invalid setting encryption.kek_file: "),
                "{message}"
            );
            Ok(())
        });
    }

    #[test]
    fn http_settings_come_from_the_environment_and_are_checked_with_the_rest() {
        Jail::expect_with(|jail| {
            jail.set_env("SWITCHYARD_INGRESS_HTTP__PROBES_LISTEN", "127.0.0.1:9200");
            jail.set_env("SWITCHYARD_INGRESS_HTTP__REQUEST_TIMEOUT_MS", "2500");
            let config = IngressConfig::load(None).unwrap();
            assert_eq!(config.http.probes_addr().to_string(), "127.0.0.1:9200");
            assert_eq!(config.http.request_timeout(), Duration::from_millis(2500));
            config.validate().unwrap();
            jail.set_env("SWITCHYARD_INGRESS_HTTP__MAX_CONCURRENT_REQUESTS", "0");
            let err = format!(
                "{:#}",
                IngressConfig::load(None).unwrap().validate().unwrap_err()
            );
            assert!(
                err.contains("invalid setting http.max_concurrent_requests: 0 is outside"),
                "{err}"
            );
            Ok(())
        });
    }

    #[test]
    fn every_unworkable_setting_is_refused_by_name() {
        let config = defaults();
        let topology = config.deployment.resolve().unwrap();
        let cases: Vec<(&str, Change)> = vec![
            ("concurrency", Box::new(|s| s.concurrency = 0)),
            (
                "max_in_flight_bytes",
                Box::new(|s| s.max_in_flight_bytes = 1 << 20),
            ),
            ("tenant_batch", Box::new(|s| s.tenant_batch = 0)),
            ("tenant_batch", Box::new(|s| s.tenant_batch = 65)),
            (
                "tenant_batch",
                Box::new(|s| {
                    s.concurrency = 5000;
                    s.tenant_batch = 2000;
                }),
            ),
            (
                "next_stage",
                Box::new(|s| s.next_stage = InputStage::Ingress),
            ),
            ("next_stage_credit", Box::new(|s| s.next_stage_credit = 15)),
            (
                "next_stage_credit_bytes",
                Box::new(|s| s.next_stage_credit_bytes = 1_114_111),
            ),
            ("credit_scan_ms", Box::new(|s| s.credit_scan_ms = 0)),
            ("credit_scan_ms", Box::new(|s| s.credit_scan_ms = 60_001)),
            ("max_payload_bytes", Box::new(|s| s.max_payload_bytes = 0)),
            (
                "max_payload_bytes",
                Box::new(|s| s.max_payload_bytes = 1_048_577),
            ),
            (
                "max_payload_bytes",
                Box::new(|s| s.max_payload_bytes = 8 << 20),
            ),
        ];
        for (key, change) in cases {
            let mut settings = config.ingress.clone();
            change(&mut settings);
            let message = settings.validate(&topology).unwrap_err().to_string();
            assert!(
                message.starts_with(&format!("invalid setting ingress.{key}: ")),
                "{key}: {message}"
            );
        }
    }

    #[test]
    fn a_payload_limit_beyond_the_ingress_stream_names_the_stream_and_the_most_allowed() {
        Jail::expect_with(|jail| {
            jail.set_env("SWITCHYARD_INGRESS_INGRESS__MAX_PAYLOAD_BYTES", "2000000");
            let config = IngressConfig::load(None).unwrap();
            let err = format!("{:#}", config.validate().unwrap_err());
            assert!(
                err.contains("invalid setting ingress.max_payload_bytes"),
                "{err}"
            );
            assert!(
                err.contains("INGRESS stream") && err.contains("at most 1048576"),
                "{err}"
            );
            Ok(())
        });
    }
}
