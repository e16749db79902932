//! Inflow counters per tenant/stage/code (exactly once, across restarts and re-reads) and
//! inflow alerts (for the tenant over its threshold only).

use std::collections::BTreeMap;
use std::time::Duration;

use async_nats::jetstream;
use futures::StreamExt;
use switchyard_dlq::DlqCode;
use switchyard_dlq_ops::{StatsRecord, StatsState, StatsStore};
use switchyard_subjects::Namespace;
use switchyard_testkit::wait_for;

use crate::{Env, seed};
use switchyard_fixtures::dlq_entries;

/// Every alert the dlq service publishes, from now on.
async fn alert_feed(env: &Env) -> async_nats::Subscriber {
    let alerts = env
        .client
        .subscribe(Namespace::default().alert_filter(None))
        .await
        .unwrap();
    env.client.flush().await.unwrap();
    alerts
}

async fn store(js: &jetstream::Context) -> StatsStore {
    StatsStore::new(js.get_key_value("dlq-stats").await.unwrap())
}

async fn counted_through(js: &jetstream::Context, seq: u64) {
    let store = store(js).await;
    wait_for(
        "the stats to count every entry",
        Duration::from_secs(30),
        || async {
            let (state, _) = store.state().await.ok()??;
            (state.cursor >= seq).then_some(())
        },
    )
    .await;
}

/// `tenant.stage.code` → count.
async fn counts(js: &jetstream::Context) -> BTreeMap<String, u64> {
    store(js)
        .await
        .counters(">")
        .await
        .unwrap()
        .into_iter()
        .map(|c| {
            let c: StatsRecord = c.unwrap();
            (
                format!(
                    "{}.{}.{}",
                    c.tenant.map_or("_".into(), |t| t.to_string()),
                    c.stage,
                    c.code
                ),
                c.count,
            )
        })
        .collect()
}

#[tokio::test]
async fn inflow_is_counted_per_tenant_stage_and_code_exactly_once_across_restarts() {
    let env = Env::start().await;
    seed(&env.js, "acme", 1, 5, DlqCode::RetriesExhausted).await;
    seed(&env.js, "acme", 6, 2, DlqCode::NoRoute).await;
    let last = *seed(&env.js, "globex", 8, 3, DlqCode::NoRoute)
        .await
        .last()
        .unwrap();
    let service = env.service(env.config()).await;
    counted_through(&env.js, last).await;
    let expected: BTreeMap<String, u64> = [
        ("acme.egress.no_route".to_owned(), 2),
        ("acme.egress.retries_exhausted".to_owned(), 5),
        ("globex.egress.no_route".to_owned(), 3),
    ]
    .into();
    assert_eq!(counts(&env.js).await, expected);
    let acme = store(&env.js).await.counters("acme.>").await.unwrap();
    let retries = acme
        .iter()
        .map(|c| c.as_ref().unwrap())
        .find(|c| c.code == DlqCode::RetriesExhausted)
        .unwrap();
    assert_eq!((retries.first_seq, retries.last_seq), (1, 5));
    assert!(retries.first_seen <= retries.last_seen);
    service.crash().await;

    // A crash after the counters were written but before the cursor moved: the next instance
    // re-reads those entries, and the watermarks count none of them twice.
    let stats = store(&env.js).await;
    let (_, revision) = stats.state().await.unwrap().unwrap();
    let rewound = StatsState {
        cursor: 2,
        ..StatsState::default()
    };
    stats.put_state(&rewound, Some(revision)).await.unwrap();
    let newer = *seed(&env.js, "acme", 20, 4, DlqCode::NoRoute)
        .await
        .last()
        .unwrap();
    let service = env.service(env.config()).await;
    counted_through(&env.js, newer).await;
    let mut expected = expected;
    *expected.get_mut("acme.egress.no_route").unwrap() += 4;
    assert_eq!(counts(&env.js).await, expected);
    service.stop().await;
}

#[tokio::test]
async fn alerts_fire_for_the_tenant_over_its_threshold_and_not_for_others() {
    let env = Env::start().await;
    let mut alerts = alert_feed(&env).await;
    let mut config = env.config();
    config.alerts.threshold = 5;
    config.alerts.window_secs = 300;
    let service = env.service(config).await;
    seed(&env.js, "acme", 1, 8, DlqCode::RetriesExhausted).await;
    let last = *seed(&env.js, "globex", 9, 5, DlqCode::NoRoute)
        .await
        .last()
        .unwrap();

    let alert = tokio::time::timeout(Duration::from_secs(30), alerts.next())
        .await
        .expect("an alert for acme")
        .unwrap();
    assert_eq!(alert.subject.as_str(), "alerts.v1.acme.dlq-inflow");
    let body: serde_json::Value = serde_json::from_slice(&alert.payload).unwrap();
    assert_eq!(body["kind"], "dlq-inflow");
    assert_eq!(body["tenant"], "acme");
    assert_eq!(body["count"], 6);
    assert_eq!(body["threshold"], 5);
    assert_eq!(body["window_secs"], 300);
    assert_eq!(body["last_seq"], 6);

    // Alerts go out before the cursor moves past their entries: once everything is counted,
    // any alert for globex (at its threshold, not over it) would already be here.
    counted_through(&env.js, last).await;
    env.client.flush().await.unwrap();
    let more = tokio::time::timeout(Duration::from_secs(1), alerts.next()).await;
    assert!(
        more.is_err(),
        "no other alert: {:?}",
        more.ok().flatten().map(|m| m.subject)
    );
    service.stop().await;
}

#[tokio::test]
async fn entries_about_to_age_out_are_counted_and_alerted_per_tenant() {
    let env = Env::start().await;
    // A DLQ that keeps entries 600 s (its duplicate window is 300 s): with a 598 s look-ahead,
    // an entry older than 2 s is about to age out.
    let mut dlq = env
        .js
        .get_stream("DLQ")
        .await
        .unwrap()
        .cached_info()
        .config
        .clone();
    dlq.max_age = Duration::from_secs(600);
    env.js.update_stream(dlq).await.unwrap();
    let mut alerts = alert_feed(&env).await;

    // A look-ahead not below max_age would call every entry expiring: refused by name.
    let mut config = env.config();
    config.alerts.expiring_within_secs = 600;
    let Err(refused) = switchyard_dlq_service::start(
        config,
        env.server.client().await,
        tokio_util::sync::CancellationToken::new(),
    )
    .await
    else {
        panic!("started with a look-ahead as long as max_age");
    };
    assert!(
        format!("{refused:#}").contains("invalid setting alerts.expiring_within_secs"),
        "{refused:#}"
    );

    let mut config = env.config();
    config.alerts.expiring_within_secs = 598;
    config.alerts.expiry_check_secs = 1;
    let service = env.service(config).await;
    seed(&env.js, "acme", 1, 3, DlqCode::RetriesExhausted).await;

    let alert = tokio::time::timeout(Duration::from_secs(30), alerts.next())
        .await
        .expect("an expiry alert for acme")
        .unwrap();
    assert_eq!(alert.subject.as_str(), "alerts.v1.acme.dlq-expiring");
    let body: serde_json::Value = serde_json::from_slice(&alert.payload).unwrap();
    assert_eq!(body["kind"], "dlq-expiring");
    assert_eq!(body["tenant"], "acme");
    assert_eq!(body["count"], 3);
    assert_eq!(body["within_secs"], 598);
    let metrics = switchyard_testkit::http_get(service.running().http_addr, "/metrics").await;
    assert!(
        metrics.contains("switchyard_dlq_expiring_entries{tenant=\"acme\"} 3"),
        "{metrics}"
    );
    // The alert is a durable operational event of acme's too.
    let events = env.js.get_stream("EVENTS").await.unwrap();
    let event = switchyard_testkit::wait_for(
        "the dlq_expiring event",
        Duration::from_secs(10),
        || async {
            events
                .direct_get_last_for_subject("events.v1.acme.dlq_expiring")
                .await
                .ok()
        },
    )
    .await;
    let event: serde_json::Value = serde_json::from_slice(&event.payload).unwrap();
    assert_eq!(event["tenant"], "acme");
    assert!(
        event["detail"]
            .as_str()
            .unwrap()
            .starts_with("3 DLQ entries age out within 598 s; the oldest at "),
        "{event}"
    );
    service.stop().await;
}

#[tokio::test]
async fn a_tenant_with_its_own_retention_is_warned_then_its_older_entries_are_removed_and_counted()
{
    let env = Env::start().await;
    let mut alerts = alert_feed(&env).await;
    let mut config = env.config();
    config.alerts.expiring_within_secs = 2;
    config.alerts.expiry_check_secs = 1;
    config
        .retention
        .tenants
        .insert(switchyard_keys::TenantId::new("globex").unwrap(), 4);
    let service = env.service(config).await;
    seed(&env.js, "globex", 1, 2, DlqCode::NoRoute).await;
    seed(&env.js, "acme", 3, 1, DlqCode::NoRoute).await;

    // Two seconds before its 4 s retention ends: warned.
    let alert = tokio::time::timeout(Duration::from_secs(30), alerts.next())
        .await
        .expect("an expiry alert for globex")
        .unwrap();
    assert_eq!(alert.subject.as_str(), "alerts.v1.globex.dlq-expiring");
    let body: serde_json::Value = serde_json::from_slice(&alert.payload).unwrap();
    assert_eq!(body["count"], 2);
    // Past it: removed, counted; acme's entry (the DLQ's 14 days) stays.
    wait_for(
        "globex's entries removed",
        Duration::from_secs(30),
        || async {
            let metrics =
                switchyard_testkit::http_get(service.running().http_addr, "/metrics").await;
            metrics
                .contains("switchyard_dlq_retention_removed_total{tenant=\"globex\"} 2")
                .then_some(())
        },
    )
    .await;
    let left = dlq_entries(&env.js).await;
    assert_eq!(left.len(), 1);
    assert_eq!(
        left[0].record.tenant.as_ref().map(|t| t.as_str()),
        Some("acme")
    );
    service.stop().await;
}
