//! Replay jobs executed by the service: one executor per job among replicas, dry runs and
//! unreplayable entries, cancellation. (The 5,000-entry crash-and-resume test, which also
//! checks the CLI's `dlq jobs` output, is in `apps/cli/tests/cli/dlq_jobs.rs`.)

use std::collections::BTreeSet;
use std::time::Duration;

use async_nats::jetstream;
use switchyard_dlq::DlqCode;
use switchyard_dlq_ops::{JobRecord, JobSpec, JobState, JobStore, Selection, Written};
use switchyard_fixtures::envelope_ids;
use switchyard_keys::TenantId;
use switchyard_subjects::InputStage;
use switchyard_testkit::{
    backpressure_stream, backpressure_streams, stored_count, stored_count_in, wait_for,
};
use time::OffsetDateTime;

use crate::{Env, seed};

async fn store(js: &jetstream::Context) -> JobStore {
    JobStore::new(js.get_key_value("dlq-jobs").await.unwrap())
}

fn spec(selection: Selection, rate: u32, dry_run: bool, upper_seq: u64, total: u64) -> JobSpec {
    JobSpec {
        selection,
        target: None,
        rate,
        dry_run,
        upper_seq,
        total,
    }
}

async fn create(js: &jetstream::Context, spec: JobSpec) -> String {
    let job = JobRecord::new(spec, OffsetDateTime::now_utc());
    store(js).await.create(&job).await.unwrap();
    job.id
}

async fn job(js: &jetstream::Context, id: &str) -> JobRecord {
    store(js).await.get(id).await.unwrap().unwrap().0
}

async fn finished(js: &jetstream::Context, id: &str, within: Duration) -> JobRecord {
    wait_for("the job to finish", within, || async {
        let job = job(js, id).await;
        job.state.is_finished().then_some(job)
    })
    .await
}

/// Cancels job `id` as the CLI does (a compare-and-set on its record) and waits for its
/// executor to record the cancel; returns the record then.
async fn cancel(js: &jetstream::Context, id: &str) -> JobRecord {
    let store = store(js).await;
    loop {
        let (mut record, revision) = store.get(id).await.unwrap().unwrap();
        record.state = JobState::Cancelled;
        record.finished_at = Some(OffsetDateTime::now_utc());
        if let Written::Stored(_) = store.update(&record, revision).await.unwrap() {
            break;
        }
    }
    wait_for(
        "the executor to record the cancel",
        Duration::from_secs(20),
        || async {
            let job = job(js, id).await;
            (job.state == JobState::Cancelled && job.lease.is_none()).then_some(job)
        },
    )
    .await
}

#[tokio::test]
async fn two_instances_share_a_job_but_only_one_executes_it() {
    let env = Env::start().await;
    let seqs = seed(&env.js, "acme", 1, 300, DlqCode::RetriesExhausted).await;
    let a = env.service(env.config()).await;
    let b = env.service(env.config()).await;
    let id = create(
        &env.js,
        spec(
            Selection::default(),
            2000,
            false,
            *seqs.last().unwrap(),
            300,
        ),
    )
    .await;
    let done = finished(&env.js, &id, Duration::from_secs(60)).await;
    assert_eq!(done.state, JobState::Done);
    assert_eq!(done.claims, 1, "claimed once, by one instance");
    assert_eq!(done.progress.replayed, 300);
    assert_eq!(done.progress.last_seq, *seqs.last().unwrap());
    assert!(done.lease.is_none(), "a finished job holds no lease");
    let ids = envelope_ids(&env.js, &backpressure_stream("acme")).await;
    assert_eq!(ids.len(), 300);
    assert_eq!(
        ids.iter().collect::<BTreeSet<_>>().len(),
        300,
        "each entry replayed once"
    );
    assert_eq!(
        stored_count(&env.js, "DLQ").await,
        0,
        "replayed entries left the DLQ"
    );
    a.stop().await;
    b.stop().await;
}

#[tokio::test]
async fn a_dry_run_changes_nothing_and_unreplayable_entries_are_kept_with_a_reason() {
    let env = Env::start().await;
    seed(&env.js, "acme", 1, 3, DlqCode::NoRoute).await;
    seed(&env.js, "acme", 4, 1, DlqCode::InvalidEnvelope).await;
    let other = seed(&env.js, "globex", 5, 2, DlqCode::NoRoute).await;
    let service = env.service(env.config()).await;
    let acme = Selection {
        tenant: Some(TenantId::new("acme").unwrap()),
        ..Selection::default()
    };
    let dry = create(
        &env.js,
        spec(acme.clone(), 100, true, *other.last().unwrap(), 4),
    )
    .await;
    let dry = finished(&env.js, &dry, Duration::from_secs(30)).await;
    assert_eq!(dry.state, JobState::Done);
    assert_eq!(dry.progress.would_replay, 3);
    assert_eq!(dry.progress.replayed, 0);
    assert_eq!(dry.progress.kept.get("not replayable"), Some(&1));
    assert_eq!(
        stored_count(&env.js, "DLQ").await,
        6,
        "a dry run changes nothing"
    );
    assert_eq!(
        stored_count_in(&env.js, &backpressure_streams()).await,
        0,
        "a dry run publishes nothing"
    );

    // Into another stage than the one that gave up.
    let mut to_backpressure = spec(acme, 100, false, *other.last().unwrap(), 4);
    to_backpressure.target = Some(InputStage::Backpressure);
    let real = create(&env.js, to_backpressure).await;
    let real = finished(&env.js, &real, Duration::from_secs(30)).await;
    assert_eq!(real.progress.replayed, 3);
    assert_eq!(real.progress.kept_total(), 1);
    assert_eq!(stored_count_in(&env.js, &backpressure_streams()).await, 3);
    assert_eq!(
        stored_count(&env.js, "DLQ").await,
        3,
        "globex's two and the unreplayable one stay"
    );
    service.stop().await;
}

#[tokio::test]
async fn a_cancelled_job_stops_and_leaves_the_rest_in_the_dlq() {
    let env = Env::start().await;
    let seqs = seed(&env.js, "acme", 1, 200, DlqCode::RetriesExhausted).await;
    let service = env.service(env.config()).await;
    let id = create(
        &env.js,
        spec(Selection::default(), 20, false, *seqs.last().unwrap(), 200),
    )
    .await;
    wait_for("some progress", Duration::from_secs(30), || async {
        (job(&env.js, &id).await.progress.replayed >= 10).then_some(())
    })
    .await;
    // Cancel as the CLI does: a compare-and-set on the record.
    let stopped = cancel(&env.js, &id).await;
    let replayed = stopped.progress.replayed;
    assert!(replayed < 200, "{replayed}");
    // Nothing more happens, even while the service drains.
    service.stop().await;
    assert_eq!(job(&env.js, &id).await.progress.replayed, replayed);
    let in_backpressure = stored_count_in(&env.js, &backpressure_streams()).await;
    let in_dlq = stored_count(&env.js, "DLQ").await;
    assert_eq!(
        in_backpressure + in_dlq,
        200,
        "nothing lost, nothing doubled"
    );
    assert_eq!(in_backpressure, replayed);
}

#[tokio::test]
async fn an_invalid_job_fails_with_its_reason_and_touches_nothing() {
    let env = Env::start().await;
    seed(&env.js, "acme", 1, 2, DlqCode::NoRoute).await;
    let service = env.service(env.config()).await;
    // Written by hand into the bucket: listed sequences and a filter at once (a tenant alone
    // may go with listed sequences: the entries must be that tenant's).
    let invalid = Selection {
        tenant: Some(TenantId::new("acme").unwrap()),
        code: Some(DlqCode::NoRoute),
        seqs: vec![1, 2],
        ..Selection::default()
    };
    let id = create(&env.js, spec(invalid, 10, false, 2, 2)).await;
    let failed = finished(&env.js, &id, Duration::from_secs(20)).await;
    assert_eq!(failed.state, JobState::Failed);
    assert_eq!(
        failed.error.as_deref(),
        Some("a job lists sequences or has filters (but a tenant), not both")
    );
    assert_eq!(stored_count(&env.js, "DLQ").await, 2);
    service.stop().await;
}

#[tokio::test]
async fn a_listed_job_naming_a_tenant_replays_that_tenants_entries_only() {
    let env = Env::start().await;
    let acme = seed(&env.js, "acme", 1, 2, DlqCode::NoRoute).await;
    let globex = seed(&env.js, "globex", 3, 1, DlqCode::NoRoute).await;
    let service = env.service(env.config()).await;
    // acme's job (the management API writes such jobs) lists a sequence of globex's too.
    let listed = Selection {
        tenant: Some(TenantId::new("acme").unwrap()),
        ..Selection::listed(vec![acme[0], acme[1], globex[0]])
    };
    let id = create(&env.js, spec(listed, 100, true, globex[0], 3)).await;
    let done = finished(&env.js, &id, Duration::from_secs(30)).await;
    assert_eq!(done.state, JobState::Done, "{:?}", done.error);
    assert_eq!(
        done.progress.would_replay, 2,
        "globex's entry is not acme's to replay"
    );
    // Its end is an operational event of acme's.
    let events = env.js.get_stream("EVENTS").await.unwrap();
    let event = wait_for(
        "the replay_job_finished event",
        Duration::from_secs(10),
        || async {
            events
                .direct_get_last_for_subject("events.v1.acme.replay_job_finished")
                .await
                .ok()
        },
    )
    .await;
    let event: serde_json::Value = serde_json::from_slice(&event.payload).unwrap();
    assert_eq!(event["about"], id.as_str());
    assert!(
        event["detail"].as_str().unwrap().starts_with("done: "),
        "{event}"
    );
    service.stop().await;
}

#[tokio::test]
async fn a_copy_its_target_keeps_refusing_stays_in_the_dlq_and_holds_up_neither_the_job_nor_a_cancel()
 {
    let env = Env::start().await;
    // Another tenant on another shard: its copies have somewhere to go.
    let other = ["globex", "initech", "umbrella", "hooli", "stark"]
        .into_iter()
        .find(|t| backpressure_stream(t) != backpressure_stream("acme"))
        .unwrap();
    seed(&env.js, "acme", 1, 2, DlqCode::RetriesExhausted).await;
    let last = *seed(&env.js, other, 3, 2, DlqCode::RetriesExhausted)
        .await
        .last()
        .unwrap();
    let mut config = env.config();
    config.jobs.entry_retry_secs = 2;
    let service = env.service(config).await;
    // acme's copies are refused: its shard's stream no longer takes its subjects (no
    // responders, on every try).
    let shard = backpressure_stream("acme");
    let mut taken = env
        .js
        .get_stream(&shard)
        .await
        .unwrap()
        .cached_info()
        .config
        .clone();
    env.js.delete_stream(&shard).await.unwrap();
    taken.subjects = vec![format!("elsewhere.{shard}")];
    env.js.create_stream(taken).await.unwrap();
    let id = create(&env.js, spec(Selection::default(), 100, false, last, 4)).await;
    let done = finished(&env.js, &id, Duration::from_secs(30)).await;
    assert_eq!(done.state, JobState::Done);
    assert_eq!(done.progress.replayed, 2, "{:?}", done.progress);
    assert_eq!(done.progress.kept.get("publish failed"), Some(&2));
    assert_eq!(stored_count(&env.js, &backpressure_stream(other)).await, 2);
    assert_eq!(stored_count(&env.js, "DLQ").await, 2, "acme's two stay");
    service.stop().await;

    // Retried without end, they still give way to a cancel.
    let mut config = env.config();
    config.jobs.entry_retry_secs = 3_600;
    let service = env.service(config).await;
    let id = create(&env.js, spec(Selection::default(), 100, false, last, 2)).await;
    wait_for("the job to run", Duration::from_secs(30), || async {
        (job(&env.js, &id).await.state == JobState::Running).then_some(())
    })
    .await;
    let stopped = cancel(&env.js, &id).await;
    assert_eq!(stopped.progress.replayed, 0);
    assert_eq!(
        stored_count(&env.js, "DLQ").await,
        2,
        "both stay in the DLQ"
    );
    service.stop().await;
}

#[tokio::test]
async fn a_listed_job_resumed_counts_an_entry_its_previous_executor_replayed_once() {
    let env = Env::start().await;
    let seqs = seed(&env.js, "acme", 1, 3, DlqCode::RetriesExhausted).await;
    // The previous executor had listed the first as in flight, replayed it and deleted it,
    // then stopped before recording that.
    env.js
        .get_stream("DLQ")
        .await
        .unwrap()
        .delete_message(seqs[0])
        .await
        .unwrap();
    let listed = Selection {
        seqs: seqs.clone(),
        ..Selection::default()
    };
    let mut record = JobRecord::new(
        spec(listed, 100, false, *seqs.last().unwrap(), 3),
        OffsetDateTime::now_utc(),
    );
    record.progress.in_flight = vec![seqs[0]];
    store(&env.js).await.create(&record).await.unwrap();
    let service = env.service(env.config()).await;
    let done = finished(&env.js, &record.id, Duration::from_secs(30)).await;
    assert_eq!(done.state, JobState::Done);
    assert_eq!(
        (
            done.progress.replayed,
            done.progress.missing,
            done.progress.handled
        ),
        (3, 0, 3),
        "counted once, as replayed: {:?}",
        done.progress
    );
    service.stop().await;
}
