//! What a deployment's backup holds, and in which order: every declared shared stream, every
//! tenant's own stream that exists, then every declared bucket; and the topology's hash.
//!
//! The order is what makes a backup of a running pipeline lose nothing: streams are taken
//! upstream first (`INGRESS_<tenant>`, `IDEMPOTENCY`, `BACKPRESSURE_<shard>`, `EGRESS`, `DLQ`), so a
//! message that moves on while the backup runs is caught again downstream (at worst twice,
//! never not at all); buckets come after every stream, so the data keys of `tenant-keys` cover
//! every payload a stream snapshot sealed with them (a key is stored before its first use).

use futures::TryStreamExt;
use serde::Serialize;
use sha2::{Digest, Sha256};
use switchyard_topology::{ResolvedTopology, bucket_stream};

use crate::BackupError;
use crate::manifest::ItemKind;

/// One stream to back up (or restore).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Planned {
    /// Stream or bucket.
    pub kind: ItemKind,
    /// The JetStream stream name (`KV_<bucket>` for a bucket).
    pub stream: String,
}

/// Every stream of the deployment in backup order, from what exists on the server: declared
/// streams and buckets that are missing are left out (the manifest lists what was there).
///
/// # Errors
/// [`BackupError::JetStream`] when the server's stream list cannot be read.
pub async fn plan(
    js: &async_nats::jetstream::Context,
    topology: &ResolvedTopology,
) -> Result<Vec<Planned>, BackupError> {
    let existing: std::collections::BTreeSet<String> = js
        .stream_names()
        .try_collect()
        .await
        .map_err(|e| BackupError::js("listing streams", e))?;
    let mut planned = Vec::new();
    // Tenants' own streams first: they are the pipeline's first stage.
    planned.extend(
        existing
            .iter()
            .filter(|name| topology.tenant_of_stream(name).is_some())
            .map(|name| Planned {
                kind: ItemKind::Stream,
                stream: name.clone(),
            }),
    );
    planned.extend(
        topology
            .streams
            .iter()
            .map(|s| &s.config.name)
            .filter(|name| existing.contains(*name))
            .map(|name| Planned {
                kind: ItemKind::Stream,
                stream: name.clone(),
            }),
    );
    planned.extend(
        topology
            .buckets
            .iter()
            .map(|b| bucket_stream(&b.config.bucket))
            .filter(|name| existing.contains(name))
            .map(|stream| Planned {
                kind: ItemKind::Bucket,
                stream,
            }),
    );
    Ok(planned)
}

/// The part of a bucket's resolved config that the hash covers.
#[derive(Serialize)]
struct BucketShape<'a> {
    bucket: &'a str,
    history: i64,
    max_age_secs: u64,
    max_bytes: i64,
    replicas: usize,
}

/// SHA-256 (lowercase hex) of the resolved topology: every stream, template, consumer and
/// bucket config as this build would provision them. Two deployments with the same hash were
/// provisioned from the same declarations, namespace and replica count.
pub fn topology_hash(topology: &ResolvedTopology) -> String {
    let mut hasher = Sha256::new();
    let mut feed = |value: serde_json::Result<Vec<u8>>| {
        // Serializing these plain configs cannot fail; an error would only hash as absent.
        hasher.update(value.unwrap_or_default());
        hasher.update(b"\n");
    };
    for s in topology.streams.iter().chain(&topology.tenant_streams) {
        feed(serde_json::to_vec(&s.config));
    }
    for c in topology.consumers.iter().chain(&topology.tenant_consumers) {
        feed(serde_json::to_vec(&(&c.stream, &c.config)));
    }
    for b in &topology.buckets {
        feed(serde_json::to_vec(&BucketShape {
            bucket: &b.config.bucket,
            history: b.config.history,
            max_age_secs: b.config.max_age.as_secs(),
            max_bytes: b.config.max_bytes,
            replicas: b.config.num_replicas,
        }));
    }
    format!("{:x}", hasher.finalize())
}

/// The replica count the target deployment gives `stream` (from its resolved topology), or
/// `None` for a stream it does not declare.
pub fn replicas_for(topology: &ResolvedTopology, stream: &str) -> Option<usize> {
    if let Some(s) = topology.streams.iter().find(|s| s.config.name == stream) {
        return Some(s.config.num_replicas);
    }
    if let Some((name, _)) = topology.tenant_of_stream(stream) {
        return topology
            .tenant_streams
            .iter()
            .find(|s| s.base == name.base())
            .map(|s| s.config.num_replicas);
    }
    topology
        .buckets
        .iter()
        .find(|b| bucket_stream(&b.config.bucket) == stream)
        .map(|b| b.config.num_replicas)
}

#[cfg(test)]
mod tests {
    use super::*;
    use switchyard_topology::DeploymentConfig;

    fn resolved(replicas: usize) -> ResolvedTopology {
        DeploymentConfig {
            replicas: Some(replicas),
            ..Default::default()
        }
        .resolve()
        .unwrap()
    }

    #[test]
    fn the_hash_follows_the_topology() {
        assert_eq!(topology_hash(&resolved(1)), topology_hash(&resolved(1)));
        assert_ne!(topology_hash(&resolved(1)), topology_hash(&resolved(3)));
    }

    #[test]
    fn replicas_come_from_the_target_deployment() {
        let t = resolved(3);
        let dlq = t.streams.iter().find(|s| s.base == "DLQ").unwrap();
        assert_eq!(replicas_for(&t, &dlq.config.name), Some(3));
        assert_eq!(replicas_for(&t, "INGRESS_acme"), Some(3));
        assert_eq!(replicas_for(&t, "KV_tenant-keys"), Some(3));
        assert_eq!(replicas_for(&t, "SOMEONE_ELSES"), None);
    }
}
