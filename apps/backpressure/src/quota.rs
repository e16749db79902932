//! The quota check: each tenant's own ingress stream (`INGRESS_<tenant>`) compared with its
//! quota, every `quota_check_secs`, and a stream near full reported once as the operational
//! event `quota_near_full` — before its producers are refused (a full quota refuses them:
//! NATS producers get a JetStream error, HTTP producers `429`).
//!
//! One stream listing per check covers every tenant (`$JS.API.STREAM.LIST`, 256 streams a
//! page). A stream's fill is the fuller of bytes and messages, in % of the limits set
//! (`switchyard_backpressure_quota_fill_pct{tenant}`). Crossing `quota_near_full_pct` sets the
//! tenant's `<tenant>.quota` record ([`QuotaRecord`]) in the `rate-limits` bucket by
//! compare-and-set: the replica whose write sets it reports the event, so several replicas
//! report each crossing once. Falling 10 points below clears it (no event), and the next
//! crossing is reported again.

use std::collections::HashMap;
use std::time::Duration;

use async_nats::jetstream::{self, stream};
use futures::TryStreamExt;
use switchyard_keys::{RateKey, RateRecord, RateScope, TenantId};
use switchyard_registry::{Changed, QuotaRecord, Store, StoreError};
use switchyard_subjects::EventKind;
use switchyard_topology::StreamName;
use tokio_util::sync::CancellationToken;

use crate::shared::Shared;

/// How far below `quota_near_full_pct` a stream must fall before a new crossing is reported,
/// in percentage points.
pub const HYSTERESIS_PCT: f64 = 10.0;

/// The fill of a stream: the fuller of bytes and messages, in % of the limits that are set
/// (0 when none is; a limit of 0 or below is no limit).
pub fn fill_pct(state: &stream::State, config: &stream::Config) -> f64 {
    fill_of(
        (state.bytes, config.max_bytes),
        (state.messages, config.max_messages),
    )
}

/// [`fill_pct`] of (used, limit) bytes and messages.
fn fill_of(bytes: (u64, i64), messages: (u64, i64)) -> f64 {
    let share = |(used, max): (u64, i64)| (max > 0).then(|| used as f64 * 100.0 / max as f64);
    share(bytes)
        .into_iter()
        .chain(share(messages))
        .fold(0.0, f64::max)
}

/// Checks every `quota_check_secs` until `shutdown` (not at all when it is 0).
pub async fn run(shared: &Shared, store: Store<RateKey, QuotaRecord>, shutdown: CancellationToken) {
    let every = shared.settings.quota_check_secs;
    if every == 0 {
        return;
    }
    // What this replica last knew of each tenant's record (saves a read per tenant per check).
    let mut near_full: HashMap<TenantId, bool> = HashMap::new();
    // Which shared streams and buckets this replica reported near full.
    let mut storage_near_full: HashMap<String, bool> = HashMap::new();
    loop {
        match check(shared, &store, &mut near_full, &mut storage_near_full).await {
            Ok(()) => {
                shared.own.quota_checks.inc();
            }
            Err(error) => {
                tracing::warn!(%error, "checking the tenants' quotas failed; tried again");
            }
        }
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = tokio::time::sleep(Duration::from_secs(every)) => {}
        }
    }
}

/// One check of every tenant's ingress stream.
async fn check(
    shared: &Shared,
    store: &Store<RateKey, QuotaRecord>,
    near_full: &mut HashMap<TenantId, bool>,
    storage_near_full: &mut HashMap<String, bool>,
) -> anyhow::Result<()> {
    let high = shared.settings.quota_near_full_pct;
    let low = high - HYSTERESIS_PCT;
    let topology = &shared.topology;
    let shared_streams: Vec<String> = topology
        .streams
        .iter()
        .map(|s| s.config.name.clone())
        .chain(
            topology
                .buckets
                .iter()
                .map(|b| switchyard_topology::bucket_stream(&b.config.bucket)),
        )
        .collect();
    let mut streams = shared.js.streams();
    while let Some(info) = streams.try_next().await? {
        if shared_streams.contains(&info.config.name) {
            storage(shared, &info, high, low, storage_near_full);
            continue;
        }
        let Some((StreamName::Ingress, tenant)) =
            shared.topology.tenant_of_stream(&info.config.name)
        else {
            continue;
        };
        let fill = fill_pct(&info.state, &info.config);
        shared.own.quota_fill(tenant.as_str(), fill);
        let known = near_full.get(&tenant).copied();
        let wanted = if fill >= high {
            true
        } else if fill < low {
            false
        } else {
            // Between the bounds: whatever it was.
            continue;
        };
        if known == Some(wanted) {
            continue;
        }
        match latch(store, &tenant, wanted, fill).await {
            Ok(Latched::Reported) => {
                tracing::warn!(%tenant, fill_pct = fill, "tenant's ingress stream near its quota");
                shared.events.emit(
                    EventKind::QuotaNearFull,
                    Some(&tenant),
                    None,
                    &detail(
                        &info,
                        fill,
                        "its quota",
                        "its producers are refused once it is full",
                    ),
                );
                near_full.insert(tenant, true);
            }
            Ok(Latched::Already) => {
                near_full.insert(tenant, wanted);
            }
            Err(error) => {
                tracing::warn!(%error, %tenant, "writing the quota record failed; tried again");
            }
        }
    }
    Ok(())
}

/// A shared stream or bucket crossing `high` is reported once by this replica (the event
/// `storage_near_full`, of the deployment: no tenant); falling below `low` re-arms it. Each
/// backpressure replica reports a crossing it sees (a report, not a command: several replicas
/// report it several times).
fn storage(
    shared: &Shared,
    info: &jetstream::stream::Info,
    high: f64,
    low: f64,
    reported: &mut HashMap<String, bool>,
) {
    let fill = fill_pct(&info.state, &info.config);
    let name = &info.config.name;
    let was = reported.get(name).copied().unwrap_or(false);
    if fill >= high && !was {
        tracing::warn!(stream = %name, fill_pct = fill, "shared stream or bucket near its limits");
        // A shard of a sharded stream (`BACKPRESSURE_07`) holds only its shard's tenants.
        let whose = if shared.stream_names.contains(name) {
            "writes to it are refused once it is full, for every tenant of its shard"
        } else {
            "writes to it are refused once it is full, for every tenant"
        };
        let detail = detail(info, fill, "its limits", whose);
        shared
            .events
            .emit(EventKind::StorageNearFull, None, Some(name), &detail);
        reported.insert(name.clone(), true);
    } else if fill < low && was {
        reported.insert(name.clone(), false);
    }
}

/// What [`latch`] did.
enum Latched {
    /// It set `near_full` (this replica reports the crossing).
    Reported,
    /// The record says `wanted` already (another replica wrote it), or it was cleared.
    Already,
}

/// Sets the tenant's record to `wanted` by compare-and-set, unless it says so already.
async fn latch(
    store: &Store<RateKey, QuotaRecord>,
    tenant: &TenantId,
    wanted: bool,
    fill: f64,
) -> Result<Latched, StoreError> {
    let key = RateKey {
        scope: RateScope::Tenant(tenant.clone()),
        record: RateRecord::Quota,
    };
    let record = QuotaRecord {
        near_full: wanted,
        fill_pct: fill,
        at: time::OffsetDateTime::now_utc(),
    };
    let changed = store
        .change(&key, 3, |old| {
            Ok::<_, StoreError>(match old {
                Some(old) if old.near_full == wanted => None,
                // Absent means not near full: nothing to clear.
                None if !wanted => None,
                _ => Some(record.clone()),
            })
        })
        .await?;
    Ok(match changed {
        Changed::Stored(..) if wanted => Latched::Reported,
        // Cleared, said already, or other replicas kept writing (one of them reports).
        Changed::Stored(..) | Changed::Unchanged(_) | Changed::Conflicts => Latched::Already,
    })
}

/// `INGRESS_acme at 83 % of its quota (53 MiB of 64 MiB, 1200 of 100000 messages); its
/// producers are refused once it is full`: `limit` names the limits, `then` what follows.
fn detail(info: &jetstream::stream::Info, fill: f64, limit: &str, then: &str) -> String {
    let mib = |b: f64| b / (1024.0 * 1024.0);
    let bytes = if info.config.max_bytes > 0 {
        format!(
            "{:.1} MiB of {:.1} MiB",
            mib(info.state.bytes as f64),
            mib(info.config.max_bytes as f64)
        )
    } else {
        format!("{:.1} MiB", mib(info.state.bytes as f64))
    };
    let messages = if info.config.max_messages > 0 {
        format!(
            "{} of {} messages",
            info.state.messages, info.config.max_messages
        )
    } else {
        format!("{} messages", info.state.messages)
    };
    format!(
        "{} at {fill:.0} % of {limit} ({bytes}, {messages}); {then}",
        info.config.name
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fill_is_the_fuller_of_bytes_and_messages_of_the_limits_set() {
        assert_eq!(fill_of((50, 100), (10, 1000)), 50.0);
        assert_eq!(fill_of((50, 100), (900, 1000)), 90.0);
        assert_eq!(fill_of((50, -1), (900, -1)), 0.0);
        assert_eq!(fill_of((50, -1), (900, 1000)), 90.0);
        assert_eq!(fill_of((50, 0), (900, 0)), 0.0);
    }
}
