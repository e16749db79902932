//! The backpressure service against a real nats-server, with several replicas: global limits,
//! fairness, live limit changes, admission state, and the KV-unreachable fallback.

#[path = "backpressure/high_water.rs"]
mod high_water;
#[path = "backpressure/payload_limits.rs"]
mod payload_limits;

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use async_nats::HeaderMap;
use async_nats::jetstream;
use futures::StreamExt;
use std::future::IntoFuture;
use switchyard_backpressure::BackpressureConfig;
use switchyard_envelope::Envelope;
use switchyard_fixtures::{Provisioned, Service, stamped};
use switchyard_keys::{Address, DeploymentPrefix, KvKey, RateKey, RateRecord, RateScope, TenantId};
use switchyard_registry::{Admission, LimitRecord, PressureRecord, Store};
use switchyard_service::Handoff;
use switchyard_subjects::{InputStage, Namespace, StageSubject, SubjectKind};
use switchyard_testkit::{
    NatsServer, backpressure_stream, http_get, stored_count, stored_count_in, stored_messages,
    wait_for,
};
use switchyard_topology::{DeploymentConfig, StreamName, provision};
use tokio_util::sync::CancellationToken;

const SENT: &str = "Test-Sent";

struct Harness {
    server: NatsServer,
    js: jetstream::Context,
    replicas: Vec<Service>,
    delivered: Arc<Mutex<Vec<(String, Instant, Duration)>>>,
    seq: std::sync::atomic::AtomicU64,
    epoch: Instant,
}

impl Harness {
    async fn start(replicas: usize) -> Self {
        let Provisioned { server, client, js } = Provisioned::start().await;
        let epoch = Instant::now();
        // Every hand-off to egress, as it happens (a plain subscription next to the stream).
        let delivered: Arc<Mutex<Vec<(String, Instant, Duration)>>> = Arc::default();
        let mut sub = client.subscribe("egress.v1.>").await.unwrap();
        client.flush().await.unwrap();
        let sink = delivered.clone();
        tokio::spawn(async move {
            while let Some(msg) = sub.next().await {
                let now = Instant::now();
                let envelope = Envelope::from_headers(msg.headers.as_ref()).unwrap();
                let sent: u64 = msg
                    .headers
                    .as_ref()
                    .and_then(|h| h.get(SENT))
                    .and_then(|v| v.as_str().parse().ok())
                    .unwrap_or(0);
                let latency = now
                    .duration_since(epoch)
                    .saturating_sub(Duration::from_micros(sent));
                sink.lock()
                    .unwrap()
                    .push((envelope.address.tenant.to_string(), now, latency));
            }
        });
        let mut harness = Self {
            server,
            js,
            replicas: Vec::new(),
            delivered,
            seq: 1.into(),
            epoch,
        };
        for _ in 0..replicas {
            harness.add_replica().await;
        }
        harness
    }

    async fn add_replica(&mut self) {
        self.add_replica_with(|_| {}).await;
    }

    /// [`Harness::add_replica`], its settings changed by `tune`.
    async fn add_replica_with(&mut self, tune: impl FnOnce(&mut BackpressureConfig)) {
        let mut config = BackpressureConfig::defaults().unwrap();
        config.nats.url = self.server.url();
        config.http.listen = "127.0.0.1:0".parse().unwrap();
        config.backpressure.scan_interval_ms = 200;
        config.backpressure.quota_check_secs = 1;
        tune(&mut config);
        let shutdown = CancellationToken::new();
        let client = self.server.client().await;
        let running = switchyard_backpressure::start(config, client, shutdown.clone())
            .await
            .unwrap();
        self.replicas.push(Service::new(running, shutdown));
    }

    async fn set_limit(&self, tenant: &str, limit: LimitRecord) {
        let store: Store<RateKey, LimitRecord> =
            Store::new(self.js.get_key_value("rate-limits").await.unwrap());
        let key = RateKey {
            scope: RateScope::Tenant(TenantId::new(tenant).unwrap()),
            record: RateRecord::Limit,
        };
        store.put(&key, &limit).await.unwrap();
    }

    /// Hands `n` messages for `tenant` to the backpressure stage, `rate` per second (0 = at once).
    async fn send(&self, tenant: &str, n: usize, rate: f64) {
        self.send_sized(tenant, n, rate, bytes::Bytes::from_static(b"x"))
            .await;
    }

    /// [`Harness::send`] with `payload` in each message.
    async fn send_sized(&self, tenant: &str, n: usize, rate: f64, payload: bytes::Bytes) {
        let started = Instant::now();
        let mut pending = futures::stream::FuturesUnordered::new();
        for i in 0..n {
            if rate > 0.0 {
                let due = started + Duration::from_secs_f64(i as f64 / rate);
                tokio::time::sleep_until(due.into()).await;
            }
            let sequence = self.seq.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            let envelope = stamped(
                Address::parse(tenant, "ops", "hooks").unwrap(),
                &format!("m-{sequence}"),
                sequence,
            );
            let mut extra = HeaderMap::new();
            extra.insert(SENT, self.epoch.elapsed().as_micros().to_string());
            // Sent now (the publish goes out at once); only the acks are awaited later.
            let mut h = Handoff::headers(&envelope, Some(&extra));
            h.insert(
                "Nats-Msg-Id",
                envelope.hop_msg_id(InputStage::Backpressure.stage()),
            );
            let subject = StageSubject {
                stage: InputStage::Backpressure,
                address: envelope.address.clone(),
            }
            .format(&Namespace::default());
            let ack = self
                .js
                .publish_with_headers(subject, h, payload.clone())
                .await
                .unwrap();
            pending.push(ack.into_future());
            while pending.len() > 256 {
                pending.next().await.unwrap().unwrap();
            }
        }
        while let Some(result) = pending.next().await {
            result.unwrap();
        }
    }

    fn delivered(&self, tenant: &str) -> Vec<(Instant, Duration)> {
        self.delivered
            .lock()
            .unwrap()
            .iter()
            .filter(|(t, _, _)| t == tenant)
            .map(|(_, at, l)| (*at, *l))
            .collect()
    }

    async fn wait_delivered(&self, tenant: &str, n: usize, timeout: Duration) {
        wait_for(&format!("{n} deliveries for {tenant}"), timeout, || async {
            (self.delivered(tenant).len() >= n).then_some(())
        })
        .await;
    }

    async fn metric_sum(&self, name: &str) -> f64 {
        let mut total = 0.0;
        for replica in &self.replicas {
            let text = http_get(replica.running().http_addr, "/metrics").await;
            total += text
                .lines()
                .filter(|l| l.starts_with(name))
                .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
                .sum::<f64>();
        }
        total
    }

    async fn stop(mut self) {
        for replica in self.replicas.drain(..) {
            replica.stop().await;
        }
    }
}

fn limit(rate: f64, burst: u32) -> LimitRecord {
    LimitRecord {
        rate_per_sec: rate,
        burst,
        backlog_high: None,
        backlog_low: None,
        backlog_high_bytes: None,
    }
}

fn p99(mut latencies: Vec<Duration>) -> Duration {
    latencies.sort();
    latencies[((latencies.len() as f64 - 1.0) * 0.99).round() as usize]
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_replicas_hold_a_tenant_to_its_limit_in_every_ten_second_window_and_lose_nothing() {
    let h = Harness::start(3).await;
    h.set_limit("flood", limit(200.0, 20)).await;
    // 2,000/s for 20 s: ten times the limit.
    h.send("flood", 40_000, 2_000.0).await;
    let deliveries: Vec<Instant> = h.delivered("flood").into_iter().map(|(at, _)| at).collect();
    let first = deliveries[0];
    let mut windows = Vec::new();
    for start in 1..=10 {
        let from = first + Duration::from_secs(start);
        let to = from + Duration::from_secs(10);
        windows.push(deliveries.iter().filter(|&&t| t >= from && t < to).count());
    }
    eprintln!("deliveries per 10 s window (limit 200/s → 2000): {windows:?}");
    for count in &windows {
        assert!(
            (1800..=2200).contains(count),
            "window count {count} outside ±10% of 2000: {windows:?}"
        );
    }
    let kv_ops = h.metric_sum("switchyard_backpressure_kv_ops_total").await;
    let forwarded = h.delivered("flood").len() as f64;
    eprintln!(
        "kv operations per delivered message: {:.4} ({kv_ops} / {forwarded})",
        kv_ops / forwarded
    );
    assert!(kv_ops / forwarded < 0.1);
    // Nothing lost: lift the limit and every message goes through, once.
    h.set_limit("flood", limit(100_000.0, 1000)).await;
    h.wait_delivered("flood", 40_000, Duration::from_secs(120))
        .await;
    assert_eq!(
        stored_count(&h.js, "EGRESS").await,
        40_000,
        "each message handed on exactly once"
    );
    h.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flooding_tenant_does_not_slow_a_quiet_one() {
    let h = Harness::start(3).await;
    h.set_limit("quiet", limit(200.0, 50)).await;
    h.set_limit("flood", limit(20.0, 5)).await;
    // Warm-up: both tenants' loops exist before anything is measured (a tenant is discovered
    // by the scan, every 200 ms here).
    h.send("quiet", 5, 0.0).await;
    h.send("flood", 5, 0.0).await;
    h.wait_delivered("quiet", 5, Duration::from_secs(30)).await;
    h.wait_delivered("flood", 5, Duration::from_secs(30)).await;
    h.send("quiet", 100, 20.0).await;
    h.wait_delivered("quiet", 105, Duration::from_secs(30))
        .await;
    let baseline = p99(h
        .delivered("quiet")
        .into_iter()
        .skip(5)
        .map(|(_, l)| l)
        .collect());

    // The flood: 100 × its limit, while the quiet tenant keeps sending at 20/s.
    let flood = h.send("flood", 10_000, 2_000.0);
    let quiet = h.send("quiet", 100, 20.0);
    tokio::join!(flood, quiet);
    h.wait_delivered("quiet", 205, Duration::from_secs(30))
        .await;
    let during = p99(h
        .delivered("quiet")
        .into_iter()
        .skip(105)
        .map(|(_, l)| l)
        .collect());
    eprintln!(
        "quiet tenant p99: {baseline:?} alone, {during:?} during a 100x flood by another tenant"
    );
    // A generous floor keeps a few-millisecond baseline from making the bound meaningless.
    let bound = 2 * baseline.max(Duration::from_millis(25));
    assert!(
        during <= bound,
        "quiet p99 {during:?} exceeds 2 × baseline ({bound:?})"
    );
    h.stop().await;
}

/// Tenants throttled to a slow rate hold their large messages for their slots (10 s apart)
/// and, together, more than the service's byte budget: another tenant's loop still fetches,
/// within its fair share, and its messages are handed on at once.
#[tokio::test]
async fn tenants_holding_large_messages_for_slow_slots_do_not_stop_another_tenant() {
    let mut h = Harness::start(0).await;
    h.add_replica_with(|c| c.backpressure.max_in_flight_bytes = 1024 * 1024 + 64 * 1024)
        .await;
    let slow = ["slow-a", "slow-b", "slow-c", "slow-d"];
    for tenant in slow {
        h.set_limit(tenant, limit(0.1, 1)).await;
    }
    h.set_limit("fast", limit(1_000.0, 1_000)).await;
    let large = bytes::Bytes::from(vec![b'x'; 300 * 1024]);
    for tenant in slow {
        h.send_sized(tenant, 3, 0.0, large.clone()).await;
    }
    // Each slow tenant hands its first on (its burst) and holds its second for a slot 10 s
    // away: four of them, 1.2 MB held, past the 1.1 MB budget.
    wait_for(
        "the slow tenants' second messages held",
        Duration::from_secs(30),
        || async {
            let held = h.metric_sum("switchyard_message_bytes_held").await;
            let first = slow.iter().all(|t| h.delivered(t).len() == 1);
            (first && held >= (1024.0 * 1024.0 + 64.0 * 1024.0)).then_some(())
        },
    )
    .await;
    let started = Instant::now();
    h.send_sized("fast", 5, 0.0, large.clone()).await;
    h.wait_delivered("fast", 5, Duration::from_secs(30)).await;
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "the fast tenant waited for the slow tenants' slots: {:?}",
        started.elapsed()
    );
    assert!(
        slow.iter().all(|t| h.delivered(t).len() == 1),
        "the slow tenants kept to their rate"
    );
    h.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_limit_change_takes_effect_on_every_replica_at_once() {
    let h = Harness::start(3).await;
    h.set_limit("slow", limit(5.0, 1)).await;
    h.send("slow", 300, 0.0).await;
    h.wait_delivered("slow", 5, Duration::from_secs(30)).await;
    let changed = Instant::now();
    h.set_limit("slow", limit(10_000.0, 100)).await;
    // At 5/s the rest would take a minute; with the new limit on every replica it is seconds.
    h.wait_delivered("slow", 300, Duration::from_secs(10)).await;
    eprintln!(
        "295 remaining messages delivered {:?} after the change",
        changed.elapsed()
    );
    h.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_raised_limit_reaches_a_message_already_waiting_for_a_slow_rates_slot() {
    let h = Harness::start(1).await;
    // One message per 10 s: the first goes at once, the second is leased a slot 10 s away.
    h.set_limit("slow", limit(0.1, 1)).await;
    h.send("slow", 3, 0.0).await;
    h.wait_delivered("slow", 1, Duration::from_secs(10)).await;
    wait_for(
        "the second message's lease",
        Duration::from_secs(10),
        || async {
            let leased = h
                .metric_sum("switchyard_backpressure_tokens_leased_total{tenant=\"slow\"}")
                .await;
            (leased >= 2.0).then_some(())
        },
    )
    .await;
    assert_eq!(
        h.delivered("slow").len(),
        1,
        "the second waits for its slot"
    );

    // Raised: the waiting message takes a slot under the new rate (the 10 s owed at 0.1/s are
    // 1 ms at 1,000/s), and so does the third; under the old slots they would take 10 and 20 s.
    let raised = Instant::now();
    h.set_limit("slow", limit(1000.0, 10)).await;
    h.wait_delivered("slow", 3, Duration::from_secs(5)).await;
    eprintln!("both delivered {:?} after the raise", raised.elapsed());
    h.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_raise_with_three_replicas_holding_slots_never_passes_the_new_limit() {
    let h = Harness::start(3).await;
    h.set_limit("steady", limit(40.0, 1)).await;
    h.send("steady", 700, 0.0).await;
    // Each replica now holds up to a lease window of slots (20 at 40/s).
    h.wait_delivered("steady", 120, Duration::from_secs(20))
        .await;
    let raised = Instant::now();
    h.set_limit("steady", limit(80.0, 1)).await;
    h.wait_delivered("steady", 120 + 3 * 80 + 40, Duration::from_secs(20))
        .await;
    let deliveries: Vec<Instant> = h
        .delivered("steady")
        .into_iter()
        .map(|(at, _)| at)
        .collect();
    let window = |from: Instant| {
        deliveries
            .iter()
            .filter(|&&t| t >= from && t < from + Duration::from_secs(1))
            .count()
    };
    // The slots the replicas held move to the new pace, and the next leases start after them:
    // no second of the raise carries the held slots on top of the new rate (up to 60 more).
    let after: Vec<usize> = (0..3)
        .map(|s| window(raised + Duration::from_secs(s)))
        .collect();
    eprintln!("deliveries per second after the raise (limit 80/s): {after:?}");
    for count in &after {
        assert!(
            *count <= 89,
            "{count} in a second, over 80/s (+10%): {after:?}"
        );
    }
    assert!(
        after.iter().sum::<usize>() >= 3 * 72,
        "the raise applies at once: {after:?}"
    );
    h.stop().await;
}

/// One NATS publish to `tenant`'s ingress subject: `true` when its stream acked it.
async fn ingress_accepts(js: &jetstream::Context, tenant: &str, id: &str) -> bool {
    let mut h = HeaderMap::new();
    h.insert("Nats-Msg-Id", id);
    match js
        .publish_with_headers(format!("ingress.v1.{tenant}.ops.hooks"), h, "x".into())
        .await
    {
        Ok(ack) => ack.await.is_ok(),
        Err(_) => false,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn admission_closes_over_the_high_mark_and_reopens_below_the_low_mark() {
    let h = Harness::start(2).await;
    // The tenant's own ingress stream, which closed admission holds shut to NATS producers.
    switchyard_fixtures::enable_tenant(
        &h.js,
        "busy",
        &switchyard_registry::TenantRecord::enabled(),
    )
    .await;
    assert!(ingress_accepts(&h.js, "busy", "before").await);
    h.set_limit(
        "busy",
        LimitRecord {
            rate_per_sec: 50.0,
            burst: 1,
            backlog_high: Some(100),
            backlog_low: Some(20),
            backlog_high_bytes: None,
        },
    )
    .await;
    let kv = h.js.get_key_value("rate-limits").await.unwrap();
    let key = RateKey {
        scope: RateScope::Tenant(TenantId::new("busy").unwrap()),
        record: RateRecord::Pressure,
    }
    .render();
    let record = |kv: async_nats::jetstream::kv::Store, key: String| async move {
        let bytes = kv.get(&key).await.ok()??;
        serde_json::from_slice::<PressureRecord>(&bytes).ok()
    };
    let state = |kv, key| async { record(kv, key).await.map(|r| r.admission) };
    // Stand in for egress: the backlog counts what waits at egress too, so drain it.
    let egress: jetstream::consumer::PullConsumer =
        h.js.get_consumer_from_stream("egress-worker", "EGRESS")
            .await
            .unwrap();
    let drain = tokio::spawn(async move {
        let mut messages = egress.messages().await.unwrap();
        while let Some(Ok(msg)) = messages.next().await {
            msg.ack().await.unwrap();
        }
    });
    h.send("busy", 200, 0.0).await;
    let closed = wait_for("admission to close", Duration::from_secs(20), || async {
        record(kv.clone(), key.clone())
            .await
            .filter(|r| r.admission == Admission::Closed)
    })
    .await;
    // The estimate producers are told to retry after: the backlog above the low mark at
    // the tenant's rate (at least 100 - 20 = 80 messages at 50/s: 2 s).
    let reopen = closed.reopen_in_secs.expect("an estimate when closing");
    assert!(
        reopen >= 2 && reopen == PressureRecord::estimate_reopen_secs(closed.backlog, 20, 50.0),
        "{closed:?}"
    );
    // Its NATS producers are refused at once (the stream is held shut), not once its quota
    // fills.
    let mut n = 0;
    wait_for(
        "the tenant's NATS publishes refused",
        Duration::from_secs(20),
        || {
            n += 1;
            let (id, js) = (format!("closed-{n}"), h.js.clone());
            async move { (!ingress_accepts(&js, "busy", &id).await).then_some(()) }
        },
    )
    .await;
    wait_for("admission to reopen", Duration::from_secs(30), || async {
        (state(kv.clone(), key.clone()).await == Some(Admission::Open)).then_some(())
    })
    .await;
    let mut n = 0;
    wait_for(
        "the tenant's NATS publishes accepted again",
        Duration::from_secs(20),
        || {
            n += 1;
            let (id, js) = (format!("open-{n}"), h.js.clone());
            async move { ingress_accepts(&js, "busy", &id).await.then_some(()) }
        },
    )
    .await;
    h.wait_delivered("busy", 200, Duration::from_secs(30)).await;
    // Both changes are operational events of the tenant's.
    let events = h.js.get_stream("EVENTS").await.unwrap();
    for kind in ["admission_closed", "admission_reopened"] {
        let event = wait_for(kind, Duration::from_secs(10), || async {
            events
                .direct_get_last_for_subject(format!("events.v1.busy.{kind}"))
                .await
                .ok()
        })
        .await;
        let event: serde_json::Value = serde_json::from_slice(&event.payload).unwrap();
        assert_eq!(event["source"], "backpressure", "{event}");
        // Two replicas saw each change; the one whose write changed the record reported it.
        assert_eq!(event_count(&h.js, "busy", kind).await, 1, "{kind}");
    }
    drain.abort();
    h.stop().await;
}

#[tokio::test]
async fn admission_closes_when_a_tenants_messages_take_its_bytes_in_its_shard_and_reopens_under_half()
 {
    let h = Harness::start(1).await;
    switchyard_fixtures::enable_tenant(
        &h.js,
        "heavy",
        &switchyard_registry::TenantRecord::enabled(),
    )
    .await;
    // A slow tenant whose backlog mark in messages is far away.
    h.set_limit(
        "heavy",
        LimitRecord {
            rate_per_sec: 0.1,
            burst: 1,
            backlog_high: Some(1000),
            backlog_low: Some(500),
            backlog_high_bytes: None,
        },
    )
    .await;
    // Fourteen 1 MiB messages handed on as idempotency hands them: each in the 1m class
    // (1,114,112 bytes counted), 14 of them past the default 12 MiB.
    hand_on_mebibytes(&h.js, "heavy", 14).await;
    let shard = backpressure_stream("heavy");
    let subjects: Vec<String> = stored_messages(&h.js, &shard)
        .await
        .into_iter()
        .map(|m| m.subject.to_string())
        .collect();
    let expected = format!(
        "{}.heavy.ops.hooks.1m",
        shard.replace("BACKPRESSURE_", "backpressure.v1.")
    );
    assert!(
        !subjects.is_empty() && subjects.iter().all(|s| *s == expected),
        "{subjects:?}"
    );

    let admission = || pressure_of(&h.js, "heavy");
    let closed = wait_for("admission to close", Duration::from_secs(20), || async {
        admission()
            .await
            .filter(|r| r.admission == Admission::Closed)
    })
    .await;
    // Producers are told to retry once the bytes could be under half the mark at its rate:
    // at least 12 messages of 1,114,112 counted bytes stored, 7 of them to go at 0.1/s.
    let reopen = closed.reopen_in_secs.expect("an estimate when closing");
    assert!(reopen >= 70, "{closed:?}");
    let event = last_event(&h.js, "events.v1.heavy.admission_closed").await;
    assert!(
        event["detail"]
            .as_str()
            .is_some_and(|d| d.contains("bytes waiting in its shard reached 12582912")),
        "{event}"
    );

    // Its shard emptied (here by hand): under half the bytes and the low mark, it reopens.
    h.js.get_stream(&shard)
        .await
        .unwrap()
        .purge()
        .await
        .unwrap();
    wait_for("admission to reopen", Duration::from_secs(20), || async {
        admission().await.filter(|r| r.admission == Admission::Open)
    })
    .await;
    h.stop().await;
}

/// A tenant's own `backlog_high_bytes` closes its admission at its mark, not the service's:
/// five 1 MiB messages close `tight` (its mark: three of them; at 0.1/s with a burst of one,
/// at most two leave the shard within the test), while `loose`, holding as many in its shard
/// under the service's 12 MiB, stays open.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tenants_own_bytes_mark_closes_its_admission_and_no_one_elses() {
    let h = Harness::start(1).await;
    let mark = 3 * 1_114_112;
    for tenant in ["tight", "loose"] {
        switchyard_fixtures::enable_tenant(
            &h.js,
            tenant,
            &switchyard_registry::TenantRecord::enabled(),
        )
        .await;
        // Slow: what is handed on stays in the shard.
        let own_mark = (tenant == "tight").then_some(mark);
        h.set_limit(
            tenant,
            LimitRecord {
                backlog_high_bytes: own_mark,
                ..limit(0.1, 1)
            },
        )
        .await;
        hand_on_mebibytes(&h.js, tenant, 5).await;
    }
    let closed = wait_for(
        "tight's admission to close",
        Duration::from_secs(20),
        || async {
            pressure_of(&h.js, "tight")
                .await
                .filter(|r| r.admission == Admission::Closed)
        },
    )
    .await;
    // Closed once three or more were stored (the scan runs while they are handed on; one
    // being forwarded to EGRESS can count in both streams).
    assert!((3..=6).contains(&closed.backlog), "{closed:?}");
    // Producers are told to wait until the bytes could be under half its own mark: all but
    // one of the messages to leave at 0.1/s (the service's 12 MiB would give about 1 s).
    assert!(closed.reopen_in_secs >= Some(20), "{closed:?}");
    let event = last_event(&h.js, "events.v1.tight.admission_closed").await;
    assert!(
        event["detail"]
            .as_str()
            .is_some_and(|d| d.contains(&format!("bytes waiting in its shard reached {mark}"))),
        "{event}"
    );
    // The scan that counted loose's five messages left its admission open.
    wait_for(
        "a scan to count loose's backlog",
        Duration::from_secs(20),
        || async {
            (h.metric_sum("switchyard_backpressure_backlog{tenant=\"loose\"}")
                .await
                >= 3.0)
                .then_some(())
        },
    )
    .await;
    assert_eq!(
        h.metric_sum("switchyard_backpressure_admission_closed{tenant=\"loose\"}")
            .await,
        0.0
    );
    assert!(
        pressure_of(&h.js, "loose")
            .await
            .is_none_or(|r| r.admission == Admission::Open)
    );
    h.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_kv_each_replica_enforces_its_share_locally_and_says_so() {
    let h = Harness::start(1).await;
    h.set_limit("solo", limit(100.0, 10)).await;
    // Let the replica see the limit before the bucket disappears.
    wait_for("the limit to be cached", Duration::from_secs(5), || async {
        let text = http_get(h.replicas[0].running().http_addr, "/metrics").await;
        text.contains("switchyard_backpressure_replicas 1")
            .then_some(())
    })
    .await;
    h.js.delete_key_value("rate-limits").await.unwrap();
    h.send("solo", 100, 0.0).await;
    h.wait_delivered("solo", 100, Duration::from_secs(30)).await;
    assert!(
        h.metric_sum("switchyard_backpressure_fallback_leases_total")
            .await
            > 0.0
    );
    let per_tenant: HashMap<String, usize> =
        h.delivered
            .lock()
            .unwrap()
            .iter()
            .fold(HashMap::new(), |mut m, (t, _, _)| {
                *m.entry(t.clone()).or_default() += 1;
                m
            });
    assert_eq!(per_tenant.get("solo"), Some(&100));
    h.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_poisoned_token_state_is_reset_and_the_tenant_still_delivers() {
    let mut h = Harness::start(0).await;
    // A `<tenant>.tokens` record no lease can have written: the next slot at the end of time.
    let kv = h.js.get_key_value("rate-limits").await.unwrap();
    let key = RateKey {
        scope: RateScope::Tenant(TenantId::new("poisoned").unwrap()),
        record: RateRecord::Tokens,
    }
    .render();
    kv.put(&key, format!("{{\"tat_ms\": {}}}", i64::MAX).into())
        .await
        .unwrap();
    h.add_replica().await;
    h.send("poisoned", 20, 0.0).await;
    h.wait_delivered("poisoned", 20, Duration::from_secs(20))
        .await;
    // The record was replaced by a plausible one (near now, never i64::MAX again).
    let state: switchyard_registry::TokenState =
        serde_json::from_slice(&kv.get(&key).await.unwrap().unwrap()).unwrap();
    let now_ms = (time::OffsetDateTime::now_utc().unix_timestamp_nanos() / 1_000_000) as i64;
    assert!(
        state.tat_ms < now_ms + 60_000,
        "tat_ms {} still far ahead",
        state.tat_ms
    );
    assert_eq!(
        h.metric_sum("switchyard_backpressure_tenant_loop_panics_total")
            .await,
        0.0
    );
    let ready = http_get(h.replicas[0].running().http_addr, "/readyz").await;
    assert!(ready.starts_with("HTTP/1.1 200"), "{ready}");
    h.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_setting_that_would_crash_a_tenant_loop_stops_the_service_at_start_up() {
    let server = NatsServer::start().await;
    let mut config = BackpressureConfig::defaults().unwrap();
    config.nats.url = server.url();
    config.http.listen = "127.0.0.1:0".parse().unwrap();
    config.backpressure.default_rate_per_sec = 0.0;
    let client = server.client().await;
    let Err(error) = switchyard_backpressure::start(config, client, CancellationToken::new()).await
    else {
        panic!("a zero default rate was accepted");
    };
    assert!(
        format!("{error:#}").contains("invalid setting backpressure.default_rate_per_sec"),
        "{error:#}"
    );
}

/// Hands `n` messages of 1 MiB for `tenant` on into its shard as idempotency hands them on
/// (`Handoff::forward`: each in the `1m` class, counted at 1,114,112 bytes).
async fn hand_on_mebibytes(js: &jetstream::Context, tenant: &str, n: u64) {
    let handoff = Handoff::new(js.clone(), Namespace::default());
    let payload = bytes::Bytes::from(vec![b'x'; 1024 * 1024]);
    for i in 0..n {
        let envelope = stamped(
            Address::parse(tenant, "ops", "hooks").unwrap(),
            &format!("big-{i}"),
            1000 + i,
        );
        let headers = Handoff::headers(&envelope, None);
        handoff
            .forward(
                InputStage::Backpressure,
                &envelope,
                headers,
                payload.clone(),
            )
            .await
            .unwrap();
    }
}

/// `tenant`'s admission record (`<tenant>.pressure`), if the scan wrote one.
async fn pressure_of(js: &jetstream::Context, tenant: &str) -> Option<PressureRecord> {
    let kv = js.get_key_value("rate-limits").await.ok()?;
    let key = RateKey {
        scope: RateScope::Tenant(TenantId::new(tenant).unwrap()),
        record: RateRecord::Pressure,
    }
    .render();
    let bytes = kv.get(&key).await.ok()??;
    serde_json::from_slice::<PressureRecord>(&bytes).ok()
}

/// The latest event stored on `subject`, as JSON, waited for up to 15 s.
async fn last_event(js: &jetstream::Context, subject: &str) -> serde_json::Value {
    let events = js.get_stream("EVENTS").await.unwrap();
    let event = wait_for(
        &format!("an event on {subject}"),
        Duration::from_secs(15),
        || async { events.direct_get_last_for_subject(subject).await.ok() },
    )
    .await;
    serde_json::from_slice(&event.payload).unwrap()
}

/// How many operational events of `kind` tenant `tenant` has.
async fn event_count(js: &jetstream::Context, tenant: &str, kind: &str) -> usize {
    let subject = format!("events.v1.{tenant}.{kind}");
    let stream = js.get_stream_no_info("EVENTS").await.unwrap();
    let mut subjects = stream.info_with_subjects(&subject).await.unwrap();
    let mut count = 0;
    while let Some((_, n)) = futures::TryStreamExt::try_next(&mut subjects)
        .await
        .unwrap()
    {
        count += n;
    }
    count
}

#[tokio::test]
async fn a_tenant_stream_near_its_quota_is_reported_once_per_crossing_across_replicas() {
    let h = Harness::start(2).await;
    let topology = switchyard_topology::DeploymentConfig::default()
        .resolve()
        .unwrap();
    let tenant = TenantId::new("full").unwrap();
    let quota = switchyard_topology::TenantQuota {
        max_bytes: None,
        max_msgs: Some(10),
    };
    switchyard_topology::provision_tenant(&h.js, &topology, &tenant, quota, true)
        .await
        .unwrap();
    // Nine of its ten messages, unread (no ingress stage runs here): 90 %.
    let fill = |n: usize| {
        let js = h.js.clone();
        async move {
            for i in 0..n {
                js.publish("ingress.v1.full.ops.shop", format!("m{i}").into())
                    .await
                    .unwrap()
                    .await
                    .unwrap();
            }
        }
    };
    fill(9).await;
    let event = last_event(&h.js, "events.v1.full.quota_near_full").await;
    assert_eq!(event["source"], "backpressure", "{event}");
    let detail = event["detail"].as_str().unwrap();
    assert!(
        detail.starts_with("INGRESS_full at 90 % of its quota (")
            && detail.contains("9 of 10 messages"),
        "{detail}"
    );
    wait_for("the fill gauge", Duration::from_secs(10), || async {
        http_get(h.replicas[0].running().http_addr, "/metrics")
            .await
            .contains("switchyard_backpressure_quota_fill_pct{tenant=\"full\"} 90")
            .then_some(())
    })
    .await;
    // Two replicas, three more checks each while it stays full: still one report.
    let checks = "switchyard_backpressure_quota_checks_total";
    for replica in &h.replicas {
        let addr = replica.running().http_addr;
        let before = switchyard_testkit::metric(addr, checks).await;
        wait_for(
            "three more quota checks",
            Duration::from_secs(15),
            || async {
                (switchyard_testkit::metric(addr, checks).await >= before + 3.0).then_some(())
            },
        )
        .await;
    }
    assert_eq!(event_count(&h.js, "full", "quota_near_full").await, 1);

    // Drained (below 70 %), then nearly full again: a second crossing, a second report.
    h.js.get_stream("INGRESS_full")
        .await
        .unwrap()
        .purge()
        .await
        .unwrap();
    let store: Store<RateKey, switchyard_registry::QuotaRecord> =
        Store::new(h.js.get_key_value("rate-limits").await.unwrap());
    let key = RateKey {
        scope: RateScope::Tenant(tenant.clone()),
        record: RateRecord::Quota,
    };
    wait_for("the record cleared", Duration::from_secs(15), || async {
        store.get(&key).await.unwrap().filter(|r| !r.near_full)
    })
    .await;
    fill(8).await;
    wait_for("a second report", Duration::from_secs(15), || async {
        (event_count(&h.js, "full", "quota_near_full").await == 2).then_some(())
    })
    .await;
    h.stop().await;
}

#[tokio::test]
async fn a_shared_stream_near_its_limits_is_reported_as_an_event_of_the_deployment() {
    let h = Harness::start(1).await;
    // The DLQ bounded to ten entries, nine of them there: 90 %.
    let mut dlq = h.js.get_stream("DLQ").await.unwrap();
    let mut bounded = dlq.info().await.unwrap().config.clone();
    bounded.max_messages = 10;
    h.js.update_stream(&bounded).await.unwrap();
    for i in 0..9 {
        h.js.publish(format!("dlq.v1.acme.egress.p{i}"), "entry".into())
            .await
            .unwrap()
            .await
            .unwrap();
    }
    let event = last_event(&h.js, "events.v1._.storage_near_full").await;
    assert_eq!(event["about"], "DLQ", "{event}");
    assert!(event.get("tenant").is_none(), "{event}");
    let detail = event["detail"].as_str().unwrap();
    assert!(
        detail.starts_with("DLQ at 90 % of its limits (") && detail.contains("9 of 10 messages"),
        "{detail}"
    );
    h.stop().await;
}

#[tokio::test]
async fn each_tenant_is_read_from_its_own_shard_in_a_prefixed_deployment() {
    let server = NatsServer::start().await;
    let client = server.client().await;
    let js = jetstream::new(client.clone());
    let deployment = DeploymentConfig {
        prefix: Some(DeploymentPrefix::new("staging").unwrap()),
        ..Default::default()
    };
    let topology = deployment.resolve().unwrap();
    provision(&js, &topology, false).await.unwrap();
    let mut handed_on = client.subscribe("staging.egress.v1.>").await.unwrap();
    client.flush().await.unwrap();
    let mut config = BackpressureConfig::defaults().unwrap();
    config.nats.url = server.url();
    config.http.listen = "127.0.0.1:0".parse().unwrap();
    config.backpressure.scan_interval_ms = 200;
    config.deployment = deployment;
    let shutdown = CancellationToken::new();
    let running = switchyard_backpressure::start(config, server.client().await, shutdown.clone())
        .await
        .unwrap();
    let service = Service::new(running, shutdown);

    // Tenants of several shards; `07` is itself a shard token, and need not sit in shard 07.
    let tenants = ["acme", "globex", "07", "t0"];
    let handoff = Handoff::new(js.clone(), topology.namespace.clone());
    let mut sequence = 0;
    for tenant in tenants {
        for i in 0..3 {
            sequence += 1;
            let envelope = stamped(
                Address::parse(tenant, "ops", "hooks").unwrap(),
                &format!("{tenant}-{i}"),
                sequence,
            );
            handoff
                .forward(
                    InputStage::Backpressure,
                    &envelope,
                    Handoff::headers(&envelope, None),
                    "x".into(),
                )
                .await
                .unwrap();
        }
    }
    let mut arrived: HashMap<String, usize> = HashMap::new();
    for _ in 0..12 {
        let msg = tokio::time::timeout(Duration::from_secs(20), handed_on.next())
            .await
            .expect("every message handed on to egress")
            .unwrap();
        let envelope = Envelope::from_headers(msg.headers.as_ref()).unwrap();
        *arrived
            .entry(envelope.address.tenant.to_string())
            .or_default() += 1;
    }
    assert_eq!(
        arrived,
        tenants.iter().map(|t| (t.to_string(), 3)).collect(),
        "each message once"
    );

    let mut shards = std::collections::BTreeSet::new();
    for tenant in tenants {
        let id = TenantId::new(tenant).unwrap();
        let shard = topology.stream_of_tenant(StreamName::Backpressure, &id);
        assert!(shard.starts_with("STAGING_BACKPRESSURE_"), "{shard}");
        // The tenant's consumer is on its own shard's stream, filtered on its own subjects.
        let consumer = js
            .get_stream(&shard)
            .await
            .unwrap()
            .consumer_info(format!("backpressure-{tenant}"))
            .await
            .unwrap()
            .config
            .filter_subject
            .clone();
        assert_eq!(
            consumer,
            format!(
                "staging.backpressure.v1.{}.{tenant}.>",
                &shard[shard.len() - 2..]
            )
        );
        shards.insert(shard);
    }
    assert_eq!(shards.len(), 4, "four shards: {shards:?}");
    let every_shard = topology.stream_names(StreamName::Backpressure);
    wait_for("every shard empty", Duration::from_secs(10), || async {
        (stored_count_in(&js, &every_shard).await == 0).then_some(())
    })
    .await;
    // Nothing handed on twice: the egress stream (no egress runs here) holds the twelve.
    assert_eq!(stored_count(&js, "STAGING_EGRESS").await, 12);
    service.stop().await;
}

#[tokio::test]
async fn a_shard_near_its_limits_is_reported_for_the_tenants_of_that_shard() {
    let mut h = Harness::start(1).await;
    // One message a hundred seconds: after its burst of one, acme's messages wait in its shard.
    h.set_limit("acme", limit(0.01, 1)).await;
    let shard = backpressure_stream("acme");
    let mut stream = h.js.get_stream(&shard).await.unwrap();
    let mut bounded = stream.info().await.unwrap().config.clone();
    bounded.max_messages = 10;
    h.js.update_stream(&bounded).await.unwrap();
    // Ten in, one handed on with the burst, nine waiting: 90 % of the shard's limit.
    h.send("acme", 10, 0.0).await;
    h.wait_delivered("acme", 1, Duration::from_secs(15)).await;
    let event = last_event(&h.js, "events.v1._.storage_near_full").await;
    assert_eq!(event["about"], shard.as_str(), "{event}");
    let detail = event["detail"].as_str().unwrap();
    assert!(
        detail.starts_with(&format!("{shard} at 90 % of its limits ("))
            && detail.contains("9 of 10 messages")
            && detail.ends_with("for every tenant of its shard"),
        "{detail}"
    );
    // Stopping does not wait for acme's next slot, a hundred seconds away: the message waiting
    // for it goes back to the shard, and nothing is lost.
    let stopping = Instant::now();
    for replica in std::mem::take(&mut h.replicas) {
        replica.stop().await;
    }
    assert!(
        stopping.elapsed() < Duration::from_secs(30),
        "stopped after {:?}",
        stopping.elapsed()
    );
    assert_eq!(stored_count(&h.js, &shard).await, 9);
}
