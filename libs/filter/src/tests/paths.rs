//! Field steps into nested objects, the array rule, and payloads that are not JSON.

use serde_json::json;

use super::{body_matches, filter};
use crate::NoHeaders;

#[test]
fn nested_objects_descend_into_fields() {
    let f = json!({"body": {"data": {"customer": {"tier": "gold"}, "amount": {"$gt": 100}}}});
    let body = json!({"data": {"customer": {"tier": "gold", "id": 1}, "amount": 150}});
    assert!(body_matches(f.clone(), body));
    let body = json!({"data": {"customer": {"tier": "silver"}, "amount": 150}});
    assert!(!body_matches(f, body));
}

#[test]
fn a_path_through_a_missing_or_scalar_field_leads_nowhere() {
    let f = json!({"body": {"data": {"amount": {"$gt": 1}}}});
    assert!(!body_matches(f.clone(), json!({})));
    assert!(!body_matches(f.clone(), json!({"data": 5})));
    assert!(!body_matches(f, json!({"data": "amount"})));
    let absent = json!({"body": {"data": {"amount": {"$exists": false}}}});
    assert!(body_matches(absent.clone(), json!({"data": 5})));
    assert!(body_matches(absent, json!({})));
}

#[test]
fn operators_and_field_steps_mix_in_one_object() {
    let f = json!({"body": {"data": {"$exists": true, "id": 7}}});
    assert!(body_matches(f.clone(), json!({"data": {"id": 7}})));
    assert!(!body_matches(f, json!({"data": {"id": 8}})));
}

#[test]
fn body_condition_applies_to_the_payload_root() {
    assert!(body_matches(json!({"body": "ping"}), json!("ping")));
    assert!(body_matches(json!({"body": {"$gt": 3}}), json!(4)));
    assert!(!body_matches(json!({"body": {"$gt": 3}}), json!({"a": 4})));
    assert!(body_matches(
        json!({"body": {"$in": [1, 2]}}),
        json!([5, 2])
    ));
}

#[test]
fn field_names_are_compared_exactly() {
    assert!(!body_matches(
        json!({"body": {"Type": "a"}}),
        json!({"type": "a"})
    ));
    assert!(body_matches(json!({"body": {"a.b": 1}}), json!({"a.b": 1})));
    assert!(!body_matches(
        json!({"body": {"a.b": 1}}),
        json!({"a": {"b": 1}})
    ));
}

#[test]
fn eq_against_an_array_matches_if_any_item_matches() {
    let f = json!({"body": {"tags": "vip"}});
    assert!(body_matches(f.clone(), json!({"tags": ["new", "vip"]})));
    assert!(!body_matches(f.clone(), json!({"tags": ["new"]})));
    assert!(!body_matches(f, json!({"tags": []})));
}

#[test]
fn eq_with_an_array_operand_matches_the_whole_array() {
    let f = json!({"body": {"tags": ["new", "vip"]}});
    assert!(body_matches(f.clone(), json!({"tags": ["new", "vip"]})));
    assert!(!body_matches(f.clone(), json!({"tags": ["vip", "new"]})));
    assert!(
        body_matches(f, json!({"tags": [["new", "vip"], "x"]})),
        "or an item"
    );
}

#[test]
fn the_array_rule_goes_one_level_deep() {
    assert!(!body_matches(
        json!({"body": {"m": 1}}),
        json!({"m": [[1]]})
    ));
    assert!(body_matches(
        json!({"body": {"m": [1]}}),
        json!({"m": [[1]]})
    ));
}

#[test]
fn value_operators_test_each_array_item() {
    let tags = json!({"tags": ["b", 3, "order.x"]});
    assert!(body_matches(
        json!({"body": {"tags": {"$in": ["a", "b"]}}}),
        tags.clone()
    ));
    assert!(body_matches(
        json!({"body": {"tags": {"$gt": 2}}}),
        tags.clone()
    ));
    assert!(!body_matches(
        json!({"body": {"tags": {"$gt": 3}}}),
        tags.clone()
    ));
    assert!(body_matches(
        json!({"body": {"tags": {"$startsWith": "order."}}}),
        tags.clone()
    ));
    assert!(body_matches(json!({"body": {"tags": {"$lt": "c"}}}), tags));
}

#[test]
fn neq_and_nin_against_an_array_hold_when_no_item_matches() {
    let body = json!({"tags": ["new", "vip"]});
    assert!(!body_matches(
        json!({"body": {"tags": {"$neq": "vip"}}}),
        body.clone()
    ));
    assert!(body_matches(
        json!({"body": {"tags": {"$neq": "old"}}}),
        body.clone()
    ));
    assert!(!body_matches(
        json!({"body": {"tags": {"$nin": ["vip", "x"]}}}),
        body.clone()
    ));
    assert!(body_matches(
        json!({"body": {"tags": {"$nin": ["x", "y"]}}}),
        body
    ));
}

#[test]
fn a_field_step_through_an_array_means_some_item() {
    let f = json!({"body": {"items": {"sku": "a1"}}});
    assert!(body_matches(
        f.clone(),
        json!({"items": [{"sku": "b2"}, {"sku": "a1"}]})
    ));
    assert!(!body_matches(f.clone(), json!({"items": [{"sku": "b2"}]})));
    assert!(
        !body_matches(f.clone(), json!({"items": ["a1", 3]})),
        "items without fields"
    );
    assert!(!body_matches(f, json!({"items": []})));
}

#[test]
fn each_field_step_chooses_its_own_array_item() {
    let f = json!({"body": {"items": {"sku": "a1", "qty": 2}}});
    assert!(body_matches(
        f.clone(),
        json!({"items": [{"sku": "a1", "qty": 1}, {"qty": 2}]})
    ));
    assert!(!body_matches(
        f,
        json!({"items": [{"sku": "a1", "qty": 1}]})
    ));
}

#[test]
fn not_outside_a_step_through_an_array_means_no_item() {
    let f = json!({"body": {"items": {"$not": {"sku": "a1"}}}});
    assert!(body_matches(
        f.clone(),
        json!({"items": [{"sku": "b2"}, {}]})
    ));
    assert!(!body_matches(
        f.clone(),
        json!({"items": [{"sku": "b2"}, {"sku": "a1"}]})
    ));
    assert!(body_matches(f, json!({"items": []})));
}

#[test]
fn non_json_payload_fails_body_clauses_but_not_headers_only_filters() {
    let headers = [("X-Kind", "ping")];
    let headers_only = filter(json!({"headers": {"x-kind": "ping"}}));
    assert!(!headers_only.needs_body());
    assert!(headers_only.matches_payload(&headers, b"\x00not json"));
    assert!(headers_only.matches(&headers, None));

    let with_body = filter(json!({"headers": {"x-kind": "ping"}, "body": {"a": 1}}));
    assert!(with_body.needs_body());
    assert!(!with_body.matches_payload(&headers, b"not json"));
    assert!(with_body.matches_payload(&headers, br#"{"a": 1}"#));
    assert!(!with_body.matches_payload(&headers, b""));
}

#[test]
fn negative_body_clauses_also_fail_on_a_non_json_payload() {
    let f = filter(json!({"body": {"a": {"$exists": false}}}));
    assert!(!f.matches(&NoHeaders, None));
    assert!(f.matches(&NoHeaders, Some(&json!({}))));
    let not_body = filter(json!({"$not": {"body": {"a": 1}}}));
    assert!(not_body.matches_payload(&NoHeaders, b"plain text"));
    assert!(!not_body.matches_payload(&NoHeaders, br#"{"a": 1}"#));
}

#[test]
fn needs_body_sees_body_clauses_nested_in_logic() {
    assert!(filter(json!({"$or": [{"headers": {"a": "1"}}, {"$not": {"body": 1}}]})).needs_body());
    assert!(!filter(json!({"$or": [{"headers": {"a": "1"}}, {}]})).needs_body());
    assert!(!filter(json!({})).needs_body());
}
