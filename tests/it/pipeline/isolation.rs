//! Tenant isolation at the edge: each tenant's own ingress stream, duplicate window and quota.
//! Another tenant's ids cannot suppress a tenant's messages, a tenant over its quota is
//! refused loudly — over NATS and HTTP — while the others are served, and a slow tenant of
//! large messages cannot fill the `BACKPRESSURE` shard it shares with others.

use std::collections::{HashMap, HashSet};
use std::time::Duration;

use async_nats::HeaderMap;
use async_nats::jetstream::ErrorCode;
use switchyard_keys::TenantId;
use switchyard_registry::TenantRecord;
use switchyard_subjects::{Namespace, Shard, SizeClass};
use switchyard_testkit::{backpressure_stream, wait_for};
use switchyard_topology::held_by_tenant;

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

/// Distinct messages (webhook ids) of `path` the sink accepted.
fn delivered_to(p: &Pipeline, path: &str) -> usize {
    p.sink
        .received()
        .iter()
        .filter(|r| r.path == path && r.delivered())
        .map(|r| r.webhook_id.clone())
        .collect::<HashSet<_>>()
        .len()
}

#[tokio::test]
async fn a_slow_tenant_of_large_messages_cannot_fill_the_shard_it_shares_with_another() {
    let p = Pipeline::start(&["hefty", "light"]).await;
    let hefty = TenantId::new("hefty").unwrap();
    let light = TenantId::new("light").unwrap();
    assert_eq!(
        Shard::of(&hefty),
        Shard::of(&light),
        "the two share a shard"
    );
    p.route("hefty", None, "hooks", "hefty").await;
    p.route("light", None, "hooks", "light").await;
    // hefty may keep 128 MiB in its own stream (more than its shard's 64 MiB: the shard, not
    // its quota, would be the limit), and gets one message through every 2 s.
    let quota = TenantRecord {
        quota_bytes: Some(128 * 1024 * 1024),
        ..TenantRecord::enabled()
    };
    switchyard_fixtures::enable_tenant(&p.js, "hefty", &quota).await;
    p.set_limit("hefty", 0.5, 1).await;

    // It sends 72 messages of 1 MiB, more than the shard holds: counted only by messages
    // (admission's 100,000), all of them would be handed on and fill the shard, whose full
    // limits would refuse light's hand-offs.
    let payload = vec![b'h'; 1024 * 1024];
    let mut accepted = 0;
    for i in 0..72 {
        if p.try_publish("hefty", "ops", "hooks", &format!("h-{i}"), &payload)
            .await
            .is_some()
        {
            accepted += 1;
        }
    }
    // Its bytes in IDEMPOTENCY and the shard stay within ingress's byte credit (16 MiB counted
    // by size class, passed by one message at most).
    let streams = vec!["IDEMPOTENCY".to_owned(), backpressure_stream("hefty")];
    let most = 16 * 1024 * 1024 + SizeClass::of(1024 * 1024 + 64 * 1024).bound();
    for _ in 0..10 {
        let held = held_by_tenant(&p.js, &Namespace::default(), &streams)
            .await
            .unwrap()
            .get(&hefty)
            .copied()
            .unwrap_or_default();
        assert!(held.bytes <= most, "hefty holds {held:?}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // What it could not hand on waits in its own stream, under its own quota.
    let own = p.js.get_stream("INGRESS_hefty").await.unwrap();
    assert!(
        own.cached_info().state.messages > 0,
        "hefty's backlog waits in its own stream"
    );
    let shard = p.js.get_stream(backpressure_stream("hefty")).await.unwrap();
    let info = shard.cached_info();
    assert!(
        info.state.bytes < info.config.max_bytes as u64 / 2,
        "the shard is far from full: {} of {} bytes",
        info.state.bytes,
        info.config.max_bytes
    );

    // light is served throughout.
    for i in 0..20 {
        p.publish("light", "ops", "hooks", &format!("l-{i}"), b"light")
            .await;
    }
    wait_for("light's deliveries", Duration::from_secs(30), || async {
        (delivered_to(&p, "light") == 20).then_some(())
    })
    .await;

    // Nothing hefty had accepted is lost: at a rate that lets it through, all of it arrives.
    p.set_limit("hefty", 1000.0, 1000).await;
    wait_for("hefty's deliveries", Duration::from_secs(120), || async {
        (delivered_to(&p, "hefty") == accepted).then_some(())
    })
    .await;
    assert!(p.dlq().await.is_empty(), "nothing dead-lettered");
    p.stop().await;
}
