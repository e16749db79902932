//! The delivery log: every attempt egress makes is stored in `ATTEMPTS` and listed by
//! `switchyard attempts ls` (its listing function, run against the pipeline's server).

use std::collections::HashMap;
use std::time::Duration;

use switchyard_cli::commands::attempts::{LsArgs, list};
use switchyard_topology::{DeploymentConfig, StreamName};

use super::Pipeline;

fn all() -> LsArgs {
    LsArgs::everything()
}

#[tokio::test]
async fn attempts_ls_shows_every_attempt_of_a_thousand_messages_with_a_fifth_failing() {
    let p = Pipeline::start(&["acme", "globex"]).await;
    p.route("acme", None, "hooks", "acme/in").await;
    p.route("globex", None, "hooks", "globex/in").await;
    // One request in five fails (503, retried after 1 s), never the same message twice.
    p.sink.fail_every("acme/in", 5, 503);
    p.sink.fail_every("globex/in", 5, 503);
    for i in 0..1000 {
        let tenant = ["acme", "globex"][i % 2];
        p.publish(
            tenant,
            "ops",
            "hooks",
            &format!("msg-{i}"),
            format!("{{\"n\":{i}}}").as_bytes(),
        )
        .await;
    }
    p.wait_delivered(1000, Duration::from_secs(180)).await;
    let requests = p.sink.received();
    let failed = requests.iter().filter(|r| !r.delivered()).count();
    assert!(
        failed >= 150,
        "a fifth of the requests failed: {failed} of {}",
        requests.len()
    );

    let topology = DeploymentConfig::default().resolve().unwrap();
    let (_, stream) = topology
        .open_stream(&p.js, StreamName::Attempts)
        .await
        .unwrap();
    // The log's acks are awaited off the delivery path: wait until every record is stored.
    let filter = topology.namespace.attempt_filter(None);
    switchyard_testkit::wait_for("every attempt logged", Duration::from_secs(30), || async {
        let logged = list(&stream, &filter, &all(), |_| {}).await.ok()?;
        (logged.len() >= requests.len()).then_some(())
    })
    .await;
    let logged = list(&stream, &filter, &all(), |_| {}).await.unwrap();
    assert_eq!(
        logged.len(),
        requests.len(),
        "one record per request the sink saw"
    );

    // Each request matches a record: same message, same outcome.
    let mut by_request: HashMap<(String, bool), usize> = HashMap::new();
    for r in &requests {
        *by_request
            .entry((r.webhook_id.clone(), r.delivered()))
            .or_default() += 1;
    }
    let mut by_record: HashMap<(String, bool), usize> = HashMap::new();
    for l in &logged {
        let a = &l.attempt;
        assert_eq!(a.route, format!("{}._.hooks", a.tenant));
        assert_eq!(a.route_type, "webhook");
        if a.result == "delivered" {
            assert_eq!(a.record.status, Some(200), "{a:?}");
        } else {
            assert_eq!(
                (a.result.as_str(), a.record.status),
                ("retryable", Some(503)),
                "{a:?}"
            );
            assert!(
                a.record.error.as_deref().unwrap().starts_with("HTTP 503"),
                "{a:?}"
            );
        }
        *by_record
            .entry((a.id.clone(), a.result == "delivered"))
            .or_default() += 1;
    }
    assert_eq!(by_record, by_request);

    // Filters: one tenant (its own subject), failures only, one message's history.
    let acme = topology
        .namespace
        .attempt_filter(Some(&"acme".parse().unwrap()));
    let only_acme = list(&stream, &acme, &all(), |_| {}).await.unwrap();
    assert!(only_acme.iter().all(|l| l.attempt.tenant == "acme"));
    assert_eq!(
        only_acme.len(),
        requests.iter().filter(|r| r.path == "acme/in").count()
    );
    let failures = list(
        &stream,
        &filter,
        &LsArgs {
            failed: true,
            ..all()
        },
        |_| {},
    )
    .await
    .unwrap();
    assert_eq!(failures.len(), failed);
    let retried = &failures[0].attempt;
    let history = list(
        &stream,
        &filter,
        &LsArgs {
            message: Some(retried.msg_id.clone()),
            ..all()
        },
        |_| {},
    )
    .await
    .unwrap();
    let attempts: Vec<(u32, &str)> = history
        .iter()
        .map(|l| (l.attempt.attempt, l.attempt.result.as_str()))
        .collect();
    assert_eq!(
        attempts,
        [(1, "retryable"), (2, "delivered")],
        "{history:?}"
    );
    let newest = list(&stream, &filter, &LsArgs { limit: 10, ..all() }, |_| {})
        .await
        .unwrap();
    assert_eq!(newest.len(), 10);
    assert_eq!(newest[9].seq, logged.last().unwrap().seq, "the most recent");
    p.stop().await;
}
