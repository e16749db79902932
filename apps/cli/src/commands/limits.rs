//! `switchyard limits set|get|ls`: per-tenant rate limits in the `rate-limits` bucket. Every
//! backpressure replica watches them, so a change applies within a second, no restart. The
//! management API reads and writes limits through the same functions ([`in_force`], [`set`],
//! [`list`]).

use anstream::{print, println};
use std::process::ExitCode;

use anyhow::Context;
use async_nats::jetstream;
use clap::Subcommand;
use serde::Serialize;
use switchyard_keys::{KvKey, RateKey, RateRecord, RateScope, TenantId};
use switchyard_registry::{
    LimitRecord, LimitSource, PressureRecord, Store, StoreError, limit_lookup,
};
use switchyard_topology::{BucketName, ResolvedTopology};

use crate::output::{Output, Table};
use crate::resources;

/// Arguments of `limits`.
#[derive(Debug, clap::Args)]
pub struct LimitsArgs {
    /// The limits command.
    #[command(subcommand)]
    pub command: LimitsCommand,
}

/// The `limits` commands.
#[derive(Debug, Subcommand)]
pub enum LimitsCommand {
    /// Set a tenant's limit (or `_default`, for tenants without their own).
    Set(SetArgs),
    /// Show the limit in force for a tenant, and its admission state.
    Get(ScopeArg),
    /// List every limit with each tenant's admission state.
    Ls,
}

/// A tenant id or `_default`.
#[derive(Debug, clap::Args)]
pub struct ScopeArg {
    /// Tenant id, or `_default`.
    pub tenant: String,
}

/// Arguments of `limits set`.
#[derive(Debug, clap::Args)]
pub struct SetArgs {
    /// Tenant id, or `_default`.
    pub tenant: String,
    /// Messages per second, across every replica.
    #[arg(long)]
    pub rate: f64,
    /// Messages that may go at once after a quiet period (default: one second's worth).
    #[arg(long)]
    pub burst: Option<u32>,
    /// Backlog that closes the tenant's admission at the edge.
    #[arg(long)]
    pub backlog_high: Option<u64>,
    /// Backlog below which admission reopens (default: half of --backlog-high).
    #[arg(long)]
    pub backlog_low: Option<u64>,
    /// Bytes of the tenant's messages in its BACKPRESSURE shard that close its admission; it
    /// reopens under half (default: the backpressure service's default_backlog_high_bytes).
    /// At least one message of the largest a shard stores; a mark at or above ingress's
    /// next_stage_credit_bytes (16 MiB) is not reached (the credit pauses the tenant first).
    #[arg(long)]
    pub backlog_high_bytes: Option<u64>,
}

fn scope(raw: &str) -> anyhow::Result<RateScope> {
    if raw == "_default" {
        Ok(RateScope::Default)
    } else {
        Ok(RateScope::Tenant(
            raw.parse::<TenantId>().context("tenant")?,
        ))
    }
}

/// `_default`, or the tenant id.
pub fn scope_name(scope: &RateScope) -> String {
    match scope {
        RateScope::Default => "_default".to_owned(),
        RateScope::Tenant(t) => t.to_string(),
    }
}

/// A limit as `limits get|ls|set --json` (and the management API) show it:
/// `{"tenant", "rate_per_sec", "burst", "backlog_high"?, "backlog_low"?,
/// "backlog_high_bytes"?, "admission"}`.
#[derive(Debug, Serialize)]
pub struct LimitView {
    /// The tenant, or `_default`.
    pub tenant: String,
    /// The limit.
    #[serde(flatten)]
    pub limit: LimitRecord,
    /// The tenant's admission state, when the backpressure service wrote one.
    pub admission: Option<PressureRecord>,
}

/// The two record kinds of the `rate-limits` bucket.
pub struct LimitStores {
    /// `<tenant>.limit`, `_default.limit`.
    pub limits: Store<RateKey, LimitRecord>,
    /// `<tenant>.pressure`.
    pub pressure: Store<RateKey, PressureRecord>,
}

impl LimitStores {
    /// Both over the `rate-limits` bucket.
    pub fn new(bucket: async_nats::jetstream::kv::Store) -> Self {
        Self {
            limits: Store::new(bucket.clone()),
            pressure: Store::new(bucket),
        }
    }

    /// The admission state of `scope` (none for `_default`).
    ///
    /// Errors: the read failed.
    async fn admission(&self, scope: &RateScope) -> Result<Option<PressureRecord>, StoreError> {
        match scope {
            RateScope::Tenant(_) => {
                self.pressure
                    .get(&RateKey {
                        scope: scope.clone(),
                        record: RateRecord::Pressure,
                    })
                    .await
            }
            RateScope::Default => Ok(None),
        }
    }
}

/// The record `limits set` writes: `burst` defaults to one second's worth of `rate`.
///
/// Errors: the values are not a valid limit (the reason), or `backlog_high_bytes` is below
/// what the largest message a `BACKPRESSURE` shard of `topology` stores counts (one message
/// would close the tenant's admission: the backpressure service refuses the same for its
/// default).
pub fn limit_record(
    topology: &ResolvedTopology,
    rate: f64,
    burst: Option<u32>,
    backlog_high: Option<u64>,
    backlog_low: Option<u64>,
    backlog_high_bytes: Option<u64>,
) -> Result<LimitRecord, String> {
    let record = LimitRecord {
        rate_per_sec: rate,
        burst: burst.unwrap_or_else(|| rate.ceil().max(1.0) as u32),
        backlog_high,
        backlog_low,
        backlog_high_bytes,
    };
    record.validate()?;
    let largest = topology.largest_shard_message_counted();
    if let Some(bytes) = backlog_high_bytes
        && bytes < largest
    {
        return Err(format!(
            "backlog_high_bytes ({bytes}) is below what the largest message a BACKPRESSURE \
             shard stores counts ({largest} bytes): one message would close admission; set at least that"
        ));
    }
    Ok(record)
}

/// Writes `scope`'s limit (every backpressure replica applies it within a second); returns
/// the bucket's revision.
///
/// Errors: the write failed.
pub async fn set(
    stores: &LimitStores,
    scope: &RateScope,
    record: &LimitRecord,
) -> Result<u64, StoreError> {
    let key = RateKey {
        scope: scope.clone(),
        record: RateRecord::Limit,
    };
    stores.limits.put(&key, record).await
}

/// A limit found by [`in_force`].
#[derive(Debug)]
pub struct Found {
    /// The limit and the admission state (`tenant` is the scope asked about).
    pub view: LimitView,
    /// Where the limit comes from: the tenant, or `_default`.
    pub from: String,
}

/// What [`in_force`] found.
#[derive(Debug)]
pub struct Lookup {
    /// The limit the backpressure service applies; `None` when neither the tenant nor
    /// `_default` holds a valid record (the service's built-in default applies).
    pub found: Option<Found>,
    /// Records looked at and ignored because they are invalid: (key, why).
    pub ignored: Vec<(String, String)>,
}

/// The limit in force for `scope`, in the service's lookup order: the tenant's own valid
/// record, then `_default`.
///
/// Errors: a read failed.
pub async fn in_force(stores: &LimitStores, scope: &RateScope) -> Result<Lookup, StoreError> {
    let lookup = match scope {
        RateScope::Tenant(tenant) => limit_lookup(tenant).to_vec(),
        RateScope::Default => vec![(
            RateKey {
                scope: RateScope::Default,
                record: RateRecord::Limit,
            },
            LimitSource::Default,
        )],
    };
    let mut ignored = Vec::new();
    for (key, source) in lookup {
        let Some(record) = stores.limits.get(&key).await? else {
            continue;
        };
        if let Err(why) = record.validate() {
            ignored.push((key.render(), why));
            continue;
        }
        let from = match source {
            LimitSource::Tenant => scope_name(scope),
            _ => "_default".to_owned(),
        };
        let view = LimitView {
            tenant: scope_name(scope),
            limit: record,
            admission: stores.admission(scope).await?,
        };
        return Ok(Lookup {
            found: Some(Found { view, from }),
            ignored,
        });
    }
    Ok(Lookup {
        found: None,
        ignored,
    })
}

/// Every limit record with each tenant's admission state (unreadable records left out).
///
/// Errors: a read failed.
pub async fn list(stores: &LimitStores) -> Result<Vec<LimitView>, StoreError> {
    let mut views = Vec::new();
    for (key, record) in stores.limits.list(RateRecord::Limit.filter()).await? {
        let Ok(limit) = record else { continue };
        views.push(LimitView {
            tenant: scope_name(&key.scope),
            admission: stores.admission(&key.scope).await?,
            limit,
        });
    }
    Ok(views)
}

/// The bytes mark, `close/reopen` (it reopens under half), or the service's default.
fn bytes_thresholds(limit: &LimitRecord) -> String {
    match limit.backlog_high_bytes {
        Some(high) => format!("{high}/{}", high / 2),
        None => "service default".to_owned(),
    }
}

fn thresholds(limit: &LimitRecord) -> String {
    match (limit.backlog_high, limit.reopen_below()) {
        (Some(high), Some(low)) => format!("{high}/{low}"),
        _ => "service default".to_owned(),
    }
}

/// Runs a `limits` command.
pub async fn run(
    js: &jetstream::Context,
    topology: &ResolvedTopology,
    args: &LimitsArgs,
    out: &Output,
) -> anyhow::Result<ExitCode> {
    let stores = LimitStores::new(resources::bucket(js, topology, BucketName::RateLimits).await?);
    match &args.command {
        LimitsCommand::Set(set) => {
            let scope = scope(&set.tenant)?;
            let record = limit_record(
                topology,
                set.rate,
                set.burst,
                set.backlog_high,
                set.backlog_low,
                set.backlog_high_bytes,
            )
            .map_err(|e| anyhow::anyhow!("invalid limit: {e}"))?;
            let revision = self::set(&stores, &scope, &record).await?;
            if out.is_json() {
                out.json(&LimitView {
                    tenant: scope_name(&scope),
                    limit: record,
                    admission: None,
                })?;
            } else {
                let bytes = match record.backlog_high_bytes {
                    Some(_) => format!(", bytes {}", bytes_thresholds(&record)),
                    None => String::new(),
                };
                println!(
                    "set limit {}: {}/s, burst {}, backlog {}{bytes} (revision {revision})",
                    scope_name(&scope),
                    record.rate_per_sec,
                    record.burst,
                    thresholds(&record)
                );
            }
        }
        LimitsCommand::Get(arg) => {
            let scope = scope(&arg.tenant)?;
            let lookup = in_force(&stores, &scope).await?;
            for (key, why) in &lookup.ignored {
                eprintln!(
                    "warning: the limit at {key} is invalid and ignored by the service: {why}"
                );
            }
            let Some(Found { view, from }) = lookup.found else {
                anyhow::bail!(
                    "no limit for {} and no _default: the backpressure service's built-in default applies",
                    arg.tenant
                );
            };
            if out.is_json() {
                out.json(&view)?;
            } else {
                let limit = &view.limit;
                println!("tenant     {}", view.tenant);
                println!("limit from {from}");
                println!("rate       {}/s", limit.rate_per_sec);
                println!("burst      {}", limit.burst);
                println!("backlog    {} (close/reopen)", thresholds(limit));
                println!("bytes      {} (close/reopen)", bytes_thresholds(limit));
                if let Some(p) = &view.admission {
                    println!(
                        "admission  {:?} (backlog {} at {})",
                        p.admission, p.backlog, p.updated_at
                    );
                }
            }
        }
        LimitsCommand::Ls => {
            let views = list(&stores).await?;
            if out.is_json() {
                out.json(&views)?;
            } else if views.is_empty() {
                println!(
                    "no limits: the backpressure service's built-in default applies to every tenant"
                );
            } else {
                let mut table = Table::new([
                    "TENANT",
                    "RATE/S",
                    "BURST",
                    "BACKLOG CLOSE/REOPEN",
                    "BYTES CLOSE/REOPEN",
                    "ADMISSION",
                ]);
                for v in &views {
                    let admission = v.admission.as_ref().map_or("open".to_owned(), |p| {
                        format!("{:?}", p.admission).to_lowercase()
                    });
                    table.row([
                        v.tenant.clone(),
                        v.limit.rate_per_sec.to_string(),
                        v.limit.burst.to_string(),
                        thresholds(&v.limit),
                        bytes_thresholds(&v.limit),
                        admission,
                    ]);
                }
                print!("{}", table.render());
            }
        }
    }
    Ok(ExitCode::SUCCESS)
}
