//! The nats-server(s) a benchmark runs on: one node, or a 3-node cluster with every stream
//! and bucket replicated three times.

use switchyard_testkit::{NatsCluster, NatsServer};

use crate::report::current_rss;

/// One node or a cluster, started on free ports with temporary stores (gone on drop).
pub enum Servers {
    /// One node.
    Single(NatsServer),
    /// Three routed nodes.
    Cluster(NatsCluster),
}

impl Servers {
    /// Starts one node, or a 3-node cluster.
    pub async fn start(cluster: bool) -> Self {
        if cluster {
            let cluster = NatsCluster::start().await;
            let client = cluster.client().await;
            // Also waits until an R3 stream can be placed.
            cluster.wait_for_meta_leader(&client).await;
            Servers::Cluster(cluster)
        } else {
            Servers::Single(NatsServer::start().await)
        }
    }

    /// A client (of every node, on a cluster).
    pub async fn client(&self) -> async_nats::Client {
        match self {
            Servers::Single(server) => server.client().await,
            Servers::Cluster(cluster) => cluster.client().await,
        }
    }

    /// Every node's URL.
    pub fn urls(&self) -> Vec<String> {
        match self {
            Servers::Single(server) => vec![server.url()],
            Servers::Cluster(cluster) => cluster.urls(),
        }
    }

    /// Replicas for streams and buckets: 1 on one node, 3 on the cluster.
    pub fn replicas(&self) -> usize {
        match self {
            Servers::Single(_) => 1,
            Servers::Cluster(_) => 3,
        }
    }

    /// Each node's server name and process id.
    pub fn processes(&self) -> Vec<(String, u32)> {
        match self {
            Servers::Single(server) => server
                .pid()
                .map(|pid| vec![("nats-server".to_owned(), pid)])
                .unwrap_or_default(),
            Servers::Cluster(cluster) => (0..3)
                .filter_map(|i| Some((format!("nats-server {}", cluster.name(i)), cluster.pid(i)?)))
                .collect(),
        }
    }

    /// Every node's monitoring port.
    pub fn monitor_ports(&self) -> Vec<u16> {
        match self {
            Servers::Single(server) => vec![server.monitor_port()],
            Servers::Cluster(cluster) => (0..3).map(|i| cluster.monitor_port(i)).collect(),
        }
    }

    /// NATS messages each named client connection has sent (`in_msgs`) and received
    /// (`out_msgs`) so far, summed over the nodes' `/connz` and over connections of one name.
    pub fn messages_by_client(&self) -> Vec<(String, u64, u64)> {
        let mut out: Vec<(String, u64, u64)> = Vec::new();
        for port in self.monitor_ports() {
            let text = crate::pipeline::http_get(port, "/connz?limit=100000");
            let body = text.split_once("\r\n\r\n").map_or("", |(_, b)| b);
            let Ok(connz) = serde_json::from_str::<serde_json::Value>(body) else {
                continue;
            };
            for conn in connz["connections"].as_array().into_iter().flatten() {
                let name = conn["name"].as_str().unwrap_or("unnamed").to_owned();
                let (sent, received) = (
                    conn["in_msgs"].as_u64().unwrap_or(0),
                    conn["out_msgs"].as_u64().unwrap_or(0),
                );
                match out.iter_mut().find(|(n, _, _)| *n == name) {
                    Some((_, s, r)) => {
                        *s += sent;
                        *r += received;
                    }
                    None => out.push((name, sent, received)),
                }
            }
        }
        out
    }

    /// What runs, for the report's machine line.
    pub fn describe(&self) -> &'static str {
        Self::description(matches!(self, Servers::Cluster(_)))
    }

    /// What [`Servers::start`] with `cluster` runs, for a report's machine line.
    pub fn description(cluster: bool) -> &'static str {
        if cluster {
            "3-node cluster on this machine, file storage, R3"
        } else {
            "one node, file storage, R1"
        }
    }

    /// The resident memory of every node now, in bytes.
    pub fn resident(&self) -> Vec<(String, u64)> {
        self.processes()
            .into_iter()
            .filter_map(|(name, pid)| Some((name, current_rss(pid)?)))
            .collect()
    }
}
