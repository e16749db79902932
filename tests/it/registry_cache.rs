//! The registry's KV cache on a real nats-server: what its watch hands over.

use std::time::Duration;

use async_nats::jetstream::kv;
use switchyard_keys::{TenantId, TenantKey};
use switchyard_registry::{KvCache, Store, TenantRecord};
use switchyard_testkit::{NatsServer, wait_for};
use tokio_util::sync::CancellationToken;

#[tokio::test]
async fn a_cache_is_handed_each_keys_current_record_never_an_older_one() {
    let server = NatsServer::start().await;
    let js = async_nats::jetstream::new(server.client().await);
    let bucket = js
        .create_key_value(kv::Config {
            bucket: "tenants".into(),
            history: 5,
            ..Default::default()
        })
        .await
        .unwrap();
    let store: Store<TenantKey, TenantRecord> = Store::new(bucket.clone());
    let acme = TenantKey {
        tenant: TenantId::new("acme").unwrap(),
    };
    // Enabled, then disabled: the bucket keeps both revisions.
    store.put(&acme, &TenantRecord::enabled()).await.unwrap();
    let disabled = TenantRecord {
        enabled: false,
        ..TenantRecord::enabled()
    };
    store.put(&acme, &disabled).await.unwrap();

    // A watch starting (or started again after an outage) hands over the disabled record
    // alone: a cache that replayed the history would serve the enabled one for a while.
    let shutdown = CancellationToken::new();
    let opened = js.get_key_value("tenants").await.unwrap();
    let cache: std::sync::Arc<KvCache<TenantKey, TenantRecord>> =
        KvCache::start(opened, shutdown.clone());
    tokio::time::timeout(Duration::from_secs(10), cache.wait_loaded())
        .await
        .expect("loaded");
    assert_eq!(cache.get(&acme), Some(Ok(disabled.clone())));
    assert_eq!(
        *cache.changes().borrow(),
        1,
        "one record applied, not its history"
    );

    // What changes afterwards still comes.
    store.put(&acme, &TenantRecord::enabled()).await.unwrap();
    wait_for("the change", Duration::from_secs(10), || async {
        (cache.get(&acme) == Some(Ok(TenantRecord::enabled()))).then_some(())
    })
    .await;
    shutdown.cancel();
}
