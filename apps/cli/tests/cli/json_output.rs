//! `--json` is a contract with operators' scripts: for the same state, every command's JSON is
//! byte-identical to the snapshots in `snapshots/` (recorded before the human output moved to
//! table, colour and progress crates). Only what differs between runs by nature is masked
//! before comparing: RFC 3339 times, UUIDs, and stored byte counts (they follow the length of
//! the times inside the stored records).

use async_nats::jetstream;

use crate::fixtures::seed;
use crate::{ok, provisioned};

const SECRET: &str = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";

/// Replaces RFC 3339 times, UUIDs and stored sizes (`"bytes"`, `"fill_pct"`) with placeholders.
fn masked(json: &str) -> String {
    let time = regex::Regex::new(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(\.\d+)?(Z|[+-]\d\d:\d\d)")
        .expect("time pattern");
    let uuid = regex::Regex::new(r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}")
        .expect("uuid pattern");
    let size = regex::Regex::new(r#""(bytes|fill_pct|kv_ms|publish_ms)": [0-9.e-]+"#)
        .expect("size pattern");
    let json = time.replace_all(json, "<time>");
    let json = uuid.replace_all(&json, "<uuid>");
    size.replace_all(&json, r#""$1": <size>"#).into_owned()
}

#[tokio::test]
async fn every_commands_json_is_unchanged_for_the_same_state() {
    let server = provisioned().await;
    let url = server.url();
    let js = jetstream::new(server.client().await);
    ok(
        &url,
        &["tenants", "enable", "acme", "--max-bytes", "8388608"],
    )
    .await;
    ok(&url, &["tenants", "enable", "globex"]).await;
    ok(
        &url,
        &[
            "routes",
            "set",
            "acme",
            "_",
            "slack",
            "--webhook",
            "https://user:pass@hooks.example.com/in",
            "--secret",
            SECRET,
            "--header",
            "X-Env=prod",
        ],
    )
    .await;
    ok(
        &url,
        &[
            "routes",
            "set",
            "globex",
            "ops",
            "billing",
            "--nats",
            "sink.globex",
            "--jetstream",
        ],
    )
    .await;
    ok(
        &url,
        &["limits", "set", "acme", "--rate", "50", "--burst", "100"],
    )
    .await;
    ok(&url, &["limits", "set", "_default", "--rate", "20"]).await;
    assert_eq!(seed(&js).await, vec![1, 2, 3, 4]);

    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("dlq.ndjson");
    let file = file.to_str().unwrap();
    // In order: each command sees the state the ones before it left.
    for (name, args) in [
        ("provision", &["provision", "--json"][..]),
        ("status", &["status", "--json"]),
        ("tenants_ls", &["tenants", "ls", "--json"]),
        ("tenants_get", &["tenants", "get", "acme", "--json"]),
        ("routes_ls", &["routes", "ls", "--json"]),
        (
            "routes_get",
            &["routes", "get", "acme", "ops", "slack", "--json"],
        ),
        ("limits_ls", &["limits", "ls", "--json"]),
        ("limits_get", &["limits", "get", "globex", "--json"]),
        ("dlq_ls", &["dlq", "ls", "--json"]),
        (
            "dlq_ls_filtered",
            &[
                "dlq", "ls", "--json", "--tenant", "acme", "--code", "no_route",
            ],
        ),
        ("dlq_show", &["dlq", "show", "1", "--json"]),
        (
            "dlq_replay_dry_run",
            &["dlq", "replay", "--tenant", "globex", "--dry-run", "--json"],
        ),
        ("dlq_jobs", &["dlq", "jobs", "--json"]),
        ("dlq_export", &["dlq", "export", "--file", file, "--json"]),
        ("dlq_replay", &["dlq", "replay", "4", "--yes", "--json"]),
        (
            "dlq_purge",
            &["dlq", "purge", "--code", "no_route", "--yes", "--json"],
        ),
        ("dlq_import", &["dlq", "import", "--file", file, "--json"]),
        ("dlq_ls_after", &["dlq", "ls", "--json"]),
    ] {
        let json = ok(&url, args).await.replace(file, "<file>");
        insta::assert_snapshot!(name, masked(&json), &args.join(" ").replace(file, "<file>"));
    }
}
