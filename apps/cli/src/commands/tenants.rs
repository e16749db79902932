//! `switchyard tenants enable|disable|get|ls`: the tenant registry (`tenants` bucket), which
//! ingress consults to accept or dead-letter a tenant's messages, and each tenant's own
//! ingress stream (`INGRESS_<tenant>`, with its quota), which `enable` provisions.

use anstream::{print, println};
use std::process::ExitCode;

use anyhow::Context;
use async_nats::jetstream;
use clap::Subcommand;
use clap::builder::{PossibleValuesParser, TypedValueParser};
use serde::Serialize;
use switchyard_keys::{TenantId, TenantKey};
use switchyard_registry::{RateLimit, Store, TenantRecord, Unmatched};
use switchyard_topology::{
    BucketName, ResolvedTopology, StreamName, TenantQuota, provision_tenant,
};

use crate::output::{self, Output, Table};
use crate::resources;

/// Arguments of `tenants`.
#[derive(Debug, clap::Args)]
pub struct TenantsArgs {
    /// The tenants command.
    #[command(subcommand)]
    pub command: TenantsCommand,
}

/// The `tenants` commands.
#[derive(Debug, Subcommand)]
pub enum TenantsCommand {
    /// Register a tenant (creating its own ingress stream), or re-enable it (its other
    /// settings are kept); `--max-bytes` / `--max-msgs` set its ingress quota, `--unmatched`
    /// what becomes of a message none of its destinations takes.
    Enable(EnableArgs),
    /// Disable a tenant: ingress dead-letters its messages with `tenant_disabled`.
    Disable(TenantArg),
    /// Show a tenant's record.
    Get(TenantArg),
    /// List every registered tenant.
    Ls,
}

/// One tenant.
#[derive(Debug, clap::Args)]
pub struct TenantArg {
    /// Tenant id.
    pub tenant: TenantId,
}

/// Arguments of `tenants enable`.
#[derive(Debug, clap::Args)]
pub struct EnableArgs {
    /// Tenant id.
    pub tenant: TenantId,
    /// Ingress quota in bytes: what the tenant's stream may hold accepted and not yet read
    /// (default: the topology's; a full quota refuses the tenant's publishes).
    #[arg(long, value_parser = clap::value_parser!(i64).range(1..))]
    pub max_bytes: Option<i64>,
    /// Ingress quota in messages (default: the topology's).
    #[arg(long, value_parser = clap::value_parser!(i64).range(1..))]
    pub max_msgs: Option<i64>,
    /// A display name for people, in any script (at most 100 characters, no control or
    /// invisible formatting characters); kept when re-enabling without it. An ingress of an
    /// earlier version refuses a record with a name: set names once every ingress is upgraded.
    #[arg(long, value_parser = tenant_name, conflicts_with = "no_name")]
    pub name: Option<String>,
    /// Remove the tenant's display name.
    #[arg(long)]
    pub no_name: bool,
    /// What egress does with a message of the tenant that none of its destinations (nor a
    /// route) takes, once it has destinations: dead-letter it `no_subscriber` (the default) or
    /// drop it (counted, with a receipt); kept when re-enabling without it. Services of an
    /// earlier version refuse a record with `drop`: set it once every service is upgraded.
    #[arg(long, value_name = "POLICY", value_parser = unmatched_policy())]
    pub unmatched: Option<Unmatched>,
    /// The rate limit of each of the tenant's destinations without one of its own, in attempts
    /// a second across every egress replica; kept when re-enabling without it.
    #[arg(long, value_name = "PER_SEC", conflicts_with = "no_destination_rate")]
    pub destination_rate: Option<f64>,
    /// Attempts at once after a quiet period, with --destination-rate (default 1).
    #[arg(long, value_name = "N", requires = "destination_rate")]
    pub destination_burst: Option<u32>,
    /// Remove the tenant's default destination rate limit.
    #[arg(long)]
    pub no_destination_rate: bool,
}

/// Parses `--unmatched`: `dead_letter` or `drop` ([`Unmatched::as_str`]).
fn unmatched_policy() -> impl TypedValueParser<Value = Unmatched> {
    let policies = [Unmatched::DeadLetter, Unmatched::Drop];
    PossibleValuesParser::new(policies.map(Unmatched::as_str)).map(move |raw| {
        policies
            .into_iter()
            .find(|policy| policy.as_str() == raw)
            .unwrap_or_default()
    })
}

/// Parses `--name` ([`switchyard_registry::tenant::check_name`]).
fn tenant_name(raw: &str) -> Result<String, String> {
    switchyard_registry::tenant::check_name(raw)
        .map(|()| raw.to_owned())
        .map_err(|err| err.to_string())
}

/// The tenant's ingress quota as its record sets it (defaults where unset).
pub fn quota(record: &TenantRecord) -> TenantQuota {
    TenantQuota {
        max_bytes: record.quota_bytes,
        max_msgs: record.quota_msgs,
    }
}

/// A tenant and its record, as printed by `--json`.
#[derive(Debug, Serialize)]
struct TenantView<'a> {
    tenant: &'a TenantId,
    #[serde(flatten)]
    record: &'a TenantRecord,
}

fn status(record: &TenantRecord) -> &'static str {
    if record.enabled {
        "enabled"
    } else {
        "disabled"
    }
}

fn max_payload(record: &TenantRecord) -> String {
    record
        .max_payload_bytes
        .map_or_else(|| "default".to_owned(), |b| b.to_string())
}

/// Runs a `tenants` command.
pub async fn run(
    js: &jetstream::Context,
    topology: &ResolvedTopology,
    args: &TenantsArgs,
    out: &Output,
) -> anyhow::Result<ExitCode> {
    let store: Store<TenantKey, TenantRecord> =
        Store::new(resources::bucket(js, topology, BucketName::Tenants).await?);
    match &args.command {
        TenantsCommand::Enable(args) => enable(js, topology, &store, args, out).await?,
        TenantsCommand::Disable(t) => set_enabled(&store, &t.tenant, false, out).await?,
        TenantsCommand::Get(t) => {
            let key = TenantKey {
                tenant: t.tenant.clone(),
            };
            let Some(record) = store.get(&key).await? else {
                anyhow::bail!("tenant {} is not registered", t.tenant);
            };
            if out.is_json() {
                out.json(&TenantView {
                    tenant: &t.tenant,
                    record: &record,
                })?;
            } else {
                let quota =
                    |q: Option<i64>| q.map_or_else(|| "default".to_owned(), |n| n.to_string());
                let name = record
                    .name
                    .as_deref()
                    .map(|n| format!(" ({})", output::printable(n)))
                    .unwrap_or_default();
                // The policy shows only when it is not the default, like in the record.
                let unmatched = match record.unmatched {
                    Unmatched::DeadLetter => String::new(),
                    policy => format!("; unmatched messages: {}", policy.as_str()),
                };
                println!(
                    "tenant {}{name}: {} (max payload bytes: {}; ingress quota: {} bytes, {} messages{unmatched})",
                    t.tenant,
                    status(&record),
                    max_payload(&record),
                    quota(record.quota_bytes),
                    quota(record.quota_msgs)
                );
            }
        }
        TenantsCommand::Ls => list(&store, out).await?,
    }
    Ok(ExitCode::SUCCESS)
}

/// Provisions the tenant's own streams (with its quota; a changed quota is applied in place)
/// before registering it, so ingress never sees a tenant without its stream.
async fn enable(
    js: &jetstream::Context,
    topology: &ResolvedTopology,
    store: &Store<TenantKey, TenantRecord>,
    args: &EnableArgs,
    out: &Output,
) -> anyhow::Result<()> {
    let key = TenantKey {
        tenant: args.tenant.clone(),
    };
    // A quota below the largest message the stream takes would refuse such a message for
    // ever ("quota full, retry"), however empty the stream.
    let largest = topology
        .tenant_streams
        .iter()
        .find(|s| s.base == StreamName::Ingress.base())
        .map_or(0, |s| i64::from(s.config.max_message_size));
    if let Some(bytes) = args.max_bytes
        && bytes < largest
    {
        anyhow::bail!(
            "--max-bytes {bytes} is below the largest message a tenant stream takes ({largest} \
             bytes, INGRESS's max_msg_size): such a message could never be accepted; set at \
             least {largest}"
        );
    }
    let mut record = store.get(&key).await?.unwrap_or_else(TenantRecord::enabled);
    record.quota_bytes = args.max_bytes.or(record.quota_bytes);
    record.quota_msgs = args.max_msgs.or(record.quota_msgs);
    record.name = if args.no_name {
        None
    } else {
        args.name.clone().or(record.name)
    };
    record.unmatched = args.unmatched.unwrap_or(record.unmatched);
    if args.no_destination_rate {
        record.destination_rate_limit = None;
    } else if let Some(rate_per_sec) = args.destination_rate {
        let limit = RateLimit {
            rate_per_sec,
            burst: args.destination_burst.unwrap_or(1),
        };
        limit.validate().context("--destination-rate")?;
        record.destination_rate_limit = Some(limit);
    }
    let report = provision_tenant(js, topology, &args.tenant, quota(&record), true)
        .await
        .with_context(|| format!("provisioning tenant {}'s ingress stream", args.tenant))?;
    if !out.is_json() {
        for item in &report.items {
            println!("{} {}: {:?}", item.kind, item.name, item.outcome);
        }
    }
    set_enabled_record(store, &args.tenant, record, true, out).await
}

async fn set_enabled(
    store: &Store<TenantKey, TenantRecord>,
    tenant: &TenantId,
    enabled: bool,
    out: &Output,
) -> anyhow::Result<()> {
    let key = TenantKey {
        tenant: tenant.clone(),
    };
    let record = store.get(&key).await?.unwrap_or_else(TenantRecord::enabled);
    set_enabled_record(store, tenant, record, enabled, out).await
}

async fn set_enabled_record(
    store: &Store<TenantKey, TenantRecord>,
    tenant: &TenantId,
    mut record: TenantRecord,
    enabled: bool,
    out: &Output,
) -> anyhow::Result<()> {
    let key = TenantKey {
        tenant: tenant.clone(),
    };
    record.enabled = enabled;
    store.put(&key, &record).await?;
    if out.is_json() {
        out.json(&TenantView {
            tenant,
            record: &record,
        })
    } else {
        println!("tenant {tenant} {}", status(&record));
        Ok(())
    }
}

async fn list(store: &Store<TenantKey, TenantRecord>, out: &Output) -> anyhow::Result<()> {
    let tenants = store.list(">").await?;
    if out.is_json() {
        let rows: Vec<serde_json::Value> = tenants
            .iter()
            .map(|(key, record)| match record {
                Ok(record) => serde_json::to_value(TenantView {
                    tenant: &key.tenant,
                    record,
                })
                .unwrap_or_default(),
                Err(err) => {
                    serde_json::json!({"tenant": key.tenant, "error": output::error_chain(err)})
                }
            })
            .collect();
        return out.json(&rows);
    }
    if tenants.is_empty() {
        println!("no tenants registered");
        return Ok(());
    }
    let mut table = Table::new(["TENANT", "NAME", "STATUS", "MAX PAYLOAD"]);
    for (key, record) in &tenants {
        match record {
            Ok(record) => table.painted_row(vec![
                key.tenant.to_string(),
                output::printable(record.name.as_deref().unwrap_or("-")),
                output::paint(
                    if record.enabled {
                        output::style::GOOD
                    } else {
                        output::style::WARN
                    },
                    status(record),
                ),
                max_payload(record),
            ]),
            Err(err) => table.painted_row(vec![
                key.tenant.to_string(),
                "-".into(),
                output::paint(output::style::BAD, "invalid"),
                output::printable(&output::error_chain(err)),
            ]),
        }
    }
    print!("{}", table.render());
    Ok(())
}
