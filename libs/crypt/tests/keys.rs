//! The `tenant-keys` bucket on a real nats-server: operators' changes through `KeyStore`, and
//! what a service's `KeyCache` makes of them (seal, open, rotation, shredding).

use std::sync::Arc;
use std::time::Duration;

use async_nats::HeaderMap;
use async_nats::jetstream::{self, kv};
use bytes::Bytes;
use switchyard_crypt::{
    CryptError, Enabled, KekRing, KeyCache, KeyState, KeyStore, KeyStoreError, LocalKek, OpenError,
    Opened, insert_seal_headers,
};
use switchyard_keys::TenantId;
use switchyard_testkit::{NatsServer, wait_for};
use switchyard_topology::{BucketName, DeploymentConfig, provision};
use time::OffsetDateTime;
use tokio_util::sync::CancellationToken;

const ENVELOPE: &str = "0197a0b4-6c1e-7d3a-9f00-2b9c4e5d6f70";

fn ring(byte: u8) -> KekRing {
    KekRing::new(LocalKek::from_bytes(&[byte; 32]).unwrap())
}

fn acme() -> TenantId {
    TenantId::new("acme").unwrap()
}

async fn bucket() -> (NatsServer, kv::Store) {
    let server = NatsServer::start().await;
    let js = jetstream::new(server.client().await);
    let topology = DeploymentConfig::default().resolve().unwrap();
    provision(&js, &topology, false).await.unwrap();
    let kv = topology
        .open_bucket(&js, BucketName::TenantKeys)
        .await
        .unwrap()
        .1;
    (server, kv)
}

fn now() -> OffsetDateTime {
    OffsetDateTime::now_utc()
}

#[tokio::test]
async fn enable_is_idempotent_rotate_and_rewrap_keep_keys_and_shred_leaves_a_marker() {
    let (_server, kv) = bucket().await;
    let store = KeyStore::new(kv);
    let (ring1, ring2) = (ring(1), ring(2));
    assert_eq!(store.state(&acme()).await.unwrap(), KeyState::Off);
    assert!(matches!(
        store.rotate(&acme(), &ring1, now()).await,
        Err(KeyStoreError::NotEnabled { .. })
    ));

    let Enabled::Created(first) = store.enable(&acme(), &ring1, now()).await.unwrap() else {
        panic!("created");
    };
    assert_eq!(
        store.enable(&acme(), &ring1, now()).await.unwrap(),
        Enabled::AlreadyOn(first.clone())
    );
    let second = store.rotate(&acme(), &ring1, now()).await.unwrap();
    let KeyState::On(record, _) = store.state(&acme()).await.unwrap() else {
        panic!("on");
    };
    assert_eq!(record.current, second);
    assert_eq!(record.keys.len(), 2);

    // KEK rotation: the ring needs the old KEK to unwrap; afterwards the new one alone does.
    assert!(matches!(
        store.rewrap(&acme(), &ring2).await,
        Err(KeyStoreError::Crypt(CryptError::UnknownKek { .. }))
    ));
    let rotating = KekRing::new(LocalKek::from_bytes(&[2; 32]).unwrap())
        .with_previous(LocalKek::from_bytes(&[1; 32]).unwrap())
        .unwrap();
    assert_eq!(store.rewrap(&acme(), &rotating).await.unwrap(), 2);
    assert_eq!(store.rewrap(&acme(), &rotating).await.unwrap(), 0);
    let KeyState::On(rewrapped, _) = store.state(&acme()).await.unwrap() else {
        panic!("on");
    };
    for id in [&first, &second] {
        assert_eq!(
            rewrapped.key(id, &ring2).unwrap().dek().expose_secret(),
            record.key(id, &ring1).unwrap().dek().expose_secret()
        );
    }
    assert_eq!(store.list().await.unwrap().len(), 1);

    assert!(store.shred(&acme()).await.unwrap());
    assert_eq!(store.state(&acme()).await.unwrap(), KeyState::Shredded);
    assert!(!store.shred(&acme()).await.unwrap());
    assert!(store.list().await.unwrap().is_empty());
    // Enabled again: new keys, never the old ids.
    let Enabled::Created(again) = store.enable(&acme(), &ring2, now()).await.unwrap() else {
        panic!("created again");
    };
    assert!(again != first && again != second);
}

/// Seals `plaintext` for acme as ingress does; the headers and payload of the message.
fn sealed(cache: &KeyCache, plaintext: &[u8]) -> (HeaderMap, Bytes) {
    let sealed = cache.seal(&acme(), ENVELOPE, plaintext).unwrap().unwrap();
    let mut h = HeaderMap::new();
    insert_seal_headers(&mut h, &sealed.headers);
    (h, sealed.ciphertext.into())
}

#[tokio::test]
async fn a_service_cache_seals_opens_follows_rotation_and_forgets_shredded_keys() {
    let (_server, kv) = bucket().await;
    let store = KeyStore::new(kv.clone());
    let shutdown = CancellationToken::new();
    let cache: Arc<KeyCache> = KeyCache::start(kv.clone(), Some(ring(1)), shutdown.clone());
    cache.wait_loaded().await;
    // Off: nothing is sealed, and a payload without seal headers is taken as it is.
    assert!(cache.seal(&acme(), ENVELOPE, b"x").unwrap().is_none());
    assert_eq!(
        cache
            .open(&acme(), ENVELOPE, None, &Bytes::from_static(b"plain"))
            .await
            .unwrap(),
        Opened::Plain(Bytes::from_static(b"plain"))
    );

    store.enable(&acme(), &ring(1), now()).await.unwrap();
    wait_for(
        "the cache to see the record",
        Duration::from_secs(5),
        || async { cache.is_on(&acme()).then_some(()) },
    )
    .await;
    let (h, payload) = sealed(&cache, b"before rotation");
    assert_eq!(payload.len(), b"before rotation".len() + 16);

    // A key rotated after the cache's last look: opened through one KV read, and the old key
    // still opens what it sealed.
    let rotated = store.rotate(&acme(), &ring(1), now()).await.unwrap();
    let opened = cache
        .open(&acme(), ENVELOPE, Some(&h), &payload)
        .await
        .unwrap();
    assert_eq!(opened.payload(), &b"before rotation"[..]);
    wait_for(
        "the cache to seal with the new key",
        Duration::from_secs(5),
        || async {
            let (h, _) = sealed(&cache, b"after");
            (h.get(switchyard_crypt::KEY_HEADER).unwrap().as_str() == rotated.as_str())
                .then_some(())
        },
    )
    .await;
    let (h2, payload2) = sealed(&cache, b"after rotation");
    // Bound to the envelope: another message's id does not open it.
    assert!(matches!(
        cache
            .open(
                &acme(),
                "0197a0b4-6c1e-7d3a-9f00-2b9c4e5d6f71",
                Some(&h2),
                &payload2
            )
            .await,
        Err(OpenError::Refused(CryptError::Tampered { .. }))
    ));
    assert!(cache.unwrapped_len() >= 2);

    // Shredded: the unwrapped keys leave memory within a sweep, and nothing opens any more.
    store.shred(&acme()).await.unwrap();
    wait_for(
        "the cache to drop acme's keys",
        Duration::from_secs(5),
        || async { (cache.unwrapped_len() == 0).then_some(()) },
    )
    .await;
    // A shredded tenant is not one without encryption: nothing of it is sealed — or passed on
    // in clear — until it has new keys.
    assert!(cache.is_on(&acme()));
    let err = cache.seal(&acme(), ENVELOPE, b"x").unwrap_err();
    assert!(err.to_string().contains("shredded"), "{err}");
    for (h, payload) in [(&h, &payload), (&h2, &payload2)] {
        let err = cache
            .open(&acme(), ENVELOPE, Some(h), payload)
            .await
            .unwrap_err();
        assert!(
            matches!(err, OpenError::Refused(CryptError::Shredded { .. })),
            "{err}"
        );
        assert_eq!(
            err.dlq_code(),
            Some(switchyard_dlq::DlqCode::TenantShredded)
        );
    }

    // Another tenant that never had keys: a message claiming a seal is "not encrypted".
    let globex = TenantId::new("globex").unwrap();
    let err = cache
        .open(&globex, ENVELOPE, Some(&h), &payload)
        .await
        .unwrap_err();
    assert!(matches!(err, OpenError::NotEncrypted { .. }), "{err}");
    // Half a pair, or a malformed one, is a producer's own headers for such a tenant: the
    // payload is taken as it is, not judged tampered. For acme (shredded) it is refused.
    for (name, value) in [
        (switchyard_crypt::KEY_HEADER, "x"),
        (switchyard_crypt::NONCE_HEADER, "not base64 at all"),
    ] {
        let mut noise = HeaderMap::new();
        noise.insert(name, value);
        assert_eq!(
            cache
                .open(
                    &globex,
                    ENVELOPE,
                    Some(&noise),
                    &Bytes::from_static(b"plain")
                )
                .await
                .unwrap(),
            Opened::Plain(Bytes::from_static(b"plain")),
            "{name}: {value}"
        );
        let err = cache
            .open(
                &acme(),
                ENVELOPE,
                Some(&noise),
                &Bytes::from_static(b"plain"),
            )
            .await
            .unwrap_err();
        assert!(
            matches!(err, OpenError::Refused(CryptError::BadHeader { .. })),
            "{err}"
        );
    }

    // A service without the KEK refuses to seal for a tenant with encryption on.
    store.enable(&acme(), &ring(1), now()).await.unwrap();
    let keyless = KeyCache::start(kv, None, shutdown.clone());
    // Loaded means loaded, even for a bucket whose stream reports no values after a purge and
    // a new record (what nats-server does right after a shred and an enable).
    keyless.wait_loaded().await;
    assert!(keyless.is_on(&acme()));
    let err = keyless.seal(&acme(), ENVELOPE, b"x").unwrap_err();
    assert!(err.to_string().contains("kek_file"), "{err}");
    shutdown.cancel();
}
