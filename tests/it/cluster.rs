//! A 3-node cluster: R3 streams are provisioned and survive one node's restart.

use std::time::Duration;

use switchyard_keys::Address;
use switchyard_subjects::{InputStage, StageSubject, SubjectKind};
use switchyard_testkit::{NatsCluster, wait_for};
use switchyard_topology::{DeploymentConfig, Outcome, provision};

#[tokio::test]
async fn r3_streams_survive_a_node_restart() {
    let mut cluster = NatsCluster::start().await;
    let client = cluster.client().await;
    cluster.wait_for_meta_leader(&client).await;
    let js = async_nats::jetstream::new(client);
    let topology = DeploymentConfig {
        replicas: Some(3),
        ..Default::default()
    }
    .resolve()
    .unwrap();
    let report = provision(&js, &topology, false).await.unwrap();
    assert!(
        report.items.iter().all(|i| i.outcome == Outcome::Created),
        "{report:#?}"
    );

    let info = js
        .get_stream("INGRESS")
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

    let ns = &topology.namespace;
    let subject = StageSubject {
        stage: InputStage::Ingress,
        address: Address::parse("acme", "ops", "slack").unwrap(),
    }
    .format(ns);
    for i in 0..50 {
        js.publish(subject.clone(), format!("before-{i}").into())
            .await
            .unwrap()
            .await
            .unwrap();
    }

    // Kill the node that leads the ingress stream; the others elect a new leader and keep
    // accepting writes.
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
            || {
                let js = js.clone();
                let subject = subject.clone();
                async move {
                    js.publish(subject, format!("during-{i}").into())
                        .await
                        .ok()?
                        .await
                        .ok()
                }
            },
        )
        .await;
        assert_eq!(ack.stream, "INGRESS");
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
                let info = js.get_stream("INGRESS").await.ok()?.cached_info().clone();
                let cluster = info.cluster?;
                let all_current = cluster.replicas.len() == 2
                    && cluster.replicas.iter().all(|r| r.current && !r.offline);
                (info.state.messages == 100 && all_current).then_some(())
            }
        },
    )
    .await;

    let again = provision(&js, &topology, false).await.unwrap();
    assert!(
        !again.changed_anything() && !again.has_drift(),
        "{again:#?}"
    );
}
