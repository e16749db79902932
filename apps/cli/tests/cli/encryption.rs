//! `switchyard encryption enable|rotate|rewrap|status|shred`, and `dlq show` of an encrypted
//! entry with and without the key-encryption key.

use std::path::{Path, PathBuf};

use switchyard_crypt::{KekRing, KeyState, KeyStore, LocalKek, insert_seal_headers};
use switchyard_dlq::DlqCode;
use switchyard_fixtures::Orders;
use switchyard_keys::{Stage, TenantId};
use switchyard_subjects::Namespace;

use crate::{fails, ok, provisioned};

/// Writes a KEK file holding 32 bytes of `byte`, mode 0600.
fn kek_file(dir: &Path, name: &str, byte: u8) -> PathBuf {
    let path = dir.join(name);
    std::fs::write(&path, format!("{byte:02x}").repeat(32)).unwrap();
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).unwrap();
    }
    path
}

const SECRET_PAYLOAD: &str = r#"{"card":"4111-1111-secret"}"#;

#[tokio::test]
async fn keys_are_enabled_rotated_rewrapped_and_shredded_and_dlq_show_decrypts_only_with_the_kek() {
    let server = provisioned().await;
    let url = server.url();
    let dir = tempfile::tempdir().unwrap();
    let kek1 = kek_file(dir.path(), "kek1", 0x11);
    let kek2 = kek_file(dir.path(), "kek2", 0x22);
    let (kek1, kek2) = (kek1.to_str().unwrap(), kek2.to_str().unwrap());

    let out = ok(&url, &["encryption", "status", "acme"]).await;
    assert!(out.contains("off"), "{out}");
    let err = fails(&url, &["encryption", "enable", "acme"]).await;
    assert!(err.contains("--kek-file"), "{err}");

    let out = ok(&url, &["encryption", "enable", "acme", "--kek-file", kek1]).await;
    assert!(out.contains("encryption on for tenant acme"), "{out}");
    let again = ok(&url, &["encryption", "enable", "acme", "--kek-file", kek1]).await;
    assert!(again.contains("already has encryption on"), "{again}");
    let status: serde_json::Value =
        serde_json::from_str(&ok(&url, &["--json", "encryption", "status", "acme"]).await).unwrap();
    assert_eq!(status["state"], "on");
    let first = status["current_key"].as_str().unwrap().to_owned();

    let rotated: serde_json::Value = serde_json::from_str(
        &ok(
            &url,
            &["--json", "encryption", "rotate", "acme", "--kek-file", kek1],
        )
        .await,
    )
    .unwrap();
    let second = rotated["current_key"].as_str().unwrap().to_owned();
    assert_ne!(first, second);
    let listed: serde_json::Value =
        serde_json::from_str(&ok(&url, &["--json", "encryption", "status"]).await).unwrap();
    assert_eq!(listed[0]["tenant"], "acme");
    assert_eq!(listed[0]["keys"].as_array().unwrap().len(), 2);

    // An egress dead letter of acme, its payload sealed under the current key as egress
    // leaves it: the DLQ keeps the ciphertext.
    let client = async_nats::connect(&url).await.unwrap();
    let js = async_nats::jetstream::new(client);
    let store = KeyStore::new(js.get_key_value("tenant-keys").await.unwrap());
    let acme = TenantId::new("acme").unwrap();
    let ring1 = KekRing::new(LocalKek::from_file(kek1).unwrap());
    let KeyState::On(record, _) = store.state(&acme).await.unwrap() else {
        panic!("acme has encryption on");
    };
    let key = record.current_key(&ring1).unwrap();
    assert_eq!(key.id().as_str(), second);
    let orders = Orders {
        deliveries: 1,
        text: None,
        failure: (5, "HTTP 400"),
    };
    let ns = Namespace::default();
    let env = orders.envelope("acme", 1);
    let (dead, mut original) =
        orders.record(&ns, Stage::Egress, DlqCode::PermanentFailure, 1, &env);
    let sealed = key
        .seal(&acme, &env.id.to_string(), SECRET_PAYLOAD.as_bytes())
        .unwrap();
    insert_seal_headers(&mut original, &sealed.headers);
    dead.publish(&js, &ns, Some(&original), sealed.ciphertext.into())
        .await
        .unwrap()
        .await
        .unwrap();

    let shown = ok(&url, &["dlq", "show", "1"]).await;
    assert!(
        shown.contains(&format!("encrypted (key {second})")),
        "{shown}"
    );
    assert!(!shown.contains("4111"), "{shown}");
    let shown = ok(&url, &["dlq", "show", "1", "--kek-file", kek1]).await;
    assert!(
        shown.contains(&format!("decrypted (key {second})")),
        "{shown}"
    );
    assert!(shown.contains("4111-1111-secret"), "{shown}");
    let json: serde_json::Value =
        serde_json::from_str(&ok(&url, &["--json", "dlq", "show", "1", "--kek-file", kek1]).await)
            .unwrap();
    assert_eq!(json["encryption"]["decrypted"], true);
    assert_eq!(json["payload"]["data"], SECRET_PAYLOAD);
    let json: serde_json::Value =
        serde_json::from_str(&ok(&url, &["--json", "dlq", "show", "1"]).await).unwrap();
    assert_eq!(json["encryption"]["key"], second.as_str());
    assert_eq!(json["encryption"]["decrypted"], false);
    assert_eq!(json["payload"]["encoding"], "base64");

    // KEK rotation: the data keys are re-wrapped under kek2; the DLQ entry is untouched and
    // opens with kek2 alone, and no longer with kek1.
    let rewrapped: serde_json::Value = serde_json::from_str(
        &ok(
            &url,
            &[
                "--json",
                "encryption",
                "rewrap",
                "--kek-file",
                kek2,
                "--previous-kek-file",
                kek1,
            ],
        )
        .await,
    )
    .unwrap();
    assert_eq!(rewrapped["tenants"][0]["rewrapped"], 2);
    let shown = ok(&url, &["dlq", "show", "1", "--kek-file", kek2]).await;
    assert!(shown.contains("4111-1111-secret"), "{shown}");
    let shown = ok(&url, &["dlq", "show", "1", "--kek-file", kek1]).await;
    assert!(
        shown.contains(&format!("encrypted (key {second})")),
        "{shown}"
    );
    assert!(shown.contains("is not loaded"), "{shown}");

    // Shredding needs a confirmation, then destroys the keys for good.
    let err = fails(&url, &["encryption", "shred", "acme"]).await;
    assert!(err.contains("--yes"), "{err}");
    let out = ok(&url, &["encryption", "shred", "acme", "--yes"]).await;
    assert!(out.contains("destroyed"), "{out}");
    let status: serde_json::Value =
        serde_json::from_str(&ok(&url, &["--json", "encryption", "status", "acme"]).await).unwrap();
    assert_eq!(status["state"], "shredded");
    let shown = ok(&url, &["dlq", "show", "1", "--kek-file", kek2]).await;
    assert!(
        shown.contains(&format!("encrypted (key {second})")),
        "{shown}"
    );
    assert!(shown.contains("crypto-shredded"), "{shown}");
    assert!(!shown.contains("4111"), "{shown}");
    let err = fails(&url, &["encryption", "rotate", "acme", "--kek-file", kek2]).await;
    assert!(err.contains("has no encryption keys"), "{err}");
}

const ACME_SECRET: &str = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";
const GLOBEX_SECRET: &str = "whsec_C2FVsBQIhrscChlQIMV+b5sSYspob7oD";
const ROTATED: &str = "whsec_AAECAwQFBgcICQoLDA0ODxAREhMUFRYX";

/// The raw value of `key` in `bucket`, as text.
async fn raw(js: &async_nats::jetstream::Context, bucket: &str, key: &str) -> String {
    let kv = js.get_key_value(bucket).await.unwrap();
    let value = kv.get(key).await.unwrap().expect("the record exists");
    String::from_utf8(value.to_vec()).unwrap()
}

#[tokio::test]
async fn route_and_destination_secrets_of_an_encrypted_tenant_are_stored_sealed_and_never_shown() {
    let server = provisioned().await;
    let url = server.url();
    let dir = tempfile::tempdir().unwrap();
    let kek = kek_file(dir.path(), "kek", 0x33);
    let kek = kek.to_str().unwrap();
    let client = async_nats::connect(&url).await.unwrap();
    let js = async_nats::jetstream::new(client);
    // A webhook target, with the KEK for acme (encryption on) only.
    let webhook = |tenant: &str, secret: &'static str| {
        let mut args = vec![
            "--webhook",
            "https://hooks.example.com/in",
            "--secret",
            secret,
        ];
        if tenant == "acme" {
            args.extend(["--kek-file", kek]);
        }
        args
    };

    // Written while acme's encryption is off: in clear, as before.
    ok(
        &url,
        &[
            "routes",
            "set",
            "acme",
            "_",
            "shop",
            "--webhook",
            "https://hooks.example.com/in",
            "--secret",
            ACME_SECRET,
        ],
    )
    .await;
    ok(
        &url,
        &[
            "destinations",
            "set",
            "acme",
            "erp",
            "--webhook",
            "https://hooks.example.com/erp",
            "--secret",
            ACME_SECRET,
        ],
    )
    .await;
    assert!(
        raw(&js, "routes", "acme._.shop")
            .await
            .contains(ACME_SECRET)
    );

    // Enabling encryption seals them, once.
    let out = ok(&url, &["encryption", "enable", "acme", "--kek-file", kek]).await;
    assert!(
        out.contains("sealed the secrets of 1 route(s) and 1 destination(s)"),
        "{out}"
    );
    let again = ok(&url, &["encryption", "enable", "acme", "--kek-file", kek]).await;
    assert!(
        again.contains("of 0 route(s) and 0 destination(s)"),
        "{again}"
    );
    for (bucket, key) in [("routes", "acme._.shop"), ("destinations", "acme.erp")] {
        let stored = raw(&js, bucket, key).await;
        assert!(!stored.contains("whsec_"), "{bucket} {key}: {stored}");
        assert!(stored.contains("\"secret\":\"enc:v1:"), "{stored}");
    }

    // A writer without the KEK is refused, naming --kek-file; nothing changes.
    let before = raw(&js, "routes", "acme._.shop").await;
    let err = fails(
        &url,
        &[
            "routes",
            "set",
            "acme",
            "_",
            "shop",
            "--webhook",
            "https://hooks.example.com/in",
            "--secret",
            ACME_SECRET,
        ],
    )
    .await;
    assert!(
        err.contains("--kek-file") && err.contains("encryption on"),
        "{err}"
    );
    let err = fails(
        &url,
        &[
            "destinations",
            "set",
            "acme",
            "erp",
            "--webhook",
            "https://hooks.example.com/erp",
            "--secret",
            ACME_SECRET,
        ],
    )
    .await;
    assert!(err.contains("--kek-file"), "{err}");
    let err = fails(
        &url,
        &[
            "routes",
            "rotate-secret",
            "acme",
            "_",
            "shop",
            "--secret",
            ROTATED,
        ],
    )
    .await;
    assert!(err.contains("--kek-file"), "{err}");
    assert_eq!(raw(&js, "routes", "acme._.shop").await, before);
    // An invalid secret is refused before sealing, without showing it.
    let err = fails(
        &url,
        &[
            "routes",
            "set",
            "acme",
            "_",
            "shop",
            "--webhook",
            "https://hooks.example.com/in",
            "--secret",
            "whsec_YWJj",
            "--kek-file",
            kek,
        ],
    )
    .await;
    assert!(
        err.contains("shorter than 16 bytes") && !err.contains("YWJj"),
        "{err}"
    );

    // With it, sets and rotations are sealed; globex (encryption off) stays in clear.
    let mut set = vec!["routes", "set", "acme", "_", "billing"];
    set.extend(webhook("acme", ACME_SECRET));
    ok(&url, &set).await;
    let mut set = vec!["routes", "set", "globex", "_", "billing"];
    set.extend(webhook("globex", GLOBEX_SECRET));
    ok(&url, &set).await;
    ok(
        &url,
        &[
            "routes",
            "rotate-secret",
            "acme",
            "_",
            "billing",
            "--secret",
            ROTATED,
            "--overlap",
            "1h",
            "--kek-file",
            kek,
        ],
    )
    .await;
    let acme = raw(&js, "routes", "acme._.billing").await;
    for secret in [ACME_SECRET, ROTATED] {
        assert!(!acme.contains(secret), "{acme}");
    }
    assert_eq!(acme.matches("enc:v1:").count(), 2, "{acme}");
    assert!(
        raw(&js, "routes", "globex._.billing")
            .await
            .contains(GLOBEX_SECRET)
    );
    // Rotating to the secret already signing is refused (compared in clear).
    let err = fails(
        &url,
        &[
            "routes",
            "rotate-secret",
            "acme",
            "_",
            "billing",
            "--secret",
            ROTATED,
            "--kek-file",
            kek,
        ],
    )
    .await;
    assert!(err.contains("current one or a previous one"), "{err}");
    ok(
        &url,
        &[
            "destinations",
            "rotate-secret",
            "acme",
            "erp",
            "--secret",
            ROTATED,
            "--kek-file",
            kek,
        ],
    )
    .await;
    let erp = raw(&js, "destinations", "acme.erp").await;
    assert!(
        !erp.contains("whsec_") && erp.matches("enc:v1:").count() == 2,
        "{erp}"
    );

    // Shown sealed (its key id), never in clear.
    for args in [
        vec!["routes", "get", "acme", "_", "billing"],
        vec!["--json", "routes", "get", "acme", "_", "billing"],
        vec!["--json", "routes", "ls"],
        vec!["destinations", "get", "acme", "erp"],
        vec!["--json", "destinations", "ls"],
    ] {
        let shown = ok(&url, &args).await;
        for secret in [ACME_SECRET, ROTATED, GLOBEX_SECRET] {
            assert!(!shown.contains(secret), "{args:?}: {shown}");
        }
        if args.contains(&"get") {
            assert!(
                shown.contains("enc:v1:") && shown.contains(":***"),
                "{args:?}: {shown}"
            );
        }
    }

    // A sealed secret copied into another route does not open there: refused when written.
    let sealed = serde_json::from_str::<serde_json::Value>(&acme).unwrap()["secret"]
        .as_str()
        .unwrap()
        .to_owned();
    let copied =
        format!(r#"{{"type":"webhook","url":"https://hooks.example.com/in","secret":"{sealed}"}}"#);
    let err = fails(
        &url,
        &[
            "routes",
            "set",
            "acme",
            "_",
            "other",
            "--route-json",
            &copied,
            "--kek-file",
            kek,
        ],
    )
    .await;
    assert!(err.contains("does not authenticate"), "{err}");
    let err = fails(
        &url,
        &[
            "routes",
            "set",
            "globex",
            "_",
            "other",
            "--route-json",
            &copied,
        ],
    )
    .await;
    assert!(err.contains("encryption off"), "{err}");
}
