//! Provisioning is idempotent, detects drift, and fixes it only when asked.

use std::time::Duration;

use switchyard_keys::{DeploymentPrefix, TenantId};
use switchyard_registry::TenantRecord;
use switchyard_testkit::NatsServer;
use switchyard_topology::{
    ConsumerName, DeploymentConfig, Outcome, ProvisionReport, TenantQuota, provision,
    provision_tenant, status,
};

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

/// Publishes `payload` on `subject` and waits for a stream to store it.
async fn stored(js: &async_nats::jetstream::Context, subject: &'static str, payload: &'static str) {
    js.publish(subject, payload.into())
        .await
        .unwrap()
        .await
        .unwrap();
}

/// Deletes the stream `config` names and creates it again, empty (a stream drained and left
/// as it was, without its consumers). nats-server removes an account's emptied store
/// directories in a goroutine after a stream is deleted (`stream.stop`), which can race a
/// create right after it when the deleted stream was the account's last
/// (`10049 error creating store for stream`: "could not create storage directory"), so the
/// create is made again until it takes.
async fn emptied(
    js: &async_nats::jetstream::Context,
    config: async_nats::jetstream::stream::Config,
) {
    js.delete_stream(&config.name).await.unwrap();
    switchyard_testkit::wait_for(
        "the stream to be created again",
        Duration::from_secs(10),
        || async { js.create_stream(config.clone()).await.ok().map(|_| ()) },
    )
    .await;
}

/// Why provisioning `topology` is refused (panics if it is not).
async fn refused(
    js: &async_nats::jetstream::Context,
    topology: &switchyard_topology::ResolvedTopology,
) -> String {
    provision(js, topology, false)
        .await
        .unwrap_err()
        .to_string()
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
    assert_eq!(
        first.items.len(),
        36,
        "6 shared streams and 16 BACKPRESSURE shards, 3 shared consumers, 11 buckets"
    );

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

    // A tenant's own stream: created once, its quota drift reported, fixed in place.
    let acme = switchyard_keys::TenantId::new("acme").unwrap();
    let created = provision_tenant(&js, &topology, &acme, TenantQuota::default(), false)
        .await
        .unwrap();
    let names: Vec<(&str, Outcome)> = created
        .items
        .iter()
        .map(|i| (i.name.as_str(), i.outcome))
        .collect();
    assert_eq!(
        names,
        [
            ("INGRESS_acme", Outcome::Created),
            ("INGRESS_acme/ingress-worker", Outcome::Created)
        ]
    );
    let smaller = TenantQuota {
        max_bytes: None,
        max_msgs: Some(10),
    };
    let drifted = provision_tenant(&js, &topology, &acme, smaller, false)
        .await
        .unwrap();
    assert_eq!(
        outcome_of(&drifted, "INGRESS_acme").outcome,
        Outcome::Drifted
    );
    let fixed = provision_tenant(&js, &topology, &acme, smaller, true)
        .await
        .unwrap();
    assert_eq!(outcome_of(&fixed, "INGRESS_acme").outcome, Outcome::Updated);
    let info = js
        .get_stream("INGRESS_acme")
        .await
        .unwrap()
        .cached_info()
        .clone();
    assert_eq!(info.config.max_messages, 10);
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
async fn a_tenant_consumer_kept_on_file_from_before_is_fixed_in_place_and_stays_on_file() {
    let server = NatsServer::start().await;
    let js = async_nats::jetstream::new(server.client().await);
    let topology = DeploymentConfig::default().resolve().unwrap();
    let acme = TenantId::new("acme").unwrap();
    provision_tenant(&js, &topology, &acme, TenantQuota::default(), true)
        .await
        .unwrap();
    // As a deployment made before the declaration moved it to memory has it, and drifted.
    let declared = topology
        .tenant_consumer(ConsumerName::IngressWorker, &acme)
        .unwrap();
    js.delete_consumer_from_stream("ingress-worker", &declared.stream)
        .await
        .unwrap();
    let before = async_nats::jetstream::consumer::pull::Config {
        memory_storage: false,
        ack_wait: Duration::from_secs(7),
        ..declared.config.clone()
    };
    js.create_consumer_on_stream(before, &declared.stream)
        .await
        .unwrap();

    let report = provision_tenant(&js, &topology, &acme, TenantQuota::default(), true)
        .await
        .unwrap();
    assert_eq!(
        outcome_of(&report, "INGRESS_acme/ingress-worker").outcome,
        Outcome::Updated
    );
    let info = js
        .get_stream_no_info(&declared.stream)
        .await
        .unwrap()
        .consumer_info("ingress-worker")
        .await
        .unwrap();
    assert_eq!(info.config.ack_wait, declared.config.ack_wait);
    assert!(!info.config.memory_storage, "its storage is not changed");
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

    let egress = js.get_stream("STAGING_EGRESS").await.unwrap();
    assert_eq!(
        egress.cached_info().config.subjects,
        ["staging.egress.v1.>", "staging.delay.v1.egress.>"]
    );
    switchyard_fixtures::enable_tenant_in(&js, &topology, "acme", &TenantRecord::enabled()).await;
    let ingress = js.get_stream("STAGING_INGRESS_acme").await.unwrap();
    assert_eq!(
        ingress.cached_info().config.subjects,
        ["staging.ingress.v1.acme.>"]
    );
    js.get_key_value("dedupe-eu").await.unwrap();
    js.get_key_value("staging_routes").await.unwrap();

    let report = status(&js, &topology).await.unwrap();
    assert!(report.missing().is_empty(), "{:?}", report.missing());
    let tenants: Vec<&str> = report
        .tenant_streams
        .iter()
        .map(|t| t.name.as_str())
        .collect();
    assert_eq!(tenants, ["STAGING_INGRESS_acme"]);
    // The unprefixed deployment is a different one: nothing of it exists (6 shared streams and
    // 16 BACKPRESSURE shards, 3 shared consumers, 11 buckets; per-tenant streams are the
    // tenants').
    let other = status(&js, &DeploymentConfig::default().resolve().unwrap())
        .await
        .unwrap();
    assert_eq!(other.missing().len(), 36);
    assert!(other.tenant_streams.is_empty());
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
    switchyard_fixtures::enable_tenant(&js, "acme", &TenantRecord::enabled()).await;
    stored(&js, "ingress.v1.acme.ops.slack", "kept").await;

    server.restart().await;
    let js = async_nats::jetstream::new(server.client().await);
    let info = js
        .get_stream("INGRESS_acme")
        .await
        .unwrap()
        .cached_info()
        .clone();
    assert_eq!(info.state.messages, 1);
    let report = provision(&js, &topology, false).await.unwrap();
    assert!(!report.changed_anything());
    // The tenant's stream is kept; its consumer, whose state nats-server keeps in memory, is
    // not (the stream still holds the message), and is created again.
    let acme = TenantId::new("acme").unwrap();
    let own = provision_tenant(&js, &topology, &acme, TenantQuota::default(), false)
        .await
        .unwrap();
    let outcomes: Vec<_> = own
        .items
        .iter()
        .map(|i| (i.name.as_str(), i.outcome))
        .collect();
    assert_eq!(
        outcomes,
        [
            ("INGRESS_acme", Outcome::Unchanged),
            ("INGRESS_acme/ingress-worker", Outcome::Created)
        ]
    );
    let again = provision_tenant(&js, &topology, &acme, TenantQuota::default(), false)
        .await
        .unwrap();
    assert!(!again.changed_anything() && !again.has_drift(), "{again:?}");
}

#[tokio::test]
async fn a_drained_shared_ingress_is_retired_and_one_still_holding_work_is_refused() {
    let server = NatsServer::start().await;
    let js = async_nats::jetstream::new(server.client().await);
    let topology = DeploymentConfig::default().resolve().unwrap();
    // The layout before per-tenant ingress streams: one INGRESS on ingress.v1.> with its worker.
    let legacy = async_nats::jetstream::stream::Config {
        name: "INGRESS".into(),
        subjects: vec!["ingress.v1.>".into()],
        ..Default::default()
    };
    let stream = js.create_stream(legacy.clone()).await.unwrap();
    stream
        .create_consumer(async_nats::jetstream::consumer::pull::Config {
            durable_name: Some("ingress-worker".into()),
            ..Default::default()
        })
        .await
        .unwrap();
    stored(&js, "ingress.v1.acme.ops.slack", "unprocessed").await;
    let err = refused(&js, &topology).await;
    assert!(
        err.contains("still holds 1 messages the ingress stage has not handed on"),
        "{err}"
    );
    assert!(
        js.get_stream("INGRESS").await.is_ok(),
        "kept while it holds work"
    );

    // Drained (its worker consumed and acked everything): retired, then tenants get theirs.
    emptied(&js, legacy).await;
    let report = provision(&js, &topology, false).await.unwrap();
    assert!(
        report
            .items
            .iter()
            .any(|i| i.name == "INGRESS" && i.outcome == Outcome::Retired),
        "{report:?}"
    );
    assert!(js.get_stream("INGRESS").await.is_err());
    switchyard_fixtures::enable_tenant(&js, "acme", &TenantRecord::enabled()).await;
    js.get_stream("INGRESS_acme").await.unwrap();
}

#[tokio::test]
async fn an_emptied_unsharded_backpressure_is_retired_for_its_shards_and_one_holding_work_is_refused()
 {
    let server = NatsServer::start().await;
    let js = async_nats::jetstream::new(server.client().await);
    let topology = DeploymentConfig::default().resolve().unwrap();
    // The layout before the shards: one BACKPRESSURE work queue on backpressure.v1.>.
    let legacy = async_nats::jetstream::stream::Config {
        name: "BACKPRESSURE".into(),
        subjects: vec!["backpressure.v1.>".into()],
        retention: async_nats::jetstream::stream::RetentionPolicy::WorkQueue,
        ..Default::default()
    };
    let stream = js.create_stream(legacy).await.unwrap();
    // The previous build's stage had a consumer per tenant on it.
    stream
        .create_consumer(async_nats::jetstream::consumer::pull::Config {
            durable_name: Some("backpressure-acme".into()),
            filter_subject: "backpressure.v1.acme.>".into(),
            ..Default::default()
        })
        .await
        .unwrap();
    // And ADVISORIES captured the unsharded stream's advisories.
    let mut advisories = topology
        .streams
        .iter()
        .find(|s| s.base == "ADVISORIES")
        .unwrap()
        .config
        .clone();
    advisories.subjects = ["IDEMPOTENCY", "BACKPRESSURE", "EGRESS"]
        .into_iter()
        .flat_map(|s| {
            [
                format!("$JS.EVENT.ADVISORY.CONSUMER.MAX_DELIVERIES.{s}.*"),
                format!("$JS.EVENT.ADVISORY.CONSUMER.MSG_TERMINATED.{s}.*"),
            ]
        })
        .collect();
    js.create_stream(advisories).await.unwrap();
    stored(&js, "backpressure.v1.acme.ops.slack", "unprocessed").await;
    let err = refused(&js, &topology).await;
    assert!(
        err.contains("still holds 1 messages the backpressure stage has not handed on")
            && err.contains("run its backpressure service until BACKPRESSURE is empty"),
        "{err}"
    );
    assert!(
        js.get_stream("BACKPRESSURE").await.is_ok(),
        "kept while it holds work"
    );
    assert!(
        js.get_stream("BACKPRESSURE_00").await.is_err(),
        "no shard beside it"
    );

    // Emptied (the previous build's stage handed everything on): retired, shards created,
    // and ADVISORIES follows the shards without `--fix` (the safety net hears of them).
    stream.purge().await.unwrap();
    let report = provision(&js, &topology, false).await.unwrap();
    assert!(
        report
            .items
            .iter()
            .any(|i| i.name == "BACKPRESSURE" && i.outcome == Outcome::Retired),
        "{report:?}"
    );
    let advisories = outcome_of(&report, "ADVISORIES");
    assert_eq!(advisories.outcome, Outcome::Updated, "{report:?}");
    assert_eq!(advisories.changes[0].field, "subjects");
    assert_eq!(
        report
            .items
            .iter()
            .filter(|i| i.name == "ADVISORIES")
            .count(),
        1,
        "reported once"
    );
    let subjects = js
        .get_stream("ADVISORIES")
        .await
        .unwrap()
        .cached_info()
        .config
        .subjects
        .clone();
    assert!(
        subjects.contains(&"$JS.EVENT.ADVISORY.CONSUMER.MAX_DELIVERIES.BACKPRESSURE_15.*".into())
            && !subjects
                .contains(&"$JS.EVENT.ADVISORY.CONSUMER.MAX_DELIVERIES.BACKPRESSURE.*".into()),
        "{subjects:?}"
    );
    assert!(js.get_stream("BACKPRESSURE").await.is_err());
    for shard in switchyard_testkit::backpressure_streams() {
        let info = js.get_stream(&shard).await.unwrap().cached_info().clone();
        assert_eq!(
            info.config.max_bytes,
            64 << 20,
            "{shard}: each shard's limit"
        );
    }
    // A hand-off lands in its tenant's shard, and nowhere else.
    stored(&js, "backpressure.v1.15.acme.ops.slack", "sharded").await;
    assert_eq!(
        switchyard_testkit::stored_count(&js, &switchyard_testkit::backpressure_stream("acme"))
            .await,
        1
    );
    assert_eq!(
        switchyard_testkit::stored_count_in(&js, &switchyard_testkit::backpressure_streams()).await,
        1
    );
    // Provisioning again changes nothing.
    let again = provision(&js, &topology, false).await.unwrap();
    assert!(
        again.items.iter().all(|i| i.outcome == Outcome::Unchanged),
        "{again:?}"
    );
}

#[tokio::test]
async fn a_retirement_of_the_unsharded_backpressure_stopped_half_way_is_finished_or_undone() {
    let server = NatsServer::start().await;
    let js = async_nats::jetstream::new(server.client().await);
    let topology = DeploymentConfig::default().resolve().unwrap();
    // As a retirement leaves it after closing it to its subjects: on the dead subject alone.
    let closed = async_nats::jetstream::stream::Config {
        name: "BACKPRESSURE".into(),
        subjects: vec!["backpressure.v1.retiring".into()],
        retention: async_nats::jetstream::stream::RetentionPolicy::WorkQueue,
        ..Default::default()
    };

    // Holding a message (one that landed as it was closed): put back on its subjects, so the
    // previous build's stage can hand it on, and refused.
    js.create_stream(closed.clone()).await.unwrap();
    stored(&js, "backpressure.v1.retiring", "landed late").await;
    let err = refused(&js, &topology).await;
    assert!(
        err.contains("still holds 1 messages the backpressure stage has not handed on"),
        "{err}"
    );
    let reopened = js
        .get_stream("BACKPRESSURE")
        .await
        .unwrap()
        .cached_info()
        .config
        .subjects
        .clone();
    assert_eq!(reopened, ["backpressure.v1.>"]);
    assert!(js.get_stream("BACKPRESSURE_00").await.is_err());

    // Empty: the retirement is finished, and the shards are created.
    emptied(&js, closed).await;
    let report = provision(&js, &topology, false).await.unwrap();
    assert_eq!(
        outcome_of(&report, "BACKPRESSURE").outcome,
        Outcome::Retired
    );
    assert!(js.get_stream("BACKPRESSURE").await.is_err());
    assert_eq!(
        outcome_of(&report, "BACKPRESSURE_15").outcome,
        Outcome::Created
    );
}

#[tokio::test]
async fn a_tenant_stream_held_shut_by_closed_admission_keeps_its_hold_through_provisioning() {
    let server = NatsServer::start().await;
    let js = async_nats::jetstream::new(server.client().await);
    let topology = DeploymentConfig::default().resolve().unwrap();
    provision(&js, &topology, false).await.unwrap();
    let acme = switchyard_keys::TenantId::new("acme").unwrap();
    let quota = switchyard_topology::TenantQuota {
        max_bytes: None,
        max_msgs: Some(500),
    };
    switchyard_topology::provision_tenant(&js, &topology, &acme, quota, false)
        .await
        .unwrap();
    let config = |js: async_nats::jetstream::Context| async move {
        js.get_stream("INGRESS_acme")
            .await
            .unwrap()
            .cached_info()
            .config
            .clone()
    };

    assert!(
        switchyard_topology::hold_tenant_ingress(&js, &topology, &acme, true)
            .await
            .unwrap()
    );
    assert_eq!(config(js.clone()).await.max_messages, 1, "held shut");
    // Provisioning the same quota finds nothing to change: the hold is not drift.
    let report = switchyard_topology::provision_tenant(&js, &topology, &acme, quota, false)
        .await
        .unwrap();
    assert!(
        !report.has_drift() && !report.changed_anything(),
        "{report:#?}"
    );
    // A new quota meanwhile (`tenants enable acme --max-msgs 800`) keeps the hold and changes
    // only the quota it returns to.
    let raised = switchyard_topology::TenantQuota {
        max_bytes: None,
        max_msgs: Some(800),
    };
    switchyard_topology::provision_tenant(&js, &topology, &acme, raised, true)
        .await
        .unwrap();
    let held = config(js.clone()).await;
    assert_eq!(held.max_messages, 1);
    assert_eq!(
        held.metadata
            .get(switchyard_topology::HELD_QUOTA_KEY)
            .map(String::as_str),
        Some("800")
    );
    assert!(
        switchyard_topology::hold_tenant_ingress(&js, &topology, &acme, false)
            .await
            .unwrap()
    );
    let released = config(js.clone()).await;
    assert_eq!(released.max_messages, 800);
    assert!(
        !released
            .metadata
            .contains_key(switchyard_topology::HELD_QUOTA_KEY)
    );
}
