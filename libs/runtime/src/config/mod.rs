//! Generic configuration loading: embedded defaults → file → environment, through figment.
//!
//! Every binary describes where its settings come from with a [`ConfigSource`] and calls
//! [`load`] once at start-up. Environment variables are read here and nowhere else.

mod env;
mod sections;
#[cfg(test)]
mod tests;

use std::path::PathBuf;

use figment::Figment;
use figment::providers::{Env, Format, Toml};
use serde::de::DeserializeOwned;

use self::env::VerbatimEnv;

pub use sections::{
    DEFAULT_INBOX_PREFIX, HttpConfig, LogFormat, NatsConfig, StorageConfig, TelemetryConfig,
};

/// A setting that loaded but cannot work, found by a service's start-up validation:
/// `invalid setting <section>.<key>: <what is wrong, and what to set instead>`. The service
/// stops before it connects.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid setting {section}.{key}: {reason}")]
pub struct InvalidSetting {
    /// The config section (`ingress`, `egress`, …).
    pub section: &'static str,
    /// The key in it.
    pub key: &'static str,
    /// What is wrong with it, and what to set instead.
    pub reason: String,
}

/// Separator between nested keys in environment variable names: `<PREFIX>NATS__URL` → `nats.url`.
pub const ENV_KEY_SEPARATOR: &str = "__";

/// Unprefixed environment variables that override KV bucket names, with the key each one sets.
///
/// Merged only when [`ConfigSource::bucket_env_overrides`] is on.
pub const BUCKET_ENV_OVERRIDES: &[(&str, &str)] = &[
    (
        "JS_KV_NAMESPACE_IDEMPOTENCY",
        "deployment.buckets.idempotency",
    ),
    (
        "JS_KV_NAMESPACE_BACKPRESSURE",
        "deployment.buckets.rate-limits",
    ),
];

/// Where a binary's configuration comes from, lowest precedence first.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigSource {
    /// Embedded TOML defaults, usually `include_str!("../config/defaults.toml")`.
    pub defaults_toml: &'static str,
    /// An explicit TOML file layered over the defaults; loading fails if it does not exist.
    pub file: Option<PathBuf>,
    /// Prefix of the environment variables layered over the file, e.g. `"SWITCHYARD_CLI_"`.
    pub env_prefix: &'static str,
    /// Whether to merge the unprefixed [`BUCKET_ENV_OVERRIDES`] (only for configs with `buckets`).
    pub bucket_env_overrides: bool,
}

impl ConfigSource {
    /// A source with the given defaults and environment prefix, no file and no bucket overrides.
    pub fn new(defaults_toml: &'static str, env_prefix: &'static str) -> Self {
        Self {
            defaults_toml,
            file: None,
            env_prefix,
            bucket_env_overrides: false,
        }
    }

    /// Layers `file` (if any) over the defaults.
    pub fn with_file(mut self, file: Option<PathBuf>) -> Self {
        self.file = file;
        self
    }

    /// Turns the unprefixed bucket-name environment overrides on or off.
    pub fn with_bucket_env_overrides(mut self, enabled: bool) -> Self {
        self.bucket_env_overrides = enabled;
        self
    }
}

/// Why configuration could not be loaded.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The explicitly requested configuration file does not exist.
    #[error("config file {} does not exist", path.display())]
    FileNotFound {
        /// The path that was asked for.
        path: PathBuf,
    },
    /// A layer could not be parsed, or a key is unknown, missing or of the wrong type.
    #[error("invalid configuration: {message}")]
    Invalid {
        /// Every error figment reported, each naming its key and the layer it came from.
        message: String,
        /// The underlying figment error.
        #[source]
        source: Box<figment::Error>,
    },
}

impl From<figment::Error> for ConfigError {
    fn from(error: figment::Error) -> Self {
        let message = error
            .clone()
            .into_iter()
            .map(|e| e.to_string())
            .collect::<Vec<_>>()
            .join("; ");
        Self::Invalid {
            message,
            source: Box::new(error),
        }
    }
}

/// Builds the layered figment for `source` without extracting it, for callers that add layers.
///
/// Extract it with [`Figment::extract_lossy`], as [`load`] does, so numbers and booleans set
/// through the environment are read correctly.
pub fn layers(source: &ConfigSource) -> Result<Figment, ConfigError> {
    let mut figment = Figment::from(Toml::string(source.defaults_toml));
    if let Some(path) = &source.file {
        if !path.is_file() {
            return Err(ConfigError::FileNotFound { path: path.clone() });
        }
        // `file_exact`: never search parent directories for a relative path.
        figment = figment.merge(Toml::file_exact(path));
    }
    figment = figment.merge(VerbatimEnv(
        Env::prefixed(source.env_prefix).split(ENV_KEY_SEPARATOR),
    ));
    if source.bucket_env_overrides {
        figment = figment.merge(VerbatimEnv(bucket_env()));
    }
    Ok(figment)
}

/// Loads `T` from the layers described by `source`.
///
/// Environment values are strings; where `T` expects a number or a boolean, they are read as
/// one (`"5"`, `"true"`, also `"yes"`/`"no"`), while string settings keep them verbatim.
pub fn load<T: DeserializeOwned>(source: &ConfigSource) -> Result<T, ConfigError> {
    Ok(layers(source)?.extract_lossy()?)
}

/// The unprefixed bucket-name variables, renamed to the keys they override.
fn bucket_env() -> Env {
    Env::raw().filter_map(|var| {
        BUCKET_ENV_OVERRIDES
            .iter()
            .find(|(name, _)| var.as_str().eq_ignore_ascii_case(name))
            .map(|(_, key)| (*key).into())
    })
}
