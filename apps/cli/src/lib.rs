//! The operator CLI's library: argument definitions ([`Cli`]), configuration
//! ([`config::CliConfig`]), one module per command group under [`commands`], table/JSON
//! output ([`output`]), progress bars ([`progress`]), value parsers ([`parse`]), confirmation prompts ([`prompt`]) and
//! opening streams and buckets with a clear error when they are missing ([`resources`]).

pub mod api;
pub mod commands;
pub mod config;
pub mod console;
pub mod output;
pub mod parse;
pub mod progress;
pub mod prompt;
pub mod resources;

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use clap::{Parser, Subcommand};

use crate::config::CliConfig;

/// Exit code when provisioning leaves drift behind (reported, not fixed).
pub const EXIT_DRIFT: u8 = 3;

/// `switchyard`: operate a Switchyard deployment.
#[derive(Debug, Parser)]
#[command(name = "switchyard", version, about, propagate_version = true)]
pub struct Cli {
    /// A TOML config file layered over the built-in defaults.
    #[arg(long, global = true, value_name = "FILE")]
    pub config: Option<PathBuf>,
    /// NATS server URL(s), comma-separated (overrides `nats.url`).
    #[arg(long, short = 's', global = true, value_name = "URL")]
    pub server: Option<String>,
    /// Deployment prefix (overrides `deployment.prefix`).
    #[arg(long, global = true)]
    pub prefix: Option<String>,
    /// Print JSON instead of tables.
    #[arg(long, global = true)]
    pub json: bool,
    /// The command.
    #[command(subcommand)]
    pub command: Command,
}

/// The commands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// The commands that work on a deployment over one NATS connection.
    #[command(flatten)]
    Nats(Box<NatsCommand>),
    /// Check the deployment for what operators get wrong, each with its fix; exit 0 ok,
    /// 1 warn, 2 fail.
    ///
    /// Checks the server version, JetStream, max_payload against the declared sizes, every
    /// declared stream, consumer and bucket (and drift), fill levels, clock skew, the
    /// services' readiness (`--ready`) and the NATS user's permissions. Changes nothing.
    Doctor(commands::doctor::DoctorArgs),
    /// Print a shell completion script (bash, zsh, fish, elvish, powershell).
    Completions(commands::shell::CompletionsArgs),
    /// Write man pages for every command to a folder.
    Man(commands::shell::ManArgs),
    /// The management HTTP API: serve it, or print its OpenAPI description.
    Api(api::ApiArgs),
}

/// The commands that connect to NATS before they start.
#[derive(Debug, Subcommand)]
pub enum NatsCommand {
    /// Create the streams, consumers and buckets declared in nats/topology.toml; report drift.
    Provision(commands::provision::ProvisionArgs),
    /// Show streams, consumers (lag), buckets and per-tenant backlog.
    Status(commands::status::StatusArgs),
    /// Set, show, list and remove routes (where a tenant's messages are delivered).
    Routes(commands::routes::RoutesArgs),
    /// Set, show, list and remove destinations: a tenant's fan-out subscriptions.
    Destinations(commands::destinations::DestinationsArgs),
    /// Enable, disable, show and list tenants in the tenant registry.
    Tenants(commands::tenants::TenantsArgs),
    /// Create, list and revoke tenants' API keys for the producer HTTP API.
    Keys(commands::keys::KeysArgs),
    /// Set, show and list per-tenant rate limits (applied by every backpressure replica).
    Limits(commands::limits::LimitsArgs),
    /// Publish a message to a tenant's ingress subject.
    Publish(commands::publish::PublishArgs),
    /// Browse, replay and purge the dead-letter queue.
    Dlq(commands::dlq::DlqArgs),
    /// The delivery log: every attempt egress made, delivered or not.
    Attempts(commands::attempts::AttemptsArgs),
    /// Operational events: destinations disabled and enabled, breakers, DLQ inflow.
    Events(commands::events::EventsArgs),
    /// Per-tenant payload encryption: enable, rotate, re-wrap, status, shred.
    Encryption(commands::encryption::EncryptionArgs),
    /// Back up every stream and bucket to a folder, restore one, check one.
    Backup(commands::backup::BackupArgs),
}

/// Runs one command; returns the process exit code.
pub async fn run(cli: Cli, mut config: CliConfig) -> anyhow::Result<ExitCode> {
    let out = output::Output::new(cli.json);
    let command = match cli.command {
        Command::Completions(args) => return commands::shell::completions(&args),
        Command::Man(args) => return commands::shell::man(&args),
        Command::Doctor(args) => {
            // The doctor connects itself: an unreachable server is one of its findings.
            let topology = topology(&config)?;
            return commands::doctor::run(&config, &topology, &args, &out).await;
        }
        Command::Api(args) => {
            match &args.command {
                api::ApiCommand::Openapi => return Ok(api::openapi_json_command()),
                api::ApiCommand::PortalLink(link) => return api::portal_link_command(link),
                api::ApiCommand::Serve(_) => {}
            }
            let topology = topology(&config)?;
            let client = switchyard_runtime::connect(&config.nats).await?;
            let js = switchyard_runtime::jetstream(client, &config.nats);
            return api::run(&js, &topology, &args).await;
        }
        Command::Nats(command) => *command,
    };
    // Checking a backup needs no server: it is done where the backup is kept.
    if let NatsCommand::Backup(args) = &command
        && let commands::backup::BackupCommand::Verify(dir) = &args.command
    {
        return commands::backup::verify(&topology(&config)?, dir, &out).await;
    }
    if let NatsCommand::Provision(args) = &command {
        config.deployment.replicas = args.replicas.or(config.deployment.replicas);
    }
    let topology = topology(&config)?;
    let client = switchyard_runtime::connect(&config.nats).await?;
    let js = switchyard_runtime::jetstream(client.clone(), &config.nats);
    let code = match command {
        NatsCommand::Provision(args) => {
            commands::provision::run(&js, &topology, &args, &out).await?
        }
        NatsCommand::Status(args) => commands::status::run(&js, &topology, &args, &out).await?,
        NatsCommand::Routes(args) => commands::routes::run(&js, &topology, &args, &out).await?,
        NatsCommand::Destinations(args) => {
            commands::destinations::run(&js, &topology, &args, &out).await?
        }
        NatsCommand::Tenants(args) => commands::tenants::run(&js, &topology, &args, &out).await?,
        NatsCommand::Keys(args) => commands::keys::run(&js, &topology, &args, &out).await?,
        NatsCommand::Limits(args) => commands::limits::run(&js, &topology, &args, &out).await?,
        NatsCommand::Publish(args) => commands::publish::run(&js, &topology, &args, &out).await?,
        NatsCommand::Dlq(args) => commands::dlq::run(&js, &topology, &args, &out).await?,
        NatsCommand::Attempts(args) => commands::attempts::run(&js, &topology, &args, &out).await?,
        NatsCommand::Events(args) => commands::events::run(&js, &topology, &args, &out).await?,
        NatsCommand::Encryption(args) => {
            commands::encryption::run(&js, &topology, &args, &out).await?
        }
        NatsCommand::Backup(args) => commands::backup::run(&js, &topology, &args, &out).await?,
    };
    client
        .flush()
        .await
        .context("flushing the NATS connection")?;
    Ok(code)
}

/// The deployment's topology, as the config resolves it.
fn topology(config: &CliConfig) -> anyhow::Result<switchyard_topology::ResolvedTopology> {
    config
        .deployment
        .resolve()
        .context("loading the topology declarations")
}
