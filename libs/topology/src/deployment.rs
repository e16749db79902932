//! The deployment settings every binary shares (`[deployment]` in each config): prefix,
//! replicas, bucket-name overrides and an optional topology file; resolved into a
//! [`ResolvedTopology`].

use std::collections::BTreeMap;
use std::path::PathBuf;

use serde::{Deserialize, Serialize};
use switchyard_keys::DeploymentPrefix;
use switchyard_subjects::Namespace;

use crate::{ResolvedTopology, Topology, TopologyError, TopologyOptions};

/// Settings that locate one deployment's subjects, streams and buckets.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct DeploymentConfig {
    /// Deployment prefix for subjects, streams and buckets (default: none).
    pub prefix: Option<DeploymentPrefix>,
    /// Replicas for streams and buckets when provisioning (default: 1; use 3 on a cluster).
    pub replicas: Option<usize>,
    /// Bucket base name → bucket name (`JS_KV_NAMESPACE_IDEMPOTENCY` sets `idempotency`,
    /// `JS_KV_NAMESPACE_BACKPRESSURE` sets `rate-limits`). Default: none.
    pub buckets: BTreeMap<String, String>,
    /// A topology file replacing the embedded `nats/topology.toml` (default: none).
    pub topology_file: Option<PathBuf>,
}

impl DeploymentConfig {
    /// Loads the declarations (embedded or from `topology_file`) and resolves them.
    pub fn resolve(&self) -> Result<ResolvedTopology, TopologyError> {
        let topology = match &self.topology_file {
            Some(path) => {
                let text = std::fs::read_to_string(path).map_err(|e| {
                    TopologyError::Invalid(format!("cannot read {}: {e}", path.display()))
                })?;
                Topology::from_toml(&text)?
            }
            None => Topology::embedded()?,
        };
        for base in self.buckets.keys() {
            if !topology.buckets.iter().any(|b| &b.name == base) {
                return Err(TopologyError::Invalid(format!(
                    "bucket override for undeclared bucket {base:?}"
                )));
            }
        }
        let options = TopologyOptions {
            namespace: Namespace::new(self.prefix.clone()),
            replicas: self.replicas.unwrap_or(1),
            bucket_overrides: self.buckets.clone(),
        };
        Ok(ResolvedTopology::resolve(&topology, &options))
    }
}
