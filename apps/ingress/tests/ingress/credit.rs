//! Backpressure that travels back to the tenant's edge: a tenant over its credit at the next
//! stages (messages in `IDEMPOTENCY`, bytes there and in its `BACKPRESSURE_<shard>`), or with
//! closed admission, is not read; its backlog stays in its own stream, where its quota refuses
//! its NATS producers, and the other tenants flow on. Nothing it had accepted is lost once it
//! has room again. No idempotency or backpressure service runs here: `IDEMPOTENCY` only fills,
//! and the tests move or drain it by hand.

use std::collections::BTreeMap;
use std::time::Duration;

use async_nats::jetstream::{self, stream::Stream};
use switchyard_fixtures::{enable_tenant, ingress_stream};
use switchyard_keys::{RateKey, RateRecord, RateScope, TenantId};
use switchyard_registry::{Admission, PressureRecord, Store, TenantRecord};
use switchyard_subjects::{Shard, SizeClass};
use switchyard_testkit::{backpressure_stream, stored_messages, wait_for};
use switchyard_topology::Held;

use super::{Harness, with_id};

/// Publishes ids `<prefix>-<i>` for `i` in `ids` to `tenant`'s `ops.slack`, each acked.
async fn send(h: &Harness, tenant: &str, prefix: &str, ids: std::ops::Range<u64>, payload: &[u8]) {
    for i in ids {
        h.publish(
            &format!("ingress.v1.{tenant}.ops.slack"),
            with_id(&format!("{prefix}-{i}")),
            payload,
        )
        .await;
    }
}

/// Messages per tenant waiting in `IDEMPOTENCY`.
async fn handed_on(js: &jetstream::Context) -> BTreeMap<TenantId, u64> {
    switchyard_topology::backlog_by_tenant(js, &Default::default(), "IDEMPOTENCY")
        .await
        .unwrap()
}

/// `tenant`'s `ingress-worker` on its own stream: (not yet delivered, pull requests waiting).
async fn reading(js: &jetstream::Context, tenant: &str) -> (u64, usize) {
    let stream: Stream = js.get_stream(ingress_stream(tenant)).await.unwrap();
    let info = stream.consumer_info("ingress-worker").await.unwrap();
    (info.num_pending, info.num_waiting)
}

async fn set_admission(js: &jetstream::Context, tenant: &str, admission: Admission) {
    let store: Store<RateKey, PressureRecord> =
        Store::new(js.get_key_value("rate-limits").await.unwrap());
    let key = RateKey {
        scope: RateScope::Tenant(TenantId::new(tenant).unwrap()),
        record: RateRecord::Pressure,
    };
    let record = PressureRecord {
        admission,
        backlog: 0,
        updated_at: "2026-12-06T00:00:00Z".into(),
        reopen_in_secs: None,
    };
    store.put(&key, &record).await.unwrap();
}

#[tokio::test]
async fn a_flooding_tenant_is_paused_at_its_credit_refused_at_its_quota_and_others_flow_on() {
    let provisioned = Harness::prepare().await;
    // acme may hold 200 accepted messages in its own stream.
    let quota = TenantRecord {
        quota_msgs: Some(200),
        ..TenantRecord::enabled()
    };
    enable_tenant(&provisioned.js, "acme", &quota).await;
    let h = Harness::launch_with(provisioned, |config| {
        config.ingress.next_stage_credit = 50;
        config.ingress.credit_scan_ms = 20;
    })
    .await;
    let acme = TenantId::new("acme").unwrap();
    let globex = TenantId::new("globex").unwrap();

    // acme floods 1,000 messages over NATS: acked while there is room in its stream, refused
    // by JetStream (not acked, not dropped) once its quota is used.
    let (mut accepted, mut refused) = (0u64, 0u64);
    for i in 0..1000 {
        let ack =
            h.js.publish_with_headers(
                "ingress.v1.acme.ops.slack",
                with_id(&format!("a-{i}")),
                "x".into(),
            )
            .await
            .unwrap()
            .await;
        match ack {
            Ok(ack) => {
                assert!(!ack.duplicate);
                accepted += 1;
            }
            Err(error) => {
                assert!(
                    error.to_string().contains("maximum messages"),
                    "refused by its quota: {error}"
                );
                refused += 1;
            }
        }
    }
    assert!(
        refused > 0,
        "the quota refused the flood ({accepted} accepted)"
    );
    // Paused at its credit: it stops being read while its backlog is still in its own stream.
    wait_for(
        "acme to be paused with its backlog in its own stream",
        Duration::from_secs(20),
        || async {
            let (pending, waiting) = reading(&h.js, "acme").await;
            (pending > 0 && waiting == 0).then_some(())
        },
    )
    .await;
    let at_pause = handed_on(&h.js).await.get(&acme).copied().unwrap_or(0);
    assert!(
        (50..accepted).contains(&at_pause),
        "acme's share of IDEMPOTENCY stops near its credit of 50: {at_pause} of {accepted}"
    );

    // globex is not paused: its messages are handed on at once.
    send(&h, "globex", "g", 0..10, b"y").await;
    wait_for(
        "globex's messages handed on",
        Duration::from_secs(20),
        || async { (handed_on(&h.js).await.get(&globex) == Some(&10)).then_some(()) },
    )
    .await;

    // The idempotency stage catches up (here: acme's hand-offs are taken out by hand) and
    // acme is read again, until everything it had accepted has been handed on.
    let idempotency = h.js.get_stream("IDEMPOTENCY").await.unwrap();
    let mut drained = 0;
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    while drained < accepted {
        assert!(
            std::time::Instant::now() < deadline,
            "only {drained} of acme's {accepted} accepted messages were handed on"
        );
        drained += idempotency
            .purge()
            .filter("idempotency.v1.acme.>")
            .await
            .unwrap()
            .purged;
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(drained, accepted, "each accepted message handed on once");
    assert_eq!(reading(&h.js, "acme").await.0, 0);
    assert!(h.dlq().await.is_empty(), "nothing dead-lettered");

    // Closed admission pauses a tenant with credit to spare; open again, it is read.
    set_admission(&h.js, "globex", Admission::Closed).await;
    // Paused: no new pull once the one waiting (up to tenants::FETCH_WAIT, 20 s) has ended.
    wait_for("globex to be paused", Duration::from_secs(60), || async {
        (reading(&h.js, "globex").await.1 == 0).then_some(())
    })
    .await;
    send(&h, "globex", "g", 10..15, b"y").await;
    assert_eq!(
        reading(&h.js, "globex").await,
        (5, 0),
        "kept in its own stream"
    );
    set_admission(&h.js, "globex", Admission::Open).await;
    wait_for(
        "globex's later messages handed on",
        Duration::from_secs(20),
        || async { (handed_on(&h.js).await.get(&globex) == Some(&15)).then_some(()) },
    )
    .await;
    h.stop().await;
}

/// Messages `acme` sends in the byte credit test: 500 KiB payloads.
const LARGE: u64 = 30;

/// The most of `acme`'s 500 KiB messages the byte credit test lets it hold at once: the 8th
/// reaches its 4 MiB, and no fetch brings more than its bytes left hold at the largest message
/// it has fetched (at least one; the first fetch one). A fetch of `tenant_batch` (16) planned
/// by messages alone would bring up to 16.
const MOST_AT_ONCE: u64 = 8;

/// What `tenant` holds in `streams`, as the byte credit counts it.
async fn held(js: &jetstream::Context, streams: &[String], tenant: &TenantId) -> Held {
    switchyard_topology::held_by_tenant(js, &Default::default(), streams)
        .await
        .unwrap()
        .get(tenant)
        .copied()
        .unwrap_or_default()
}

#[tokio::test]
async fn a_tenant_of_large_messages_is_paused_at_its_bytes_in_the_shared_streams_and_others_flow_on()
 {
    let h = Harness::launch_with(Harness::prepare().await, |config| {
        config.ingress.next_stage_credit_bytes = 4 * 1024 * 1024;
        config.ingress.credit_scan_ms = 20;
    })
    .await;
    let acme = TenantId::new("acme").unwrap();
    let globex = TenantId::new("globex").unwrap();
    let idempotency = vec!["IDEMPOTENCY".to_owned()];
    let shard = vec![backpressure_stream("acme")];
    // 500 KiB payloads: with their envelope headers in the 512k class (557,056 bytes each),
    // so 4 MiB holds 7 of them; 30 is far below acme's message credit (1,000).
    let payload = vec![b'x'; 500 * 1024];
    send(&h, "acme", "a", 0..LARGE, &payload).await;
    // Paused once its hand-offs reached 4 MiB (the 8th): its 8th stored, no pull of its
    // stream waiting, the rest still there.
    let at_pause = wait_for(
        "acme to be paused at its bytes with its backlog in its own stream",
        Duration::from_secs(20),
        || async {
            let now = held(&h.js, &idempotency, &acme).await;
            let (pending, waiting) = reading(&h.js, "acme").await;
            (now.messages >= 8 && pending > 0 && waiting == 0).then_some(now)
        },
    )
    .await;
    let class = SizeClass::from_token("512k").unwrap().bound();
    assert_eq!(
        at_pause.bytes,
        at_pause.messages * class,
        "every hand-off in the 512k class"
    );
    assert!(
        at_pause.messages <= MOST_AT_ONCE,
        "acme holds {} messages ({} bytes) in IDEMPOTENCY",
        at_pause.messages,
        at_pause.bytes
    );
    let subjects: Vec<String> = stored_messages(&h.js, "IDEMPOTENCY")
        .await
        .into_iter()
        .map(|m| m.subject.to_string())
        .collect();
    assert!(
        subjects
            .iter()
            .all(|s| s == "idempotency.v1.acme.ops.slack.512k"),
        "{subjects:?}"
    );

    // globex's small messages are handed on at once meanwhile.
    send(&h, "globex", "g", 0..10, b"y").await;
    wait_for(
        "globex's messages handed on",
        Duration::from_secs(20),
        || async { (held(&h.js, &idempotency, &globex).await.messages == 10).then_some(()) },
    )
    .await;

    // The idempotency stage hands acme's messages to its shard (here by hand, with their
    // class; copied first, then taken out of IDEMPOTENCY, so that acme holds them throughout):
    // held there, they still count, and acme stays paused.
    let waiting = held(&h.js, &idempotency, &acme).await.messages;
    for i in 0..waiting {
        h.publish(
            &format!("backpressure.v1.{}.acme.ops.slack.512k", Shard::of(&acme)),
            with_id(&format!("moved-{i}")),
            &payload,
        )
        .await;
    }
    assert_eq!(held(&h.js, &shard, &acme).await.bytes, waiting * class);
    // A whole scan sees the copies before they leave IDEMPOTENCY.
    h.scans_pass(2).await;
    let idempotency_stream = h.js.get_stream("IDEMPOTENCY").await.unwrap();
    let moved = idempotency_stream
        .purge()
        .filter("idempotency.v1.acme.>")
        .await
        .unwrap()
        .purged;
    assert_eq!(moved, waiting, "acme handed on nothing meanwhile");
    // Ten scans later, none of which found it room, acme has still not been read.
    h.scans_pass(10).await;
    assert_eq!(
        held(&h.js, &idempotency, &acme).await.messages,
        0,
        "acme is not read while its shard holds its bytes"
    );
    let pending = reading(&h.js, "acme").await.0;
    assert_eq!(
        pending + moved,
        LARGE,
        "nothing lost: in its own stream or handed on"
    );

    // Its rate limit lets the messages go (here: the shard is emptied by hand): acme is read
    // again, until everything it had accepted has been handed on, never holding more than
    // its bytes at a time.
    let backpressure = h.js.get_stream(&shard[0]).await.unwrap();
    let mut handed_on = moved;
    backpressure.purge().await.unwrap();
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    while handed_on < LARGE {
        assert!(
            std::time::Instant::now() < deadline,
            "only {handed_on} of acme's {LARGE} messages were handed on"
        );
        let now = held(&h.js, &idempotency, &acme).await;
        assert!(
            now.messages <= MOST_AT_ONCE,
            "acme holds {} at once",
            now.messages
        );
        handed_on += idempotency_stream
            .purge()
            .filter("idempotency.v1.acme.>")
            .await
            .unwrap()
            .purged;
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(handed_on, LARGE, "each accepted message handed on once");
    assert!(h.dlq().await.is_empty(), "nothing dead-lettered");
    h.stop().await;
}

#[tokio::test]
async fn a_shard_that_cannot_be_read_pauses_its_own_tenants_and_no_others() {
    let h = Harness::launch_with(Harness::prepare().await, |config| {
        config.ingress.credit_scan_ms = 20;
    })
    .await;
    let (acme, globex) = (
        TenantId::new("acme").unwrap(),
        TenantId::new("globex").unwrap(),
    );
    assert_ne!(Shard::of(&acme), Shard::of(&globex));
    // globex's shard is gone (as a shard without a leader cannot be read): ingress cannot
    // count globex's bytes there, so it stops reading globex.
    let shard = backpressure_stream("globex");
    let config =
        h.js.get_stream(&shard)
            .await
            .unwrap()
            .cached_info()
            .config
            .clone();
    h.js.delete_stream(&shard).await.unwrap();
    wait_for("globex to be paused", Duration::from_secs(20), || async {
        let paused = h.metric("switchyard_ingress_tenants_paused").await;
        (paused.as_deref() == Some("1")).then_some(())
    })
    .await;
    h.publish("ingress.v1.globex.ops.slack", with_id("g-0"), b"y")
        .await;
    h.publish("ingress.v1.acme.ops.slack", with_id("a-0"), b"x")
        .await;
    let idempotency = vec!["IDEMPOTENCY".to_owned()];
    wait_for(
        "acme's message handed on",
        Duration::from_secs(20),
        || async { (held(&h.js, &idempotency, &acme).await.messages == 1).then_some(()) },
    )
    .await;
    assert_eq!(held(&h.js, &idempotency, &globex).await.messages, 0);
    assert_eq!(
        reading(&h.js, "globex").await.0,
        1,
        "kept in its own stream"
    );

    // The shard back, globex is read again.
    h.js.create_stream(config).await.unwrap();
    wait_for(
        "globex's message handed on",
        Duration::from_secs(20),
        || async { (held(&h.js, &idempotency, &globex).await.messages == 1).then_some(()) },
    )
    .await;
    h.stop().await;
}
