//! A 3-node cluster: R3 streams are provisioned and survive one node's restart.

use std::time::Duration;

use async_nats::jetstream::{self, publish::PublishAck};
use switchyard_keys::Address;
use switchyard_subjects::{InputStage, StageSubject, SubjectKind};
use switchyard_testkit::{NatsCluster, wait_for};
use switchyard_topology::{DeploymentConfig, Outcome, ResolvedTopology, provision};

/// Publishes with a `Nats-Msg-Id`: hand-off subjects de-duplicate by it, so a publish retried
/// after a lost ack during failover is stored once and the final count is exact.
async fn publish(js: jetstream::Context, subject: String, id: String) -> Option<PublishAck> {
    let mut h = async_nats::HeaderMap::new();
    h.insert("Nats-Msg-Id", id.as_str());
    js.publish_with_headers(subject, h, id.clone().into())
        .await
        .ok()?
        .await
        .ok()
}

/// A 3-node cluster with its meta leader elected, a client of it, an admin context whose API
/// requests wait 10 s (R3 creations on a loaded two-core machine can take longer than the 5 s
/// default; a creation with no answer by then is sent again, within provisioning's 30 s
/// `PLACEMENT_WAIT`), and the R3 topology.
async fn cluster() -> (
    NatsCluster,
    async_nats::Client,
    jetstream::Context,
    ResolvedTopology,
) {
    let cluster = NatsCluster::start().await;
    let client = cluster.client().await;
    cluster.wait_for_meta_leader(&client).await;
    let mut admin = jetstream::new(client.clone());
    admin.set_timeout(Duration::from_secs(10));
    let topology = DeploymentConfig {
        replicas: Some(3),
        ..Default::default()
    }
    .resolve()
    .unwrap();
    (cluster, client, admin, topology)
}

#[tokio::test]
async fn r3_streams_survive_a_node_restart() {
    let (mut cluster, client, admin, topology) = cluster().await;
    // The publishes below keep the short default timeout, so a failover retry is not stuck
    // on one ack.
    let js = jetstream::new(client);
    let report = provision(&admin, &topology, false).await.unwrap();
    assert!(
        report.items.iter().all(|i| i.outcome == Outcome::Created),
        "{report:#?}"
    );

    let info = js
        .get_stream("IDEMPOTENCY")
        .await
        .unwrap()
        .cached_info()
        .clone();
    assert_eq!(info.config.num_replicas, 3);
    let kv_info = js
        .get_stream("KV_idempotency")
        .await
        .unwrap()
        .cached_info()
        .clone();
    assert_eq!(kv_info.config.num_replicas, 3);

    let subject = StageSubject {
        stage: InputStage::Idempotency,
        address: Address::parse("acme", "ops", "slack").unwrap(),
    }
    .format(&topology.namespace);
    for i in 0..50 {
        publish(js.clone(), subject.clone(), format!("before-{i}"))
            .await
            .expect("publish before failover");
    }

    // Kill the node that leads the stream; the others elect a new leader and keep accepting
    // writes.
    let leader = info
        .cluster
        .and_then(|c| c.leader)
        .expect("a stream leader");
    let victim = (0..3)
        .find(|&i| cluster.name(i) == leader)
        .expect("leader is one of ours");
    cluster.kill(victim);
    for i in 0..50 {
        let ack = wait_for(
            "a publish ack during failover",
            Duration::from_secs(30),
            || publish(js.clone(), subject.clone(), format!("during-{i}")),
        )
        .await;
        assert_eq!(ack.stream, "IDEMPOTENCY");
    }

    cluster.start_again(victim).await;
    cluster.wait_healthy().await;
    // Every replica, the restarted one included, catches up on all 100 messages.
    wait_for(
        "all replicas current with 100 messages",
        Duration::from_secs(30),
        || {
            let js = js.clone();
            async move {
                let info = js
                    .get_stream("IDEMPOTENCY")
                    .await
                    .ok()?
                    .cached_info()
                    .clone();
                let cluster = info.cluster?;
                let all_current = cluster.replicas.len() == 2
                    && cluster.replicas.iter().all(|r| r.current && !r.offline);
                (info.state.messages == 100 && all_current).then_some(())
            }
        },
    )
    .await;

    let again = provision(&admin, &topology, false).await.unwrap();
    assert!(
        !again.changed_anything() && !again.has_drift(),
        "{again:#?}"
    );
}

#[tokio::test]
async fn tenant_streams_are_led_by_every_node_of_the_cluster() {
    let (_cluster, _client, admin, topology) = cluster().await;
    // Idempotent: a request lost to a meta-leader change (it times out) is made again.
    wait_for(
        "the topology provisioned",
        Duration::from_secs(120),
        || async { provision(&admin, &topology, false).await.ok() },
    )
    .await;
    // 24 tenants, each with its R3 ingress stream: JetStream elects each stream's leader on
    // its own, so no node leads them all (with 24 independent elections over 3 nodes, all on
    // one node has a probability of 3 / 3^24).
    let quota = switchyard_topology::TenantQuota {
        max_bytes: Some(1 << 20),
        max_msgs: None,
    };
    let mut leaders: std::collections::BTreeMap<String, usize> = Default::default();
    for i in 0..24 {
        let tenant = switchyard_keys::TenantId::new(format!("t{i}")).unwrap();
        switchyard_topology::provision_tenant(&admin, &topology, &tenant, quota, false)
            .await
            .unwrap();
        let name = topology
            .tenant_stream_name(switchyard_topology::StreamName::Ingress, &tenant)
            .unwrap();
        let leader = wait_for("the stream's leader", Duration::from_secs(30), || async {
            let mut stream = admin.get_stream(&name).await.ok()?;
            stream.info().await.ok()?.cluster.as_ref()?.leader.clone()
        })
        .await;
        *leaders.entry(leader).or_default() += 1;
    }
    eprintln!("tenant stream leaders per node: {leaders:?}");
    assert!(
        leaders.len() >= 2,
        "every tenant stream led by one node: {leaders:?}"
    );
}
