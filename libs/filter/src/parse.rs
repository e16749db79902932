//! Validation: turns a filter's JSON into the compiled [`Root`], enforcing the grammar, the
//! operand types and the bounds, and naming the path of the first offending element.

use std::io;

use serde_json::{Map, Value};

use crate::ast::{Clause, CmpOp, Cond, Entry, Op, Root, Scalar};
use crate::error::{FilterError, FilterErrorKind as Kind, Seg, render_path, shown};
use crate::{MAX_DEPTH, MAX_FILTER_BYTES, MAX_LIST_LEN, MAX_NODES, MAX_STRING_BYTES};

/// A compiled filter and whether any of its clauses reads the payload.
pub(crate) struct Parsed {
    /// The compiled filter.
    pub(crate) root: Root,
    /// Whether a `body` clause appears anywhere in it.
    pub(crate) needs_body: bool,
}

/// Parses and validates a filter given as a JSON value.
pub(crate) fn parse(value: &Value) -> Result<Parsed> {
    let mut parser = Parser::default();
    let root = parser.filter(value)?;
    // The structure is bounded now (depth, nodes, strings), so serialising to count is cheap
    // and cannot recurse deeply.
    let mut counter = ByteCounter(0);
    // A Value always serialises (its keys are strings) and the counter never fails, so this
    // cannot err; if it somehow did, refusing is the safe answer.
    let complete = serde_json::to_writer(&mut counter, value).is_ok();
    if !complete || counter.0 > MAX_FILTER_BYTES {
        let kind = Kind::TooLarge {
            len: counter.0,
            max: MAX_FILTER_BYTES,
        };
        return Err(FilterError::new("filter".to_owned(), kind));
    }
    Ok(Parsed {
        root,
        needs_body: parser.needs_body,
    })
}

/// Counts the bytes of compact JSON without keeping them.
struct ByteCounter(usize);

impl io::Write for ByteCounter {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.0 += buf.len();
        Ok(buf.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

/// Which grammar a condition follows, by where it stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Ctx {
    /// Inside `body`: literals, operators and field steps.
    Body,
    /// The value of `headers`: header names and `$and`/`$or`/`$not`.
    HeaderMap,
    /// The condition on one header: string literals and operators with string operands.
    HeaderValue,
}

/// Every operator of the language, for telling "not here" from "unknown".
const OPERATORS: [&str; 13] = [
    "$eq",
    "$neq",
    "$in",
    "$nin",
    "$gt",
    "$gte",
    "$lt",
    "$lte",
    "$exists",
    "$startsWith",
    "$and",
    "$or",
    "$not",
];

/// The key an entry is written under.
fn entry_key(entry: &Entry) -> &str {
    match entry {
        Entry::Field(name, _) => name,
        Entry::Op(op) => op.key(),
    }
}

/// The walk's state: where it is, and how much of the bounds it has used.
#[derive(Default)]
struct Parser<'a> {
    /// The path from the filter's root to the value being parsed.
    path: Vec<Seg<'a>>,
    /// JSON values seen so far.
    nodes: usize,
    /// Whether a `body` clause was seen.
    needs_body: bool,
}

type Result<T> = std::result::Result<T, FilterError>;

impl<'a> Parser<'a> {
    fn err(&self, kind: Kind) -> FilterError {
        FilterError::new(render_path(&self.path), kind)
    }

    /// Counts one JSON value at the current path against the node, depth and string bounds.
    fn visit(&mut self, value: &Value) -> Result<()> {
        self.nodes += 1;
        if self.path.len() >= MAX_DEPTH {
            return Err(self.err(Kind::TooDeep { max: MAX_DEPTH }));
        }
        if self.nodes > MAX_NODES {
            return Err(self.err(Kind::TooManyNodes { max: MAX_NODES }));
        }
        if let Value::String(text) = value {
            self.check_len(text)?;
        }
        Ok(())
    }

    fn check_len(&self, text: &str) -> Result<()> {
        if text.len() > MAX_STRING_BYTES {
            return Err(self.err(Kind::StringTooLong {
                len: text.len(),
                max: MAX_STRING_BYTES,
            }));
        }
        Ok(())
    }

    /// Steps into an object key, checking its length.
    fn enter_key(&mut self, key: &'a str) -> Result<()> {
        self.path.push(Seg::Key(key));
        self.check_len(key)
    }

    /// A filter: the top level, or an element of a top-level `$and`/`$or`, or a `$not`.
    fn filter(&mut self, value: &'a Value) -> Result<Root> {
        self.visit(value)?;
        let Value::Object(map) = value else {
            return Err(self.err(Kind::Expected("an object")));
        };
        let mut clauses = Vec::with_capacity(map.len().min(MAX_NODES));
        for (key, value) in map {
            self.enter_key(key)?;
            let clause = match key.as_str() {
                "body" => {
                    self.needs_body = true;
                    Clause::Body(self.cond(value, Ctx::Body)?)
                }
                "headers" => Clause::Headers(self.cond(value, Ctx::HeaderMap)?),
                "$and" => Clause::And(self.list(value, Self::filter)?),
                "$or" => Clause::Or(self.list(value, Self::filter)?),
                "$not" => Clause::Not(Box::new(self.filter(value)?)),
                other if other.starts_with('$') => {
                    return Err(self.misplaced(other, "body, headers, $and, $or and $not"));
                }
                other => return Err(self.err(Kind::UnknownKey(shown(other)))),
            };
            self.path.pop();
            clauses.push(clause);
        }
        Ok(Root { clauses })
    }

    /// The error for a `$` key that is not allowed at the current position.
    fn misplaced(&self, key: &str, allowed: &'static str) -> FilterError {
        match OPERATORS.iter().find(|op| **op == key) {
            Some(op) => self.err(Kind::OperatorNotAllowed { op, allowed }),
            None => self.err(Kind::UnknownOperator(shown(key))),
        }
    }

    /// A non-empty array, each element parsed by `item` with its index on the path.
    fn list<T>(
        &mut self,
        value: &'a Value,
        mut item: impl FnMut(&mut Self, &'a Value) -> Result<T>,
    ) -> Result<Vec<T>> {
        self.visit(value)?;
        let Value::Array(items) = value else {
            return Err(self.err(Kind::Expected("an array")));
        };
        if items.is_empty() {
            return Err(self.err(Kind::EmptyArray));
        }
        let mut out = Vec::with_capacity(items.len().min(MAX_NODES));
        for (at, value) in items.iter().enumerate() {
            self.path.push(Seg::Index(at));
            out.push(item(self, value)?);
            self.path.pop();
        }
        Ok(out)
    }

    /// A condition: a literal, or an object of operators and field steps.
    fn cond(&mut self, value: &'a Value, ctx: Ctx) -> Result<Cond> {
        let Value::Object(map) = value else {
            return match ctx {
                Ctx::Body => Ok(Cond::Literal(self.literal(value)?)),
                Ctx::HeaderValue => Ok(Cond::Literal(self.string_literal(value)?)),
                Ctx::HeaderMap => {
                    self.visit(value)?;
                    Err(self.err(Kind::Expected("an object of header names")))
                }
            };
        };
        self.visit(value)?;
        if map.is_empty() {
            return Err(self.err(Kind::EmptyCondition));
        }
        let mut entries = Vec::with_capacity(map.len().min(MAX_NODES));
        for (key, value) in map {
            self.enter_key(key)?;
            let entry = if key.starts_with('$') {
                Entry::Op(self.op(key, value, ctx)?)
            } else {
                match ctx {
                    Ctx::Body => Entry::Field(key.clone(), self.cond(value, Ctx::Body)?),
                    Ctx::HeaderMap => {
                        let name = self.header_name(key, &entries)?;
                        Entry::Field(name, self.cond(value, Ctx::HeaderValue)?)
                    }
                    Ctx::HeaderValue => return Err(self.err(Kind::HeaderSubfield(shown(key)))),
                }
            };
            self.path.pop();
            entries.push(entry);
        }
        if ctx == Ctx::HeaderMap {
            // Lowercasing can reorder names (`X-B` sorts before `x-a`); keep the entries in the
            // order of their keys, as a JSON object read back would, so the compiled form of a
            // filter and of its serialisation are equal.
            entries.sort_by(|a, b| entry_key(a).cmp(entry_key(b)));
        }
        Ok(Cond::All(entries))
    }

    /// Validates a header name and returns it lowercased, refusing a second spelling of a
    /// name already in `entries`.
    fn header_name(&self, key: &str, entries: &[Entry]) -> Result<String> {
        let valid = !key.is_empty() && key.bytes().all(|b| b.is_ascii_graphic() && b != b':');
        if !valid {
            return Err(self.err(Kind::InvalidHeaderName(shown(key))));
        }
        let name = key.to_ascii_lowercase();
        let taken = entries
            .iter()
            .any(|e| matches!(e, Entry::Field(n, _) if *n == name));
        if taken {
            return Err(self.err(Kind::DuplicateHeader(name)));
        }
        Ok(name)
    }

    /// An operator entry at a position that follows `ctx`.
    fn op(&mut self, key: &str, value: &'a Value, ctx: Ctx) -> Result<Op> {
        let logical = match key {
            "$and" => Some(Op::And(self.list(value, |p, v| p.cond(v, ctx))?)),
            "$or" => Some(Op::Or(self.list(value, |p, v| p.cond(v, ctx))?)),
            "$not" => Some(Op::Not(Box::new(self.cond(value, ctx)?))),
            _ => None,
        };
        if let Some(op) = logical {
            return Ok(op);
        }
        if ctx == Ctx::HeaderMap {
            return Err(self.misplaced(key, "header names, $and, $or and $not"));
        }
        let strings_only = ctx == Ctx::HeaderValue;
        Ok(match key {
            "$eq" | "$neq" => {
                let operand = match strings_only {
                    true => self.string_literal(value)?,
                    false => self.literal(value)?,
                };
                match key {
                    "$eq" => Op::Eq(operand),
                    _ => Op::Neq(operand),
                }
            }
            "$in" | "$nin" => {
                let values = self.in_list(value, strings_only)?;
                match key {
                    "$in" => Op::In(values),
                    _ => Op::Nin(values),
                }
            }
            "$gt" => Op::Cmp(CmpOp::Gt, self.scalar(value, strings_only)?),
            "$gte" => Op::Cmp(CmpOp::Gte, self.scalar(value, strings_only)?),
            "$lt" => Op::Cmp(CmpOp::Lt, self.scalar(value, strings_only)?),
            "$lte" => Op::Cmp(CmpOp::Lte, self.scalar(value, strings_only)?),
            "$exists" => {
                self.visit(value)?;
                match value {
                    Value::Bool(present) => Op::Exists(*present),
                    _ => return Err(self.err(Kind::Expected("a bool"))),
                }
            }
            "$startsWith" => match self.string_literal(value)? {
                Value::String(prefix) => Op::StartsWith(prefix),
                // Unreachable: string_literal returns only strings.
                _ => return Err(self.err(Kind::Expected("a string"))),
            },
            other => return Err(self.err(Kind::UnknownOperator(shown(other)))),
        })
    }

    /// The list of `$in`/`$nin`: an array of at most [`MAX_LIST_LEN`] values (strings only
    /// for a header). An empty list is allowed: `$in: []` matches nothing.
    fn in_list(&mut self, value: &'a Value, strings_only: bool) -> Result<Vec<Value>> {
        self.visit(value)?;
        let Value::Array(items) = value else {
            return Err(self.err(Kind::Expected("an array")));
        };
        if items.len() > MAX_LIST_LEN {
            return Err(self.err(Kind::ListTooLong {
                len: items.len(),
                max: MAX_LIST_LEN,
            }));
        }
        let mut out = Vec::with_capacity(items.len());
        for (at, value) in items.iter().enumerate() {
            self.path.push(Seg::Index(at));
            out.push(match strings_only {
                true => self.string_literal(value)?,
                false => self.literal(value)?,
            });
            self.path.pop();
        }
        Ok(out)
    }

    /// The operand of an ordering operator: a number or a string (a string for a header).
    fn scalar(&mut self, value: &'a Value, strings_only: bool) -> Result<Scalar> {
        self.visit(value)?;
        match value {
            Value::String(text) => Ok(Scalar::String(text.clone())),
            Value::Number(number) if !strings_only => Ok(Scalar::Number(number.clone())),
            _ if strings_only => {
                Err(self.err(Kind::Expected("a string (header values are strings)")))
            }
            _ => Err(self.err(Kind::Expected("a number or a string"))),
        }
    }

    /// A string operand (header values, `$startsWith`).
    fn string_literal(&mut self, value: &'a Value) -> Result<Value> {
        self.visit(value)?;
        match value {
            Value::String(_) => Ok(value.clone()),
            _ => Err(self.err(Kind::Expected("a string"))),
        }
    }

    /// Any JSON value, taken literally: checked against the bounds, then copied once.
    fn literal(&mut self, value: &'a Value) -> Result<Value> {
        self.check_literal(value)?;
        Ok(value.clone())
    }

    fn check_literal(&mut self, value: &'a Value) -> Result<()> {
        self.visit(value)?;
        match value {
            Value::Array(items) => {
                for (at, item) in items.iter().enumerate() {
                    self.path.push(Seg::Index(at));
                    self.check_literal(item)?;
                    self.path.pop();
                }
            }
            Value::Object(map) => self.check_literal_map(map)?,
            _ => {}
        }
        Ok(())
    }

    fn check_literal_map(&mut self, map: &'a Map<String, Value>) -> Result<()> {
        for (key, item) in map {
            self.enter_key(key)?;
            self.check_literal(item)?;
            self.path.pop();
        }
        Ok(())
    }
}
