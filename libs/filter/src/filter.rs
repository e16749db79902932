//! [`Filter`], the public face of the crate: parse and validate once, evaluate per message,
//! store and load as JSON.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Deserializer, Serialize, Serializer};
use serde_json::Value;

use crate::ast::Root;
use crate::error::{FilterError, FilterErrorKind};
use crate::eval::Budget;
use crate::{HeaderLookup, MAX_FILTER_BYTES, eval, parse};

/// A validated, compiled content filter (see the [crate docs](crate) for the language).
///
/// Build one with [`Filter::parse`], [`Filter::from_slice`] or `str::parse`; the default is
/// [`Filter::match_all`]. Serde writes it back as the JSON it was parsed from, header names
/// lowercased, and reads it with the same validation as [`Filter::parse`].
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Filter {
    /// The compiled filter.
    root: Root,
    /// Whether any clause reads the payload (else [`Filter::matches_payload`] skips parsing it).
    needs_body: bool,
}

impl Filter {
    /// The empty filter `{}`, which matches every message.
    pub fn match_all() -> Self {
        Self::default()
    }

    /// Validates a filter given as JSON and compiles it. The size bound applies to the value's
    /// compact JSON text.
    pub fn parse(value: &Value) -> Result<Self, FilterError> {
        let parsed = parse::parse(value)?;
        Ok(Self {
            root: parsed.root,
            needs_body: parsed.needs_body,
        })
    }

    /// Validates a filter given as JSON text and compiles it. The size bound applies to the
    /// text as given, before it is parsed.
    pub fn from_slice(bytes: &[u8]) -> Result<Self, FilterError> {
        if bytes.len() > MAX_FILTER_BYTES {
            let kind = FilterErrorKind::TooLarge {
                len: bytes.len(),
                max: MAX_FILTER_BYTES,
            };
            return Err(FilterError::new("filter".to_owned(), kind));
        }
        let value: Value = serde_json::from_slice(bytes).map_err(|e| {
            FilterError::new("filter".to_owned(), FilterErrorKind::NotJson(e.to_string()))
        })?;
        Self::parse(&value)
    }

    /// Whether this is the empty filter `{}`, which matches every message.
    pub fn is_match_all(&self) -> bool {
        self.root.clauses.is_empty()
    }

    /// Whether any clause reads the payload. When no destination's filter does, a caller need
    /// not parse the payload at all.
    pub fn needs_body(&self) -> bool {
        self.needs_body
    }

    /// Whether a message matches: `headers` are its headers, `body` its payload parsed as JSON,
    /// or `None` when the payload is not JSON (every `body` clause then fails). Parse the
    /// payload once per message and call this for each destination.
    pub fn matches<H: HeaderLookup + ?Sized>(&self, headers: &H, body: Option<&Value>) -> bool {
        eval::matches(&self.root, headers, body, &Budget::new(u64::MAX))
    }

    /// [`Filter::matches`] within `budget`, shared by every filter one message is matched
    /// against: `None` once it ran out (the answer is then unknown), so that a filter over a
    /// large payload — or many filters over one message — cannot take unbounded time.
    pub fn matches_within<H: HeaderLookup + ?Sized>(
        &self,
        headers: &H,
        body: Option<&Value>,
        budget: &Budget,
    ) -> Option<bool> {
        let matched = eval::matches(&self.root, headers, body, budget);
        (!budget.exhausted()).then_some(matched)
    }

    /// Whether a message matches, given its raw payload: parses the payload as JSON only if the
    /// filter [needs it](Filter::needs_body). For several filters over one message, parse once
    /// and use [`Filter::matches`].
    pub fn matches_payload<H: HeaderLookup + ?Sized>(&self, headers: &H, payload: &[u8]) -> bool {
        if !self.needs_body {
            return self.matches(headers, None);
        }
        let body = serde_json::from_slice::<Value>(payload).ok();
        self.matches(headers, body.as_ref())
    }

    /// The filter as JSON: what it was parsed from, header names lowercased.
    pub fn to_value(&self) -> Value {
        // A filter's keys are all strings, so this conversion cannot fail.
        serde_json::to_value(&self.root).unwrap_or(Value::Null)
    }
}

impl FromStr for Filter {
    type Err = FilterError;

    fn from_str(text: &str) -> Result<Self, FilterError> {
        Self::from_slice(text.as_bytes())
    }
}

/// The compact JSON of the filter.
impl fmt::Display for Filter {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let text = serde_json::to_string(&self.root).map_err(|_| fmt::Error)?;
        f.write_str(&text)
    }
}

impl Serialize for Filter {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        self.root.serialize(serializer)
    }
}

impl<'de> Deserialize<'de> for Filter {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let value = Value::deserialize(deserializer)?;
        Self::parse(&value).map_err(serde::de::Error::custom)
    }
}
