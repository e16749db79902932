//! `dlq ls`, `dlq tail`, `dlq show`: browsing never removes an entry.

use std::process::Stdio;
use std::time::Duration;

use async_nats::jetstream;
use switchyard_dlq::DlqCode;
use switchyard_testkit::{stored_count, wait_for};

use crate::fixtures::{Entry, dead_letter, seed};
use crate::{fails, ok, provisioned};

#[tokio::test]
async fn dlq_ls_lists_entries_with_filters_and_removes_nothing() {
    let server = provisioned().await;
    let url = server.url();
    let js = jetstream::new(server.client().await);
    assert_eq!(
        ok(&url, &["dlq", "ls"]).await,
        "no DLQ entries match (every entry)\n",
        "an empty stream returns at once"
    );
    assert_eq!(seed(&js).await, vec![1, 2, 3, 4]);

    let ls = ok(&url, &["dlq", "ls"]).await;
    let lines: Vec<&str> = ls.lines().collect();
    assert_eq!(lines.len(), 5, "{ls}");
    assert!(
        lines[0].starts_with("SEQ  STORED                TENANT  STAGE   PLATFORM  CODE               ATTEMPTS  REASON"),
        "{ls}"
    );
    assert!(lines[1].starts_with("1    20"), "{ls}");
    assert!(
        lines[1].ends_with(
            "acme    egress  slack     retries_exhausted  5         retries_exhausted for order 1"
        ),
        "{ls}"
    );
    assert!(
        lines[2].contains("globex  egress  slack     no_route"),
        "{ls}"
    );

    let acme = ok(&url, &["dlq", "ls", "--tenant", "acme"]).await;
    let seqs: Vec<&str> = acme
        .lines()
        .skip(1)
        .map(|l| l.split(' ').next().unwrap())
        .collect();
    assert_eq!(seqs, ["1", "3"], "{acme}");
    let no_route = ok(
        &url,
        &["dlq", "ls", "--code", "no_route", "--stage", "egress"],
    )
    .await;
    let seqs: Vec<&str> = no_route
        .lines()
        .skip(1)
        .map(|l| l.split(' ').next().unwrap())
        .collect();
    assert_eq!(seqs, ["2", "3"], "{no_route}");

    let json: serde_json::Value =
        serde_json::from_str(&ok(&url, &["dlq", "ls", "--json", "--platform", "slack"]).await)
            .unwrap();
    let entries = json.as_array().unwrap();
    assert_eq!(entries.len(), 4);
    assert_eq!(entries[1]["seq"], 2);
    assert_eq!(entries[1]["tenant"], "globex");
    assert_eq!(entries[1]["code"], "no_route");
    assert_eq!(
        entries[1]["payload"]["data"],
        r#"{"order":2,"text":"hello"}"#
    );
    assert_eq!(entries[1]["headers"]["Switchyard-Tenant"][0], "globex");

    // Time ranges: RFC 3339 or an age.
    assert_eq!(
        ok(&url, &["dlq", "ls", "--since", "1h"])
            .await
            .lines()
            .count(),
        5
    );
    let before = ok(&url, &["dlq", "ls", "--until", "1h"]).await;
    assert!(
        before.starts_with("no DLQ entries match (until=20"),
        "{before}"
    );
    let since = ok(&url, &["dlq", "ls", "--since", "2020-01-01T00:00:00Z"]).await;
    assert_eq!(since.lines().count(), 5, "{since}");

    let limited = crate::switchyard(&url, &["dlq", "ls", "--limit", "2"]).await;
    assert_eq!(crate::stdout(&limited).lines().count(), 3);
    assert!(crate::stderr(&limited).contains("showing the first 2 matching entries"));

    assert_eq!(stored_count(&js, "DLQ").await, 4, "listing removed nothing");
}

#[tokio::test]
async fn dlq_tail_all_returns_entries_without_removing_them() {
    let server = provisioned().await;
    let url = server.url();
    let js = jetstream::new(server.client().await);
    seed(&js).await;

    let out = ok(&url, &["dlq", "tail", "--all", "--limit", "4", "--json"]).await;
    let entries: Vec<serde_json::Value> = out
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    let seqs: Vec<u64> = entries.iter().map(|e| e["seq"].as_u64().unwrap()).collect();
    assert_eq!(seqs, [1, 2, 3, 4]);
    assert_eq!(entries[0]["code"], "retries_exhausted");
    assert_eq!(entries[0]["history"][0]["status"], 503);

    let human = ok(
        &url,
        &[
            "dlq",
            "tail",
            "--all",
            "--tenant",
            "globex",
            "--code",
            "retries_exhausted",
            "--limit",
            "1",
        ],
    )
    .await;
    assert_eq!(human.lines().count(), 1, "{human}");
    assert!(
        human.contains(
            "  seq 4  globex  egress  slack  retries_exhausted  retries_exhausted for order 4"
        ),
        "{human}"
    );
    assert!(
        !human.contains('\x1b'),
        "no colour when stdout is not a terminal"
    );

    assert_eq!(stored_count(&js, "DLQ").await, 4, "tailing removed nothing");
}

#[tokio::test]
async fn dlq_tail_follows_only_new_entries() {
    let server = provisioned().await;
    let url = server.url();
    let js = jetstream::new(server.client().await);
    seed(&js).await;

    let mut tail = std::process::Command::new(env!("CARGO_BIN_EXE_switchyard"))
        .args(["--server", &url, "dlq", "tail", "--limit", "1", "--json"])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    // The tail starts at new entries; keep writing new ones until it has seen one.
    let mut n = 100;
    wait_for(
        "the tail to print a new entry",
        Duration::from_secs(30),
        || {
            n += 1;
            let js = js.clone();
            let exited = tail.try_wait().unwrap().is_some();
            async move {
                if exited {
                    return Some(());
                }
                dead_letter(&js, &Entry::egress("acme", DlqCode::NoRoute, n)).await;
                None
            }
        },
    )
    .await;
    let output = tail.wait_with_output().unwrap();
    assert!(output.status.success(), "{output:?}");
    let entry: serde_json::Value = serde_json::from_slice(&output.stdout).unwrap();
    assert!(
        entry["seq"].as_u64().unwrap() > 4,
        "only entries stored after the tail started"
    );
    assert_eq!(entry["code"], "no_route");
}

#[tokio::test]
async fn dlq_show_prints_the_record_payload_and_history() {
    let server = provisioned().await;
    let url = server.url();
    let js = jetstream::new(server.client().await);
    seed(&js).await;

    let show = ok(&url, &["dlq", "show", "3"]).await;
    for expected in [
        "seq              3\n",
        "subject          dlq.v1.acme.egress.slack\n",
        "tenant           acme\n",
        "code             no_route\n",
        "reason           no_route for order 3\n",
        "source           EGRESS seq 3 (egress.v1.acme.ops.slack)\n",
        "\nheaders\n",
        "  Switchyard-Msg-Id: order-3\n",
        "payload (utf8, 26 bytes)\n{\n  \"order\": 3,\n  \"text\": \"hello\"\n}\n",
        "attempt history\nAT ",
        "  http_status  503     42 ms     service unavailable\n",
    ] {
        assert!(show.contains(expected), "missing {expected:?} in\n{show}");
    }
    let json: serde_json::Value =
        serde_json::from_str(&ok(&url, &["dlq", "show", "3", "--json"]).await).unwrap();
    assert_eq!(json["reason"], "no_route for order 3");
    assert_eq!(json["payload"]["data"], r#"{"order":3,"text":"hello"}"#);

    let err = fails(&url, &["dlq", "show", "99"]).await;
    assert!(err.contains("error: no DLQ entry with seq 99"), "{err}");
    assert_eq!(stored_count(&js, "DLQ").await, 4);
}
