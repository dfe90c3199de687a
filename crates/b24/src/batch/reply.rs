//! Reading a batch answer (docs/protocol.md §5.3) and the `$result[...]` references of commands.

use serde_json::{Map, Value};

use super::{Outcome, query};
use crate::envelope::lenient_u64;

/// A `$result[key][a][b]` occurrence in a command's text.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct Reference {
    /// The text as it appears (`$result[key][0][ID]`).
    pub raw: String,
    /// The key of the command referred to.
    pub target: String,
    /// The path into that command's result (`["0", "ID"]`).
    pub path: Vec<String>,
}

/// Every `$result[...]` reference in a command's text (in order).
pub fn references(text: &str) -> Vec<Reference> {
    let mut out = Vec::new();
    let mut rest = text;
    while let Some(at) = rest.find("$result[") {
        let tail = &rest[at + "$result".len()..];
        let mut segs = Vec::new();
        let mut consumed = 0;
        let mut t = tail;
        while let Some(s) = t.strip_prefix('[') {
            match s.find(']') {
                Some(c) => {
                    segs.push(s[..c].to_string());
                    consumed += c + 2;
                    t = &s[c + 1..];
                }
                None => break,
            }
        }
        let end = at + "$result".len() + consumed;
        if let Some((target, path)) = segs.split_first() {
            out.push(Reference {
                raw: rest[at..end].to_string(),
                target: target.clone(),
                path: path.to_vec(),
            });
        }
        rest = &rest[end.max(at + 1)..];
    }
    out
}

/// Follow `path` into a result; only scalars can be substituted.
pub(super) fn resolve(result: &Value, path: &[String]) -> Option<String> {
    let mut cur = result;
    for p in path {
        cur = match cur {
            Value::Object(o) => o.get(p)?,
            Value::Array(a) => a.get(p.parse::<usize>().ok()?)?,
            _ => return None,
        };
    }
    match cur {
        Value::Object(_) | Value::Array(_) | Value::Null => None,
        v => Some(query::scalar(v)),
    }
}

/// The `result` of a batch response (docs/protocol.md §5.3). Maps may arrive as `[]` when empty, or
/// as JSON arrays when the keys were `0..n-1`.
#[derive(Debug, Default)]
#[non_exhaustive]
pub struct Reply {
    /// `result` per command key.
    pub result: Map<String, Value>,
    /// `result_error` per command key.
    pub error: Map<String, Value>,
    /// `result_total` per command key.
    pub total: Map<String, Value>,
    /// `result_next` per command key.
    pub next: Map<String, Value>,
}

impl Reply {
    /// Read a batch's `result` (borrowed; see [`Reply::from_result`]).
    pub fn parse(v: &Value) -> Reply {
        Reply::from_result(v.clone())
    }

    /// As [`Reply::parse`], taking the value (no copy of the results: exports hold thousands
    /// of items per reply).
    pub fn from_result(v: Value) -> Reply {
        let Value::Object(mut o) = v else {
            return Reply::default();
        };
        let mut m = |k: &str| as_map(o.remove(k));
        Reply {
            result: m("result"),
            error: m("result_error"),
            total: m("result_total"),
            next: m("result_next"),
        }
    }

    /// The outcome of the command `key` in this reply.
    pub fn outcome(&self, key: &str) -> Outcome {
        if let Some(e) = self.error.get(key) {
            let (code, description) = match e {
                Value::Object(o) => (
                    o.get("error").map(query::scalar).unwrap_or_default(),
                    o.get("error_description")
                        .map(query::scalar)
                        .unwrap_or_default(),
                ),
                other => (query::scalar(other), String::new()),
            };
            return Outcome::Error { code, description };
        }
        match self.result.get(key) {
            Some(r) => Outcome::Ok {
                result: r.clone(),
                total: self.total.get(key).and_then(lenient_u64),
                next: self.next.get(key).and_then(lenient_u64),
            },
            None => Outcome::NotExecuted {
                reason: "the portal did not run it (halted after a failure)".into(),
            },
        }
    }

    /// Take a command's result out of the reply (no clone; used by export).
    pub fn take(&mut self, key: &str) -> Option<Value> {
        self.result.remove(key)
    }
}

fn as_map(v: Option<Value>) -> Map<String, Value> {
    match v {
        Some(Value::Object(o)) => o,
        Some(Value::Array(a)) => a
            .into_iter()
            .enumerate()
            .map(|(i, v)| (i.to_string(), v))
            .collect(),
        _ => Map::new(),
    }
}
