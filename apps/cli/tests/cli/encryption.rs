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
