//! The NATS permissions model (`nats/server/accounts.conf`, loaded through
//! `nats/server/single-auth.conf`) against a real nats-server: a tenant publishes only to its
//! own ingress subjects and reads nothing but its own replies; each service user can run its
//! service end to end, and is refused what its service does not need.
//!
//! Subjects are written out literally here, as the permission file writes them; one test checks
//! that the taxonomy (`libs/subjects`) formats exactly these literals, so the two cannot drift.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_nats::jetstream::{self, consumer::pull};
use async_nats::{ConnectOptions, Event, HeaderMap};
use futures::StreamExt;
use switchyard_keys::{Address, RouteKey, RouteTeam, Stage, TenantId, TenantKey};
use switchyard_registry::{Route, Store, TenantRecord};
use switchyard_subjects::{
    DelaySubject, DlqSubject, InputStage, Namespace, ReceiptSubject, StageSubject, SubjectKind,
};
use switchyard_testkit::{
    PINNED_VERSION, free_port, server_config_dir, stored_messages, wait_for, workspace_root,
};
use switchyard_topology::{DeploymentConfig, provision};
use tokio_util::sync::CancellationToken;

/// How long any single condition may take.
const TIMEOUT: Duration = Duration::from_secs(30);

/// The users `accounts.conf` declares, with the environment variable each password comes from.
const USERS: &[(&str, &str)] = &[
    ("admin", "SWITCHYARD_NATS_ADMIN_PASSWORD"),
    ("ingress", "SWITCHYARD_NATS_INGRESS_PASSWORD"),
    ("idempotency", "SWITCHYARD_NATS_IDEMPOTENCY_PASSWORD"),
    ("egress", "SWITCHYARD_NATS_EGRESS_PASSWORD"),
    ("tenant-acme", "SWITCHYARD_NATS_TENANT_ACME_PASSWORD"),
    ("tenant-globex", "SWITCHYARD_NATS_TENANT_GLOBEX_PASSWORD"),
];

/// The test password of `user` (the server gets it through its environment).
fn password(user: &str) -> String {
    format!("test-{user}-{}", std::process::id())
}

/// The pinned nats-server binary (the one the testkit uses), its version checked.
fn nats_server_binary() -> PathBuf {
    let path = std::env::var_os("NATS_SERVER_BIN")
        .map(PathBuf::from)
        .unwrap_or_else(|| workspace_root().join(".tools/bin/nats-server"));
    let output = Command::new(&path)
        .arg("--version")
        .output()
        .unwrap_or_else(|e| panic!("cannot run {} ({e}): run make nats-server", path.display()));
    let version = String::from_utf8_lossy(&output.stdout);
    assert!(
        version
            .trim()
            .ends_with(&format!("v{}", PINNED_VERSION.trim())),
        "{} is {version}, tests are pinned to v{PINNED_VERSION}",
        path.display()
    );
    path
}

/// A nats-server started from `nats/server/single-auth.conf` with the passwords in its
/// environment, on free ports with a temporary store. (The testkit's `NatsServer` always
/// starts `single.conf` without an environment, so this small helper starts it instead.)
struct AuthServer {
    child: Child,
    dir: PathBuf,
    port: u16,
}

impl AuthServer {
    async fn start() -> Self {
        static STARTED: AtomicUsize = AtomicUsize::new(0);
        let dir = std::env::temp_dir().join(format!(
            "switchyard-permissions-{}-{}",
            std::process::id(),
            STARTED.fetch_add(1, Ordering::SeqCst)
        ));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).expect("temp dir");
        let log = std::fs::File::create(dir.join("server.log")).expect("server log");
        let (port, monitor) = (free_port(), free_port());
        let mut command = Command::new(nats_server_binary());
        command
            .arg("-c")
            .arg(server_config_dir().join("single-auth.conf"))
            .args(["-a", "127.0.0.1", "-n", "switchyard-permissions"])
            .args(["-p", &port.to_string(), "-m", &monitor.to_string()])
            .arg("-sd")
            .arg(dir.join("jetstream"))
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("server log"))
            .stderr(log);
        for (user, variable) in USERS {
            command.env(variable, password(user));
        }
        let child = command.spawn().expect("spawning nats-server");
        let mut server = Self { child, dir, port };
        wait_for(
            "the nats-server with accounts.conf to become healthy",
            TIMEOUT,
            || {
                if let Ok(Some(status)) = server.child.try_wait() {
                    panic!("nats-server exited with {status}:\n{}", server.log());
                }
                let healthy = healthy(monitor);
                async move { healthy.then_some(()) }
            },
        )
        .await;
        server
    }

    fn url(&self) -> String {
        format!("nats://127.0.0.1:{}", self.port)
    }

    fn log(&self) -> String {
        std::fs::read_to_string(self.dir.join("server.log")).unwrap_or_default()
    }

    /// Every permission violation the server has logged so far.
    fn violations(&self) -> Vec<String> {
        self.log()
            .lines()
            .filter(|line| line.contains("Violation"))
            .map(str::to_owned)
            .collect()
    }

    /// A connection as `user`; `inbox` sets a custom inbox prefix (tenants need theirs).
    async fn connect(&self, user: &str, inbox: Option<&str>) -> Conn {
        let errors = Arc::new(Mutex::new(Vec::new()));
        let sink = errors.clone();
        let mut options = ConnectOptions::with_user_and_password(user.to_owned(), password(user))
            .event_callback(move |event| {
                let sink = sink.clone();
                async move {
                    if let Event::ServerError(error) = event {
                        sink.lock().expect("errors").push(error.to_string());
                    }
                }
            });
        if let Some(prefix) = inbox {
            options = options.custom_inbox_prefix(prefix);
        }
        let client = options
            .connect(self.url())
            .await
            .unwrap_or_else(|e| panic!("connecting as {user}: {e}\n{}", self.log()));
        Conn {
            user: user.to_owned(),
            js: jetstream::new(client.clone()),
            client,
            errors,
        }
    }
}

impl Drop for AuthServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// `GET /healthz` on the monitoring port answers 200.
fn healthy(monitor: u16) -> bool {
    let Ok(mut stream) = TcpStream::connect(("127.0.0.1", monitor)) else {
        return false;
    };
    let _ = stream.set_read_timeout(Some(Duration::from_secs(2)));
    if stream.write_all(b"GET /healthz HTTP/1.0\r\n\r\n").is_err() {
        return false;
    }
    let mut response = String::new();
    let _ = stream.read_to_string(&mut response);
    response.starts_with("HTTP/1.0 200") || response.starts_with("HTTP/1.1 200")
}

/// One user's connection, recording the errors the server sends it.
struct Conn {
    user: String,
    client: async_nats::Client,
    js: jetstream::Context,
    errors: Arc<Mutex<Vec<String>>>,
}

impl Conn {
    /// Waits for the server's `Permissions Violation for <kind> to "<subject>"`.
    async fn refused(&self, kind: &str, subject: &str) {
        let wanted = format!("permissions violation for {kind} to \"{subject}\"").to_lowercase();
        wait_for(
            &format!("{} to be refused {kind} to {subject}", self.user),
            TIMEOUT,
            || {
                let found = self
                    .errors
                    .lock()
                    .expect("errors")
                    .iter()
                    .any(|e| e.to_lowercase().contains(&wanted));
                async move { found.then_some(()) }
            },
        )
        .await;
    }

    /// Publishes `subject` and waits for the server to refuse it.
    async fn publish_refused(&self, subject: &str) {
        self.client
            .publish(subject.to_owned(), "x".into())
            .await
            .expect("publish");
        self.client.flush().await.expect("flush");
        self.refused("publish", subject).await;
    }

    /// Subscribes to `subject` and waits for the server to refuse it.
    async fn subscribe_refused(&self, subject: &str) {
        let _subscriber = self
            .client
            .subscribe(subject.to_owned())
            .await
            .expect("subscribe");
        self.client.flush().await.expect("flush");
        self.refused("subscription", subject).await;
    }

    /// Publishes through JetStream (with a `Nats-Msg-Id`) and returns the stream's ack.
    async fn stored(&self, subject: &str, headers: HeaderMap) -> jetstream::publish::PublishAck {
        let mut headers = headers;
        if headers.get("Nats-Msg-Id").is_none() {
            headers.insert("Nats-Msg-Id", format!("{}-{subject}", self.user));
        }
        self.js
            .publish_with_headers(subject.to_owned(), headers, "payload".into())
            .await
            .unwrap_or_else(|e| panic!("{} publishing to {subject}: {e}", self.user))
            .await
            .unwrap_or_else(|e| panic!("{} storing {subject}: {e}", self.user))
    }
}

/// Provisions the topology as admin, registers tenant acme, and routes acme's `hooks`
/// platform to the NATS subject `sink.acme.hooks`.
async fn provision_as_admin(admin: &Conn) {
    let topology = DeploymentConfig::default().resolve().expect("topology");
    provision(&admin.js, &topology, false)
        .await
        .expect("provisioning as admin");
    let tenants: Store<TenantKey, TenantRecord> =
        Store::new(admin.js.get_key_value("tenants").await.expect("tenants"));
    tenants
        .put(
            &TenantKey {
                tenant: TenantId::new("acme").expect("id"),
            },
            &TenantRecord::enabled(),
        )
        .await
        .expect("registering acme");
    let routes: Store<RouteKey, Route> =
        Store::new(admin.js.get_key_value("routes").await.expect("routes"));
    let route =
        Route::from_json(br#"{"type":"nats","subject":"sink.acme.hooks"}"#).expect("route json");
    routes
        .put(
            &RouteKey {
                tenant: "acme".parse().expect("id"),
                team: RouteTeam::Any,
                platform: "hooks".parse().expect("id"),
            },
            &route,
        )
        .await
        .expect("routing acme/_/hooks");
}

#[test]
fn the_permission_file_names_the_subjects_the_taxonomy_formats() {
    let ns = Namespace::default();
    let acme = Address::parse("acme", "ops", "hooks").expect("address");
    let stage = |stage| {
        StageSubject {
            stage,
            address: acme.clone(),
        }
        .format(&ns)
    };
    assert_eq!(stage(InputStage::Ingress), "ingress.v1.acme.ops.hooks");
    assert_eq!(
        stage(InputStage::Idempotency),
        "idempotency.v1.acme.ops.hooks"
    );
    assert_eq!(
        stage(InputStage::Backpressure),
        "backpressure.v1.acme.ops.hooks"
    );
    assert_eq!(stage(InputStage::Egress), "egress.v1.acme.ops.hooks");
    let dlq = DlqSubject {
        tenant: Some("acme".parse().expect("id")),
        stage: Stage::Ingress,
        platform: Some("hooks".parse().expect("id")),
    };
    assert_eq!(dlq.format(&ns), "dlq.v1.acme.ingress.hooks");
    let receipt = ReceiptSubject {
        address: acme.clone(),
    };
    assert_eq!(receipt.format(&ns), "delivered.v1.acme.ops.hooks");
    let delay = DelaySubject {
        stage: InputStage::Egress,
        address: acme,
        key: "k1".to_owned(),
    };
    assert_eq!(delay.format(&ns), "delay.v1.egress.acme.ops.hooks.k1");
    let topology = DeploymentConfig::default().resolve().expect("topology");
    for (stream, consumer) in [
        ("INGRESS", "ingress-worker"),
        ("IDEMPOTENCY", "idempotency-worker"),
        ("EGRESS", "egress-worker"),
    ] {
        assert_eq!(topology.stream_name(stream), Some(stream));
        assert!(topology.consumer(consumer).is_some(), "{consumer} declared");
    }
    for bucket in ["tenants", "routes", "idempotency"] {
        assert_eq!(topology.bucket_name(bucket), Some(bucket));
    }
    let accounts = std::fs::read_to_string(server_config_dir().join("accounts.conf"))
        .expect("nats/server/accounts.conf");
    for needle in [
        "\"ingress.v1.>\"",
        "\"idempotency.v1.>\"",
        "\"egress.v1.>\"",
        "\"dlq.v1.>\"",
        "\"delivered.v1.>\"",
        "\"delay.v1.egress.>\"",
        "$JS.ACK.INGRESS.ingress-worker.>",
        "$JS.ACK.IDEMPOTENCY.idempotency-worker.>",
        "$JS.ACK.EGRESS.egress-worker.>",
        "$KV.idempotency.>",
        "KV_tenants",
        "KV_routes",
    ] {
        assert!(accounts.contains(needle), "accounts.conf names {needle}");
    }
}

#[tokio::test]
async fn a_tenant_publishes_only_to_its_own_ingress_subjects_and_reads_nothing_else() {
    let server = AuthServer::start().await;
    let admin = server.connect("admin", None).await;
    provision_as_admin(&admin).await;
    let acme = server.connect("tenant-acme", Some("_INBOX_acme")).await;
    let globex = server.connect("tenant-globex", Some("_INBOX_globex")).await;

    // Its own subjects: stored, and the ack comes back on the tenant's own inbox.
    let ack = acme
        .stored("ingress.v1.acme.ops.hooks", HeaderMap::new())
        .await;
    assert_eq!(ack.stream, "INGRESS");
    globex
        .stored("ingress.v1.globex.web.push", HeaderMap::new())
        .await;

    // Another tenant's ingress, and every later stage, are refused.
    acme.publish_refused("ingress.v1.globex.ops.hooks").await;
    globex.publish_refused("ingress.v1.acme.ops.hooks").await;
    acme.publish_refused("idempotency.v1.acme.ops.hooks").await;
    acme.publish_refused("egress.v1.acme.ops.hooks").await;
    acme.publish_refused("dlq.v1.acme.ingress.hooks").await;
    acme.publish_refused("$KV.tenants.acme").await;

    // Nothing to read: not the DLQ (by subscription or the JetStream API), not another
    // tenant's subjects, not the buckets, not other clients' inboxes.
    acme.subscribe_refused("dlq.v1.>").await;
    acme.subscribe_refused("dlq.v1.acme.>").await;
    acme.subscribe_refused("ingress.v1.globex.>").await;
    acme.subscribe_refused("$KV.routes.>").await;
    acme.subscribe_refused("_INBOX.>").await;
    acme.publish_refused("$JS.API.STREAM.INFO.DLQ").await;
    acme.publish_refused("$JS.API.DIRECT.GET.DLQ").await;
    acme.publish_refused("$JS.API.STREAM.MSG.GET.DLQ").await;
    acme.publish_refused("$JS.API.CONSUMER.CREATE.DLQ").await;
    acme.publish_refused("$JS.API.DIRECT.GET.KV_routes.$KV.routes.acme._.hooks")
        .await;

    // A client left on the default inbox prefix cannot receive its replies.
    let default_inbox = server.connect("tenant-acme", None).await;
    default_inbox.subscribe_refused("_INBOX.probe").await;

    // The refused publishes were dropped by the server, not stored.
    let stored: Vec<String> = stored_messages(&admin.js, "INGRESS")
        .await
        .into_iter()
        .map(|m| m.subject.to_string())
        .collect();
    assert_eq!(
        stored,
        ["ingress.v1.acme.ops.hooks", "ingress.v1.globex.web.push"]
    );
    assert_eq!(stored_messages(&admin.js, "IDEMPOTENCY").await.len(), 0);
    assert_eq!(stored_messages(&admin.js, "DLQ").await.len(), 0);
}

#[tokio::test]
async fn service_users_are_refused_what_their_service_does_not_need() {
    let server = AuthServer::start().await;
    let admin = server.connect("admin", None).await;
    provision_as_admin(&admin).await;
    let mut sinks = admin
        .client
        .subscribe("sink.>".to_owned())
        .await
        .expect("admin subscribes");
    admin.client.flush().await.expect("flush");

    // ingress: hands on to idempotency and dead-letters; nothing past its stage.
    let ingress = server.connect("ingress", None).await;
    ingress
        .stored("idempotency.v1.acme.ops.hooks", HeaderMap::new())
        .await;
    ingress
        .stored("dlq.v1.acme.ingress.hooks", HeaderMap::new())
        .await;
    ingress.publish_refused("egress.v1.acme.ops.hooks").await;
    ingress
        .publish_refused("backpressure.v1.acme.ops.hooks")
        .await;
    ingress.publish_refused("$KV.routes.acme._.hooks").await;
    ingress.publish_refused("$KV.tenants.acme").await;
    ingress
        .publish_refused("$JS.API.DIRECT.GET.KV_routes.$KV.routes.acme._.hooks")
        .await;
    ingress
        .publish_refused("$JS.API.STREAM.DELETE.INGRESS")
        .await;
    ingress.publish_refused("$JS.API.STREAM.CREATE.EVIL").await;
    ingress
        .publish_refused("$JS.API.CONSUMER.MSG.NEXT.EGRESS.egress-worker")
        .await;
    ingress.subscribe_refused("ingress.v1.>").await;
    ingress.subscribe_refused("dlq.v1.>").await;

    // idempotency: claims in its bucket, hands on to egress; never feeds itself or ingress.
    let idempotency = server.connect("idempotency", None).await;
    idempotency
        .stored("egress.v1.acme.ops.hooks", HeaderMap::new())
        .await;
    idempotency
        .stored("$KV.idempotency.acme.hooks.order-1", HeaderMap::new())
        .await;
    idempotency
        .publish_refused("idempotency.v1.acme.ops.hooks")
        .await;
    idempotency
        .publish_refused("ingress.v1.acme.ops.hooks")
        .await;
    idempotency.publish_refused("$KV.routes.acme._.hooks").await;
    idempotency
        .publish_refused("$JS.API.DIRECT.GET.KV_routes.$KV.routes.acme._.hooks")
        .await;
    idempotency
        .publish_refused("$JS.API.STREAM.PURGE.IDEMPOTENCY")
        .await;
    idempotency.subscribe_refused("egress.v1.>").await;

    // egress: sinks, receipts, its own retry schedules, dead letters; never the earlier
    // stages, never the registry's contents.
    let egress = server.connect("egress", None).await;
    let mut schedule = HeaderMap::new();
    schedule.insert("Nats-Schedule", "@at 2099-01-01T00:00:00Z");
    schedule.insert("Nats-Schedule-Target", "egress.v1.acme.ops.hooks");
    egress
        .stored("delay.v1.egress.acme.ops.hooks.k1", schedule)
        .await;
    egress
        .stored("dlq.v1.acme.egress.hooks", HeaderMap::new())
        .await;
    egress
        .client
        .publish("sink.acme.hooks", "delivered".into())
        .await
        .expect("publish");
    egress
        .client
        .publish("delivered.v1.acme.ops.hooks", "receipt".into())
        .await
        .expect("publish");
    egress.client.flush().await.expect("flush");
    let delivered = tokio::time::timeout(TIMEOUT, sinks.next())
        .await
        .expect("the sink publish arrives")
        .expect("subscription open");
    assert_eq!(&delivered.payload[..], b"delivered");
    egress.publish_refused("ingress.v1.acme.ops.hooks").await;
    egress
        .publish_refused("idempotency.v1.acme.ops.hooks")
        .await;
    egress.publish_refused("egress.v1.acme.ops.hooks").await;
    egress
        .publish_refused("delay.v1.backpressure.acme.ops.hooks.k1")
        .await;
    egress.publish_refused("$KV.routes.acme._.hooks").await;
    egress.publish_refused("$KV.tenants.acme").await;
    egress.publish_refused("$JS.API.STREAM.PURGE.DLQ").await;
    egress
        .publish_refused("$JS.API.STREAM.MSG.DELETE.DLQ")
        .await;
    egress
        .publish_refused("$JS.API.STREAM.INFO.KV_tenants")
        .await;
    egress.subscribe_refused("sink.>").await;

    // What was allowed was stored; what was refused was not.
    let subjects = |stream: &'static str| {
        let js = admin.js.clone();
        async move {
            stored_messages(&js, stream)
                .await
                .into_iter()
                .map(|m| m.subject.to_string())
                .collect::<Vec<_>>()
        }
    };
    assert_eq!(subjects("INGRESS").await, Vec::<String>::new());
    assert_eq!(
        subjects("IDEMPOTENCY").await,
        ["idempotency.v1.acme.ops.hooks"]
    );
    assert_eq!(
        subjects("EGRESS").await,
        [
            "egress.v1.acme.ops.hooks",
            "delay.v1.egress.acme.ops.hooks.k1"
        ]
    );
    assert_eq!(
        subjects("DLQ").await,
        ["dlq.v1.acme.ingress.hooks", "dlq.v1.acme.egress.hooks"]
    );
}

/// The services, each connected as its own user through the project's connect path.
struct Services {
    shutdown: CancellationToken,
    tasks: Vec<tokio::task::JoinHandle<anyhow::Result<()>>>,
    ingress_http: std::net::SocketAddr,
}

impl Services {
    /// Starts ingress, idempotency and egress, each connected as its own user. A service that
    /// cannot start within the deadline (e.g. a refused KV watch keeps it retrying) fails the
    /// test with the violations the server logged.
    async fn start(server: &AuthServer) -> Self {
        let shutdown = CancellationToken::new();
        let nats = |user: &str| switchyard_runtime::NatsConfig {
            url: server.url(),
            user: Some(user.to_owned()),
            password: Some(password(user)),
            ..Default::default()
        };
        let any_port: std::net::SocketAddr = "127.0.0.1:0".parse().expect("addr");
        let late = |user: &str| {
            format!(
                "{user} did not start within {TIMEOUT:?}; violations:\n{}",
                server.violations().join("\n")
            )
        };

        let mut config = switchyard_ingress::IngressConfig::load(None).expect("ingress config");
        config.nats = nats("ingress");
        config.http.listen = any_port;
        let client = switchyard_runtime::connect(&config.nats)
            .await
            .expect("ingress connects");
        let ingress = tokio::time::timeout(
            TIMEOUT,
            switchyard_ingress::start(config, client, shutdown.clone()),
        )
        .await
        .unwrap_or_else(|_| panic!("{}", late("ingress")))
        .expect("ingress starts as user ingress");

        let mut config =
            switchyard_idempotency::IdempotencyConfig::load(None).expect("idempotency config");
        config.nats = nats("idempotency");
        config.http.listen = any_port;
        let client = switchyard_runtime::connect(&config.nats)
            .await
            .expect("idempotency connects");
        let idempotency = tokio::time::timeout(
            TIMEOUT,
            switchyard_idempotency::start(config, client, shutdown.clone()),
        )
        .await
        .unwrap_or_else(|_| panic!("{}", late("idempotency")))
        .expect("idempotency starts as user idempotency");

        let mut config = switchyard_egress::EgressConfig::load(None).expect("egress config");
        config.nats = nats("egress");
        config.http.listen = any_port;
        let client = switchyard_runtime::connect(&config.nats)
            .await
            .expect("egress connects");
        let egress = tokio::time::timeout(
            TIMEOUT,
            switchyard_egress::start(config, client, shutdown.clone()),
        )
        .await
        .unwrap_or_else(|_| panic!("{}", late("egress")))
        .expect("egress starts as user egress");

        Self {
            shutdown,
            tasks: vec![ingress.task, idempotency.task, egress.task],
            ingress_http: ingress.http_addr,
        }
    }

    /// Stops every service and waits for each to drain.
    async fn stop(self) {
        self.shutdown.cancel();
        for task in self.tasks {
            task.await.expect("service task").expect("service drained");
        }
    }
}

/// `POST /v1/messages/{tenant}/{team}/{platform}` on the ingress API; returns the status line.
async fn post_http(addr: std::net::SocketAddr, path: &str, id: &str, body: &str) -> String {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut stream = tokio::net::TcpStream::connect(addr)
        .await
        .expect("ingress http");
    let request = format!(
        "POST {path} HTTP/1.1\r\nHost: ingress\r\nIdempotency-Key: {id}\r\n\
         Content-Type: text/plain\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    stream.write_all(request.as_bytes()).await.expect("request");
    let mut response = String::new();
    stream
        .read_to_string(&mut response)
        .await
        .expect("response");
    response.lines().next().unwrap_or_default().to_owned()
}

/// Waits until no stage consumer has pending or unacknowledged messages.
async fn wait_settled(admin: &Conn) {
    wait_for("every stage to settle", TIMEOUT, || async {
        for (consumer, stream) in [
            ("ingress-worker", "INGRESS"),
            ("idempotency-worker", "IDEMPOTENCY"),
            ("egress-worker", "EGRESS"),
        ] {
            let mut c = admin
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

#[tokio::test]
async fn each_service_runs_end_to_end_as_its_own_user_without_a_single_violation() {
    let server = AuthServer::start().await;
    let admin = server.connect("admin", None).await;
    provision_as_admin(&admin).await;
    let mut sink = admin
        .client
        .subscribe("sink.acme.>".to_owned())
        .await
        .expect("admin subscribes to the sink");
    let mut receipts = admin
        .client
        .subscribe("delivered.v1.acme.>".to_owned())
        .await
        .expect("admin subscribes to receipts");
    admin.client.flush().await.expect("flush");
    let services = Services::start(&server).await;
    let acme = server.connect("tenant-acme", Some("_INBOX_acme")).await;

    // Over NATS, as the tenant: validated, claimed, delivered to the route's subject.
    let mut headers = HeaderMap::new();
    headers.insert("Nats-Msg-Id", "order-1");
    acme.stored("ingress.v1.acme.ops.hooks", headers.clone())
        .await;
    let first = tokio::time::timeout(TIMEOUT, sink.next())
        .await
        .expect("the delivery arrives")
        .expect("subscription open");
    assert_eq!(first.subject.as_str(), "sink.acme.hooks");
    assert_eq!(&first.payload[..], b"payload");
    tokio::time::timeout(TIMEOUT, receipts.next())
        .await
        .expect("the receipt arrives")
        .expect("subscription open");

    // Over HTTP, through ingress's producer API (ingress writes INGRESS, reads it back).
    let status = post_http(
        services.ingress_http,
        "/v1/messages/acme/ops/hooks",
        "order-2",
        "over http",
    )
    .await;
    assert!(status.contains(" 202"), "ingress accepted: {status}");
    let second = tokio::time::timeout(TIMEOUT, sink.next())
        .await
        .expect("the http delivery arrives")
        .expect("subscription open");
    assert_eq!(&second.payload[..], b"over http");

    // A duplicate (idempotency reads its claim back), a message without an id (ingress
    // dead-letters it) and one without a route (egress dead-letters it).
    wait_settled(&admin).await;
    acme.stored("ingress.v1.acme.ops.hooks", headers).await;
    acme.js
        .publish("ingress.v1.acme.ops.hooks".to_owned(), "no id".into())
        .await
        .expect("publish")
        .await
        .expect("stored");
    let mut headers = HeaderMap::new();
    headers.insert("Nats-Msg-Id", "order-3");
    acme.stored("ingress.v1.acme.ops.nowhere", headers).await;
    let dlq = wait_for("two dlq entries", TIMEOUT, || async {
        let entries = stored_messages(&admin.js, "DLQ").await;
        (entries.len() >= 2).then_some(entries)
    })
    .await;
    let mut subjects: Vec<String> = dlq.iter().map(|m| m.subject.to_string()).collect();
    subjects.sort();
    assert_eq!(
        subjects,
        ["dlq.v1.acme.egress.nowhere", "dlq.v1.acme.ingress.hooks"]
    );
    // The duplicate was settled before this marker was sent, and egress publishes in order:
    // had it been delivered, it would arrive first.
    wait_settled(&admin).await;
    let mut headers = HeaderMap::new();
    headers.insert("Nats-Msg-Id", "order-4");
    acme.stored("ingress.v1.acme.ops.hooks", headers).await;
    let next = tokio::time::timeout(TIMEOUT, sink.next())
        .await
        .expect("the marker arrives")
        .expect("subscription open");
    let msg_id = next
        .headers
        .as_ref()
        .and_then(|h| h.get(switchyard_envelope::headers::MSG_ID))
        .map(|v| v.as_str().to_owned());
    assert_eq!(
        msg_id.as_deref(),
        Some("order-4"),
        "the duplicate was dropped"
    );
    wait_settled(&admin).await;
    services.stop().await;

    let violations = server.violations();
    assert!(
        violations.is_empty(),
        "the services needed more than accounts.conf allows:\n{}",
        violations.join("\n")
    );
}
