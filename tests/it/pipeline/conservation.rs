//! The product's core promise, in one run: with a sink failing one request in five (503, a
//! retryable status; never the same message twice), one message whose header block the client
//! cannot parse, each service killed abruptly mid-stream and the nats-server killed with
//! SIGKILL, every accepted message is delivered or dead-lettered (accepted = delivered +
//! dead-lettered, nothing lost), the only dead letter is the poison message's `invalid_header`,
//! and every doubled delivery carries the webhook id of the first.

use std::cell::Cell;
use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use switchyard_dlq::DlqCode;
use switchyard_testkit::{publish_raw, wait_for};

use super::{Pipeline, Svc, ingress_subject};

const TENANT: &str = "acme";
const TEAM: &str = "ops";
const PLATFORM: &str = "hooks";
/// The sink path the route points at.
const PATH: &str = "in";
/// Messages published between two faults.
const BATCH: usize = 25;
/// How long one message may take to be accepted (its publish retried until acked).
const ACCEPT_TIMEOUT: Duration = Duration::from_secs(30);
/// How long the whole run may take to deliver everything after the last fault.
const DELIVERY_TIMEOUT: Duration = Duration::from_secs(120);
/// The poison message: a header block the Rust client cannot parse (a non-ASCII header name).
const POISON_HEADERS: &[u8] = b"NATS/1.0\r\nX-\xc3\x9cnicode: 1\r\n\r\n";
const POISON_PAYLOAD: &[u8] = b"poison";

/// One fault injected mid-stream.
#[derive(Debug, Clone, Copy)]
enum Fault {
    /// The service's tasks aborted mid-flight (nothing acked), restarted after a batch.
    Kill(Svc),
    /// The nats-server killed with SIGKILL and started again on its store.
    NatsServer,
}

/// What the producer side saw.
#[derive(Default)]
struct Producer {
    /// Payloads of the messages whose publish JetStream acked.
    accepted: BTreeSet<String>,
    /// Publish attempts that got no ack (retried with the same `Nats-Msg-Id`).
    refused: usize,
    /// The next message number.
    next: usize,
}

impl Producer {
    /// Publishes `BATCH` messages (payload `<i>`, id `m-<i>`), each retried until acked.
    async fn batch(&mut self, p: &Pipeline) {
        for _ in 0..BATCH {
            self.accept(p).await;
        }
    }

    /// Publishes the next message until JetStream acks it, counting refused attempts.
    async fn accept(&mut self, p: &Pipeline) {
        let i = self.next;
        self.next += 1;
        let (id, payload) = (format!("m-{i}"), i.to_string());
        let refused = Cell::new(0);
        wait_for(&format!("{id} accepted"), ACCEPT_TIMEOUT, || async {
            let attempt = p.try_publish(TENANT, TEAM, PLATFORM, &id, payload.as_bytes());
            let ack = tokio::time::timeout(Duration::from_secs(1), attempt)
                .await
                .ok()
                .flatten();
            refused.set(refused.get() + usize::from(ack.is_none()));
            ack
        })
        .await;
        self.refused += refused.get();
        self.accepted.insert(payload);
    }

    /// One publish attempt while the server is down: it must be refused (no ack). The message
    /// may still reach the stream when the client reconnects; [`Self::accept`] publishes it
    /// again under the same id, and the stream's duplicate window keeps one copy.
    async fn attempt_while_down(&mut self, p: &Pipeline) {
        let id = format!("m-{}", self.next);
        let payload = self.next.to_string();
        let attempt = p.try_publish(TENANT, TEAM, PLATFORM, &id, payload.as_bytes());
        let ack = tokio::time::timeout(Duration::from_secs(1), attempt).await;
        assert!(
            !matches!(ack, Ok(Some(_))),
            "a publish acked by a dead server"
        );
        self.refused += 1;
    }
}

/// Payloads the sink accepted (2xx), distinct.
fn delivered(p: &Pipeline) -> BTreeSet<String> {
    p.sink
        .received()
        .into_iter()
        .filter(|r| r.delivered())
        .map(|r| String::from_utf8_lossy(&r.body).into_owned())
        .collect()
}

/// Waits until `BATCH / 2` more messages were delivered than `before`: the batch is flowing,
/// so the next fault lands while the rest of it is on its way (some of it waiting for a retry
/// after a 503), not on an idle pipeline.
async fn wait_flowing(p: &Pipeline, before: usize) {
    let want = before + BATCH / 2;
    wait_for(&format!("{want} deliveries"), DELIVERY_TIMEOUT, || async {
        (delivered(p).len() >= want).then_some(())
    })
    .await;
}

#[tokio::test]
async fn every_accepted_message_is_delivered_or_dead_lettered_through_crashes_and_a_failing_sink() {
    let mut p = Pipeline::start(&[TENANT]).await;
    p.shorten_ack_wait(Duration::from_secs(2)).await;
    p.route(TENANT, None, PLATFORM, PATH).await;
    p.sink.fail_every(PATH, 5, 503);
    let mut producer = Producer::default();

    let faults = [
        Fault::Kill(Svc::Ingress),
        Fault::Kill(Svc::Idempotency),
        Fault::Kill(Svc::Backpressure),
        Fault::Kill(Svc::Egress),
        Fault::NatsServer,
    ];
    for (n, fault) in faults.into_iter().enumerate() {
        let before = delivered(&p).len();
        producer.batch(&p).await;
        if n == 0 {
            // The poison message follows the first batch, just before ingress is killed.
            let subject = ingress_subject(TENANT, TEAM, PLATFORM);
            let port = p.server.single().port();
            publish_raw(port, subject.as_bytes(), POISON_HEADERS, POISON_PAYLOAD).await;
        }
        wait_flowing(&p, before).await;
        eprintln!(
            "{fault:?} with {} of {} accepted messages delivered",
            delivered(&p).len(),
            producer.accepted.len()
        );
        match fault {
            Fault::Kill(svc) => {
                p.kill(svc);
                producer.batch(&p).await;
                p.start_service(svc).await;
            }
            Fault::NatsServer => {
                p.server.single().kill();
                producer.attempt_while_down(&p).await;
                p.server.single().start_again().await;
                producer.batch(&p).await;
            }
        }
    }
    producer.batch(&p).await;

    let accepted = producer.accepted.len() + 1; // and the poison message
    p.wait_delivered(producer.accepted.len(), DELIVERY_TIMEOUT)
        .await;
    wait_for(
        "the poison message dead-lettered",
        DELIVERY_TIMEOUT,
        || async { (!p.dlq().await.is_empty()).then_some(()) },
    )
    .await;
    p.wait_settled(DELIVERY_TIMEOUT).await;

    let dlq = p.dlq().await;
    let unexpected: Vec<String> = dlq
        .iter()
        .filter(|e| e.record.code != DlqCode::InvalidHeader || e.payload[..] != *POISON_PAYLOAD)
        .map(|e| {
            format!(
                "{} ({}): {}",
                String::from_utf8_lossy(&e.payload),
                e.record.code,
                e.record.reason
            )
        })
        .collect();
    assert!(
        unexpected.is_empty(),
        "unexpected dead letters: {unexpected:?}"
    );

    // Webhook ids per payload, over every request (failed ones too), and the 2xx deliveries.
    let mut ids: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    let mut deliveries: BTreeMap<String, usize> = BTreeMap::new();
    for r in p.sink.received() {
        let payload = String::from_utf8_lossy(&r.body).into_owned();
        if r.delivered() {
            *deliveries.entry(payload.clone()).or_default() += 1;
        }
        ids.entry(payload).or_default().insert(r.webhook_id);
    }
    let phantom: Vec<&String> = ids
        .keys()
        .filter(|k| !producer.accepted.contains(*k))
        .collect();
    assert!(phantom.is_empty(), "delivered, never accepted: {phantom:?}");
    let lost: Vec<&String> = producer
        .accepted
        .iter()
        .filter(|k| !deliveries.contains_key(*k))
        .collect();
    assert!(lost.is_empty(), "accepted, never delivered: {lost:?}");
    assert_eq!(
        accepted,
        deliveries.len() + dlq.len(),
        "accepted = delivered + dead-lettered"
    );
    let split: Vec<(&String, &BTreeSet<String>)> =
        ids.iter().filter(|(_, ids)| ids.len() > 1).collect();
    assert!(
        split.is_empty(),
        "one message sent under several webhook ids: {split:?}"
    );

    let doubled = deliveries.values().filter(|&&n| n > 1).count();
    let requests = p.sink.received();
    let failed = requests.iter().filter(|r| !r.delivered()).count();
    eprintln!(
        "accepted {accepted} (poison included; {} publish attempts refused), delivered {}, \
         dead-lettered {}, sink failures {failed} of {} requests, \
         doubled deliveries {doubled} (same webhook-id)",
        producer.refused,
        deliveries.len(),
        dlq.len(),
        requests.len(),
    );
    p.stop().await;
}
