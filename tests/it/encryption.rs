//! Per-tenant payload encryption through the whole pipeline, on a real nats-server: tenant
//! `acme` has encryption on, `globex` has not.
//!
//! - What the server stores: no byte of an encrypted tenant's payload, sent over the HTTP API,
//!   is in any file of the store directory; a plain tenant's is (the scan's own control).
//!   Sent by a NATS producer, the payload is in clear only in the tenant's own `INGRESS_<tenant>`
//!   files, until ingress seals it as it hands it on (`docs/contracts.md`, "Encryption").
//! - Both tenants are delivered byte-identical; egress's content filters read the decrypted
//!   payload, and what nothing takes is dead-lettered still sealed.
//! - An ingress without the KEK refuses an encrypted tenant's HTTP producers (`503
//!   encryption_unavailable`) rather than storing their payloads in clear.
//! - Tampering with a sealed payload, its nonce, its key id, its tenant or the message it
//!   belongs to dead-letters it at egress with a precise code; the DLQ keeps the ciphertext.
//! - DEK rotation keeps old messages readable, KEK rotation re-wraps without touching them,
//!   and after shredding a stored message of the tenant cannot be decrypted.
//! - The encrypted tenant's route secrets are stored sealed (the harness writes them as the
//!   CLI does): its deliveries carry a valid signature made with the plaintext secret, and a
//!   sealed secret copied into another route dead-letters `invalid_route`, signing nothing.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use async_nats::HeaderMap;
use async_nats::jetstream;
use bytes::Bytes;
use switchyard_crypt::{
    KekRing, KeyState, KeyStore, LocalKek, OpenError, SecretPlace, insert_seal_headers,
};
use switchyard_dlq::{DlqCode, DlqEntry};
use switchyard_envelope::headers;
use switchyard_keys::{Address, RouteKey, RouteTeam, TenantId};
use switchyard_registry::{Route, Store, TenantRecord, WebhookRoute, WebhookSecret};
use switchyard_subjects::{InputStage, Namespace, StageSubject, SubjectKind};
use switchyard_testkit::{NatsServer, wait_for};
use switchyard_topology::{BucketName, ConsumerName, DeploymentConfig, provision};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use crate::pipeline::{SECRET, Sink, signature_is_valid};

const DEADLINE: Duration = Duration::from_secs(30);

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Svc {
    Ingress,
    Idempotency,
    Backpressure,
    Egress,
}

struct Running {
    svc: Svc,
    http_addr: SocketAddr,
    shutdown: CancellationToken,
    task: JoinHandle<Result<(), switchyard_service::LaunchError>>,
}

/// The pipeline with KEK files: services are started (and restarted) with the KEK file the test
/// names.
struct Harness {
    server: NatsServer,
    js: jetstream::Context,
    sink: Sink,
    keys: KeyStore,
    dir: tempfile::TempDir,
    services: Vec<Running>,
    api_key: String,
}

/// Writes a KEK file holding 32 bytes of `byte` (hex), mode 0600.
fn kek_file(dir: &Path, name: &str, byte: u8) -> PathBuf {
    let path = dir.join(name);
    std::fs::write(&path, format!("{byte:02x}").repeat(32)).unwrap();
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).unwrap();
    }
    path
}

fn ring(paths: &[&Path]) -> KekRing {
    let mut ring = KekRing::new(LocalKek::from_file(paths[0]).unwrap());
    for path in &paths[1..] {
        ring = ring
            .with_previous(LocalKek::from_file(path).unwrap())
            .unwrap();
    }
    ring
}

fn tenant(name: &str) -> TenantId {
    TenantId::new(name).unwrap()
}

impl Harness {
    /// A provisioned server, `tenants` registered (with a default route to the sink for each
    /// of `platforms`), encryption on for `encrypted` under the KEK in file `kek1`. No service
    /// runs yet.
    async fn start(tenants: &[&str], encrypted: &[&str], platforms: &[&str]) -> Self {
        switchyard_runtime::init_for_tests();
        let _ = rustls::crypto::ring::default_provider().install_default();
        let server = NatsServer::start().await;
        let client = server.client().await;
        let js = jetstream::new(client);
        let topology = DeploymentConfig::default().resolve().unwrap();
        provision(&js, &topology, false).await.unwrap();
        for name in tenants {
            switchyard_fixtures::enable_tenant(&js, name, &TenantRecord::enabled()).await;
            // A pull left by an ingress the test stopped may take a message; it comes back
            // after the ack wait, shortened so restarts cost a second, not 30.
            let worker = topology
                .tenant_consumer(ConsumerName::IngressWorker, &tenant(name))
                .unwrap();
            let mut config = worker.config.clone();
            config.ack_wait = Duration::from_secs(1);
            js.update_consumer_on_stream(config, &worker.stream)
                .await
                .unwrap();
        }
        let dir = tempfile::tempdir().unwrap();
        let kek1 = kek_file(dir.path(), "kek1", 0x41);
        let keys = KeyStore::new(
            topology
                .open_bucket(&js, BucketName::TenantKeys)
                .await
                .unwrap()
                .1,
        );
        let now = time::OffsetDateTime::now_utc();
        for name in encrypted {
            keys.enable(&tenant(name), &ring(&[&kek1]), now)
                .await
                .unwrap();
        }
        let sink = Sink::start().await;
        let routes: Store<RouteKey, Route> = Store::new(js.get_key_value("routes").await.unwrap());
        let ring1 = ring(&[&kek1]);
        for name in tenants {
            // An encrypted tenant's secrets sealed, as `switchyard routes set --kek-file` does.
            let sealer = keys
                .secret_sealer(&tenant(name), Some(&ring1))
                .await
                .unwrap();
            for platform in platforms {
                let key = RouteKey {
                    tenant: tenant(name),
                    team: RouteTeam::Any,
                    platform: platform.parse().unwrap(),
                };
                let mut route = Route::Webhook(WebhookRoute {
                    url: sink.url(&format!("{name}/{platform}")),
                    secret: WebhookSecret(SECRET.into()),
                    timeout_ms: 5_000,
                    max_in_flight: 32,
                    headers: Default::default(),
                    previous_secrets: Vec::new(),
                    signing_key: None,
                });
                sealer
                    .seal(&mut route, &SecretPlace::Route(key.clone()))
                    .unwrap();
                routes.put(&key, &route).await.unwrap();
            }
        }
        let api_key = switchyard_fixtures::issue_api_key(&js, tenants[0]).await;
        Self {
            server,
            js,
            sink,
            keys,
            dir,
            services: Vec::new(),
            api_key,
        }
    }

    fn kek(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    /// Starts `svc` with `kek` as its `[encryption] kek_file` (ingress and egress).
    async fn start_service(&mut self, svc: Svc, kek: Option<&Path>) {
        let shutdown = CancellationToken::new();
        let url = self.server.url();
        let client = self.server.client().await;
        let any_port = "127.0.0.1:0".parse().unwrap();
        let running = match svc {
            Svc::Ingress => {
                let mut config = switchyard_ingress::IngressConfig::load(None).unwrap();
                (config.nats.url, config.http.listen) = (url, any_port);
                config.encryption.kek_file = kek.map(Path::to_owned);
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
                config.encryption.kek_file = kek.map(Path::to_owned);
                switchyard_egress::start(config, client, shutdown.clone()).await
            }
        }
        .unwrap();
        self.services.push(Running {
            svc,
            http_addr: running.http_addr,
            shutdown,
            task: running.task,
        });
    }

    /// Stops `svc` gracefully.
    async fn stop_service(&mut self, svc: Svc) {
        let at = self
            .services
            .iter()
            .position(|r| r.svc == svc)
            .expect("service running");
        let running = self.services.remove(at);
        running.shutdown.cancel();
        running.task.await.unwrap().unwrap();
    }

    async fn stop(mut self) {
        for running in self.services.drain(..) {
            running.shutdown.cancel();
            running.task.await.unwrap().unwrap();
        }
    }

    /// POSTs `payload` for `tenant` to ingress's HTTP API; asserts `202`.
    async fn post(&self, tenant: &str, platform: &str, id: &str, payload: &[u8]) {
        let (status, body) = self.post_answer(tenant, platform, id, payload).await;
        assert_eq!(status, 202, "{body}");
    }

    /// POSTs `payload` for `tenant` to ingress's HTTP API; the status and body of the answer.
    async fn post_answer(
        &self,
        tenant: &str,
        platform: &str,
        id: &str,
        payload: &[u8],
    ) -> (u16, String) {
        let ingress = self
            .services
            .iter()
            .find(|r| r.svc == Svc::Ingress)
            .expect("ingress running");
        let response = reqwest::Client::new()
            .post(format!(
                "http://{}/v1/messages/{tenant}/ops/{platform}",
                ingress.http_addr
            ))
            .header("Authorization", format!("Bearer {}", self.api_key))
            .header("Idempotency-Key", id)
            .body(payload.to_vec())
            .send()
            .await
            .unwrap();
        let status = response.status().as_u16();
        (status, response.text().await.unwrap())
    }

    /// Publishes `payload` as a NATS producer of `tenant`.
    async fn publish(&self, tenant: &str, platform: &str, id: &str, payload: &[u8]) {
        self.publish_with(tenant, platform, id, payload, HeaderMap::new())
            .await;
    }

    /// [`Self::publish`] with the producer's own headers `h`.
    async fn publish_with(
        &self,
        tenant: &str,
        platform: &str,
        id: &str,
        payload: &[u8],
        mut h: HeaderMap,
    ) {
        h.insert(headers::NATS_MSG_ID, id);
        self.js
            .publish_with_headers(
                format!("ingress.v1.{tenant}.ops.{platform}"),
                h,
                Bytes::copy_from_slice(payload),
            )
            .await
            .unwrap()
            .await
            .unwrap();
    }

    /// Waits until the sink took a delivery on `path`; its body.
    async fn delivered(&self, path: &str) -> Bytes {
        wait_for(&format!("a delivery on {path}"), DEADLINE, || async {
            self.sink
                .received()
                .into_iter()
                .find(|r| r.path == path && r.delivered())
                .map(|r| r.body)
        })
        .await
    }

    /// Waits until the last message on `egress.v1.<tenant>.ops.<platform>` is stored in EGRESS
    /// (no egress running); its headers and payload.
    async fn waiting_in_egress(&self, tenant: &str, platform: &str) -> (HeaderMap, Bytes) {
        let stream = self.js.get_stream("EGRESS").await.unwrap();
        let subject = format!("egress.v1.{tenant}.ops.{platform}");
        wait_for(&format!("a message on {subject}"), DEADLINE, || async {
            let message = stream.direct_get_last_for_subject(&subject).await.ok()?;
            Some((message.headers, message.payload))
        })
        .await
    }

    /// Waits until the DLQ holds `n` entries.
    async fn dlq(&self, n: usize) -> Vec<DlqEntry> {
        wait_for(&format!("{n} DLQ entries"), DEADLINE, || async {
            let entries = switchyard_fixtures::dlq_entries(&self.js).await;
            (entries.len() >= n).then_some(entries)
        })
        .await
    }

    /// Every file of the server's JetStream store holding `needle`.
    fn store_files_holding(&self, needle: &[u8]) -> Vec<PathBuf> {
        let mut found = Vec::new();
        let mut pending = vec![self.server.dir().join("jetstream")];
        while let Some(dir) = pending.pop() {
            let Ok(entries) = std::fs::read_dir(&dir) else {
                continue;
            };
            for entry in entries.flatten() {
                let path = entry.path();
                if path.is_dir() {
                    pending.push(path);
                } else if std::fs::read(&path)
                    .is_ok_and(|bytes| bytes.windows(needle.len()).any(|w| w == needle))
                {
                    found.push(path);
                }
            }
        }
        found
    }
}

#[tokio::test]
async fn an_encrypted_tenants_payload_is_never_stored_in_clear_and_both_tenants_get_theirs_byte_identical()
 {
    let mut h = Harness::start(&["acme", "globex"], &["acme"], &["billing", "refused"]).await;
    let kek = h.kek("kek1");
    for svc in [Svc::Ingress, Svc::Idempotency, Svc::Backpressure] {
        h.start_service(svc, Some(&kek)).await;
    }
    h.sink.answer("acme/refused", 400);
    h.sink.answer("globex/refused", 400);
    let secret = br#"{"card":"acme-only-4111-1111-1111","note":"\u00e9"}"#;
    let open = br#"{"order":"globex-in-clear-7731"}"#;
    let secret_refused = br#"{"card":"acme-refused-4222"}"#;
    let open_refused = br#"{"order":"globex-refused-8842"}"#;
    h.post("acme", "billing", "a-1", secret).await;
    h.post("acme", "refused", "a-2", secret_refused).await;
    // A plain tenant's producer sending seal headers of its own: noise, dropped by ingress.
    let mut spoofed = HeaderMap::new();
    spoofed.insert(switchyard_crypt::KEY_HEADER, "0123456789abcdef");
    spoofed.insert(switchyard_crypt::NONCE_HEADER, "AAAAAAAAAAAAAAAA");
    h.publish_with("globex", "billing", "g-1", open, spoofed)
        .await;
    h.publish("globex", "refused", "g-2", open_refused).await;

    // All four wait in EGRESS (no egress runs yet). The plain tenant's payloads are in the
    // store's files (the scan finds what is there) ...
    for (tenant, platform) in [
        ("acme", "billing"),
        ("acme", "refused"),
        ("globex", "billing"),
        ("globex", "refused"),
    ] {
        h.waiting_in_egress(tenant, platform).await;
    }
    wait_for(
        "globex's payload in the store's files",
        DEADLINE,
        || async { (!h.store_files_holding(b"globex-in-clear-7731").is_empty()).then_some(()) },
    )
    .await;
    // ... and no file holds the encrypted tenant's: not its ingress stream (the HTTP API sealed
    // them before storing them), not the stage streams, not a bucket.
    for marker in [&b"acme-only-4111"[..], b"acme-refused-4222"] {
        assert_eq!(h.store_files_holding(marker), Vec::<PathBuf>::new());
    }

    // acme's route secret is sealed in the `routes` bucket, globex's in clear.
    let raw_route = |key: &'static str| {
        let js = h.js.clone();
        async move {
            let kv = js.get_key_value("routes").await.unwrap();
            String::from_utf8(kv.get(key).await.unwrap().unwrap().to_vec()).unwrap()
        }
    };
    let acme_route = raw_route("acme._.billing").await;
    assert!(
        !acme_route.contains(SECRET) && acme_route.contains("\"secret\":\"enc:v1:"),
        "{acme_route}"
    );
    assert!(raw_route("globex._.billing").await.contains(SECRET));

    // Delivered byte-identical; the refused ones dead-lettered, the encrypted one still sealed.
    h.start_service(Svc::Egress, Some(&kek)).await;
    assert_eq!(h.delivered("acme/billing").await, &secret[..]);
    assert_eq!(h.delivered("globex/billing").await, &open[..]);
    // Both signed with the plaintext secret: egress opened acme's.
    for path in ["acme/billing", "globex/billing"] {
        let received = h.sink.received();
        let r = received.iter().find(|r| r.path == path).unwrap();
        assert!(signature_is_valid(SECRET, r), "{path}");
    }
    let entries = h.dlq(2).await;
    assert!(
        entries
            .iter()
            .all(|e| e.record.code == DlqCode::PermanentFailure),
        "{entries:#?}"
    );
    wait_for(
        "globex's refused payload in the DLQ's files",
        DEADLINE,
        || async { (!h.store_files_holding(b"globex-refused-8842").is_empty()).then_some(()) },
    )
    .await;
    for marker in [&b"acme-only-4111"[..], b"acme-refused-4222"] {
        assert_eq!(h.store_files_holding(marker), Vec::<PathBuf>::new());
    }
    // The management API shows acme's dead-lettered payload decrypted when it holds the KEK,
    // and sealed (saying so) when it does not.
    let acme_seq = entries
        .iter()
        .find(|e| {
            e.record
                .tenant
                .as_ref()
                .is_some_and(|t| t.as_str() == "acme")
        })
        .expect("acme's refused message in the DLQ")
        .seq;
    let operator = "operator-token-0123456789abcdef0123456789";
    for with_kek in [true, false] {
        let mut state = switchyard_cli::api::ApiState::open(
            &h.js,
            &DeploymentConfig::default().resolve().unwrap(),
            operator,
        )
        .await
        .unwrap();
        if with_kek {
            state = state.with_kek(ring(&[kek.as_path()])).await.unwrap();
        }
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let base = format!("http://{}", listener.local_addr().unwrap());
        tokio::spawn(
            async move { axum::serve(listener, switchyard_cli::api::router(state)).await },
        );
        let body: serde_json::Value = reqwest::Client::new()
            .get(format!("{base}/v1/tenants/acme/dlq/{acme_seq}"))
            .bearer_auth(operator)
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        assert_eq!(body["encryption"]["decrypted"], with_kek, "{body}");
        assert_eq!(
            body.to_string().contains("acme-refused-4222"),
            with_kek,
            "{body}"
        );
    }

    // A NATS producer's payload is stored in clear in the tenant's own ingress stream while it
    // waits for the ingress stage (stopped here), and there only; ingress seals it as it hands
    // it on.
    h.stop_service(Svc::Ingress).await;
    let nats = br#"{"card":"acme-nats-5500"}"#;
    h.publish("acme", "billing", "a-3", nats).await;
    let waiting = wait_for(
        "acme's NATS payload in its ingress stream's files",
        DEADLINE,
        || async {
            let found = h.store_files_holding(b"acme-nats-5500");
            (!found.is_empty()).then_some(found)
        },
    )
    .await;
    h.start_service(Svc::Ingress, Some(&kek)).await;
    wait_for("the NATS producer's acme delivery", DEADLINE, || async {
        h.sink
            .received()
            .iter()
            .any(|r| r.path == "acme/billing" && r.delivered() && r.body == nats[..])
            .then_some(())
    })
    .await;
    for path in waiting
        .iter()
        .chain(&h.store_files_holding(b"acme-nats-5500"))
    {
        assert!(
            path.to_string_lossy().contains("INGRESS_acme"),
            "acme's payload in clear outside its ingress stream: {}",
            path.display()
        );
    }
    h.stop().await;
}

/// One sealed message of `tenant` as ingress hands it to egress: envelope headers, seal
/// headers, its hop `Nats-Msg-Id`, the ciphertext; `seq` makes its envelope unique.
fn sealed_message(
    record: &switchyard_crypt::TenantKeys,
    ring: &KekRing,
    seq: u64,
    payload: &[u8],
) -> (switchyard_envelope::Envelope, HeaderMap, Bytes) {
    let tenant = record.tenant.clone();
    let envelope = switchyard_fixtures::stamped(
        Address::parse(tenant.as_str(), "ops", "billing").unwrap(),
        &format!("t-{seq}"),
        seq,
    );
    let mut h = HeaderMap::new();
    envelope.write_headers(&mut h);
    h.insert(
        headers::NATS_MSG_ID,
        envelope.hop_msg_id(switchyard_keys::Stage::Egress),
    );
    let sealed = record
        .current_key(ring)
        .unwrap()
        .seal(&tenant, &envelope.id.to_string(), payload)
        .unwrap();
    insert_seal_headers(&mut h, &sealed.headers);
    (envelope, h, sealed.ciphertext.into())
}

#[tokio::test]
async fn tampering_with_a_sealed_payload_its_key_id_tenant_or_message_dead_letters_it_precisely() {
    let mut h = Harness::start(&["acme", "initech"], &["acme", "initech"], &["billing"]).await;
    let kek = h.kek("kek1");
    h.start_service(Svc::Egress, Some(&kek)).await;
    // An ingress without the KEK cannot seal: it refuses the tenant's HTTP producers, never
    // stores their payload in clear.
    h.start_service(Svc::Ingress, None).await;
    let (status, body) = h.post_answer("acme", "billing", "x-1", b"{}").await;
    assert_eq!(status, 503, "{body}");
    assert!(body.contains("encryption_unavailable"), "{body}");
    let ring = ring(&[&kek]);
    let KeyState::On(acme, _) = h.keys.state(&tenant("acme")).await.unwrap() else {
        panic!("acme has encryption on");
    };
    let ns = Namespace::default();
    let subject = |tenant: &str| {
        StageSubject {
            stage: InputStage::Egress,
            address: Address::parse(tenant, "ops", "billing").unwrap(),
        }
        .format(&ns)
    };
    let plaintext = br#"{"secret":"tamper-proof-9931"}"#;

    // The genuine message is delivered (the control).
    let (_, genuine, ciphertext) = sealed_message(&acme, &ring, 1, plaintext);
    h.js.publish_with_headers(subject("acme"), genuine, ciphertext)
        .await
        .unwrap()
        .await
        .unwrap();
    assert_eq!(h.delivered("acme/billing").await, &plaintext[..]);

    let mut expected = Vec::new();
    // A flipped ciphertext byte.
    let (env, hd, ct) = sealed_message(&acme, &ring, 2, plaintext);
    let mut flipped = ct.to_vec();
    flipped[3] ^= 0x01;
    expected.push((env.msg_id.to_string(), DlqCode::PayloadTampered));
    h.js.publish_with_headers(subject("acme"), hd, flipped.into())
        .await
        .unwrap()
        .await
        .unwrap();
    // Another nonce.
    let (env, mut hd, ct) = sealed_message(&acme, &ring, 3, plaintext);
    hd.insert(switchyard_crypt::NONCE_HEADER, "AAAAAAAAAAAAAAAA");
    expected.push((env.msg_id.to_string(), DlqCode::PayloadTampered));
    h.js.publish_with_headers(subject("acme"), hd, ct)
        .await
        .unwrap()
        .await
        .unwrap();
    // Another key id.
    let (env, mut hd, ct) = sealed_message(&acme, &ring, 4, plaintext);
    hd.insert(switchyard_crypt::KEY_HEADER, "0123456789abcdef");
    expected.push((env.msg_id.to_string(), DlqCode::UnknownDataKey));
    h.js.publish_with_headers(subject("acme"), hd, ct)
        .await
        .unwrap()
        .await
        .unwrap();
    // Moved to another tenant (its tenant header and subject).
    let (env, mut hd, ct) = sealed_message(&acme, &ring, 5, plaintext);
    hd.insert(headers::TENANT, "initech");
    expected.push((env.msg_id.to_string(), DlqCode::UnknownDataKey));
    h.js.publish_with_headers(subject("initech"), hd, ct)
        .await
        .unwrap()
        .await
        .unwrap();
    // Moved to another message of the same tenant (another envelope id).
    let (env, mut hd, ct) = sealed_message(&acme, &ring, 6, plaintext);
    let (other, _, _) = sealed_message(&acme, &ring, 7, plaintext);
    hd.insert(headers::ID, other.id.to_string());
    expected.push((env.msg_id.to_string(), DlqCode::PayloadTampered));
    h.js.publish_with_headers(subject("acme"), hd, ct)
        .await
        .unwrap()
        .await
        .unwrap();

    let entries = h.dlq(expected.len()).await;
    for (msg_id, code) in &expected {
        let entry = entries
            .iter()
            .find(|e| {
                e.original_headers
                    .get(headers::MSG_ID)
                    .is_some_and(|v| v.as_str() == msg_id)
            })
            .unwrap_or_else(|| panic!("no DLQ entry for {msg_id}: {entries:#?}"));
        assert_eq!(
            entry.record.code, *code,
            "{msg_id}: {}",
            entry.record.reason
        );
        assert!(
            !entry
                .payload
                .windows(b"tamper-proof".len())
                .any(|w| w == b"tamper-proof"),
            "the DLQ keeps the ciphertext"
        );
        assert!(
            entry
                .original_headers
                .get(switchyard_crypt::KEY_HEADER)
                .is_some()
        );
    }
    // Only the control was delivered.
    assert_eq!(
        h.sink.received().iter().filter(|r| r.delivered()).count(),
        1
    );
    h.stop().await;
}

#[tokio::test]
async fn rotated_keys_keep_old_messages_readable_and_shredding_makes_the_rest_unreadable() {
    let mut h = Harness::start(&["acme"], &["acme"], &["p1", "p2", "p3"]).await;
    let (kek1, kek2) = (h.kek("kek1"), kek_file(h.dir.path(), "kek2", 0x42));
    for svc in [Svc::Ingress, Svc::Idempotency, Svc::Backpressure] {
        h.start_service(svc, Some(&kek1)).await;
    }
    let acme = tenant("acme");

    // m1 waits in EGRESS sealed under the first data key.
    h.post("acme", "p1", "m-1", b"first message").await;
    let (first_headers, first_payload) = h.waiting_in_egress("acme", "p1").await;
    let first_key = first_headers
        .get(switchyard_crypt::KEY_HEADER)
        .expect("sealed")
        .as_str()
        .to_owned();
    assert_ne!(&first_payload[..], b"first message");
    assert_eq!(
        first_headers
            .get(switchyard_envelope::headers::SCHEMA)
            .map(|v| v.as_str()),
        Some("2"),
        "a sealed payload is a version 2 envelope"
    );

    // DEK rotation: ingress (restarted, so it has certainly seen the record) seals m2 with the
    // new key.
    let second_key = h
        .keys
        .rotate(&acme, &ring(&[&kek1]), time::OffsetDateTime::now_utc())
        .await
        .unwrap();
    h.stop_service(Svc::Ingress).await;
    h.start_service(Svc::Ingress, Some(&kek1)).await;
    h.post("acme", "p2", "m-2", b"second message").await;
    let (second_headers, _) = h.waiting_in_egress("acme", "p2").await;
    assert_eq!(
        second_headers
            .get(switchyard_crypt::KEY_HEADER)
            .map(|v| v.as_str()),
        Some(second_key.as_str())
    );
    assert_ne!(first_key, second_key.as_str());

    // KEK rotation: both data keys re-wrapped under kek2; no message is touched.
    assert_eq!(
        h.keys.rewrap(&acme, &ring(&[&kek2, &kek1])).await.unwrap(),
        2
    );
    let (after_headers, after_payload) = h.waiting_in_egress("acme", "p1").await;
    assert_eq!(after_payload, first_payload);
    assert_eq!(
        after_headers.get(switchyard_crypt::NONCE_HEADER),
        first_headers.get(switchyard_crypt::NONCE_HEADER)
    );

    // Egress holding only the new KEK delivers both, byte-identical.
    h.start_service(Svc::Egress, Some(&kek2)).await;
    assert_eq!(h.delivered("acme/p1").await, &b"first message"[..]);
    assert_eq!(h.delivered("acme/p2").await, &b"second message"[..]);

    // Shredding: m3 waits in EGRESS, the tenant's keys are destroyed, and it cannot be
    // decrypted: egress dead-letters it `tenant_shredded`, and an operator holding the KEK gets
    // the same clear error.
    h.stop_service(Svc::Egress).await;
    h.stop_service(Svc::Ingress).await;
    h.start_service(Svc::Ingress, Some(&kek2)).await;
    h.post("acme", "p3", "m-3", b"third message, soon unreadable")
        .await;
    h.waiting_in_egress("acme", "p3").await;
    assert!(h.keys.shred(&acme).await.unwrap());
    assert_eq!(h.keys.state(&acme).await.unwrap(), KeyState::Shredded);
    h.start_service(Svc::Egress, Some(&kek2)).await;
    let entries = h.dlq(1).await;
    let entry = &entries[0];
    assert_eq!(entry.record.code, DlqCode::TenantShredded, "{entry:#?}");
    assert!(
        entry.record.reason.contains("crypto-shredded"),
        "{}",
        entry.record.reason
    );
    assert!(
        !entry
            .payload
            .windows(b"soon unreadable".len())
            .any(|w| w == b"soon unreadable")
    );
    let envelope_id = entry
        .original_headers
        .get(headers::ID)
        .unwrap()
        .as_str()
        .to_owned();
    let error = h
        .keys
        .open(
            &ring(&[&kek2]),
            &acme,
            &envelope_id,
            Some(&entry.original_headers),
            &entry.payload,
        )
        .await
        .unwrap_err();
    assert!(
        matches!(
            error,
            OpenError::Refused(switchyard_crypt::CryptError::Shredded { .. })
        ),
        "{error}"
    );
    assert!(error.to_string().contains("crypto-shredded"), "{error}");
    assert_eq!(
        h.sink.received().iter().filter(|r| r.delivered()).count(),
        2
    );
    h.stop().await;
}

#[tokio::test]
async fn content_filters_read_the_decrypted_payload_and_copies_stay_sealed() {
    let mut h = Harness::start(&["acme"], &["acme"], &[]).await;
    let kek = h.kek("kek1");
    let destinations: Store<switchyard_keys::DestinationKey, switchyard_registry::Destination> =
        Store::new(h.js.get_key_value("destinations").await.unwrap());
    let key = switchyard_keys::DestinationKey {
        tenant: tenant("acme"),
        destination: "big-orders".parse().unwrap(),
    };
    let destination = switchyard_registry::Destination {
        target: Route::Webhook(WebhookRoute {
            url: h.sink.url("acme/big"),
            secret: WebhookSecret(SECRET.into()),
            timeout_ms: 5_000,
            max_in_flight: 16,
            headers: Default::default(),
            previous_secrets: Vec::new(),
            signing_key: None,
        }),
        subscription: serde_json::from_value(
            serde_json::json!({"filter": {"body": {"amount": {"$gt": 100}}}}),
        )
        .unwrap(),
        description: None,
        disabled: None,
        rate_limit: None,
    };
    destinations.put(&key, &destination).await.unwrap();
    // Egress loads the destinations before it handles a message.
    for svc in [
        Svc::Ingress,
        Svc::Idempotency,
        Svc::Backpressure,
        Svc::Egress,
    ] {
        h.start_service(svc, Some(&kek)).await;
    }
    h.post("acme", "shop", "big-1", br#"{"amount": 250}"#).await;
    h.post("acme", "shop", "small-1", br#"{"amount": 5}"#).await;
    assert_eq!(h.delivered("acme/big").await, &br#"{"amount": 250}"#[..]);
    // The small one matches no destination (and there is no route): dead-lettered, sealed.
    let entries = h.dlq(1).await;
    assert_eq!(
        entries[0].record.code,
        DlqCode::NoSubscriber,
        "{entries:#?}"
    );
    assert!(
        entries[0]
            .original_headers
            .get(switchyard_crypt::KEY_HEADER)
            .is_some()
    );
    assert_ne!(&entries[0].payload[..], br#"{"amount": 5}"#);
    h.stop().await;
}

/// A webhook receiver answering `status` with the request's own body (as receivers often do in
/// an error).
async fn echo_server(status: u16) -> SocketAddr {
    let app = axum::Router::new().route(
        "/{*path}",
        axum::routing::post(move |body: Bytes| async move {
            (axum::http::StatusCode::from_u16(status).unwrap(), body)
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await });
    addr
}

#[tokio::test]
async fn an_answer_echoing_an_encrypted_payload_is_not_kept_in_the_records() {
    let mut h = Harness::start(&["acme"], &["acme"], &["echo"]).await;
    let kek = h.kek("kek1");
    let addr = echo_server(422).await;
    let routes: Store<RouteKey, Route> = Store::new(h.js.get_key_value("routes").await.unwrap());
    routes
        .put(
            &RouteKey {
                tenant: tenant("acme"),
                team: RouteTeam::Any,
                platform: "echo".parse().unwrap(),
            },
            &Route::Webhook(WebhookRoute {
                url: format!("http://{addr}/x"),
                secret: WebhookSecret(SECRET.into()),
                timeout_ms: 5_000,
                max_in_flight: 32,
                headers: Default::default(),
                previous_secrets: Vec::new(),
                signing_key: None,
            }),
        )
        .await
        .unwrap();
    for svc in [
        Svc::Ingress,
        Svc::Idempotency,
        Svc::Backpressure,
        Svc::Egress,
    ] {
        h.start_service(svc, Some(&kek)).await;
    }
    h.post("acme", "echo", "e-1", br#"{"card":"acme-echo-4111"}"#)
        .await;
    let entries = h.dlq(1).await;
    assert_eq!(entries[0].record.code, DlqCode::PermanentFailure);
    assert!(
        entries[0]
            .record
            .reason
            .ends_with("HTTP 422: (response body not kept: the payload is encrypted)"),
        "{}",
        entries[0].record.reason
    );
    // Nothing of the answer in any stream: not the DLQ record, not the delivery log.
    let attempts = h.js.get_stream("ATTEMPTS").await.unwrap();
    wait_for("the attempt logged", DEADLINE, || async {
        let mut attempts = attempts.clone();
        (attempts.info().await.unwrap().state.messages >= 1).then_some(())
    })
    .await;
    assert_eq!(
        h.store_files_holding(b"acme-echo-4111"),
        Vec::<PathBuf>::new()
    );
    h.stop().await;
}

#[tokio::test]
async fn a_sealed_route_secret_copied_into_another_route_dead_letters_invalid_route_unsigned() {
    let mut h = Harness::start(&["acme"], &["acme"], &["billing", "copied"]).await;
    let kek = h.kek("kek1");
    // acme._.copied gets acme._.billing's sealed secret: bound to billing's label, it does not
    // open there.
    let routes: Store<RouteKey, Route> = Store::new(h.js.get_key_value("routes").await.unwrap());
    let key = |platform: &str| RouteKey {
        tenant: tenant("acme"),
        team: RouteTeam::Any,
        platform: platform.parse().unwrap(),
    };
    let Some(Route::Webhook(billing)) = routes.get(&key("billing")).await.unwrap() else {
        panic!("acme's billing route is a webhook");
    };
    assert!(billing.secret.is_sealed());
    let Some(Route::Webhook(mut copied)) = routes.get(&key("copied")).await.unwrap() else {
        panic!("acme's copied route is a webhook");
    };
    copied.secret = billing.secret.clone();
    routes
        .put(&key("copied"), &Route::Webhook(copied))
        .await
        .unwrap();
    for svc in [
        Svc::Ingress,
        Svc::Idempotency,
        Svc::Backpressure,
        Svc::Egress,
    ] {
        h.start_service(svc, Some(&kek)).await;
    }
    h.post("acme", "copied", "c-1", br#"{"x":"copied"}"#).await;
    h.post("acme", "billing", "c-2", br#"{"x":"billing"}"#)
        .await;
    let entries = h.dlq(1).await;
    assert_eq!(
        entries[0].record.code,
        DlqCode::InvalidRoute,
        "{entries:#?}"
    );
    let reason = &entries[0].record.reason;
    assert!(
        reason.contains("route acme._.copied") && reason.contains("does not authenticate"),
        "{reason}"
    );
    h.delivered("acme/billing").await;
    let received = h.sink.received();
    assert!(
        received.iter().all(|r| r.path != "acme/copied"),
        "nothing sent"
    );
    let billing = received.iter().find(|r| r.path == "acme/billing").unwrap();
    assert!(signature_is_valid(SECRET, billing));
    h.stop().await;
}

#[tokio::test]
async fn after_a_shred_the_tenants_new_messages_are_refused_not_passed_on_in_clear() {
    let mut h = Harness::start(&["acme"], &["acme"], &["billing"]).await;
    let kek = h.kek("kek1");
    for svc in [
        Svc::Ingress,
        Svc::Idempotency,
        Svc::Backpressure,
        Svc::Egress,
    ] {
        h.start_service(svc, Some(&kek)).await;
    }
    h.post("acme", "billing", "s-1", br#"{"x":"before-shred-1"}"#)
        .await;
    h.delivered("acme/billing").await;
    assert!(h.keys.shred(&tenant("acme")).await.unwrap());
    // Once ingress's watch has seen the shred (milliseconds), the HTTP API refuses: nothing
    // is stored, and the producer is not told why.
    let mut n = 0;
    let (status, body) = wait_for("the refusal", DEADLINE, || {
        n += 1;
        let (id, payload) = (format!("s-{n}"), format!(r#"{{"x":"after-shred-{n}"}}"#));
        let h = &h;
        async move {
            let (status, body) = h
                .post_answer("acme", "billing", &id, payload.as_bytes())
                .await;
            (status == 503).then_some((status, body))
        }
    })
    .await;
    assert_eq!(status, 503);
    assert!(body.contains("encryption_unavailable"), "{body}");
    assert!(!body.contains("shred"), "{body}");
    // Refused before anything was stored: there is nothing to wait for.
    let refused = format!("after-shred-{n}");
    assert_eq!(
        h.store_files_holding(refused.as_bytes()),
        Vec::<PathBuf>::new()
    );
    assert!(
        !h.sink
            .received()
            .iter()
            .any(|r| String::from_utf8_lossy(&r.body).contains(&refused)),
        "not delivered in clear"
    );
    // Attempts before the watch saw it (the documented window) were not passed on in clear
    // either once it did: nothing of acme's arrives unsealed after the refusal.
    assert!(n <= 3, "refused only after {n} posts");
    h.stop().await;
}
