//! Counting DLQ inflow per (tenant, stage, code) into the `dlq-stats` bucket, and raising
//! inflow alerts ([`alerts`]).
//!
//! One instance counts at a time: it holds the lease in the `_state` record. It reads the DLQ
//! in sequence order from the recorded cursor with an ordered consumer (no acks, nothing
//! removed: the DLQ is a limits stream and reading never consumes), groups a batch by
//! counter, adds each group above the counter's watermark with a compare-and-set
//! ([`StatsStore::add`]), then advances the cursor and renews the lease in one compare-and-set
//! on `_state`. A crash between the two re-reads the batch, and the watermarks make the re-read
//! count nothing twice. Restored entries (`dlq import`) are not new inflow and are skipped.
//!
//! Why not a durable consumer: acks from several replicas would complete out of order, and a
//! redelivered entry below a counter's watermark could not be told from one already counted.

pub mod alerts;
pub mod expiry;

use std::collections::BTreeMap;
use std::time::Duration;

use anyhow::Context;
use async_nats::jetstream::consumer::DeliverPolicy;
use async_nats::jetstream::stream::Stream;
use futures::StreamExt;
use switchyard_dlq_ops::{
    Delivered, DlqReader, Leaseholder, StatsRecord, StatsState, StatsStore, Written, export,
};
use switchyard_keys::KvKey;
use switchyard_subjects::{AlertKind, AlertSubject, DlqFilter, Namespace, SubjectKind};
use time::OffsetDateTime;
use tokio_util::sync::CancellationToken;

use crate::config::StatsSettings;
use crate::metrics::DlqMetrics;
use alerts::{InflowAlert, InflowWindows};

/// How long a batch waits for more entries once it has one.
const BATCH_LINGER: Duration = Duration::from_millis(50);

/// The stats processor of one instance.
pub struct StatsProcessor {
    /// The `dlq-stats` bucket.
    pub store: StatsStore,
    /// The DLQ stream.
    pub dlq: Stream,
    /// For publishing alerts (core NATS).
    pub client: async_nats::Client,
    /// The deployment namespace.
    pub ns: Namespace,
    /// This instance's id (the lease owner).
    pub owner: String,
    /// Settings.
    pub settings: StatsSettings,
    /// Inflow windows, when alerts are on.
    pub alerts: Option<InflowWindows>,
    /// The expiry check, when alerts are on and `expiring_within_secs` is set.
    pub expiry: Option<ExpiryCheck>,
    /// Metrics.
    pub metrics: DlqMetrics,
    /// Operational events: each inflow alert is also a durable `dlq_inflow` event.
    pub events: switchyard_service::events::EventLog,
}

/// What the expiry check ([`expiry`]) needs, and when it ran.
pub struct ExpiryCheck {
    /// The DLQ's `max_age`.
    pub max_age: time::Duration,
    /// How far ahead entries count as expiring.
    pub within: time::Duration,
    /// How often to look.
    pub every: Duration,
    /// At most one alert per tenant per this.
    pub cooldown: time::Duration,
    /// When each tenant was last alerted.
    pub cooldowns: expiry::Cooldowns,
    /// Tenants with a gauge set (to zero those that have no expiring entry any more).
    pub gauged: std::collections::BTreeSet<String>,
    /// When it last ran (on this instance).
    pub last: Option<std::time::Instant>,
    /// Tenants with a retention of their own, shorter than `max_age` (`[retention] tenants`).
    pub retention: BTreeMap<switchyard_keys::TenantId, time::Duration>,
}

impl ExpiryCheck {
    /// How long `tenant`'s entries are kept: its own retention, else the DLQ's `max_age`.
    fn retention_of(&self, tenant: Option<&switchyard_keys::TenantId>) -> time::Duration {
        tenant
            .and_then(|t| self.retention.get(t))
            .map_or(self.max_age, |r| (*r).min(self.max_age))
    }
}

impl StatsProcessor {
    fn lease(&self) -> Duration {
        Duration::from_secs(self.settings.lease_secs)
    }

    fn holder(&self) -> Leaseholder {
        Leaseholder::new(self.owner.clone(), self.lease())
    }

    /// Counts until `shutdown`, taking the lease whenever it is free.
    pub async fn run(mut self, shutdown: CancellationToken) {
        let retry = self.lease() / 3;
        loop {
            let outcome = match self.acquire().await {
                Ok(Some((state, revision))) => {
                    tracing::info!(cursor = state.cursor, "counting DLQ inflow");
                    self.count(state, revision, &shutdown).await
                }
                Ok(None) => Err(anyhow::anyhow!("lease held by another instance")),
                Err(error) => Err(error),
            };
            if let Err(error) = outcome {
                tracing::debug!(error = format!("{error:#}"), "not counting now");
            }
            tokio::select! {
                _ = shutdown.cancelled() => return,
                _ = tokio::time::sleep(retry) => {}
            }
        }
    }

    /// Takes the lease if it is free (or ours); returns the state and its revision.
    async fn acquire(&self) -> anyhow::Result<Option<(StatsState, u64)>> {
        let found = self.store.state().await?;
        let now = OffsetDateTime::now_utc();
        let (mut state, revision) = match found {
            Some((state, revision)) => (state, Some(revision)),
            None => (StatsState::default(), None),
        };
        let holder = self.holder();
        if !holder.may_take(state.lease.as_ref(), now) {
            return Ok(None);
        }
        state.lease = Some(holder.grant(now));
        Ok(match self.store.put_state(&state, revision).await? {
            Written::Stored(revision) => Some((state, revision)),
            Written::Conflict => None,
        })
    }

    /// Counts from the state's cursor on, while the lease holds.
    async fn count(
        &mut self,
        mut state: StatsState,
        mut revision: u64,
        shutdown: &CancellationToken,
    ) -> anyhow::Result<()> {
        let start = if state.cursor == 0 {
            DeliverPolicy::All
        } else {
            DeliverPolicy::ByStartSequence {
                start_sequence: state.cursor + 1,
            }
        };
        let consumer = DlqReader::new(self.dlq.clone(), self.ns.clone())
            .ordered(&self.ns.dlq_filter(&DlqFilter::default()), start)
            .await?;
        self.metrics
            .stats_lag
            .set(i64::try_from(consumer.cached_info().num_pending).unwrap_or(i64::MAX));
        let mut messages = consumer.messages().await.context("reading the DLQ")?;
        let renew_every = self.lease() / 3;
        loop {
            let mut batch = Vec::new();
            let first = tokio::select! {
                _ = shutdown.cancelled() => None,
                next = tokio::time::timeout(renew_every, messages.next()) => Some(next),
            };
            let Some(first) = first else {
                self.release(state, revision).await;
                return Ok(());
            };
            match first {
                Ok(Some(message)) => batch.push(message.context("reading the DLQ")?),
                Ok(None) => anyhow::bail!("the DLQ reader ended"),
                Err(_idle) => {}
            }
            while !batch.is_empty() && batch.len() < self.settings.batch_max {
                match tokio::time::timeout(BATCH_LINGER, messages.next()).await {
                    Ok(Some(message)) => batch.push(message.context("reading the DLQ")?),
                    Ok(None) => anyhow::bail!("the DLQ reader ended"),
                    Err(_) => break,
                }
            }
            let alerts = self.apply(&mut state, &batch).await?;
            // Alerts go out before the cursor moves: a crash in between repeats an alert
            // rather than losing it.
            for alert in alerts {
                self.publish_alert(&alert).await;
            }
            match self.commit(&mut state, revision).await {
                Some(r) => revision = r,
                None => anyhow::bail!("lost the stats lease"),
            }
            self.check_expiry().await;
        }
    }

    /// Counts and alerts on the entries about to age out, when due ([`expiry`]). A read that
    /// fails is logged and tried again at the next check.
    async fn check_expiry(&mut self) {
        let Some(check) = &mut self.expiry else {
            return;
        };
        if check.last.is_some_and(|at| at.elapsed() < check.every) {
            return;
        }
        check.last = Some(std::time::Instant::now());
        let now = OffsetDateTime::now_utc();
        let reader = DlqReader::new(self.dlq.clone(), self.ns.clone());
        // The tenants' own retention first: what is past it goes, counted.
        for (tenant, retention) in &check.retention {
            match expiry::remove_older(&reader, tenant, now - *retention).await {
                Ok(0) => {}
                Ok(removed) => {
                    tracing::warn!(%tenant, removed, retention_secs = retention.whole_seconds(), "removed DLQ entries past the tenant's retention");
                    self.metrics
                        .retention_removed
                        .get_or_create(&crate::metrics::AlertLabels {
                            tenant: tenant.to_string(),
                        })
                        .inc_by(removed);
                }
                Err(error) => {
                    tracing::warn!(%tenant, error = format!("{error:#}"), "applying the tenant's DLQ retention failed; tried again at the next check");
                }
            }
        }
        let cutoff_for = |tenant: Option<&switchyard_keys::TenantId>| {
            now - (check.retention_of(tenant) - check.within)
        };
        let stop = check
            .retention
            .keys()
            .map(|t| cutoff_for(Some(t)))
            .chain([cutoff_for(None)])
            .max()
            .unwrap_or(now);
        let found = match expiry::stored_before(&reader, cutoff_for, stop).await {
            Ok(found) => found,
            Err(error) => {
                tracing::warn!(
                    error = &error as &dyn std::error::Error,
                    "looking for expiring DLQ entries failed"
                );
                return;
            }
        };
        let mut gauged = std::collections::BTreeSet::new();
        for (tenant, (count, _)) in &found {
            let label = tenant.as_ref().map_or("_".to_owned(), |t| t.to_string());
            self.metrics
                .expiring
                .get_or_create(&crate::metrics::AlertLabels {
                    tenant: label.clone(),
                })
                .set(i64::try_from(*count).unwrap_or(i64::MAX));
            gauged.insert(label);
        }
        for gone in check.gauged.difference(&gauged) {
            self.metrics
                .expiring
                .get_or_create(&crate::metrics::AlertLabels {
                    tenant: gone.clone(),
                })
                .set(0);
        }
        check.gauged = gauged;
        let (max_age, retention) = (check.max_age, check.retention.clone());
        let alerts = check.cooldowns.due(
            &found,
            |t| retention.get(t).map_or(max_age, |r| (*r).min(max_age)),
            check.within,
            check.cooldown,
            now,
        );
        for alert in alerts {
            let subject = AlertSubject {
                tenant: alert.tenant.clone(),
                kind: AlertKind::DlqExpiring,
            }
            .format(&self.ns);
            tracing::warn!(
                tenant = %alert.tenant,
                count = alert.count,
                oldest_expires_at = %alert.oldest_expires_at,
                %subject,
                "DLQ entries about to age out"
            );
            match serde_json::to_vec(&alert) {
                Ok(payload) => {
                    if let Err(error) = self.client.publish(subject, payload.into()).await {
                        tracing::error!(%error, "publishing an alert failed");
                    }
                }
                Err(error) => tracing::error!(%error, "encoding an alert failed"),
            }
            let expires = alert
                .oldest_expires_at
                .format(&time::format_description::well_known::Rfc3339)
                .unwrap_or_default();
            self.events.emit(
                switchyard_subjects::EventKind::DlqExpiring,
                Some(&alert.tenant),
                None,
                &format!(
                    "{} DLQ entries age out within {} s; the oldest at {expires} (replay or \
                     export them before)",
                    alert.count, alert.within_secs
                ),
            );
        }
    }

    /// Counts a batch into the counters (above their watermarks); returns the alerts it raised.
    async fn apply(
        &mut self,
        state: &mut StatsState,
        batch: &[async_nats::jetstream::Message],
    ) -> anyhow::Result<Vec<InflowAlert>> {
        let now = OffsetDateTime::now_utc();
        let mut groups: BTreeMap<String, (StatsRecord, Vec<(u64, OffsetDateTime)>)> =
            BTreeMap::new();
        let mut raised = Vec::new();
        let mut last = state.cursor;
        for message in batch {
            let Delivered {
                seq,
                stored_at,
                pending,
                entry,
            } = Delivered::read(&self.ns, message).context("reading a DLQ message")?;
            last = last.max(seq);
            self.metrics
                .stats_lag
                .set(i64::try_from(pending).unwrap_or(i64::MAX));
            if seq <= state.cursor {
                continue;
            }
            if export::is_restored(message.headers.as_ref()) {
                state.imported += 1;
                continue;
            }
            let entry = match entry {
                Ok(entry) => entry,
                Err(error) => {
                    tracing::warn!(seq, %error, "not a valid DLQ record; not counted");
                    state.malformed += 1;
                    continue;
                }
            };
            let r = &entry.record;
            let template = StatsRecord {
                tenant: r.tenant.clone(),
                stage: r.stage,
                code: r.code,
                count: 0,
                first_seen: stored_at,
                last_seen: stored_at,
                first_seq: seq,
                last_seq: 0,
            };
            groups
                .entry(template.key().render())
                .or_insert_with(|| (template, Vec::new()))
                .1
                .push((seq, stored_at));
            if let (Some(windows), Some(tenant)) = (&mut self.alerts, &r.tenant) {
                raised.extend(windows.observe(tenant, seq, stored_at, now));
            }
        }
        for (template, entries) in groups.values() {
            self.store.add(template, entries).await?;
        }
        state.cursor = last;
        if let Some(windows) = &mut self.alerts {
            windows.prune(now);
        }
        Ok(raised)
    }

    /// Writes the cursor and renews the lease; `None` when the lease is lost (or the write
    /// failed, after which it may be).
    async fn commit(&self, state: &mut StatsState, revision: u64) -> Option<u64> {
        state.lease = Some(self.holder().grant(OffsetDateTime::now_utc()));
        match self.store.put_state(state, Some(revision)).await {
            Ok(Written::Stored(revision)) => Some(revision),
            Ok(Written::Conflict) => None,
            Err(error) => {
                tracing::warn!(
                    error = &error as &dyn std::error::Error,
                    "recording the stats cursor failed"
                );
                None
            }
        }
    }

    /// Hands the lease back on shutdown.
    async fn release(&self, mut state: StatsState, revision: u64) {
        state.lease = None;
        if let Err(error) = self.store.put_state(&state, Some(revision)).await {
            tracing::warn!(
                error = &error as &dyn std::error::Error,
                "releasing the stats lease failed; it lapses on its own"
            );
        }
    }

    async fn publish_alert(&self, alert: &InflowAlert) {
        let subject = AlertSubject {
            tenant: alert.tenant.clone(),
            kind: AlertKind::DlqInflow,
        }
        .format(&self.ns);
        let payload = match serde_json::to_vec(alert) {
            Ok(payload) => payload,
            Err(error) => {
                tracing::error!(%error, "encoding an alert failed");
                return;
            }
        };
        tracing::warn!(
            tenant = %alert.tenant,
            count = alert.count,
            threshold = alert.threshold,
            window_secs = alert.window_secs,
            %subject,
            "DLQ inflow alert"
        );
        self.metrics
            .alerts
            .get_or_create(&crate::metrics::AlertLabels {
                tenant: alert.tenant.to_string(),
            })
            .inc();
        if let Err(error) = self.client.publish(subject, payload.into()).await {
            tracing::error!(%error, "publishing an alert failed");
        }
        self.events.emit(
            switchyard_subjects::EventKind::DlqInflow,
            Some(&alert.tenant),
            None,
            &format!(
                "{} DLQ entries within {} s (threshold {})",
                alert.count, alert.window_secs, alert.threshold
            ),
        );
    }
}
