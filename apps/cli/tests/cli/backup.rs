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

/// Rewrites one item of a backup's manifest with `change`.
fn edit_manifest(dir: &std::path::Path, stream: &str, change: impl FnOnce(&mut serde_json::Value)) {
    let path = dir.join("manifest.json");
    let mut manifest: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
    let item = manifest["items"]
        .as_array_mut()
        .unwrap()
        .iter_mut()
        .find(|i| i["stream"] == stream)
        .unwrap();
    change(item);
    std::fs::write(&path, serde_json::to_vec_pretty(&manifest).unwrap()).unwrap();
}

fn copy_dir(from: &std::path::Path, to: &std::path::Path) {
    std::fs::create_dir(to).unwrap();
    for entry in std::fs::read_dir(from).unwrap() {
        let entry = entry.unwrap();
        std::fs::copy(entry.path(), to.join(entry.file_name())).unwrap();
    }
}

#[tokio::test]
async fn a_backup_is_private_refuses_what_would_restore_elsewhere_and_says_what_a_failed_restore_left()
 {
    use std::os::unix::fs::PermissionsExt;
    let server = provisioned().await;
    let url = server.url();
    let js = async_nats::jetstream::new(server.client().await);
    seed(&js).await;
    let dir = tempfile::tempdir().unwrap();
    let good = dir.path().join("good");
    ok(&url, &["backup", "create", "--dir", good.to_str().unwrap()]).await;
    // Owner only: a backup holds payloads and the secrets of tenants without encryption.
    let mode = |p: &std::path::Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode(&good), 0o700);
    assert_eq!(mode(&good.join("DLQ.snapshot")), 0o600);
    assert_eq!(mode(&good.join("manifest.json")), 0o600);

    // Checked where it is kept: no server needed.
    let out = ok(
        "nats://127.0.0.1:1",
        &["backup", "verify", "--dir", good.to_str().unwrap()],
    )
    .await;
    assert!(out.contains("every file matches the manifest"), "{out}");
    let err = fails(&url, &["backup", "verify", "--dir", "/nonexistent/backup"]).await;
    assert!(err.contains("does not exist"), "{err}");

    // Nothing to back up (a mistyped prefix): refused, no folder written.
    let typo = dir.path().join("typo");
    let err = fails(
        &url,
        &[
            "--prefix",
            "stagign",
            "backup",
            "create",
            "--dir",
            typo.to_str().unwrap(),
        ],
    )
    .await;
    assert!(err.contains("no stream or bucket to back up"), "{err}");
    assert!(!typo.exists());

    // A file planted where a snapshot is written (a link to another file) is refused, the
    // other file untouched.
    let planted = dir.path().join("planted");
    std::fs::create_dir(&planted).unwrap();
    let precious = dir.path().join("precious.txt");
    std::fs::write(&precious, "keep me").unwrap();
    std::os::unix::fs::symlink(&precious, planted.join("DLQ.snapshot.partial")).unwrap();
    let err = fails(
        &url,
        &["backup", "create", "--dir", planted.to_str().unwrap()],
    )
    .await;
    assert!(err.contains("exists already"), "{err}");
    assert_eq!(std::fs::read_to_string(&precious).unwrap(), "keep me");

    // Restored under another prefix: refused before anything changes.
    let err = fails(
        &url,
        &[
            "--prefix",
            "staging",
            "backup",
            "restore",
            "--dir",
            good.to_str().unwrap(),
            "--force",
        ],
    )
    .await;
    assert!(
        err.contains("namespace") && err.contains("--prefix"),
        "{err}"
    );

    // An item naming a stream of no deployment's: refused, that stream left alone.
    js.create_stream(async_nats::jetstream::stream::Config {
        name: "FOREIGN".into(),
        subjects: vec!["foreign.>".into()],
        ..Default::default()
    })
    .await
    .unwrap();
    let foreign = dir.path().join("foreign");
    copy_dir(&good, &foreign);
    edit_manifest(&foreign, "EVENTS", |item| item["stream"] = "FOREIGN".into());
    let err = fails(
        &url,
        &[
            "backup",
            "restore",
            "--dir",
            foreign.to_str().unwrap(),
            "--force",
        ],
    )
    .await;
    assert!(err.contains("carries the config of stream EVENTS"), "{err}");
    edit_manifest(&foreign, "FOREIGN", |item| {
        item["stream"] = "FOREIGN".into();
        item["config"]["name"] = "FOREIGN".into();
    });
    let err = fails(
        &url,
        &[
            "backup",
            "restore",
            "--dir",
            foreign.to_str().unwrap(),
            "--force",
        ],
    )
    .await;
    assert!(
        err.contains("not a stream or bucket of this deployment"),
        "{err}"
    );
    assert!(js.get_stream("FOREIGN").await.is_ok());

    // A snapshot the server cannot restore (damaged, with a manifest that agrees): the error
    // says which stream is gone, what was restored and what was not reached.
    let damaged = dir.path().join("damaged");
    copy_dir(&good, &damaged);
    let file = damaged.join("DLQ.snapshot");
    let bytes = std::fs::read(&file).unwrap();
    std::fs::write(&file, &bytes[..bytes.len() / 2]).unwrap();
    let (size, sha) = {
        use sha2::Digest;
        let cut = &bytes[..bytes.len() / 2];
        (cut.len(), format!("{:x}", sha2::Sha256::digest(cut)))
    };
    edit_manifest(&damaged, "DLQ", |item| {
        item["bytes"] = size.into();
        item["sha256"] = sha.into();
    });
    let err = fails(
        &url,
        &[
            "backup",
            "restore",
            "--dir",
            damaged.to_str().unwrap(),
            "--force",
        ],
    )
    .await;
    assert!(
        err.contains("restoring DLQ failed")
            && err.contains("deleted first: it is now missing or partial")
            && err.contains("Not reached (left as they were): ADVISORIES")
            && err.contains("backup restore --force"),
        "{err}"
    );
    // The intact backup brings it back.
    ok(
        &url,
        &[
            "backup",
            "restore",
            "--dir",
            good.to_str().unwrap(),
            "--force",
        ],
    )
    .await;
    let out = ok(&url, &["dlq", "ls"]).await;
    assert_eq!(
        out.lines()
            .filter(|l| l.contains("acme") || l.contains("globex"))
            .count(),
        4,
        "{out}"
    );
}
