//! Replica heartbeats (`_replicas.<id>` in the `rate-limits` bucket), so each replica knows
//! how many share a limit when it must fall back to `limit / N` locally.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use switchyard_keys::{KvKey, ReplicaKey};
use switchyard_registry::Store;
use tokio_util::sync::CancellationToken;

use crate::shared::Shared;

pub(crate) fn now_ms() -> i64 {
    (time::OffsetDateTime::now_utc().unix_timestamp_nanos() / 1_000_000) as i64
}

/// Beats every `heartbeat_secs`, counts fresh heartbeats (younger than three periods), and
/// removes its own on shutdown.
pub async fn run(
    shared: Arc<Shared>,
    kv: async_nats::jetstream::kv::Store,
    shutdown: CancellationToken,
) {
    let me = ReplicaKey {
        id: uuid::Uuid::now_v7().simple().to_string(),
    };
    let store: Store<ReplicaKey, i64> = Store::new(kv.clone());
    let period = Duration::from_secs(shared.settings.heartbeat_secs.max(1));
    let fresh_ms = 3 * period.as_millis() as i64;
    while !shutdown.is_cancelled() {
        if let Err(error) = store.put(&me, &now_ms()).await {
            tracing::debug!(%error, "heartbeat failed (kv unreachable?)");
        }
        if let Ok(beats) = store.list(ReplicaKey::FILTER).await {
            let now = now_ms();
            let live = beats
                .iter()
                .filter(|(_, at)| at.as_ref().is_ok_and(|at| now - at < fresh_ms))
                .count()
                .max(1);
            shared.leaser.replicas.store(live, Ordering::Relaxed);
            shared.own.replicas.set(live as i64);
        }
        tokio::select! {
            _ = shutdown.cancelled() => break,
            _ = tokio::time::sleep(period) => {}
        }
    }
    let _ = kv.delete(me.render()).await;
}
