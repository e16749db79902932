//! Each tenant's share of the DLQ: a tenant whose invalid traffic fills its share gets no
//! further record written — its messages wait in its own stream and are retried — while
//! another tenant's dead letters still go in; once its share has room again, they follow.

use std::collections::BTreeMap;
use std::time::Duration;

use async_nats::HeaderMap;
use switchyard_fixtures::{dlq_entries, ingress_stream};
use switchyard_testkit::{stored_count, wait_for};
use switchyard_topology::spec::EMBEDDED;

use super::Harness;

/// DLQ entries per tenant now.
async fn per_tenant(h: &Harness) -> BTreeMap<String, usize> {
    let mut counts = BTreeMap::new();
    for entry in h.dlq().await {
        let tenant = entry
            .record
            .tenant
            .map_or("_".to_owned(), |t| t.to_string());
        *counts.entry(tenant).or_default() += 1;
    }
    counts
}

#[tokio::test]
async fn a_tenant_holding_its_dlq_share_waits_and_others_still_dead_letter() {
    // The project's topology with a share of 3 entries per tenant.
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("topology.toml");
    let declared = EMBEDDED.replace("tenant_max_msgs = 10000", "tenant_max_msgs = 3");
    assert_ne!(declared, EMBEDDED, "the DLQ declares a share");
    std::fs::write(&file, declared).unwrap();
    let provisioned = Harness::prepare().await;
    let h = Harness::launch_with(provisioned, |config| {
        config.deployment.topology_file = Some(file.clone());
    })
    .await;

    // No Nats-Msg-Id: missing_msg_id, five times for acme, twice for globex.
    for i in 0..5 {
        h.publish(
            "ingress.v1.acme.ops.slack",
            HeaderMap::new(),
            format!("a{i}").as_bytes(),
        )
        .await;
    }
    for i in 0..2 {
        h.publish(
            "ingress.v1.globex.ops.slack",
            HeaderMap::new(),
            format!("g{i}").as_bytes(),
        )
        .await;
    }
    wait_for(
        "acme at its share, globex's dead letters in",
        Duration::from_secs(30),
        || async {
            let counts = per_tenant(&h).await;
            (counts.get("acme") == Some(&3) && counts.get("globex") == Some(&2)).then_some(())
        },
    )
    .await;
    assert_eq!(
        stored_count(&h.js, &ingress_stream("acme")).await,
        2,
        "acme's other two wait in its own stream"
    );
    // And ingress stops reading acme meanwhile, so those two do not use up their deliveries.
    wait_for("acme to be paused", Duration::from_secs(20), || async {
        let paused = h.metric("switchyard_ingress_tenants_paused").await;
        (paused.as_deref() == Some("1")).then_some(())
    })
    .await;

    // The operator clears acme's entries: the two waiting ones are dead-lettered in turn.
    h.js.get_stream("DLQ")
        .await
        .unwrap()
        .purge()
        .filter("dlq.v1.acme.>")
        .await
        .unwrap();
    wait_for(
        "acme's waiting messages dead-lettered",
        Duration::from_secs(30),
        || async { (per_tenant(&h).await.get("acme") == Some(&2)).then_some(()) },
    )
    .await;
    assert_eq!(stored_count(&h.js, &ingress_stream("acme")).await, 0);
    let acme: Vec<_> = dlq_entries(&h.js)
        .await
        .into_iter()
        .filter(|e| {
            e.record
                .tenant
                .as_ref()
                .is_some_and(|t| t.as_str() == "acme")
        })
        .collect();
    assert_eq!(acme.len(), 2);
    for entry in &acme {
        assert_eq!(
            entry.record.code,
            switchyard_dlq::DlqCode::MissingMsgId,
            "their own code, not exhausted_deliveries"
        );
    }
    h.stop().await;
}
