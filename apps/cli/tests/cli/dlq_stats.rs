//! `dlq stats`: the counters the dlq service keeps, as a table and as JSON.

use std::time::Duration;

use async_nats::jetstream;
use switchyard_dlq::DlqCode;
use switchyard_dlq_ops::StatsStore;
use switchyard_testkit::wait_for;

use crate::fixtures::{DlqService, cells, seed_many};
use crate::{ok, provisioned};

#[tokio::test]
async fn dlq_stats_prints_counters_per_tenant_stage_and_code() {
    let server = provisioned().await;
    let url = server.url();
    let js = jetstream::new(server.client().await);
    seed_many(&js, "acme", 1, 3, DlqCode::RetriesExhausted).await;
    seed_many(&js, "acme", 4, 1, DlqCode::NoRoute).await;
    seed_many(&js, "globex", 5, 2, DlqCode::NoRoute).await;

    assert_eq!(
        ok(&url, &["dlq", "stats"]).await,
        "no DLQ inflow counted yet (the dlq service counts it; is switchyard-dlq running?)\n\
         total 0 entries; counted through DLQ seq 0 (6 newer not yet counted)\n"
    );

    let service = DlqService::start(&url).await;
    let stats = StatsStore::new(js.get_key_value("dlq-stats").await.unwrap());
    wait_for(
        "every entry to be counted",
        Duration::from_secs(30),
        || async { (stats.state().await.ok()??.0.cursor == 6).then_some(()) },
    )
    .await;

    let table = ok(&url, &["dlq", "stats"]).await;
    let lines: Vec<&str> = table.lines().collect();
    assert_eq!(lines.len(), 5, "{table}");
    assert_eq!(
        cells(lines[0]),
        [
            "TENANT",
            "STAGE",
            "CODE",
            "COUNT",
            "FIRST SEEN",
            "LAST SEEN"
        ]
    );
    // Largest first, then by key.
    assert_eq!(
        cells(lines[1])[..4],
        ["acme", "egress", "retries_exhausted", "3"]
    );
    assert_eq!(cells(lines[2])[..4], ["globex", "egress", "no_route", "2"]);
    assert_eq!(cells(lines[3])[..4], ["acme", "egress", "no_route", "1"]);
    assert_eq!(lines[4], "total 6 entries; counted through DLQ seq 6");

    let acme = ok(
        &url,
        &["dlq", "stats", "--tenant", "acme", "--code", "no_route"],
    )
    .await;
    assert_eq!(acme.lines().count(), 3, "{acme}");
    assert!(
        acme.ends_with("total 1 entry; counted through DLQ seq 6\n"),
        "{acme}"
    );

    let json: serde_json::Value =
        serde_json::from_str(&ok(&url, &["dlq", "stats", "--json"]).await).unwrap();
    assert_eq!(json["total"], 6);
    assert_eq!(json["counted_through"], 6);
    assert_eq!(json["dlq_last_seq"], 6);
    let first = &json["counters"][0];
    assert_eq!(first["tenant"], "acme");
    assert_eq!(first["stage"], "egress");
    assert_eq!(first["code"], "retries_exhausted");
    assert_eq!(first["count"], 3);
    assert_eq!(
        (first["first_seq"].as_u64(), first["last_seq"].as_u64()),
        (Some(1), Some(3))
    );
    assert!(first["first_seen"].as_str().unwrap().ends_with('Z'));

    // Replaying or purging does not change inflow counts.
    ok(&url, &["dlq", "purge", "--all", "--yes"]).await;
    let after: serde_json::Value =
        serde_json::from_str(&ok(&url, &["dlq", "stats", "--json"]).await).unwrap();
    assert_eq!(after["total"], 6);
    service.stop().await;
}
