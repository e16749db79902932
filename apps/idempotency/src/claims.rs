//! Claims of (tenant, platform, producer msg id) in the `idempotency` bucket.
//!
//! A claim is an atomic create of the key with the envelope id as its value and a per-key TTL
//! (`Nats-TTL`). The outcome tells first sightings from duplicates, and also recognises the
//! *same* message seen again (a crash between claiming and acking): the value is that
//! message's own envelope id, so it is handed on again instead of being dropped.
//!
//! Re-creating a key over a delete or expiry marker uses the marker's revision as the expected
//! sequence **and keeps the TTL** (async-nats's `create_with_ttl` falls back to an update
//! without it, which would make such a key live until the bucket's max age).

use std::collections::{HashMap, VecDeque};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use async_nats::HeaderMap;
use async_nats::jetstream::context::PublishErrorKind;
use async_nats::jetstream::{self, kv};
use switchyard_envelope::EnvelopeId;
use switchyard_keys::{IdempotencyKey, KvKey};

/// What a claim found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Claim {
    /// Nobody had claimed the id: this message is the first sighting.
    First,
    /// The id is claimed by this very message (redelivered after a crash): hand it on again.
    SameMessage,
    /// The id is claimed by another message: a duplicate.
    Duplicate {
        /// The envelope id of the first sighting.
        first: String,
    },
}

/// The claim could not be decided because KV did not answer.
#[derive(Debug, Clone, thiserror::Error)]
#[error("kv unavailable: {0}")]
pub struct Unavailable(pub String);

/// Claims in a real KV bucket.
pub struct KvClaims {
    js: jetstream::Context,
    kv: kv::Store,
    ttl: Duration,
}

impl KvClaims {
    /// Claims in `kv`, each claim living `ttl`.
    pub fn new(js: jetstream::Context, kv: kv::Store, ttl: Duration) -> Self {
        Self { js, kv, ttl }
    }

    /// Publishes the claim expecting `revision` as the key's last sequence (0 = no key).
    async fn write(&self, key: &str, id: &str, revision: u64) -> Result<bool, Unavailable> {
        // The bucket's own put subject (`$KV.<bucket>.<key>`), as async-nats builds it.
        let subject = format!(
            "{}{key}",
            self.kv.put_prefix.as_ref().unwrap_or(&self.kv.prefix)
        );
        let mut h = HeaderMap::new();
        h.insert("Nats-Expected-Last-Subject-Sequence", revision.to_string());
        h.insert("Nats-TTL", self.ttl.as_secs().max(1).to_string());
        let ack = match self
            .js
            .publish_with_headers(subject, h, id.to_owned().into())
            .await
        {
            Ok(ack) => ack.await,
            Err(e) => Err(e),
        };
        match ack {
            Ok(_) => Ok(true),
            Err(e) if e.kind() == PublishErrorKind::WrongLastSequence => Ok(false),
            Err(e) => Err(Unavailable(e.to_string())),
        }
    }

    /// Claims `key` for the message `id`.
    pub async fn claim(&self, key: &IdempotencyKey, id: EnvelopeId) -> Result<Claim, Unavailable> {
        let rendered = key.render();
        let id = id.to_string();
        let mut expected = 0;
        // Three rounds cover the races: the key expires, or another replica re-creates it,
        // between our write and our read.
        for _ in 0..3 {
            if self.write(&rendered, &id, expected).await? {
                return Ok(Claim::First);
            }
            match self
                .kv
                .entry(&rendered)
                .await
                .map_err(|e| Unavailable(e.to_string()))?
            {
                Some(entry) if entry.operation == kv::Operation::Put => {
                    let first = String::from_utf8_lossy(&entry.value).into_owned();
                    return Ok(if first == id {
                        Claim::SameMessage
                    } else {
                        Claim::Duplicate { first }
                    });
                }
                // A delete or expiry marker: re-create over it, keeping the TTL.
                Some(marker) => expected = marker.revision,
                None => expected = 0,
            }
        }
        Err(Unavailable(format!(
            "key {rendered:?} kept changing while claiming"
        )))
    }
}

/// The local fallback: an in-memory window of claims on this replica only.
pub struct LocalClaims {
    ttl: Duration,
    max_keys: usize,
    inner: Mutex<LocalWindow>,
}

#[derive(Default)]
struct LocalWindow {
    claims: HashMap<String, (String, Instant)>,
    order: VecDeque<(String, Instant)>,
}

impl LocalClaims {
    /// A window of `ttl`, bounded to `max_keys` (oldest evicted first).
    pub fn new(ttl: Duration, max_keys: usize) -> Self {
        Self {
            ttl,
            max_keys: max_keys.max(1),
            inner: Mutex::new(LocalWindow::default()),
        }
    }

    /// Claims `key` for `id` in the window.
    pub fn claim(&self, key: &IdempotencyKey, id: EnvelopeId) -> Claim {
        let now = Instant::now();
        let rendered = key.render();
        let id = id.to_string();
        let Ok(mut window) = self.inner.lock() else {
            return Claim::First;
        };
        while let Some((oldest, at)) = window.order.front().cloned() {
            let expired = now.duration_since(at) >= self.ttl;
            if !expired && window.claims.len() < self.max_keys {
                break;
            }
            window.order.pop_front();
            if window
                .claims
                .get(&oldest)
                .is_some_and(|(_, claimed)| *claimed == at)
            {
                window.claims.remove(&oldest);
            }
        }
        match window.claims.get(&rendered) {
            Some((first, _)) if *first == id => Claim::SameMessage,
            Some((first, _)) => Claim::Duplicate {
                first: first.clone(),
            },
            None => {
                window.claims.insert(rendered.clone(), (id, now));
                window.order.push_back((rendered, now));
                Claim::First
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use switchyard_keys::MsgId;

    use super::*;

    fn key(id: &str) -> IdempotencyKey {
        IdempotencyKey {
            tenant: "acme".parse().unwrap(),
            platform: "slack".parse().unwrap(),
            msg_id: MsgId::new(id).unwrap(),
        }
    }

    fn envelope_id(n: u128) -> EnvelopeId {
        EnvelopeId(uuid::Uuid::from_u128(n))
    }

    #[test]
    fn local_window_tells_first_same_and_duplicate() {
        let local = LocalClaims::new(Duration::from_secs(60), 10);
        assert_eq!(local.claim(&key("a"), envelope_id(1)), Claim::First);
        assert_eq!(local.claim(&key("a"), envelope_id(1)), Claim::SameMessage);
        assert!(matches!(
            local.claim(&key("a"), envelope_id(2)),
            Claim::Duplicate { .. }
        ));
    }

    #[test]
    fn local_window_is_bounded() {
        let local = LocalClaims::new(Duration::from_secs(60), 2);
        for (i, id) in ["a", "b", "c"].into_iter().enumerate() {
            assert_eq!(local.claim(&key(id), envelope_id(i as u128)), Claim::First);
        }
        // "a" was evicted to keep the bound: it is a first sighting again.
        assert_eq!(local.claim(&key("a"), envelope_id(9)), Claim::First);
    }
}
