//! `keys create|ls|revoke`: API keys for the producer HTTP API, stored hashed; the key is
//! printed once and never again.

use switchyard_keys::ApiKeyKey;
use switchyard_registry::{ApiKeyRecord, Store, api_key};

use crate::{fails, ok, provisioned, switchyard};

#[tokio::test]
async fn keys_are_printed_once_stored_hashed_listed_and_revoked() {
    let server = provisioned().await;
    let url = server.url();
    let refused = fails(&url, &["keys", "create", "acme"]).await;
    assert!(
        refused
            .contains("tenant acme is not registered: run `switchyard tenants enable acme` first"),
        "{refused}"
    );
    ok(&url, &["tenants", "enable", "acme"]).await;
    ok(&url, &["tenants", "enable", "globex"]).await;

    let output = switchyard(
        &url,
        &[
            "keys",
            "create",
            "acme",
            "--label",
            "billing service",
            "--expires-in-days",
            "30",
        ],
    )
    .await;
    assert!(output.status.success());
    let token = String::from_utf8(output.stdout).unwrap().trim().to_owned();
    let note = String::from_utf8(output.stderr).unwrap();
    assert!(note.contains("shown once"), "{note}");
    let (id, secret) = api_key::parse_token(&token).expect("a well-formed key");

    // What is stored: the tenant and a hash, never the secret.
    let client = server.client().await;
    let js = async_nats::jetstream::new(client);
    let keys: Store<ApiKeyKey, ApiKeyRecord> =
        Store::new(js.get_key_value("api-keys").await.unwrap());
    let record = keys.get(&id).await.unwrap().unwrap();
    assert_eq!(record.tenant.as_str(), "acme");
    assert_eq!(record.label.as_deref(), Some("billing service"));
    assert!(record.expires_at.is_some());
    let stored = serde_json::to_string(&record).unwrap();
    assert!(!stored.contains(secret), "{stored}");
    record
        .check(&id, secret, time::OffsetDateTime::now_utc())
        .unwrap();

    let json = ok(&url, &["--json", "keys", "create", "globex"]).await;
    let created: serde_json::Value = serde_json::from_str(&json).unwrap();
    assert_eq!(created["tenant"], "globex");
    assert!(created["key"].as_str().unwrap().starts_with("sy_"));

    let listed = ok(&url, &["keys", "ls", "acme"]).await;
    assert!(
        listed.contains(&id.id) && listed.contains("active") && listed.contains("billing service"),
        "{listed}"
    );
    assert!(!listed.contains(secret), "{listed}");
    assert!(
        !listed.contains(created["id"].as_str().unwrap()),
        "globex's key is not acme's: {listed}"
    );

    // Revoking needs the right tenant.
    let wrong = fails(&url, &["keys", "revoke", "globex", &id.id]).await;
    assert!(
        wrong.contains(&format!("tenant globex has no key {}", id.id)),
        "{wrong}"
    );
    let revoked = ok(&url, &["keys", "revoke", "acme", &id.id]).await;
    assert_eq!(revoked, format!("key {} of tenant acme revoked\n", id.id));
    let record = keys.get(&id).await.unwrap().unwrap();
    assert!(
        record
            .check(&id, secret, time::OffsetDateTime::now_utc())
            .is_err()
    );
    let listed: serde_json::Value =
        serde_json::from_str(&ok(&url, &["--json", "keys", "ls", "acme"]).await).unwrap();
    assert_eq!(listed[0]["status"], "revoked", "{listed}");
}
