//! `destinations` (a tenant's fan-out subscriptions in the `destinations` bucket, validated
//! before they are written, never shown with a secret) and `tenants enable --unmatched`.

use serde_json::{Value, json};

use crate::{fails, ok, provisioned};

const SECRET: &str = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";

#[tokio::test]
async fn destinations_set_get_ls_rm_round_trip_and_invalid_ones_are_refused() {
    let server = provisioned().await;
    let url = server.url();
    let hook = "https://alice:pa55word@hooks.example.com/orders?token=T0KEN";
    let filter = r#"{"body":{"amount":{"$gt":100}}}"#;

    let set = ok(
        &url,
        &[
            "destinations",
            "set",
            "acme",
            "orders-hook",
            "--webhook",
            hook,
            "--secret",
            SECRET,
            "--platform",
            "shop",
            "--platform",
            "blog",
            "--event-type",
            "order.created",
            "--filter",
            filter,
            "--description",
            "Orders over 100",
        ],
    )
    .await;
    assert_eq!(
        set,
        "set destination acme.orders-hook: webhook https://hooks.example.com, \
         platforms=shop,blog events=order.created filter (revision 1)\n"
    );
    let set = ok(
        &url,
        &[
            "destinations",
            "set",
            "acme",
            "audit",
            "--nats",
            "sink.acme.audit",
            "--jetstream",
        ],
    )
    .await;
    assert_eq!(
        set,
        "set destination acme.audit: nats sink.acme.audit, all (revision 2)\n"
    );
    ok(
        &url,
        &[
            "destinations",
            "set",
            "globex",
            "eu-feed",
            "--nats",
            "feed.globex",
            "--fire-and-forget",
            "--team",
            "eu",
        ],
    )
    .await;

    let get = ok(&url, &["destinations", "get", "acme", "orders-hook"]).await;
    assert_eq!(
        get,
        "key            acme.orders-hook\n\
         state          enabled\n\
         breaker        closed\n\
         description    Orders over 100\n\
         type           webhook\n\
         url            https://hooks.example.com\n\
         secret         whsec_***\n\
         timeout_ms     10000\n\
         max_in_flight  16\n\
         platforms      shop, blog\n\
         event types    order.created\n\
         filter         {\"body\":{\"amount\":{\"$gt\":100}}}\n"
    );
    let ls = ok(&url, &["destinations", "ls"]).await;
    assert_eq!(
        ls,
        "TENANT  DESTINATION  STATE    TYPE     TARGET                     SUBSCRIPTION\n\
         acme    audit        enabled  nats     sink.acme.audit            all\n\
         acme    orders-hook  enabled  webhook  https://hooks.example.com  platforms=shop,blog events=order.created filter\n\
         globex  eu-feed      enabled  nats     feed.globex                teams=eu\n"
    );
    assert_eq!(
        ok(&url, &["destinations", "ls", "globex"])
            .await
            .lines()
            .count(),
        2
    );

    // --json: the record as written, the secret and URL credentials redacted; `get` and `ls`
    // show the same object.
    let get_json = ok(
        &url,
        &["destinations", "get", "acme", "orders-hook", "--json"],
    )
    .await;
    let get: Value = serde_json::from_str(&get_json).unwrap();
    assert_eq!(get["key"], "acme.orders-hook");
    assert_eq!(get["destination"], "orders-hook");
    assert_eq!(get["description"], "Orders over 100");
    assert_eq!(
        get["subscription"],
        json!({"platforms": ["shop", "blog"], "event_types": ["order.created"],
               "filter": serde_json::from_str::<Value>(filter).unwrap()})
    );
    assert_eq!(get["target"]["url"], "https://hooks.example.com");
    assert_eq!(get["target"]["secret"], "whsec_***");
    let ls: Value =
        serde_json::from_str(&ok(&url, &["destinations", "ls", "--json"]).await).unwrap();
    assert_eq!(ls.as_array().unwrap().len(), 3);
    assert_eq!(ls[1], get);
    assert_eq!(ls[2]["target"]["fire_and_forget"], true);
    for secret in ["MfKQ", "alice", "pa55word", "T0KEN", "/orders"] {
        assert!(!get_json.contains(secret) && !ls.to_string().contains(secret));
    }

    // Invalid destinations are refused before anything is written, the filter's error naming
    // the path in the filter.
    for (args, expected) in [
        (
            vec![
                "--nats",
                "sink.x",
                "--filter",
                r#"{"body":{"amount":{"$gt":[1]}}}"#,
            ],
            "body.amount.$gt: expected",
        ),
        (vec!["--nats", "sink.x", "--filter", "{"], "not valid json"),
        (
            vec!["--webhook", "ftp://hooks.example.com", "--secret", SECRET],
            "route field url",
        ),
        (
            vec!["--nats", "sink.x", "--event-type", " order.created"],
            "subscription.event_types",
        ),
    ] {
        let mut full = vec!["destinations", "set", "acme", "orders-hook"];
        full.extend(args);
        let err = fails(&url, &full).await;
        assert!(
            err.contains("refusing to write an invalid destination to acme.orders-hook")
                && err.contains(expected),
            "{full:?}: {err}"
        );
    }
    let err = fails(
        &url,
        &["destinations", "set", "acme", "Orders", "--nats", "sink.x"],
    )
    .await;
    assert!(
        err.contains("destination id \"Orders\" has an invalid character"),
        "{err}"
    );
    assert_eq!(
        ok(
            &url,
            &["destinations", "get", "acme", "orders-hook", "--json"]
        )
        .await,
        get_json,
        "unchanged"
    );

    assert_eq!(
        ok(&url, &["destinations", "rm", "acme", "audit"]).await,
        "removed destination acme.audit\n"
    );
    let err = fails(&url, &["destinations", "rm", "acme", "audit"]).await;
    assert!(err.contains("error: no destination at acme.audit"), "{err}");
    let err = fails(&url, &["destinations", "get", "acme", "audit"]).await;
    assert!(err.contains("error: no destination at acme.audit"), "{err}");
    assert_eq!(
        ok(&url, &["destinations", "ls", "acme"])
            .await
            .lines()
            .count(),
        2
    );
}

#[tokio::test]
async fn tenants_enable_sets_the_unmatched_policy_and_keeps_it_when_not_given() {
    let server = provisioned().await;
    let url = server.url();
    let policy = |json: &str| serde_json::from_str::<Value>(json).unwrap()["unmatched"].clone();

    ok(&url, &["tenants", "enable", "acme", "--unmatched", "drop"]).await;
    let get = ok(&url, &["tenants", "get", "acme", "--json"]).await;
    assert_eq!(policy(&get), "drop");
    ok(&url, &["tenants", "enable", "acme"]).await;
    assert!(
        ok(&url, &["tenants", "get", "acme"])
            .await
            .contains("unmatched messages: drop"),
        "kept when re-enabling without --unmatched"
    );

    // The default is not written: the record reads as before the policy existed.
    ok(
        &url,
        &["tenants", "enable", "acme", "--unmatched", "dead_letter"],
    )
    .await;
    let get = ok(&url, &["tenants", "get", "acme", "--json"]).await;
    assert_eq!(policy(&get), Value::Null, "{get}");
    assert!(
        !ok(&url, &["tenants", "get", "acme"])
            .await
            .contains("unmatched")
    );

    let err = fails(
        &url,
        &["tenants", "enable", "acme", "--unmatched", "bounce"],
    )
    .await;
    assert!(
        err.contains("[possible values: dead_letter, drop]"),
        "{err}"
    );
}

#[tokio::test]
async fn disable_parks_a_destination_enable_releases_it_and_set_keeps_the_state() {
    let server = provisioned().await;
    let url = server.url();
    ok(
        &url,
        &[
            "destinations",
            "set",
            "acme",
            "crm",
            "--nats",
            "sink.acme.crm",
        ],
    )
    .await;
    let disabled = ok(
        &url,
        &[
            "destinations",
            "disable",
            "acme",
            "crm",
            "--reason",
            "maintenance until 18:00",
        ],
    )
    .await;
    assert_eq!(disabled, "disabled destination acme.crm\n");
    let get = ok(&url, &["destinations", "get", "acme", "crm"]).await;
    let state = get.lines().find(|l| l.starts_with("state")).unwrap();
    assert!(
        state.contains("disabled by an operator since ")
            && state.ends_with(": maintenance until 18:00"),
        "{state}"
    );
    assert!(ok(&url, &["destinations", "ls"]).await.contains("disabled"));
    // Replacing the target does not enable it.
    ok(
        &url,
        &[
            "destinations",
            "set",
            "acme",
            "crm",
            "--nats",
            "sink.acme.crm2",
        ],
    )
    .await;
    let get: Value =
        serde_json::from_str(&ok(&url, &["destinations", "get", "acme", "crm", "--json"]).await)
            .unwrap();
    assert_eq!(get["disabled"]["by"], "operator");
    assert_eq!(
        ok(&url, &["destinations", "disable", "acme", "crm"]).await,
        "destination acme.crm is disabled already\n"
    );

    assert_eq!(
        ok(&url, &["destinations", "enable", "acme", "crm"]).await,
        "enabled destination acme.crm\n"
    );
    let get: Value =
        serde_json::from_str(&ok(&url, &["destinations", "get", "acme", "crm", "--json"]).await)
            .unwrap();
    assert!(get.get("disabled").is_none(), "{get}");
    let missing = fails(&url, &["destinations", "enable", "acme", "nope"]).await;
    assert!(missing.contains("no destination at acme.nope"), "{missing}");
    let control = fails(
        &url,
        &[
            "destinations",
            "disable",
            "acme",
            "crm",
            "--reason",
            "a\u{1b}[31m",
        ],
    )
    .await;
    assert!(control.contains("disabled.reason"), "{control}");
}

#[tokio::test]
async fn a_destinations_open_circuit_breaker_shows_in_get_ls_and_json() {
    let server = provisioned().await;
    let url = server.url();
    for name in ["crm", "audit"] {
        ok(
            &url,
            &["destinations", "set", "acme", name, "--nats", "sink.acme.x"],
        )
        .await;
    }
    // What egress writes when the breaker of acme.crm opens (and a route's, not shown).
    let client = async_nats::connect(&url).await.unwrap();
    let breakers = async_nats::jetstream::new(client)
        .get_key_value("breakers")
        .await
        .unwrap();
    let until = time::OffsetDateTime::now_utc() + time::Duration::hours(1);
    let record = json!({
        "down_since": "2026-12-06T10:00:00Z",
        "open_until": until.format(&time::format_description::well_known::Rfc3339).unwrap(),
        "reopenings": 2,
        "by": "egress-0/7",
    });
    for key in ["acme.crm", "acme.ops.slack"] {
        breakers
            .put(key, serde_json::to_vec(&record).unwrap().into())
            .await
            .unwrap();
    }

    let get = ok(&url, &["destinations", "get", "acme", "crm"]).await;
    let breaker = get.lines().find(|l| l.starts_with("breaker")).unwrap();
    assert!(
        breaker.contains("open until ")
            && breaker.ends_with("(down since 2026-12-06T10:00:00Z, 2 failed probes)"),
        "{breaker}"
    );
    let ls = ok(&url, &["destinations", "ls", "acme"]).await;
    let row = |name: &str| {
        ls.lines()
            .find(|l| l.split_whitespace().nth(1) == Some(name))
            .unwrap()
            .to_owned()
    };
    assert!(row("crm").contains("enabled, breaker open"), "{ls}");
    assert!(!row("audit").contains("breaker"), "{ls}");
    let json: Value =
        serde_json::from_str(&ok(&url, &["destinations", "get", "acme", "crm", "--json"]).await)
            .unwrap();
    assert_eq!(json["breaker"]["reopenings"], 2);
    assert_eq!(json["breaker"]["by"], "egress-0/7");

    // Its open period over: half-open (the next attempt is a probe).
    let past = json!({
        "down_since": "2026-12-06T10:00:00Z",
        "open_until": "2026-12-06T10:05:00Z",
        "reopenings": 0,
        "by": "egress-0/7",
    });
    breakers
        .put("acme.crm", serde_json::to_vec(&past).unwrap().into())
        .await
        .unwrap();
    let get = ok(&url, &["destinations", "get", "acme", "crm"]).await;
    assert!(
        get.contains(
            "half-open: probing since 2026-12-06T10:05:00Z (down since 2026-12-06T10:00:00Z)"
        ),
        "{get}"
    );
    assert!(
        ok(&url, &["destinations", "ls", "acme"])
            .await
            .contains("enabled, breaker half-open")
    );
}

#[tokio::test]
async fn rotate_secret_keeps_the_old_secret_signing_for_the_overlap() {
    let server = provisioned().await;
    let url = server.url();
    ok(
        &url,
        &[
            "destinations",
            "set",
            "acme",
            "crm",
            "--webhook",
            "https://hooks.example.com/in",
            "--secret",
            SECRET,
        ],
    )
    .await;
    let new = "whsec_C2FVsBQIhrscChlQIMV+b5sSYspob7oD";
    let rotated = ok(
        &url,
        &[
            "destinations",
            "rotate-secret",
            "acme",
            "crm",
            "--secret",
            new,
            "--overlap",
            "1h",
        ],
    )
    .await;
    assert!(
        rotated.starts_with("rotated the signing secret of destination acme.crm (revision ")
            && rotated.contains("; 1 previous secret signs too, until "),
        "{rotated}"
    );
    assert!(
        !rotated.contains("whsec_C2F") && !rotated.contains(SECRET),
        "{rotated}"
    );
    let get: Value =
        serde_json::from_str(&ok(&url, &["destinations", "get", "acme", "crm", "--json"]).await)
            .unwrap();
    assert_eq!(get["target"]["secret"], "whsec_***");
    assert_eq!(
        get["target"]["previous_secrets"].as_array().unwrap().len(),
        1
    );
    // The same secret again, or a NATS destination: refused, nothing changed.
    let again = fails(
        &url,
        &[
            "destinations",
            "rotate-secret",
            "acme",
            "crm",
            "--secret",
            new,
        ],
    )
    .await;
    assert!(again.contains("fresh secret"), "{again}");
    ok(
        &url,
        &[
            "destinations",
            "set",
            "acme",
            "audit",
            "--nats",
            "sink.acme.audit",
        ],
    )
    .await;
    let nats = fails(
        &url,
        &[
            "destinations",
            "rotate-secret",
            "acme",
            "audit",
            "--secret",
            new,
        ],
    )
    .await;
    assert!(nats.contains("has no signing secret"), "{nats}");
    // Revoking the previous secrets leaves the new one alone.
    let revoked = ok(
        &url,
        &[
            "destinations",
            "rotate-secret",
            "acme",
            "crm",
            "--revoke-previous",
        ],
    )
    .await;
    assert!(revoked.contains("only the new secret signs"), "{revoked}");
}
