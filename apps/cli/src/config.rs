//! The CLI's configuration: built-in defaults → `--config` file → `SWITCHYARD_CLI_*`
//! environment → command-line flags.

use anyhow::Context;
use serde::Deserialize;
use switchyard_runtime::{ConfigSource, NatsConfig, TelemetryConfig};
use switchyard_topology::DeploymentConfig;

use crate::Cli;

/// The built-in defaults (documented in `apps/cli/config/defaults.toml`).
pub const DEFAULTS: &str = include_str!("../config/defaults.toml");

/// Environment prefix of the CLI's settings.
pub const ENV_PREFIX: &str = "SWITCHYARD_CLI_";

/// Everything the CLI is configured with.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CliConfig {
    /// How to reach NATS.
    pub nats: NatsConfig,
    /// Logging (to stderr; command output goes to stdout).
    pub telemetry: TelemetryConfig,
    /// Which deployment to operate on.
    #[serde(default)]
    pub deployment: DeploymentConfig,
}

impl CliConfig {
    /// Loads the layered config and applies command-line overrides.
    pub fn load(cli: &Cli) -> anyhow::Result<Self> {
        let source = ConfigSource::new(DEFAULTS, ENV_PREFIX)
            .with_file(cli.config.clone())
            .with_bucket_env_overrides(true);
        let mut config: CliConfig =
            switchyard_runtime::load(&source).context("loading configuration")?;
        if let Some(server) = &cli.server {
            config.nats.url = server.clone();
        }
        if let Some(prefix) = &cli.prefix {
            config.deployment.prefix = Some(prefix.parse().context("--prefix")?);
        }
        Ok(config)
    }
}
