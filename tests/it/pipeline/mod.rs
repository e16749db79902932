//! The whole delivery path running in-process against a real nats-server and a real HTTP
//! sink: ingress → idempotency → backpressure → egress → webhook.

mod attempts;
mod conservation;
mod crash;
mod delivery;
mod destinations;
mod isolation;
mod sink;
mod trace;

use std::time::Duration;

use async_nats::HeaderMap;
use async_nats::jetstream::{self, consumer::pull, publish::PublishAck};
use switchyard_dlq::DlqEntry;
use switchyard_fixtures::dlq_entries;
use switchyard_keys::{RateKey, RateRecord, RateScope, RouteKey, RouteTeam, TenantId};
use switchyard_registry::{LimitRecord, Route, Store, TenantRecord, WebhookRoute, WebhookSecret};
use switchyard_subjects::Namespace;
use switchyard_testkit::{NatsCluster, NatsServer, wait_for};
use switchyard_topology::{ConsumerName, DeploymentConfig, provision};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

pub use sink::{Sink, signature_is_valid};

pub const SECRET: &str = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Svc {
    Ingress,
    Idempotency,
    Backpressure,
    Egress,
}

struct Running {
    svc: Svc,
    http_addr: std::net::SocketAddr,
    shutdown: CancellationToken,
    task: JoinHandle<Result<(), switchyard_service::LaunchError>>,
}

/// The NATS the pipeline runs on: one server, or a 3-node cluster with R3 streams.
pub enum Nats {
    Single(NatsServer),
    Cluster(NatsCluster),
}

impl Nats {
    /// The client URL(s).
    pub fn url(&self) -> String {
        match self {
            Nats::Single(s) => s.url(),
            Nats::Cluster(c) => c.url(),
        }
    }

    /// The single server (tests that restart it).
    pub fn single(&mut self) -> &mut NatsServer {
        match self {
            Nats::Single(s) => s,
            Nats::Cluster(_) => panic!("this pipeline runs on a cluster"),
        }
    }

    /// The cluster (tests that kill nodes).
    pub fn cluster(&mut self) -> &mut NatsCluster {
        match self {
            Nats::Cluster(c) => c,
            Nats::Single(_) => panic!("this pipeline runs on one server"),
        }
    }
}

pub struct Pipeline {
    pub server: Nats,
    pub js: jetstream::Context,
    pub sink: Sink,
    pub client: async_nats::Client,
    services: Vec<Running>,
    tenants: Vec<TenantId>,
}

/// A client made as the service binaries make theirs (`switchyard_runtime::nats::connect`),
/// so that its reconnections after a server restart reach the consume loops as they do there.
async fn service_client(url: String) -> async_nats::Client {
    let config = switchyard_runtime::config::NatsConfig {
        url,
        ..Default::default()
    };
    switchyard_runtime::nats::connect(&config)
        .await
        .expect("a connection to the test server")
}

impl Pipeline {
    pub async fn start(tenants: &[&str]) -> Self {
        let server = NatsServer::start().await;
        let client = service_client(server.url()).await;
        Self::start_on(Nats::Single(server), client, 1, tenants).await
    }

    /// The pipeline on a 3-node cluster, every stream and bucket replicated 3 times.
    pub async fn start_cluster(tenants: &[&str]) -> Self {
        let cluster = NatsCluster::start().await;
        let client = service_client(cluster.url()).await;
        cluster.wait_for_meta_leader(&client).await;
        Self::start_on(Nats::Cluster(cluster), client, 3, tenants).await
    }

    async fn start_on(
        server: Nats,
        client: async_nats::Client,
        replicas: usize,
        tenants: &[&str],
    ) -> Self {
        switchyard_runtime::init_for_tests();
        let mut admin = jetstream::new(client.clone());
        admin.set_timeout(Duration::from_secs(30));
        let deployment = DeploymentConfig {
            replicas: Some(replicas),
            ..Default::default()
        };
        // Provisioning is idempotent: a request lost to a meta-leader change on a busy cluster
        // (it times out) is simply made again.
        let resolved = deployment.resolve().unwrap();
        wait_for(
            "the topology provisioned",
            Duration::from_secs(120),
            || async { provision(&admin, &resolved, false).await.ok() },
        )
        .await;
        let js = jetstream::new(client.clone());
        let topology = deployment.resolve().unwrap();
        for tenant in tenants {
            switchyard_fixtures::enable_tenant_in(
                &admin,
                &topology,
                tenant,
                &TenantRecord::enabled(),
            )
            .await;
        }
        let sink = Sink::start().await;
        let mut pipeline = Self {
            server,
            js,
            sink,
            client,
            services: Vec::new(),
            tenants: tenants.iter().map(|t| TenantId::new(*t).unwrap()).collect(),
        };
        for svc in [
            Svc::Ingress,
            Svc::Idempotency,
            Svc::Backpressure,
            Svc::Egress,
        ] {
            pipeline.start_service(svc).await;
        }
        pipeline
    }

    pub async fn start_service(&mut self, svc: Svc) {
        self.start_service_tuned(svc, |_| {}).await;
    }

    /// [`Self::start_service`], with egress's settings adjusted by `tune_egress` after the
    /// pipeline tests' own.
    pub async fn start_service_tuned(
        &mut self,
        svc: Svc,
        tune_egress: impl FnOnce(&mut switchyard_egress::EgressConfig),
    ) {
        let shutdown = CancellationToken::new();
        let url = self.server.url();
        let client = self.client.clone();
        let any_port = "127.0.0.1:0".parse().unwrap();
        let running = match svc {
            Svc::Ingress => {
                let mut config = switchyard_ingress::IngressConfig::load(None).unwrap();
                (config.nats.url, config.http.listen) = (url, any_port);
                switchyard_ingress::start(config, client, shutdown.clone()).await
            }
            Svc::Idempotency => {
                let mut config = switchyard_idempotency::IdempotencyConfig::load(None).unwrap();
                (config.nats.url, config.http.listen) = (url, any_port);
                switchyard_idempotency::start(config, client, shutdown.clone()).await
            }
            Svc::Backpressure => {
                let mut config = switchyard_backpressure::BackpressureConfig::load(None).unwrap();
                (config.nats.url, config.http.listen) = (url, any_port);
                switchyard_backpressure::start(config, client, shutdown.clone()).await
            }
            Svc::Egress => {
                let mut config = switchyard_egress::EgressConfig::load(None).unwrap();
                (config.nats.url, config.http.listen) = (url, any_port);
                config.egress.max_attempts = 3;
                config.egress.backoff_secs = vec![1];
                tune_egress(&mut config);
                switchyard_egress::start(config, client, shutdown.clone()).await
            }
        };
        let running = running.unwrap();
        self.services.push(Running {
            svc,
            http_addr: running.http_addr,
            shutdown,
            task: running.task,
        });
    }

    /// The value of `series` in `svc`'s `/metrics` (0 while absent).
    pub async fn metric(&self, svc: Svc, series: &str) -> f64 {
        let running = self
            .services
            .iter()
            .find(|r| r.svc == svc)
            .expect("the service runs");
        switchyard_testkit::metric(running.http_addr, series).await
    }

    /// Where `svc`'s probes and metrics answer.
    pub fn probes_addr(&self, svc: Svc) -> std::net::SocketAddr {
        self.services
            .iter()
            .find(|r| r.svc == svc)
            .expect("the service runs")
            .http_addr
    }

    /// The base URL of the running ingress's HTTP API.
    pub fn ingress_http(&self) -> String {
        let ingress = self
            .services
            .iter()
            .find(|r| r.svc == Svc::Ingress)
            .expect("ingress running");
        format!("http://{}", ingress.http_addr)
    }

    /// Kills a service the way a crash would: its tasks stop mid-flight, nothing is acked.
    pub fn kill(&mut self, svc: Svc) {
        let position = self
            .services
            .iter()
            .position(|r| r.svc == svc)
            .expect("service running");
        let running = self.services.remove(position);
        running.task.abort();
    }

    /// Stops one service gracefully (drain): what it holds is acked or handed back first.
    pub async fn stop_service(&mut self, svc: Svc) {
        let position = self
            .services
            .iter()
            .position(|r| r.svc == svc)
            .expect("service running");
        let running = self.services.remove(position);
        running.shutdown.cancel();
        running.task.await.unwrap().unwrap();
    }

    /// Stops every running service gracefully, keeping the server and the sink.
    pub async fn stop_services(&mut self) {
        for running in self.services.drain(..) {
            running.shutdown.cancel();
            running.task.await.unwrap().unwrap();
        }
    }

    /// Stops every service gracefully (drain).
    pub async fn stop(mut self) {
        for running in self.services.drain(..) {
            running.shutdown.cancel();
            running.task.await.unwrap().unwrap();
        }
    }

    /// Sets a webhook route to the sink's `path` for (tenant, team or default, platform).
    pub async fn route(&self, tenant: &str, team: Option<&str>, platform: &str, path: &str) {
        let routes: Store<RouteKey, Route> =
            Store::new(self.js.get_key_value("routes").await.unwrap());
        let key = RouteKey {
            tenant: tenant.parse().unwrap(),
            team: team.map_or(RouteTeam::Any, |t| RouteTeam::Team(t.parse().unwrap())),
            platform: platform.parse().unwrap(),
        };
        let route = Route::Webhook(WebhookRoute {
            url: self.sink.url(path),
            secret: WebhookSecret(SECRET.into()),
            timeout_ms: 5_000,
            max_in_flight: 32,
            headers: Default::default(),
            previous_secrets: Vec::new(),
            signing_key: None,
        });
        routes.put(&key, &route).await.unwrap();
    }

    /// Publishes a producer message onto its ingress subject.
    pub async fn publish(
        &self,
        tenant: &str,
        team: &str,
        platform: &str,
        id: &str,
        payload: &[u8],
    ) {
        self.publish_acked(tenant, team, platform, id, payload)
            .await;
    }

    /// [`Self::publish`], returning the stream's ack (retried until JetStream answers).
    pub async fn publish_acked(
        &self,
        tenant: &str,
        team: &str,
        platform: &str,
        id: &str,
        payload: &[u8],
    ) -> PublishAck {
        wait_for("a stored publish", Duration::from_secs(30), || {
            self.try_publish(tenant, team, platform, id, payload)
        })
        .await
    }

    /// One publish of a producer message with `Nats-Msg-Id: id`: the stream's ack, or `None`
    /// when the publish or its ack failed (the server down, a timeout). A message refused this
    /// way may still have been stored; publishing it again with the same id is deduplicated.
    pub async fn try_publish(
        &self,
        tenant: &str,
        team: &str,
        platform: &str,
        id: &str,
        payload: &[u8],
    ) -> Option<PublishAck> {
        let mut h = HeaderMap::new();
        h.insert("Nats-Msg-Id", id);
        let subject = ingress_subject(tenant, team, platform);
        self.js
            .publish_with_headers(subject, h, payload.to_vec().into())
            .await
            .ok()?
            .await
            .ok()
    }

    /// Sets `tenant`'s rate limit in the `rate-limits` bucket (admission marks: the defaults).
    pub async fn set_limit(&self, tenant: &str, rate_per_sec: f64, burst: u32) {
        let store: Store<RateKey, LimitRecord> =
            Store::new(self.js.get_key_value("rate-limits").await.unwrap());
        let key = RateKey {
            scope: RateScope::Tenant(TenantId::new(tenant).unwrap()),
            record: RateRecord::Limit,
        };
        let limit = LimitRecord {
            rate_per_sec,
            burst,
            backlog_high: None,
            backlog_low: None,
            backlog_high_bytes: None,
        };
        store.put(&key, &limit).await.unwrap();
    }

    pub async fn dlq(&self) -> Vec<DlqEntry> {
        dlq_entries(&self.js).await
    }

    /// Shortens every stage consumer's ack wait, so crash redeliveries come quickly: the
    /// declared consumers, each tenant's `ingress-worker` and each tenant's
    /// `backpressure-<tenant>` (created here if the backpressure service has not created it yet;
    /// the service opens it as it is).
    pub async fn shorten_ack_wait(&self, ack_wait: Duration) {
        let topology = DeploymentConfig::default().resolve().unwrap();
        let per_tenant = |name| {
            self.tenants
                .iter()
                .filter_map(|t| topology.tenant_consumer(name, t))
                .collect::<Vec<_>>()
        };
        for consumer in topology
            .consumers
            .iter()
            .filter(|c| !c.name.on_demand())
            .cloned()
            .chain(per_tenant(ConsumerName::IngressWorker))
        {
            let mut config = consumer.config.clone();
            config.ack_wait = ack_wait;
            self.js
                .update_consumer_on_stream(config, &consumer.stream)
                .await
                .unwrap();
        }
        for consumer in per_tenant(ConsumerName::BackpressureTenant) {
            let mut config = consumer.config.clone();
            config.ack_wait = ack_wait;
            self.js
                .create_consumer_on_stream(config, &consumer.stream)
                .await
                .unwrap();
        }
    }

    /// The `name` consumer of `tenant` as nats-server has it now, `None` when it has none.
    pub async fn tenant_consumer_info(
        &self,
        tenant: &str,
        name: ConsumerName,
    ) -> Option<jetstream::consumer::Info> {
        let topology = DeploymentConfig::default().resolve().unwrap();
        let declared = topology.tenant_consumer(name, &TenantId::new(tenant).unwrap())?;
        let durable = declared.config.durable_name.clone()?;
        let stream = self.js.get_stream_no_info(&declared.stream).await.ok()?;
        stream.consumer_info(&durable).await.ok()
    }

    /// Waits until the sink accepted (2xx) `n` distinct webhook ids and every stage has
    /// settled.
    pub async fn wait_delivered(&self, n: usize, timeout: Duration) {
        wait_for(&format!("{n} distinct deliveries"), timeout, || async {
            let ids: std::collections::HashSet<String> = self
                .sink
                .received()
                .into_iter()
                .filter(|r| r.delivered())
                .map(|r| r.webhook_id)
                .collect();
            (ids.len() >= n).then_some(())
        })
        .await;
        self.wait_settled(timeout).await;
    }

    /// Waits until no stage has pending or unacked messages.
    pub async fn wait_settled(&self, timeout: Duration) {
        wait_for("every stage to settle", timeout, || async {
            if switchyard_testkit::stored_count_in(
                &self.js,
                &switchyard_testkit::backpressure_streams(),
            )
            .await
                > 0
            {
                return None;
            }
            let ingress: Vec<(&str, String)> = self
                .tenants
                .iter()
                .map(|t| ("ingress-worker", format!("INGRESS_{t}")))
                .collect();
            let shared = [
                ("idempotency-worker", "IDEMPOTENCY".to_owned()),
                ("egress-worker", "EGRESS".to_owned()),
            ];
            for (consumer, stream) in ingress.into_iter().chain(shared) {
                let mut c = self
                    .js
                    .get_consumer_from_stream::<pull::Config, _, _>(consumer, stream)
                    .await
                    .ok()?;
                let info = c.info().await.ok()?;
                if info.num_pending > 0 || info.num_ack_pending > 0 {
                    return None;
                }
            }
            Some(())
        })
        .await;
    }
}

/// The ingress subject producers publish (tenant, team, platform) on.
pub fn ingress_subject(tenant: &str, team: &str, platform: &str) -> String {
    let subject = switchyard_subjects::StageSubject {
        stage: switchyard_subjects::InputStage::Ingress,
        address: switchyard_keys::Address::parse(tenant, team, platform).unwrap(),
    };
    switchyard_subjects::SubjectKind::format(&subject, &Namespace::default())
}
