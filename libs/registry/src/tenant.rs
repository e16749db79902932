//! The tenant registry record: whether a tenant may send, and its own limits.

use serde::{Deserialize, Serialize};

/// A tenant's entry in the `tenants` bucket (JSON). A tenant without an entry is unknown and
/// its messages are dead-lettered with `unknown_tenant` (unless ingress is configured to
/// accept unregistered tenants).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TenantRecord {
    /// A display name for people (`株式会社アクメ`, `Acme Corp`), shown by the CLI next to
    /// the id; the id stays the key everywhere. Optional; checked by [`check_name`].
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
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
    /// What egress does with a message none of the tenant's destinations (nor a route) takes,
    /// when the tenant has destinations (default: dead-letter it `no_subscriber`).
    #[serde(default, skip_serializing_if = "is_dead_letter")]
    pub unmatched: crate::Unmatched,
    /// The rate limit of each of the tenant's destinations that has none of its own (optional:
    /// none).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub destination_rate_limit: Option<crate::RateLimit>,
}

fn is_dead_letter(unmatched: &crate::Unmatched) -> bool {
    *unmatched == crate::Unmatched::DeadLetter
}

impl TenantRecord {
    /// An enabled tenant with default limits.
    pub fn enabled() -> Self {
        Self {
            enabled: true,
            name: None,
            max_payload_bytes: None,
            quota_bytes: None,
            quota_msgs: None,
            unmatched: crate::Unmatched::DeadLetter,
            destination_rate_limit: None,
        }
    }
}

/// The longest display name, in characters.
pub const MAX_NAME_CHARS: usize = 100;

/// Why a display name was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TenantNameError {
    /// Empty, or only whitespace.
    #[error("a tenant name must not be empty")]
    Empty,
    /// Longer than [`MAX_NAME_CHARS`].
    #[error("a tenant name has at most {MAX_NAME_CHARS} characters, this one has {0}")]
    TooLong(usize),
    /// Starts or ends with whitespace (names are compared and shown as given).
    #[error("a tenant name must not start or end with whitespace")]
    Padded,
    /// Holds a control character (a newline, ESC…) or an invisible formatting character (a
    /// bidirectional override, a zero-width space: [`switchyard_keys::display`]), which could
    /// rewrite an operator's terminal or make the name read as another.
    #[error(
        "a tenant name must not contain control or invisible formatting characters ({0:?} found)"
    )]
    Control(char),
}

/// Checks a display name: 1 to [`MAX_NAME_CHARS`] characters, any script (wide characters
/// included), no control or invisible formatting characters, no surrounding whitespace.
///
/// # Errors
/// [`TenantNameError`] naming the rule the name breaks.
pub fn check_name(name: &str) -> Result<(), TenantNameError> {
    if name.trim().is_empty() {
        return Err(TenantNameError::Empty);
    }
    if name.trim() != name {
        return Err(TenantNameError::Padded);
    }
    if let Some(c) = name
        .chars()
        .find(|c| c.is_control() || switchyard_keys::display::is_invisible_format(*c))
    {
        return Err(TenantNameError::Control(c));
    }
    match name.chars().count() {
        n if n > MAX_NAME_CHARS => Err(TenantNameError::TooLong(n)),
        _ => Ok(()),
    }
}

#[cfg(test)]
mod name_tests {
    use super::*;

    #[test]
    fn names_in_any_script_pass_and_control_characters_empty_padded_or_long_names_fail() {
        assert_eq!(check_name("株式会社アクメ"), Ok(()));
        assert_eq!(check_name("Acme Corp"), Ok(()));
        assert_eq!(check_name(&"é".repeat(MAX_NAME_CHARS)), Ok(()));
        assert_eq!(check_name(""), Err(TenantNameError::Empty));
        assert_eq!(check_name("  "), Err(TenantNameError::Empty));
        assert_eq!(check_name(" Acme"), Err(TenantNameError::Padded));
        assert_eq!(
            check_name("Acme\x1b[2J"),
            Err(TenantNameError::Control('\x1b'))
        );
        assert_eq!(
            check_name("two\nlines"),
            Err(TenantNameError::Control('\n'))
        );
        assert_eq!(
            check_name("Glo\u{202E}xeb"),
            Err(TenantNameError::Control('\u{202E}'))
        );
        assert_eq!(
            check_name(&"a".repeat(MAX_NAME_CHARS + 1)),
            Err(TenantNameError::TooLong(MAX_NAME_CHARS + 1))
        );
    }

    #[test]
    fn a_record_without_a_name_serialises_as_before() {
        let json = serde_json::to_string(&TenantRecord::enabled()).unwrap();
        assert_eq!(json, r#"{"enabled":true}"#);
    }
}
