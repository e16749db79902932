//! Every bound: accepted at its limit, refused just above it.

use serde_json::{Value, json};

use super::refusal;
use crate::{
    Filter, FilterErrorKind as Kind, MAX_DEPTH, MAX_FILTER_BYTES, MAX_LIST_LEN, MAX_NODES,
    MAX_STRING_BYTES,
};

/// `{}` wrapped in `levels` `$not`s: its deepest value sits at depth `levels + 1`.
fn nots(levels: usize) -> Value {
    (0..levels).fold(json!({}), |inner, _| json!({"$not": inner}))
}

#[test]
fn depth_is_accepted_at_the_limit_and_refused_above() {
    assert!(Filter::parse(&nots(MAX_DEPTH - 1)).is_ok());
    let (path, kind) = refusal(nots(MAX_DEPTH));
    assert_eq!(kind, Kind::TooDeep { max: MAX_DEPTH });
    assert_eq!(path, vec!["$not"; MAX_DEPTH].join("."));
}

#[test]
fn depth_counts_literal_operands() {
    // filter (1) > body (2) > $eq operand (3) > ...: `arrays` nested arrays reach depth 2 + arrays.
    let literal = |arrays: usize| {
        let operand = (1..arrays).fold(json!([]), |inner, _| json!([inner]));
        json!({"body": {"$eq": operand}})
    };
    assert!(Filter::parse(&literal(MAX_DEPTH - 2)).is_ok());
    assert_eq!(
        refusal(literal(MAX_DEPTH - 1)).1,
        Kind::TooDeep { max: MAX_DEPTH }
    );
}

#[test]
fn depth_is_checked_on_filter_text_too() {
    let text = nots(MAX_DEPTH).to_string();
    let e = text.parse::<Filter>().unwrap_err();
    assert_eq!(e.kind(), &Kind::TooDeep { max: MAX_DEPTH });
    assert!(nots(MAX_DEPTH - 1).to_string().parse::<Filter>().is_ok());
}

#[test]
fn node_count_is_accepted_at_the_limit_and_refused_above() {
    // The filter, the body object and the array are three values; each item is one more.
    let items = |n: usize| json!({"body": {"$eq": vec![0; n]}});
    assert!(Filter::parse(&items(MAX_NODES - 3)).is_ok());
    let (path, kind) = refusal(items(MAX_NODES - 2));
    assert_eq!(kind, Kind::TooManyNodes { max: MAX_NODES });
    assert_eq!(path, format!("body.$eq[{}]", MAX_NODES - 3));
}

#[test]
fn node_count_spans_the_whole_filter() {
    // Filters of `{"body": 0}`: two values each, plus the filter and the `$or` array.
    let or = |n: usize| json!({"$or": vec![json!({"body": 0}); n]});
    assert!(Filter::parse(&or((MAX_NODES - 2) / 2)).is_ok());
    assert_eq!(
        refusal(or((MAX_NODES - 2) / 2 + 1)).1,
        Kind::TooManyNodes { max: MAX_NODES }
    );
}

#[test]
fn in_and_nin_lists_are_accepted_at_the_limit_and_refused_above() {
    for op in ["$in", "$nin"] {
        let list = |n: usize| json!({"body": {"a": {op: vec![1; n]}}});
        assert!(Filter::parse(&list(MAX_LIST_LEN)).is_ok());
        let kind = Kind::ListTooLong {
            len: MAX_LIST_LEN + 1,
            max: MAX_LIST_LEN,
        };
        assert_eq!(
            refusal(list(MAX_LIST_LEN + 1)),
            (format!("body.a.{op}"), kind)
        );
    }
    let header = |n: usize| json!({"headers": {"x-a": {"$in": vec!["v"; n]}}});
    assert!(Filter::parse(&header(MAX_LIST_LEN)).is_ok());
    assert!(matches!(
        refusal(header(MAX_LIST_LEN + 1)).1,
        Kind::ListTooLong { .. }
    ));
}

#[test]
fn string_values_are_accepted_at_the_limit_and_refused_above() {
    let value = |len: usize| json!({"body": {"a": "x".repeat(len)}});
    assert!(Filter::parse(&value(MAX_STRING_BYTES)).is_ok());
    let kind = Kind::StringTooLong {
        len: MAX_STRING_BYTES + 1,
        max: MAX_STRING_BYTES,
    };
    assert_eq!(
        refusal(value(MAX_STRING_BYTES + 1)),
        ("body.a".into(), kind)
    );
}

#[test]
fn string_length_is_counted_in_bytes() {
    let two_byte = "é".repeat(MAX_STRING_BYTES / 2);
    assert!(Filter::parse(&json!({"body": {"a": {"$startsWith": two_byte.clone()}}})).is_ok());
    let f = json!({"body": {"a": {"$startsWith": format!("{two_byte}e")}}});
    let kind = Kind::StringTooLong {
        len: MAX_STRING_BYTES + 1,
        max: MAX_STRING_BYTES,
    };
    assert_eq!(refusal(f), ("body.a.$startsWith".into(), kind));
}

#[test]
fn keys_are_accepted_at_the_string_limit_and_refused_above() {
    let field = |len: usize| json!({"body": {"k".repeat(len): 1}});
    assert!(Filter::parse(&field(MAX_STRING_BYTES)).is_ok());
    let (path, kind) = refusal(field(MAX_STRING_BYTES + 1));
    assert_eq!(
        kind,
        Kind::StringTooLong {
            len: MAX_STRING_BYTES + 1,
            max: MAX_STRING_BYTES
        }
    );
    assert_eq!(path, format!("body.{}…", "k".repeat(64)));
    let header = |len: usize| json!({"headers": {"h".repeat(len): "1"}});
    assert!(Filter::parse(&header(MAX_STRING_BYTES)).is_ok());
    assert!(matches!(
        refusal(header(MAX_STRING_BYTES + 1)).1,
        Kind::StringTooLong { .. }
    ));
    let literal_key = |len: usize| json!({"body": {"$eq": {"k".repeat(len): 1}}});
    assert!(Filter::parse(&literal_key(MAX_STRING_BYTES)).is_ok());
    assert!(matches!(
        refusal(literal_key(MAX_STRING_BYTES + 1)).1,
        Kind::StringTooLong { .. }
    ));
}

#[test]
fn filter_text_is_accepted_at_the_size_limit_and_refused_above() {
    let padded = |len: usize| {
        let text = r#"{"body":{"a":1}}"#;
        format!("{text}{}", " ".repeat(len - text.len()))
    };
    assert!(padded(MAX_FILTER_BYTES).parse::<Filter>().is_ok());
    let e = Filter::from_slice(padded(MAX_FILTER_BYTES + 1).as_bytes()).unwrap_err();
    assert_eq!(e.path(), "filter");
    let kind = Kind::TooLarge {
        len: MAX_FILTER_BYTES + 1,
        max: MAX_FILTER_BYTES,
    };
    assert_eq!(e.kind(), &kind);
}

/// A filter whose compact JSON is exactly `len` bytes, in strings no longer than allowed.
fn compact_of_len(len: usize) -> Value {
    const STRINGS: usize = 17;
    let build = |lens: &[usize]| {
        let items: Vec<String> = lens.iter().map(|n| "x".repeat(*n)).collect();
        json!({"body": {"a": {"$in": items}}})
    };
    let overhead = build(&[0; STRINGS]).to_string().len();
    let room = len - overhead;
    let mut lens = [room / STRINGS; STRINGS];
    lens[0] += room % STRINGS;
    assert!(lens[0] <= MAX_STRING_BYTES);
    let value = build(&lens);
    assert_eq!(value.to_string().len(), len);
    value
}

#[test]
fn parsed_values_are_accepted_at_the_size_limit_and_refused_above() {
    let at_limit = Filter::parse(&compact_of_len(MAX_FILTER_BYTES)).unwrap();
    assert_eq!(at_limit.to_string().len(), MAX_FILTER_BYTES);
    let kind = Kind::TooLarge {
        len: MAX_FILTER_BYTES + 1,
        max: MAX_FILTER_BYTES,
    };
    assert_eq!(
        refusal(compact_of_len(MAX_FILTER_BYTES + 1)),
        ("filter".into(), kind)
    );
    let stored = serde_json::from_value::<Filter>(compact_of_len(MAX_FILTER_BYTES + 1));
    assert!(stored.is_err(), "deserialising enforces the size bound too");
}

#[test]
fn a_budget_bounds_what_one_message_may_cost_across_filters() {
    use super::filter;
    use crate::{Budget, NoHeaders};
    // 256 operands against an array of 10,000 strings: 2.56 million comparisons.
    let operands: Vec<String> = (0..256).map(|i| format!("x{i}")).collect();
    let costly = filter(serde_json::json!({"body": {"a": {"$in": operands}}}));
    let items: Vec<String> = (0..10_000).map(|i| format!("y{i}")).collect();
    let body = serde_json::json!({ "a": items });
    let budget = Budget::new(1_000_000);
    assert_eq!(
        costly.matches_within(&NoHeaders, Some(&body), &budget),
        None
    );
    assert!(budget.exhausted());
    // Within the budget, the answer is known; the budget is shared by the filters of one
    // message, so a second filter over it gets what the first left.
    let cheap = filter(serde_json::json!({"body": {"a": {"$eq": "y3"}}}));
    let budget = Budget::new(1_000_000);
    assert_eq!(
        cheap.matches_within(&NoHeaders, Some(&body), &budget),
        Some(true)
    );
    assert_eq!(
        costly.matches_within(&NoHeaders, Some(&body), &budget),
        None
    );
    // Unbounded matching still answers (and the costly filter does not match).
    assert!(!costly.matches(&NoHeaders, Some(&body)));
}
