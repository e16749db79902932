//! Claims of (tenant, platform, producer msg id) in the `idempotency` bucket.
//!
//! A claim is an atomic create of the key with the envelope id as its value — its 16 raw
//! bytes ([`claim_value`]; claims written as the 36-character text form are still read) — and
//! a per-key TTL (`Nats-TTL`). The outcome tells first sightings from duplicates, and also recognises the
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
use async_nats::jetstream::context::{PublishError, PublishErrorKind};
use async_nats::jetstream::{self, ErrorCode, kv};
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

/// Why a claim could not be decided.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ClaimError {
    /// KV did not answer (unreachable, timed out, bucket missing): the `kv_unavailable`
    /// policy decides.
    #[error("kv unavailable: {0}")]
    Unavailable(String),
    /// The bucket answered and refused the new claim because it is full (its `max_bytes` or
    /// `max_msgs`, or the server's storage): the message must wait for room, never be claimed
    /// anywhere else (a local claim would double).
    #[error("idempotency bucket full: {0}")]
    BucketFull(String),
}

/// The error of a refused claim write: [`ClaimError::BucketFull`] when JetStream says the
/// bucket (or the server's storage) is full — err_code 10077 with "maximum bytes exceeded" /
/// "maximum messages exceeded", or the server's storage, 10023 / 10047 —, else
/// [`ClaimError::Unavailable`].
pub fn classify(error: &PublishError) -> ClaimError {
    let server =
        std::error::Error::source(error).and_then(|s| s.downcast_ref::<jetstream::Error>());
    match server {
        Some(e) if is_full(e.error_code(), &e.to_string()) => ClaimError::BucketFull(e.to_string()),
        _ => ClaimError::Unavailable(error.to_string()),
    }
}

/// Whether a JetStream API error (its code and text) says the store is full.
pub fn is_full(code: ErrorCode, text: &str) -> bool {
    (code == ErrorCode::STREAM_STORE_FAILED
        && text.contains("maximum")
        && text.contains("exceeded"))
        || code == ErrorCode::INSUFFICIENT_RESOURCES
        || code == ErrorCode::STORAGE_RESOURCES_EXCEEDED
}

/// The stored value of a claim by `id`: its 16 raw bytes (the text form takes 36).
pub fn claim_value(id: EnvelopeId) -> [u8; 16] {
    *id.0.as_bytes()
}

/// The envelope id a stored claim value names: 16 raw bytes, or the text form written by
/// earlier versions. `None` for anything else.
pub fn claimed_by(value: &[u8]) -> Option<EnvelopeId> {
    match value.len() {
        16 => uuid::Uuid::from_slice(value).ok().map(EnvelopeId),
        _ => std::str::from_utf8(value)
            .ok()?
            .parse::<uuid::Uuid>()
            .ok()
            .map(EnvelopeId),
    }
}

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
    async fn write(&self, key: &str, id: EnvelopeId, revision: u64) -> Result<bool, ClaimError> {
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
            .publish_with_headers(subject, h, claim_value(id).to_vec().into())
            .await
        {
            Ok(ack) => ack.await,
            Err(e) => Err(e),
        };
        match ack {
            Ok(_) => Ok(true),
            Err(e) if e.kind() == PublishErrorKind::WrongLastSequence => Ok(false),
            Err(e) => Err(classify(&e)),
        }
    }

    /// Claims `key` for the message `id`.
    pub async fn claim(&self, key: &IdempotencyKey, id: EnvelopeId) -> Result<Claim, ClaimError> {
        let rendered = key.render();
        let mut expected = 0;
        // Three rounds cover the races: the key expires, or another replica re-creates it,
        // between our write and our read.
        for _ in 0..3 {
            if self.write(&rendered, id, expected).await? {
                return Ok(Claim::First);
            }
            match self
                .kv
                .entry(&rendered)
                .await
                .map_err(|e| ClaimError::Unavailable(e.to_string()))?
            {
                Some(entry) if entry.operation == kv::Operation::Put => {
                    return Ok(match claimed_by(&entry.value) {
                        Some(first) if first == id => Claim::SameMessage,
                        Some(first) => Claim::Duplicate {
                            first: first.to_string(),
                        },
                        None => Claim::Duplicate {
                            first: String::from_utf8_lossy(&entry.value).into_owned(),
                        },
                    });
                }
                // A delete or expiry marker: re-create over it, keeping the TTL.
                Some(marker) => expected = marker.revision,
                None => expected = 0,
            }
        }
        Err(ClaimError::Unavailable(format!(
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

    #[test]
    fn claim_values_are_16_raw_bytes_and_the_text_form_still_reads() {
        let id = envelope_id(0x0193_a1b2_c3d4_7e5f_8a9b_0c1d_2e3f_4a5b);
        assert_eq!(claim_value(id).len(), 16);
        assert_eq!(claimed_by(&claim_value(id)), Some(id));
        assert_eq!(claimed_by(id.to_string().as_bytes()), Some(id));
        assert_eq!(claimed_by(b"not an id"), None);
    }

    #[test]
    fn only_a_full_store_is_bucket_full() {
        assert!(is_full(
            ErrorCode::STREAM_STORE_FAILED,
            "maximum bytes exceeded (code 503, error code 10077)"
        ));
        assert!(is_full(
            ErrorCode::STREAM_STORE_FAILED,
            "maximum messages exceeded (code 503, error code 10077)"
        ));
        assert!(is_full(
            ErrorCode::INSUFFICIENT_RESOURCES,
            "insufficient resources"
        ));
        assert!(!is_full(
            ErrorCode::STREAM_STORE_FAILED,
            "some other store failure"
        ));
        assert!(!is_full(
            ErrorCode::STREAM_WRONG_LAST_SEQUENCE,
            "wrong last sequence"
        ));
    }
}
