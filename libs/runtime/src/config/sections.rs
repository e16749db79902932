//! Config sections shared by every binary: the NATS connection, telemetry, and (services) the
//! HTTP listener.

use std::fmt;
use std::net::SocketAddr;
use std::path::PathBuf;

use serde::{Deserialize, Serialize};

/// A service's HTTP listener (the `[http]` section): probes and metrics, and ingress's
/// producer API. No built-in default: each service's `config/defaults.toml` sets its own port.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HttpConfig {
    /// Address serving `/healthz`, `/readyz` and `/metrics` (ingress: also the producer API);
    /// port 0 picks a free port.
    pub listen: SocketAddr,
}

/// Default NATS server URL.
pub const DEFAULT_NATS_URL: &str = "nats://127.0.0.1:4222";

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
