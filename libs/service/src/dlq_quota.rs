//! Each tenant's share of the DLQ. The DLQ is one stream for every tenant and refuses records
//! when full (`discard = new`), so without a share one tenant's invalid traffic could fill it
//! and stop every other tenant's dead-lettering. A tenant holding its share (the DLQ's
//! `tenant_max_msgs` in `nats/topology.toml`) gets no further record written: the stage keeps
//! that message where it is and retries it (as for a DLQ write that fails), so its own
//! pipeline slows and its own quotas refuse it, while the others' dead letters still go in.
//! Entries without a tenant share one bucket of the same size.
//!
//! The counts are the DLQ's per-subject counts (`dlq.v1.<tenant>.<stage>.<platform>`), read
//! every [`POLL_EVERY`], plus what this process wrote since.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_nats::jetstream;
use switchyard_keys::TenantId;
use switchyard_runtime::retry::poll;
use switchyard_subjects::Namespace;
use tokio_util::sync::CancellationToken;

/// How often the DLQ's per-tenant counts are read.
pub const POLL_EVERY: Duration = Duration::from_secs(2);

#[derive(Debug, Default)]
struct Counts {
    /// Entries per tenant at the last reading.
    read: HashMap<Option<TenantId>, u64>,
    /// Entries this process wrote since.
    added: HashMap<Option<TenantId>, u64>,
}

/// The tenants' shares of the DLQ.
#[derive(Debug)]
pub struct DlqQuota {
    limit: u64,
    counts: Mutex<Counts>,
}

impl DlqQuota {
    /// Watches the DLQ `stream` of namespace `ns` until `shutdown`, with `limit` entries per
    /// tenant. Until the first reading only this process's writes count.
    pub fn start(
        js: jetstream::Context,
        ns: Namespace,
        stream: String,
        limit: u64,
        shutdown: CancellationToken,
    ) -> Arc<Self> {
        let quota = Arc::new(Self::new(limit));
        let task = quota.clone();
        tokio::spawn(async move { task.poll(js, ns, stream, shutdown).await });
        quota
    }

    /// [`DlqQuota::start`] for a declared share (`ResolvedTopology::dlq_tenant_quota`: the
    /// DLQ's deployed name and the share); `None` when the topology declares none.
    pub fn start_declared(
        js: &jetstream::Context,
        ns: &Namespace,
        declared: Option<(String, u64)>,
        shutdown: &CancellationToken,
    ) -> Option<Arc<Self>> {
        declared.map(|(stream, limit)| {
            Self::start(js.clone(), ns.clone(), stream, limit, shutdown.clone())
        })
    }

    fn new(limit: u64) -> Self {
        Self {
            limit,
            counts: Mutex::new(Counts::default()),
        }
    }

    /// Entries one tenant may hold.
    pub fn limit(&self) -> u64 {
        self.limit
    }

    /// Whether `tenant` holds its share now (nothing is reserved).
    pub fn holds_share(&self, tenant: Option<&TenantId>) -> bool {
        let counts = self.counts.lock().unwrap_or_else(|p| p.into_inner());
        let key = tenant.cloned();
        counts.read.get(&key).copied().unwrap_or(0) + counts.added.get(&key).copied().unwrap_or(0)
            >= self.limit
    }

    /// Takes room for one entry of `tenant`; fails with its count when it holds its share.
    pub fn reserve(&self, tenant: Option<&TenantId>) -> Result<(), u64> {
        let mut counts = self.counts.lock().unwrap_or_else(|p| p.into_inner());
        let key = tenant.cloned();
        let held = counts.read.get(&key).copied().unwrap_or(0)
            + counts.added.get(&key).copied().unwrap_or(0);
        if held >= self.limit {
            return Err(held);
        }
        *counts.added.entry(key).or_default() += 1;
        Ok(())
    }

    /// Records one reading of the entries per tenant (it includes what this process wrote).
    pub fn record(&self, read: HashMap<Option<TenantId>, u64>) {
        let mut counts = self.counts.lock().unwrap_or_else(|p| p.into_inner());
        counts.read = read;
        counts.added.clear();
    }

    async fn poll(
        &self,
        js: jetstream::Context,
        ns: Namespace,
        stream: String,
        shutdown: CancellationToken,
    ) {
        let what = format!("reading the per-tenant counts of {stream}");
        poll(
            POLL_EVERY,
            &shutdown,
            &what,
            || read(&js, &ns, &stream),
            |counts| self.record(counts),
        )
        .await;
    }
}

/// Entries per tenant in the DLQ now ([`switchyard_topology::dlq_entries_by_tenant`]); the
/// error as text (it is only logged).
async fn read(
    js: &jetstream::Context,
    ns: &Namespace,
    stream: &str,
) -> Result<HashMap<Option<TenantId>, u64>, String> {
    switchyard_topology::dlq_entries_by_tenant(js, ns, stream)
        .await
        .map(|counts| counts.into_iter().collect())
        .map_err(|e| e.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_tenant_holding_its_share_is_refused_and_the_others_are_not() {
        let quota = DlqQuota::new(3);
        let acme = TenantId::new("acme").unwrap();
        let globex = TenantId::new("globex").unwrap();
        quota.record([(Some(acme.clone()), 2)].into());
        quota.reserve(Some(&acme)).unwrap();
        assert_eq!(quota.reserve(Some(&acme)), Err(3));
        quota.reserve(Some(&globex)).unwrap();
        quota.reserve(None).unwrap();
        quota.record([(Some(acme.clone()), 1)].into());
        quota.reserve(Some(&acme)).unwrap();
    }
}
