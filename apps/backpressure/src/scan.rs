//! The scan: every `scan_interval_ms`, read each tenant's backlog (waiting here, plus waiting
//! at the next stage) and the bytes it holds in its shard (counted by the size class of each
//! subject, `switchyard_topology::held_by_tenant`), start a loop for every tenant with messages
//! waiting, and publish each tenant's admission state to KV when it changes: closed at
//! `backlog_high` or at `backlog_high_bytes` in its shard (the limit's, else the service's
//! `default_backlog_high_bytes`), open again below `backlog_low` with under half those bytes
//! (hysteresis). Every replica scans; writes happen only on a change.
//!
//! Tenant loops are supervised ([`TenantLoops`]): a loop that ends — idle, or by panicking — is
//! reaped on the next pass, and started again as soon as its tenant has messages waiting. A
//! panic is caught as a `JoinError`, logged with the tenant, counted
//! (`backpressure_tenant_loop_panics_total`) and remembered for readiness ([`LoopHealth`]).

use std::collections::{HashMap, HashSet, VecDeque};
use std::future::Future;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use switchyard_keys::{RateKey, RateRecord, RateScope, TenantId};
use switchyard_registry::{Admission, Changed, KvCache, PressureRecord, Store, StoreError};
use switchyard_subjects::EventKind;
use switchyard_topology::{Held, backlog_by_tenant, held_by_tenant};
use time::format_description::well_known::Rfc3339;
use tokio::task::{Id, JoinError, JoinSet};
use tokio_util::sync::CancellationToken;

use crate::shared::{Shared, TenantLabel};
use crate::tenant_loop;

/// How long a tenant loop's panics are remembered for readiness.
pub const CRASH_WINDOW: Duration = Duration::from_secs(300);

/// Panics of one tenant's loop within [`CRASH_WINDOW`] that make `/readyz` fail.
pub const CRASH_LOOP_PANICS: usize = 3;

/// Which tenant loops have been panicking lately: `/readyz` fails while any tenant's loop has
/// panicked [`CRASH_LOOP_PANICS`] times within [`CRASH_WINDOW`] without ending cleanly since.
#[derive(Debug, Default)]
pub struct LoopHealth {
    panics: Mutex<HashMap<TenantId, VecDeque<Instant>>>,
}

impl LoopHealth {
    /// `tenant`'s loop panicked at `at`.
    pub fn panicked(&self, tenant: &TenantId, at: Instant) {
        let mut panics = self.panics.lock().unwrap_or_else(|p| p.into_inner());
        let recent = panics.entry(tenant.clone()).or_default();
        recent.push_back(at);
        while recent.len() > CRASH_LOOP_PANICS {
            recent.pop_front();
        }
    }

    /// `tenant`'s loop ended on its own (idle or shutdown): its past panics are forgiven.
    pub fn ended_cleanly(&self, tenant: &TenantId) {
        let mut panics = self.panics.lock().unwrap_or_else(|p| p.into_inner());
        panics.remove(tenant);
    }

    /// `Err` naming the tenants whose loop keeps dying, as of `now`.
    pub fn check(&self, now: Instant) -> Result<(), String> {
        let mut panics = self.panics.lock().unwrap_or_else(|p| p.into_inner());
        panics.retain(|_, recent| {
            recent.retain(|at| now.saturating_duration_since(*at) < CRASH_WINDOW);
            !recent.is_empty()
        });
        let mut dying: Vec<String> = panics
            .iter()
            .filter(|(_, recent)| recent.len() >= CRASH_LOOP_PANICS)
            .map(|(tenant, _)| tenant.to_string())
            .collect();
        if dying.is_empty() {
            return Ok(());
        }
        dying.sort();
        Err(format!(
            "tenant loop keeps panicking ({CRASH_LOOP_PANICS} times in {} s): {}",
            CRASH_WINDOW.as_secs(),
            dying.join(", ")
        ))
    }
}

/// The running tenant loops, one task per tenant.
#[derive(Default)]
pub struct TenantLoops {
    tasks: JoinSet<()>,
    tenants: HashMap<Id, TenantId>,
    running: HashSet<TenantId>,
}

impl TenantLoops {
    /// Starts `run` as `tenant`'s loop unless one is running; whether it started.
    pub fn ensure(
        &mut self,
        tenant: &TenantId,
        run: impl Future<Output = ()> + Send + 'static,
    ) -> bool {
        if self.running.contains(tenant) {
            return false;
        }
        let id = self.tasks.spawn(run).id();
        self.tenants.insert(id, tenant.clone());
        self.running.insert(tenant.clone());
        true
    }

    /// Whether `tenant`'s loop is running.
    pub fn is_running(&self, tenant: &TenantId) -> bool {
        self.running.contains(tenant)
    }

    /// Reaps every loop that has ended, without waiting; the tenants whose loop panicked.
    pub fn reap(&mut self) -> Vec<(TenantId, JoinError)> {
        let mut panicked = Vec::new();
        while let Some(ended) = self.tasks.try_join_next_with_id() {
            panicked.extend(self.ended(ended));
        }
        panicked
    }

    /// Waits for every loop to end (after shutdown); the tenants whose loop panicked.
    pub async fn drain(&mut self) -> Vec<(TenantId, JoinError)> {
        let mut panicked = Vec::new();
        while let Some(ended) = self.tasks.join_next_with_id().await {
            panicked.extend(self.ended(ended));
        }
        panicked
    }

    fn ended(&mut self, ended: Result<(Id, ()), JoinError>) -> Option<(TenantId, JoinError)> {
        let (id, error) = match ended {
            Ok((id, ())) => (id, None),
            Err(error) => (error.id(), Some(error)),
        };
        let tenant = self.tenants.remove(&id)?;
        self.running.remove(&tenant);
        Some((tenant, error?))
    }
}

/// Logs, counts and remembers each loop that ended by panicking, and forgets the past panics
/// of each loop that ended on its own.
fn record(shared: &Shared, ended: Vec<(TenantId, JoinError)>) {
    for (tenant, error) in ended {
        tracing::error!(%tenant, %error, "tenant loop died; it restarts on the next scan with messages waiting");
        shared
            .own
            .tenant_loop_panics
            .get_or_create(&TenantLabel {
                tenant: tenant.to_string(),
            })
            .inc();
        shared.loop_health.panicked(&tenant, Instant::now());
    }
}

/// Runs the scan until `shutdown`, then waits for the tenant loops to finish.
pub async fn run(
    shared: Arc<Shared>,
    pressure: Arc<KvCache<RateKey, PressureRecord>>,
    kv: async_nats::jetstream::kv::Store,
    shutdown: CancellationToken,
) {
    let mut loops = TenantLoops::default();
    let mut admission: HashMap<TenantId, Admission> = HashMap::new();
    let interval = Duration::from_millis(shared.settings.scan_interval_ms);
    while !shutdown.is_cancelled() {
        let died = loops.reap();
        record(&shared, died);
        match scan_once(&shared, &pressure, &kv, &mut admission).await {
            Ok(waiting) => {
                for tenant in waiting {
                    let (s, t, token) = (shared.clone(), tenant.clone(), shutdown.clone());
                    loops.ensure(&tenant, async move {
                        tenant_loop::run(s.clone(), t.clone(), token).await;
                        s.loop_health.ended_cleanly(&t);
                    });
                }
            }
            Err(error) => tracing::warn!(%error, "backlog scan failed"),
        }
        shared.own.tenant_loops.set(loops.running.len() as i64);
        tokio::select! {
            _ = shutdown.cancelled() => break,
            _ = tokio::time::sleep(interval) => {}
        }
    }
    let died = loops.drain().await;
    record(&shared, died);
}

/// Holds (`true`) or releases `tenant`'s ingress stream ([`switchyard_topology::hold_tenant_ingress`]);
/// `false` when that failed (logged).
async fn hold(shared: &Shared, tenant: &TenantId, shut: bool) -> bool {
    match switchyard_topology::hold_tenant_ingress(&shared.js, &shared.topology, tenant, shut).await
    {
        Ok(changed) => {
            if changed {
                tracing::info!(%tenant, held = shut, "tenant's ingress stream");
            }
            true
        }
        Err(error) => {
            tracing::warn!(%tenant, %error, held = shut, "holding or releasing the tenant's ingress stream failed; retried");
            false
        }
    }
}

/// Writes a tenant's admission `record` by compare-and-set; `true` when the stored admission
/// was another one (or none) and this write set it: this replica changed it for everyone and
/// reports the change. A stored record that is not valid JSON is replaced.
async fn write_pressure(
    kv: &async_nats::jetstream::kv::Store,
    key: &RateKey,
    record: &PressureRecord,
) -> Result<bool, StoreError> {
    let store: Store<RateKey, PressureRecord> = Store::new(kv.clone());
    let mut changed = false;
    let written = store
        .change(key, 3, |old| {
            changed = old.map(|o| o.admission) != Some(record.admission);
            Ok::<_, StoreError>(Some(record.clone()))
        })
        .await;
    match written {
        Ok(Changed::Stored(..)) => Ok(changed),
        // Three other writers in a row: theirs stands, and they report it.
        Ok(Changed::Unchanged(_) | Changed::Conflicts) => Ok(false),
        Err(StoreError::Invalid { .. }) => {
            store.put(key, record).await?;
            Ok(true)
        }
        Err(error) => Err(error),
    }
}

/// How many of the messages `held` must leave (at their average counted size, oldest first)
/// for the rest to count fewer than `under` bytes.
fn to_drain(held: Held, under: u64) -> u64 {
    if held.bytes < under || held.messages == 0 {
        return 0;
    }
    let above = u128::from(held.bytes - under) + 1;
    let each = u128::from(held.bytes)
        .div_ceil(u128::from(held.messages))
        .max(1);
    u64::try_from(above.div_ceil(each))
        .unwrap_or(u64::MAX)
        .min(held.messages)
}

/// One scan; returns the tenants with messages waiting here.
async fn scan_once(
    shared: &Shared,
    pressure: &KvCache<RateKey, PressureRecord>,
    kv: &async_nats::jetstream::kv::Store,
    admission: &mut HashMap<TenantId, Admission>,
) -> anyhow::Result<Vec<TenantId>> {
    let here = held_by_tenant(&shared.js, &shared.ns, &shared.stream_names).await?;
    let next = backlog_by_tenant(&shared.js, &shared.ns, &shared.next_stream_name).await?;
    let mut tenants: HashSet<TenantId> = here.keys().chain(next.keys()).cloned().collect();
    tenants.extend(
        admission
            .iter()
            .filter(|(_, a)| **a == Admission::Closed)
            .map(|(t, _)| t.clone()),
    );
    for tenant in tenants {
        let held = here.get(&tenant).copied().unwrap_or_default();
        let backlog = held.messages + next.get(&tenant).copied().unwrap_or(0);
        let label = TenantLabel {
            tenant: tenant.to_string(),
        };
        shared.own.backlog.get_or_create(&label).set(backlog as i64);
        let key = RateKey {
            scope: RateScope::Tenant(tenant.clone()),
            record: RateRecord::Pressure,
        };
        let current =
            *admission
                .entry(tenant.clone())
                .or_insert_with(|| match pressure.get(&key) {
                    Some(Ok(record)) => record.admission,
                    _ => Admission::Open,
                });
        let limit = shared.limit_for(&tenant);
        let (high, low) = limit.thresholds(shared.settings.default_backlog_high);
        let bytes_high = limit.bytes_mark(shared.settings.default_backlog_high_bytes);

        // Bytes in its shard close admission too (a shard's 64 MiB is its tenants'), and it
        // reopens once they are under half the mark.
        let over_bytes = held.bytes >= bytes_high;
        let wanted = match current {
            Admission::Open if backlog >= high || over_bytes => Admission::Closed,
            Admission::Closed if backlog < low && held.bytes < bytes_high / 2 => Admission::Open,
            same => same,
        };
        shared
            .own
            .admission_closed
            .get_or_create(&label)
            .set(i64::from(wanted == Admission::Closed));
        if wanted != current || pressure.get(&key).is_none() && wanted == Admission::Closed {
            let record = PressureRecord {
                admission: wanted,
                backlog,
                updated_at: time::OffsetDateTime::now_utc()
                    .format(&Rfc3339)
                    .unwrap_or_default(),
                reopen_in_secs: (wanted == Admission::Closed).then(|| {
                    let rate = limit.rate_per_sec;
                    // Both must fall: the backlog below its low mark, the bytes below half theirs.
                    let bytes_low = held.messages.saturating_sub(to_drain(held, bytes_high / 2));
                    PressureRecord::estimate_reopen_secs(backlog, low, rate).max(
                        PressureRecord::estimate_reopen_secs(held.messages, bytes_low, rate),
                    )
                }),
            };
            let changed_here = write_pressure(kv, &key, &record).await?;
            tracing::info!(%tenant, backlog, high, low, held_bytes = held.bytes, bytes_high, admission = ?wanted, "admission changed");
            // Reported by the replica whose write changed the stored state (once per change
            // across replicas).
            if wanted != current && changed_here {
                let (kind, detail) = match wanted {
                    Admission::Closed if backlog < high => (
                        EventKind::AdmissionClosed,
                        format!(
                            "{} bytes waiting in its shard reached {bytes_high} (backlog {backlog}): producers are refused",
                            held.bytes
                        ),
                    ),
                    Admission::Closed => (
                        EventKind::AdmissionClosed,
                        format!("backlog {backlog} reached {high}: producers are refused"),
                    ),
                    Admission::Open => (
                        EventKind::AdmissionReopened,
                        format!(
                            "backlog {backlog} fell below {low} ({} bytes waiting in its shard): producers are admitted",
                            held.bytes
                        ),
                    ),
                };
                shared.events.emit(kind, Some(&tenant), None, &detail);
            }
            if wanted == Admission::Open {
                shared.lock_release().insert(tenant.clone());
            }
            admission.insert(tenant.clone(), wanted);
        }
        // While closed, the tenant's NATS producers are refused at once, not only once its
        // stream's quota is full (HTTP producers read the record): its stream is held shut,
        // checked every scan (a restart or a failed update is mended here).
        if wanted == Admission::Closed {
            hold(shared, &tenant, true).await;
        }
    }
    // Streams of tenants whose admission reopened: released, retried until it works.
    let pending: Vec<TenantId> = shared.lock_release().iter().cloned().collect();
    for tenant in pending {
        // Closed again meanwhile: the hold stays, nothing to release.
        let done = admission.get(&tenant) == Some(&Admission::Closed)
            || hold(shared, &tenant, false).await;
        if done {
            shared.lock_release().remove(&tenant);
        }
    }
    Ok(here
        .into_iter()
        .filter(|(_, held)| held.messages > 0)
        .map(|(t, _)| t)
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tenant(id: &str) -> TenantId {
        TenantId::new(id).unwrap()
    }

    #[tokio::test]
    async fn a_panicking_loop_is_reaped_and_can_be_started_again() {
        let mut loops = TenantLoops::default();
        let acme = tenant("acme");
        assert!(loops.ensure(&acme, async { panic!("boom") }));
        assert!(!loops.ensure(&acme, async {}), "one loop per tenant");
        let mut died = Vec::new();
        for _ in 0..100 {
            died.extend(loops.reap());
            if !loops.is_running(&acme) {
                break;
            }
            tokio::task::yield_now().await;
        }
        assert_eq!(died.len(), 1);
        assert_eq!(died[0].0, acme);
        assert!(died[0].1.is_panic());
        assert!(loops.ensure(&acme, async {}), "restarted on the next pass");
        assert!(loops.drain().await.is_empty(), "a clean end is no panic");
        assert!(!loops.is_running(&acme));
    }

    #[test]
    fn the_messages_to_drain_bring_the_bytes_under_the_mark() {
        let held = |messages, bytes| Held { messages, bytes };
        assert_eq!(to_drain(held(14, 14 * 1_114_112), 6_291_456), 9);
        assert_eq!(
            to_drain(held(14, 14 * 1_114_112), 14 * 1_114_112),
            1,
            "not yet fewer"
        );
        assert_eq!(to_drain(held(14, 14 * 1_114_112), 14 * 1_114_112 + 1), 0);
        assert_eq!(to_drain(held(3, 3000), 1), 3, "never more than it holds");
        assert_eq!(to_drain(held(0, 0), 0), 0);
    }

    #[test]
    fn readiness_fails_while_a_tenant_loop_keeps_panicking_and_recovers() {
        let health = LoopHealth::default();
        let (acme, other) = (tenant("acme"), tenant("other"));
        let start = Instant::now();
        health.panicked(&acme, start);
        health.panicked(&other, start);
        health.panicked(&acme, start);
        assert!(
            health.check(start).is_ok(),
            "two panics are restarts, not a crash loop"
        );
        health.panicked(&acme, start);
        let err = health.check(start).unwrap_err();
        assert!(err.contains("acme") && !err.contains("other"), "{err}");
        assert!(
            health.check(start + CRASH_WINDOW).is_ok(),
            "old panics are forgotten"
        );
        health.panicked(&acme, start);
        health.panicked(&acme, start);
        health.panicked(&acme, start);
        health.ended_cleanly(&acme);
        assert!(health.check(start).is_ok(), "a clean end forgives");
    }
}
