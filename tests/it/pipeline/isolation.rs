//! Tenant isolation at the edge: each tenant's own ingress stream, duplicate window and quota.
//! Another tenant's ids cannot suppress a tenant's messages, and a tenant over its quota is
//! refused loudly — over NATS and HTTP — while the others are served.

use std::collections::{HashMap, HashSet};
use std::time::Duration;

use async_nats::HeaderMap;
use async_nats::jetstream::ErrorCode;
use switchyard_registry::TenantRecord;
use switchyard_testkit::wait_for;

use super::Pipeline;

const N: usize = 40;

fn http_client() -> reqwest::Client {
    let _ = rustls::crypto::ring::default_provider().install_default();
    reqwest::Client::builder().build().unwrap()
}

/// Publishes ids `n-1..=n-N` over NATS and `h-1..=h-N` over HTTP for one tenant; returns the
/// HTTP `202` bodies.
async fn publish_all(p: &Pipeline, http: &reqwest::Client, tenant: &str) -> Vec<serde_json::Value> {
    let key = switchyard_fixtures::issue_api_key(&p.js, tenant).await;
    let mut bodies = Vec::new();
    for i in 1..=N {
        let ack = p
            .publish_acked(tenant, "ops", "hooks", &format!("n-{i}"), tenant.as_bytes())
            .await;
        assert!(!ack.duplicate, "{tenant} n-{i}: {ack:?}");
        assert_eq!(ack.stream, format!("INGRESS_{tenant}"));
        // A key is usable once ingress's watch has it: a refused (401) request stored
        // nothing, so it is simply sent again.
        let response = wait_for(
            "the tenant's key at ingress",
            Duration::from_secs(10),
            || async {
                let response = http
                    .post(format!(
                        "{}/v1/messages/{tenant}/ops/hooks",
                        p.ingress_http()
                    ))
                    .bearer_auth(&key)
                    .header("Idempotency-Key", format!("h-{i}"))
                    .body(tenant.to_owned())
                    .send()
                    .await
                    .unwrap();
                (response.status() != 401).then_some(response)
            },
        )
        .await;
        assert_eq!(response.status(), 202, "{tenant} h-{i}");
        bodies.push(response.json().await.unwrap());
    }
    bodies
}

#[tokio::test]
async fn two_tenants_sending_the_same_ids_at_once_each_get_every_message_delivered_once() {
    let p = Pipeline::start(&["acme", "globex"]).await;
    p.route("acme", None, "hooks", "acme").await;
    p.route("globex", None, "hooks", "globex").await;
    let http = http_client();
    let (acme, globex) = futures::join!(
        publish_all(&p, &http, "acme"),
        publish_all(&p, &http, "globex")
    );
    for (tenant, bodies) in [("acme", &acme), ("globex", &globex)] {
        for body in bodies {
            assert_eq!(body["duplicate"], false, "{tenant}: {body}");
            assert_eq!(body["stream"], format!("INGRESS_{tenant}"), "{body}");
            assert!(body["id"].is_string(), "{body}");
        }
    }
    p.wait_delivered(4 * N, Duration::from_secs(120)).await;

    let received = p.sink.received();
    assert_eq!(received.len(), 4 * N, "each message exactly once");
    let ids: HashSet<&str> = received.iter().map(|r| r.webhook_id.as_str()).collect();
    assert_eq!(ids.len(), 4 * N, "distinct webhook ids");
    let mut per_route: HashMap<&str, usize> = HashMap::new();
    for r in &received {
        assert_eq!(
            r.path.as_bytes(),
            &r.body[..],
            "each tenant's payload to its own route"
        );
        *per_route.entry(r.path.as_str()).or_default() += 1;
    }
    assert_eq!(
        per_route,
        HashMap::from([("acme", 2 * N), ("globex", 2 * N)])
    );
    // The ids the HTTP API returned are the ones delivered.
    for body in acme.iter().chain(&globex) {
        assert!(ids.contains(body["id"].as_str().unwrap()), "{body}");
    }
    assert!(p.dlq().await.is_empty());
    p.stop().await;
}

#[tokio::test]
async fn a_tenant_over_its_quota_is_refused_loudly_loses_nothing_and_the_others_are_served() {
    let p = Pipeline::start(&["flood", "quiet"]).await;
    p.route("flood", None, "hooks", "flood").await;
    p.route("quiet", None, "hooks", "quiet").await;
    // The flooding tenant's quota: 5 messages accepted and not yet read. Its reader is paused
    // (as a stalled downstream would leave it), so what it sends stays in its stream.
    let record = TenantRecord {
        quota_msgs: Some(5),
        ..TenantRecord::enabled()
    };
    switchyard_fixtures::enable_tenant(&p.js, "flood", &record).await;
    let stream = p.js.get_stream("INGRESS_flood").await.unwrap();
    let until = time::OffsetDateTime::now_utc() + time::Duration::minutes(5);
    stream
        .pause_consumer("ingress-worker", until)
        .await
        .unwrap();

    let subject = "ingress.v1.flood.ops.hooks";
    let mut refused = 0;
    for i in 0..20 {
        let mut h = HeaderMap::new();
        h.insert("Nats-Msg-Id", format!("f-{i}"));
        let ack =
            p.js.publish_with_headers(subject, h, format!("flood-{i}").into())
                .await
                .unwrap()
                .await;
        match ack {
            Ok(ack) => assert!(i < 5 && !ack.duplicate, "f-{i} accepted: {ack:?}"),
            Err(error) => {
                let code = std::error::Error::source(&error)
                    .and_then(|s| s.downcast_ref::<async_nats::jetstream::Error>())
                    .map(|e| e.error_code());
                assert_eq!(code, Some(ErrorCode::STREAM_STORE_FAILED), "{error}");
                assert!(error.to_string().contains("maximum messages"), "{error}");
                refused += 1;
            }
        }
    }
    assert_eq!(
        refused, 15,
        "every publish past the quota refused, none dropped silently"
    );

    let http = http_client();
    let key = switchyard_fixtures::issue_api_key(&p.js, "flood").await;
    let response = wait_for(
        "flood's key to reach ingress",
        Duration::from_secs(10),
        || async {
            let response = http
                .post(format!("{}/v1/messages/flood/ops/hooks", p.ingress_http()))
                .bearer_auth(&key)
                .header("Idempotency-Key", "f-http")
                .body("flood-http")
                .send()
                .await
                .unwrap();
            (response.status() != 401).then_some(response)
        },
    )
    .await;
    assert_eq!(response.status(), 429);
    assert!(response.headers().contains_key("retry-after"));
    let body: serde_json::Value = response.json().await.unwrap();
    assert_eq!(body["code"], "quota_exceeded", "{body}");

    // The quiet tenant is served throughout.
    for i in 0..5 {
        p.publish("quiet", "ops", "hooks", &format!("q-{i}"), b"quiet")
            .await;
    }
    wait_for(
        "the quiet tenant's deliveries",
        Duration::from_secs(30),
        || async {
            (p.sink
                .received()
                .iter()
                .filter(|r| r.path == "quiet")
                .count()
                == 5)
                .then_some(())
        },
    )
    .await;
    assert!(p.sink.received().iter().all(|r| r.path == "quiet"));

    // Once its reader resumes, everything the flooding tenant had accepted is delivered.
    stream.resume_consumer("ingress-worker").await.unwrap();
    p.wait_delivered(10, Duration::from_secs(60)).await;
    let flood: HashSet<Vec<u8>> = p
        .sink
        .received()
        .into_iter()
        .filter(|r| r.path == "flood")
        .map(|r| r.body.to_vec())
        .collect();
    let accepted: HashSet<Vec<u8>> = (0..5).map(|i| format!("flood-{i}").into_bytes()).collect();
    assert_eq!(flood, accepted);
    assert!(p.dlq().await.is_empty());
    p.stop().await;
}
