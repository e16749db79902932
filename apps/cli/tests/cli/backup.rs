//! `switchyard backup create|verify|restore` on a real nats-server: what each prints, what it
//! refuses and why (an existing backup, a tampered file, a folder without a manifest, a
//! deployment holding messages), and a forced restore bringing the DLQ back as it was.

use switchyard_dlq::DlqCode;

use crate::fixtures::{seed, seed_many};
use crate::{fails, ok, provisioned};

#[tokio::test]
async fn a_backup_is_created_verified_refused_when_tampered_and_restored_over_data_only_with_force()
{
    let server = provisioned().await;
    let url = server.url();
    let js = async_nats::jetstream::new(server.client().await);
    seed(&js).await;
    let dir = tempfile::tempdir().unwrap();
    let backup = dir.path().join("b1");
    let backup = backup.to_str().unwrap();

    let out = ok(&url, &["backup", "create", "--dir", backup]).await;
    assert!(out.contains("DLQ"), "{out}");
    assert!(out.contains("KV_tenant-keys"), "{out}");
    assert!(out.contains("backed up"), "{out}");
    let manifest: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(dir.path().join("b1/manifest.json")).unwrap(),
    )
    .unwrap();
    let dlq = manifest["items"]
        .as_array()
        .unwrap()
        .iter()
        .find(|i| i["stream"] == "DLQ")
        .unwrap();
    assert_eq!(dlq["messages"], 4);
    assert_eq!(dlq["sha256"].as_str().unwrap().len(), 64);

    let err = fails(&url, &["backup", "create", "--dir", backup]).await;
    assert!(err.contains("already holds a backup"), "{err}");

    let out = ok(&url, &["backup", "verify", "--dir", backup]).await;
    assert!(out.contains("every file matches the manifest"), "{out}");
    assert!(out.contains("matches this deployment"), "{out}");

    // Over a deployment that holds the DLQ's entries: refused, nothing changed.
    let err = fails(&url, &["backup", "restore", "--dir", backup]).await;
    assert!(
        err.contains("not empty") && err.contains("DLQ") && err.contains("--force"),
        "{err}"
    );

    // A snapshot file changed by one byte: verify and restore name it, nothing changes.
    let tampered = dir.path().join("tampered");
    std::fs::create_dir(&tampered).unwrap();
    for entry in std::fs::read_dir(dir.path().join("b1")).unwrap() {
        let entry = entry.unwrap();
        std::fs::copy(entry.path(), tampered.join(entry.file_name())).unwrap();
    }
    let file = tampered.join("DLQ.snapshot");
    let mut bytes = std::fs::read(&file).unwrap();
    let last = bytes.len() - 1;
    bytes[last] ^= 0xff;
    std::fs::write(&file, bytes).unwrap();
    let tampered = tampered.to_str().unwrap();
    let err = fails(&url, &["backup", "verify", "--dir", tampered]).await;
    assert!(
        err.contains("DLQ.snapshot") && err.contains("SHA-256"),
        "{err}"
    );
    let err = fails(&url, &["backup", "restore", "--dir", tampered, "--force"]).await;
    assert!(err.contains("DLQ.snapshot"), "{err}");

    let err = fails(
        &url,
        &["backup", "restore", "--dir", dir.path().to_str().unwrap()],
    )
    .await;
    assert!(err.contains("no manifest.json"), "{err}");

    // More entries after the backup; a forced restore brings the DLQ back to its four.
    seed_many(&js, "acme", 100, 4, DlqCode::NoRoute).await;
    let entries = |out: &str| {
        out.lines()
            .filter(|l| l.contains("acme") || l.contains("globex"))
            .count()
    };
    assert_eq!(entries(&ok(&url, &["dlq", "ls"]).await), 8);
    let restored: serde_json::Value = serde_json::from_str(
        &ok(
            &url,
            &["--json", "backup", "restore", "--dir", backup, "--force"],
        )
        .await,
    )
    .unwrap();
    assert!(
        restored["replaced"]
            .as_array()
            .unwrap()
            .iter()
            .any(|s| s == "DLQ"),
        "{restored}"
    );
    let dlq = restored["restored"]
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["stream"] == "DLQ")
        .unwrap();
    assert_eq!(dlq["messages"], 4, "{restored}");
    let out = ok(&url, &["dlq", "ls"]).await;
    assert_eq!(entries(&out), 4, "{out}");
}
