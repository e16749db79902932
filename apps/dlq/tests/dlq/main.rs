//! The dlq service against a real nats-server, in one test binary: the safety net and sweep
//! (`safety_net`), replay jobs (`jobs`), stats and alerts (`stats`), and the DLQ wire format
//! read with a plain client (`wire_format`).

mod events_webhook;
mod jobs;
mod safety_net;
mod stats;
mod wire_format;

use std::time::Duration;

use async_nats::HeaderMap;
use async_nats::jetstream::{self, consumer::pull};
use bytes::Bytes;
use switchyard_dlq::{DeadLetter, DlqCode};
use switchyard_dlq_service::DlqConfig;
use switchyard_envelope::Envelope;
use switchyard_fixtures::{Orders, Provisioned};
use switchyard_keys::Stage;
use switchyard_service::Handoff;
use switchyard_subjects::{InputStage, Namespace};
use switchyard_testkit::NatsServer;
use switchyard_topology::DeploymentConfig;
use tokio_util::sync::CancellationToken;

/// A provisioned server and a JetStream context on it.
pub struct Env {
    /// The server.
    pub server: NatsServer,
    /// The test's own connection.
    pub client: async_nats::Client,
    /// JetStream on it.
    pub js: jetstream::Context,
}

impl Env {
    /// Starts a server and provisions the declared topology.
    pub async fn start() -> Self {
        let Provisioned { server, client, js } = Provisioned::start().await;
        Self { server, client, js }
    }

    /// Test settings: short leases and scans, no sweep, quick rescues, alerts off.
    pub fn config(&self) -> DlqConfig {
        let mut config = DlqConfig::defaults().unwrap();
        config.nats.url = self.server.url();
        config.http.listen = "127.0.0.1:0".parse().unwrap();
        config.safety_net.rescue_delay_ms = 200;
        config.safety_net.sweep_interval_secs = 0;
        config.jobs.lease_secs = 3;
        config.jobs.scan_interval_secs = 1;
        config.stats.lease_secs = 3;
        config.alerts.threshold = 0;
        config
    }

    /// Starts a dlq service instance with its own connection.
    pub async fn service(&self, config: DlqConfig) -> Service {
        let shutdown = CancellationToken::new();
        let client = self.server.client().await;
        let running = switchyard_dlq_service::start(config, client, shutdown.clone())
            .await
            .unwrap();
        Service::new(running, shutdown)
    }

    /// Makes a declared consumer give up fast: `max_deliver` deliveries, `ack_wait` each.
    pub async fn tighten(
        &self,
        stream: &str,
        consumer: &str,
        max_deliver: i64,
        ack_wait: Duration,
    ) {
        let topology = DeploymentConfig::default().resolve().unwrap();
        let typed =
            switchyard_topology::ConsumerName::from_base(consumer).expect("a declared consumer");
        let mut config: pull::Config = topology.consumer(typed).unwrap().config.clone();
        config.max_deliver = max_deliver;
        config.ack_wait = ack_wait;
        self.js
            .get_stream(stream)
            .await
            .unwrap()
            .update_consumer(config)
            .await
            .unwrap();
    }
}

/// A running dlq service instance.
pub type Service = switchyard_fixtures::Service<String>;

/// How this suite's messages look: third delivery, a bare `{"order":n}` payload, a 12 ms
/// "unavailable" attempt.
pub const ORDERS: Orders = Orders {
    deliveries: 3,
    text: None,
    failure: (12, "unavailable"),
};

/// The envelope ingress would have stamped on message `n` of `tenant`.
pub fn envelope(tenant: &str, n: u64) -> Envelope {
    ORDERS.envelope(tenant, n)
}

/// The payload of message `n`.
pub fn payload(n: u64) -> Bytes {
    ORDERS.payload(n)
}

/// Hands message `n` of `tenant` to a stage's input stream, as the stage before would.
pub async fn hand_to(js: &jetstream::Context, stage: InputStage, tenant: &str, n: u64) -> Envelope {
    let env = envelope(tenant, n);
    Handoff::new(js.clone(), Namespace::default())
        .forward(stage, &env, Handoff::headers(&env, None), payload(n))
        .await
        .unwrap();
    env
}

/// The record egress would write for message `n` of `tenant`.
pub fn egress_record(tenant: &str, n: u64, code: DlqCode) -> (DeadLetter, HeaderMap) {
    ORDERS.record(
        &Namespace::default(),
        Stage::Egress,
        code,
        n,
        &envelope(tenant, n),
    )
}

/// Writes `count` egress entries of `tenant` (messages `first..first+count`) into the DLQ, as
/// egress would; returns their DLQ sequences.
pub async fn seed(
    js: &jetstream::Context,
    tenant: &str,
    first: u64,
    count: u64,
    code: DlqCode,
) -> Vec<u64> {
    let ns = Namespace::default();
    let mut acks = Vec::new();
    for n in first..first + count {
        acks.push(
            ORDERS
                .publish(js, &ns, egress_record(tenant, n, code), n)
                .await,
        );
    }
    let mut seqs = Vec::new();
    for ack in acks {
        seqs.push(ack.await.unwrap().sequence);
    }
    seqs
}
