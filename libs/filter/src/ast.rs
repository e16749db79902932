//! The compiled form of a filter: what parsing produces, evaluation walks, and serialisation
//! writes back as the same JSON the filter was parsed from (header names lowercased).

use serde::ser::{Serialize, SerializeMap, Serializer};
use serde_json::{Number, Value};

/// A filter's top level: clauses that must all hold (none: the filter matches everything).
#[derive(Debug, Clone, PartialEq, Default)]
pub(crate) struct Root {
    /// The clauses, in the order of their keys in the source object.
    pub(crate) clauses: Vec<Clause>,
}

/// One top-level key of a filter.
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum Clause {
    /// `body`: a condition at the root of the payload parsed as JSON.
    Body(Cond),
    /// `headers`: a condition over the header map (its field entries name headers).
    Headers(Cond),
    /// `$and`: every filter holds.
    And(Vec<Root>),
    /// `$or`: some filter holds.
    Or(Vec<Root>),
    /// `$not`: the filter does not hold.
    Not(Box<Root>),
}

/// A condition at one position of the data: the payload, a header map or one header.
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum Cond {
    /// A value that is not an object: shorthand for `{"$eq": value}`.
    Literal(Value),
    /// A non-empty object: its entries, ANDed, in source order.
    All(Vec<Entry>),
}

/// One entry of an object condition.
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum Entry {
    /// A key without `$`: the condition holds at that field (in a header map: that header,
    /// whose name is stored lowercase).
    Field(String, Cond),
    /// A `$` key: an operator on the current position.
    Op(Op),
}

/// An operator and its validated operand.
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum Op {
    /// `$eq`: deep equality.
    Eq(Value),
    /// `$neq`: not `$eq`.
    Neq(Value),
    /// `$in`: `$eq` one of the values.
    In(Vec<Value>),
    /// `$nin`: not `$in`.
    Nin(Vec<Value>),
    /// `$gt`, `$gte`, `$lt`, `$lte`: ordering against a number or a string.
    Cmp(CmpOp, Scalar),
    /// `$exists`: whether the position holds a value.
    Exists(bool),
    /// `$startsWith`: a string with this prefix.
    StartsWith(String),
    /// `$and`: every condition holds here.
    And(Vec<Cond>),
    /// `$or`: some condition holds here.
    Or(Vec<Cond>),
    /// `$not`: the condition does not hold here.
    Not(Box<Cond>),
}

/// The four ordering operators.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum CmpOp {
    /// `$gt`.
    Gt,
    /// `$gte`.
    Gte,
    /// `$lt`.
    Lt,
    /// `$lte`.
    Lte,
}

impl CmpOp {
    /// The operator's key.
    pub(crate) fn key(self) -> &'static str {
        match self {
            Self::Gt => "$gt",
            Self::Gte => "$gte",
            Self::Lt => "$lt",
            Self::Lte => "$lte",
        }
    }

    /// Whether `value.cmp(operand)` satisfies the operator.
    pub(crate) fn holds(self, ordering: std::cmp::Ordering) -> bool {
        use std::cmp::Ordering::{Greater, Less};
        match self {
            Self::Gt => ordering == Greater,
            Self::Gte => ordering != Less,
            Self::Lt => ordering == Less,
            Self::Lte => ordering != Greater,
        }
    }
}

/// The operand of an ordering operator.
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum Scalar {
    /// Compared with numbers.
    Number(Number),
    /// Compared with strings, bytewise.
    String(String),
}

impl Op {
    /// The operator's key.
    pub(crate) fn key(&self) -> &'static str {
        match self {
            Self::Eq(_) => "$eq",
            Self::Neq(_) => "$neq",
            Self::In(_) => "$in",
            Self::Nin(_) => "$nin",
            Self::Cmp(op, _) => op.key(),
            Self::Exists(_) => "$exists",
            Self::StartsWith(_) => "$startsWith",
            Self::And(_) => "$and",
            Self::Or(_) => "$or",
            Self::Not(_) => "$not",
        }
    }
}

impl Serialize for Root {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        let mut map = serializer.serialize_map(Some(self.clauses.len()))?;
        for clause in &self.clauses {
            match clause {
                Clause::Body(cond) => map.serialize_entry("body", cond)?,
                Clause::Headers(cond) => map.serialize_entry("headers", cond)?,
                Clause::And(filters) => map.serialize_entry("$and", filters)?,
                Clause::Or(filters) => map.serialize_entry("$or", filters)?,
                Clause::Not(filter) => map.serialize_entry("$not", filter)?,
            }
        }
        map.end()
    }
}

impl Serialize for Cond {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        match self {
            Self::Literal(value) => value.serialize(serializer),
            Self::All(entries) => {
                let mut map = serializer.serialize_map(Some(entries.len()))?;
                for entry in entries {
                    match entry {
                        Entry::Field(name, cond) => map.serialize_entry(name, cond)?,
                        Entry::Op(op) => map.serialize_entry(op.key(), &Operand(op))?,
                    }
                }
                map.end()
            }
        }
    }
}

/// Serialises an operator's operand, the value of its key.
struct Operand<'a>(&'a Op);

impl Serialize for Operand<'_> {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        match self.0 {
            Op::Eq(value) | Op::Neq(value) => value.serialize(serializer),
            Op::In(values) | Op::Nin(values) => values.serialize(serializer),
            Op::Cmp(_, Scalar::Number(number)) => number.serialize(serializer),
            Op::Cmp(_, Scalar::String(text)) | Op::StartsWith(text) => text.serialize(serializer),
            Op::Exists(present) => present.serialize(serializer),
            Op::And(conds) | Op::Or(conds) => conds.serialize(serializer),
            Op::Not(cond) => cond.serialize(serializer),
        }
    }
}
