//! Errors of loading, provisioning and reporting on the topology.

/// Why the topology could not be loaded, provisioned or reported on.
#[derive(Debug, thiserror::Error)]
pub enum TopologyError {
    /// The declaration file is not valid TOML or has unknown fields.
    #[error("invalid topology file: {0}")]
    Parse(#[from] toml::de::Error),
    /// The declarations parse but break a rule (names, references, bounds).
    #[error("invalid topology: {0}")]
    Invalid(String),
    /// A JetStream request failed.
    #[error("{action}")]
    JetStream {
        /// What was being done (`creating stream INGRESS`, …).
        action: String,
        /// The client's error.
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },
}

impl TopologyError {
    pub(crate) fn js(
        action: impl Into<String>,
        source: impl std::error::Error + Send + Sync + 'static,
    ) -> Self {
        Self::JetStream {
            action: action.into(),
            source: Box::new(source),
        }
    }
}
