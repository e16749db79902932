//! Config sections shared by every binary: the NATS connection, telemetry, and (services) the
//! HTTP listener.

use std::fmt;
use std::net::SocketAddr;
use std::path::PathBuf;

use serde::{Deserialize, Serialize};

/// A service's HTTP listener (the `[http]` section): probes and metrics. No built-in default:
/// each service's `config/defaults.toml` sets its own port. Ingress has its own `[http]`
/// section (its producer API and its probes on separate listeners, and the API's limits).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HttpConfig {
    /// Address serving `/healthz`, `/readyz` and `/metrics`; port 0 picks a free port.
    pub listen: SocketAddr,
}

/// Default NATS server URL.
pub const DEFAULT_NATS_URL: &str = "nats://127.0.0.1:4222";

/// The NATS clients' own default inbox prefix, kept when `nats.inbox_prefix` is not set (the
/// CLI, which connects as `admin`, and tools). Each service's `config/defaults.toml` sets its
/// own (`_INBOX_<service>`), the only inbox its NATS user may subscribe to.
pub const DEFAULT_INBOX_PREFIX: &str = "_INBOX";

/// How to reach and authenticate to NATS (the `[nats]` section).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct NatsConfig {
    /// Server URL, or a comma-separated list of URLs for a cluster. Default `nats://127.0.0.1:4222`.
    pub url: String,
    /// Path to a `.creds` file (JWT + NKey seed). Default: none.
    pub creds_file: Option<PathBuf>,
    /// User name for user/password authentication; needs `password`. Default: none.
    pub user: Option<String>,
    /// Password for user/password authentication; needs `user`. Default: none.
    pub password: Option<String>,
    /// Token for token authentication. Default: none.
    pub token: Option<String>,
    /// PEM file with the CA certificate(s) that sign the server's certificate. Default: none.
    pub tls_ca_file: Option<PathBuf>,
    /// PEM client certificate for mutual TLS; needs `tls_key_file`. Default: none.
    pub tls_cert_file: Option<PathBuf>,
    /// PEM private key of the client certificate; needs `tls_cert_file`. Default: none.
    pub tls_key_file: Option<PathBuf>,
    /// Refuse to connect without TLS. Default `false`.
    pub tls_required: bool,
    /// How long one connection attempt may take, in seconds. Default `5`.
    pub connect_timeout_secs: u64,
    /// How long a request (and a JetStream API call) waits for its reply, in seconds. Default `10`.
    pub request_timeout_secs: u64,
    /// Client name shown by the server's monitoring (`nats server report connections`). Default: none.
    pub name: Option<String>,
    /// Subject prefix of the client's reply inboxes: JetStream API replies, publish acks,
    /// pulled messages and KV watch deliveries all arrive on `<inbox_prefix>.…`, so a user
    /// whose subscribe rights are `<inbox_prefix>.>` reads its own replies and no one else's.
    /// One or more subject tokens, no wildcards. Default `_INBOX`; each service's defaults set
    /// `_INBOX_<service>` (see `nats/server/accounts.conf`).
    pub inbox_prefix: String,
}

impl Default for NatsConfig {
    fn default() -> Self {
        Self {
            url: DEFAULT_NATS_URL.to_owned(),
            creds_file: None,
            user: None,
            password: None,
            token: None,
            tls_ca_file: None,
            tls_cert_file: None,
            tls_key_file: None,
            tls_required: false,
            connect_timeout_secs: 5,
            request_timeout_secs: 10,
            name: None,
            inbox_prefix: DEFAULT_INBOX_PREFIX.to_owned(),
        }
    }
}

impl NatsConfig {
    /// The configured server URLs: `url` split on commas, trimmed, empty entries dropped.
    pub fn urls(&self) -> Vec<&str> {
        self.url
            .split(',')
            .map(str::trim)
            .filter(|url| !url.is_empty())
            .collect()
    }

    /// Why `inbox_prefix` cannot prefix a reply subject, if it cannot: it must be one or more
    /// non-empty tokens of printable ASCII without wildcards (`*`, `>`).
    pub fn inbox_prefix_problem(&self) -> Option<&'static str> {
        let prefix = self.inbox_prefix.as_str();
        if prefix.is_empty() {
            return Some("is empty; set a subject prefix such as _INBOX_<service>");
        }
        if prefix.split('.').any(str::is_empty) {
            return Some("has an empty token (a leading, trailing or doubled `.`)");
        }
        if prefix.contains(['*', '>']) {
            return Some("contains a wildcard (`*` or `>`)");
        }
        if !prefix.bytes().all(|b| b.is_ascii_graphic()) {
            return Some("may hold only printable ASCII without spaces");
        }
        None
    }
}

/// Log line format.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    /// Human-readable lines (coloured only when stderr is a terminal).
    #[default]
    Text,
    /// One JSON object per line, with the current span's fields.
    Json,
}

impl fmt::Display for LogFormat {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Text => "text",
            Self::Json => "json",
        })
    }
}

/// Logging and trace export (the `[telemetry]` section).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct TelemetryConfig {
    /// `text` or `json`. Default `text`.
    pub log_format: LogFormat,
    /// Which events to log, in `EnvFilter` syntax (e.g. `info,async_nats=warn`). Default `info`.
    pub log_filter: String,
    /// OTLP/HTTP collector base URL such as `http://127.0.0.1:4318` (`/v1/traces` is appended);
    /// spans are exported only when set. Default: none.
    pub otlp_endpoint: Option<String>,
    /// `service.name` resource attribute on exported spans. Default: the binary's name.
    pub service_name: Option<String>,
}

impl Default for TelemetryConfig {
    fn default() -> Self {
        Self {
            log_format: LogFormat::Text,
            log_filter: "info".to_owned(),
            otlp_endpoint: None,
            service_name: None,
        }
    }
}

/// Storage health as each service measures it (the `[storage]` section): how often, and the
/// bounds past which `/readyz` fails with the reason (`libs/service`'s `storage` module).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct StorageConfig {
    /// Seconds between two measurements (a KV read, a refused publish, the fill of the
    /// shared streams and buckets the service uses). Default 15; 1 to 3600.
    pub check_interval_secs: u64,
    /// Longest KV round trip, in milliseconds, before readiness fails. Default 1000; 1 to
    /// 60000.
    pub max_kv_rtt_ms: u64,
    /// Longest stream publish round trip, in milliseconds, before readiness fails. Default
    /// 1000; 1 to 60000.
    pub max_publish_rtt_ms: u64,
    /// Fill (of bytes or messages, whichever is fuller) of a shared stream or bucket the
    /// service uses, in percent of its limit, at which readiness fails. Default 95; 1 to 100.
    pub max_fill_pct: f64,
}

impl Default for StorageConfig {
    fn default() -> Self {
        Self {
            check_interval_secs: 15,
            max_kv_rtt_ms: 1000,
            max_publish_rtt_ms: 1000,
            max_fill_pct: 95.0,
        }
    }
}

impl StorageConfig {
    /// Checks every value against its range: `invalid setting storage.<key>: <reason>`.
    pub fn validate(&self) -> Result<(), super::InvalidSetting> {
        let fail = |key, reason: String| {
            Err(super::InvalidSetting {
                section: "storage",
                key,
                reason,
            })
        };
        if !(1..=3600).contains(&self.check_interval_secs) {
            return fail(
                "check_interval_secs",
                format!(
                    "{} is outside [1, 3600] seconds; the default is 15",
                    self.check_interval_secs
                ),
            );
        }
        for (key, value) in [
            ("max_kv_rtt_ms", self.max_kv_rtt_ms),
            ("max_publish_rtt_ms", self.max_publish_rtt_ms),
        ] {
            if !(1..=60_000).contains(&value) {
                return fail(
                    key,
                    format!("{value} is outside [1, 60000] milliseconds; the default is 1000"),
                );
            }
        }
        if !(self.max_fill_pct >= 1.0 && self.max_fill_pct <= 100.0) {
            return fail(
                "max_fill_pct",
                format!(
                    "{} is outside [1, 100] percent; the default is 95",
                    self.max_fill_pct
                ),
            );
        }
        Ok(())
    }
}
