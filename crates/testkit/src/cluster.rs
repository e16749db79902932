//! A 3-node JetStream cluster on loopback.

use std::time::Duration;

use crate::node::{Node, connect, free_port};
use crate::wait_for;

/// Three JetStream servers from `nats/server/cluster-n{1,2,3}.conf`, routed to each other on
/// free loopback ports, each with its own temporary store.
pub struct NatsCluster {
    nodes: Vec<Node>,
}

impl NatsCluster {
    /// Starts the three nodes and waits until every one is healthy (which includes knowing the
    /// JetStream meta leader).
    pub async fn start() -> Self {
        let route_ports: Vec<u16> = (0..3).map(|_| free_port()).collect();
        let routes = route_ports
            .iter()
            .map(|p| format!("nats-route://127.0.0.1:{p}"))
            .collect::<Vec<_>>()
            .join(",");
        let mut nodes: Vec<Node> = route_ports
            .iter()
            .enumerate()
            .map(|(i, port)| {
                let args = vec![
                    "--cluster".to_owned(),
                    format!("nats://127.0.0.1:{port}"),
                    "--routes".to_owned(),
                    routes.clone(),
                ];
                Node::new(
                    &format!("switchyard-n{}", i + 1),
                    &format!("cluster-n{}.conf", i + 1),
                    args,
                )
            })
            .collect();
        for node in &mut nodes {
            node.spawn();
        }
        for node in &mut nodes {
            node.wait_healthy().await;
        }
        Self { nodes }
    }

    /// Every node's client URL.
    pub fn urls(&self) -> Vec<String> {
        self.nodes.iter().map(Node::url).collect()
    }

    /// All client URLs, comma-separated (what `nats.url` accepts).
    pub fn url(&self) -> String {
        self.urls().join(",")
    }

    /// The server name of node `i` (0-based).
    pub fn name(&self, i: usize) -> &str {
        &self.nodes[i].name
    }

    /// The monitoring (HTTP) port of node `i`.
    pub fn monitor_port(&self, i: usize) -> u16 {
        self.nodes[i].monitor_port
    }

    /// The process id of node `i`, while it runs.
    pub fn pid(&self, i: usize) -> Option<u32> {
        self.nodes[i].pid()
    }

    /// A client that knows every node (it fails over when one dies).
    pub async fn client(&self) -> async_nats::Client {
        connect(&self.url()).await
    }

    /// A client connected to node `i` only.
    pub async fn client_to(&self, i: usize) -> async_nats::Client {
        connect(&self.nodes[i].url()).await
    }

    /// Kills node `i` with SIGKILL; its store is kept.
    pub fn kill(&mut self, i: usize) {
        self.nodes[i].kill();
    }

    /// Starts node `i` again on the same ports and store and waits until it is healthy.
    pub async fn start_again(&mut self, i: usize) {
        self.nodes[i].spawn();
        self.nodes[i].wait_healthy().await;
    }

    /// Kills node `i` and starts it again.
    pub async fn restart(&mut self, i: usize) {
        self.kill(i);
        self.start_again(i).await;
    }

    /// Waits until every running node reports healthy again.
    pub async fn wait_healthy(&mut self) {
        for node in self.nodes.iter_mut().filter(|n| n.is_running()) {
            node.wait_healthy().await;
        }
    }

    /// Waits until a JetStream request through `client` succeeds (a meta leader is elected)
    /// and an R3 stream can be placed: a meta leader can be elected while it still counts a
    /// peer as offline, and creating a replicated stream or bucket then fails with "no
    /// suitable peers for placement" (JetStream error 10005).
    pub async fn wait_for_meta_leader(&self, client: &async_nats::Client) {
        let js = async_nats::jetstream::new(client.clone());
        wait_for("a JetStream meta leader", Duration::from_secs(30), || {
            let js = js.clone();
            async move { js.query_account().await.ok() }
        })
        .await;
        wait_for(
            "every peer to be placeable (an R3 stream to be created)",
            Duration::from_secs(30),
            || {
                let js = js.clone();
                async move {
                    js.create_stream(async_nats::jetstream::stream::Config {
                        name: "TESTKIT_PLACEMENT_PROBE".into(),
                        subjects: vec!["testkit.placement.probe".into()],
                        num_replicas: 3,
                        ..Default::default()
                    })
                    .await
                    .ok()?;
                    js.delete_stream("TESTKIT_PLACEMENT_PROBE").await.ok()
                }
            },
        )
        .await;
    }
}
