//! The content-filter language of destination subscriptions: a tenant's JSON filter over a
//! message's JSON payload and its headers, validated once when it is set ([`Filter::parse`])
//! and evaluated on the hot path of every message ([`Filter::matches`]). A message is delivered
//! to each destination whose filter matches it. This page is the language's specification.
//!
//! The model is that of Hookdeck and Svix filters: a filter mirrors the shape of the data it
//! matches, with `$` operators where a plain value is not enough.
//!
//! ```
//! use serde_json::json;
//! use switchyard_filter::Filter;
//!
//! let filter = Filter::parse(&json!({
//!     "headers": {"X-Event-Type": {"$startsWith": "order."}},
//!     "body": {"data": {"amount": {"$gt": 100}, "currency": {"$in": ["EUR", "USD"]}}}
//! }))?;
//! let headers = [("x-event-type", "order.created")];
//! let body = json!({"data": {"amount": 250, "currency": "EUR"}});
//! assert!(filter.matches(&headers, Some(&body)));
//! assert!(!filter.matches(&headers, Some(&json!({"data": {"amount": 99, "currency": "EUR"}}))));
//! # Ok::<(), switchyard_filter::FilterError>(())
//! ```
//!
//! # Filters
//!
//! A filter is a JSON object. Its keys are ANDed; `{}` matches every message.
//!
//! | key       | value                               | holds when                                |
//! |-----------|-------------------------------------|-------------------------------------------|
//! | `body`    | a condition                         | the payload is JSON and the condition holds at its root |
//! | `headers` | an object of header conditions      | every header condition holds              |
//! | `$and`    | a non-empty array of filters        | every filter holds                        |
//! | `$or`     | a non-empty array of filters        | at least one filter holds                 |
//! | `$not`    | a filter                            | the filter does not hold                  |
//!
//! Any other key is an error. `{"$not": {}}` matches no message.
//!
//! # Conditions
//!
//! A condition is tested at a position of the payload: its root for `body`, then deeper.
//!
//! - A value that is not an object is shorthand for `{"$eq": value}`: `{"body": {"type": "a"}}`.
//! - A non-empty object is a conjunction of its entries. A key starting with `$` is an operator
//!   on the current position; any other key is a field step, and its value is a condition on
//!   that field: `{"body": {"data": {"amount": {"$gt": 100}}}}`. Both kinds mix:
//!   `{"data": {"$exists": true, "id": 7}}`.
//! - An empty object `{}` is an error (it would match anything); match an empty object with
//!   `{"$eq": {}}`. Any object is matched literally only through `$eq`, `$neq`, `$in`, `$nin`,
//!   whose operands are taken literally, `$` keys included.
//! - Keys starting with `$` are always operators, so a payload field whose name starts with `$`
//!   cannot be addressed.
//!
//! | operator      | operand                    | holds when the value here…                     |
//! |---------------|----------------------------|------------------------------------------------|
//! | `$eq`         | any JSON value             | equals the operand                             |
//! | `$neq`        | any JSON value             | exactly when `$eq` does not                    |
//! | `$in`         | an array (may be empty)    | equals one of its items (`[]`: never)          |
//! | `$nin`        | an array (may be empty)    | exactly when `$in` does not                    |
//! | `$gt` `$gte` `$lt` `$lte` | a number or a string | is greater / greater or equal / less / less or equal |
//! | `$exists`     | `true` or `false`          | is present (`null` is present) / is absent     |
//! | `$startsWith` | a string                   | is a string with that prefix                   |
//! | `$and`        | a non-empty array of conditions | meets every condition                     |
//! | `$or`         | a non-empty array of conditions | meets at least one condition              |
//! | `$not`        | a condition                | does not meet the condition                    |
//!
//! `$and`, `$or` and `$not` nest at any level: `{"amount": {"$or": [{"$lt": 10}, {"$gt": 100}]}}`,
//! `{"body": {"$or": [{"type": "a"}, {"kind": "b"}]}}`.
//!
//! ## Types
//!
//! - Equality is deep: objects equal when they have the same keys and equal values (key order
//!   does not matter), arrays when they have equal items in the same order. `1` equals `1.0`.
//! - `$gt`, `$gte`, `$lt` and `$lte` compare a number with a number and a string with a string,
//!   bytewise (the order of Unicode code points). `$startsWith` tests strings only.
//! - A type mismatch is never an error when a message is evaluated: a value operator that
//!   meets the wrong type, or a missing field, does not hold (so `$neq`, `$nin` and
//!   `$exists: false` *do* hold there). A wrong operand type is refused when the filter is set.
//! - Numbers: when both are integers (`i64` or `u64`, as serde_json reads them) they compare
//!   exactly, beyond 2^53 too; otherwise both are compared as `f64`, so an integer beyond 2^53
//!   against a fraction is compared after rounding.
//!
//! ## Arrays
//!
//! One rule, as in MongoDB and Hookdeck: where a condition meets an array, it holds for the
//! array if it holds for the array as a whole **or for one of its items** (one level deep).
//!
//! - `{"tags": "vip"}` matches `{"tags": ["new", "vip"]}`; `{"tags": ["new", "vip"]}` matches
//!   that array as a whole. `$in`, `$gt` & co. and `$startsWith` test each item the same way.
//! - `$neq` and `$nin` are the exact negations, so `{"tags": {"$neq": "vip"}}` holds when no
//!   item is `"vip"`.
//! - A field step through an array means "for some item": `{"items": {"sku": "a1"}}` matches
//!   `{"items": [{"sku": "b2"}, {"sku": "a1"}]}`. Each step chooses its own item, so
//!   `{"items": {"sku": "a1", "qty": 2}}` holds when some item has sku `a1` and some item
//!   (maybe another) has qty `2`. An item that is not an object has no fields. An empty array
//!   has no item, so every step through it fails; put `$not` outside the step
//!   (`{"items": {"$not": {"sku": "a1"}}}`) to say "no item".
//!
//! # Headers
//!
//! `headers` maps header names to conditions over the header's value, which is always a string:
//!
//! - Header names compare ignoring ASCII case; they are stored lowercase, and naming one header
//!   twice (`X-A` and `x-a`) is an error. A name is printable ASCII without `:`.
//! - A header condition is a string (shorthand for `$eq`) or an object of operators, all with
//!   string operands (`$exists` takes a bool); `$and`, `$or` and `$not` nest inside it and at
//!   the level of the header map: `{"headers": {"$or": [{"x-a": "1"}, {"x-b": "2"}]}}`. A
//!   header has no fields, and a number operand is refused: `{"x-priority": {"$gt": 3}}` would
//!   never match the string `"5"`.
//! - A header that appears several times (a multi-valued header) behaves like an array: a
//!   condition holds if it holds for one of the values; `$neq`/`$nin` hold when none is equal.
//! - Callers pass headers through [`HeaderLookup`]; it is implemented for slices, arrays and
//!   vectors of `(name, value)` pairs, string maps and [`NoHeaders`].
//!
//! # Payloads that are not JSON
//!
//! The caller parses the payload once and passes `None` when it is not JSON (or uses
//! [`Filter::matches_payload`]). Then every `body` clause fails, whatever it says, while
//! `headers` clauses are evaluated as usual: a headers-only filter works on any payload, and
//! `{"$not": {"body": …}}` matches every non-JSON payload.
//!
//! # Bounds
//!
//! Filters come from tenants and are hostile input. [`Filter::parse`] refuses, with the path of
//! the offending element, a filter that is nested deeper than [`MAX_DEPTH`], holds more than
//! [`MAX_NODES`] JSON values, has a `$in`/`$nin` list longer than [`MAX_LIST_LEN`] or a string
//! or key longer than [`MAX_STRING_BYTES`], or whose JSON text exceeds [`MAX_FILTER_BYTES`].
//!
//! Evaluation walks the compiled filter once. It uses no regular expressions, never
//! backtracks, does not allocate and never panics; its recursion is bounded by [`MAX_DEPTH`].
//! Each filter node is tested at most once per payload value it reaches, so its cost is at
//! most proportional to the filter's size times the payload's.
//!
//! # Storage
//!
//! [`Filter`] implements `Serialize` and `Deserialize`: it serialises to the JSON it was parsed
//! from (header names lowercased) and deserialises with the validation of [`Filter::parse`],
//! so a stored filter loads back as an equal filter.
//!
//! # Errors
//!
//! [`FilterError`] names the JSON path of the offending element and displays as
//! `path: reason`, e.g. `body.data.amount.$gt: expected a number or a string`.

mod ast;
mod error;
mod eval;
mod filter;
mod headers;
mod parse;

#[cfg(test)]
mod tests;

pub use error::{FilterError, FilterErrorKind};
pub use eval::Budget;
pub use filter::Filter;
pub use headers::{HeaderLookup, NoHeaders};

/// The deepest a value may sit in a filter: the filter object is at depth 1 and the members of
/// a value at depth `d` are at depth `d + 1`. Keeps parsing and evaluation recursion shallow;
/// a realistic filter (`$or` of `body` paths four fields deep) needs about a dozen.
pub const MAX_DEPTH: usize = 32;

/// The most JSON values a filter may hold, counting every object, array and scalar (operands
/// and `$in` items included). Bounds the work of one evaluation per payload value.
pub const MAX_NODES: usize = 1024;

/// The most items of one `$in` or `$nin` list.
pub const MAX_LIST_LEN: usize = 256;

/// The longest string value or object key in a filter, in bytes of UTF-8.
pub const MAX_STRING_BYTES: usize = 1024;

/// The longest filter, in bytes of JSON text: the text as given for [`Filter::from_slice`]
/// and `str::parse`, the compact serialisation for [`Filter::parse`] (which is also what is
/// stored, so every stored filter loads back).
pub const MAX_FILTER_BYTES: usize = 16 * 1024;
