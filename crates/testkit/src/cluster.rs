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
    /// JetStream meta leader). Free ports are found by binding and releasing them, so another
    /// process can take one before a server does: the whole cluster is then started again on
    /// fresh ports (at most three times).
    pub async fn start() -> Self {
        let mut attempt = 1;
        loop {
            let mut nodes = Self::nodes();
            for node in &mut nodes {
                node.spawn();
            }
            let mut failure = None;
            for node in &mut nodes {
                if let Err(failed) = node.try_wait_healthy().await {
                    failure = Some(failed);
                    break;
                }
            }
            // A node that lost a port race may be another than the one that failed to become
            // healthy (a node waits for its peers' routes): every log is looked at.
            let raced = failure.is_some()
                && nodes
                    .iter()
                    .any(|node| node.log_tail().contains("address already in use"));
            match failure {
                None => return Self { nodes },
                Some(_) if attempt < 3 && raced => {
                    for node in &mut nodes {
                        node.kill();
                    }
                    attempt += 1;
                }
                Some(failed) => panic!("{failed}"),
            }
        }
    }

    /// Three nodes on fresh loopback ports, routed to each other, not yet started.
    fn nodes() -> Vec<Node> {
        let route_ports: Vec<u16> = (0..3).map(|_| free_port()).collect();
        let routes = route_ports
            .iter()
            .map(|p| format!("nats-route://127.0.0.1:{p}"))
            .collect::<Vec<_>>()
            .join(",");
        route_ports
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
            .collect()
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

    /// A disaster: every node is killed (SIGKILL), every JetStream store deleted, and the
    /// cluster started again, empty, on the same ports.
    pub async fn wipe(&mut self) {
        for node in &mut self.nodes {
            node.kill();
            node.wipe_store();
        }
        for node in &mut self.nodes {
            node.spawn();
        }
        for node in &mut self.nodes {
            node.wait_healthy().await;
        }
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
        // The meta leader's view of its peers: both current, neither offline, three checks in
        // a row (a peer that just joined can be marked offline for a moment).
        let ports: Vec<u16> = self.nodes.iter().map(|n| n.monitor_port).collect();
        let mut steady = 0;
        wait_for(
            "the meta leader to see both peers current",
            Duration::from_secs(60),
            || {
                let ports = ports.clone();
                let ok = std::thread::spawn(move || peers_current(&ports))
                    .join()
                    .unwrap_or(false);
                steady = if ok { steady + 1 } else { 0 };
                let done = steady >= 3;
                async move { done.then_some(()) }
            },
        )
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

/// Whether the meta leader sees both other peers current and none offline: some node's `/jsz`
/// `meta_cluster` lists two replicas, both `"current": true` (a follower lists the peers it does
/// not follow as not current).
fn peers_current(monitor_ports: &[u16]) -> bool {
    monitor_ports.iter().any(|&port| {
        let Ok(mut stream) = std::net::TcpStream::connect(("127.0.0.1", port)) else {
            return false;
        };
        let _ = stream.set_read_timeout(Some(Duration::from_secs(2)));
        if std::io::Write::write_all(&mut stream, b"GET /jsz HTTP/1.0\r\nHost: localhost\r\n\r\n")
            .is_err()
        {
            return false;
        }
        let mut body = String::new();
        let _ = std::io::Read::read_to_string(&mut stream, &mut body);
        let compact: String = body.chars().filter(|c| !c.is_whitespace()).collect();
        let Some(start) = compact.find("\"meta_cluster\":") else {
            return false;
        };
        let meta = &compact[start..];
        let meta = &meta[..meta.find("\"cluster_size\"").unwrap_or(meta.len())];
        meta.matches("\"current\":true").count() >= 2 && !meta.contains("\"offline\":true")
    })
}
