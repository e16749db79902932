//! The NATS permissions model (`nats/server/accounts.conf`, loaded through
//! `nats/server/single-auth.conf`) against a real nats-server: a tenant publishes only to its
//! own ingress subjects and reads nothing but its own replies; each service user (the dlq
//! service's included) can run its service end to end, and is refused what its service does not
//! need.
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
use switchyard_dlq::DlqCode;
use switchyard_dlq_ops::{JobRecord, JobSpec, JobState, JobStore, Selection, StatsStore};
use switchyard_fixtures::{enable_tenant, ingress_settled, ingress_stream, issue_api_key};
use switchyard_keys::{Address, RouteKey, RouteTeam, Stage, TenantId};
use switchyard_registry::{Admission, PressureRecord, Route, Store, TenantRecord};
use switchyard_subjects::advisory::{self, AdvisoryKind};
use switchyard_subjects::{
    AlertKind, AlertSubject, AttemptSubject, ControlCommand, ControlSubject, DelaySubject,
    DlqSubject, InputStage, Namespace, ReceiptSubject, StageSubject, SubjectKind,
};
use switchyard_testkit::{
    PINNED_VERSION, backpressure_stream, backpressure_streams, free_port, server_config_dir,
    stored_count_in, stored_messages, wait_for, workspace_root,
};
use switchyard_topology::{
    BucketName, ConsumerName, DeploymentConfig, StreamName, TenantQuota, provision,
};
use time::OffsetDateTime;
use tokio_util::sync::CancellationToken;

/// How long any single condition may take.
const TIMEOUT: Duration = Duration::from_secs(30);

/// The users `accounts.conf` declares, with the environment variable each password comes from.
const USERS: &[(&str, &str)] = &[
    ("admin", "SWITCHYARD_NATS_ADMIN_PASSWORD"),
    ("ingress", "SWITCHYARD_NATS_INGRESS_PASSWORD"),
    ("idempotency", "SWITCHYARD_NATS_IDEMPOTENCY_PASSWORD"),
    ("backpressure", "SWITCHYARD_NATS_BACKPRESSURE_PASSWORD"),
    ("egress", "SWITCHYARD_NATS_EGRESS_PASSWORD"),
    ("dlq", "SWITCHYARD_NATS_DLQ_PASSWORD"),
    ("tenant-acme", "SWITCHYARD_NATS_TENANT_ACME_PASSWORD"),
    ("tenant-globex", "SWITCHYARD_NATS_TENANT_GLOBEX_PASSWORD"),
];

/// The service users, each of which reads its replies only under its own inbox prefix.
const SERVICES: &[&str] = &["ingress", "idempotency", "backpressure", "egress", "dlq"];

/// The inbox prefix `accounts.conf` lets `user` read: `_INBOX_<service>` for a service (its
/// `nats.inbox_prefix` default), `_INBOX_<id>` for `tenant-<id>`.
fn inbox(user: &str) -> String {
    format!("_INBOX_{}", user.strip_prefix("tenant-").unwrap_or(user))
}

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
    /// Starts the server and waits until it is healthy. Free ports are found by binding and
    /// releasing them, so another process can take one first: then it retries on fresh ports.
    async fn start() -> Self {
        static STARTED: AtomicUsize = AtomicUsize::new(0);
        let dir = std::env::temp_dir().join(format!(
            "switchyard-permissions-{}-{}",
            std::process::id(),
            STARTED.fetch_add(1, Ordering::SeqCst)
        ));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).expect("temp dir");
        for attempt in 1..=3 {
            let (port, monitor) = (free_port(), free_port());
            let mut server = Self {
                child: Self::spawn(&dir, port, monitor),
                dir: dir.clone(),
                port,
            };
            let exited = wait_for(
                "the nats-server with accounts.conf to become healthy",
                TIMEOUT,
                || {
                    let exited = server.child.try_wait().ok().flatten();
                    let healthy = exited.is_none() && healthy(monitor);
                    async move { (healthy || exited.is_some()).then_some(exited) }
                },
            )
            .await;
            match exited {
                None => return server,
                Some(_) if attempt < 3 && server.log().contains("address already in use") => {}
                Some(status) => panic!("nats-server exited with {status}:\n{}", server.log()),
            }
        }
        unreachable!("the last attempt returns or panics")
    }

    fn spawn(dir: &std::path::Path, port: u16, monitor: u16) -> Child {
        let log = std::fs::File::create(dir.join("server.log")).expect("server log");
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
        command.spawn().expect("spawning nats-server")
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

    /// A service's `[nats]` section as its defaults load it (its own inbox prefix
    /// `_INBOX_<user>` included, which this checks), pointed at this server as `user`.
    fn nats_config(
        &self,
        user: &str,
        loaded: switchyard_runtime::NatsConfig,
    ) -> switchyard_runtime::NatsConfig {
        assert_eq!(
            loaded.inbox_prefix,
            inbox(user),
            "{user}'s defaults set its own inbox prefix"
        );
        switchyard_runtime::NatsConfig {
            url: self.url(),
            user: Some(user.to_owned()),
            password: Some(password(user)),
            ..loaded
        }
    }

    /// A client connected the way the service binaries connect.
    async fn service_client(&self, nats: &switchyard_runtime::NatsConfig) -> async_nats::Client {
        switchyard_runtime::connect(nats)
            .await
            .unwrap_or_else(|e| panic!("connecting as {:?}: {e}", nats.user))
    }

    /// Waits for a service to start; a service that fails or cannot start within the deadline
    /// (a refused KV watch keeps it retrying) fails the test with the server's violations.
    async fn started<T>(&self, service: &str, start: impl Future<Output = anyhow::Result<T>>) -> T {
        let failure = match tokio::time::timeout(TIMEOUT, start).await {
            Ok(Ok(running)) => return running,
            Ok(Err(error)) => format!("failed: {error:#}"),
            Err(_) => format!("did not start within {TIMEOUT:?}"),
        };
        panic!(
            "{service}, connected as user {service}, {failure}; violations:\n{}",
            self.violations().join("\n")
        )
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

    /// Publishes to each subject and waits for the server to refuse every one.
    async fn publishes_refused(&self, subjects: &[&str]) {
        for subject in subjects {
            self.client
                .publish(subject.to_string(), "x".into())
                .await
                .expect("publish");
        }
        self.client.flush().await.expect("flush");
        for subject in subjects {
            self.refused("publish", subject).await;
        }
    }

    /// Subscribes to each subject and waits for the server to refuse every one.
    async fn subscriptions_refused(&self, subjects: &[&str]) {
        let mut subscribers = Vec::new();
        for subject in subjects {
            subscribers.push(
                self.client
                    .subscribe(subject.to_string())
                    .await
                    .expect("subscribe"),
            );
        }
        self.client.flush().await.expect("flush");
        for subject in subjects {
            self.refused("subscription", subject).await;
        }
    }

    /// Publishes through JetStream and returns the stream's ack.
    async fn stored(&self, subject: &str) -> jetstream::publish::PublishAck {
        self.stored_with(subject, HeaderMap::new()).await
    }

    /// Publishes through JetStream (with a `Nats-Msg-Id`) and returns the stream's ack.
    async fn stored_with(
        &self,
        subject: &str,
        mut headers: HeaderMap,
    ) -> jetstream::publish::PublishAck {
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

/// Provisions the topology as admin, registers each of `tenants` the way `switchyard tenants
/// enable` does (its own `INGRESS_<tenant>` stream with its `ingress-worker`, then its record),
/// and routes acme's `hooks` platform to the NATS subject `sink.acme.hooks`.
async fn provision_as_admin(admin: &Conn, tenants: &[&str]) {
    let topology = DeploymentConfig::default().resolve().expect("topology");
    provision(&admin.js, &topology, false)
        .await
        .expect("provisioning as admin");
    for tenant in tenants {
        enable_tenant(&admin.js, tenant, &TenantRecord::enabled()).await;
    }
    route_to_sink(admin, "hooks").await;
}

/// Routes acme's `platform` (any team) to the NATS subject `sink.acme.<platform>`, as admin;
/// fire-and-forget, since the tests' subscribers only watch and never reply.
async fn route_to_sink(admin: &Conn, platform: &str) {
    let routes: Store<RouteKey, Route> =
        Store::new(admin.js.get_key_value("routes").await.expect("routes"));
    let json =
        format!(r#"{{"type":"nats","subject":"sink.acme.{platform}","fire_and_forget":true}}"#);
    let route = Route::from_json(json.as_bytes()).expect("route json");
    routes
        .put(
            &RouteKey {
                tenant: "acme".parse().expect("id"),
                team: RouteTeam::Any,
                platform: platform.parse().expect("id"),
            },
            &route,
        )
        .await
        .unwrap_or_else(|e| panic!("routing acme/_/{platform}: {e}"));
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
        "backpressure.v1.15.acme.ops.hooks"
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
    let attempt = AttemptSubject {
        tenant: "acme".parse().expect("id"),
    };
    assert_eq!(attempt.format(&ns), "attempts.v1.acme");
    let delay = DelaySubject {
        stage: InputStage::Egress,
        address: acme,
        key: "k1".to_owned(),
    };
    assert_eq!(delay.format(&ns), "delay.v1.egress.acme.ops.hooks.k1");
    let control = ControlSubject {
        command: ControlCommand::Replay,
    };
    assert_eq!(control.format(&ns), "control.v1.dlq.replay");
    let alert = AlertSubject {
        tenant: "acme".parse().expect("id"),
        kind: AlertKind::DlqInflow,
    };
    assert_eq!(alert.format(&ns), "alerts.v1.acme.dlq-inflow");
    assert_eq!(
        advisory::filter(AdvisoryKind::MaxDeliveries, Some("EGRESS")),
        "$JS.EVENT.ADVISORY.CONSUMER.MAX_DELIVERIES.EGRESS.*"
    );
    assert_eq!(
        advisory::filter(AdvisoryKind::Terminated, Some("EGRESS")),
        "$JS.EVENT.ADVISORY.CONSUMER.MSG_TERMINATED.EGRESS.*"
    );
    let topology = DeploymentConfig::default().resolve().expect("topology");
    // Ingress is per tenant: `INGRESS_<tenant>` on the tenant's own subjects (exactly what the
    // tenant user may publish to), read through an `ingress-worker` of its own.
    let tenant = TenantId::new("acme").expect("id");
    let typed = StreamName::from_base("INGRESS").expect("a typed stream name");
    assert_eq!(topology.stream_name(typed), None, "no shared INGRESS");
    assert_eq!(
        topology.tenant_stream_name(typed, &tenant).as_deref(),
        Some("INGRESS_acme")
    );
    assert_eq!(ingress_stream("acme"), "INGRESS_acme");
    let own = topology
        .tenant_stream(typed, &tenant, TenantQuota::default())
        .expect("INGRESS_<tenant> declared");
    assert_eq!(own.config.subjects, ["ingress.v1.acme.>"]);
    let typed = ConsumerName::from_base("ingress-worker").expect("a typed consumer name");
    let worker = topology
        .tenant_consumer(typed, &tenant)
        .expect("ingress-worker declared per tenant");
    assert_eq!(worker.stream, "INGRESS_acme");
    assert_eq!(
        worker.config.durable_name.as_deref(),
        Some("ingress-worker")
    );
    for (stream, consumer) in [
        ("IDEMPOTENCY", "idempotency-worker"),
        ("EGRESS", "egress-worker"),
    ] {
        let typed = StreamName::from_base(stream).expect("a typed stream name");
        assert_eq!(topology.stream_name(typed), Some(stream));
        let typed = ConsumerName::from_base(consumer).expect("a typed consumer name");
        assert!(topology.consumer(typed).is_some(), "{consumer} declared");
    }
    for stream in ["DLQ", "ATTEMPTS"] {
        let typed = StreamName::from_base(stream).expect("a typed stream name");
        assert_eq!(topology.stream_name(typed), Some(stream));
    }
    // BACKPRESSURE is one stream per shard, each named in the permissions.
    let typed = StreamName::from_base("BACKPRESSURE").expect("a typed stream name");
    assert_eq!(topology.stream_name(typed), None, "sharded");
    assert_eq!(topology.stream_names(typed), backpressure_streams());
    assert_eq!(
        topology.stream_of_tenant(typed, &tenant),
        backpressure_stream("acme")
    );
    for bucket in [
        "tenants",
        "routes",
        "idempotency",
        "rate-limits",
        "dlq-jobs",
        "dlq-stats",
        "dlq-replays",
        "breakers",
    ] {
        let typed = BucketName::from_base(bucket).expect("a typed bucket name");
        assert_eq!(topology.bucket_name(typed), Some(bucket));
    }
    let accounts = std::fs::read_to_string(server_config_dir().join("accounts.conf"))
        .expect("nats/server/accounts.conf");
    for needle in [
        "\"ingress.v1.>\"",
        "\"idempotency.v1.>\"",
        "\"egress.v1.>\"",
        "\"dlq.v1.>\"",
        "\"delivered.v1.>\"",
        "\"attempts.v1.>\"",
        "\"delay.v1.egress.>\"",
        "\"ingress.v1.acme.>\"",
        "\"$JS.API.DIRECT.GET.*\"",
        "$JS.API.CONSUMER.INFO.*.ingress-worker",
        "$JS.API.CONSUMER.MSG.NEXT.*.ingress-worker",
        "$JS.ACK.*.ingress-worker.>",
        "$JS.ACK.IDEMPOTENCY.idempotency-worker.>",
        "$JS.ACK.EGRESS.egress-worker.>",
        "$JS.ACK.BACKPRESSURE_15.>",
        "$KV.rate-limits.>",
        "$KV.idempotency.>",
        "KV_tenants",
        "KV_routes",
        "\"control.v1.dlq.replay\"",
        "\"alerts.v1.>\"",
        "$JS.API.CONSUMER.MSG.NEXT.ADVISORIES.dlq-safety-net",
        "$JS.ACK.ADVISORIES.dlq-safety-net.>",
        "$JS.API.STREAM.MSG.DELETE.DLQ",
        "$KV.dlq-jobs.>",
        "$KV.dlq-stats.>",
        "\"$JS.API.DIRECT.GET.EGRESS.delay.v1.egress.>\"",
        "\"$JS.API.STREAM.MSG.DELETE.EGRESS\"",
        "\"$JS.API.DIRECT.GET.KV_rate-limits.$KV.rate-limits.acme.pressure\"",
    ] {
        assert!(accounts.contains(needle), "accounts.conf names {needle}");
    }
    // Each service reads only its own inbox prefix; none the shared `_INBOX.>`; egress cannot
    // purge a stream.
    for service in SERVICES {
        let needle = format!("\"{}.>\"", inbox(service));
        assert!(accounts.contains(&needle), "accounts.conf names {needle}");
    }
    for absent in ["\"_INBOX.>\"", "STREAM.PURGE"] {
        assert!(!accounts.contains(absent), "accounts.conf grants {absent}");
    }
    // Ingress's `$JS.API.DIRECT.GET.*` (every tenant's stream) is taken back for every shared
    // stream and every bucket the topology declares: none can be added without its deny line.
    let names = topology
        .streams
        .iter()
        .map(|s| s.config.name.clone())
        .chain(
            topology
                .buckets
                .iter()
                .map(|b| format!("KV_{}", b.config.bucket)),
        );
    for name in names {
        let needle = format!("\"$JS.API.DIRECT.GET.{name}\"");
        assert!(accounts.contains(&needle), "accounts.conf denies {needle}");
        // Backpressure's `$JS.API.STREAM.UPDATE.*` (holding a tenant's stream shut) is taken
        // back for the same streams and buckets.
        let needle = format!("\"$JS.API.STREAM.UPDATE.{name}\"");
        assert!(accounts.contains(&needle), "accounts.conf denies {needle}");
    }
    // The dlq user has no rights on the ingress streams any more (its safety net does not
    // watch them; the ingress stage dead-letters on its last delivery itself).
    let dlq = accounts
        .split("DLQ_PERMISSIONS")
        .nth(1)
        .and_then(|rest| rest.split("\naccounts:").next())
        .expect("the dlq user's permissions");
    assert!(!dlq.contains("INGRESS"), "dlq names no INGRESS stream");
}

#[tokio::test]
async fn a_tenant_publishes_only_to_its_own_ingress_subjects_and_reads_nothing_else() {
    let server = AuthServer::start().await;
    let admin = server.connect("admin", None).await;
    provision_as_admin(&admin, &["acme", "globex"]).await;
    let acme = server.connect("tenant-acme", Some("_INBOX_acme")).await;
    let globex = server.connect("tenant-globex", Some("_INBOX_globex")).await;

    // Its own subjects: stored in its own stream, and the ack comes back on the tenant's own
    // inbox.
    let ack = acme.stored("ingress.v1.acme.ops.hooks").await;
    assert_eq!(ack.stream, "INGRESS_acme");
    let ack = globex.stored("ingress.v1.globex.web.push").await;
    assert_eq!(ack.stream, "INGRESS_globex");

    // Another tenant's ingress, every later stage and the buckets are refused.
    globex
        .publishes_refused(&["ingress.v1.acme.ops.hooks"])
        .await;
    acme.publishes_refused(&[
        "ingress.v1.globex.ops.hooks",
        "idempotency.v1.acme.ops.hooks",
        "egress.v1.acme.ops.hooks",
        "dlq.v1.acme.ingress.hooks",
        "$KV.tenants.acme",
        // Only operators (admin, the CLI) wake the dlq service for a replay job.
        "control.v1.dlq.replay",
        "alerts.v1.acme.dlq-inflow",
        "$KV.dlq-jobs.0193a1b2-c3d4-7e5f-8a9b-0c1d2e3f4a5b",
    ])
    .await;

    // Nothing to read: not the DLQ (by subscription or through the JetStream API), not another
    // tenant's subjects, not the buckets, not other clients' inboxes.
    acme.subscriptions_refused(&[
        "dlq.v1.>",
        "dlq.v1.acme.>",
        "ingress.v1.globex.>",
        "$KV.routes.>",
        "_INBOX.>",
        "alerts.v1.acme.>",
        "control.v1.dlq.replay",
        "$JS.EVENT.ADVISORY.CONSUMER.MAX_DELIVERIES.INGRESS_acme.*",
    ])
    .await;
    acme.publishes_refused(&[
        // Not even its own stream, nor another tenant's, through the JetStream API.
        "$JS.API.STREAM.INFO.INGRESS_acme",
        "$JS.API.DIRECT.GET.INGRESS_acme",
        "$JS.API.DIRECT.GET.INGRESS_globex",
        "$JS.API.CONSUMER.MSG.NEXT.INGRESS_globex.ingress-worker",
        "$JS.API.STREAM.INFO.DLQ",
        "$JS.API.DIRECT.GET.DLQ",
        "$JS.API.STREAM.MSG.GET.DLQ",
        "$JS.API.CONSUMER.CREATE.DLQ",
        "$JS.API.STREAM.MSG.DELETE.DLQ",
        "$JS.API.DIRECT.GET.KV_routes.$KV.routes.acme._.hooks",
        "$JS.API.DIRECT.GET.KV_dlq-stats.$KV.dlq-stats._state",
    ])
    .await;

    // A client left on the default inbox prefix cannot receive its replies.
    let default_inbox = server.connect("tenant-acme", None).await;
    default_inbox.subscriptions_refused(&["_INBOX.probe"]).await;

    // The refused publishes were dropped by the server, not stored.
    assert_eq!(
        subjects(&admin, "INGRESS_acme").await,
        ["ingress.v1.acme.ops.hooks"]
    );
    assert_eq!(
        subjects(&admin, "INGRESS_globex").await,
        ["ingress.v1.globex.web.push"]
    );
    assert!(subjects(&admin, "IDEMPOTENCY").await.is_empty());
    assert!(subjects(&admin, "DLQ").await.is_empty());
}

#[tokio::test]
async fn each_service_reads_its_replies_only_under_its_own_inbox_prefix() {
    let server = AuthServer::start().await;
    let admin = server.connect("admin", None).await;
    provision_as_admin(&admin, &["acme"]).await;
    for service in SERVICES {
        // Its own prefix works: a JetStream answer (a publish ack) comes back on it.
        let own = server.connect(service, Some(&inbox(service))).await;
        own.stored("dlq.v1.acme.ingress.hooks").await;
        // Every other reply space is refused: the shared default, each other service's, a
        // tenant's.
        let mut others = vec!["_INBOX.>".to_owned(), "_INBOX.probe".to_owned()];
        others.extend(
            SERVICES
                .iter()
                .filter(|other| *other != service)
                .map(|other| format!("{}.>", inbox(other))),
        );
        others.push(format!("{}.>", inbox("tenant-acme")));
        let others: Vec<&str> = others.iter().map(String::as_str).collect();
        own.subscriptions_refused(&others).await;
        // A client of this user left on the default prefix cannot read its own replies.
        let default_inbox = server.connect(service, None).await;
        default_inbox.subscriptions_refused(&["_INBOX.probe"]).await;
    }
    // The CLI and tooling connect as admin, which keeps the default `_INBOX`.
    let cli = switchyard_runtime::NatsConfig {
        url: server.url(),
        user: Some("admin".to_owned()),
        password: Some(password("admin")),
        ..Default::default()
    };
    assert_eq!(cli.inbox_prefix, "_INBOX");
    let client = server.service_client(&cli).await;
    jetstream::new(client)
        .get_stream("DLQ")
        .await
        .expect("admin reads on the default inbox");
}

#[tokio::test]
async fn a_tenant_reads_its_own_admission_record_and_nothing_else_of_the_bucket() {
    let server = AuthServer::start().await;
    let admin = server.connect("admin", None).await;
    provision_as_admin(&admin, &["acme", "globex"]).await;
    // Backpressure's records, written as admin: acme is being refused, globex has no record.
    let closed = PressureRecord {
        admission: Admission::Closed,
        backlog: 5_000,
        updated_at: "2025-01-01T00:00:00Z".to_owned(),
        reopen_in_secs: None,
    };
    let bucket = admin
        .js
        .get_key_value("rate-limits")
        .await
        .expect("rate-limits");
    for (key, value) in [
        ("acme.pressure", serde_json::to_vec(&closed).expect("json")),
        ("acme.limit", br#"{"rate_per_sec":50}"#.to_vec()),
        ("acme.tokens", b"{}".to_vec()),
        ("_default.limit", br#"{"rate_per_sec":100}"#.to_vec()),
    ] {
        bucket
            .put(key, value.into())
            .await
            .unwrap_or_else(|e| panic!("writing {key}: {e}"));
    }
    let acme = server.connect("tenant-acme", Some("_INBOX_acme")).await;
    let globex = server.connect("tenant-globex", Some("_INBOX_globex")).await;

    // One direct get of its own key (no stream info, no KV binding: the tenant has neither).
    let record = acme
        .js
        .get_stream_no_info("KV_rate-limits")
        .await
        .expect("a stream handle")
        .direct_get_last_for_subject("$KV.rate-limits.acme.pressure")
        .await
        .expect("acme reads its own admission record");
    let read: PressureRecord = serde_json::from_slice(&record.payload).expect("a PressureRecord");
    assert_eq!(read, closed);
    // Without a record (never refused yet) the answer is "not found", not a refusal.
    let missing = globex
        .js
        .get_stream_no_info("KV_rate-limits")
        .await
        .expect("a stream handle")
        .direct_get_last_for_subject("$KV.rate-limits.globex.pressure")
        .await
        .expect_err("globex has no record");
    assert_eq!(
        missing.kind(),
        jetstream::stream::DirectGetErrorKind::NotFound
    );

    // Another tenant's record, its own other keys, the bucket by sequence, its info, watches.
    acme.publishes_refused(&[
        "$JS.API.DIRECT.GET.KV_rate-limits.$KV.rate-limits.globex.pressure",
        "$JS.API.DIRECT.GET.KV_rate-limits.$KV.rate-limits.acme.limit",
        "$JS.API.DIRECT.GET.KV_rate-limits.$KV.rate-limits.acme.tokens",
        "$JS.API.DIRECT.GET.KV_rate-limits.$KV.rate-limits._default.limit",
        "$JS.API.DIRECT.GET.KV_rate-limits",
        "$JS.API.STREAM.MSG.GET.KV_rate-limits",
        "$JS.API.STREAM.INFO.KV_rate-limits",
        "$JS.API.CONSUMER.CREATE.KV_rate-limits",
        "$KV.rate-limits.acme.pressure",
    ])
    .await;
    acme.subscriptions_refused(&["$KV.rate-limits.>", "$KV.rate-limits.acme.pressure"])
        .await;
    globex
        .publishes_refused(&["$JS.API.DIRECT.GET.KV_rate-limits.$KV.rate-limits.acme.pressure"])
        .await;
}

#[tokio::test]
async fn service_users_are_refused_what_their_service_does_not_need() {
    let server = AuthServer::start().await;
    let admin = server.connect("admin", None).await;
    provision_as_admin(&admin, &["acme"]).await;
    let mut sinks = admin
        .client
        .subscribe("sink.>".to_owned())
        .await
        .expect("subscribe");
    admin.client.flush().await.expect("flush");

    // ingress: accepts into a tenant's own stream (the HTTP producer API) and reads a
    // duplicate's original back from it by sequence, reads it through its ingress-worker,
    // hands on to idempotency and dead-letters; nothing past its stage, no routes.
    let ingress = server.connect("ingress", Some(&inbox("ingress"))).await;
    let accepted = ingress.stored("ingress.v1.acme.ops.hooks").await;
    assert_eq!(accepted.stream, "INGRESS_acme");
    let original = ingress
        .js
        .get_stream_no_info("INGRESS_acme")
        .await
        .expect("INGRESS_acme")
        .direct_get(accepted.sequence)
        .await
        .expect("ingress direct-gets from a tenant's INGRESS_<tenant>");
    assert_eq!(original.subject.as_str(), "ingress.v1.acme.ops.hooks");
    let mut worker = ingress
        .js
        .get_consumer_from_stream::<pull::Config, _, _>("ingress-worker", "INGRESS_acme")
        .await
        .expect("ingress reads INGRESS_acme's ingress-worker");
    assert_eq!(worker.info().await.expect("info").num_pending, 1);
    // It lists the streams' names (a tenant stream without its registry record is read too).
    let names: Vec<String> = futures::TryStreamExt::try_collect(ingress.js.stream_names())
        .await
        .expect("ingress lists stream names");
    assert!(names.iter().any(|n| n == "INGRESS_acme"), "{names:?}");
    // It creates that consumer again as declared (its state is in memory, so a server restart
    // removes it); the message is still in the stream for it.
    let declared = DeploymentConfig::default()
        .resolve()
        .expect("topology")
        .tenant_consumer(ConsumerName::IngressWorker, &TenantId::new("acme").unwrap())
        .expect("declared");
    admin
        .js
        .delete_consumer_from_stream("ingress-worker", "INGRESS_acme")
        .await
        .expect("admin deletes it");
    let mut again = ingress
        .js
        .get_stream_no_info("INGRESS_acme")
        .await
        .expect("INGRESS_acme")
        .get_or_create_consumer("ingress-worker", declared.config)
        .await
        .expect("ingress creates INGRESS_acme's ingress-worker");
    assert_eq!(again.info().await.expect("info").num_pending, 1);
    ingress.stored("idempotency.v1.acme.ops.hooks").await;
    ingress.stored("dlq.v1.acme.ingress.hooks").await;
    ingress
        .publishes_refused(&[
            "egress.v1.acme.ops.hooks",
            "backpressure.v1.15.acme.ops.hooks",
            "$KV.routes.acme._.hooks",
            "$KV.tenants.acme",
            // Its direct gets reach every tenant's stream, and nothing else: not the routes
            // bucket (webhook signing secrets), the other buckets or the shared streams.
            "$JS.API.DIRECT.GET.KV_routes",
            "$JS.API.DIRECT.GET.KV_routes.$KV.routes.acme._.hooks",
            "$JS.API.DIRECT.GET.KV_tenants",
            "$JS.API.DIRECT.GET.KV_idempotency",
            "$JS.API.DIRECT.GET.KV_dlq-jobs",
            "$JS.API.DIRECT.GET.DLQ",
            "$JS.API.DIRECT.GET.IDEMPOTENCY",
            "$JS.API.DIRECT.GET.EGRESS",
            "$JS.API.STREAM.DELETE.INGRESS_acme",
            "$JS.API.STREAM.PURGE.INGRESS_acme",
            "$JS.API.STREAM.MSG.DELETE.INGRESS_acme",
            "$JS.API.CONSUMER.CREATE.INGRESS_acme.evil.ingress.v1.>",
            "$JS.API.CONSUMER.CREATE.INGRESS_acme.ingress-worker",
            "$JS.API.CONSUMER.CREATE.EGRESS.ingress-worker.egress.v1.>",
            "$JS.API.CONSUMER.DELETE.INGRESS_acme.ingress-worker",
            "$JS.API.STREAM.CREATE.EVIL",
            "$JS.API.CONSUMER.MSG.NEXT.EGRESS.egress-worker",
            "$JS.API.CONSUMER.MSG.NEXT.IDEMPOTENCY.idempotency-worker",
        ])
        .await;
    ingress
        .subscriptions_refused(&["ingress.v1.>", "dlq.v1.>"])
        .await;

    // idempotency: claims in its bucket, hands on; never feeds itself or ingress.
    let idempotency = server
        .connect("idempotency", Some(&inbox("idempotency")))
        .await;
    idempotency
        .stored("backpressure.v1.15.acme.ops.hooks")
        .await;
    idempotency.stored("egress.v1.acme.ops.hooks").await;
    idempotency
        .stored("$KV.idempotency.acme.hooks.order-1")
        .await;
    idempotency
        .publishes_refused(&[
            "idempotency.v1.acme.ops.hooks",
            "ingress.v1.acme.ops.hooks",
            "$KV.routes.acme._.hooks",
            "$JS.API.DIRECT.GET.KV_routes.$KV.routes.acme._.hooks",
            "$JS.API.STREAM.PURGE.IDEMPOTENCY",
        ])
        .await;
    idempotency.subscriptions_refused(&["egress.v1.>"]).await;

    // backpressure: rate state in its bucket, hands on to egress; never its own input, an
    // earlier stage, the registry, or a consumer outside its own stream's subjects.
    let backpressure = server
        .connect("backpressure", Some(&inbox("backpressure")))
        .await;
    backpressure.stored("egress.v1.acme.ops.hooks").await;
    backpressure.stored("$KV.rate-limits.acme.tokens").await;
    backpressure
        .publishes_refused(&[
            "backpressure.v1.15.acme.ops.hooks",
            "idempotency.v1.acme.ops.hooks",
            "ingress.v1.acme.ops.hooks",
            "$KV.routes.acme._.hooks",
            "$KV.tenants.acme",
            "$KV.idempotency.acme.hooks.order-1",
            "$JS.API.CONSUMER.CREATE.BACKPRESSURE_15.evil.egress.v1.>",
            "$JS.API.CONSUMER.CREATE.EGRESS.evil.egress.v1.>",
            "$JS.API.CONSUMER.MSG.NEXT.EGRESS.egress-worker",
            "$JS.API.STREAM.PURGE.BACKPRESSURE_15",
        ])
        .await;
    backpressure.subscriptions_refused(&["egress.v1.>"]).await;

    // egress: sinks, receipts, its own retry schedules, dead letters; never the earlier
    // stages, never a change to the registry.
    let egress = server.connect("egress", Some(&inbox("egress"))).await;
    let mut schedule = HeaderMap::new();
    schedule.insert("Nats-Schedule", "@at 2099-01-01T00:00:00Z");
    schedule.insert("Nats-Schedule-Target", "egress.v1.acme.ops.hooks");
    egress
        .stored_with("delay.v1.egress.acme.ops.hooks.k1", schedule.clone())
        .await;
    // Cancelling a leftover schedule, as egress's handler does: the last message of its delay
    // subject by direct get, then that message by sequence (never a purge).
    let leftover = egress
        .stored_with("delay.v1.egress.acme.ops.hooks.k2", schedule)
        .await;
    let stream = egress
        .js
        .get_stream_no_info("EGRESS")
        .await
        .expect("EGRESS");
    let found = stream
        .direct_get_last_for_subject("delay.v1.egress.acme.ops.hooks.k2")
        .await
        .expect("egress direct-gets the last schedule of a delay subject");
    assert_eq!(found.sequence, leftover.sequence);
    assert!(
        stream
            .delete_message(found.sequence)
            .await
            .expect("egress deletes a schedule by sequence")
    );
    egress.stored("dlq.v1.acme.egress.hooks").await;
    // Fan-out: a copy per destination back into EGRESS (what a schedule could do anyway), and
    // a destination that stayed down marked disabled in its record.
    egress.stored("egress.v1.acme.ops.hooks").await;
    egress.stored("$KV.destinations.acme.crm").await;
    egress.stored("$KV.rate-limits.acme.crm.tokens").await;
    // Shared circuit breakers: an open breaker's record, written and watched by every replica.
    egress.stored("$KV.breakers.acme.crm").await;
    let breakers = egress
        .js
        .get_key_value("breakers")
        .await
        .expect("egress opens the breakers bucket");
    breakers
        .watch_all()
        .await
        .expect("egress watches the breakers bucket");
    breakers
        .entry("acme.crm")
        .await
        .expect("egress reads a breaker's record");
    for (subject, payload) in [
        ("delivered.v1.acme.ops.hooks", "receipt"),
        ("sink.acme.hooks", "delivered"),
    ] {
        egress
            .client
            .publish(subject, payload.into())
            .await
            .expect("publish");
    }
    egress.client.flush().await.expect("flush");
    let delivered = next_message(&server, &mut sinks, "the sink publish arrives").await;
    assert_eq!(&delivered.payload[..], b"delivered");
    egress
        .publishes_refused(&[
            "ingress.v1.acme.ops.hooks",
            "idempotency.v1.acme.ops.hooks",
            "backpressure.v1.15.acme.ops.hooks",
            "delay.v1.backpressure.acme.ops.hooks.k1",
            "$KV.routes.acme._.hooks",
            "$KV.tenants.acme",
            // No whole-stream purge of EGRESS (not even filtered): leftover schedules go one
            // by one. Its direct gets reach only the last schedule of a delay subject, never a
            // message by sequence or the messages waiting for delivery.
            "$JS.API.STREAM.PURGE.EGRESS",
            "$JS.API.DIRECT.GET.EGRESS",
            "$JS.API.DIRECT.GET.EGRESS.egress.v1.acme.ops.hooks",
            "$JS.API.STREAM.MSG.GET.EGRESS",
            "$JS.API.STREAM.MSG.DELETE.IDEMPOTENCY",
            "$JS.API.STREAM.PURGE.DLQ",
            "$JS.API.STREAM.MSG.DELETE.DLQ",
            "$JS.API.STREAM.INFO.KV_api-keys",
            "$JS.API.DIRECT.GET.KV_routes",
            // Of rate-limits, only destinations' token records: no tenant's limit or tokens.
            "$KV.rate-limits.acme.tokens",
            "$KV.rate-limits.acme.limit",
            "$KV.rate-limits.acme.crm.limit",
            "$JS.API.DIRECT.GET.KV_rate-limits.$KV.rate-limits.acme.tokens",
        ])
        .await;
    egress.subscriptions_refused(&["sink.>"]).await;

    // dlq: dead letters (the safety net), alerts, and replays into the stages; never the
    // registry or another service's buckets, never a stage's consumer, never a whole stream.
    let dlq = server.connect("dlq", Some(&inbox("dlq"))).await;
    dlq.stored("dlq.v1._.egress._").await;
    // The events webhook: its on-demand consumer on EVENTS, created, then opened again.
    let topology = switchyard_topology::DeploymentConfig::default()
        .resolve()
        .expect("the declared topology");
    for _ in 0..2 {
        switchyard_dlq_service::events_webhook::EventsWebhook::consumer(&dlq.js, &topology)
            .await
            .expect("dlq creates and opens the events-webhook consumer");
    }
    dlq.client
        .publish("alerts.v1.acme.dlq-inflow", "alert".into())
        .await
        .expect("publish");
    dlq.client.flush().await.expect("flush");
    dlq.publishes_refused(&[
        "sink.acme.hooks",
        "delivered.v1.acme.ops.hooks",
        "delay.v1.egress.acme.ops.hooks.k1",
        "control.v1.dlq.replay",
        "$KV.routes.acme._.hooks",
        "$KV.tenants.acme",
        "$KV.idempotency.acme.hooks.order-1",
        "$KV.rate-limits.acme.tokens",
        "$JS.API.DIRECT.GET.KV_routes.$KV.routes.acme._.hooks",
        "$JS.API.STREAM.PURGE.DLQ",
        "$JS.API.STREAM.DELETE.DLQ",
        "$JS.API.STREAM.UPDATE.DLQ",
        "$JS.API.STREAM.PURGE.EGRESS",
        // No INGRESS rights at all: the ingress stage dead-letters on its last delivery
        // itself, and the safety net watches only the shared streams.
        "$JS.API.STREAM.INFO.INGRESS_acme",
        "$JS.API.STREAM.MSG.GET.INGRESS_acme",
        "$JS.API.STREAM.MSG.DELETE.INGRESS_acme",
        "$JS.API.DIRECT.GET.INGRESS_acme",
        "$JS.API.CONSUMER.LIST.INGRESS_acme",
        "$JS.API.CONSUMER.INFO.INGRESS_acme.ingress-worker",
        "$JS.API.STREAM.INFO.INGRESS",
        "$JS.API.STREAM.MSG.GET.INGRESS",
        "$JS.API.STREAM.MSG.DELETE.INGRESS",
        "$JS.API.CONSUMER.MSG.NEXT.EGRESS.egress-worker",
        "$JS.API.CONSUMER.DELETE.EGRESS.egress-worker",
        "$JS.API.CONSUMER.CREATE.EGRESS.evil.egress.v1.>",
        "$JS.API.CONSUMER.CREATE.DLQ.browse",
        "$JS.API.CONSUMER.CREATE.DLQ.browse.dlq.v1.>",
    ])
    .await;
    // Its DLQ readers are ordered (ephemeral) consumers: a durable one is refused, whichever
    // way it is asked for (by name: a refused subject, listed above; without: the server).
    let response = dlq
        .client
        .request(
            "$JS.API.CONSUMER.CREATE.DLQ",
            serde_json::json!({
                "stream_name": "DLQ",
                "config": {"durable_name": "browse", "ack_policy": "explicit"}
            })
            .to_string()
            .into(),
        )
        .await
        .expect("a JetStream API answer");
    let answer: serde_json::Value = serde_json::from_slice(&response.payload).expect("json");
    assert!(
        answer.get("error").is_some(),
        "a durable consumer on DLQ through CONSUMER.CREATE.DLQ: {answer}"
    );
    dlq.subscriptions_refused(&[
        "dlq.v1.>",
        "ingress.v1.>",
        "sink.>",
        "$JS.EVENT.ADVISORY.>",
        "$JS.EVENT.ADVISORY.CONSUMER.CREATED.EGRESS.*",
        // Advisories reach the safety net through the ADVISORIES stream, not a subscription.
        "$JS.EVENT.ADVISORY.CONSUMER.MAX_DELIVERIES.EGRESS.*",
        "$JS.EVENT.ADVISORY.CONSUMER.MSG_TERMINATED.EGRESS.*",
        "$JS.EVENT.ADVISORY.CONSUMER.MAX_DELIVERIES.INGRESS_acme.*",
        "$JS.EVENT.ADVISORY.CONSUMER.MSG_TERMINATED.INGRESS_acme.*",
        "$JS.EVENT.ADVISORY.CONSUMER.MAX_DELIVERIES.INGRESS.*",
    ])
    .await;

    // What was allowed was stored; what was refused was not (only ingress's own publish
    // reached the tenant's ingress stream).
    assert_eq!(
        subjects(&admin, "INGRESS_acme").await,
        ["ingress.v1.acme.ops.hooks"]
    );
    assert_eq!(
        subjects(&admin, &backpressure_stream("acme")).await,
        ["backpressure.v1.15.acme.ops.hooks"]
    );
    assert_eq!(
        subjects(&admin, "IDEMPOTENCY").await,
        ["idempotency.v1.acme.ops.hooks"]
    );
    assert_eq!(
        subjects(&admin, "EGRESS").await,
        [
            "egress.v1.acme.ops.hooks",
            "egress.v1.acme.ops.hooks",
            "delay.v1.egress.acme.ops.hooks.k1",
            // egress's own fan-out copy
            "egress.v1.acme.ops.hooks"
        ]
    );
    assert_eq!(
        subjects(&admin, "DLQ").await,
        [
            "dlq.v1.acme.ingress.hooks",
            "dlq.v1.acme.egress.hooks",
            "dlq.v1._.egress._"
        ]
    );
}

/// The subjects a stream holds, in order (read as admin, without consuming).
async fn subjects(admin: &Conn, stream: &str) -> Vec<String> {
    stored_messages(&admin.js, stream)
        .await
        .into_iter()
        .map(|m| m.subject.to_string())
        .collect()
}

/// The services, each connected as its own user through the project's connect path.
struct Services {
    shutdown: CancellationToken,
    tasks: Vec<tokio::task::JoinHandle<Result<(), switchyard_service::LaunchError>>>,
    ingress_http: std::net::SocketAddr,
}

impl Services {
    /// Starts ingress, idempotency, backpressure, egress and dlq, each connected as its own
    /// user.
    async fn start(server: &AuthServer) -> Self {
        // What egress's binary does first: one crypto provider for its webhook client.
        let _ = async_nats::rustls::crypto::ring::default_provider().install_default();
        let shutdown = CancellationToken::new();
        let any_port: std::net::SocketAddr = "127.0.0.1:0".parse().expect("addr");

        let mut config = switchyard_ingress::IngressConfig::load(None).expect("ingress config");
        (config.nats, config.http.listen) = (server.nats_config("ingress", config.nats), any_port);
        let client = server.service_client(&config.nats).await;
        let ingress = server
            .started(
                "ingress",
                switchyard_ingress::start(config, client, shutdown.clone()),
            )
            .await;

        let mut config =
            switchyard_idempotency::IdempotencyConfig::load(None).expect("idempotency config");
        (config.nats, config.http.listen) =
            (server.nats_config("idempotency", config.nats), any_port);
        config.idempotency.next_stage = InputStage::Backpressure;
        let client = server.service_client(&config.nats).await;
        let idempotency = server
            .started(
                "idempotency",
                switchyard_idempotency::start(config, client, shutdown.clone()),
            )
            .await;

        let mut config =
            switchyard_backpressure::BackpressureConfig::load(None).expect("backpressure config");
        (config.nats, config.http.listen) =
            (server.nats_config("backpressure", config.nats), any_port);
        let client = server.service_client(&config.nats).await;
        let backpressure = server
            .started(
                "backpressure",
                switchyard_backpressure::start(config, client, shutdown.clone()),
            )
            .await;

        let mut config = switchyard_egress::EgressConfig::load(None).expect("egress config");
        (config.nats, config.http.listen) = (server.nats_config("egress", config.nats), any_port);
        let client = server.service_client(&config.nats).await;
        let egress = server
            .started(
                "egress",
                switchyard_egress::start(config, client, shutdown.clone()),
            )
            .await;

        let mut config = switchyard_dlq_service::DlqConfig::load(None).expect("dlq config");
        (config.nats, config.http.listen) = (server.nats_config("dlq", config.nats), any_port);
        // A sweep every second, and rescues after advisories delayed past the test, so the
        // sweep (which needs more of the JetStream API than an advisory rescue) does them. An
        // inflow alert from a tenant's second entry. Jobs start only when the control subject
        // wakes the service (no periodic scan after the first): that proves admin may publish
        // it and dlq may subscribe to it.
        config.safety_net.rescue_delay_ms = 600_000;
        config.safety_net.sweep_interval_secs = 1;
        config.jobs.scan_interval_secs = 3600;
        config.jobs.lease_secs = 5;
        config.stats.lease_secs = 5;
        config.alerts.threshold = 1;
        let client = server.service_client(&config.nats).await;
        let dlq = server
            .started(
                "dlq",
                switchyard_dlq_service::start(config, client, shutdown.clone()),
            )
            .await;

        Self {
            shutdown,
            tasks: vec![
                ingress.task,
                idempotency.task,
                backpressure.task,
                egress.task,
                dlq.task,
            ],
            ingress_http: ingress.http_addr,
        }
    }

    /// Stops every service and waits for each to drain.
    async fn stop(self, server: &AuthServer) {
        self.shutdown.cancel();
        for task in self.tasks {
            match tokio::time::timeout(TIMEOUT, task).await {
                Ok(joined) => joined.expect("service task").expect("service drained"),
                Err(_) => panic!(
                    "a service did not drain within {TIMEOUT:?}; violations:\n{}",
                    server.violations().join("\n")
                ),
            }
        }
    }
}

/// `POST /v1/messages/{tenant}/{team}/{platform}` on the ingress API; returns the status line
/// and the body.
async fn post_http(
    addr: std::net::SocketAddr,
    path: &str,
    key: &str,
    id: &str,
    body: &str,
) -> (String, String) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut stream = tokio::net::TcpStream::connect(addr)
        .await
        .expect("ingress http");
    let request = format!(
        "POST {path} HTTP/1.1\r\nHost: ingress\r\nAuthorization: Bearer {key}\r\nIdempotency-Key: {id}\r\n\
         Content-Type: text/plain\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    stream.write_all(request.as_bytes()).await.expect("request");
    let mut response = String::new();
    stream
        .read_to_string(&mut response)
        .await
        .expect("response");
    let status = response.lines().next().unwrap_or_default().to_owned();
    let body = response
        .split_once("\r\n\r\n")
        .map_or("", |(_, body)| body)
        .to_owned();
    (status, body)
}

/// The next message on `subscriber`, or a panic naming `what` and the server's violations.
async fn next_message(
    server: &AuthServer,
    subscriber: &mut async_nats::Subscriber,
    what: &str,
) -> async_nats::Message {
    match tokio::time::timeout(TIMEOUT, subscriber.next()).await {
        Ok(Some(message)) => message,
        _ => panic!(
            "{what} did not arrive within {TIMEOUT:?}; violations:\n{}",
            server.violations().join("\n")
        ),
    }
}

/// Waits until every stage has settled: no stage consumer (acme's `ingress-worker` on its own
/// `INGRESS_acme` included) has pending or unacknowledged messages, and the backpressure work
/// queue (read through per-tenant consumers) is empty.
async fn wait_settled(admin: &Conn) {
    wait_for("every stage to settle", TIMEOUT, || async {
        if !ingress_settled(&admin.js, "acme").await? {
            return None;
        }
        for (consumer, stream) in [
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
        (stored_count_in(&admin.js, &backpressure_streams()).await == 0).then_some(())
    })
    .await;
}

#[tokio::test]
async fn each_service_runs_end_to_end_as_its_own_user_without_a_single_violation() {
    let server = AuthServer::start().await;
    let admin = server.connect("admin", None).await;
    provision_as_admin(&admin, &["acme"]).await;
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
    let mut alerts = admin
        .client
        .subscribe("alerts.v1.>".to_owned())
        .await
        .expect("admin subscribes to alerts");
    admin.client.flush().await.expect("flush");
    let services = Services::start(&server).await;
    let acme = server.connect("tenant-acme", Some("_INBOX_acme")).await;

    // Over NATS, as the tenant: validated, claimed, delivered to the route's subject.
    let mut headers = HeaderMap::new();
    headers.insert("Nats-Msg-Id", "order-1");
    acme.stored_with("ingress.v1.acme.ops.hooks", headers.clone())
        .await;
    let first = next_message(&server, &mut sink, "the delivery arrives").await;
    assert_eq!(first.subject.as_str(), "sink.acme.hooks");
    assert_eq!(&first.payload[..], b"payload");
    next_message(&server, &mut receipts, "the receipt arrives").await;

    // Over HTTP, through ingress's producer API (ingress writes INGRESS_acme; for a duplicate
    // it direct-gets the original from there, whether or not it is still waiting).
    let key = issue_api_key(&admin.js, "acme").await;
    for duplicate in [false, true] {
        // The key is usable once ingress's watch has it; a 401 stored nothing.
        let (status, body) = wait_for("the key at ingress", Duration::from_secs(10), || async {
            let (status, body) = post_http(
                services.ingress_http,
                "/v1/messages/acme/ops/hooks",
                &key,
                "order-2",
                "over http",
            )
            .await;
            (!status.contains(" 401")).then_some((status, body))
        })
        .await;
        assert!(status.contains(" 202"), "ingress accepted: {status} {body}");
        let accepted: serde_json::Value = serde_json::from_str(&body).expect("json body");
        assert_eq!(accepted["stream"], "INGRESS_acme", "{body}");
        assert_eq!(accepted["duplicate"], duplicate, "{body}");
    }
    let second = next_message(&server, &mut sink, "the http delivery arrives").await;
    assert_eq!(&second.payload[..], b"over http");

    // A duplicate (idempotency reads its claim back), a message without an id (ingress
    // dead-letters it) and one without a route (egress dead-letters it).
    wait_settled(&admin).await;
    acme.stored_with("ingress.v1.acme.ops.hooks", headers).await;
    acme.js
        .publish("ingress.v1.acme.ops.hooks".to_owned(), "no id".into())
        .await
        .expect("publish")
        .await
        .expect("stored");
    let mut headers = HeaderMap::new();
    headers.insert("Nats-Msg-Id", "order-3");
    acme.stored_with("ingress.v1.acme.ops.nowhere", headers)
        .await;
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
    acme.stored_with("ingress.v1.acme.ops.hooks", headers).await;
    let next = next_message(&server, &mut sink, "the marker arrives").await;
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

    dlq_end_to_end(&server, &admin, &acme, &mut sink, &mut alerts).await;

    wait_settled(&admin).await;
    services.stop(&server).await;

    let violations = server.violations();
    assert!(
        violations.is_empty(),
        "the services needed more than accounts.conf allows:\n{}",
        violations.join("\n")
    );
}

/// What the dlq service does, as its own user, in the running pipeline (acme already has two
/// entries: `missing_msg_id` from ingress and `no_route` from egress): an inflow alert, a
/// safety-net rescue from a work queue, the inflow counters, and replay jobs created the way
/// the CLI creates them (as admin: the `dlq-jobs` bucket, then `control.v1.dlq.replay`).
async fn dlq_end_to_end(
    server: &AuthServer,
    admin: &Conn,
    acme: &Conn,
    sink: &mut async_nats::Subscriber,
    alerts: &mut async_nats::Subscriber,
) {
    // Two entries within the window, threshold 1: the counting instance alerts.
    let alert = next_message(server, alerts, "the dlq inflow alert").await;
    assert_eq!(alert.subject.as_str(), "alerts.v1.acme.dlq-inflow");

    // A second entry without a route, to replay to another stage than the one that gave up.
    let mut headers = HeaderMap::new();
    headers.insert("Nats-Msg-Id", "order-5");
    acme.stored_with("ingress.v1.acme.ops.nowhere", headers)
        .await;
    within(server, "the second no_route entry", || async {
        let entries = subjects(admin, "DLQ").await;
        (entries
            .iter()
            .filter(|s| *s == "dlq.v1.acme.egress.nowhere")
            .count()
            == 2)
            .then_some(())
    })
    .await;

    // The safety net: a consumer that never acks (a stage crashing on every delivery) makes
    // JetStream give up on a message in the EGRESS work queue. The dlq service's sweep finds
    // it stranded (its max-deliveries advisory is heard too, but that rescue waits longer
    // than the test), reads it, writes a record and deletes it from the work queue.
    let poison = admin.stored("delay.v1.egress.acme.ops.hooks.poison").await;
    let egress = admin.js.get_stream("EGRESS").await.expect("EGRESS");
    let never_acks = egress
        .create_consumer(pull::Config {
            durable_name: Some("never-acks".to_owned()),
            filter_subject: "delay.v1.egress.>".to_owned(),
            ack_wait: Duration::from_secs(1),
            max_deliver: 1,
            ..Default::default()
        })
        .await
        .expect("a consumer that never acks");
    let rescued = within(
        server,
        "the safety net to dead-letter the message",
        || async {
            // Pull (and never ack), so the server notices the expired delivery.
            if let Ok(mut batch) = never_acks
                .fetch()
                .max_messages(1)
                .expires(Duration::from_millis(500))
                .messages()
                .await
            {
                while batch.next().await.is_some() {}
            }
            stored_messages(&admin.js, "DLQ")
                .await
                .into_iter()
                .find(|m| m.subject.as_str() == "dlq.v1._.egress._")
        },
    )
    .await;
    let headers = &rescued.headers;
    assert_eq!(
        headers
            .get(switchyard_dlq::headers::CODE)
            .map(|v| v.as_str()),
        Some("exhausted_deliveries")
    );
    assert_eq!(
        headers
            .get(switchyard_dlq::headers::SOURCE_SEQ)
            .map(|v| v.as_str().to_owned()),
        Some(poison.sequence.to_string())
    );
    within(server, "the rescued message to leave EGRESS", || async {
        let left = stored_messages(&admin.js, "EGRESS").await;
        (!left.iter().any(|m| m.sequence == poison.sequence)).then_some(())
    })
    .await;
    egress
        .delete_consumer("never-acks")
        .await
        .expect("deleting never-acks");

    // The inflow counters, as `switchyard dlq stats` reads them.
    let stats = StatsStore::new(
        admin
            .js
            .get_key_value("dlq-stats")
            .await
            .expect("dlq-stats"),
    );
    let counted = within(server, "the dlq service to count every entry", || async {
        let counters = stats.counters(">").await.ok()?;
        let counted: Vec<(String, String, u64)> = counters
            .into_iter()
            .filter_map(Result::ok)
            .map(|r| {
                let tenant = r.tenant.map_or("_".to_owned(), |t| t.as_str().to_owned());
                (
                    format!("{tenant}.{}", r.stage),
                    r.code.as_str().to_owned(),
                    r.count,
                )
            })
            .collect();
        (counted.iter().map(|(_, _, n)| n).sum::<u64>() == 4).then_some(counted)
    })
    .await;
    assert_eq!(
        counted,
        [
            ("_.egress".to_owned(), "exhausted_deliveries".to_owned(), 1),
            ("acme.egress".to_owned(), "no_route".to_owned(), 2),
            ("acme.ingress".to_owned(), "missing_msg_id".to_owned(), 1),
        ]
    );

    // Replay jobs, created as `switchyard dlq replay --job` creates them. The route is fixed
    // first, so the replayed no_route entries are delivered this time.
    route_to_sink(admin, "nowhere").await;
    let jobs = JobStore::new(admin.js.get_key_value("dlq-jobs").await.expect("dlq-jobs"));
    let entries = stored_messages(&admin.js, "DLQ").await;
    let seqs_of = |subject: &str| -> Vec<u64> {
        entries
            .iter()
            .filter(|m| m.subject.as_str() == subject)
            .map(|m| m.sequence)
            .collect()
    };
    let (nowhere, hooks) = (
        seqs_of("dlq.v1.acme.egress.nowhere"),
        seqs_of("dlq.v1.acme.ingress.hooks"),
    );
    let upper_seq = entries.iter().map(|m| m.sequence).max().expect("entries");
    let job = |selection, target, dry_run, upper_seq| {
        JobRecord::new(
            JobSpec {
                selection,
                target,
                rate: 100,
                dry_run,
                upper_seq,
                total: 1,
            },
            OffsetDateTime::now_utc(),
        )
    };
    // A filter (read through an ordered consumer), up to the first no_route entry: back to
    // egress, the stage that gave up.
    let to_egress = job(
        Selection {
            tenant: Some("acme".parse().expect("id")),
            code: Some(DlqCode::NoRoute),
            ..Default::default()
        },
        None,
        false,
        nowhere[0],
    );
    // A listed sequence (read by sequence), re-entering at backpressure (`--to backpressure`).
    let to_backpressure = job(
        Selection {
            seqs: vec![nowhere[1]],
            ..Default::default()
        },
        Some(InputStage::Backpressure),
        false,
        upper_seq,
    );
    // A dry run of an entry that is not replayable: kept, nothing published.
    let dry_run = job(
        Selection {
            seqs: hooks,
            ..Default::default()
        },
        None,
        true,
        upper_seq,
    );
    for job in [&to_egress, &to_backpressure, &dry_run] {
        jobs.create(job)
            .await
            .expect("creating a replay job as admin");
        admin
            .client
            .publish(
                "control.v1.dlq.replay",
                serde_json::json!({ "job": job.id }).to_string().into(),
            )
            .await
            .expect("admin wakes the dlq service");
    }
    admin.client.flush().await.expect("flush");
    for _ in 0..2 {
        let replayed = next_message(server, sink, "a replayed entry is delivered").await;
        assert_eq!(replayed.subject.as_str(), "sink.acme.nowhere");
        assert_eq!(&replayed.payload[..], b"payload");
    }
    for (job, replayed, kept) in [
        (&to_egress, 1, 0),
        (&to_backpressure, 1, 0),
        (&dry_run, 0, 1),
    ] {
        let done = within(server, "the replay job to finish", || async {
            let (record, _) = jobs.get(&job.id).await.ok()??;
            record.state.is_finished().then_some(record)
        })
        .await;
        assert_eq!(done.state, JobState::Done, "{done:?}");
        assert_eq!(
            (done.progress.replayed, done.progress.kept_total()),
            (replayed, kept),
            "{done:?}"
        );
    }
    // The replayed entries left the DLQ; the rest stays.
    assert_eq!(
        subjects(admin, "DLQ").await,
        ["dlq.v1.acme.ingress.hooks", "dlq.v1._.egress._"]
    );
}

/// Waits for `probe`; on timeout, fails naming `what` and the server's violations.
async fn within<T, F, Fut>(server: &AuthServer, what: &str, mut probe: F) -> T
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Option<T>>,
{
    let deadline = tokio::time::Instant::now() + TIMEOUT;
    loop {
        if let Some(value) = probe().await {
            return value;
        }
        if tokio::time::Instant::now() >= deadline {
            panic!(
                "{what}: not within {TIMEOUT:?}; violations:\n{}",
                server.violations().join("\n")
            );
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// `switchyard doctor` reads a user's permissions from the server itself
/// (`$SYS.REQ.USER.INFO`); with the bundled accounts only admin may ask (a restricted user's
/// permissions are checked end to end in the CLI's own suite).
#[tokio::test]
async fn the_doctor_reads_admins_permissions_and_says_when_a_user_may_not_ask() {
    use switchyard_cli::commands::doctor::{Level, permissions};

    let server = AuthServer::start().await;
    let topology = DeploymentConfig::default().resolve().expect("topology");
    // admin has no allow-list at all.
    let conn = server.connect("admin", None).await;
    let answered = permissions::ask(&conn.client).await;
    assert!(
        answered.server_time.is_some(),
        "the server stamps its answer: {answered:?}"
    );
    let admin = permissions::check(&answered, &topology, "_INBOX");
    assert_eq!(admin.len(), 1, "{admin:?}");
    assert_eq!(admin[0].level, Level::Ok);
    assert_eq!(
        admin[0].detail,
        "user admin in account SWITCHYARD may publish and subscribe to every subject"
    );

    // The service and tenant users may not ask (least privilege): the doctor says so and
    // how to fix it, instead of guessing.
    for (user, inbox) in [("tenant-acme", "_INBOX_acme"), ("egress", "_INBOX_egress")] {
        let conn = server.connect(user, Some(inbox)).await;
        let answered = permissions::ask(&conn.client).await;
        assert!(answered.info.is_err(), "{user}: {answered:?}");
        let checks = permissions::check(&answered, &topology, inbox);
        assert_eq!(checks.len(), 1, "{checks:?}");
        assert_eq!(checks[0].level, Level::Warn, "{checks:?}");
        assert!(
            checks[0]
                .fix
                .as_deref()
                .unwrap()
                .contains("$SYS.REQ.USER.INFO"),
            "{checks:?}"
        );
    }
}
