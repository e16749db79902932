//! Unit tests of the filter language, one file per area of the specification.

use serde_json::Value;

use crate::{Filter, FilterErrorKind, NoHeaders};

mod bounds;
mod headers;
mod logic;
mod operators;
mod paths;
mod roundtrip;
mod validation;

/// Parses a filter that must be valid.
fn filter(value: Value) -> Filter {
    Filter::parse(&value).unwrap_or_else(|e| panic!("{value} should parse: {e}"))
}

/// Whether a valid filter matches a JSON payload on a message without headers.
fn body_matches(filter_json: Value, body: Value) -> bool {
    filter(filter_json).matches(&NoHeaders, Some(&body))
}

/// The path and kind of the error that refuses a filter.
fn refusal(value: Value) -> (String, FilterErrorKind) {
    match Filter::parse(&value) {
        Ok(parsed) => panic!("{value} should be refused, parsed as {parsed}"),
        Err(e) => (e.path().to_owned(), e.kind().clone()),
    }
}
