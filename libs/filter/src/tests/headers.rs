//! Header conditions: case-insensitive names, string operators, multi-valued headers and the
//! ready-made `HeaderLookup` implementations.

use std::collections::{BTreeMap, HashMap};

use serde_json::json;

use super::filter;
use crate::{HeaderLookup, NoHeaders};

fn header_matches<H: HeaderLookup + ?Sized>(filter_json: serde_json::Value, headers: &H) -> bool {
    filter(filter_json).matches(headers, None)
}

#[test]
fn header_names_compare_case_insensitively() {
    let f = json!({"headers": {"X-Event-Type": "order.created"}});
    assert!(header_matches(
        f.clone(),
        &[("x-event-type", "order.created")]
    ));
    assert!(header_matches(
        f.clone(),
        &[("X-EVENT-TYPE", "order.created")]
    ));
    assert!(
        !header_matches(f.clone(), &[("x-event-type", "Order.Created")]),
        "values exact"
    );
    assert!(!header_matches(f, &[("x-event", "order.created")]));
}

#[test]
fn header_names_are_stored_lowercase() {
    let f = filter(json!({"headers": {"X-Event-Type": "a"}}));
    assert_eq!(f.to_value(), json!({"headers": {"x-event-type": "a"}}));
}

#[test]
fn header_operators_work_on_string_values() {
    let headers = [("x-type", "order.created"), ("x-day", "2024-05-01")];
    assert!(header_matches(
        json!({"headers": {"x-type": {"$startsWith": "order."}}}),
        &headers
    ));
    assert!(header_matches(
        json!({"headers": {"x-type": {"$in": ["a", "order.created"]}}}),
        &headers
    ));
    assert!(!header_matches(
        json!({"headers": {"x-type": {"$nin": ["order.created"]}}}),
        &headers
    ));
    assert!(header_matches(
        json!({"headers": {"x-type": {"$neq": "refund"}}}),
        &headers
    ));
    assert!(header_matches(
        json!({"headers": {"x-day": {"$gte": "2024-01-01"}}}),
        &headers
    ));
    assert!(!header_matches(
        json!({"headers": {"x-day": {"$lt": "2024-01-01"}}}),
        &headers
    ));
    assert!(header_matches(
        json!({"headers": {"x-day": {"$gt": "2024", "$lte": "2025"}}}),
        &headers
    ));
}

#[test]
fn header_exists_tests_presence() {
    let headers = [("X-Trace", "")];
    assert!(header_matches(
        json!({"headers": {"x-trace": {"$exists": true}}}),
        &headers
    ));
    assert!(!header_matches(
        json!({"headers": {"x-trace": {"$exists": false}}}),
        &headers
    ));
    assert!(header_matches(
        json!({"headers": {"x-other": {"$exists": false}}}),
        &headers
    ));
    assert!(!header_matches(
        json!({"headers": {"x-other": "v"}}),
        &headers
    ));
}

#[test]
fn a_multi_valued_header_matches_if_any_value_matches() {
    let headers = vec![("x-tag", "a"), ("X-Tag", "b")];
    assert!(header_matches(json!({"headers": {"x-tag": "b"}}), &headers));
    assert!(header_matches(
        json!({"headers": {"x-tag": {"$startsWith": "a"}}}),
        &headers
    ));
    assert!(!header_matches(
        json!({"headers": {"x-tag": {"$neq": "a"}}}),
        &headers
    ));
    assert!(header_matches(
        json!({"headers": {"x-tag": {"$neq": "c"}}}),
        &headers
    ));
}

#[test]
fn logic_nests_in_header_maps_and_header_conditions() {
    let headers = [("x-a", "1"), ("x-b", "2")];
    assert!(header_matches(
        json!({"headers": {"$or": [{"x-a": "9"}, {"x-b": "2"}]}}),
        &headers
    ));
    assert!(!header_matches(
        json!({"headers": {"$not": {"x-a": "1"}}}),
        &headers
    ));
    assert!(header_matches(
        json!({"headers": {"x-a": {"$or": ["0", "1"]}}}),
        &headers
    ));
    assert!(header_matches(
        json!({"headers": {"x-a": {"$not": {"$in": ["2"]}}}}),
        &headers
    ));
    assert!(header_matches(
        json!({"headers": {"$and": [{"x-a": "1"}, {"x-b": "2"}]}}),
        &headers
    ));
}

#[test]
fn headers_read_from_maps_vectors_and_no_headers() {
    let f = json!({"headers": {"x-a": "1"}});
    let btree: BTreeMap<String, String> = [("X-A".to_owned(), "1".to_owned())].into();
    let hash: HashMap<&str, &str> = [("x-A", "1")].into();
    let pairs: Vec<(String, String)> = vec![("X-a".to_owned(), "1".to_owned())];
    assert!(header_matches(f.clone(), &btree));
    assert!(header_matches(f.clone(), &hash));
    assert!(header_matches(f.clone(), &pairs));
    assert!(header_matches(f.clone(), &pairs[..]));
    assert!(!header_matches(f, &NoHeaders));
}

#[test]
fn headers_and_body_clauses_are_anded() {
    let f = filter(json!({"headers": {"x-a": "1"}, "body": {"b": 2}}));
    let body = json!({"b": 2});
    assert!(f.matches(&[("x-a", "1")], Some(&body)));
    assert!(!f.matches(&[("x-a", "0")], Some(&body)));
    assert!(!f.matches(&[("x-a", "1")], Some(&json!({"b": 3}))));
}

#[test]
fn lowercasing_names_that_reorders_them_still_round_trips() {
    // `X-B` sorts before `x-a`, but `x-b` after it.
    let f = filter(json!({"headers": {"X-B": "2", "x-a": "1"}}));
    let text = f.to_string();
    assert_eq!(text, r#"{"headers":{"x-a":"1","x-b":"2"}}"#);
    assert_eq!(text.parse::<crate::Filter>().ok(), Some(f));
}
