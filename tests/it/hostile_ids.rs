//! Hostile ids through a real KV bucket and real subjects: keys are accepted and come back
//! equal; a tenant's wildcard receives exactly that tenant's messages.

use std::collections::BTreeSet;
use std::time::Duration;

use futures::StreamExt;
use switchyard_envelope::headers;
use switchyard_keys::kv::tenant_filter;
use switchyard_keys::{
    Address, IdempotencyKey, KvKey, MsgId, PlatformId, RouteKey, RouteTeam, TeamId, TenantId,
};
use switchyard_subjects::{InputStage, Namespace, StageSubject, SubjectKind};
use switchyard_testkit::NatsServer;
use switchyard_topology::{DeploymentConfig, provision};

/// Producer message ids chosen to break naive key and subject building.
fn hostile_msg_ids() -> Vec<String> {
    let mut ids: Vec<String> = [
        ".",
        "..",
        "a.b",
        "a..b",
        ".leading",
        "trailing.",
        "*",
        ">",
        "a.*",
        "a.>",
        "a b",
        "tab\there",
        "x:y",
        "tenant:platform:msg",
        "a/b",
        "/",
        "=",
        "=3D",
        "%2E",
        "🦀 emoji ✓",
        "$KV.idempotency.x",
        "_INBOX.>",
        "ünïcödé",
        "\"quoted\"",
        "semi;colon",
        "back\\slash",
    ]
    .into_iter()
    .map(str::to_owned)
    .collect();
    ids.push("x".repeat(1024));
    ids.push("🦀".repeat(256)); // 1 KiB of 4-byte characters: the worst case, 3 KiB encoded
    ids.push(".".repeat(1024));
    ids
}

#[test]
fn ids_a_header_cannot_carry_are_refused() {
    for raw in ["a\u{0}nul", "cr\rlf", "line\nfeed", " padded", "padded "] {
        assert!(MsgId::new(raw).is_err(), "{raw:?} accepted as a msg id");
    }
}

#[test]
fn hostile_ids_cannot_be_tenant_team_or_platform_ids() {
    for raw in hostile_msg_ids() {
        assert!(
            TenantId::new(raw.as_str()).is_err(),
            "{raw:?} accepted as a tenant id"
        );
        assert!(
            TeamId::new(raw.as_str()).is_err(),
            "{raw:?} accepted as a team id"
        );
        assert!(
            PlatformId::new(raw.as_str()).is_err(),
            "{raw:?} accepted as a platform id"
        );
    }
}

#[tokio::test]
async fn hostile_msg_ids_round_trip_through_a_real_kv_bucket() {
    let server = NatsServer::start().await;
    let js = async_nats::jetstream::new(server.client().await);
    let topology = DeploymentConfig::default().resolve().unwrap();
    provision(&js, &topology, false).await.unwrap();
    let kv = js
        .get_key_value(
            topology
                .bucket_name(switchyard_topology::BucketName::Idempotency)
                .unwrap(),
        )
        .await
        .unwrap();

    let acme = TenantId::new("acme").unwrap();
    let acme_eu = TenantId::new("acme-eu").unwrap();
    let platform = PlatformId::new("slack").unwrap();
    let mut expected = BTreeSet::new();
    for tenant in [&acme, &acme_eu] {
        for raw in hostile_msg_ids() {
            let key = IdempotencyKey {
                tenant: tenant.clone(),
                platform: platform.clone(),
                msg_id: MsgId::new(raw).unwrap(),
            };
            let rendered = key.render();
            kv.create(&rendered, rendered.clone().into())
                .await
                .unwrap_or_else(|e| panic!("KV refused {rendered:?}: {e}"));
            let stored = kv.get(&rendered).await.unwrap().expect("value stored");
            assert_eq!(stored, rendered.as_bytes());
            // A second claim of the same id is refused: the key is exactly one key.
            assert!(
                kv.create(&rendered, "again".into()).await.is_err(),
                "{rendered:?} claimed twice"
            );
            expected.insert(rendered);
        }
    }

    // Listing returns every key, each parsing back to the id it was built from.
    let mut keys = kv.keys().await.unwrap();
    let mut listed = BTreeSet::new();
    while let Some(key) = keys.next().await {
        listed.insert(key.unwrap());
    }
    assert_eq!(listed, expected);
    let mut decoded: Vec<String> = listed
        .iter()
        .map(|k| IdempotencyKey::parse(k).unwrap())
        .filter(|k| k.tenant == acme)
        .map(|k| k.msg_id.as_str().to_owned())
        .collect();
    let mut original = hostile_msg_ids();
    decoded.sort();
    original.sort();
    assert_eq!(decoded, original);

    // The per-tenant filter sees exactly one tenant's keys (`acme` is a prefix of `acme-eu`).
    let mut watch = kv.watch_with_history(tenant_filter(&acme)).await.unwrap();
    let mut seen = BTreeSet::new();
    while seen.len() < original.len() {
        let entry = tokio::time::timeout(Duration::from_secs(10), watch.next())
            .await
            .expect("watch delivers history")
            .unwrap()
            .unwrap();
        let key = IdempotencyKey::parse(&entry.key).unwrap();
        assert_eq!(key.tenant, acme, "filter leaked {}", entry.key);
        seen.insert(entry.key);
    }
}

#[tokio::test]
async fn route_keys_with_default_team_round_trip_through_kv() {
    let server = NatsServer::start().await;
    let js = async_nats::jetstream::new(server.client().await);
    let topology = DeploymentConfig::default().resolve().unwrap();
    provision(&js, &topology, false).await.unwrap();
    let kv = js
        .get_key_value(
            topology
                .bucket_name(switchyard_topology::BucketName::Routes)
                .unwrap(),
        )
        .await
        .unwrap();
    let address = Address::parse("acme", "ops", "slack").unwrap();
    for key in RouteKey::lookup_order(&address) {
        kv.put(key.render(), "{}".into()).await.unwrap();
    }
    let mut keys = kv.keys().await.unwrap();
    let mut parsed = Vec::new();
    while let Some(key) = keys.next().await {
        parsed.push(RouteKey::parse(&key.unwrap()).unwrap());
    }
    parsed.sort();
    assert_eq!(parsed.len(), 2);
    assert!(parsed.iter().any(|k| k.team == RouteTeam::Any));
}

#[tokio::test]
async fn a_tenant_wildcard_receives_exactly_that_tenants_messages() {
    let server = NatsServer::start().await;
    let client = server.client().await;
    let ns = Namespace::default();
    let tenants = ["acme", "acme-eu", "acme_eu", "acm", "a", "acme0"];
    let acme = TenantId::new("acme").unwrap();
    let mut sub = client
        .subscribe(ns.stage_filter(InputStage::Ingress, Some(&acme)))
        .await
        .unwrap();
    client.flush().await.unwrap();

    let mut sent_to_acme = BTreeSet::new();
    for tenant in tenants {
        for (i, raw) in hostile_msg_ids().into_iter().enumerate() {
            let subject = StageSubject {
                stage: InputStage::Ingress,
                address: Address::parse(tenant, &format!("team{}", i % 3), "slack").unwrap(),
            };
            let mut h = async_nats::HeaderMap::new();
            h.insert(headers::NATS_MSG_ID, raw.as_str());
            client
                .publish_with_headers(subject.format(&ns), h, tenant.into())
                .await
                .unwrap();
            if tenant == "acme" {
                sent_to_acme.insert(raw);
            }
        }
    }
    client.flush().await.unwrap();

    let mut received = BTreeSet::new();
    while received.len() < sent_to_acme.len() {
        let msg = tokio::time::timeout(Duration::from_secs(10), sub.next())
            .await
            .expect("message")
            .unwrap();
        let parsed = StageSubject::parse(&ns, &msg.subject).unwrap();
        assert_eq!(parsed.address.tenant, acme);
        assert_eq!(&msg.payload[..], b"acme");
        let id = msg
            .headers
            .as_ref()
            .and_then(|h| h.get(headers::NATS_MSG_ID))
            .unwrap()
            .as_str()
            .to_owned();
        received.insert(id);
    }
    assert_eq!(
        received, sent_to_acme,
        "header values must arrive unchanged"
    );
    // Nothing else arrives: a sentinel published last for acme is the very next message.
    let sentinel = StageSubject {
        stage: InputStage::Ingress,
        address: Address::parse("acme", "ops", "end").unwrap(),
    };
    client
        .publish(sentinel.format(&ns), "end".into())
        .await
        .unwrap();
    let next = tokio::time::timeout(Duration::from_secs(10), sub.next())
        .await
        .expect("sentinel")
        .unwrap();
    assert_eq!(&next.payload[..], b"end");
}
