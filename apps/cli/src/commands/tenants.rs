//! `switchyard tenants enable|disable|get|ls`: the tenant registry (`tenants` bucket), which
//! ingress consults to accept or dead-letter a tenant's messages, and each tenant's own
//! ingress stream (`INGRESS_<tenant>`, with its quota), which `enable` provisions.

use anstream::{print, println};
use std::process::ExitCode;

use async_nats::jetstream;
use clap::Subcommand;
use clap::builder::{PossibleValuesParser, TypedValueParser};
use serde::Serialize;
use switchyard_keys::{TenantId, TenantKey};
use switchyard_registry::{RateLimit, Store, StoreError, TenantRecord, Unmatched};
use switchyard_subjects::EventKind;
use switchyard_topology::{
    BucketName, ProvisionReport, ResolvedTopology, StreamName, TenantQuota, TopologyError,
    provision_tenant,
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
        TenantsCommand::Disable(t) => {
            set_enabled(&store, &t.tenant, false, out).await?;
            report_disabled(js, topology, &t.tenant).await;
        }
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

/// What `tenants enable` (and the management API's `POST /v1/tenants/{tenant}/enable`)
/// changes in a tenant's record; `None` keeps what the record has (the defaults for a new
/// tenant).
#[derive(Debug, Clone, Default)]
pub struct TenantChange {
    /// Ingress quota in bytes (at least the largest message a tenant stream takes).
    pub max_bytes: Option<i64>,
    /// Ingress quota in messages (at least 1).
    pub max_msgs: Option<i64>,
    /// The display name; `Some(None)` removes it.
    pub name: Option<Option<String>>,
    /// What becomes of a message none of its destinations takes.
    pub unmatched: Option<Unmatched>,
    /// The default rate limit of its destinations; `Some(None)` removes it.
    pub destination_rate: Option<Option<RateLimit>>,
}

/// Why a tenant could not be enabled.
#[derive(Debug, thiserror::Error)]
pub enum TenantError {
    /// A value is out of range: `field` (`max_bytes`, `name`, …) and why.
    #[error("{field} {reason}")]
    Invalid {
        /// The setting.
        field: &'static str,
        /// What is wrong with it, and the fix.
        reason: String,
    },
    /// Its record could not be read or written.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// Its ingress stream could not be provisioned (the server refused, or is unreachable).
    #[error("provisioning tenant {tenant}'s ingress stream")]
    Provision {
        /// The tenant.
        tenant: TenantId,
        /// The server's answer.
        #[source]
        source: TopologyError,
    },
}

/// Registers `tenant` or re-enables it with `change` applied: provisions its own streams
/// first (with its quota; a changed quota is applied in place), so ingress never sees a tenant
/// without its stream, then writes its record, enabled. Returns the record and what
/// provisioning did.
///
/// Errors: [`TenantError::Invalid`] before anything is changed; the record's read or write; the
/// provisioning.
pub async fn enable_tenant(
    js: &jetstream::Context,
    topology: &ResolvedTopology,
    store: &Store<TenantKey, TenantRecord>,
    tenant: &TenantId,
    change: &TenantChange,
) -> Result<(TenantRecord, ProvisionReport), TenantError> {
    let invalid = |field, reason: String| TenantError::Invalid { field, reason };
    // A quota below the largest message the stream takes would refuse such a message for
    // ever ("quota full, retry"), however empty the stream.
    let largest = topology
        .tenant_streams
        .iter()
        .find(|s| s.base == StreamName::Ingress.base())
        .map_or(0, |s| i64::from(s.config.max_message_size));
    // Larger quotas are the server's to refuse (it reserves `max_bytes` up front).
    if let Some(bytes) = change.max_bytes
        && bytes < largest.max(1)
    {
        return Err(invalid(
            "max_bytes",
            format!(
                "{bytes} is below the largest message a tenant stream takes ({largest} bytes, \
                 INGRESS's max_msg_size): such a message could never be accepted; set at least \
                 {largest}"
            ),
        ));
    }
    if let Some(msgs) = change.max_msgs
        && msgs < 1
    {
        return Err(invalid(
            "max_msgs",
            format!("{msgs} is below 1: the stream would take nothing"),
        ));
    }
    if let Some(Some(name)) = &change.name {
        switchyard_registry::tenant::check_name(name)
            .map_err(|err| invalid("name", err.to_string()))?;
    }
    if let Some(Some(limit)) = &change.destination_rate {
        limit
            .validate()
            .map_err(|err| invalid("destination_rate", err.to_string()))?;
    }
    let key = TenantKey {
        tenant: tenant.clone(),
    };
    let mut record = store.get(&key).await?.unwrap_or_else(TenantRecord::enabled);
    record.quota_bytes = change.max_bytes.or(record.quota_bytes);
    record.quota_msgs = change.max_msgs.or(record.quota_msgs);
    if let Some(name) = &change.name {
        record.name = name.clone();
    }
    record.unmatched = change.unmatched.unwrap_or(record.unmatched);
    if let Some(limit) = change.destination_rate {
        record.destination_rate_limit = limit;
    }
    let report = provision_tenant(js, topology, tenant, quota(&record), true)
        .await
        .map_err(|source| TenantError::Provision {
            tenant: tenant.clone(),
            source,
        })?;
    record.enabled = true;
    store.put(&key, &record).await?;
    Ok((record, report))
}

/// Disables (`enabled` false) or re-enables a registered tenant, keeping its other settings;
/// `None` when it is not registered.
pub async fn set_tenant_enabled(
    store: &Store<TenantKey, TenantRecord>,
    tenant: &TenantId,
    enabled: bool,
) -> Result<Option<TenantRecord>, StoreError> {
    let key = TenantKey {
        tenant: tenant.clone(),
    };
    let Some(mut record) = store.get(&key).await? else {
        return Ok(None);
    };
    record.enabled = enabled;
    store.put(&key, &record).await?;
    Ok(Some(record))
}

async fn enable(
    js: &jetstream::Context,
    topology: &ResolvedTopology,
    store: &Store<TenantKey, TenantRecord>,
    args: &EnableArgs,
    out: &Output,
) -> anyhow::Result<()> {
    let change = TenantChange {
        max_bytes: args.max_bytes,
        max_msgs: args.max_msgs,
        name: if args.no_name {
            Some(None)
        } else {
            args.name.clone().map(Some)
        },
        unmatched: args.unmatched,
        destination_rate: if args.no_destination_rate {
            Some(None)
        } else {
            args.destination_rate.map(|rate_per_sec| {
                Some(RateLimit {
                    rate_per_sec,
                    burst: args.destination_burst.unwrap_or(1),
                })
            })
        },
    };
    let (record, report) = match enable_tenant(js, topology, store, &args.tenant, &change).await {
        Ok(done) => done,
        // Named as the flag the operator typed.
        Err(TenantError::Invalid { field, reason }) => {
            anyhow::bail!("--{} {reason}", field.replace('_', "-"))
        }
        Err(other) => return Err(other.into()),
    };
    if !out.is_json() {
        for item in &report.items {
            println!("{} {}: {:?}", item.kind, item.name, item.outcome);
        }
    }
    show_enabled(&args.tenant, &record, out)
}

/// Prints a tenant's record after a change: `tenant acme enabled`, or its JSON.
fn show_enabled(tenant: &TenantId, record: &TenantRecord, out: &Output) -> anyhow::Result<()> {
    if out.is_json() {
        out.json(&TenantView { tenant, record })
    } else {
        println!("tenant {tenant} {}", status(record));
        Ok(())
    }
}

/// What a `tenant_disabled` event says.
pub(crate) const DISABLED_DETAIL: &str =
    "disabled by an operator: its producers and keys are refused, its portal sessions ended";

/// Reports that `tenant` was disabled (the event API replicas follow to end its portal
/// sessions for good); a failure is a warning: the tenant is disabled either way.
async fn report_disabled(js: &jetstream::Context, topology: &ResolvedTopology, tenant: &TenantId) {
    let events =
        switchyard_service::events::EventLog::new(js.clone(), topology.namespace.clone(), "cli");
    if let Err(error) = events
        .emit_and_wait(
            EventKind::TenantDisabled,
            Some(tenant),
            None,
            DISABLED_DETAIL,
        )
        .await
    {
        eprintln!(
            "warning: the tenant_disabled event was not stored ({error}): API replicas end its \
             portal sessions while it stays disabled, but would take them back if it were \
             enabled again"
        );
    }
}

async fn set_enabled(
    store: &Store<TenantKey, TenantRecord>,
    tenant: &TenantId,
    enabled: bool,
    out: &Output,
) -> anyhow::Result<()> {
    // An unregistered tenant is registered, disabled: its messages are refused from now on.
    let record = match set_tenant_enabled(store, tenant, enabled).await? {
        Some(record) => record,
        None => {
            let mut record = TenantRecord::enabled();
            record.enabled = enabled;
            store
                .put(
                    &TenantKey {
                        tenant: tenant.clone(),
                    },
                    &record,
                )
                .await?;
            record
        }
    };
    show_enabled(tenant, &record, out)
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
