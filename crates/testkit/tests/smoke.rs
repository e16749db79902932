//! The harness itself: a cluster starts, clients connect to one node or all, and a killed node
//! comes back on the same ports.

#[tokio::test]
async fn cluster_starts_restarts_and_clients_connect() {
    let mut cluster = switchyard_testkit::NatsCluster::start().await;
    cluster.client_to(0).await.flush().await.unwrap();
    let client = cluster.client().await;
    cluster.wait_for_meta_leader(&client).await;
    cluster.restart(1).await;
    cluster.client_to(1).await.flush().await.unwrap();
    cluster.wait_for_meta_leader(&client).await;
}
