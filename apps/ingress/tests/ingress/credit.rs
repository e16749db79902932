//! Backpressure that travels back to the tenant's edge: a tenant over its credit at the next
//! stage, or with closed admission, is not read; its backlog stays in its own stream, where
//! its quota refuses its NATS producers, and the other tenants flow on. Nothing it had
//! accepted is lost once it has room again. No idempotency service runs here: `IDEMPOTENCY`
//! only fills, and the test drains it by hand.

use std::collections::BTreeMap;
use std::time::Duration;

use async_nats::jetstream::{self, stream::Stream};
use switchyard_fixtures::{enable_tenant, ingress_stream};
use switchyard_keys::{RateKey, RateRecord, RateScope, TenantId};
use switchyard_registry::{Admission, PressureRecord, Store, TenantRecord};
use switchyard_testkit::wait_for;

use super::{Harness, with_id};

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
    for i in 0..10 {
        h.publish(
            "ingress.v1.globex.ops.slack",
            with_id(&format!("g-{i}")),
            b"y",
        )
        .await;
    }
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
    for i in 10..15 {
        h.publish(
            "ingress.v1.globex.ops.slack",
            with_id(&format!("g-{i}")),
            b"y",
        )
        .await;
    }
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
