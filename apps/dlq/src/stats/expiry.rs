//! Entries about to age out. The DLQ keeps an entry `max_age` (14 days) and then drops it: the
//! stream's retention is the one expiry policy, for every tenant. So that none goes unnoticed,
//! the counting instance (the one holding the stats lease) looks every `alerts.expiry_check_secs`
//! for entries stored more than `max_age − alerts.expiring_within_secs` ago, counts them per
//! tenant (gauge `switchyard_dlq_expiring_entries{tenant}`), and publishes one
//! [`ExpiringAlert`] per tenant with any on `alerts.v1.<tenant>.dlq-expiring` (at most once per
//! `alerts.cooldown_secs`), so an operator can replay or export them first.

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

/// Per tenant (`None`: entries without one): how many entries were stored before `cutoff`, and
/// the oldest one's storage time. Reads the DLQ from its start and stops at the first entry
/// stored at or after `cutoff` (nothing is removed).
pub async fn stored_before(
    reader: &DlqReader,
    cutoff: OffsetDateTime,
) -> Result<BTreeMap<Option<TenantId>, (u64, OffsetDateTime)>, ReadError> {
    let mut read = reader.catch_up(
        reader.namespace().dlq_filter(&DlqFilter::default()),
        DeliverPolicy::All,
    );
    let mut found: BTreeMap<Option<TenantId>, (u64, OffsetDateTime)> = BTreeMap::new();
    while let Some((_, delivered)) = read.next().await? {
        if delivered.stored_at >= cutoff {
            break;
        }
        let tenant = delivered.entry.ok().and_then(|e| e.record.tenant);
        let slot = found.entry(tenant).or_insert((0, delivered.stored_at));
        slot.0 += 1;
    }
    Ok(found)
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
        max_age: Duration,
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
                oldest_expires_at: *oldest + max_age,
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
        let alerts = cooldowns.due(&found, max_age, within, cooldown, now);
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
                    max_age,
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
                    max_age,
                    within,
                    cooldown,
                    now + Duration::minutes(6)
                )
                .len(),
            1
        );
    }
}
