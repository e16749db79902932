//! Every validation error, with the path it names.

use serde_json::json;

use super::refusal;
use crate::{Filter, FilterErrorKind as Kind};

fn expected(what: &'static str) -> Kind {
    Kind::Expected(what)
}

#[test]
fn error_displays_path_and_reason() {
    let e = Filter::parse(&json!({"body": {"data": {"amount": {"$gt": true}}}})).unwrap_err();
    assert_eq!(
        e.to_string(),
        "body.data.amount.$gt: expected a number or a string"
    );
}

#[test]
fn text_that_is_not_json_is_refused() {
    let e = "{\"body\":".parse::<Filter>().unwrap_err();
    assert_eq!(e.path(), "filter");
    assert!(matches!(e.kind(), Kind::NotJson(_)), "{e}");
    assert!(e.to_string().starts_with("filter: not valid json: "), "{e}");
}

#[test]
fn a_filter_that_is_not_an_object_is_refused() {
    assert_eq!(refusal(json!([])), ("filter".into(), expected("an object")));
    assert_eq!(
        refusal(json!("body")),
        ("filter".into(), expected("an object"))
    );
    assert_eq!(
        refusal(json!({"$not": 1})),
        ("$not".into(), expected("an object"))
    );
    assert_eq!(
        refusal(json!({"$and": [{}, 2]})),
        ("$and[1]".into(), expected("an object"))
    );
}

#[test]
fn unknown_top_level_keys_are_refused() {
    assert_eq!(
        refusal(json!({"query": {}})),
        ("query".into(), Kind::UnknownKey("query".into()))
    );
    assert_eq!(
        refusal(json!({"Body": {"a": 1}})),
        ("Body".into(), Kind::UnknownKey("Body".into()))
    );
}

#[test]
fn unknown_operators_are_refused_everywhere() {
    let unknown = |op: &str| Kind::UnknownOperator(op.into());
    assert_eq!(
        refusal(json!({"$nor": []})),
        ("$nor".into(), unknown("$nor"))
    );
    let f = json!({"body": {"data": {"$regex": ".*"}}});
    assert_eq!(refusal(f), ("body.data.$regex".into(), unknown("$regex")));
    let f = json!({"headers": {"$where": "x"}});
    assert_eq!(refusal(f), ("headers.$where".into(), unknown("$where")));
    let f = json!({"headers": {"x-a": {"$contains": "x"}}});
    assert_eq!(
        refusal(f),
        ("headers.x-a.$contains".into(), unknown("$contains"))
    );
}

#[test]
fn operators_out_of_place_are_refused() {
    let top = "body, headers, $and, $or and $not";
    let f = json!({"$eq": 1});
    assert_eq!(
        refusal(f),
        (
            "$eq".into(),
            Kind::OperatorNotAllowed {
                op: "$eq",
                allowed: top
            }
        )
    );
    let map = "header names, $and, $or and $not";
    let f = json!({"headers": {"$exists": true}});
    let kind = Kind::OperatorNotAllowed {
        op: "$exists",
        allowed: map,
    };
    assert_eq!(refusal(f), ("headers.$exists".into(), kind));
}

#[test]
fn wrong_operand_types_are_refused() {
    let cases = [
        (
            json!({"body": {"a": {"$gt": true}}}),
            "body.a.$gt",
            "a number or a string",
        ),
        (
            json!({"body": {"a": {"$lte": [1]}}}),
            "body.a.$lte",
            "a number or a string",
        ),
        (
            json!({"body": {"a": {"$exists": "yes"}}}),
            "body.a.$exists",
            "a bool",
        ),
        (
            json!({"body": {"a": {"$startsWith": 1}}}),
            "body.a.$startsWith",
            "a string",
        ),
        (
            json!({"body": {"a": {"$in": "x"}}}),
            "body.a.$in",
            "an array",
        ),
        (
            json!({"body": {"a": {"$nin": {"x": 1}}}}),
            "body.a.$nin",
            "an array",
        ),
        (
            json!({"body": {"a": {"$and": {"$gt": 1}}}}),
            "body.a.$and",
            "an array",
        ),
        (json!({"$or": {"body": 1}}), "$or", "an array"),
    ];
    for (f, path, what) in cases {
        assert_eq!(refusal(f), (path.into(), expected(what)));
    }
}

#[test]
fn header_conditions_take_string_operands_only() {
    let strings = "a string (header values are strings)";
    let cases = [
        (
            json!({"headers": "x"}),
            "headers",
            "an object of header names",
        ),
        (json!({"headers": {"x-a": 5}}), "headers.x-a", "a string"),
        (
            json!({"headers": {"x-a": {"$eq": true}}}),
            "headers.x-a.$eq",
            "a string",
        ),
        (
            json!({"headers": {"x-a": {"$in": ["1", 2]}}}),
            "headers.x-a.$in[1]",
            "a string",
        ),
        (
            json!({"headers": {"x-a": {"$gt": 3}}}),
            "headers.x-a.$gt",
            strings,
        ),
        (
            json!({"headers": {"x-a": {"$or": ["1", null]}}}),
            "headers.x-a.$or[1]",
            "a string",
        ),
    ];
    for (f, path, what) in cases {
        assert_eq!(refusal(f), (path.into(), expected(what)));
    }
}

#[test]
fn a_header_condition_cannot_name_a_field() {
    let f = json!({"headers": {"x-a": {"id": "1"}}});
    assert_eq!(
        refusal(f),
        ("headers.x-a.id".into(), Kind::HeaderSubfield("id".into()))
    );
}

#[test]
fn empty_and_or_are_refused() {
    assert_eq!(
        refusal(json!({"$and": []})),
        ("$and".into(), Kind::EmptyArray)
    );
    assert_eq!(
        refusal(json!({"$or": []})),
        ("$or".into(), Kind::EmptyArray)
    );
    let f = json!({"body": {"a": {"$or": []}}});
    assert_eq!(refusal(f), ("body.a.$or".into(), Kind::EmptyArray));
    let f = json!({"headers": {"$and": []}});
    assert_eq!(refusal(f), ("headers.$and".into(), Kind::EmptyArray));
}

#[test]
fn empty_conditions_are_refused() {
    let cases = [
        (json!({"body": {}}), "body"),
        (json!({"body": {"a": {}}}), "body.a"),
        (json!({"body": {"a": {"$not": {}}}}), "body.a.$not"),
        (json!({"headers": {}}), "headers"),
        (json!({"headers": {"x-a": {}}}), "headers.x-a"),
        (
            json!({"$or": [{"body": {"$and": [{}]}}]}),
            "$or[0].body.$and[0]",
        ),
    ];
    for (f, path) in cases {
        assert_eq!(refusal(f), (path.into(), Kind::EmptyCondition));
    }
}

#[test]
fn invalid_header_names_are_refused() {
    let cases = [
        ("bad name", "headers[\"bad name\"]"),
        ("a:b", "headers.a:b"),
        ("", "headers[\"\"]"),
        ("né", "headers.né"),
        ("tab\t", "headers[\"tab\\t\"]"),
    ];
    for (name, path) in cases {
        let f = json!({"headers": {name: "1"}});
        assert_eq!(
            refusal(f),
            (path.into(), Kind::InvalidHeaderName(name.into()))
        );
    }
}

#[test]
fn a_header_named_twice_in_different_case_is_refused() {
    let f = json!({"headers": {"X-A": "1", "x-a": "2"}});
    assert_eq!(
        refusal(f),
        ("headers.x-a".into(), Kind::DuplicateHeader("x-a".into()))
    );
}

#[test]
fn paths_name_array_positions_and_quote_odd_keys() {
    let f = json!({"$or": [{"body": 1}, {"body": {"a.b": {"$gt": null}}}]});
    let path = "$or[1].body[\"a.b\"].$gt";
    assert_eq!(refusal(f), (path.into(), expected("a number or a string")));
    let f = json!({"body": {"x": {"$in": [1, 2]}, "": {"$exists": 0}}});
    assert_eq!(
        refusal(f),
        ("body[\"\"].$exists".into(), expected("a bool"))
    );
}

#[test]
fn long_keys_are_cut_short_in_errors() {
    let key = "k".repeat(100);
    let (path, kind) = refusal(json!({key.clone(): 1}));
    let shown = format!("{}…", "k".repeat(64));
    assert_eq!(path, shown);
    assert_eq!(kind, Kind::UnknownKey(shown));
}

#[test]
fn deserialising_validates_like_parse() {
    let e = serde_json::from_value::<Filter>(json!({"body": {"a": {"$gt": {}}}})).unwrap_err();
    assert_eq!(e.to_string(), "body.a.$gt: expected a number or a string");
    let e = serde_json::from_str::<Filter>(r#"{"headers": {"x": {}}}"#).unwrap_err();
    assert!(
        e.to_string().starts_with("headers.x: empty condition"),
        "{e}"
    );
}
