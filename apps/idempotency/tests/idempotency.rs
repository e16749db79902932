//! The idempotency service against a real nats-server: first sightings go on, duplicates stop,
//! the same message after a crash goes on, claims expire and re-create with their TTL, and the
//! KV-unavailable policies behave as documented.

use std::time::Duration;

use async_nats::jetstream::{self, consumer::pull};
use switchyard_envelope::{Attempt, Envelope};
use switchyard_fixtures::{Provisioned, Service, envelope_ids, stamped};
use switchyard_idempotency::IdempotencyConfig;
use switchyard_idempotency::config::KvUnavailable;
use switchyard_keys::{Address, IdempotencyKey, KvKey, MsgId};
use switchyard_service::Handoff;
use switchyard_subjects::{InputStage, Namespace};
use switchyard_testkit::{NatsServer, http_get, stored_count, wait_for};
use switchyard_topology::{DeploymentConfig, provision};
use tokio_util::sync::CancellationToken;

struct Harness {
    _server: NatsServer,
    js: jetstream::Context,
    service: Service,
    next_seq: std::sync::atomic::AtomicU64,
}

impl Harness {
    async fn start(configure: impl FnOnce(&mut IdempotencyConfig)) -> Self {
        let Provisioned { server, client, js } = Provisioned::start().await;
        let mut config = IdempotencyConfig::defaults().unwrap();
        config.nats.url = server.url();
        config.http.listen = "127.0.0.1:0".parse().unwrap();
        // These tests read what the stage hands on from EGRESS directly.
        config.idempotency.next_stage = InputStage::Egress;
        configure(&mut config);
        let shutdown = CancellationToken::new();
        let running = switchyard_idempotency::start(config, client, shutdown.clone())
            .await
            .unwrap();
        Self {
            _server: server,
            js,
            service: Service::new(running, shutdown),
            next_seq: 1.into(),
        }
    }

    fn envelope(&self, tenant: &str, platform: &str, msg_id: &str) -> Envelope {
        let sequence = self
            .next_seq
            .fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        stamped(
            Address::parse(tenant, "ops", platform).unwrap(),
            msg_id,
            sequence,
        )
    }

    /// Hands an envelope to the idempotency stage, as ingress does.
    async fn send(&self, envelope: &Envelope) {
        let handoff = Handoff::new(self.js.clone(), Namespace::default());
        let h = Handoff::headers(envelope, None);
        handoff
            .forward(
                InputStage::Idempotency,
                envelope,
                h,
                envelope.msg_id.as_str().to_owned().into(),
            )
            .await
            .unwrap();
    }

    async fn consumer_info(&self) -> Option<jetstream::consumer::Info> {
        let mut consumer = self
            .js
            .get_consumer_from_stream::<pull::Config, _, _>("idempotency-worker", "IDEMPOTENCY")
            .await
            .ok()?;
        consumer.info().await.ok().cloned()
    }

    async fn settled(&self) {
        wait_for(
            "the idempotency stage to settle",
            Duration::from_secs(20),
            || async {
                let info = self.consumer_info().await?;
                (info.num_pending == 0 && info.num_ack_pending == 0).then_some(())
            },
        )
        .await;
    }

    async fn forwarded_ids(&self) -> Vec<String> {
        envelope_ids(&self.js, "EGRESS").await
    }

    async fn stop(self) {
        self.service.stop().await;
    }
}

#[tokio::test]
async fn duplicates_are_dropped_per_tenant_and_platform() {
    let h = Harness::start(|_| {}).await;
    let first = h.envelope("acme", "slack", "order-1");
    let again = h.envelope("acme", "slack", "order-1");
    let other_tenant = h.envelope("globex", "slack", "order-1");
    let other_platform = h.envelope("acme", "email", "order-1");
    for e in [&first, &again, &other_tenant, &other_platform] {
        h.send(e).await;
    }
    h.settled().await;
    let forwarded = h.forwarded_ids().await;
    let expected: Vec<String> = [&first, &other_tenant, &other_platform]
        .iter()
        .map(|e| e.id.to_string())
        .collect();
    assert_eq!(forwarded, expected);
    // The claim names the first sighting.
    let kv = h.js.get_key_value("idempotency").await.unwrap();
    let key = IdempotencyKey {
        tenant: "acme".parse().unwrap(),
        platform: "slack".parse().unwrap(),
        msg_id: MsgId::new("order-1").unwrap(),
    };
    assert_eq!(
        kv.get(key.render()).await.unwrap().unwrap(),
        first.id.to_string().as_bytes()
    );
    h.stop().await;
}

#[tokio::test]
async fn the_same_message_after_a_crash_between_claim_and_ack_is_still_delivered() {
    let h = Harness::start(|_| {}).await;
    let message = h.envelope("acme", "slack", "order-7");
    // A replica claimed the id, then died before handing the message on or acking it.
    let kv = h.js.get_key_value("idempotency").await.unwrap();
    let key = IdempotencyKey {
        tenant: "acme".parse().unwrap(),
        platform: "slack".parse().unwrap(),
        msg_id: MsgId::new("order-7").unwrap(),
    };
    kv.create(key.render(), message.id.to_string().into())
        .await
        .unwrap();
    // JetStream redelivers the same message: it is recognised and handed on, once.
    h.send(&message).await;
    h.settled().await;
    assert_eq!(h.forwarded_ids().await, [message.id.to_string()]);
    // A copy handed on twice (the crash came after the hand-off) is dropped by the hop id.
    let mut copy = message.clone();
    copy.attempt = Attempt::default();
    let handoff = Handoff::new(h.js.clone(), Namespace::default());
    handoff
        .forward(
            InputStage::Egress,
            &copy,
            Handoff::headers(&copy, None),
            "dup".into(),
        )
        .await
        .unwrap();
    assert_eq!(stored_count(&h.js, "EGRESS").await, 1);
    h.stop().await;
}

#[tokio::test]
async fn an_expired_claim_is_recreated_with_its_ttl() {
    let h = Harness::start(|c| c.idempotency.ttl_secs = 1).await;
    let first = h.envelope("acme", "slack", "ttl-1");
    h.send(&first).await;
    h.settled().await;
    let kv = h.js.get_key_value("idempotency").await.unwrap();
    let key = IdempotencyKey {
        tenant: "acme".parse().unwrap(),
        platform: "slack".parse().unwrap(),
        msg_id: MsgId::new("ttl-1").unwrap(),
    };
    // The claim expires (the server leaves a marker in its place).
    wait_for(
        "the first claim to expire",
        Duration::from_secs(20),
        || async { kv.get(key.render()).await.ok()?.is_none().then_some(()) },
    )
    .await;
    // The id is free again: a new message with it is a first sighting…
    let later = h.envelope("acme", "slack", "ttl-1");
    h.send(&later).await;
    h.settled().await;
    assert_eq!(
        h.forwarded_ids().await,
        [first.id.to_string(), later.id.to_string()]
    );
    // …and its claim carries the TTL again, so it expires too (it would live for the bucket's
    // 36 h max age if re-created without one).
    let stream = h.js.get_stream("KV_idempotency").await.unwrap();
    let last = stream
        .direct_get_last_for_subject(format!("$KV.idempotency.{}", key.render()))
        .await
        .unwrap();
    assert_eq!(last.headers.get("Nats-TTL").map(|v| v.as_str()), Some("1"));
    wait_for(
        "the re-created claim to expire",
        Duration::from_secs(20),
        || async { kv.get(key.render()).await.ok()?.is_none().then_some(()) },
    )
    .await;
    h.stop().await;
}

#[tokio::test]
async fn with_wait_policy_messages_are_held_while_kv_is_gone_then_delivered() {
    let h = Harness::start(|c| c.idempotency.kv_unavailable = KvUnavailable::Wait).await;
    h.js.delete_key_value("idempotency").await.unwrap();
    let message = h.envelope("acme", "slack", "held-1");
    h.send(&message).await;
    // Held, not dropped, not forwarded.
    wait_for(
        "the message to be held",
        Duration::from_secs(10),
        || async {
            let info = h.consumer_info().await?;
            (info.num_ack_pending == 1).then_some(())
        },
    )
    .await;
    assert!(h.forwarded_ids().await.is_empty());
    // KV comes back: the held message goes on.
    provision(
        &h.js,
        &DeploymentConfig::default().resolve().unwrap(),
        false,
    )
    .await
    .unwrap();
    h.settled().await;
    assert_eq!(h.forwarded_ids().await, [message.id.to_string()]);
    h.stop().await;
}

#[tokio::test]
async fn with_local_policy_claims_fall_back_to_memory_and_are_counted() {
    let h = Harness::start(|c| c.idempotency.kv_unavailable = KvUnavailable::Local).await;
    h.js.delete_key_value("idempotency").await.unwrap();
    let first = h.envelope("acme", "slack", "local-1");
    let dup = h.envelope("acme", "slack", "local-1");
    h.send(&first).await;
    h.send(&dup).await;
    h.settled().await;
    assert_eq!(h.forwarded_ids().await, [first.id.to_string()]);
    let addr = h.service.running().http_addr;
    let metrics = http_get(addr, "/metrics").await;
    assert!(
        metrics.contains("switchyard_idempotency_local_fallbacks_total 2"),
        "{metrics}"
    );
    assert!(
        metrics.contains("switchyard_idempotency_duplicates_total 1"),
        "{metrics}"
    );
    h.stop().await;
}
