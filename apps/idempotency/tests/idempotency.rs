//! The idempotency service against a real nats-server: first sightings go on, duplicates stop,
//! the same message after a crash goes on, claims expire and re-create with their TTL, and the
//! KV-unavailable policies behave as documented; a full bucket holds messages (never
//! dead-letters or claims them locally) and says so; claims are compact; an envelope of a
//! schema version the stage does not read is dead-lettered `unsupported_schema`.

use std::time::Duration;

use async_nats::jetstream::{self, consumer::pull};
use switchyard_dlq::DlqCode;
use switchyard_envelope::EnvelopeId;
use switchyard_envelope::{Attempt, Envelope};
use switchyard_fixtures::{Provisioned, Service, envelope_ids, stamped};
use switchyard_idempotency::IdempotencyConfig;
use switchyard_idempotency::claims::{KvClaims, claim_value};
use switchyard_idempotency::config::KvUnavailable;
use switchyard_keys::{Address, IdempotencyKey, KvKey, MsgId, Stage};
use switchyard_service::Handoff;
use switchyard_subjects::{InputStage, Namespace};
use switchyard_testkit::{NatsServer, http_get, stored_count, wait_for};
use switchyard_topology::{DeploymentConfig, provision};
use tokio_util::sync::CancellationToken;

/// Hands an envelope to the idempotency stage, as ingress does.
async fn send(js: &jetstream::Context, envelope: &Envelope) {
    let handoff = Handoff::new(js.clone(), Namespace::default());
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

struct Harness {
    _server: NatsServer,
    js: jetstream::Context,
    service: Service,
    next_seq: std::sync::atomic::AtomicU64,
}

impl Harness {
    async fn start(configure: impl FnOnce(&mut IdempotencyConfig)) -> Self {
        Self::start_after(configure, &[]).await
    }

    /// Starts the stage once `backlog` waits in `IDEMPOTENCY`.
    async fn start_after(
        configure: impl FnOnce(&mut IdempotencyConfig),
        backlog: &[Envelope],
    ) -> Self {
        let Provisioned { server, client, js } = Provisioned::start().await;
        for envelope in backlog {
            send(&js, envelope).await;
        }
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
        send(&self.js, envelope).await;
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
    let kv = h.js.get_key_value("idempotency").await.unwrap();
    let key = IdempotencyKey {
        tenant: "acme".parse().unwrap(),
        platform: "slack".parse().unwrap(),
        msg_id: MsgId::new("order-1").unwrap(),
    };
    // The claim names the first sighting, as the id's 16 raw bytes.
    assert_eq!(
        kv.get(key.render()).await.unwrap().unwrap(),
        claim_value(first.id)[..]
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

/// The claims bucket's stream: (messages, bytes).
async fn bucket_usage(js: &jetstream::Context) -> (u64, u64) {
    let mut stream = js.get_stream("KV_idempotency").await.unwrap();
    let info = stream.info().await.unwrap();
    (info.state.messages, info.state.bytes)
}

/// Sets the claims bucket's `max_bytes` (its KV stream's).
async fn set_bucket_max_bytes(js: &jetstream::Context, max_bytes: i64) {
    let mut stream = js.get_stream("KV_idempotency").await.unwrap();
    let mut config = stream.info().await.unwrap().config.clone();
    config.max_bytes = max_bytes;
    js.update_stream(config).await.unwrap();
}

async fn a_full_bucket_holds_the_message_until_it_has_room(policy: KvUnavailable) {
    let h = Harness::start(|c| c.idempotency.kv_unavailable = policy).await;
    let addr = h.service.running().http_addr;
    let first = h.envelope("acme", "slack", "full-1");
    h.send(&first).await;
    h.settled().await;
    // The bucket is exactly full: the next claim does not fit.
    let (_, used) = bucket_usage(&h.js).await;
    set_bucket_max_bytes(&h.js, i64::try_from(used).unwrap()).await;

    let held = h.envelope("globex", "slack", "full-2");
    h.send(&held).await;
    wait_for(
        "readiness to report the full bucket",
        Duration::from_secs(10),
        || async {
            let ready = http_get(addr, "/readyz").await;
            ready.contains("bucket idempotency is full").then_some(())
        },
    )
    .await;
    // Held across several rechecks: in flight, never redelivered, not handed on, not
    // dead-lettered, not claimed in the local window.
    tokio::time::sleep(Duration::from_secs(5)).await;
    let info = h.consumer_info().await.unwrap();
    assert_eq!((info.num_ack_pending, info.num_redelivered), (1, 0));
    assert_eq!(h.forwarded_ids().await, [first.id.to_string()]);
    assert_eq!(stored_count(&h.js, "DLQ").await, 0);
    let metrics = http_get(addr, "/metrics").await;
    assert!(
        metrics.contains("switchyard_idempotency_bucket_full_total 1"),
        "{metrics}"
    );
    assert!(
        metrics.contains("switchyard_idempotency_local_fallbacks_total 0"),
        "{metrics}"
    );

    // The bucket is enlarged: the held message goes on, once, and readiness recovers.
    set_bucket_max_bytes(&h.js, 1 << 20).await;
    h.settled().await;
    assert_eq!(
        h.forwarded_ids().await,
        [first.id.to_string(), held.id.to_string()]
    );
    wait_for("readiness to recover", Duration::from_secs(10), || async {
        (!http_get(addr, "/readyz").await.contains("not ready")).then_some(())
    })
    .await;
    assert_eq!(stored_count(&h.js, "DLQ").await, 0);
    h.stop().await;
}

#[tokio::test]
async fn with_wait_policy_a_full_bucket_holds_the_message_until_it_has_room() {
    a_full_bucket_holds_the_message_until_it_has_room(KvUnavailable::Wait).await;
}

#[tokio::test]
async fn with_local_policy_a_full_bucket_still_holds_and_never_claims_locally() {
    a_full_bucket_holds_the_message_until_it_has_room(KvUnavailable::Local).await;
}

#[tokio::test]
async fn a_full_bucket_refuses_claims_with_its_own_error() {
    let Provisioned {
        server: _server,
        js,
        ..
    } = Provisioned::start().await;
    let kv = js.get_key_value("idempotency").await.unwrap();
    let claims = KvClaims::new(js.clone(), kv, Duration::from_secs(60));
    let key = |id: &str| IdempotencyKey {
        tenant: "acme".parse().unwrap(),
        platform: "slack".parse().unwrap(),
        msg_id: MsgId::new(id).unwrap(),
    };
    let id = |n: u128| EnvelopeId(uuid::Uuid::from_u128(n));
    claims.claim(&key("a"), id(1)).await.unwrap();
    let (_, used) = bucket_usage(&js).await;
    set_bucket_max_bytes(&js, i64::try_from(used).unwrap()).await;
    let refused = claims.claim(&key("b"), id(2)).await.unwrap_err();
    assert!(
        matches!(
            &refused,
            switchyard_idempotency::claims::ClaimError::BucketFull(e)
                if e.contains("maximum bytes exceeded") && e.contains("10077")
        ),
        "{refused:?}"
    );
    // A duplicate is still recognised while the bucket is full.
    assert!(matches!(
        claims.claim(&key("a"), id(3)).await.unwrap(),
        switchyard_idempotency::claims::Claim::Duplicate { .. }
    ));
}

#[tokio::test]
async fn claims_are_compact() {
    let Provisioned {
        server: _server,
        js,
        ..
    } = Provisioned::start().await;
    let kv = js.get_key_value("idempotency").await.unwrap();
    let claims = KvClaims::new(js.clone(), kv, Duration::from_secs(129_600));
    const N: u64 = 1000;
    for n in 0..N {
        let key = IdempotencyKey {
            tenant: "acme".parse().unwrap(),
            platform: "slack".parse().unwrap(),
            msg_id: MsgId::new(format!("order-{n:06}")).unwrap(),
        };
        let id = EnvelopeId(uuid::Uuid::now_v7());
        claims.claim(&key, id).await.unwrap();
    }
    let (messages, bytes) = bucket_usage(&js).await;
    assert_eq!(messages, N);
    let compact = bytes / N;
    // The same claims with the value as text (36 bytes), as earlier versions wrote them.
    for n in 0..N {
        let key = IdempotencyKey {
            tenant: "acme".parse().unwrap(),
            platform: "slack".parse().unwrap(),
            msg_id: MsgId::new(format!("order-b{n:05}")).unwrap(),
        };
        let mut headers = async_nats::HeaderMap::new();
        headers.insert("Nats-Expected-Last-Subject-Sequence", "0");
        headers.insert("Nats-TTL", "129600");
        js.publish_with_headers(
            format!("$KV.idempotency.{}", key.render()),
            headers,
            uuid::Uuid::now_v7().to_string().into(),
        )
        .await
        .unwrap()
        .await
        .unwrap();
    }
    let (_, all) = bucket_usage(&js).await;
    let text = (all - bytes) / N;
    println!("bytes per claim: {compact} (raw id), {text} (text id)");
    assert!(compact + 20 <= text, "{compact} vs {text}");
    // The sizing formula in nats/topology.toml: 136 bytes + the key's length per claim (this
    // key, `acme.slack.order-000001`, is 23 bytes long).
    assert!(compact <= 136 + 23, "{compact} bytes per claim");
}

#[tokio::test]
async fn a_quiet_tenant_is_served_in_turn_not_behind_another_tenants_burst() {
    // 500 messages of one tenant wait in IDEMPOTENCY, then one of another; one slot.
    let mut backlog: Vec<Envelope> = (0..500u64)
        .map(|i| {
            stamped(
                Address::parse("flood", "ops", "slack").unwrap(),
                &format!("f-{i}"),
                i + 1,
            )
        })
        .collect();
    let quiet = stamped(Address::parse("quiet", "ops", "slack").unwrap(), "q-1", 501);
    backlog.push(quiet.clone());
    let h = Harness::start_after(|c| c.idempotency.concurrency = 1, &backlog).await;
    h.settled().await;
    let forwarded = h.forwarded_ids().await;
    assert_eq!(forwarded.len(), 501);
    let position = forwarded
        .iter()
        .position(|id| *id == quiet.id.to_string())
        .expect("quiet's message handed on");
    // In stream order it would be the 501st; served in turn it goes as soon as it is fetched.
    assert!(
        position < 50,
        "quiet's message was handed on {}th, behind the burst",
        position + 1
    );
    h.stop().await;
}

#[tokio::test]
async fn an_envelope_of_a_schema_version_this_build_does_not_read_is_dead_lettered_unsupported_schema()
 {
    let h = Harness::start(|_| {}).await;
    let mut newer = h.envelope("acme", "slack", "from-a-newer-build");
    newer.schema_version = switchyard_envelope::SCHEMA_VERSION + 1;
    let plain = h.envelope("acme", "slack", "plain");
    assert_eq!(
        plain.schema_version, 1,
        "fixtures stamp a plain payload as 1"
    );
    h.send(&newer).await;
    h.send(&plain).await;
    h.settled().await;
    assert_eq!(h.forwarded_ids().await, [plain.id.to_string()]);
    let entries = switchyard_fixtures::dlq_entries(&h.js).await;
    assert_eq!(entries.len(), 1, "{entries:#?}");
    let record = &entries[0].record;
    assert_eq!(record.code, DlqCode::UnsupportedSchema);
    assert_eq!(record.stage, Stage::Idempotency);
    assert_eq!(
        record.reason,
        "envelope schema version 3 is not one this build reads (it reads versions 1..=2)"
    );
    assert_eq!(record.tenant.as_ref().map(|t| t.as_str()), Some("acme"));
    h.stop().await;
}
