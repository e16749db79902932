//! Provisioning is idempotent, detects drift, and fixes it only when asked.

use std::time::Duration;

use switchyard_keys::DeploymentPrefix;
use switchyard_testkit::NatsServer;
use switchyard_topology::{DeploymentConfig, Outcome, ProvisionReport, provision, status};

fn outcome_of<'a>(
    report: &'a ProvisionReport,
    name: &str,
) -> &'a switchyard_topology::ProvisionItem {
    report
        .items
        .iter()
        .find(|i| i.name == name)
        .unwrap_or_else(|| panic!("{name} not in report"))
}

#[tokio::test]
async fn second_run_changes_nothing_and_drift_is_reported_then_fixed() {
    let server = NatsServer::start().await;
    let js = async_nats::jetstream::new(server.client().await);
    let topology = DeploymentConfig::default().resolve().unwrap();

    let first = provision(&js, &topology, false).await.unwrap();
    assert!(
        first.items.iter().all(|i| i.outcome == Outcome::Created),
        "{first:#?}"
    );
    assert_eq!(first.items.len(), 14);

    let second = provision(&js, &topology, false).await.unwrap();
    assert!(
        second.items.iter().all(|i| i.outcome == Outcome::Unchanged),
        "{second:#?}"
    );
    assert!(!second.changed_anything() && !second.has_drift());

    // Someone shortens the DLQ's retention and raises a consumer's max_deliver by hand.
    let mut dlq = js
        .get_stream("DLQ")
        .await
        .unwrap()
        .cached_info()
        .config
        .clone();
    dlq.max_age = Duration::from_secs(600);
    js.update_stream(dlq).await.unwrap();
    let mut worker = topology
        .consumer(switchyard_topology::ConsumerName::EgressWorker)
        .unwrap()
        .config
        .clone();
    worker.max_deliver = 3;
    js.update_consumer_on_stream(worker, "EGRESS")
        .await
        .unwrap();

    let drifted = provision(&js, &topology, false).await.unwrap();
    let dlq_item = outcome_of(&drifted, "DLQ");
    assert_eq!(dlq_item.outcome, Outcome::Drifted);
    assert_eq!(dlq_item.changes.len(), 1);
    assert_eq!(dlq_item.changes[0].field, "max_age");
    assert_eq!(dlq_item.changes[0].actual, "600s");
    assert_eq!(
        outcome_of(&drifted, "EGRESS/egress-worker").outcome,
        Outcome::Drifted
    );
    assert!(drifted.has_drift());
    // Reporting changed nothing on the server.
    assert_eq!(
        js.get_stream("DLQ")
            .await
            .unwrap()
            .cached_info()
            .config
            .max_age,
        Duration::from_secs(600)
    );

    let fixed = provision(&js, &topology, true).await.unwrap();
    assert_eq!(outcome_of(&fixed, "DLQ").outcome, Outcome::Updated);
    assert_eq!(
        outcome_of(&fixed, "EGRESS/egress-worker").outcome,
        Outcome::Updated
    );
    let after = provision(&js, &topology, false).await.unwrap();
    assert!(
        after.items.iter().all(|i| i.outcome == Outcome::Unchanged),
        "{after:#?}"
    );
}

#[tokio::test]
async fn a_field_that_cannot_change_in_place_is_reported_not_touched() {
    let server = NatsServer::start().await;
    let js = async_nats::jetstream::new(server.client().await);
    let topology = DeploymentConfig::default().resolve().unwrap();
    let mut dlq = topology
        .streams
        .iter()
        .find(|s| s.base == "DLQ")
        .unwrap()
        .config
        .clone();
    dlq.storage = async_nats::jetstream::stream::StorageType::Memory;
    dlq.max_bytes = 1 << 20;
    js.create_stream(dlq).await.unwrap();

    let report = provision(&js, &topology, true).await.unwrap();
    let item = outcome_of(&report, "DLQ");
    assert_eq!(item.outcome, Outcome::Unfixable);
    assert!(
        item.changes
            .iter()
            .any(|c| c.field == "storage" && !c.fixable),
        "{item:#?}"
    );
    let info = js.get_stream("DLQ").await.unwrap().cached_info().clone();
    assert_eq!(
        info.config.storage,
        async_nats::jetstream::stream::StorageType::Memory
    );
}

#[tokio::test]
async fn prefix_and_bucket_overrides_name_what_is_created() {
    let server = NatsServer::start().await;
    let js = async_nats::jetstream::new(server.client().await);
    let deployment = DeploymentConfig {
        prefix: Some(DeploymentPrefix::new("staging").unwrap()),
        buckets: [("idempotency".to_owned(), "dedupe-eu".to_owned())].into(),
        ..Default::default()
    };
    let topology = deployment.resolve().unwrap();
    provision(&js, &topology, false).await.unwrap();

    let ingress = js.get_stream("STAGING_INGRESS").await.unwrap();
    assert_eq!(
        ingress.cached_info().config.subjects,
        ["staging.ingress.v1.>"]
    );
    js.get_key_value("dedupe-eu").await.unwrap();
    js.get_key_value("staging_routes").await.unwrap();

    let report = status(&js, &topology).await.unwrap();
    assert!(report.missing().is_empty(), "{:?}", report.missing());
    // The unprefixed deployment is a different one: nothing of it exists.
    let other = status(&js, &DeploymentConfig::default().resolve().unwrap())
        .await
        .unwrap();
    assert_eq!(other.missing().len(), 14);
}

#[tokio::test]
async fn status_shows_lag_and_per_tenant_backlog() {
    let server = NatsServer::start().await;
    let js = async_nats::jetstream::new(server.client().await);
    let topology = DeploymentConfig::default().resolve().unwrap();
    provision(&js, &topology, false).await.unwrap();
    let ns = &topology.namespace;
    for (tenant, n) in [("acme", 3), ("globex", 2)] {
        for i in 0..n {
            let subject = switchyard_subjects::StageSubject {
                stage: switchyard_subjects::InputStage::Egress,
                address: switchyard_keys::Address::parse(tenant, "ops", "slack").unwrap(),
            };
            use switchyard_subjects::SubjectKind;
            js.publish(subject.format(ns), format!("m{i}").into())
                .await
                .unwrap()
                .await
                .unwrap();
        }
    }
    let report = status(&js, &topology).await.unwrap();
    let egress = report
        .consumers
        .iter()
        .find(|c| c.name == "egress-worker")
        .unwrap();
    assert_eq!(egress.pending, 5);
    let backlog: Vec<(String, u64)> = report
        .tenant_backlog
        .iter()
        .map(|t| (t.tenant.clone(), t.messages))
        .collect();
    assert_eq!(backlog, [("acme".to_owned(), 3), ("globex".to_owned(), 2)]);
}

#[tokio::test]
async fn restart_keeps_the_store() {
    let mut server = NatsServer::start().await;
    let js = async_nats::jetstream::new(server.client().await);
    let topology = DeploymentConfig::default().resolve().unwrap();
    provision(&js, &topology, false).await.unwrap();
    js.publish("ingress.v1.acme.ops.slack", "kept".into())
        .await
        .unwrap()
        .await
        .unwrap();

    server.restart().await;
    let js = async_nats::jetstream::new(server.client().await);
    let info = js
        .get_stream("INGRESS")
        .await
        .unwrap()
        .cached_info()
        .clone();
    assert_eq!(info.state.messages, 1);
    let report = provision(&js, &topology, false).await.unwrap();
    assert!(!report.changed_anything());
}
