//! Destinations through the whole pipeline: one message becomes one independent delivery per
//! destination whose subscription takes it; a failing destination retries and dead-letters
//! alone, and its replay delivers to it alone; a message nothing takes follows the tenant's
//! `unmatched` policy.

use std::time::Duration;

use async_nats::HeaderMap;
use async_nats::jetstream::{self, consumer, stream};
use futures::StreamExt;
use switchyard_dlq::{DlqCode, DlqEntry};
use switchyard_dlq_ops::plan_replay;
use switchyard_envelope::headers;
use switchyard_keys::{DestinationKey, TenantKey};
use switchyard_registry::{
    Destination, DisabledBy, NatsRoute, Route, Store, Subscription, TenantRecord, Unmatched,
    WebhookRoute, WebhookSecret,
};
use switchyard_subjects::Namespace;
use switchyard_testkit::wait_for;

use super::{Pipeline, SECRET, Svc, ingress_subject, signature_is_valid};

const LONG: Duration = Duration::from_secs(30);

async fn put_destination(p: &Pipeline, tenant: &str, id: &str, destination: Destination) {
    let store: Store<DestinationKey, Destination> =
        Store::new(p.js.get_key_value("destinations").await.unwrap());
    let key = DestinationKey {
        tenant: tenant.parse().unwrap(),
        destination: id.parse().unwrap(),
    };
    store.put(&key, &destination).await.unwrap();
}

fn webhook(p: &Pipeline, path: &str, subscription: serde_json::Value) -> Destination {
    Destination {
        target: Route::Webhook(WebhookRoute {
            url: p.sink.url(path),
            secret: WebhookSecret(SECRET.into()),
            timeout_ms: 5_000,
            max_in_flight: 16,
            headers: Default::default(),
            previous_secrets: Vec::new(),
            signing_key: None,
        }),
        subscription: serde_json::from_value(subscription).unwrap(),
        description: None,
        disabled: None,
        rate_limit: None,
    }
}

/// Publishes a producer message with its own headers.
async fn publish(p: &Pipeline, platform: &str, id: &str, event_type: &str, payload: &str) {
    let mut h = HeaderMap::new();
    h.insert("Nats-Msg-Id", id);
    h.insert(headers::EVENT_TYPE, event_type);
    p.js.publish_with_headers(
        ingress_subject("acme", "ops", platform),
        h,
        payload.to_owned().into(),
    )
    .await
    .unwrap()
    .await
    .unwrap();
}

/// Every message of a stream, read without consuming.
async fn stream_messages(js: &jetstream::Context, name: &str) -> Vec<jetstream::Message> {
    let stream = js.get_stream(name).await.unwrap();
    let pending = stream.cached_info().state.messages;
    if pending == 0 {
        return Vec::new();
    }
    let reader = stream
        .create_consumer(consumer::pull::Config {
            ack_policy: consumer::AckPolicy::None,
            ..Default::default()
        })
        .await
        .unwrap();
    let mut batch = reader
        .fetch()
        .max_messages(usize::try_from(pending).unwrap())
        .expires(Duration::from_secs(5))
        .messages()
        .await
        .unwrap();
    let mut out = Vec::new();
    while let Some(message) = batch.next().await {
        out.push(message.unwrap());
    }
    out
}

fn destination_of(entry: &DlqEntry) -> Option<&str> {
    entry
        .original_headers
        .get(headers::DESTINATION)
        .map(|v| v.as_str())
}

#[tokio::test]
async fn one_message_reaches_exactly_the_matching_destinations_and_a_failing_one_fails_alone() {
    let p = Pipeline::start(&["acme"]).await;
    // One stream captures two destinations' subjects: each destination's copy of a message is
    // stored, not the first alone (JetStream de-duplicates `Nats-Msg-Id` across a stream).
    p.js.create_stream(stream::Config {
        name: "SINK_ACME".into(),
        subjects: vec!["sink.acme.>".into()],
        ..Default::default()
    })
    .await
    .unwrap();
    // Orders over 100, created events only.
    put_destination(
        &p,
        "acme",
        "orders",
        webhook(
            &p,
            "orders",
            serde_json::json!({"event_types": ["order.created"],
                               "filter": {"body": {"amount": {"$gt": 100}}}}),
        ),
    )
    .await;
    // The shop platform, to a sink that is down.
    put_destination(
        &p,
        "acme",
        "crm",
        webhook(&p, "crm", serde_json::json!({"platforms": ["shop"]})),
    )
    .await;
    p.sink.answer("crm", 503);
    // Every message of the tenant, to two JetStream subjects of that one stream.
    for id in ["audit", "archive"] {
        put_destination(
            &p,
            "acme",
            id,
            Destination {
                target: Route::Nats(NatsRoute {
                    subject: format!("sink.acme.{id}"),
                    jetstream: true,
                    fire_and_forget: false,
                    timeout_ms: 5_000,
                    max_in_flight: 16,
                }),
                subscription: Subscription::default(),
                description: None,
                disabled: None,
                rate_limit: None,
            },
        )
        .await;
    }

    // big: orders, crm, audit and archive; small: audit and archive alone (orders' filter and
    // crm's platform refuse it).
    publish(&p, "shop", "big", "order.created", r#"{"amount":250}"#).await;
    publish(&p, "blog", "small", "order.created", r#"{"amount":5}"#).await;

    // crm fails three times, then its copy alone is dead-lettered.
    let entry = wait_for("crm's copy in the DLQ", LONG, || async {
        p.dlq().await.into_iter().next()
    })
    .await;
    p.wait_settled(LONG).await;
    assert_eq!(
        p.dlq().await.len(),
        1,
        "nothing but crm's copy is dead-lettered"
    );
    assert_eq!(entry.record.code, DlqCode::RetriesExhausted);
    assert_eq!(entry.record.attempts, 3);
    assert_eq!(destination_of(&entry), Some("crm"));

    let received = p.sink.received();
    let orders: Vec<_> = received.iter().filter(|r| r.path == "orders").collect();
    assert_eq!(orders.len(), 1, "orders got exactly the big order, once");
    assert_eq!(&orders[0].body[..], br#"{"amount":250}"#);
    assert!(signature_is_valid(SECRET, orders[0]));
    let crm: Vec<_> = received.iter().filter(|r| r.path == "crm").collect();
    assert_eq!(
        crm.len(),
        3,
        "three attempts of the big order, nothing of the small one"
    );
    let sunk = stream_messages(&p.js, "SINK_ACME").await;
    for id in ["audit", "archive"] {
        let subject = format!("sink.acme.{id}");
        let mut payloads: Vec<&[u8]> = sunk
            .iter()
            .filter(|m| m.subject.as_str() == subject)
            .map(|m| &m.payload[..])
            .collect();
        payloads.sort_unstable();
        assert_eq!(
            payloads,
            [&br#"{"amount":250}"#[..], &br#"{"amount":5}"#[..]],
            "{id} got both messages, once each"
        );
    }

    // The same message has the same webhook-id at every destination and attempt.
    let big_id = orders[0].webhook_id.clone();
    assert!(crm.iter().all(|r| r.webhook_id == big_id));
    assert_eq!(
        entry.original_headers.get(headers::ID).map(|v| v.as_str()),
        Some(big_id.as_str())
    );
    let big_entry = &entry;

    // crm is fixed; replaying its entry delivers to crm alone.
    p.sink.answer("crm", 200);
    let plan = plan_replay(&Namespace::default(), big_entry).unwrap();
    p.js.publish_with_headers(plan.subject, plan.headers, plan.payload)
        .await
        .unwrap()
        .await
        .unwrap();
    p.js.get_stream("DLQ")
        .await
        .unwrap()
        .delete_message(big_entry.seq)
        .await
        .unwrap();
    wait_for("the replayed crm delivery", LONG, || async {
        p.sink
            .received()
            .into_iter()
            .find(|r| r.path == "crm" && r.delivered())
    })
    .await;
    p.wait_settled(LONG).await;
    let received = p.sink.received();
    let delivered_crm: Vec<_> = received
        .iter()
        .filter(|r| r.path == "crm" && r.delivered())
        .collect();
    assert_eq!(delivered_crm.len(), 1);
    assert_eq!(
        delivered_crm[0].webhook_id, big_id,
        "the replay keeps the webhook id"
    );
    assert_eq!(
        received.iter().filter(|r| r.path == "orders").count(),
        1,
        "the replay did not go to orders again"
    );
    assert_eq!(
        stream_messages(&p.js, "SINK_ACME").await.len(),
        4,
        "nor to audit or archive"
    );
    p.stop().await;
}

#[tokio::test]
async fn a_message_no_destination_takes_is_dead_lettered_or_dropped_by_the_tenant_policy() {
    let mut p = Pipeline::start(&["acme"]).await;
    put_destination(
        &p,
        "acme",
        "shop-only",
        webhook(&p, "shop", serde_json::json!({"platforms": ["shop"]})),
    )
    .await;
    let mut receipts = p.client.subscribe("delivered.v1.acme.>").await.unwrap();

    // Default policy: dead-lettered no_subscriber, with the reason.
    publish(&p, "blog", "first", "post.created", "{}").await;
    let entry = wait_for("the no_subscriber entry", LONG, || async {
        p.dlq().await.into_iter().next()
    })
    .await;
    assert_eq!(entry.record.code, DlqCode::NoSubscriber);
    assert!(
        entry
            .record
            .reason
            .contains("none of tenant acme's 1 destinations")
            && entry.record.reason.contains("platform blog"),
        "{}",
        entry.record.reason
    );
    assert_eq!(destination_of(&entry), None);

    // `drop`: no DLQ entry, a receipt saying so, and nothing delivered.
    let tenants: Store<TenantKey, TenantRecord> =
        Store::new(p.js.get_key_value("tenants").await.unwrap());
    let record = TenantRecord {
        unmatched: Unmatched::Drop,
        ..TenantRecord::enabled()
    };
    let key = TenantKey {
        tenant: "acme".parse().unwrap(),
    };
    tenants.put(&key, &record).await.unwrap();
    // A restarted egress has loaded the policy before it takes its first message.
    p.wait_settled(LONG).await;
    p.kill(Svc::Egress);
    p.start_service(Svc::Egress).await;
    publish(&p, "blog", "second", "post.created", "{}").await;
    let message = tokio::time::timeout(LONG, receipts.next())
        .await
        .expect("a receipt")
        .unwrap();
    let receipt: serde_json::Value = serde_json::from_slice(&message.payload).unwrap();
    assert_eq!(receipt["result"], "unmatched", "{receipt}");
    assert_eq!(receipt["route_type"], "none");
    p.wait_settled(LONG).await;
    assert_eq!(
        p.dlq().await.len(),
        1,
        "the dropped message is not dead-lettered"
    );
    assert!(p.sink.received().is_empty(), "nothing was delivered");
    p.stop().await;
}

#[tokio::test]
async fn a_dead_destination_is_disabled_its_messages_parked_and_all_delivered_once_enabled() {
    let mut p = Pipeline::start(&["acme"]).await;
    p.kill(Svc::Egress);
    p.start_service_tuned(Svc::Egress, |config| {
        let egress = &mut config.egress;
        (egress.max_attempts, egress.breaker_failure_threshold) = (10, 1);
        (egress.breaker_open_secs, egress.breaker_max_open_secs) = (1, 1);
        (egress.disable_after_secs, egress.park_recheck_secs) = (2, 1);
    })
    .await;
    put_destination(&p, "acme", "crm", webhook(&p, "crm", serde_json::json!({}))).await;
    p.sink.answer("crm", 503);
    for i in 0..5 {
        publish(&p, "shop", &format!("m{i}"), "order.created", "{}").await;
    }

    // Down for two seconds: egress disables it.
    let store: Store<DestinationKey, Destination> =
        Store::new(p.js.get_key_value("destinations").await.unwrap());
    let key = DestinationKey {
        tenant: "acme".parse().unwrap(),
        destination: "crm".parse().unwrap(),
    };
    let disabled = wait_for("egress to disable crm", LONG, || async {
        store.get(&key).await.unwrap().and_then(|d| d.disabled)
    })
    .await;
    assert_eq!(disabled.by, DisabledBy::Egress);
    assert!(disabled.reason.contains("parked"), "{}", disabled.reason);
    // Operators and the tenant learn it from the durable events.
    let topology = switchyard_topology::DeploymentConfig::default()
        .resolve()
        .unwrap();
    let (_, events) = topology
        .open_stream(&p.js, switchyard_topology::StreamName::Events)
        .await
        .unwrap();
    let args = switchyard_cli::commands::events::LsArgs {
        tenant: Some("acme".parse().unwrap()),
        kind: None,
        since: None,
        limit: 100,
    };
    let listed = wait_for("the destination_disabled event", LONG, || async {
        let listed = switchyard_cli::commands::events::list(&events, &topology, &args)
            .await
            .unwrap();
        listed
            .iter()
            .any(|l| l.event.kind == "destination_disabled")
            .then_some(listed)
    })
    .await;
    let kinds: Vec<(&str, Option<&str>, &str)> = listed
        .iter()
        .map(|l| {
            (
                l.event.kind.as_str(),
                l.event.about.as_deref(),
                l.event.source.as_str(),
            )
        })
        .collect();
    assert!(
        kinds.contains(&("breaker_opened", Some("acme.crm"), "egress")),
        "{kinds:?}"
    );
    assert!(
        kinds.contains(&("destination_disabled", Some("crm"), "egress")),
        "{kinds:?}"
    );
    let attempts_when_disabled = p.sink.received().len();

    // Parked: nothing is attempted and nothing is dead-lettered while it stays disabled,
    // though the messages come back to look every second (each of them twice, at least).
    let parked =
        "switchyard_egress_deferred_total{tenant=\"acme\",reason=\"destination_disabled\"}";
    let before = p.metric(Svc::Egress, parked).await;
    wait_for(
        "the parked messages to come back twice",
        Duration::from_secs(30),
        || async { (p.metric(Svc::Egress, parked).await >= before + 10.0).then_some(()) },
    )
    .await;
    assert_eq!(
        p.sink.received().len(),
        attempts_when_disabled,
        "no attempt while disabled"
    );
    assert!(
        p.dlq().await.is_empty(),
        "parked messages are not dead-lettered"
    );

    // Enabled again (as `switchyard destinations enable` writes it): every message is
    // delivered, once.
    p.sink.answer("crm", 200);
    let mut record = store.get(&key).await.unwrap().unwrap();
    record.disabled = None;
    store.put(&key, &record).await.unwrap();
    wait_for("the five parked messages delivered", LONG, || async {
        let delivered: std::collections::HashSet<String> = p
            .sink
            .received()
            .into_iter()
            .filter(|r| r.delivered())
            .map(|r| r.webhook_id)
            .collect();
        (delivered.len() == 5).then_some(())
    })
    .await;
    p.wait_settled(LONG).await;
    let delivered = p
        .sink
        .received()
        .into_iter()
        .filter(|r| r.delivered())
        .count();
    assert_eq!(delivered, 5, "each parked message delivered exactly once");
    assert!(p.dlq().await.is_empty());
    p.stop().await;
}
