//! `Leaser` against a real `rate-limits`-shaped bucket: leases by two replicas stay disjoint,
//! a replica's next lease is one KV write while nobody else leased meanwhile, and a record
//! changed by anyone else is read again instead of trusted from memory.

use async_nats::jetstream::{self, kv};
use switchyard_registry::{LimitRecord, TokenState};
use switchyard_service::lease::{Lease, Leaser};
use switchyard_testkit::NatsServer;

const KEY: &str = "acme.tokens";
const NOW: i64 = 1_800_000_000_000;

fn limit() -> LimitRecord {
    // 100/s: slots 10 ms apart; a burst of 1, so every slot is paced.
    LimitRecord {
        rate_per_sec: 100.0,
        burst: 1,
        backlog_high: None,
        backlog_low: None,
        backlog_high_bytes: None,
    }
}

async fn bucket(server: &NatsServer) -> kv::Store {
    let js = jetstream::new(server.client().await);
    js.create_key_value(kv::Config {
        bucket: "rate-limits".to_owned(),
        history: 1,
        ..Default::default()
    })
    .await
    .expect("bucket")
}

/// The slot after the last of `lease`: where the next lease starts.
fn end(lease: &Lease) -> i64 {
    lease.slot(lease.count)
}

#[tokio::test]
async fn a_replica_alone_leases_with_one_write_and_two_replicas_never_share_a_slot() {
    let server = NatsServer::start().await;
    let a = Leaser::new(bucket(&server).await);
    let b = Leaser::new(bucket(&server).await);

    let first = a.lease(KEY, 10, &limit(), NOW).await;
    assert_eq!(first.start_ms, NOW);
    assert_eq!(
        a.kv_ops.get(),
        2,
        "the first lease reads (nothing there) and creates"
    );

    let second = a.lease(KEY, 10, &limit(), NOW).await;
    assert_eq!(second.start_ms, end(&first), "consecutive, disjoint");
    assert_eq!(
        a.kv_ops.get(),
        3,
        "a lease after its own is one write, no read"
    );

    // Another replica leases: it reads what `a` wrote and goes after it.
    let other = b.lease(KEY, 10, &limit(), NOW).await;
    assert_eq!(other.start_ms, end(&second));
    assert_eq!(b.kv_ops.get(), 2);

    // `a`'s remembered revision is stale now: its swap fails, it reads and leases after `b`.
    let third = a.lease(KEY, 10, &limit(), NOW).await;
    assert_eq!(third.start_ms, end(&other), "never a slot `b` holds");
    assert_eq!(a.kv_ops.get(), 6, "a failed swap, a read and the write");
    assert_eq!(
        a.fallbacks.get() + b.fallbacks.get(),
        0,
        "KV was used throughout"
    );
}

#[tokio::test]
async fn a_record_changed_by_anyone_else_is_read_again_not_trusted_from_memory() {
    let server = NatsServer::start().await;
    let store = bucket(&server).await;
    let a = Leaser::new(store.clone());
    let first = a.lease(KEY, 1, &limit(), NOW).await;
    assert_eq!(first.start_ms, NOW);

    // An operator (or a replica that lost its memory) writes the record directly: five seconds
    // of slots already taken.
    let taken = serde_json::to_vec(&TokenState {
        tat_ms: NOW + 5_000,
        // As an earlier release wrote it: the rate unknown, nothing carried over.
        rate_per_sec: None,
    })
    .expect("json");
    store.put(KEY, taken.into()).await.expect("put");
    let next = a.lease(KEY, 1, &limit(), NOW).await;
    assert_eq!(next.start_ms, NOW + 5_000, "the stored record wins");

    // Deleted: the next lease starts afresh from now, and is written back.
    store.delete(KEY).await.expect("delete");
    let fresh = a.lease(KEY, 1, &limit(), NOW + 1).await;
    assert_eq!(fresh.start_ms, NOW + 1);
    let stored = store.get(KEY).await.expect("get").expect("a record");
    let stored: TokenState = serde_json::from_slice(&stored).expect("json");
    assert_eq!(stored.tat_ms, end(&fresh));
    assert_eq!(
        stored.rate_per_sec,
        Some(limit().rate_per_sec),
        "the rate it was leased at"
    );
}
