//! The ingress service against a real nats-server: what it hands on, what it dead-letters
//! with which code, and what the HTTP API answers.

#[path = "ingress/credit.rs"]
mod credit;
#[path = "ingress/dlq_share.rs"]
mod dlq_share;
#[path = "ingress/listeners.rs"]
mod listeners;
#[path = "ingress/payload_limits.rs"]
mod payload_limits;
#[path = "ingress/unparsable_headers.rs"]
mod unparsable_headers;

use std::time::Duration;

use async_nats::HeaderMap;
use async_nats::jetstream::{self, message::StreamMessage};
use futures::StreamExt;
use switchyard_dlq::{DlqCode, DlqEntry};
use switchyard_envelope::{Envelope, headers};
use switchyard_fixtures::{
    Provisioned, Service, dlq_entries, enable_tenant, ingress_settled, ingress_stream,
    issue_api_key,
};
use switchyard_ingress::{IngressConfig, config};
use switchyard_keys::TenantId;
use switchyard_registry::TenantRecord;
use switchyard_runtime::ConfigSource;
use switchyard_testkit::{NatsServer, stored_count, stored_messages, wait_for};
use tokio_util::sync::CancellationToken;

struct Harness {
    _server: NatsServer,
    js: jetstream::Context,
    service: Service,
    /// The connection ingress runs on (its statistics count reconnects).
    ingress_client: async_nats::Client,
    /// An API key per tenant (`ghost`'s too: a key whose tenant is not registered).
    keys: std::collections::HashMap<&'static str, String>,
}

impl Harness {
    async fn start(max_payload_bytes: usize) -> Self {
        let provisioned = Self::prepare().await;
        Self::launch(provisioned, max_payload_bytes).await
    }

    /// A server with tenants acme, globex (enabled) and frozen (disabled), each with its own
    /// ingress stream; ingress not started yet.
    async fn prepare() -> Provisioned {
        let provisioned = Provisioned::start().await;
        for (tenant, enabled) in [("acme", true), ("globex", true), ("frozen", false)] {
            let record = TenantRecord {
                enabled,
                ..TenantRecord::enabled()
            };
            enable_tenant(&provisioned.js, tenant, &record).await;
        }
        provisioned
    }

    async fn launch(provisioned: Provisioned, max_payload_bytes: usize) -> Self {
        Self::launch_with(provisioned, |config| {
            config.ingress.max_payload_bytes = max_payload_bytes;
        })
        .await
    }

    /// Starts ingress with the test defaults, changed by `configure`.
    async fn launch_with(
        provisioned: Provisioned,
        configure: impl FnOnce(&mut IngressConfig),
    ) -> Self {
        let Provisioned { server, client, js } = provisioned;
        let mut config: IngressConfig = switchyard_runtime::load(&ConfigSource::new(
            config::DEFAULTS,
            "SWITCHYARD_INGRESS_TEST_UNUSED_",
        ))
        .unwrap();
        config.nats.url = server.url();
        config.http.listen = "127.0.0.1:0".parse().unwrap();
        configure(&mut config);
        let shutdown = CancellationToken::new();
        let mut keys = std::collections::HashMap::new();
        for tenant in ["acme", "globex", "frozen", "ghost"] {
            keys.insert(tenant, issue_api_key(&js, tenant).await);
        }
        let ingress_client = client.clone();
        let running = switchyard_ingress::start(config, client, shutdown.clone())
            .await
            .unwrap();
        Self {
            _server: server,
            js,
            service: Service::new(running, shutdown),
            ingress_client,
            keys,
        }
    }

    fn key(&self, tenant: &str) -> &str {
        &self.keys[tenant]
    }

    fn http(&self) -> String {
        format!("http://{}", self.service.running().http_addr)
    }

    /// The base URL of the probe listener (`/healthz`, `/readyz`, `/metrics`).
    fn probes(&self) -> String {
        format!("http://{}", self.service.running().probes_addr)
    }

    async fn publish(&self, subject: &str, h: HeaderMap, payload: &[u8]) {
        self.js
            .publish_with_headers(subject.to_owned(), h, payload.to_vec().into())
            .await
            .unwrap()
            .await
            .unwrap();
    }

    /// Waits until ingress has settled everything it received: nothing pending or unacked.
    async fn settled(&self) {
        wait_for(
            "ingress to settle every message",
            Duration::from_secs(20),
            || async {
                for tenant in ["acme", "globex", "frozen"] {
                    if ingress_settled(&self.js, tenant).await != Some(true) {
                        return None;
                    }
                }
                Some(())
            },
        )
        .await;
    }

    /// A metric's value as the probe listener renders it (`None` before it has a sample).
    async fn metric(&self, series: &str) -> Option<String> {
        let text = reqwest_client()
            .get(format!("{}/metrics", self.probes()))
            .send()
            .await
            .ok()?
            .text()
            .await
            .ok()?;
        text.lines()
            .find_map(|line| line.strip_prefix(series)?.strip_prefix(' '))
            .map(str::to_owned)
    }

    /// Waits until ingress's credit has applied `n` more scans than it had when called: every
    /// gate then reflects the streams as they were after this call.
    async fn scans_pass(&self, n: u64) {
        let scans = || async {
            self.metric("switchyard_ingress_credit_scans_total")
                .await
                .and_then(|v| v.parse::<u64>().ok())
        };
        let from = scans().await.unwrap_or(0);
        wait_for(
            &format!("{n} credit scans"),
            Duration::from_secs(20),
            || async { scans().await.filter(|now| *now >= from + n).map(|_| ()) },
        )
        .await;
    }

    async fn handed_on(&self) -> Vec<StreamMessage> {
        stored_messages(&self.js, "IDEMPOTENCY").await
    }

    async fn dlq(&self) -> Vec<DlqEntry> {
        dlq_entries(&self.js).await
    }

    async fn stop(self) {
        self.service.stop().await;
    }
}

fn with_id(id: &str) -> HeaderMap {
    let mut h = HeaderMap::new();
    h.insert(headers::NATS_MSG_ID, id);
    h
}

fn with(id: &str, extra: &[(&str, &str)]) -> HeaderMap {
    let mut h = with_id(id);
    for (k, v) in extra {
        h.insert(*k, *v);
    }
    h
}

#[tokio::test]
async fn good_messages_are_stamped_and_handed_on_with_payload_untouched() {
    let h = Harness::start(1024 * 1024).await;
    let payload = b"\x00\x01binary\xffpayload";
    let mut headers = with(
        "order-1",
        &[
            ("Content-Type", "application/octet-stream"),
            ("X-Custom", "kept"),
        ],
    );
    // A producer cannot spoof envelope headers: ingress replaces them.
    headers.insert("Switchyard-Id", "00000000-0000-0000-0000-000000000000");
    headers.insert("Switchyard-Attempt", "99");
    headers.insert("Switchyard-Tenant", "acme");
    h.publish("ingress.v1.acme.ops.slack", headers, payload)
        .await;
    h.settled().await;

    let forwarded = h.handed_on().await;
    assert_eq!(forwarded.len(), 1);
    let msg = &forwarded[0];
    assert_eq!(msg.subject.as_str(), "idempotency.v1.acme.ops.slack.1k");
    assert_eq!(&msg.payload[..], payload);
    let envelope = Envelope::from_headers(Some(&msg.headers)).unwrap();
    assert_eq!(envelope.msg_id.as_str(), "order-1");
    assert_eq!(
        envelope.schema_version, 1,
        "a plain payload is stamped with the lowest version that describes it"
    );
    assert_eq!(envelope.attempt.delivery, 0);
    assert_ne!(
        envelope.id.to_string(),
        "00000000-0000-0000-0000-000000000000"
    );
    assert_eq!(envelope.id.0.get_version_num(), 7);
    assert_eq!(
        envelope.source.stream, "INGRESS_acme",
        "the tenant's own stream"
    );
    assert!(
        envelope
            .trace
            .traceparent
            .as_deref()
            .is_some_and(|t| t.starts_with("00-"))
    );
    assert_eq!(
        msg.headers.get("X-Custom").map(|v| v.as_str()),
        Some("kept")
    );
    assert_eq!(
        msg.headers.get(headers::NATS_MSG_ID).map(|v| v.as_str()),
        Some(
            envelope
                .hop_msg_id(switchyard_keys::Stage::Idempotency)
                .as_str()
        )
    );
    assert!(h.dlq().await.is_empty());
    h.stop().await;
}

#[tokio::test]
async fn hostile_input_gets_precise_codes_and_good_traffic_still_flows() {
    let h = Harness::start(1024).await;
    let big = vec![b'x'; 1025];
    let long_tenant = format!("ingress.v1.{}.ops.slack", "t".repeat(65));
    let long_id = "i".repeat(2000);
    let cases: Vec<(&str, HeaderMap, &[u8], DlqCode)> = vec![
        (
            "ingress.v1.acme.ops",
            with_id("c2"),
            b"x",
            DlqCode::InvalidSubject,
        ),
        (
            "ingress.v1.acme.ops.slack.extra",
            with_id("c3"),
            b"x",
            DlqCode::InvalidSubject,
        ),
        (
            "ingress.v1.acme._ops.slack",
            with_id("c4"),
            b"x",
            DlqCode::InvalidSubject,
        ),
        (
            "ingress.v1.acme.ops.sl@ck",
            with_id("c5"),
            b"x",
            DlqCode::InvalidSubject,
        ),
        (
            "ingress.v1.acme.ops.slack",
            HeaderMap::new(),
            b"x",
            DlqCode::MissingMsgId,
        ),
        (
            "ingress.v1.acme.ops.slack",
            with(&long_id, &[]),
            b"x",
            DlqCode::InvalidHeader,
        ),
        (
            "ingress.v1.acme.ops.slack",
            with("c9", &[("Switchyard-Tenant", "ACME")]),
            b"x",
            DlqCode::TenantMismatch,
        ),
        (
            "ingress.v1.acme.ops.slack",
            with("c10", &[("Switchyard-Tenant", "globex")]),
            b"x",
            DlqCode::TenantMismatch,
        ),
        (
            "ingress.v1.frozen.ops.slack",
            with_id("c12"),
            b"x",
            DlqCode::TenantDisabled,
        ),
        (
            "ingress.v1.acme.ops.slack",
            with_id("c13"),
            &big,
            DlqCode::PayloadTooLarge,
        ),
        (
            "ingress.v1.acme.ops.slack",
            with("c14", &[("Content-Type", "application/json")]),
            b"{nope",
            DlqCode::InvalidPayload,
        ),
        (
            "ingress.v1.acme.ops.slack",
            with("c15", &[("Content-Type", "text/plain")]),
            b"\xff\xfe",
            DlqCode::InvalidPayload,
        ),
        (
            "ingress.v1.acme.ops.slack",
            with("c16", &[("Content-Type", "application/json")]),
            b"",
            DlqCode::InvalidPayload,
        ),
        (
            "ingress.v1.acme.ops.slack",
            with("c17\u{7f}", &[]),
            b"x",
            DlqCode::InvalidHeader,
        ),
        (
            "ingress.v1.acme.ops.slack",
            with("c18", &[("Content-Type", "application/cloudevents+json")]),
            b"[1,",
            DlqCode::InvalidPayload,
        ),
        (
            "ingress.v1.globex.ops.slack",
            with("c19", &[("Switchyard-Tenant", "acme")]),
            b"x",
            DlqCode::TenantMismatch,
        ),
        (
            "ingress.v1.acme.o%ps.slack",
            with_id("c20"),
            b"x",
            DlqCode::InvalidSubject,
        ),
        (
            "ingress.v1.acme.OPS.slack",
            with_id("c21"),
            b"x",
            DlqCode::InvalidSubject,
        ),
    ];
    // A subject whose tenant token is no registered tenant (invalid, unknown) has no stream
    // to land in: the publish itself is refused, nothing is accepted.
    for (subject, id) in [
        ("ingress.v1.ACME.ops.slack", "c1"),
        (long_tenant.as_str(), "c6"),
        ("ingress.v1.ghost.ops.slack", "c11"),
    ] {
        let refused = match h
            .js
            .publish_with_headers(subject.to_owned(), with_id(id), b"x".to_vec().into())
            .await
        {
            Ok(ack) => ack.await.err(),
            Err(error) => Some(error),
        };
        let error = refused.unwrap_or_else(|| panic!("{subject} was accepted"));
        assert_eq!(
            error.kind(),
            jetstream::context::PublishErrorKind::StreamNotFound,
            "{subject}: {error}"
        );
    }
    // Interleave a good message after every hostile one.
    for (i, (subject, headers, payload, _)) in cases.iter().enumerate() {
        h.publish(subject, headers.clone(), payload).await;
        h.publish(
            "ingress.v1.acme.ops.slack",
            with(
                &format!("good-{i}"),
                &[("Content-Type", "application/json")],
            ),
            b"{\"ok\":true}",
        )
        .await;
    }
    h.settled().await;

    let dlq = h.dlq().await;
    assert_eq!(
        dlq.len(),
        cases.len(),
        "{:#?}",
        dlq.iter()
            .map(|e| (&e.record.source_subject, e.record.code, &e.record.reason))
            .collect::<Vec<_>>()
    );
    // Tenants' streams are read side by side, so entries are matched by their message id,
    // not by order.
    for (subject, headers, _, expected) in &cases {
        let id = headers
            .get(headers::NATS_MSG_ID)
            .map(|v| v.as_str().to_owned());
        let entry = dlq
            .iter()
            .find(|e| e.original_msg_id == id)
            .unwrap_or_else(|| panic!("{subject} {id:?} is in the DLQ"));
        assert_eq!(
            entry.record.code, *expected,
            "{subject}: {}",
            entry.record.reason
        );
        assert_eq!(entry.record.source_subject, *subject);
        assert_eq!(entry.record.stage, switchyard_keys::Stage::Ingress);
        assert!(!entry.record.reason.is_empty());
    }
    // The payload in the DLQ is the original, byte for byte.
    let oversize = dlq
        .iter()
        .find(|e| e.record.code == DlqCode::PayloadTooLarge)
        .unwrap();
    assert_eq!(oversize.payload.len(), 1025);
    assert_eq!(oversize.original_msg_id.as_deref(), Some("c13"));

    let good = h.handed_on().await;
    assert_eq!(
        good.len(),
        cases.len(),
        "every good message between the hostile ones is handed on"
    );
    for tenant in ["acme", "globex", "frozen"] {
        assert_eq!(
            stored_count(&h.js, &ingress_stream(tenant)).await,
            0,
            "what ingress has settled leaves the tenant's stream (and its quota)"
        );
    }
    h.stop().await;
}

#[tokio::test]
async fn a_tenant_stream_whose_registry_record_is_gone_is_still_read_not_left_to_expire() {
    let provisioned = Harness::prepare().await;
    // globex's record deleted by hand: its stream stays, and goes on acking its producers.
    provisioned
        .js
        .get_key_value("tenants")
        .await
        .unwrap()
        .delete("globex")
        .await
        .unwrap();
    let h = Harness::launch(provisioned, 1024).await;
    h.publish("ingress.v1.globex.ops.slack", with_id("orphan-1"), b"x")
        .await;
    let entry = wait_for(
        "the message of a tenant without a record in the DLQ",
        Duration::from_secs(45),
        || async {
            h.dlq()
                .await
                .into_iter()
                .find(|e| e.original_msg_id.as_deref() == Some("orphan-1"))
        },
    )
    .await;
    assert_eq!(entry.record.code, DlqCode::UnknownTenant);
    assert_eq!(
        stored_count(&h.js, &ingress_stream("globex")).await,
        0,
        "decided, not left in the stream"
    );
    h.stop().await;
}

#[tokio::test]
async fn http_api_accepts_raw_and_json_and_refuses_bad_input_precisely() {
    let h = Harness::start(1024).await;
    let http = reqwest_client();
    let base = h.http();
    let acme = h.key("acme");

    let response = http
        .post(format!("{base}/v1/messages/acme/ops/slack"))
        .bearer_auth(h.key("acme"))
        .header("Idempotency-Key", "http-1")
        .header("Content-Type", "text/plain")
        .body("hello")
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 202);
    let body: serde_json::Value = response.json().await.unwrap();
    let id = body["id"].as_str().unwrap().to_owned();

    let response = http
        .post(format!("{base}/v1/messages"))
        .bearer_auth(h.key("globex"))
        .json(&serde_json::json!({"tenant":"globex","team":"ops","platform":"billing","id":"http-2","payload":{"amount":3}}))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 202);

    let refused: Vec<(reqwest::RequestBuilder, u16, &str)> = vec![
        (http.post(format!("{base}/v1/messages/acme/OPS/slack")).bearer_auth(acme).header("Idempotency-Key", "x").body("x"), 400, "invalid_subject"),
        (http.post(format!("{base}/v1/messages/acme/ops/slack")).bearer_auth(acme).body("x"), 400, "missing_msg_id"),
        (http.post(format!("{base}/v1/messages/ghost/ops/slack")).bearer_auth(h.key("ghost")).header("Idempotency-Key", "x").body("x"), 404, "unknown_tenant"),
        (http.post(format!("{base}/v1/messages/frozen/ops/slack")).bearer_auth(h.key("frozen")).header("Idempotency-Key", "x").body("x"), 403, "tenant_disabled"),
        (http.post(format!("{base}/v1/messages/acme/ops/slack")).bearer_auth(acme).header("Idempotency-Key", "x").body(vec![b'x'; 1025]), 413, "payload_too_large"),
        (http.post(format!("{base}/v1/messages/acme/ops/slack")).bearer_auth(acme).header("Idempotency-Key", "x").header("Content-Type", "application/json").body("{"), 400, "invalid_payload"),
        (http.post(format!("{base}/v1/messages")).bearer_auth(acme).header("Content-Type", "application/json").body("{\"tenant\":"), 400, "invalid_request"),
        (http.post(format!("{base}/v1/messages")).bearer_auth(acme).json(&serde_json::json!({"tenant":"acme","team":"ops","platform":"slack","id":"x","payload":1,"payload_base64":"eA=="})), 400, "invalid_payload"),
        // A message no retry can make fit (here a header block over JetStream's 65,535 bytes,
        // refused by the stream with 10097): 413, not a 503 telling the producer to retry.
        // (The body is one byte: the request passes the API's own body limit.)
        (http.post(format!("{base}/v1/messages/acme/ops/slack")).bearer_auth(acme).header("Idempotency-Key", "x").header("Content-Type", format!("application/octet-stream; x={}", "a".repeat(65_600))).body("x"), 413, "payload_too_large"),
        // Authentication: a key is required, and it publishes for its own tenant only.
        (http.post(format!("{base}/v1/messages/acme/ops/slack")).header("Idempotency-Key", "x").body("x"), 401, "unauthorized"),
        (http.post(format!("{base}/v1/messages/acme/ops/slack")).bearer_auth("sy_not-a-key").header("Idempotency-Key", "x").body("x"), 401, "unauthorized"),
        (http.post(format!("{base}/v1/messages/acme/ops/slack")).header("Authorization", format!("Basic {acme}")).header("Idempotency-Key", "x").body("x"), 401, "unauthorized"),
        (http.post(format!("{base}/v1/messages/globex/ops/slack")).bearer_auth(acme).header("Idempotency-Key", "x").body("x"), 403, "tenant_mismatch"),
        (http.post(format!("{base}/v1/messages/ACME/ops/slack")).bearer_auth(acme).header("Idempotency-Key", "x").body("x"), 403, "tenant_mismatch"),
        (http.post(format!("{base}/v1/messages")).bearer_auth(acme).json(&serde_json::json!({"tenant":"globex","team":"ops","platform":"slack","id":"x","payload":1})), 403, "tenant_mismatch"),
    ];
    for (request, status, code) in refused {
        let response = request.send().await.unwrap();
        assert_eq!(response.status().as_u16(), status);
        if status == 401 {
            assert_eq!(response.headers()["www-authenticate"], "Bearer");
        }
        let body: serde_json::Value = response.json().await.unwrap();
        assert_eq!(body["code"], code, "{body}");
        assert!(!body["error"].as_str().unwrap().is_empty());
    }

    h.settled().await;
    let forwarded = h.handed_on().await;
    assert_eq!(forwarded.len(), 2);
    // Tenants' streams are read side by side: find each message by its producer id.
    let by_id = |msg_id: &str| {
        forwarded
            .iter()
            .find(|m| {
                Envelope::from_headers(Some(&m.headers)).is_ok_and(|e| e.msg_id.as_str() == msg_id)
            })
            .unwrap_or_else(|| panic!("{msg_id} handed on"))
    };
    let first = Envelope::from_headers(Some(&by_id("http-1").headers)).unwrap();
    assert_eq!(
        first.id.to_string(),
        id,
        "the API returns the id the pipeline uses"
    );
    assert_eq!(&by_id("http-1").payload[..], b"hello");
    assert_eq!(&by_id("http-2").payload[..], b"{\"amount\":3}");
    assert!(
        h.dlq().await.is_empty(),
        "refused HTTP input never reaches the stream"
    );

    let probes = http
        .get(format!("{}/readyz", h.probes()))
        .send()
        .await
        .unwrap();
    assert_eq!(probes.status(), 200);
    let metrics = http
        .get(format!("{}/metrics", h.probes()))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(metrics.contains("switchyard_messages_processed_total{stage=\"ingress\",tenant=\"acme\",outcome=\"forwarded\"} 1"), "{metrics}");
    h.stop().await;
}

#[tokio::test]
async fn http_ids_are_read_as_utf8_content_types_are_checked_and_json_payloads_kept_verbatim() {
    let h = Harness::start(1024).await;
    let http = reqwest_client();
    let base = h.http();
    let acme = h.key("acme");
    let raw_url = format!("{base}/v1/messages/acme/ops/slack");
    let bytes = |b: &[u8]| reqwest::header::HeaderValue::from_bytes(b).unwrap();

    // A UTF-8 id is accepted over HTTP as it is over NATS and JSON.
    let response = http
        .post(&raw_url)
        .bearer_auth(acme)
        .header("Idempotency-Key", bytes("order ✓ 9".as_bytes()))
        .header("Content-Type", "text/plain")
        .body("hello")
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 202, "{}", response.text().await.unwrap());

    // The JSON route stores exactly the text sent for `payload`: a number beyond f64, keys out
    // of order, a duplicate key, an escape and inner whitespace all survive.
    let payload = r#"{"b": 1, "a":123456789012345678901234567890,"a":2,"s":"\u00e9" , "n":1.50}"#;
    let body = format!(
        r#"{{"tenant":"acme","team":"ops","platform":"slack","id":"json-verbatim","payload": {payload} }}"#
    );
    let response = http
        .post(format!("{base}/v1/messages"))
        .bearer_auth(acme)
        .header("Content-Type", "application/json")
        .body(body)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 202, "{}", response.text().await.unwrap());
    // `null` is a JSON payload like any other, not a missing one ...
    let null = serde_json::json!({"tenant":"acme","team":"ops","platform":"slack","id":"json-null","payload":null});
    let response = http
        .post(format!("{base}/v1/messages"))
        .bearer_auth(acme)
        .json(&null)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 202, "{}", response.text().await.unwrap());
    // ... so beside `payload_base64` it is one payload too many.
    let both = serde_json::json!({"tenant":"acme","team":"ops","platform":"slack","id":"json-both","payload":null,"payload_base64":"aGk="});
    let response = http
        .post(format!("{base}/v1/messages"))
        .bearer_auth(acme)
        .json(&both)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 400);
    let body: serde_json::Value = response.json().await.unwrap();
    assert_eq!(body["code"], "invalid_payload", "{body}");

    let refused = [
        // Not UTF-8: a bad header, not a missing one.
        (
            b"order \xff 9".as_slice(),
            b"text/plain".as_slice(),
            "invalid_header",
            "Idempotency-Key is not UTF-8",
        ),
        // A content type is refused, never dropped.
        (
            b"ct-1".as_slice(),
            "text/plain ✓".as_bytes(),
            "invalid_header",
            "visible ASCII",
        ),
        (
            b"ct-2".as_slice(),
            b"text/\xffplain".as_slice(),
            "invalid_header",
            "Content-Type is not UTF-8",
        ),
    ];
    for (id, content_type, code, message) in refused {
        let response = http
            .post(&raw_url)
            .bearer_auth(acme)
            .header("Idempotency-Key", bytes(id))
            .header("Content-Type", bytes(content_type))
            .body("x")
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 400);
        let body: serde_json::Value = response.json().await.unwrap();
        assert_eq!(body["code"], code, "{body}");
        assert!(body["error"].as_str().unwrap().contains(message), "{body}");
    }
    // The same content type over NATS is dead-lettered with the same code.
    h.publish(
        "ingress.v1.acme.ops.slack",
        with("nats-ct", &[("Content-Type", "text/plain ✓")]),
        b"x",
    )
    .await;

    h.settled().await;
    let forwarded = h.handed_on().await;
    assert_eq!(forwarded.len(), 3);
    let by_id = |msg_id: &str| {
        forwarded
            .iter()
            .find(|m| {
                Envelope::from_headers(Some(&m.headers)).is_ok_and(|e| e.msg_id.as_str() == msg_id)
            })
            .unwrap_or_else(|| panic!("{msg_id} handed on"))
    };
    assert_eq!(&by_id("order ✓ 9").payload[..], b"hello");
    assert_eq!(&by_id("json-null").payload[..], b"null");
    let json = by_id("json-verbatim");
    assert_eq!(std::str::from_utf8(&json.payload).unwrap(), payload);
    assert_eq!(
        json.headers.get(headers::CONTENT_TYPE).map(|v| v.as_str()),
        Some("application/json")
    );
    let dlq = h.dlq().await;
    assert_eq!(dlq.len(), 1);
    assert_eq!(dlq[0].original_msg_id.as_deref(), Some("nats-ct"));
    assert_eq!(dlq[0].record.code, DlqCode::InvalidHeader);
    h.stop().await;
}

fn reqwest_client() -> reqwest::Client {
    let _ = rustls::crypto::ring::default_provider().install_default();
    reqwest::Client::builder().build().unwrap()
}

#[tokio::test]
async fn http_producers_get_429_with_retry_after_while_admission_is_closed() {
    use switchyard_keys::{KvKey, RateKey, RateRecord, RateScope};
    use switchyard_registry::{Admission, PressureRecord};
    let h = Harness::start(1024).await;
    let kv = h.js.get_key_value("rate-limits").await.unwrap();
    let key = RateKey {
        scope: RateScope::Tenant(TenantId::new("acme").unwrap()),
        record: RateRecord::Pressure,
    };
    let record = |admission| PressureRecord {
        admission,
        backlog: 5000,
        updated_at: "2026-11-23T00:00:00Z".into(),
        reopen_in_secs: Some(42),
    };
    kv.put(
        key.render(),
        serde_json::to_vec(&record(Admission::Closed))
            .unwrap()
            .into(),
    )
    .await
    .unwrap();
    let http = reqwest_client();
    let post = |id: &'static str| {
        http.post(format!("{}/v1/messages/acme/ops/slack", h.http()))
            .bearer_auth(h.key("acme"))
            .header("Idempotency-Key", id)
            .body("x")
            .send()
    };
    let refused = wait_for(
        "the closed state to reach ingress",
        Duration::from_secs(10),
        || async {
            let response = post("a-1").await.unwrap();
            (response.status() == 429).then_some(response)
        },
    )
    .await;
    assert_eq!(
        refused.headers().get("retry-after").unwrap(),
        "42",
        "the backpressure service's estimate of when admission reopens"
    );
    let body: serde_json::Value = refused.json().await.unwrap();
    assert_eq!(body["code"], "admission_closed");
    assert!(
        body["error"]
            .as_str()
            .unwrap()
            .contains("5000 messages waiting")
    );
    // Other tenants are not affected.
    let other = http
        .post(format!("{}/v1/messages/globex/ops/slack", h.http()))
        .bearer_auth(h.key("globex"))
        .header("Idempotency-Key", "g-1")
        .body("x")
        .send()
        .await
        .unwrap();
    assert_eq!(other.status(), 202);
    // Reopened: accepted again.
    kv.put(
        key.render(),
        serde_json::to_vec(&record(Admission::Open)).unwrap().into(),
    )
    .await
    .unwrap();
    wait_for(
        "the open state to reach ingress",
        Duration::from_secs(10),
        || async { (post("a-2").await.unwrap().status() == 202).then_some(()) },
    )
    .await;
    h.stop().await;
}

#[tokio::test]
async fn a_message_no_earlier_delivery_settled_is_dead_lettered_by_ingress_on_its_last_delivery() {
    let provisioned = Harness::prepare().await;
    let js = provisioned.js.clone();
    // The tenant's consumer gives up after 3 deliveries, 1 s apart.
    let stream = ingress_stream("acme");
    let mut consumer: jetstream::consumer::PullConsumer = js
        .get_consumer_from_stream("ingress-worker", stream.as_str())
        .await
        .unwrap();
    let mut config = consumer.info().await.unwrap().config.clone();
    config.max_deliver = 3;
    config.ack_wait = Duration::from_secs(1);
    js.update_consumer_on_stream(config, stream.as_str())
        .await
        .unwrap();
    let mut h = with_id("poison-1");
    h.insert("Content-Type", "text/plain");
    js.publish_with_headers("ingress.v1.acme.ops.slack", h, "poison".into())
        .await
        .unwrap()
        .await
        .unwrap();
    // Two deliveries that end without a settlement, as a stage that crashes on the message
    // would leave them.
    for delivery in 1..=2 {
        let msg = wait_for("a delivery", Duration::from_secs(10), || {
            let consumer = consumer.clone();
            async move {
                let mut batch = consumer
                    .fetch()
                    .max_messages(1)
                    .expires(Duration::from_millis(500))
                    .messages()
                    .await
                    .ok()?;
                batch.next().await?.ok()
            }
        })
        .await;
        assert_eq!(msg.info().unwrap().delivered, delivery);
    }
    // Ingress gets the last delivery and dead-letters it without handling it again.
    let h = Harness::launch(provisioned, 1024 * 1024).await;
    let entry = wait_for("the dlq entry", Duration::from_secs(20), || async {
        h.dlq().await.into_iter().next()
    })
    .await;
    assert_eq!(entry.record.code, DlqCode::ExhaustedDeliveries);
    assert_eq!(entry.record.stage, switchyard_keys::Stage::Ingress);
    assert_eq!(entry.record.attempts, 3);
    assert_eq!(
        entry.record.tenant.as_ref().map(|t| t.as_str()),
        Some("acme")
    );
    assert_eq!(&entry.payload[..], b"poison");
    h.settled().await;
    assert!(h.handed_on().await.is_empty(), "not handed on");
    assert_eq!(
        stored_count(&h.js, &stream).await,
        0,
        "out of the tenant's quota"
    );
    h.stop().await;
}

#[tokio::test]
async fn a_revoked_or_expired_key_is_refused_within_a_watch_and_a_new_one_works() {
    use switchyard_keys::ApiKeyKey;
    use switchyard_registry::{ApiKeyRecord, Store};
    let h = Harness::start(1024).await;
    let http = reqwest_client();
    let post = |key: String, id: &'static str| {
        http.post(format!("{}/v1/messages/acme/ops/slack", h.http()))
            .bearer_auth(key)
            .header("Idempotency-Key", id)
            .body("x")
            .send()
    };
    let key = h.key("acme").to_owned();
    assert_eq!(post(key.clone(), "k-1").await.unwrap().status(), 202);

    let keys: Store<ApiKeyKey, ApiKeyRecord> =
        Store::new(h.js.get_key_value("api-keys").await.unwrap());
    let (id, _) = switchyard_registry::api_key::parse_token(&key).unwrap();
    let mut record = keys.get(&id).await.unwrap().unwrap();
    record.revoked_at = Some(time::OffsetDateTime::now_utc());
    keys.put(&id, &record).await.unwrap();
    let refused = wait_for(
        "the revocation to reach ingress",
        Duration::from_secs(10),
        || async {
            let response = post(key.clone(), "k-2").await.unwrap();
            (response.status() == 401).then_some(response)
        },
    )
    .await;
    let body: serde_json::Value = refused.json().await.unwrap();
    assert!(
        body["error"].as_str().unwrap().contains("revoked"),
        "{body}"
    );

    // An expired key is refused the same way.
    let fresh = issue_api_key(&h.js, "acme").await;
    let (fresh_id, _) = switchyard_registry::api_key::parse_token(&fresh).unwrap();
    let mut expiring = keys.get(&fresh_id).await.unwrap().unwrap();
    expiring.expires_at = Some(time::OffsetDateTime::now_utc() - time::Duration::seconds(1));
    keys.put(&fresh_id, &expiring).await.unwrap();
    wait_for(
        "the expired key to be refused",
        Duration::from_secs(10),
        || async { (post(fresh.clone(), "k-3").await.unwrap().status() == 401).then_some(()) },
    )
    .await;

    // A new key works as soon as ingress has seen it.
    let newer = issue_api_key(&h.js, "acme").await;
    wait_for(
        "the new key to be accepted",
        Duration::from_secs(10),
        || async { (post(newer.clone(), "k-4").await.unwrap().status() == 202).then_some(()) },
    )
    .await;
    h.stop().await;
}
