//! Test support: a provisioned nats-server with egress running in-process, and a scripted
//! HTTP sink that records every request.

#![allow(dead_code, reason = "not every test uses every helper")]

use std::collections::{HashMap, VecDeque};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_nats::jetstream::{self, consumer};
use axum::Router;
use axum::body::Body;
use axum::extract::State;
use axum::http::{HeaderMap, Response, Uri};
use bytes::Bytes;
use futures::StreamExt;
use switchyard_dlq::DlqEntry;
use switchyard_egress::EgressConfig;
use switchyard_envelope::{
    Attempt, Envelope, EnvelopeId, SCHEMA_VERSION, SourceRef, TraceContext, headers,
};
use switchyard_keys::{Address, KvKey, MsgId, RouteKey};
use switchyard_registry::{Route, Store, WebhookRoute, WebhookSecret};
use switchyard_service::Handoff;
use switchyard_subjects::{InputStage, Namespace, StageSubject, SubjectKind};
use switchyard_testkit::{NatsServer, wait_for};
use time::OffsetDateTime;
use tokio::net::TcpListener;
use tokio::task::JoinHandle;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

/// The signing secret of every test webhook route.
pub const SECRET: &str = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";
/// The trace context every test envelope carries.
pub const TRACEPARENT: &str = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";

/// An address from literal ids.
pub fn address(tenant: &str, team: &str, platform: &str) -> Address {
    Address::parse(tenant, team, platform).unwrap()
}

/// A webhook route to `path` on `sink`.
pub fn webhook(sink: &Sink, path: &str) -> Route {
    Route::Webhook(WebhookRoute {
        url: format!("{}{path}", sink.base),
        secret: WebhookSecret(SECRET.into()),
        timeout_ms: 5000,
        max_in_flight: 16,
        headers: Default::default(),
        previous_secrets: Vec::new(),
        signing_key: None,
    })
}

/// Starts a nats-server, trying again when it lost its port to another process.
///
/// `switchyard_testkit::free_port` binds port 0 and releases it for the server to take; with
/// several test processes making outgoing connections, another socket occasionally takes the
/// port first and the server exits with "address already in use". The harness panics then, so
/// the start runs in a task and is retried.
async fn start_server() -> NatsServer {
    for _ in 0..2 {
        if let Ok(server) = tokio::spawn(NatsServer::start()).await {
            return server;
        }
        eprintln!("nats-server did not start (see above); retrying on fresh ports");
    }
    NatsServer::start().await
}

/// A server with the topology provisioned, and egress once started.
pub struct Harness {
    /// The server.
    pub server: NatsServer,
    /// A client of the test's own.
    pub client: async_nats::Client,
    /// Its JetStream context.
    pub js: jetstream::Context,
    /// The deployment namespace (no prefix).
    pub ns: Namespace,
    routes: Store<RouteKey, Route>,
    shutdown: CancellationToken,
    egress: Option<JoinHandle<Result<(), switchyard_service::LaunchError>>>,
    /// More egress replicas ([`Harness::start_replicas`]).
    replicas: Vec<JoinHandle<Result<(), switchyard_service::LaunchError>>>,
    probes: Option<SocketAddr>,
    next_seq: AtomicU64,
}

impl Harness {
    /// Starts a server and provisions the topology (egress is not running yet).
    pub async fn new() -> Self {
        switchyard_runtime::init_for_tests();
        let _ = rustls::crypto::ring::default_provider().install_default();
        let server = start_server().await;
        let client = server.client().await;
        let js = jetstream::new(client.clone());
        let topology = switchyard_topology::DeploymentConfig::default()
            .resolve()
            .unwrap();
        let report = switchyard_topology::provision(&js, &topology, false)
            .await
            .unwrap();
        assert!(!report.has_drift());
        let kv = js.get_key_value("routes").await.unwrap();
        Self {
            server,
            client,
            js,
            ns: topology.namespace,
            routes: Store::new(kv),
            shutdown: CancellationToken::new(),
            egress: None,
            replicas: Vec::new(),
            probes: None,
            next_seq: AtomicU64::new(1),
        }
    }

    /// Stores a route.
    pub async fn put_route(&self, key: &str, route: &Route) {
        self.routes
            .put(&RouteKey::parse(key).unwrap(), route)
            .await
            .unwrap();
    }

    /// Stores raw bytes as a route.
    pub async fn put_raw_route(&self, key: &str, bytes: &'static [u8]) {
        self.routes
            .bucket()
            .put(key, Bytes::from_static(bytes))
            .await
            .unwrap();
    }

    /// Starts egress in-process with the test defaults, adjusted by `tune`.
    pub async fn start(&mut self, tune: impl FnOnce(&mut EgressConfig)) {
        let mut config = EgressConfig::load(None).unwrap();
        config.nats.url = self.server.url();
        tune(&mut config);
        config.http.listen = "127.0.0.1:0".parse().unwrap();
        let client = self.server.client().await;
        let running = switchyard_egress::start(config, client, self.shutdown.clone())
            .await
            .unwrap();
        self.probes = Some(running.http_addr);
        self.egress = Some(running.task);
        let url = format!("http://{}/readyz", self.probes.unwrap());
        wait_for("egress to be ready", Duration::from_secs(30), || {
            let url = url.clone();
            async move {
                let response = reqwest::get(&url).await.ok()?;
                response.status().is_success().then_some(())
            }
        })
        .await;
    }

    /// Starts `n` more egress replicas beside the first, each on its own connection, with the
    /// same settings as [`Harness::start`] would give them after `tune`.
    pub async fn start_replicas(&mut self, n: usize, tune: impl Fn(&mut EgressConfig)) {
        for _ in 0..n {
            let mut config = EgressConfig::load(None).unwrap();
            config.nats.url = self.server.url();
            tune(&mut config);
            config.http.listen = "127.0.0.1:0".parse().unwrap();
            let client = self.server.client().await;
            let running = switchyard_egress::start(config, client, self.shutdown.clone())
                .await
                .unwrap();
            self.replicas.push(running.task);
        }
    }

    /// The operational events of `kind` about tenant acme in the EVENTS stream: how many,
    /// and the last one's JSON.
    pub async fn events(&self, kind: &str) -> (u64, Option<serde_json::Value>) {
        let subject = format!("events.v1.acme.{kind}");
        let stream = self.js.get_stream_no_info("EVENTS").await.unwrap();
        let mut subjects = stream.info_with_subjects(&subject).await.unwrap();
        let mut count = 0;
        while let Some((_, n)) = futures::TryStreamExt::try_next(&mut subjects)
            .await
            .unwrap()
        {
            count += n as u64;
        }
        if count == 0 {
            return (0, None);
        }
        let last = stream.direct_get_last_for_subject(&subject).await.unwrap();
        (count, Some(serde_json::from_slice(&last.payload).unwrap()))
    }

    /// GETs a probe endpoint's body.
    pub async fn probe(&self, path: &str) -> String {
        let url = format!("http://{}{path}", self.probes.unwrap());
        reqwest::get(url).await.unwrap().text().await.unwrap()
    }

    /// Publishes a fresh envelope onto `egress.v1.<address>`, as backpressure would.
    pub async fn publish(
        &self,
        address: &Address,
        payload: Bytes,
        content_type: Option<&str>,
    ) -> Envelope {
        self.publish_with(address, payload, content_type, &[]).await
    }

    /// [`Harness::publish`], with headers of the producer's own (say `X-Order`) travelling
    /// along, as ingress passes them on.
    pub async fn publish_with(
        &self,
        address: &Address,
        payload: Bytes,
        content_type: Option<&str>,
        producer_headers: &[(&str, &str)],
    ) -> Envelope {
        self.publish_received(
            address,
            payload,
            content_type,
            producer_headers,
            OffsetDateTime::now_utc(),
            0,
        )
        .await
    }

    /// [`Harness::publish_with`] of an envelope received at `received_at` and replayed
    /// `replay` times.
    pub async fn publish_received(
        &self,
        address: &Address,
        payload: Bytes,
        content_type: Option<&str>,
        producer_headers: &[(&str, &str)],
        received_at: OffsetDateTime,
        replay: u32,
    ) -> Envelope {
        let sequence = self.next_seq.fetch_add(1, Ordering::Relaxed);
        let source = SourceRef {
            stream: "INGRESS".into(),
            sequence,
        };
        let envelope = Envelope {
            id: EnvelopeId::derive(&source, received_at),
            address: address.clone(),
            msg_id: MsgId::new(format!("order {sequence}")).unwrap(),
            received_at,
            content_type: content_type.map(str::to_owned),
            trace: TraceContext {
                traceparent: Some(TRACEPARENT.into()),
                tracestate: None,
            },
            schema_version: SCHEMA_VERSION,
            attempt: Attempt {
                delivery: 0,
                replay,
            },
            source,
            destination: None,
        };
        let mut producer = async_nats::HeaderMap::new();
        for (name, value) in producer_headers {
            producer.insert(*name, *value);
        }
        let mut h = Handoff::headers(&envelope, Some(&producer));
        h.insert(
            headers::NATS_MSG_ID,
            envelope.hop_msg_id(switchyard_keys::Stage::Egress),
        );
        let subject = StageSubject {
            stage: InputStage::Egress,
            address: address.clone(),
        }
        .format(&self.ns);
        self.js
            .publish_with_headers(subject, h, payload)
            .await
            .unwrap()
            .await
            .unwrap();
        envelope
    }

    /// Lowers `EGRESS`'s limit to `max_messages` and stores `fillers` messages no consumer
    /// reads (on `delay.v1.egress.filler.…`), to bring it to its high-water mark.
    pub async fn fill_egress(&self, max_messages: i64, fillers: usize) {
        switchyard_testkit::set_max_messages(&self.js, "EGRESS", max_messages).await;
        for i in 0..fillers {
            self.js
                .publish(format!("delay.v1.egress.filler.ops.slack.f{i}"), "x".into())
                .await
                .unwrap()
                .await
                .unwrap();
        }
    }

    /// Removes [`Harness::fill_egress`]'s fillers: room again.
    pub async fn remove_fillers(&self) {
        self.js
            .get_stream("EGRESS")
            .await
            .unwrap()
            .purge()
            .filter("delay.v1.egress.filler.>")
            .await
            .unwrap();
    }

    /// Takes every pending message off the egress consumer and naks it, as a copy that
    /// crashed would leave it: each is then redelivered with a delivery count of 2.
    pub async fn nak_pending(&self) {
        let consumer: consumer::PullConsumer = self
            .js
            .get_consumer_from_stream("egress-worker", "EGRESS")
            .await
            .unwrap();
        let mut batch = consumer
            .fetch()
            .max_messages(100)
            .expires(Duration::from_secs(1))
            .messages()
            .await
            .unwrap();
        while let Some(message) = batch.next().await {
            message
                .unwrap()
                .ack_with(jetstream::AckKind::Nak(None))
                .await
                .unwrap();
        }
    }

    /// Every DLQ entry, read with a plain (no-ack) JetStream consumer: nothing is removed.
    pub async fn dlq(&self) -> Vec<DlqEntry> {
        let stream = self.js.get_stream("DLQ").await.unwrap();
        let reader = stream
            .create_consumer(consumer::pull::Config {
                ack_policy: consumer::AckPolicy::None,
                deliver_policy: consumer::DeliverPolicy::All,
                inactive_threshold: Duration::from_secs(30),
                ..Default::default()
            })
            .await
            .unwrap();
        let pending = usize::try_from(reader.cached_info().num_pending).unwrap();
        let mut entries = Vec::new();
        if pending == 0 {
            return entries;
        }
        let mut batch = reader
            .fetch()
            .max_messages(pending)
            .expires(Duration::from_secs(5))
            .messages()
            .await
            .unwrap();
        while let Some(message) = batch.next().await {
            let message = message.unwrap();
            let info = message.info().unwrap();
            let entry = DlqEntry::from_message(
                &self.ns,
                info.stream_sequence,
                info.published,
                &message.subject,
                message.headers.as_ref(),
                message.payload.clone(),
            )
            .unwrap();
            entries.push(entry);
            if entries.len() == pending {
                break;
            }
        }
        entries
    }

    /// Waits for the DLQ entry of `envelope`.
    pub async fn dlq_entry(&self, envelope: &Envelope) -> DlqEntry {
        let id = envelope.id.to_string();
        wait_for(
            &format!("the dlq entry of {id}"),
            Duration::from_secs(30),
            || async {
                self.dlq().await.into_iter().find(|e| {
                    e.original_headers
                        .get(headers::ID)
                        .is_some_and(|v| v.as_str() == id)
                })
            },
        )
        .await
    }

    /// Cancels egress and checks it drains and returns cleanly.
    pub async fn stop(mut self) {
        self.shutdown.cancel();
        for replica in self.replicas.drain(..) {
            tokio::time::timeout(Duration::from_secs(30), replica)
                .await
                .expect("an egress replica stops within 30 s")
                .unwrap()
                .unwrap();
        }
        if let Some(egress) = self.egress.take() {
            tokio::time::timeout(Duration::from_secs(30), egress)
                .await
                .expect("egress stops within 30 s")
                .unwrap()
                .unwrap();
        }
    }
}

/// One scripted answer of the sink.
#[derive(Debug, Clone)]
pub struct Reply {
    status: u16,
    headers: Vec<(String, String)>,
    body: String,
    hang: Option<Duration>,
    stall_body: bool,
}

impl Reply {
    /// An empty answer with `status`.
    pub fn status(status: u16) -> Self {
        Self {
            status,
            headers: Vec::new(),
            body: String::new(),
            hang: None,
            stall_body: false,
        }
    }

    /// Adds a response header.
    pub fn header(mut self, name: &str, value: &str) -> Self {
        self.headers.push((name.to_owned(), value.to_owned()));
        self
    }

    /// Sets the body.
    pub fn body(mut self, body: &str) -> Self {
        self.body = body.to_owned();
        self
    }

    /// Waits this long before answering.
    pub fn hang(mut self, after: Duration) -> Self {
        self.hang = Some(after);
        self
    }

    /// Sends the status, headers and body, then never ends the body.
    pub fn stall_body(mut self) -> Self {
        self.stall_body = true;
        self
    }
}

/// A request the sink received.
#[derive(Debug, Clone)]
pub struct Recorded {
    /// When it arrived.
    pub at: Instant,
    /// Its headers.
    pub headers: HeaderMap,
    /// Its body.
    pub body: Bytes,
    /// The status it was answered with.
    pub status: u16,
}

struct Script {
    queue: VecDeque<Reply>,
    then: Reply,
}

#[derive(Default)]
struct SinkState {
    requests: HashMap<String, Vec<Recorded>>,
    scripts: HashMap<String, Script>,
    /// Requests being answered now, and the most ever at once, per path.
    in_flight: HashMap<String, (usize, usize)>,
}

/// Counts a request as in flight until dropped (answered, or abandoned by the client).
struct InFlight {
    state: Arc<Mutex<SinkState>>,
    path: String,
}

impl InFlight {
    fn new(state: &Arc<Mutex<SinkState>>, path: &str) -> Self {
        let mut guard = state.lock().unwrap();
        let (now, max) = guard.in_flight.entry(path.to_owned()).or_default();
        *now += 1;
        *max = (*max).max(*now);
        Self {
            state: state.clone(),
            path: path.to_owned(),
        }
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        if let Ok(mut state) = self.state.lock()
            && let Some((now, _)) = state.in_flight.get_mut(&self.path)
        {
            *now -= 1;
        }
    }
}

/// An HTTP sink on 127.0.0.1 answering each path from its script (200 by default).
#[derive(Clone)]
pub struct Sink {
    /// `http://127.0.0.1:<port>`.
    pub base: String,
    state: Arc<Mutex<SinkState>>,
}

impl Sink {
    /// Starts the sink.
    pub async fn start() -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let base = format!("http://{}", listener.local_addr().unwrap());
        let state = Arc::new(Mutex::new(SinkState::default()));
        let app = Router::new().fallback(answer).with_state(state.clone());
        tokio::spawn(async move { axum::serve(listener, app).await });
        Self { base, state }
    }

    /// Answers `path` with `replies` in order, then with `then` forever.
    pub fn script(&self, path: &str, replies: Vec<Reply>, then: Reply) {
        self.state.lock().unwrap().scripts.insert(
            path.to_owned(),
            Script {
                queue: replies.into(),
                then,
            },
        );
    }

    /// The requests `path` received, in order.
    pub fn requests(&self, path: &str) -> Vec<Recorded> {
        let state = self.state.lock().unwrap();
        state.requests.get(path).cloned().unwrap_or_default()
    }

    /// How many requests `path` received.
    pub fn count(&self, path: &str) -> usize {
        self.requests(path).len()
    }

    /// The most requests `path` was answering at once.
    pub fn max_in_flight(&self, path: &str) -> usize {
        let state = self.state.lock().unwrap();
        state.in_flight.get(path).map_or(0, |(_, max)| *max)
    }

    /// The statuses `path` answered, in order.
    pub fn statuses(&self, path: &str) -> Vec<u16> {
        self.requests(path).iter().map(|r| r.status).collect()
    }
}

async fn answer(
    State(state): State<Arc<Mutex<SinkState>>>,
    uri: Uri,
    headers: HeaderMap,
    body: Bytes,
) -> Response<Body> {
    let path = uri.path().to_owned();
    let _in_flight = InFlight::new(&state, &path);
    let reply = {
        let mut state = state.lock().unwrap();
        let reply = match state.scripts.get_mut(&path) {
            Some(script) => script
                .queue
                .pop_front()
                .unwrap_or_else(|| script.then.clone()),
            None => Reply::status(200),
        };
        state.requests.entry(path).or_default().push(Recorded {
            at: Instant::now(),
            headers,
            body,
            status: reply.status,
        });
        reply
    };
    if let Some(after) = reply.hang {
        tokio::time::sleep(after).await;
    }
    let mut response = Response::builder().status(reply.status);
    for (name, value) in &reply.headers {
        response = response.header(name, value);
    }
    if reply.stall_body {
        let first = futures::stream::once(async move { Ok::<_, std::io::Error>(reply.body) });
        let body = futures::StreamExt::chain(first, futures::stream::pending());
        return response.body(Body::from_stream(body)).unwrap();
    }
    response.body(Body::from(reply.body)).unwrap()
}

/// Waits until `acks` (a subscription to `$JS.ACK.EGRESS.>`) has carried `n` progress acks
/// (`+WPI`): a message is being held in place, tried again after each.
pub async fn progress_acks(acks: &mut async_nats::Subscriber, n: usize) {
    let mut seen = 0;
    while seen < n {
        let ack = tokio::time::timeout(Duration::from_secs(30), acks.next())
            .await
            .expect("progress acks")
            .expect("the subscription is open");
        if &ack.payload[..] == b"+WPI" {
            seen += 1;
        }
    }
}
