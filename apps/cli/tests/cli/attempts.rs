//! `attempts ls|show`: the delivery log as people and scripts read it. Records are written the
//! way egress writes them (a `LoggedAttempt` on `attempts.v1.<tenant>`); the pipeline suite
//! checks egress writes one per attempt.

use async_nats::jetstream;
use switchyard_envelope::{AttemptRecord, LoggedAttempt};
use time::OffsetDateTime;

use crate::{fails, ok, provisioned};

fn logged(tenant: &str, n: u32, attempt: u32, result: &str, status: u16) -> LoggedAttempt {
    LoggedAttempt {
        id: format!("0190-{tenant}-{n}"),
        msg_id: format!("order-{n}"),
        tenant: tenant.to_owned(),
        team: "ops".to_owned(),
        platform: "slack".to_owned(),
        destination: None,
        route: format!("{tenant}._.slack"),
        route_type: "webhook".to_owned(),
        attempt,
        replay: 0,
        result: result.to_owned(),
        trace_id: Some("4bf92f3577b34da6a3ce929d0e0e4736".to_owned()),
        record: AttemptRecord::new(
            OffsetDateTime::now_utc(),
            if result == "delivered" {
                "delivered"
            } else {
                "http_status"
            },
            Some(status),
            17,
            (status >= 400).then(|| format!("HTTP {status}: {{\"token\":\"s3cret\"}}")),
        ),
    }
}

#[tokio::test]
async fn attempts_ls_filters_the_delivery_log_and_show_prints_one_attempt() {
    let server = provisioned().await;
    let url = server.url();
    let js = jetstream::new(server.client().await);
    for (tenant, n, attempt, result, status) in [
        ("acme", 1, 1, "retryable", 503),
        ("globex", 2, 1, "delivered", 200),
        ("acme", 1, 2, "delivered", 200),
        ("acme", 3, 1, "permanent", 400),
    ] {
        let record = logged(tenant, n, attempt, result, status);
        js.publish(
            format!("attempts.v1.{tenant}"),
            serde_json::to_vec(&record).unwrap().into(),
        )
        .await
        .unwrap()
        .await
        .unwrap();
    }

    let all = ok(&url, &["attempts", "ls"]).await;
    let lines: Vec<&str> = all.lines().collect();
    assert_eq!(lines.len(), 5, "{all}");
    assert!(lines[0].starts_with("SEQ  AT"), "{all}");
    assert!(
        !all.contains("s3cret"),
        "credentials in a sink's answer are masked: {all}"
    );

    let json: serde_json::Value =
        serde_json::from_str(&ok(&url, &["attempts", "ls", "--tenant", "acme", "--json"]).await)
            .unwrap();
    let seqs: Vec<u64> = json
        .as_array()
        .unwrap()
        .iter()
        .map(|a| a["seq"].as_u64().unwrap())
        .collect();
    assert_eq!(seqs, [1, 3, 4], "acme's own subject only");
    assert_eq!(json[0]["route"], "acme._.slack");
    assert_eq!(json[0]["error"], "HTTP 503: {\"token\":\"***\"}");

    let failed: serde_json::Value =
        serde_json::from_str(&ok(&url, &["attempts", "ls", "--failed", "--json"]).await).unwrap();
    assert_eq!(failed.as_array().unwrap().len(), 2);
    let one: serde_json::Value = serde_json::from_str(
        &ok(&url, &["attempts", "ls", "--message", "order-1", "--json"]).await,
    )
    .unwrap();
    let attempts: Vec<(u64, &str)> = one
        .as_array()
        .unwrap()
        .iter()
        .map(|a| {
            (
                a["attempt"].as_u64().unwrap(),
                a["result"].as_str().unwrap(),
            )
        })
        .collect();
    assert_eq!(attempts, [(1, "retryable"), (2, "delivered")]);
    let last: serde_json::Value =
        serde_json::from_str(&ok(&url, &["attempts", "ls", "--limit", "1", "--json"]).await)
            .unwrap();
    assert_eq!(last[0]["seq"], 4, "the most recent");

    let shown = ok(&url, &["attempts", "show", "4"]).await;
    for line in ["seq", "route", "result", "trace id"] {
        assert!(
            shown.lines().any(|l| l.starts_with(line)),
            "{line} in {shown}"
        );
    }
    assert!(shown.contains("permanent"), "{shown}");
    let err = fails(&url, &["attempts", "show", "99"]).await;
    assert!(err.contains("no attempt with seq 99"), "{err}");
    assert_eq!(
        ok(&url, &["attempts", "ls", "--tenant", "initech"]).await,
        "no attempts match\n"
    );
}
