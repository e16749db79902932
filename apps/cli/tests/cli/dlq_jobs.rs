//! `dlq replay --job`, `dlq replay --follow` and `dlq jobs`: durable replay jobs executed by a
//! dlq service (running in this process), their progress as the CLI prints it, and a crash of
//! the service halfway through a 5,000-entry job.

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use async_nats::jetstream;
use switchyard_dlq::DlqCode;
use switchyard_dlq_ops::JobState;
use switchyard_fixtures::envelope_ids;
use switchyard_testkit::{
    backpressure_stream, backpressure_streams, stored_count, stored_count_in, wait_for,
};

use crate::fixtures::{DlqService, cells, job, seed_many};
use crate::{fails, ok, provisioned};

/// The job id from `job <id> created: …`.
fn created_id(out: &str) -> String {
    out.strip_prefix("job ")
        .and_then(|rest| rest.split_whitespace().next())
        .unwrap_or_else(|| panic!("no job id in {out:?}"))
        .to_owned()
}

#[tokio::test]
async fn a_5000_entry_job_survives_a_crash_halfway_and_replays_each_entry_exactly_once() {
    let server = provisioned().await;
    let url = server.url();
    let js = jetstream::new(server.client().await);
    let seeded = seed_many(&js, "acme", 1, 5000, DlqCode::RetriesExhausted).await;
    let seeded_ids: BTreeSet<String> = seeded.iter().map(|(_, id)| id.clone()).collect();
    let service = DlqService::start(&url).await;
    let crashed_instance = service.instance();

    let created = ok(
        &url,
        &["dlq", "replay", "--all", "--job", "--rate", "500", "--yes"],
    )
    .await;
    let id = created_id(&created);
    assert_eq!(
        created,
        format!(
            "job {id} created: replay 5000 entries (every entry) at 500/s\n\
             follow it with: switchyard dlq jobs {id} --follow\n"
        )
    );
    let started = Instant::now();
    wait_for(
        "the job to pass halfway",
        Duration::from_secs(60),
        || async { (job(&js, &id).await.progress.handled >= 2500).then_some(()) },
    )
    .await;
    service.crash().await;
    let crashed_at = started.elapsed();
    let at_crash = job(&js, &id).await;
    let first_run = at_crash.progress.handled;
    println!(
        "first run: {first_run} entries in {:.2}s ({:.0}/s)",
        crashed_at.as_secs_f64(),
        first_run as f64 / crashed_at.as_secs_f64()
    );

    // While no service runs, the CLI shows where the job stopped: human and JSON.
    let json: serde_json::Value =
        serde_json::from_str(&ok(&url, &["dlq", "jobs", "--json"]).await).unwrap();
    let listed = json.as_array().unwrap();
    assert_eq!(listed.len(), 1);
    assert_eq!(listed[0]["id"], id.as_str());
    assert_eq!(listed[0]["state"], "running");
    assert_eq!(listed[0]["spec"]["rate"], 500);
    assert_eq!(listed[0]["spec"]["total"], 5000);
    assert_eq!(listed[0]["progress"]["handled"], first_run);
    assert_eq!(listed[0]["progress"]["replayed"], first_run);
    assert_eq!(listed[0]["lease"]["owner"], crashed_instance.as_str());
    let table = ok(&url, &["dlq", "jobs"]).await;
    let lines: Vec<&str> = table.lines().collect();
    assert_eq!(
        cells(lines[0]),
        [
            "JOB",
            "STATE",
            "SELECTION",
            "RATE",
            "PROGRESS",
            "REPLAYED",
            "KEPT",
            "LAST SEQ",
            "UPDATED"
        ],
        "{table}"
    );
    let row = cells(lines[1]);
    let percent = first_run as f64 * 100.0 / 5000.0;
    assert_eq!(
        row[..8],
        [
            id.as_str(),
            "running",
            "every entry",
            "500/s",
            format!("{first_run}/5000 ({percent:.0}%)").as_str(),
            first_run.to_string().as_str(),
            "0",
            at_crash.progress.last_seq.to_string().as_str(),
        ],
        "{table}"
    );
    let shown = ok(&url, &["dlq", "jobs", &id]).await;
    assert!(shown.contains("state      running\n"), "{shown}");
    assert!(
        shown.contains(&format!("lease      {crashed_instance} until ")),
        "{shown}"
    );
    assert!(shown.contains("claims     1\n"), "{shown}");

    // A new instance takes the job over once the dead one's lease lapses, and finishes it.
    let restarted = Instant::now();
    let service = DlqService::start(&url).await;
    let followed = ok(&url, &["dlq", "jobs", &id, "--follow"]).await;
    let total = started.elapsed();
    let lines: Vec<&str> = followed.lines().collect();
    assert!(lines.len() >= 2, "{followed}");
    for line in &lines[..lines.len() - 1] {
        assert!(line.starts_with(&format!("job {id} ")), "{followed}");
        assert!(line.contains("/5000"), "{followed}");
    }
    let last = lines[lines.len() - 1];
    assert!(
        last.starts_with(&format!(
            "job {id} done: replayed 5000, kept 0, missing 0 of 5000 in "
        )),
        "{followed}"
    );
    let done = job(&js, &id).await;
    assert_eq!(done.state, JobState::Done);
    assert_eq!(done.claims, 2, "resumed once");
    assert_eq!(done.progress.replayed, 5000);
    assert_eq!(done.progress.handled, 5000);
    println!(
        "second run: {} entries in {:.2}s after the restart (incl. waiting out the 3 s lease); whole job {:.2}s wall time",
        5000 - first_run,
        restarted.elapsed().as_secs_f64(),
        total.as_secs_f64()
    );

    // What arrived at the target: every entry, once.
    let replayed: Vec<String> = envelope_ids(&js, &backpressure_stream("acme")).await;
    assert_eq!(replayed.len(), 5000, "no entry replayed twice");
    let distinct: BTreeSet<String> = replayed.into_iter().collect();
    assert_eq!(distinct, seeded_ids, "none skipped");
    assert_eq!(stored_count(&js, "DLQ").await, 0);
    assert!(total < Duration::from_secs(60), "{total:?}");
    service.stop().await;
}

#[tokio::test]
async fn replay_follow_and_jobs_print_progress_in_human_and_json_form() {
    let server = provisioned().await;
    let url = server.url();
    let js = jetstream::new(server.client().await);
    seed_many(&js, "acme", 1, 10, DlqCode::RetriesExhausted).await;
    seed_many(&js, "globex", 11, 10, DlqCode::NoRoute).await;
    let service = DlqService::start(&url).await;

    // Human: created, progress lines, the final line.
    let out = ok(
        &url,
        &[
            "dlq", "replay", "--tenant", "acme", "--follow", "--rate", "100", "--yes",
        ],
    )
    .await;
    let id = created_id(&out);
    let lines: Vec<&str> = out.lines().collect();
    assert_eq!(
        lines[0],
        format!("job {id} created: replay 10 entries (tenant=acme) at 100/s")
    );
    assert!(
        lines.last().unwrap().starts_with(&format!(
            "job {id} done: replayed 10, kept 0, missing 0 of 10 in "
        )),
        "{out}"
    );
    assert_eq!(stored_count_in(&js, &backpressure_streams()).await, 10);

    // JSON: the created record, then one line per change while following.
    let created: serde_json::Value = serde_json::from_str(
        &ok(
            &url,
            &[
                "dlq",
                "replay",
                "--tenant",
                "globex",
                "--job",
                "--dry-run",
                "--json",
            ],
        )
        .await,
    )
    .unwrap();
    let dry = created["id"].as_str().unwrap().to_owned();
    assert_eq!(created["state"], "pending");
    assert_eq!(created["spec"]["dry_run"], true);
    assert_eq!(created["spec"]["total"], 10);
    assert_eq!(created["spec"]["selection"]["tenant"], "globex");
    let followed = ok(&url, &["dlq", "jobs", &dry, "--follow", "--json"]).await;
    let last: serde_json::Value = serde_json::from_str(followed.lines().last().unwrap()).unwrap();
    assert_eq!(last["state"], "done");
    assert_eq!(last["progress"]["would_replay"], 10);
    assert_eq!(last["progress"]["replayed"], 0);
    assert_eq!(
        stored_count(&js, "DLQ").await,
        10,
        "the dry run changed nothing"
    );

    let table = ok(&url, &["dlq", "jobs"]).await;
    let rows: Vec<Vec<&str>> = table.lines().skip(1).map(cells).collect();
    assert_eq!(rows.len(), 2, "{table}");
    assert_eq!(
        rows[0][..7],
        [
            id.as_str(),
            "done",
            "tenant=acme",
            "100/s",
            "10/10 (100%)",
            "10",
            "0"
        ]
    );
    assert_eq!(
        rows[1][..7],
        [
            dry.as_str(),
            "done (dry run)",
            "tenant=globex",
            "100/s",
            "10/10 (100%)",
            "10 (would)",
            "0"
        ]
    );

    // Cancelling: a slow job stops, and what it did not replay stays in the DLQ.
    let slow = created_id(
        &ok(
            &url,
            &[
                "dlq", "replay", "--tenant", "globex", "--job", "--rate", "1", "--yes",
            ],
        )
        .await,
    );
    wait_for("the slow job to start", Duration::from_secs(20), || async {
        (job(&js, &slow).await.state == JobState::Running).then_some(())
    })
    .await;
    let cancelled = ok(&url, &["dlq", "jobs", &slow, "--cancel"]).await;
    assert!(
        cancelled.starts_with(&format!("job {slow} cancelled after ")),
        "{cancelled}"
    );
    assert!(
        cancelled.ends_with(" replayed; its remaining entries stay in the DLQ\n"),
        "{cancelled}"
    );
    let err = fails(&url, &["dlq", "jobs", &slow, "--cancel"]).await;
    assert!(
        err.contains(&format!("error: job {slow} is already cancelled")),
        "{err}"
    );
    service.stop().await;
    let stopped = job(&js, &slow).await;
    assert_eq!(stopped.state, JobState::Cancelled);
    assert!(stopped.progress.replayed < 10);
    assert_eq!(
        stored_count(&js, "DLQ").await + stored_count_in(&js, &backpressure_streams()).await,
        20,
        "nothing lost, nothing doubled"
    );

    let err = fails(&url, &["dlq", "jobs", "0000-nope"]).await;
    assert!(err.contains("error: no replay job 0000-nope"), "{err}");
    let err = fails(&url, &["dlq", "jobs", "Not_An_Id"]).await;
    assert!(err.contains("invalid job id"), "{err}");
    let out = ok(
        &url,
        &["dlq", "replay", "--tenant", "initech", "--job", "--yes"],
    )
    .await;
    assert_eq!(
        out,
        "no DLQ entries match (tenant=initech): no job created\n"
    );
}

#[tokio::test]
async fn dlq_jobs_without_a_running_service_warn_and_without_buckets_say_to_provision() {
    let server = provisioned().await;
    let url = server.url();
    let js = jetstream::new(server.client().await);
    assert_eq!(ok(&url, &["dlq", "jobs"]).await, "no replay jobs\n");
    seed_many(&js, "acme", 1, 2, DlqCode::NoRoute).await;
    let id = created_id(&ok(&url, &["dlq", "replay", "1", "2", "--job"]).await);
    assert_eq!(job(&js, &id).await.spec.selection.seqs, [1, 2]);
    assert_eq!(
        job(&js, &id).await.state,
        JobState::Pending,
        "nobody executes it"
    );

    js.delete_key_value("dlq-jobs").await.unwrap();
    js.delete_key_value("dlq-stats").await.unwrap();
    for (args, bucket) in [
        (&["dlq", "jobs"][..], "dlq-jobs"),
        (&["dlq", "replay", "1", "--job"], "dlq-jobs"),
        (&["dlq", "stats"], "dlq-stats"),
    ] {
        let err = fails(&url, args).await;
        assert!(
            err.contains(&format!(
                "error: the {bucket} bucket {bucket} does not exist: run `switchyard provision`"
            )),
            "{args:?}: {err}"
        );
    }
}
