//! Backup and restore of a deployment's whole state, on a real nats-server (one node, then a
//! 3-node cluster with every stream replicated three times) and a real HTTP sink.
//!
//! A pipeline has delivered messages, dead-lettered others (a sink answering `400`) and holds
//! more in flight: some in `EGRESS` (egress stopped), some in the tenant's own
//! `INGRESS_<tenant>` (ingress stopped). It is backed up, the server's store is wiped, the
//! backup restored and the services started again. Every message is then delivered exactly
//! once over the whole run (none twice, none lost) or is in the DLQ exactly once; a restore
//! over the restored deployment is refused without `force`.

use std::collections::BTreeMap;
use std::time::Duration;

use futures::TryStreamExt;
use switchyard_backup::{BackupError, ItemKind, Quiet};
use switchyard_testkit::{stored_count, wait_for};
use switchyard_topology::{DeploymentConfig, ResolvedTopology};

use crate::pipeline::{Pipeline, Svc};

const ACME: &str = "acme";
const GLOBEX: &str = "globex";
const TEAM: &str = "ops";
const PLATFORM: &str = "hooks";
const DEADLINE: Duration = Duration::from_secs(60);

fn topology(replicas: usize) -> ResolvedTopology {
    DeploymentConfig {
        replicas: Some(replicas),
        ..Default::default()
    }
    .resolve()
    .unwrap()
}

/// How many times the sink accepted each payload.
fn delivered(p: &Pipeline) -> BTreeMap<String, usize> {
    let mut counts = BTreeMap::new();
    for r in p.sink.received().into_iter().filter(|r| r.delivered()) {
        *counts
            .entry(String::from_utf8_lossy(&r.body).into_owned())
            .or_insert(0) += 1;
    }
    counts
}

/// How many DLQ entries hold each payload.
async fn dead_lettered(p: &Pipeline) -> BTreeMap<String, usize> {
    let mut counts = BTreeMap::new();
    for entry in p.dlq().await {
        *counts
            .entry(String::from_utf8_lossy(&entry.payload).into_owned())
            .or_insert(0) += 1;
    }
    counts
}

async fn publish(p: &Pipeline, tenant: &str, ids: std::ops::Range<usize>) {
    for i in ids {
        let id = format!("{tenant}-{i}");
        p.publish(tenant, TEAM, PLATFORM, &id, id.as_bytes()).await;
    }
}

/// Consumers the server shows in use (a pull waiting, or a message delivered and not acked),
/// as `STREAM/consumer`: what a backup's `online` reports.
async fn in_use(js: &async_nats::jetstream::Context) -> Vec<String> {
    let mut in_use = Vec::new();
    let names: Vec<String> = js.stream_names().try_collect().await.unwrap_or_default();
    for name in names {
        let Ok(stream) = js.get_stream_no_info(&name).await else {
            continue;
        };
        let consumers: Vec<_> = stream.consumers().try_collect().await.unwrap_or_default();
        in_use.extend(
            consumers
                .into_iter()
                .filter(|c| c.num_waiting > 0 || c.num_ack_pending > 0)
                .map(|c| format!("{name}/{}", c.name)),
        );
    }
    in_use
}

async fn round_trip(mut p: Pipeline, replicas: usize) {
    let topology = topology(replicas);
    p.route(ACME, None, PLATFORM, "ok").await;
    p.route(GLOBEX, None, PLATFORM, "refused").await;
    p.sink.answer("refused", 400);

    // Delivered and dead-lettered before the backup.
    publish(&p, ACME, 0..10).await;
    publish(&p, GLOBEX, 0..5).await;
    wait_for("10 deliveries and 5 dead letters", DEADLINE, || async {
        let done = delivered(&p).len() == 10 && dead_lettered(&p).await.len() == 5;
        done.then_some(())
    })
    .await;

    // A backup taken while the services run says so, and a restore is refused under them.
    let online = tempfile::tempdir().unwrap();
    let manifest = switchyard_backup::create(&p.client, &p.js, &topology, online.path(), &Quiet)
        .await
        .unwrap();
    assert!(manifest.online, "services were running: {manifest:?}");
    wait_for(
        "a restore refused under running services",
        DEADLINE,
        || async {
            let refused = switchyard_backup::restore(
                &p.client,
                &p.js,
                &topology,
                online.path(),
                false,
                &Quiet,
            )
            .await;
            matches!(refused, Err(BackupError::ServicesRunning { .. })).then_some(())
        },
    )
    .await;

    // In flight: 10 in EGRESS (egress stopped), 10 in INGRESS_acme (ingress stopped).
    p.stop_service(Svc::Egress).await;
    publish(&p, ACME, 10..20).await;
    wait_for("10 messages waiting in EGRESS", DEADLINE, || async {
        (stored_count(&p.js, "EGRESS").await == 10).then_some(())
    })
    .await;
    p.stop_service(Svc::Ingress).await;
    publish(&p, ACME, 20..30).await;
    p.stop_services().await;
    assert_eq!(stored_count(&p.js, "INGRESS_acme").await, 10);
    // A stopped service's last acks and the end of its waiting pulls reach the server (and, on
    // a cluster, each consumer's leader) a moment after it stops; a backup taken before that
    // would rightly see those consumers in use.
    wait_for(
        "the stopped services' consumers idle at the server",
        DEADLINE,
        || async { in_use(&p.js).await.is_empty().then_some(()) },
    )
    .await;

    let dir = tempfile::tempdir().unwrap();
    let manifest = switchyard_backup::create(&p.client, &p.js, &topology, dir.path(), &Quiet)
        .await
        .unwrap();
    assert!(!manifest.online, "the services were stopped");
    let messages = |stream: &str| {
        manifest
            .items
            .iter()
            .find(|i| i.stream == stream)
            .map(|i| i.messages)
    };
    assert_eq!(messages("INGRESS_acme"), Some(10));
    assert_eq!(messages("EGRESS"), Some(10));
    assert_eq!(messages("DLQ"), Some(5));
    for bucket in &topology.buckets {
        let stream = format!("KV_{}", bucket.config.bucket);
        assert!(
            manifest
                .items
                .iter()
                .any(|i| i.stream == stream && i.kind == ItemKind::Bucket),
            "{stream} backed up"
        );
    }
    assert_eq!(
        switchyard_backup::create(&p.client, &p.js, &topology, dir.path(), &Quiet)
            .await
            .unwrap_err()
            .to_string(),
        BackupError::Exists(dir.path().to_owned()).to_string(),
        "a backup is never overwritten"
    );

    // The disaster: every store gone.
    match replicas {
        1 => p.server.single().wipe().await,
        _ => {
            p.server.cluster().wipe().await;
            p.server.cluster().wait_for_meta_leader(&p.client).await;
        }
    }
    let left: Vec<String> = p.js.stream_names().try_collect().await.unwrap();
    assert!(left.is_empty(), "the wiped server still has {left:?}");

    let report = switchyard_backup::restore(&p.client, &p.js, &topology, dir.path(), false, &Quiet)
        .await
        .unwrap();
    assert_eq!(report.restored.len(), manifest.items.len());
    assert!(!report.topology_differs);
    assert!(report.replaced.is_empty() && report.left_alone.is_empty());
    let again =
        switchyard_backup::restore(&p.client, &p.js, &topology, dir.path(), false, &Quiet).await;
    assert!(
        matches!(&again, Err(BackupError::NotEmpty { streams }) if streams.contains(&"DLQ".to_owned())),
        "a restore over data needs --force: {again:?}"
    );
    if replicas > 1 {
        let mut egress = p.js.get_stream("EGRESS").await.unwrap();
        let info = egress.info().await.unwrap();
        assert_eq!(info.config.num_replicas, replicas);
    }

    for svc in [
        Svc::Ingress,
        Svc::Idempotency,
        Svc::Backpressure,
        Svc::Egress,
    ] {
        p.start_service(svc).await;
    }
    p.wait_delivered(30, DEADLINE).await;
    let delivered = delivered(&p);
    let expected: BTreeMap<String, usize> = (0..30).map(|i| (format!("{ACME}-{i}"), 1)).collect();
    assert_eq!(delivered, expected, "every message delivered exactly once");
    let dead: BTreeMap<String, usize> = (0..5).map(|i| (format!("{GLOBEX}-{i}"), 1)).collect();
    assert_eq!(
        dead_lettered(&p).await,
        dead,
        "every dead letter kept exactly once"
    );
    p.stop().await;
}

#[tokio::test]
async fn a_backup_restores_every_message_exactly_once_on_one_server() {
    round_trip(Pipeline::start(&[ACME, GLOBEX]).await, 1).await;
}

#[tokio::test]
async fn a_backup_restores_every_message_exactly_once_on_a_cluster() {
    round_trip(Pipeline::start_cluster(&[ACME, GLOBEX]).await, 3).await;
}
