//! Property tests: a serialised filter parses back to an equivalent filter, and no input makes
//! parsing or evaluation panic.

use proptest::collection::vec;
use proptest::prelude::*;
use proptest::sample::select;
use serde_json::{Map, Value};

use crate::Filter;

const FIELDS: [&str; 3] = ["a", "b", "c"];
const HEADER_NAMES: [&str; 3] = ["x-a", "x-b", "x-c"];
const TEXTS: [&str; 5] = ["", "1", "2", "a", "ab"];

fn object(entries: Vec<(String, Value)>) -> Value {
    Value::Object(entries.into_iter().collect::<Map<_, _>>())
}

fn scalar() -> impl Strategy<Value = Value> {
    prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::Bool),
        (-2i64..4).prop_map(Value::from),
        select(vec![0.5, 2.0, -1.5]).prop_map(Value::from),
        select(TEXTS.to_vec()).prop_map(Value::from),
    ]
}

/// JSON values over the field names, for payloads and literal operands.
fn json(depth: u32) -> impl Strategy<Value = Value> {
    scalar().prop_recursive(depth, 24, 3, |inner| {
        prop_oneof![
            vec(inner.clone(), 0..4).prop_map(Value::Array),
            vec(
                (select(FIELDS.to_vec()).prop_map(String::from), inner),
                0..4
            )
            .prop_map(object),
        ]
    })
}

/// A value operator over payload values.
fn body_op() -> impl Strategy<Value = (String, Value)> {
    let ordered = prop_oneof![
        (-2i64..4).prop_map(Value::from),
        select(TEXTS.to_vec()).prop_map(Value::from)
    ];
    prop_oneof![
        (select(vec!["$eq", "$neq"]), json(1)),
        (
            select(vec!["$in", "$nin"]),
            vec(json(1), 0..3).prop_map(Value::Array)
        ),
        (select(vec!["$gt", "$gte", "$lt", "$lte"]), ordered),
        (Just("$exists"), any::<bool>().prop_map(Value::Bool)),
        (
            Just("$startsWith"),
            select(TEXTS.to_vec()).prop_map(Value::from)
        ),
    ]
    .prop_map(|(op, operand)| (op.to_owned(), operand))
}

/// A header operator: string operands only.
fn header_op() -> impl Strategy<Value = (String, Value)> {
    let text = || select(TEXTS.to_vec()).prop_map(Value::from);
    prop_oneof![
        (
            select(vec![
                "$eq",
                "$neq",
                "$gt",
                "$gte",
                "$lt",
                "$lte",
                "$startsWith"
            ]),
            text()
        ),
        (
            select(vec!["$in", "$nin"]),
            vec(text(), 0..3).prop_map(Value::Array)
        ),
        (Just("$exists"), any::<bool>().prop_map(Value::Bool)),
    ]
    .prop_map(|(op, operand)| (op.to_owned(), operand))
}

/// Wraps a condition strategy's entries in the logical operators.
fn logical(inner: BoxedStrategy<Value>) -> impl Strategy<Value = (String, Value)> {
    prop_oneof![
        (
            select(vec!["$and", "$or"]),
            vec(inner.clone(), 1..3).prop_map(Value::Array)
        ),
        (Just("$not"), inner),
    ]
    .prop_map(|(op, operand)| (op.to_owned(), operand))
}

fn body_cond() -> BoxedStrategy<Value> {
    let leaf = prop_oneof![scalar(), body_op().prop_map(|entry| object(vec![entry]))];
    leaf.prop_recursive(3, 24, 3, |inner| {
        let field = (
            select(FIELDS.to_vec()).prop_map(String::from),
            inner.clone(),
        );
        let entry = prop_oneof![body_op(), field, logical(inner)];
        vec(entry, 1..4).prop_map(object)
    })
    .boxed()
}

fn header_cond() -> BoxedStrategy<Value> {
    let leaf = prop_oneof![
        select(TEXTS.to_vec()).prop_map(Value::from),
        header_op().prop_map(|entry| object(vec![entry])),
    ];
    leaf.prop_recursive(2, 8, 2, |inner| {
        vec(prop_oneof![header_op(), logical(inner)], 1..3).prop_map(object)
    })
    .boxed()
}

/// A header map; `mixed_case` spells names in random case (names stay distinct ignoring case).
fn header_map(mixed_case: bool) -> BoxedStrategy<Value> {
    let named = (select(HEADER_NAMES.to_vec()), any::<bool>(), header_cond()).prop_map(
        move |(name, upper, cond)| {
            let name = if mixed_case && upper {
                name.to_ascii_uppercase()
            } else {
                name.to_owned()
            };
            (name, cond)
        },
    );
    let leaf = vec(named, 1..3).prop_map(|mut entries| {
        entries.sort_by_key(|(name, _)| name.to_ascii_lowercase());
        entries.dedup_by_key(|(name, _)| name.to_ascii_lowercase());
        object(entries)
    });
    leaf.prop_recursive(2, 6, 2, |inner| {
        logical(inner.boxed()).prop_map(|entry| object(vec![entry]))
    })
    .boxed()
}

fn filter_json(mixed_case: bool) -> impl Strategy<Value = Value> {
    let clauses = prop_oneof![
        body_cond().prop_map(|cond| ("body".to_owned(), cond)),
        header_map(mixed_case).prop_map(|map| ("headers".to_owned(), map)),
    ];
    vec(clauses, 0..3)
        .prop_map(object)
        .prop_recursive(2, 8, 3, |inner| {
            let inner = inner.boxed();
            vec(
                prop_oneof![
                    logical(inner.clone()),
                    Just(("body".to_owned(), Value::from(1)))
                ],
                1..3,
            )
            .prop_map(object)
        })
}

fn headers() -> impl Strategy<Value = Vec<(String, String)>> {
    let name = select(vec!["x-a", "X-A", "x-b", "X-C", "x-d"]).prop_map(String::from);
    vec((name, select(TEXTS.to_vec()).prop_map(String::from)), 0..4)
}

fn message() -> impl Strategy<Value = (Vec<(String, String)>, Option<Value>)> {
    (headers(), proptest::option::weighted(0.9, json(3)))
}

proptest! {
    #[test]
    fn a_serialised_filter_parses_back_to_an_equivalent_filter(
        value in filter_json(true),
        messages in vec(message(), 1..8),
    ) {
        let parsed = Filter::parse(&value).map_err(|e| TestCaseError::fail(format!("{value}: {e}")))?;
        let text = serde_json::to_string(&parsed).map_err(|e| TestCaseError::fail(e.to_string()))?;
        let again: Filter = serde_json::from_str(&text).map_err(|e| TestCaseError::fail(e.to_string()))?;
        prop_assert_eq!(&again, &parsed);
        prop_assert_eq!(again.to_string(), text);
        for (headers, body) in &messages {
            prop_assert_eq!(again.matches(headers, body.as_ref()), parsed.matches(headers, body.as_ref()));
        }
    }

    #[test]
    fn a_filter_serialises_to_the_json_it_was_parsed_from(value in filter_json(false)) {
        let parsed = Filter::parse(&value).map_err(|e| TestCaseError::fail(format!("{value}: {e}")))?;
        prop_assert_eq!(parsed.to_value(), value);
    }

    #[test]
    fn any_json_parses_or_is_refused_without_panicking(value in hostile(), (headers, body) in message()) {
        if let Ok(filter) = Filter::parse(&value) {
            let _ = filter.matches(&headers, body.as_ref());
            prop_assert_eq!(Filter::parse(&filter.to_value()).ok(), Some(filter));
        }
    }
}

/// Any JSON, with keys drawn from the language's keys, operators and a few strangers.
fn hostile() -> impl Strategy<Value = Value> {
    let keys = vec![
        "body",
        "headers",
        "$and",
        "$or",
        "$not",
        "$eq",
        "$neq",
        "$in",
        "$nin",
        "$gt",
        "$lte",
        "$exists",
        "$startsWith",
        "$bogus",
        "a",
        "X-A",
        "x-a",
        "bad name",
        "",
    ];
    scalar().prop_recursive(5, 48, 4, move |inner| {
        prop_oneof![
            vec(inner.clone(), 0..4).prop_map(Value::Array),
            vec((select(keys.clone()).prop_map(String::from), inner), 0..4).prop_map(object),
        ]
    })
}
