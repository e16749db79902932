//! Entries about to age out. The DLQ keeps an entry `max_age` (14 days) and then drops it; a
//! tenant may have a shorter retention of its own (`[retention] tenants`), applied here: the
//! counting instance (the one holding the stats lease) deletes that tenant's older entries
//! ([`remove_older`], counted). So that no expiry goes unnoticed, it also looks every
//! `alerts.expiry_check_secs` for entries due within `alerts.expiring_within_secs` of their
//! tenant's retention, counts them per tenant (gauge `switchyard_dlq_expiring_entries{tenant}`),
//! and publishes one [`ExpiringAlert`] per tenant with any on `alerts.v1.<tenant>.dlq-expiring`
//! (at most once per `alerts.cooldown_secs`), so an operator can replay or export them first.

use std::collections::{BTreeMap, HashMap};

use async_nats::jetstream::consumer::DeliverPolicy;
use serde::Serialize;
use switchyard_dlq_ops::{DlqReader, ReadError};
use switchyard_keys::TenantId;
use switchyard_subjects::DlqFilter;
use time::{Duration, OffsetDateTime};

/// The event published on `alerts.v1.<tenant>.dlq-expiring`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ExpiringAlert {
    /// Always `dlq-expiring`.
    pub kind: &'static str,
    /// The tenant.
    pub tenant: TenantId,
    /// Its entries that age out within `within_secs`.
    pub count: u64,
    /// The window looked ahead, in seconds (`alerts.expiring_within_secs`).
    pub within_secs: u64,
    /// When the oldest of them was stored.
    #[serde(with = "time::serde::rfc3339")]
    pub oldest_stored_at: OffsetDateTime,
    /// When it ages out (stored + the DLQ's `max_age`).
    #[serde(with = "time::serde::rfc3339")]
    pub oldest_expires_at: OffsetDateTime,
}

/// Per tenant (`None`: entries without one): how many entries were stored before its cut-off
/// (`cutoff_for`), and the oldest one's storage time. Reads the DLQ from its start and stops at
/// the first entry stored at or after `stop`, the latest cut-off (nothing is removed).
pub async fn stored_before(
    reader: &DlqReader,
    cutoff_for: impl Fn(Option<&TenantId>) -> OffsetDateTime,
    stop: OffsetDateTime,
) -> Result<BTreeMap<Option<TenantId>, (u64, OffsetDateTime)>, ReadError> {
    let mut read = reader.catch_up(
        reader.namespace().dlq_filter(&DlqFilter::default()),
        DeliverPolicy::All,
    );
    let mut found: BTreeMap<Option<TenantId>, (u64, OffsetDateTime)> = BTreeMap::new();
    while let Some((_, delivered)) = read.next().await? {
        if delivered.stored_at >= stop {
            break;
        }
        let tenant = delivered.entry.ok().and_then(|e| e.record.tenant);
        if delivered.stored_at >= cutoff_for(tenant.as_ref()) {
            continue;
        }
        let slot = found.entry(tenant).or_insert((0, delivered.stored_at));
        slot.0 += 1;
    }
    Ok(found)
}

/// Removes `tenant`'s entries stored before `cutoff` (its retention); returns how many. Reads
/// the tenant's entries from the oldest and deletes each one by sequence (the dlq user's one
/// removal right, `STREAM.MSG.DELETE`; no service may purge).
pub async fn remove_older(
    reader: &DlqReader,
    tenant: &TenantId,
    cutoff: OffsetDateTime,
) -> anyhow::Result<u64> {
    let filter = reader.namespace().dlq_filter(&DlqFilter {
        tenant: Some(tenant.clone()),
        ..DlqFilter::default()
    });
    let mut read = reader.catch_up(filter, DeliverPolicy::All);
    let mut removed = 0;
    while let Some((_, delivered)) = read.next().await? {
        if delivered.stored_at >= cutoff {
            break;
        }
        reader.stream().delete_message(delivered.seq).await?;
        removed += 1;
    }
    Ok(removed)
}

/// When each tenant was last alerted, so alerts repeat at most once per cooldown.
#[derive(Debug, Default)]
pub struct Cooldowns {
    last: HashMap<TenantId, OffsetDateTime>,
}

impl Cooldowns {
    /// The alerts due now for `found` (see [`stored_before`]): one per tenant with entries,
    /// unless it was alerted less than `cooldown` ago.
    pub fn due(
        &mut self,
        found: &BTreeMap<Option<TenantId>, (u64, OffsetDateTime)>,
        retention_of: impl Fn(&TenantId) -> Duration,
        within: Duration,
        cooldown: Duration,
        now: OffsetDateTime,
    ) -> Vec<ExpiringAlert> {
        let mut alerts = Vec::new();
        for (tenant, (count, oldest)) in found {
            let Some(tenant) = tenant else { continue };
            if self.last.get(tenant).is_some_and(|at| now - *at < cooldown) {
                continue;
            }
            self.last.insert(tenant.clone(), now);
            alerts.push(ExpiringAlert {
                kind: "dlq-expiring",
                tenant: tenant.clone(),
                count: *count,
                within_secs: within.whole_seconds().unsigned_abs(),
                oldest_stored_at: *oldest,
                oldest_expires_at: *oldest + retention_of(tenant),
            });
        }
        alerts
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_alert_per_tenant_with_entries_then_none_within_the_cooldown() {
        let now = OffsetDateTime::from_unix_timestamp(1_800_000_000).unwrap();
        let acme = TenantId::new("acme").unwrap();
        let found = BTreeMap::from([
            (Some(acme.clone()), (3, now - Duration::days(13))),
            (None, (1, now - Duration::days(13))),
        ]);
        let mut cooldowns = Cooldowns::default();
        let (max_age, within, cooldown) =
            (Duration::days(14), Duration::days(1), Duration::minutes(5));
        let alerts = cooldowns.due(&found, |_| max_age, within, cooldown, now);
        assert_eq!(
            alerts.len(),
            1,
            "entries without a tenant have no alert subject"
        );
        assert_eq!(alerts[0].count, 3);
        assert_eq!(alerts[0].within_secs, 86_400);
        assert_eq!(alerts[0].oldest_expires_at, now + Duration::days(1));
        assert!(
            cooldowns
                .due(
                    &found,
                    |_| max_age,
                    within,
                    cooldown,
                    now + Duration::minutes(1)
                )
                .is_empty()
        );
        assert_eq!(
            cooldowns
                .due(
                    &found,
                    |_| max_age,
                    within,
                    cooldown,
                    now + Duration::minutes(6)
                )
                .len(),
            1
        );
    }
}
