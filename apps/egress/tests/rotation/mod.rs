//! Signing-secret rotation with an overlap window: during the overlap every delivery carries a
//! signature for the new secret and one for the old, so receivers holding either verify it;
//! once the old secret expires, it signs nothing. The receivers here follow the Standard
//! Webhooks spec, not egress's code.

use std::time::Duration;

use axum::http::HeaderMap;
use base64::Engine;
use bytes::Bytes;
use hmac::{Hmac, Mac};
use sha2::Sha256;
use switchyard_registry::{Route, WebhookSecret};
use switchyard_testkit::wait_for;

use crate::support::{Harness, SECRET, Sink, address, webhook};

const LONG: Duration = Duration::from_secs(30);
const NEW_SECRET: &str = "whsec_C2FVsBQIhrscChlQIMV+b5sSYspob7oD";

/// What a Standard Webhooks receiver checks before any key: the `webhook-id`,
/// `webhook-timestamp` (within five minutes) and `webhook-signature` headers. Returns the signed
/// content, `{id}.{timestamp}.{body}`, and the decoded signatures of `version` from the
/// space-separated `version,base64` list.
fn signed(headers: &HeaderMap, body: &[u8], version: &str) -> Option<(Vec<u8>, Vec<Vec<u8>>)> {
    let text = |name: &str| headers.get(name).and_then(|v| v.to_str().ok());
    let (id, timestamp, signatures) = (
        text("webhook-id")?,
        text("webhook-timestamp")?,
        text("webhook-signature")?,
    );
    let sent = timestamp.parse::<i64>().ok()?;
    if (time::OffsetDateTime::now_utc().unix_timestamp() - sent).abs() > 300 {
        return None;
    }
    let b64 = base64::engine::general_purpose::STANDARD;
    let decoded = signatures
        .split(' ')
        .filter_map(|entry| entry.split_once(','))
        .filter(|(v, _)| *v == version)
        .filter_map(|(_, signature)| b64.decode(signature).ok())
        .collect();
    let content = [id.as_bytes(), b".", timestamp.as_bytes(), b".", body].concat();
    Some((content, decoded))
}

/// A receiver holding one secret: a `v1` signature is HMAC-SHA256 of the signed content keyed
/// with the base64 after `whsec_`, compared in constant time. Any that verifies is enough.
fn receiver_accepts(secret: &str, headers: &HeaderMap, body: &[u8]) -> bool {
    let b64 = base64::engine::general_purpose::STANDARD;
    let (Some((content, signatures)), Some(key)) = (
        signed(headers, body, "v1"),
        secret
            .strip_prefix("whsec_")
            .and_then(|k| b64.decode(k).ok()),
    ) else {
        return false;
    };
    signatures.iter().any(|signature| {
        let Ok(mut mac) = Hmac::<Sha256>::new_from_slice(&key) else {
            return false;
        };
        mac.update(&content);
        mac.verify_slice(signature).is_ok()
    })
}

/// Publishes `n` messages and waits until `path` has received `total` requests.
async fn deliver(h: &Harness, sink: &Sink, path: &str, n: usize, total: usize) {
    for i in 0..n {
        h.publish(
            &address("acme", "ops", "slack"),
            Bytes::from(format!("{{\"n\":{i}}}")),
            Some("application/json"),
        )
        .await;
    }
    wait_for("the deliveries", LONG, || async {
        (sink.count(path) >= total).then_some(())
    })
    .await;
}

#[tokio::test]
async fn during_an_overlap_receivers_holding_either_secret_verify_every_delivery() {
    let sink = Sink::start().await;
    let mut h = Harness::new().await;
    let original = webhook(&sink, "/hook");
    h.put_route("acme.ops.slack", &original).await;
    h.start(|_| {}).await;

    deliver(&h, &sink, "/hook", 3, 3).await;
    for r in sink.requests("/hook") {
        assert!(receiver_accepts(SECRET, &r.headers, &r.body));
        assert!(!receiver_accepts(NEW_SECRET, &r.headers, &r.body));
    }

    // Rotate with a one-hour overlap; egress follows the route's KV record.
    let Route::Webhook(mut rotated) = original.clone() else {
        panic!("a webhook route")
    };
    rotated
        .rotate(
            WebhookSecret(NEW_SECRET.into()),
            time::Duration::hours(1),
            time::OffsetDateTime::now_utc(),
        )
        .unwrap();
    h.put_route("acme.ops.slack", &Route::Webhook(rotated.clone()))
        .await;
    // Until egress's copy of the routes has the rotation, a delivery is signed by the old
    // secret alone; send one at a time until one carries both signatures.
    let mut total = 3;
    wait_for("a delivery signed with the new secret", LONG, || {
        total += 1;
        let expected = total;
        let (h, sink) = (&h, &sink);
        async move {
            deliver(h, sink, "/hook", 1, expected).await;
            let last = sink.requests("/hook").pop()?;
            receiver_accepts(NEW_SECRET, &last.headers, &last.body).then_some(())
        }
    })
    .await;
    let before = sink.count("/hook");
    deliver(&h, &sink, "/hook", 20, before + 20).await;
    for r in &sink.requests("/hook")[before..] {
        let signatures = r.headers["webhook-signature"].to_str().unwrap();
        assert_eq!(signatures.split(' ').count(), 2, "{signatures}");
        assert!(
            receiver_accepts(SECRET, &r.headers, &r.body),
            "old: {signatures}"
        );
        assert!(
            receiver_accepts(NEW_SECRET, &r.headers, &r.body),
            "new: {signatures}"
        );
    }

    // Once the overlap is over, the old secret signs nothing.
    rotated.previous_secrets[0].expires_at =
        time::OffsetDateTime::now_utc() - time::Duration::SECOND;
    h.put_route("acme.ops.slack", &Route::Webhook(rotated))
        .await;
    let mut total = sink.count("/hook");
    wait_for("a delivery signed by the new secret alone", LONG, || {
        total += 1;
        let expected = total;
        let (h, sink) = (&h, &sink);
        async move {
            deliver(h, sink, "/hook", 1, expected).await;
            let last = sink.requests("/hook").pop()?;
            (!receiver_accepts(SECRET, &last.headers, &last.body)).then_some(())
        }
    })
    .await;
    let before = sink.count("/hook");
    deliver(&h, &sink, "/hook", 5, before + 5).await;
    for r in &sink.requests("/hook")[before..] {
        assert!(!receiver_accepts(SECRET, &r.headers, &r.body));
        assert!(receiver_accepts(NEW_SECRET, &r.headers, &r.body));
    }
}

/// A receiver holding only the route's public key (`whpk_…`): accepts when a `v1a` signature
/// verifies with Ed25519 over the signed content.
fn public_key_receiver_accepts(public: &str, headers: &HeaderMap, body: &[u8]) -> bool {
    let b64 = base64::engine::general_purpose::STANDARD;
    let (Some((content, signatures)), Some(public)) = (
        signed(headers, body, "v1a"),
        public
            .strip_prefix("whpk_")
            .and_then(|k| b64.decode(k).ok()),
    ) else {
        return false;
    };
    signatures.iter().any(|signature| {
        ring::signature::UnparsedPublicKey::new(&ring::signature::ED25519, &public)
            .verify(&content, signature)
            .is_ok()
    })
}

#[tokio::test]
async fn a_route_with_an_ed25519_key_adds_a_v1a_signature_its_public_key_verifies() {
    let sink = Sink::start().await;
    let mut h = Harness::new().await;
    let Route::Webhook(mut route) = webhook(&sink, "/hook") else {
        panic!("a webhook route")
    };
    let key =
        switchyard_registry::SigningKey("whsk_AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8=".into());
    let public = key.public_key().unwrap();
    route.signing_key = Some(key);
    h.put_route("acme.ops.slack", &Route::Webhook(route)).await;
    h.start(|_| {}).await;

    deliver(&h, &sink, "/hook", 5, 5).await;
    for r in sink.requests("/hook") {
        let signatures = r.headers["webhook-signature"].to_str().unwrap();
        assert!(signatures.contains(" v1a,"), "{signatures}");
        assert!(
            public_key_receiver_accepts(&public, &r.headers, &r.body),
            "{signatures}"
        );
        assert!(
            receiver_accepts(SECRET, &r.headers, &r.body),
            "v1 still signs"
        );
        let tampered = [&r.body[..], b" "].concat();
        assert!(!public_key_receiver_accepts(&public, &r.headers, &tampered));
    }
}
