//! `$and`, `$or` and `$not`, at the top level and inside conditions, and the empty filter.

use serde_json::json;

use super::{body_matches, filter};
use crate::{Filter, NoHeaders};

#[test]
fn the_empty_filter_matches_everything() {
    let f = filter(json!({}));
    assert!(f.is_match_all());
    assert_eq!(f, Filter::match_all());
    assert!(f.matches(&NoHeaders, None));
    assert!(f.matches(&[("a", "b")], Some(&json!([1]))));
    assert!(f.matches_payload(&NoHeaders, b"\xff"));
    assert!(!filter(json!({"body": 1})).is_match_all());
}

#[test]
fn top_level_and_requires_every_filter() {
    let f = json!({"$and": [{"body": {"a": 1}}, {"body": {"b": 2}}]});
    assert!(body_matches(f.clone(), json!({"a": 1, "b": 2})));
    assert!(!body_matches(f, json!({"a": 1, "b": 3})));
}

#[test]
fn top_level_or_requires_one_filter() {
    let f = json!({"$or": [{"body": {"a": 1}}, {"headers": {"x": "y"}}]});
    assert!(body_matches(f.clone(), json!({"a": 1})));
    assert!(!body_matches(f.clone(), json!({"a": 2})));
    assert!(filter(f).matches(&[("X", "y")], None));
}

#[test]
fn top_level_not_inverts_a_filter() {
    assert!(body_matches(
        json!({"$not": {"body": {"a": 1}}}),
        json!({"a": 2})
    ));
    assert!(!body_matches(
        json!({"$not": {"body": {"a": 1}}}),
        json!({"a": 1})
    ));
    assert!(
        !body_matches(json!({"$not": {}}), json!({})),
        "$not of match-all never matches"
    );
    assert!(body_matches(
        json!({"$not": {"$not": {"body": {"a": 1}}}}),
        json!({"a": 1})
    ));
}

#[test]
fn field_level_or_and_not_combine_conditions_on_one_value() {
    let f = json!({"body": {"amount": {"$or": [{"$lt": 10}, {"$gt": 100}]}}});
    assert!(body_matches(f.clone(), json!({"amount": 5})));
    assert!(body_matches(f.clone(), json!({"amount": 500})));
    assert!(!body_matches(f, json!({"amount": 50})));

    let f = json!({"body": {"amount": {"$not": {"$gte": 10, "$lte": 100}}}});
    assert!(body_matches(f.clone(), json!({"amount": 5})));
    assert!(!body_matches(f.clone(), json!({"amount": 50})));
    assert!(
        body_matches(f, json!({})),
        "$not of a failing condition on a missing field"
    );

    let f = json!({"body": {"amount": {"$and": [{"$gt": 1}, 5]}}});
    assert!(body_matches(f.clone(), json!({"amount": 5})));
    assert!(!body_matches(f, json!({"amount": 6})));
}

#[test]
fn logic_at_the_body_root_combines_paths() {
    let f = json!({"body": {"$or": [{"type": "a"}, {"data": {"kind": "b"}}]}});
    assert!(body_matches(f.clone(), json!({"type": "a"})));
    assert!(body_matches(f.clone(), json!({"data": {"kind": "b"}})));
    assert!(!body_matches(f, json!({"type": "b"})));
}

#[test]
fn not_or_and_nest_across_levels() {
    // Deliver orders over 100, or any refund, but never test traffic.
    let f = json!({
        "$and": [
            {"$or": [
                {"body": {"type": "order", "amount": {"$gt": 100}}},
                {"body": {"type": "refund"}}
            ]},
            {"$not": {"headers": {"x-test": {"$exists": true}}}}
        ]
    });
    let f = filter(f);
    let order = |amount: u32| json!({"type": "order", "amount": amount});
    assert!(f.matches(&NoHeaders, Some(&order(150))));
    assert!(!f.matches(&NoHeaders, Some(&order(50))));
    assert!(f.matches(&NoHeaders, Some(&json!({"type": "refund"}))));
    assert!(!f.matches(&[("X-Test", "1")], Some(&order(150))));
}
