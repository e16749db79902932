//! `routes`, `tenants` and `limits`: records in the KV buckets, validated before they are
//! written (and, for `tenants enable`, the tenant's own ingress stream).

use std::time::Duration;

use async_nats::jetstream::{self, stream};
use switchyard_fixtures::ingress_stream;

use crate::{fails, ok, provisioned};

const SECRET: &str = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";

#[tokio::test]
async fn routes_set_get_ls_rm_round_trip_and_bad_routes_are_refused() {
    let server = provisioned().await;
    let url = server.url();

    let set = ok(
        &url,
        &[
            "routes",
            "set",
            "acme",
            "_",
            "slack",
            "--webhook",
            "https://hooks.example.com/in",
            "--secret",
            SECRET,
            "--header",
            "X-Env=prod",
        ],
    )
    .await;
    assert_eq!(
        set,
        "set route acme._.slack: webhook https://hooks.example.com (revision 1)\n"
    );
    let set = ok(
        &url,
        &[
            "routes",
            "set",
            "acme",
            "ops",
            "billing",
            "--nats",
            "sink.acme.billing",
            "--jetstream",
            "--timeout-ms",
            "5000",
        ],
    )
    .await;
    assert!(
        set.starts_with("set route acme.ops.billing: nats sink.acme.billing"),
        "{set}"
    );
    ok(
        &url,
        &[
            "routes",
            "set",
            "globex",
            "_",
            "slack",
            "--route-json",
            r#"{"type":"nats","subject":"sink.globex"}"#,
        ],
    )
    .await;

    // A team without its own route falls back to the tenant's default; the secret never shows.
    let get = ok(&url, &["routes", "get", "acme", "ops", "slack"]).await;
    assert!(
        get.starts_with(
            "key            acme._.slack (the tenant's default: acme.ops.slack has no route of its own)\ntype           webhook\nurl            https://hooks.example.com\nsecret         whsec_***\n"
        ),
        "{get}"
    );
    assert!(get.contains("header X-Env   prod"), "{get}");
    assert!(!get.contains("MfKQ"), "{get}");
    let json: serde_json::Value = serde_json::from_str(
        &ok(&url, &["routes", "get", "acme", "ops", "billing", "--json"]).await,
    )
    .unwrap();
    assert_eq!(json["matched"], "acme.ops.billing");
    assert_eq!(json["route"]["type"], "nats");
    assert_eq!(json["route"]["jetstream"], true);
    assert_eq!(json["route"]["timeout_ms"], 5000);
    assert_eq!(
        json["route"]["max_in_flight"], 16,
        "the route's own default"
    );

    let ls = ok(&url, &["routes", "ls"]).await;
    assert_eq!(
        ls,
        "TENANT  TEAM  PLATFORM  TYPE     TARGET\n\
         acme    _     slack     webhook  https://hooks.example.com\n\
         acme    ops   billing   nats     sink.acme.billing\n\
         globex  _     slack     nats     sink.globex\n"
    );
    let ls = ok(&url, &["routes", "ls", "--tenant", "globex"]).await;
    assert_eq!(ls.lines().count(), 2, "{ls}");
    let json: serde_json::Value =
        serde_json::from_str(&ok(&url, &["routes", "ls", "--json"]).await).unwrap();
    assert_eq!(json.as_array().unwrap().len(), 3);
    assert_eq!(json[0]["key"], "acme._.slack");
    assert_eq!(json[0]["route"]["secret"], "whsec_***");

    // Invalid routes are refused before anything is written.
    for (args, expected) in [
        (
            vec![
                "--webhook",
                "ftp://hooks.example.com/in",
                "--secret",
                SECRET,
            ],
            "route field url",
        ),
        (
            vec![
                "--webhook",
                "https://hooks.example.com/in",
                "--secret",
                "whsec_!!",
            ],
            "route field secret",
        ),
        (vec!["--nats", "sink.*"], "route field subject"),
        (
            vec!["--nats", "sink.acme", "--max-in-flight", "0"],
            "route field max_in_flight",
        ),
        (
            vec!["--route-json", r#"{"type":"ftp"}"#],
            "not a valid route",
        ),
    ] {
        let mut full = vec!["routes", "set", "acme", "_", "slack"];
        full.extend(args);
        let err = fails(&url, &full).await;
        assert!(err.contains(expected), "{full:?}: {err}");
    }
    let err = fails(
        &url,
        &["routes", "set", "acme", "Ops", "slack", "--nats", "a"],
    )
    .await;
    assert!(
        err.contains("team id \"Ops\" has an invalid character"),
        "{err}"
    );
    let get = ok(&url, &["routes", "get", "acme", "_", "slack"]).await;
    assert!(
        get.contains("url            https://hooks.example.com\n")
            && get.contains("header X-Env   prod"),
        "unchanged: {get}"
    );

    assert_eq!(
        ok(&url, &["routes", "rm", "acme", "_", "slack"]).await,
        "removed route acme._.slack\n"
    );
    let err = fails(&url, &["routes", "get", "acme", "ops", "slack"]).await;
    assert!(
        err.contains("error: no route for acme.ops.slack nor the tenant's default acme._.slack"),
        "{err}"
    );
    let err = fails(&url, &["routes", "rm", "acme", "_", "slack"]).await;
    assert!(err.contains("error: no route at acme._.slack"), "{err}");
    assert_eq!(ok(&url, &["routes", "ls"]).await.lines().count(), 3);
}

#[tokio::test]
async fn route_urls_are_shown_without_credentials_and_secrets_need_the_whsec_prefix() {
    let server = provisioned().await;
    let url = server.url();
    let hook = "https://alice:pa55word@hooks.example.com:8443/services/P4TH?token=T0KEN";
    let hidden = ["alice", "pa55word", "P4TH", "T0KEN"];

    let set = ok(
        &url,
        &[
            "routes",
            "set",
            "acme",
            "_",
            "slack",
            "--webhook",
            hook,
            "--secret",
            SECRET,
        ],
    )
    .await;
    assert_eq!(
        set,
        "set route acme._.slack: webhook https://hooks.example.com:8443 (revision 1)\n"
    );
    let shown = [
        set,
        ok(
            &url,
            &[
                "--json",
                "routes",
                "set",
                "acme",
                "ops",
                "slack",
                "--webhook",
                hook,
                "--secret",
                SECRET,
            ],
        )
        .await,
        ok(&url, &["routes", "ls"]).await,
        ok(&url, &["routes", "ls", "--json"]).await,
        ok(&url, &["routes", "get", "acme", "ops", "slack"]).await,
        ok(&url, &["routes", "get", "acme", "ops", "slack", "--json"]).await,
    ];
    for out in &shown {
        assert!(out.contains("https://hooks.example.com:8443"), "{out}");
        for secret in hidden {
            assert!(!out.contains(secret), "{out}");
        }
    }

    // A Standard Webhooks secret is whsec_ + base64: bare base64 is refused, nothing written.
    let err = fails(
        &url,
        &[
            "routes",
            "set",
            "globex",
            "_",
            "slack",
            "--webhook",
            "https://hooks.example.com/in",
            "--secret",
            SECRET.trim_start_matches("whsec_"),
        ],
    )
    .await;
    assert!(
        err.contains("refusing to write an invalid route to globex._.slack")
            && err.contains("route field secret: does not start with whsec_"),
        "{err}"
    );
    assert!(!err.contains("MfKQ"), "{err}");
    let err = fails(&url, &["routes", "get", "globex", "_", "slack"]).await;
    assert!(err.contains("no route for globex._.slack"), "{err}");
}

#[tokio::test]
async fn tenants_enable_disable_get_ls() {
    let server = provisioned().await;
    let url = server.url();
    let js = jetstream::new(server.client().await);

    assert_eq!(
        ok(&url, &["tenants", "ls"]).await,
        "no tenants registered\n"
    );
    let err = fails(&url, &["tenants", "get", "acme"]).await;
    assert!(
        err.contains("error: tenant acme is not registered"),
        "{err}"
    );

    // Enabling provisions the tenant's own ingress stream (and its consumer) first.
    assert_eq!(
        ok(&url, &["tenants", "enable", "acme"]).await,
        "stream INGRESS_acme: Created\n\
         consumer INGRESS_acme/ingress-worker: Created\n\
         tenant acme enabled\n"
    );
    assert_eq!(
        ok(
            &url,
            &[
                "tenants",
                "enable",
                "globex",
                "--max-bytes",
                "2097152",
                "--max-msgs",
                "10"
            ]
        )
        .await,
        "stream INGRESS_globex: Created\n\
         consumer INGRESS_globex/ingress-worker: Created\n\
         tenant globex enabled\n"
    );
    let acme = ingress_config(&js, "acme").await;
    assert_eq!(acme.subjects, ["ingress.v1.acme.>"]);
    assert_eq!(acme.retention, stream::RetentionPolicy::WorkQueue);
    assert_eq!(acme.discard, stream::DiscardPolicy::New);
    assert_eq!(acme.duplicate_window, Duration::from_secs(120));
    assert_eq!(
        (acme.max_bytes, acme.max_messages),
        (67_108_864, 100_000),
        "the topology's default quota"
    );
    let globex = ingress_config(&js, "globex").await;
    assert_eq!(globex.subjects, ["ingress.v1.globex.>"]);
    assert_eq!(
        (globex.max_bytes, globex.max_messages),
        (2_097_152, 10),
        "the requested quota"
    );
    js.get_stream(ingress_stream("globex"))
        .await
        .unwrap()
        .consumer_info("ingress-worker")
        .await
        .expect("ingress-worker on the tenant's stream");

    assert_eq!(
        ok(&url, &["tenants", "disable", "globex"]).await,
        "tenant globex disabled\n"
    );
    assert_eq!(
        ok(&url, &["tenants", "disable", "initech"]).await,
        "tenant initech disabled\n",
        "disabling an unknown tenant registers it disabled"
    );

    assert_eq!(
        ok(&url, &["tenants", "ls"]).await,
        "TENANT   NAME  STATUS    MAX PAYLOAD\n\
         acme     -     enabled   default\n\
         globex   -     disabled  default\n\
         initech  -     disabled  default\n"
    );
    assert_eq!(
        ok(&url, &["tenants", "get", "globex"]).await,
        "tenant globex: disabled (max payload bytes: default; ingress quota: 2097152 bytes, 10 messages)\n"
    );
    let json: serde_json::Value =
        serde_json::from_str(&ok(&url, &["tenants", "get", "acme", "--json"]).await).unwrap();
    assert_eq!(json, serde_json::json!({"tenant": "acme", "enabled": true}));
    let json: serde_json::Value =
        serde_json::from_str(&ok(&url, &["tenants", "ls", "--json"]).await).unwrap();
    assert_eq!(
        json[1],
        serde_json::json!({
            "tenant": "globex",
            "enabled": false,
            "quota_bytes": 2097152,
            "quota_msgs": 10
        }),
        "disabling keeps the quota"
    );

    // Re-enabling with a new message quota updates the stream in place: what it holds stays,
    // and the byte quota not given again is kept.
    let held = js
        .publish("ingress.v1.globex.ops.slack", "held".into())
        .await
        .unwrap()
        .await
        .unwrap();
    assert_eq!(held.stream, ingress_stream("globex"));
    assert_eq!(
        ok(&url, &["tenants", "enable", "globex", "--max-msgs", "20"]).await,
        "stream INGRESS_globex: Updated\n\
         consumer INGRESS_globex/ingress-worker: Unchanged\n\
         tenant globex enabled\n"
    );
    assert!(
        ok(&url, &["tenants", "get", "globex"])
            .await
            .contains("enabled")
    );
    let mut globex = js.get_stream(ingress_stream("globex")).await.unwrap();
    let info = globex.info().await.unwrap();
    assert_eq!(
        (info.config.max_bytes, info.config.max_messages),
        (2_097_152, 20)
    );
    assert_eq!(
        (info.state.messages, info.state.last_sequence),
        (1, held.sequence),
        "updated in place, not recreated"
    );
    let json: serde_json::Value =
        serde_json::from_str(&ok(&url, &["tenants", "get", "globex", "--json"]).await).unwrap();
    assert_eq!(
        json,
        serde_json::json!({
            "tenant": "globex",
            "enabled": true,
            "quota_bytes": 2097152,
            "quota_msgs": 20
        })
    );

    // A quota the server cannot reserve is refused, and the tenant is not registered.
    let err = fails(
        &url,
        &[
            "tenants",
            "enable",
            "hooli",
            "--max-bytes",
            "1125899906842624",
        ],
    )
    .await;
    assert!(
        err.contains("provisioning tenant hooli's ingress stream")
            && err.contains("insufficient storage resources"),
        "{err}"
    );
    let err = fails(&url, &["tenants", "get", "hooli"]).await;
    assert!(
        err.contains("error: tenant hooli is not registered"),
        "{err}"
    );
    // A quota below the largest message would refuse that message for ever.
    let err = fails(&url, &["tenants", "enable", "hooli", "--max-bytes", "300"]).await;
    assert!(
        err.contains(
            "--max-bytes 300 is below the largest message a tenant stream takes (1064960 bytes"
        ),
        "{err}"
    );
    let err = fails(&url, &["tenants", "enable", "hooli", "--max-msgs", "0"]).await;
    assert!(err.contains("0 is not in 1.."), "{err}");
}

/// The config of `tenant`'s own ingress stream.
async fn ingress_config(js: &jetstream::Context, tenant: &str) -> stream::Config {
    js.get_stream(ingress_stream(tenant))
        .await
        .unwrap_or_else(|e| panic!("{tenant}'s ingress stream: {e}"))
        .cached_info()
        .config
        .clone()
}

#[tokio::test]
async fn limits_set_get_ls_and_bad_limits_are_refused() {
    let server = provisioned().await;
    let url = server.url();
    assert_eq!(
        ok(&url, &["limits", "ls"]).await,
        "no limits: the backpressure service's built-in default applies to every tenant\n"
    );
    assert_eq!(
        ok(
            &url,
            &[
                "limits",
                "set",
                "acme",
                "--rate",
                "200",
                "--burst",
                "20",
                "--backlog-high",
                "5000"
            ]
        )
        .await,
        "set limit acme: 200/s, burst 20, backlog 5000/2500 (revision 1)\n"
    );
    ok(&url, &["limits", "set", "_default", "--rate", "50"]).await;
    let get = ok(&url, &["limits", "get", "globex"]).await;
    assert!(
        get.contains("limit from _default\nrate       50/s\nburst      50\n"),
        "{get}"
    );
    let ls = ok(&url, &["limits", "ls"]).await;
    assert!(
        ls.starts_with(
            "TENANT    RATE/S  BURST  BACKLOG CLOSE/REOPEN  BYTES CLOSE/REOPEN  ADMISSION\n"
        ),
        "{ls}"
    );
    assert!(
        ls.contains("acme      200     20     5000/2500             service default     open"),
        "{ls}"
    );
    // A tenant's own bytes mark (a tenant of large messages that flow fast).
    assert_eq!(
        ok(
            &url,
            &[
                "limits",
                "set",
                "initech",
                "--rate",
                "100",
                "--backlog-high-bytes",
                "8388608"
            ]
        )
        .await,
        "set limit initech: 100/s, burst 100, backlog service default, bytes 8388608/4194304 (revision 3)\n"
    );
    let get = ok(&url, &["limits", "get", "initech"]).await;
    assert!(
        get.contains("bytes      8388608/4194304 (close/reopen)\n"),
        "{get}"
    );
    let json: serde_json::Value =
        serde_json::from_str(&ok(&url, &["limits", "get", "initech", "--json"]).await).unwrap();
    assert_eq!(json["backlog_high_bytes"], 8388608);
    // Zero, and below one message of the largest a shard stores (that message alone would
    // close it).
    for (mark, why) in [
        ("0", "invalid limit: backlog_high_bytes must be at least 1"),
        (
            "1000000",
            "invalid limit: backlog_high_bytes (1000000) is below what the largest message a \
             BACKPRESSURE shard stores counts (",
        ),
    ] {
        let refused = fails(
            &url,
            &[
                "limits",
                "set",
                "initech",
                "--rate",
                "5",
                "--backlog-high-bytes",
                mark,
            ],
        )
        .await;
        assert!(refused.contains(why), "{refused}");
    }
    let json: serde_json::Value =
        serde_json::from_str(&ok(&url, &["limits", "ls", "--json"]).await).unwrap();
    assert_eq!(json[1]["tenant"], "acme");
    assert_eq!(json[1]["rate_per_sec"], 200.0);
    let refused = fails(&url, &["limits", "set", "acme", "--rate", "0"]).await;
    assert!(
        refused.contains("invalid limit: rate_per_sec must be in (0, 1000000]"),
        "{refused}"
    );
    let refused = fails(
        &url,
        &[
            "limits",
            "set",
            "acme",
            "--rate",
            "5",
            "--backlog-high",
            "10",
            "--backlog-low",
            "10",
        ],
    )
    .await;
    assert!(
        refused.contains("backlog_low (10) must be below backlog_high (10)"),
        "{refused}"
    );
}

#[tokio::test]
async fn routes_rotate_secret_keeps_the_old_secret_signing_for_the_overlap_and_never_shows_either()
{
    use futures::StreamExt;

    const NEW: &str = "whsec_C2FVsBQIhrscChlQIMV+b5sSYspob7oD";
    const NEWER: &str = "whsec_3q2+7wAAAAAAAAAAAAAAAAAAAAAAAAAA";
    let server = provisioned().await;
    let url = server.url();
    let js = jetstream::new(server.client().await);
    let set = [
        "routes",
        "set",
        "acme",
        "_",
        "slack",
        "--webhook",
        "https://hooks.example.com/in",
        "--secret",
        SECRET,
    ];
    ok(&url, &set).await;
    ok(&url, &set).await;

    let rotated = crate::switchyard(
        &url,
        &[
            "routes",
            "rotate-secret",
            "acme",
            "_",
            "slack",
            "--secret",
            NEW,
            "--overlap",
            "1h",
        ],
    )
    .await;
    assert!(rotated.status.success(), "{}", crate::stderr(&rotated));
    let said = format!("{}{}", crate::stdout(&rotated), crate::stderr(&rotated));
    assert!(
        said.starts_with("rotated the signing secret of route acme._.slack (revision "),
        "{said}"
    );
    assert!(
        said.contains("; 1 previous secret signs too, until "),
        "{said}"
    );
    let shown = ok(&url, &["routes", "get", "acme", "ops", "slack"]).await;
    assert!(shown.contains("previous secret"), "{shown}");
    let json: serde_json::Value =
        serde_json::from_str(&ok(&url, &["routes", "get", "acme", "_", "slack", "--json"]).await)
            .unwrap();
    assert_eq!(json["route"]["secret"], "whsec_***");
    assert_eq!(json["route"]["previous_secrets"][0]["secret"], "whsec_***");
    for text in [&said, &shown, &json.to_string()] {
        assert!(!text.contains(SECRET) && !text.contains(NEW), "{text}");
    }

    // The stored record holds both secrets; the key's history holds nothing older, so the
    // rotated-out secret does not linger in earlier revisions (two `set`s came before).
    let routes = js.get_key_value("routes").await.unwrap();
    let history: Vec<_> = routes
        .history("acme._.slack")
        .await
        .unwrap()
        .collect::<Vec<_>>()
        .await;
    assert_eq!(history.len(), 1, "only the current revision is kept");
    let stored = String::from_utf8(history[0].as_ref().unwrap().value.to_vec()).unwrap();
    assert!(stored.contains(NEW) && stored.contains(SECRET), "{stored}");

    // Rotating to a secret in use, or a NATS route, is refused; a zero overlap stops the old
    // secret at once.
    let err = fails(
        &url,
        &[
            "routes",
            "rotate-secret",
            "acme",
            "_",
            "slack",
            "--secret",
            NEW,
        ],
    )
    .await;
    assert!(err.contains("the current one or a previous one"), "{err}");
    assert!(!err.contains(NEW), "{err}");
    ok(
        &url,
        &[
            "routes",
            "set",
            "acme",
            "ops",
            "billing",
            "--nats",
            "sink.acme",
        ],
    )
    .await;
    let err = fails(
        &url,
        &[
            "routes",
            "rotate-secret",
            "acme",
            "ops",
            "billing",
            "--secret",
            NEWER,
        ],
    )
    .await;
    assert!(
        err.contains("delivers over NATS: it has no signing secret"),
        "{err}"
    );
    let more = ok(
        &url,
        &[
            "routes",
            "rotate-secret",
            "acme",
            "_",
            "slack",
            "--secret",
            NEWER,
            "--overlap",
            "0s",
        ],
    )
    .await;
    assert!(
        more.contains("; 1 previous secret signs too"),
        "the first rotation's overlap still runs: {more}"
    );
    ok(
        &url,
        &[
            "routes",
            "set",
            "acme",
            "_",
            "teams",
            "--webhook",
            "https://t.example.com/in",
            "--secret",
            SECRET,
        ],
    )
    .await;
    let immediate = ok(
        &url,
        &[
            "routes",
            "rotate-secret",
            "acme",
            "_",
            "teams",
            "--secret",
            NEW,
            "--overlap",
            "0s",
        ],
    )
    .await;
    assert!(
        immediate.ends_with("only the new secret signs\n"),
        "{immediate}"
    );

    // A leaked previous secret is revoked at once; an overlap is bounded; a secret may come
    // from a file (never the command line).
    let revoked = ok(
        &url,
        &[
            "routes",
            "rotate-secret",
            "acme",
            "_",
            "slack",
            "--revoke-previous",
        ],
    )
    .await;
    assert!(
        revoked.starts_with("revoked the previous signing secrets of route acme._.slack")
            && revoked.ends_with("only the new secret signs\n"),
        "{revoked}"
    );
    let too_long = fails(
        &url,
        &[
            "routes",
            "rotate-secret",
            "acme",
            "_",
            "slack",
            "--secret",
            SECRET,
            "--overlap",
            "99999999w",
        ],
    )
    .await;
    assert!(too_long.contains("outside 0 s"), "{too_long}");
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("secret");
    std::fs::write(&file, format!("{SECRET}\n")).unwrap();
    let file = file.to_str().unwrap();
    let from_file = ok(
        &url,
        &[
            "routes",
            "rotate-secret",
            "acme",
            "_",
            "slack",
            "--secret-file",
            file,
            "--overlap",
            "1h",
        ],
    )
    .await;
    assert!(
        from_file.contains("1 previous secret signs too"),
        "{from_file}"
    );

    // Changing a route's timeout keeps the overlap; changing its secret ends it, and says so.
    let same = ok(
        &url,
        &[
            "routes",
            "set",
            "acme",
            "_",
            "slack",
            "--webhook",
            "https://hooks.example.com/in",
            "--secret-file",
            file,
            "--timeout-ms",
            "5000",
        ],
    )
    .await;
    assert!(!same.contains("stopped signing"), "{same}");
    let json: serde_json::Value =
        serde_json::from_str(&ok(&url, &["routes", "get", "acme", "_", "slack", "--json"]).await)
            .unwrap();
    assert_eq!(
        json["route"]["previous_secrets"].as_array().unwrap().len(),
        1
    );
    let other = ok(
        &url,
        &[
            "routes",
            "set",
            "acme",
            "_",
            "slack",
            "--webhook",
            "https://hooks.example.com/in",
            "--secret",
            NEW,
        ],
    )
    .await;
    assert!(
        other.contains("earlier signing secrets stopped signing"),
        "{other}"
    );
}

#[tokio::test]
async fn a_routes_ed25519_signing_key_is_hidden_and_its_public_key_shown() {
    const KEY: &str = "whsk_AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8=";
    let server = provisioned().await;
    let url = server.url();
    ok(
        &url,
        &[
            "routes",
            "set",
            "acme",
            "_",
            "slack",
            "--webhook",
            "https://hooks.example.com/in",
            "--secret",
            SECRET,
            "--signing-key",
            KEY,
        ],
    )
    .await;
    let public = switchyard_registry::SigningKey(KEY.into())
        .public_key()
        .unwrap();
    let shown = ok(&url, &["routes", "get", "acme", "_", "slack"]).await;
    assert!(
        shown
            .lines()
            .any(|l| l.starts_with("public key ") && l.ends_with(&public)),
        "{shown}"
    );
    assert!(!shown.contains(KEY), "{shown}");
    let json: serde_json::Value =
        serde_json::from_str(&ok(&url, &["routes", "get", "acme", "_", "slack", "--json"]).await)
            .unwrap();
    assert_eq!(json["public_key"], public.as_str());
    assert_eq!(json["route"]["signing_key"], "whsk_***");

    let err = fails(
        &url,
        &[
            "routes",
            "set",
            "acme",
            "_",
            "slack",
            "--webhook",
            "https://hooks.example.com/in",
            "--secret",
            SECRET,
            "--signing-key",
            "whsk_AAEC",
        ],
    )
    .await;
    assert!(err.contains("route field signing_key"), "{err}");
    assert!(!err.contains("whsk_AAEC"), "the key is never echoed: {err}");
}
