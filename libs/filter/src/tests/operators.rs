//! Each operator, positive and negative, on payload values, with the type and number rules.

use serde_json::json;

use super::body_matches;

#[test]
fn literal_is_shorthand_for_eq() {
    assert!(body_matches(
        json!({"body": {"type": "order"}}),
        json!({"type": "order"})
    ));
    assert!(!body_matches(
        json!({"body": {"type": "order"}}),
        json!({"type": "refund"})
    ));
    assert!(body_matches(
        json!({"body": {"n": null}}),
        json!({"n": null})
    ));
    assert!(!body_matches(json!({"body": {"n": null}}), json!({})));
}

#[test]
fn eq_matches_an_equal_value_only() {
    let f = json!({"body": {"ok": {"$eq": true}}});
    assert!(body_matches(f.clone(), json!({"ok": true})));
    assert!(!body_matches(f.clone(), json!({"ok": false})));
    assert!(!body_matches(f.clone(), json!({"ok": "true"})));
    assert!(!body_matches(f, json!({})));
}

#[test]
fn eq_is_deep_and_ignores_object_key_order() {
    let f = json!({"body": {"meta": {"$eq": {"a": 1, "b": [1, {"c": null}]}}}});
    assert!(body_matches(
        f.clone(),
        json!({"meta": {"b": [1, {"c": null}], "a": 1}})
    ));
    assert!(!body_matches(
        f.clone(),
        json!({"meta": {"a": 1, "b": [1, {"c": 0}]}})
    ));
    assert!(!body_matches(
        f.clone(),
        json!({"meta": {"a": 1, "b": [1, {"c": null}], "x": 2}})
    ));
    assert!(!body_matches(f, json!({"meta": {"a": 1}})));
}

#[test]
fn eq_empty_object_matches_only_an_empty_object() {
    let f = json!({"body": {"meta": {"$eq": {}}}});
    assert!(body_matches(f.clone(), json!({"meta": {}})));
    assert!(!body_matches(f, json!({"meta": {"a": 1}})));
}

#[test]
fn eq_compares_numbers_by_value() {
    assert!(body_matches(json!({"body": {"n": 1}}), json!({"n": 1.0})));
    assert!(body_matches(json!({"body": {"n": 1.0}}), json!({"n": 1})));
    assert!(body_matches(
        json!({"body": {"n": {"$eq": [0.5, 2]}}}),
        json!({"n": [0.5, 2.0]})
    ));
    assert!(!body_matches(json!({"body": {"n": 1}}), json!({"n": 1.5})));
}

#[test]
fn neq_holds_exactly_where_eq_does_not() {
    let f = json!({"body": {"status": {"$neq": "failed"}}});
    assert!(body_matches(f.clone(), json!({"status": "ok"})));
    assert!(!body_matches(f.clone(), json!({"status": "failed"})));
    assert!(
        body_matches(f.clone(), json!({"status": 3})),
        "type mismatch is not equal"
    );
    assert!(body_matches(f, json!({})), "a missing field is not equal");
}

#[test]
fn in_matches_one_of_the_listed_values() {
    let f = json!({"body": {"currency": {"$in": ["EUR", "USD", 1]}}});
    assert!(body_matches(f.clone(), json!({"currency": "USD"})));
    assert!(body_matches(f.clone(), json!({"currency": 1.0})));
    assert!(!body_matches(f.clone(), json!({"currency": "GBP"})));
    assert!(!body_matches(f, json!({})));
}

#[test]
fn nin_holds_exactly_where_in_does_not() {
    let f = json!({"body": {"currency": {"$nin": ["EUR", "USD"]}}});
    assert!(body_matches(f.clone(), json!({"currency": "GBP"})));
    assert!(!body_matches(f.clone(), json!({"currency": "EUR"})));
    assert!(body_matches(f, json!({})));
}

#[test]
fn empty_in_never_matches_and_empty_nin_always_does() {
    assert!(!body_matches(
        json!({"body": {"a": {"$in": []}}}),
        json!({"a": 1})
    ));
    assert!(body_matches(
        json!({"body": {"a": {"$nin": []}}}),
        json!({"a": 1})
    ));
}

#[test]
fn ordering_operators_compare_numbers() {
    let cases = [
        ("$gt", 101, true),
        ("$gt", 100, false),
        ("$gte", 100, true),
        ("$gte", 99, false),
        ("$lt", 99, true),
        ("$lt", 100, false),
        ("$lte", 100, true),
        ("$lte", 101, false),
    ];
    for (op, amount, expected) in cases {
        let f = json!({"body": {"amount": {op: 100}}});
        assert_eq!(
            body_matches(f, json!({"amount": amount})),
            expected,
            "{amount} {op} 100"
        );
    }
    assert!(body_matches(
        json!({"body": {"x": {"$gt": 0.5}}}),
        json!({"x": 1})
    ));
    assert!(body_matches(
        json!({"body": {"x": {"$lt": -1}}}),
        json!({"x": -1.5})
    ));
}

#[test]
fn ordering_operators_compare_strings_bytewise() {
    let f = json!({"body": {"day": {"$gte": "2024-01-01", "$lt": "2024-02-01"}}});
    assert!(body_matches(f.clone(), json!({"day": "2024-01-31"})));
    assert!(!body_matches(f.clone(), json!({"day": "2024-02-01"})));
    assert!(!body_matches(f, json!({"day": "2023-12-31"})));
    assert!(body_matches(
        json!({"body": {"s": {"$gt": "Z"}}}),
        json!({"s": "a"})
    ));
    assert!(body_matches(
        json!({"body": {"s": {"$gt": "z"}}}),
        json!({"s": "é"})
    ));
}

#[test]
fn ordering_across_types_never_matches() {
    for op in ["$gt", "$gte", "$lt", "$lte"] {
        let number = json!({"body": {"v": {op: 5}}});
        let string = json!({"body": {"v": {op: "5"}}});
        for body in [
            json!({"v": "5"}),
            json!({"v": true}),
            json!({"v": null}),
            json!({}),
        ] {
            assert!(
                !body_matches(number.clone(), body.clone()),
                "{op} 5 against {body}"
            );
        }
        for body in [json!({"v": 5}), json!({"v": {"a": 1}}), json!({})] {
            assert!(
                !body_matches(string.clone(), body.clone()),
                "{op} \"5\" against {body}"
            );
        }
    }
}

#[test]
fn integers_beyond_two_to_the_53_compare_exactly() {
    let big = 9_007_199_254_740_993_u64; // 2^53 + 1, not representable as f64
    let f = json!({"body": {"id": {"$gt": 9_007_199_254_740_992_u64}}});
    assert!(body_matches(f.clone(), json!({"id": big})));
    assert!(!body_matches(f, json!({"id": 9_007_199_254_740_992_u64})));
    assert!(!body_matches(
        json!({"body": {"id": big}}),
        json!({"id": big - 1})
    ));
    assert!(body_matches(
        json!({"body": {"id": {"$gt": -1}}}),
        json!({"id": u64::MAX})
    ));
    assert!(body_matches(
        json!({"body": {"id": {"$lt": u64::MAX}}}),
        json!({"id": i64::MIN})
    ));
}

#[test]
fn integer_against_fraction_compares_as_f64() {
    assert!(body_matches(
        json!({"body": {"x": {"$lt": 2.5}}}),
        json!({"x": 2})
    ));
    // 2^53 + 1 rounds to 2^53 as f64: documented precision loss across integer and fraction.
    let f = json!({"body": {"x": 9_007_199_254_740_992.0}});
    assert!(body_matches(f, json!({"x": 9_007_199_254_740_993_u64})));
}

#[test]
fn exists_tests_presence_and_null_is_present() {
    let present = json!({"body": {"data": {"id": {"$exists": true}}}});
    let absent = json!({"body": {"data": {"id": {"$exists": false}}}});
    for (body, is_there) in [
        (json!({"data": {"id": 1}}), true),
        (json!({"data": {"id": null}}), true),
        (json!({"data": {}}), false),
        (json!({"data": 5}), false),
        (json!({}), false),
    ] {
        assert_eq!(
            body_matches(present.clone(), body.clone()),
            is_there,
            "{body}"
        );
        assert_eq!(
            body_matches(absent.clone(), body.clone()),
            !is_there,
            "{body}"
        );
    }
}

#[test]
fn starts_with_matches_string_prefixes_only() {
    let f = json!({"body": {"event": {"$startsWith": "order."}}});
    assert!(body_matches(f.clone(), json!({"event": "order.created"})));
    assert!(body_matches(f.clone(), json!({"event": "order."})));
    assert!(!body_matches(f.clone(), json!({"event": "refund.order."})));
    assert!(!body_matches(f.clone(), json!({"event": "Order.created"})));
    assert!(!body_matches(f.clone(), json!({"event": 5})));
    assert!(!body_matches(f, json!({})));
    assert!(body_matches(
        json!({"body": {"e": {"$startsWith": ""}}}),
        json!({"e": "x"})
    ));
}

#[test]
fn several_operators_in_one_object_are_anded() {
    let f = json!({"body": {"amount": {"$gt": 10, "$lte": 20, "$neq": 15}}});
    assert!(body_matches(f.clone(), json!({"amount": 20})));
    assert!(!body_matches(f.clone(), json!({"amount": 15})));
    assert!(!body_matches(f, json!({"amount": 21})));
}
