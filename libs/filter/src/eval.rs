//! Evaluation: walks the compiled filter once against a message's headers and parsed payload,
//! without allocating, and answers whether it matches.

use std::cell::Cell;
use std::cmp::Ordering;

use serde_json::{Number, Value};

use crate::HeaderLookup;
use crate::ast::{Clause, Cond, Entry, Op, Root, Scalar};

/// How many comparisons evaluation may still make (a value tested against one operand is
/// one): shared by every filter a message is matched against, so a message's evaluation cost is
/// bounded however large its payload and however many filters read it.
#[derive(Debug)]
pub struct Budget {
    left: Cell<u64>,
    ran_out: Cell<bool>,
}

impl Budget {
    /// `steps` comparisons.
    pub fn new(steps: u64) -> Self {
        Self {
            left: Cell::new(steps),
            ran_out: Cell::new(false),
        }
    }

    /// Whether the budget ran out (evaluations since answered `false` without finishing).
    pub fn exhausted(&self) -> bool {
        self.ran_out.get()
    }

    /// Takes `steps`; `false` (and nothing left) when fewer remain.
    fn spend(&self, steps: u64) -> bool {
        let left = self.left.get();
        if left < steps {
            self.left.set(0);
            self.ran_out.set(true);
            return false;
        }
        self.left.set(left - steps);
        true
    }
}

/// Whether `root` matches a message with these headers and this payload (`None`: not JSON),
/// within `budget` (out of it, `false`; see [`Budget::exhausted`]).
pub(crate) fn matches<H: HeaderLookup + ?Sized>(
    root: &Root,
    headers: &H,
    body: Option<&Value>,
    budget: &Budget,
) -> bool {
    root.clauses.iter().all(|clause| match clause {
        Clause::Body(cond) => body.is_some_and(|body| holds(cond, BodyPos(Some(body), budget))),
        Clause::Headers(cond) => holds(cond, HeaderMapPos(headers, budget)),
        Clause::And(filters) => filters.iter().all(|f| matches(f, headers, body, budget)),
        Clause::Or(filters) => filters.iter().any(|f| matches(f, headers, body, budget)),
        Clause::Not(filter) => !matches(filter, headers, body, budget),
    })
}

/// One value a value operator tests: a JSON value of the payload, or one header value.
#[derive(Clone, Copy)]
enum Leaf<'v> {
    Json(&'v Value),
    Text(&'v str),
}

impl<'v> Leaf<'v> {
    fn as_str(self) -> Option<&'v str> {
        match self {
            Self::Json(value) => value.as_str(),
            Self::Text(text) => Some(text),
        }
    }

    fn equals(self, operand: &Value) -> bool {
        match self {
            Self::Json(value) => json_eq(value, operand),
            Self::Text(text) => operand.as_str() == Some(text),
        }
    }

    /// How this value orders against an ordering operand; `None` across types.
    fn compare(self, operand: &Scalar) -> Option<Ordering> {
        match (self, operand) {
            (Self::Json(Value::Number(value)), Scalar::Number(operand)) => {
                number_cmp(value, operand)
            }
            (_, Scalar::String(operand)) => self.as_str().map(|text| text.cmp(operand.as_str())),
            _ => None,
        }
    }
}

/// A position in the data that a condition is tested at.
trait Pos: Copy {
    /// Takes `steps` of the evaluation's budget; `false` when it ran out.
    fn spend(self, steps: u64) -> bool;
    /// Whether the position holds a value (`$exists`).
    fn present(self) -> bool;
    /// Whether `test` holds for the value here or, for an array or a multi-valued header, for
    /// one of its elements.
    fn any(self, test: impl FnMut(Leaf<'_>) -> bool) -> bool;
    /// Whether `cond` holds at the field `name` of this position.
    fn field(self, name: &str, cond: &Cond) -> bool;
}

/// A position in the payload; `None` where the path leads nowhere.
#[derive(Clone, Copy)]
struct BodyPos<'v, 'b>(Option<&'v Value>, &'b Budget);

impl Pos for BodyPos<'_, '_> {
    fn spend(self, steps: u64) -> bool {
        self.1.spend(steps)
    }

    fn present(self) -> bool {
        self.0.is_some()
    }

    fn any(self, mut test: impl FnMut(Leaf<'_>) -> bool) -> bool {
        let Some(value) = self.0 else { return false };
        let mut test = |leaf| self.spend(1) && test(leaf);
        test(Leaf::Json(value))
            || matches!(value, Value::Array(items) if items.iter().any(|e| test(Leaf::Json(e))))
    }

    fn field(self, name: &str, cond: &Cond) -> bool {
        let budget = self.1;
        match self.0 {
            Some(Value::Object(map)) => holds(cond, BodyPos(map.get(name), budget)),
            Some(Value::Array(items)) => items.iter().any(|item| {
                let value = item.as_object().and_then(|map| map.get(name));
                budget.spend(1) && holds(cond, BodyPos(value, budget))
            }),
            _ => holds(cond, BodyPos(None, budget)),
        }
    }
}

/// The header map: its fields are headers.
struct HeaderMapPos<'h, H: ?Sized>(&'h H, &'h Budget);

impl<H: ?Sized> Clone for HeaderMapPos<'_, H> {
    fn clone(&self) -> Self {
        *self
    }
}

impl<H: ?Sized> Copy for HeaderMapPos<'_, H> {}

impl<H: HeaderLookup + ?Sized> Pos for HeaderMapPos<'_, H> {
    fn spend(self, steps: u64) -> bool {
        self.1.spend(steps)
    }

    fn present(self) -> bool {
        // Unreachable: parsing allows only header names and $and/$or/$not here.
        false
    }

    fn any(self, _test: impl FnMut(Leaf<'_>) -> bool) -> bool {
        // Unreachable, as above.
        false
    }

    fn field(self, name: &str, cond: &Cond) -> bool {
        holds(cond, HeaderPos(self.0, name, self.1))
    }
}

/// One header, by its lowercase name.
struct HeaderPos<'h, H: ?Sized>(&'h H, &'h str, &'h Budget);

impl<H: ?Sized> Clone for HeaderPos<'_, H> {
    fn clone(&self) -> Self {
        *self
    }
}

impl<H: ?Sized> Copy for HeaderPos<'_, H> {}

impl<H: HeaderLookup + ?Sized> Pos for HeaderPos<'_, H> {
    fn spend(self, steps: u64) -> bool {
        self.2.spend(steps)
    }

    fn present(self) -> bool {
        self.0.values(self.1).next().is_some()
    }

    fn any(self, mut test: impl FnMut(Leaf<'_>) -> bool) -> bool {
        self.0
            .values(self.1)
            .any(|text| self.spend(1) && test(Leaf::Text(text)))
    }

    fn field(self, _name: &str, _cond: &Cond) -> bool {
        // Unreachable: parsing refuses field steps inside a header condition.
        false
    }
}

/// Whether `cond` holds at `pos`.
fn holds<P: Pos>(cond: &Cond, pos: P) -> bool {
    match cond {
        Cond::Literal(operand) => pos.any(|leaf| leaf.equals(operand)),
        Cond::All(entries) => entries.iter().all(|entry| match entry {
            Entry::Field(name, cond) => pos.field(name, cond),
            Entry::Op(op) => op_holds(op, pos),
        }),
    }
}

fn op_holds<P: Pos>(op: &Op, pos: P) -> bool {
    match op {
        Op::Eq(operand) => pos.any(|leaf| leaf.equals(operand)),
        Op::Neq(operand) => !pos.any(|leaf| leaf.equals(operand)),
        Op::In(operands) => pos.any(|leaf| {
            pos.spend(operands.len() as u64) && operands.iter().any(|o| leaf.equals(o))
        }),
        Op::Nin(operands) => !pos.any(|leaf| {
            pos.spend(operands.len() as u64) && operands.iter().any(|o| leaf.equals(o))
        }),
        Op::Cmp(cmp, operand) => pos.any(|leaf| {
            leaf.compare(operand)
                .is_some_and(|ordering| cmp.holds(ordering))
        }),
        Op::Exists(present) => pos.present() == *present,
        Op::StartsWith(prefix) => pos.any(|leaf| {
            leaf.as_str()
                .is_some_and(|text| text.starts_with(prefix.as_str()))
        }),
        Op::And(conds) => conds.iter().all(|cond| holds(cond, pos)),
        Op::Or(conds) => conds.iter().any(|cond| holds(cond, pos)),
        Op::Not(cond) => !holds(cond, pos),
    }
}

/// Deep equality in which numbers compare by value (`1 == 1.0`) and object key order does not
/// matter. Recursion stops at the shallower side, and the filter's side is bounded.
fn json_eq(a: &Value, b: &Value) -> bool {
    match (a, b) {
        (Value::Null, Value::Null) => true,
        (Value::Bool(a), Value::Bool(b)) => a == b,
        (Value::Number(a), Value::Number(b)) => number_cmp(a, b) == Some(Ordering::Equal),
        (Value::String(a), Value::String(b)) => a == b,
        (Value::Array(a), Value::Array(b)) => {
            a.len() == b.len() && a.iter().zip(b).all(|(a, b)| json_eq(a, b))
        }
        (Value::Object(a), Value::Object(b)) => {
            a.len() == b.len()
                && a.iter()
                    .all(|(k, a)| b.get(k).is_some_and(|b| json_eq(a, b)))
        }
        _ => false,
    }
}

/// Orders two numbers: exactly when both are integers (`i64`/`u64`), else as `f64`.
pub(crate) fn number_cmp(a: &Number, b: &Number) -> Option<Ordering> {
    match (integer(a), integer(b)) {
        (Some(a), Some(b)) => Some(a.cmp(&b)),
        _ => a.as_f64()?.partial_cmp(&b.as_f64()?),
    }
}

fn integer(number: &Number) -> Option<i128> {
    number
        .as_i64()
        .map(i128::from)
        .or_else(|| number.as_u64().map(i128::from))
}
