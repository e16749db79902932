//! The tenant registry record: whether a tenant may send, and its own limits.

use serde::{Deserialize, Serialize};

/// A tenant's entry in the `tenants` bucket (JSON). A tenant without an entry is unknown and
/// its messages are dead-lettered with `unknown_tenant` (unless ingress is configured to
/// accept unregistered tenants).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TenantRecord {
    /// Whether the tenant may send (`false` → `tenant_disabled`).
    pub enabled: bool,
    /// The tenant's own payload limit in bytes, below the ingress default (optional).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_payload_bytes: Option<usize>,
    /// The tenant's ingress quota in bytes: what its own ingress stream may hold accepted and
    /// not yet read (optional; default: the topology's `INGRESS` `max_bytes`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub quota_bytes: Option<i64>,
    /// The tenant's ingress quota in messages (optional; default: the topology's `max_msgs`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub quota_msgs: Option<i64>,
}

impl TenantRecord {
    /// An enabled tenant with default limits.
    pub fn enabled() -> Self {
        Self {
            enabled: true,
            max_payload_bytes: None,
            quota_bytes: None,
            quota_msgs: None,
        }
    }
}
