//! The one error type of this crate: why a filter was refused, and where in it.

use std::fmt;

/// Why a filter was refused, with the JSON path of the offending element.
///
/// Displays as `path: reason`, e.g. `body.data.amount.$gt: expected a number or a string`.
/// The path joins object keys with `.` and writes array positions as `[i]`; a key that is empty
/// or holds `.`, `[`, `]`, `"` or whitespace is written quoted (`body["a.b"]`), and a long key is
/// cut short with `…`. An error about the filter as a whole has the path `filter`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{path}: {kind}")]
pub struct FilterError {
    /// The JSON path of the offending element.
    path: String,
    /// What is wrong with it.
    kind: FilterErrorKind,
}

impl FilterError {
    pub(crate) fn new(path: String, kind: FilterErrorKind) -> Self {
        Self { path, kind }
    }

    /// The JSON path of the offending element (`filter` for the filter as a whole).
    pub fn path(&self) -> &str {
        &self.path
    }

    /// What is wrong with it.
    pub fn kind(&self) -> &FilterErrorKind {
        &self.kind
    }
}

/// What is wrong with the element a [`FilterError`] points at.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FilterErrorKind {
    /// The filter text is not JSON (only from [`crate::Filter::from_slice`] and `from_str`).
    #[error("not valid json: {0}")]
    NotJson(String),
    /// A value of the wrong JSON type; the text says what was expected.
    #[error("expected {0}")]
    Expected(&'static str),
    /// A top-level key other than `body`, `headers`, `$and`, `$or` and `$not`.
    #[error("unknown key {0:?}: expected body, headers, $and, $or or $not")]
    UnknownKey(String),
    /// A `$` key that is not an operator of the language.
    #[error("unknown operator {0:?}")]
    UnknownOperator(String),
    /// An operator of the language used where it has no meaning.
    #[error("operator {op} is not allowed here; allowed are {allowed}")]
    OperatorNotAllowed {
        /// The operator.
        op: &'static str,
        /// What the position accepts.
        allowed: &'static str,
    },
    /// A field step inside a header condition: header values are strings, not objects.
    #[error("header values are strings and have no field {0:?}; expected an operator")]
    HeaderSubfield(String),
    /// An empty `$and` or `$or`.
    #[error("must not be empty")]
    EmptyArray,
    /// An empty object where a condition belongs.
    #[error("empty condition; to match an empty object use {{\"$eq\": {{}}}}")]
    EmptyCondition,
    /// A header name with a character NATS headers cannot carry.
    #[error("invalid header name {0:?}: expected printable ascii without ':'")]
    InvalidHeaderName(String),
    /// Two header conditions whose names differ only in case.
    #[error("header {0:?} is named twice (header names are case-insensitive)")]
    DuplicateHeader(String),
    /// The filter's JSON text is longer than [`crate::MAX_FILTER_BYTES`].
    #[error("filter is {len} bytes long; the limit is {max}")]
    TooLarge {
        /// The length seen, in bytes.
        len: usize,
        /// The limit, in bytes.
        max: usize,
    },
    /// A value nested deeper than [`crate::MAX_DEPTH`].
    #[error("nested deeper than the limit of {max} levels")]
    TooDeep {
        /// The limit, in levels.
        max: usize,
    },
    /// More JSON values than [`crate::MAX_NODES`]; the path is the first value past the limit.
    #[error("filter has more than {max} json values")]
    TooManyNodes {
        /// The limit, in JSON values.
        max: usize,
    },
    /// A `$in` or `$nin` list longer than [`crate::MAX_LIST_LEN`].
    #[error("list has {len} items; the limit is {max}")]
    ListTooLong {
        /// The length seen, in items.
        len: usize,
        /// The limit, in items.
        max: usize,
    },
    /// A string value or object key longer than [`crate::MAX_STRING_BYTES`].
    #[error("string is {len} bytes long; the limit is {max}")]
    StringTooLong {
        /// The length seen, in bytes.
        len: usize,
        /// The limit, in bytes.
        max: usize,
    },
}

/// One step of a JSON path, as the parser walks the filter.
#[derive(Debug, Clone, Copy)]
pub(crate) enum Seg<'a> {
    /// An object key.
    Key(&'a str),
    /// An array position.
    Index(usize),
}

/// Renders a path for an error message (`body.data["a.b"].$in[3]`; `filter` when empty).
pub(crate) fn render_path(path: &[Seg<'_>]) -> String {
    use fmt::Write as _;
    if path.is_empty() {
        return "filter".to_owned();
    }
    let mut out = String::new();
    for (i, seg) in path.iter().enumerate() {
        // Writing into a String cannot fail.
        let _ = match seg {
            Seg::Index(at) => write!(out, "[{at}]"),
            Seg::Key(key) if is_plain_key(key) => {
                if i > 0 {
                    out.push('.');
                }
                write!(out, "{}", shown(key))
            }
            Seg::Key(key) => write!(out, "[{:?}]", shown(key)),
        };
    }
    out
}

fn is_plain_key(key: &str) -> bool {
    !key.is_empty()
        && !key
            .chars()
            .any(|c| c.is_whitespace() || c.is_control() || matches!(c, '.' | '[' | ']' | '"'))
}

/// Cuts a key or value short for an error message, so errors stay readable with 1 KiB inputs.
pub(crate) fn shown(value: &str) -> String {
    const MAX: usize = 64;
    match value.char_indices().nth(MAX) {
        Some((at, _)) => format!("{}…", &value[..at]),
        None => value.to_owned(),
    }
}
