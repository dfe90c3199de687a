//! Many commands per request: the v2 `batch` method (reference §5), without its traps.
//!
//! [`Batch`] takes any number of commands and runs them in requests of at most 50. What the
//! portal does badly, this module does on the client side:
//!
//! - **Ordering.** Commands keep their insertion order unless a command references a later one
//!   (`$result[later]`): then it moves after it (a stable topological order). A referenced
//!   command therefore always runs in the same or an earlier request.
//! - **References that cannot resolve.** The portal substitutes an unresolved `$result[...]` as
//!   literal text, so a failed `crm.lead.get` can turn into `crm.lead.update?id=$result[get][ID]`.
//!   Here a reference to a command in an *earlier* request is substituted client-side from the
//!   kept result, and if that command failed (or the path is absent) the dependent is not sent:
//!   it ends as an error "reference to failed command K". A *write* that references a command in
//!   the same request is moved to the next request for the same reason (a literal must never
//!   reach a write); a read may share the request, and its answer is discarded and reported as
//!   an error if the reference turned out not to resolve.
//! - **Partial failure.** Every command gets its own [`Outcome`]; successful results are kept
//!   whatever else fails. With `halt`, the first failure stops the batch and the rest are
//!   [`Outcome::NotExecuted`].
//! - **Retries.** Limits (`QUERY_LIMIT_EXCEEDED`), refused connections and token refresh are the
//!   client's job. When a request ends with its outcome unknown (timeout, reset, body-less 5xx),
//!   the reads of that request are sent again, and the writes are reported as
//!   [`Outcome::Unknown`], never resent.

pub mod query;

use std::collections::{HashMap, HashSet};
use std::future::Future;

use serde_json::{Map, Value, json};

use crate::client::is_read_name;
use crate::envelope::lenient_u64;
use crate::{CallOptions, Client, Error, ErrorClass, Response};

/// At most this many commands per request (the portal's limit).
pub const MAX_COMMANDS: usize = 50;

/// How often the reads of a request whose outcome was unknown are sent again.
const UNKNOWN_READ_RETRIES: u32 = 3;

/// Sends one `batch` request. [`Client`] implements it; tests inject their own.
pub trait Transport: Send + Sync {
    /// `cmd` maps keys to `method?query` strings. `is_write` tells the transport whether the
    /// request as a whole may be resent after an ambiguous failure.
    fn send_batch(
        &self,
        cmd: Map<String, Value>,
        halt: bool,
        is_write: bool,
    ) -> impl Future<Output = Result<Response, Error>> + Send;
}

impl Transport for Client {
    fn send_batch(
        &self,
        cmd: Map<String, Value>,
        halt: bool,
        is_write: bool,
    ) -> impl Future<Output = Result<Response, Error>> + Send {
        let params = json!({"halt": if halt { 1 } else { 0 }, "cmd": cmd});
        let opts = CallOptions {
            is_write: Some(is_write),
            ..Default::default()
        };
        async move { self.call_with("batch", params, opts).await }
    }
}

/// Errors in building a batch (nothing was sent).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum BatchError {
    /// Two commands share a key.
    #[error("command key `{0}` is used twice")]
    DuplicateKey(String),
    /// A key the portal's batch syntax cannot carry.
    #[error(
        "command key `{0}` is invalid (it must be non-empty and contain none of [ ] ? & = and spaces)"
    )]
    InvalidKey(String),
    /// A method name outside the allowed characters.
    #[error("command `{key}`: `{method}` is not a valid method name")]
    InvalidMethod {
        /// The command's key.
        key: String,
        /// The method as given.
        method: String,
    },
    /// A `$result[...]` reference to a key that is not in the batch.
    #[error("command `{key}` references `$result[{target}]`, which is not a command of this batch")]
    UnknownReference {
        /// The referring command.
        key: String,
        /// The missing key.
        target: String,
    },
    /// References that form a cycle, so no order can run them.
    #[error("commands reference each other in a cycle (through `{0}`)")]
    Cycle(String),
    /// Params that are neither a JSON object nor an array.
    #[error("command `{key}`: params must be a JSON object or array")]
    InvalidParams {
        /// The command's key.
        key: String,
    },
}

/// The outcome of one command.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
#[serde(tag = "status", rename_all = "snake_case")]
pub enum Outcome {
    /// The command ran.
    Ok {
        /// Its `result`.
        result: Value,
        /// `total` of a list command.
        #[serde(skip_serializing_if = "Option::is_none")]
        total: Option<u64>,
        /// `next` of a list command.
        #[serde(skip_serializing_if = "Option::is_none")]
        next: Option<u64>,
    },
    /// The portal refused the command.
    Error {
        /// The error code.
        code: String,
        /// Its description.
        description: String,
    },
    /// The command did not run (an earlier one failed under `halt`, or the batch was refused).
    NotExecuted {
        /// Why.
        reason: String,
    },
    /// A write whose request ended ambiguously; it may or may not have happened. Not resent.
    Unknown {
        /// What ended the request.
        reason: String,
    },
}

impl Outcome {
    /// Whether the command ran.
    pub fn is_ok(&self) -> bool {
        matches!(self, Outcome::Ok { .. })
    }
    /// `ok`, `error`, `not_executed` or `unknown`.
    pub fn status(&self) -> &'static str {
        match self {
            Outcome::Ok { .. } => "ok",
            Outcome::Error { .. } => "error",
            Outcome::NotExecuted { .. } => "not_executed",
            Outcome::Unknown { .. } => "unknown",
        }
    }
}

/// One command of a batch.
#[derive(Debug, Clone, PartialEq)]
pub struct Command {
    /// The key its result comes back under.
    pub key: String,
    /// The method.
    pub method: String,
    /// The encoded query (without `method?`).
    pub query: String,
    /// True when the command may change data (decides retries). Defaults to the method name.
    pub is_write: bool,
    refs: Vec<String>,
}

impl Command {
    /// The `method?query` text sent to the portal.
    pub fn text(&self) -> String {
        if self.query.is_empty() {
            self.method.clone()
        } else {
            format!("{}?{}", self.method, self.query)
        }
    }
}

/// A batch under construction. Usable without the CLI:
///
/// ```no_run
/// # async fn f(client: b24::Client) -> Result<(), Box<dyn std::error::Error>> {
/// use serde_json::json;
/// let mut b = b24::batch::Batch::new();
/// b.add("me", "user.current", json!({}))?;
/// b.add("lead", "crm.lead.list", json!({"filter": {"ASSIGNED_BY_ID": "$result[me][ID]"}}))?;
/// for (key, outcome) in b.run(&client).await {
///     println!("{key}: {}", outcome.status());
/// }
/// # Ok(()) }
/// ```
#[derive(Debug, Clone, Default)]
pub struct Batch {
    commands: Vec<Command>,
    keys: HashSet<String>,
    halt: bool,
}

impl Batch {
    /// An empty batch.
    pub fn new() -> Batch {
        Batch::default()
    }

    /// Stop at the first failing command; later ones are not executed.
    pub fn halt(&mut self, halt: bool) -> &mut Self {
        self.halt = halt;
        self
    }

    /// Commands in the batch.
    pub fn len(&self) -> usize {
        self.commands.len()
    }

    /// Whether the batch has no command.
    pub fn is_empty(&self) -> bool {
        self.commands.is_empty()
    }

    /// The commands, in the order they were added.
    pub fn commands(&self) -> &[Command] {
        &self.commands
    }

    /// Add a command with JSON params (encoded in PHP bracket notation).
    pub fn add(&mut self, key: &str, method: &str, params: Value) -> Result<&mut Self, BatchError> {
        if !matches!(params, Value::Object(_) | Value::Array(_) | Value::Null) {
            return Err(BatchError::InvalidParams { key: key.into() });
        }
        let query = query::encode(&params);
        self.push(key, method, query, None)
    }

    /// Add a command given as `method?query` (already encoded, as the portal's docs show it).
    pub fn add_text(&mut self, key: &str, text: &str) -> Result<&mut Self, BatchError> {
        let (method, query) = text.split_once('?').unwrap_or((text, ""));
        self.push(key, method, query.to_string(), None)
    }

    /// Override whether the command `key` is a write (the default comes from its method name).
    pub fn set_write(&mut self, key: &str, is_write: bool) -> &mut Self {
        if let Some(c) = self.commands.iter_mut().find(|c| c.key == key) {
            c.is_write = is_write;
        }
        self
    }

    fn push(
        &mut self,
        key: &str,
        method: &str,
        query: String,
        is_write: Option<bool>,
    ) -> Result<&mut Self, BatchError> {
        if key.is_empty()
            || key
                .chars()
                .any(|c| matches!(c, '[' | ']' | '?' | '&' | '=' | '$') || c.is_whitespace())
        {
            return Err(BatchError::InvalidKey(key.into()));
        }
        let method = method.trim().trim_end_matches(".json").to_string();
        if method.is_empty()
            || !method
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-'))
        {
            return Err(BatchError::InvalidMethod {
                key: key.into(),
                method,
            });
        }
        if !self.keys.insert(key.to_string()) {
            return Err(BatchError::DuplicateKey(key.into()));
        }
        let refs = references(&query).into_iter().map(|r| r.target).collect();
        let is_write = is_write.unwrap_or_else(|| !is_read_name(&method));
        self.commands.push(Command {
            key: key.into(),
            method,
            query,
            is_write,
            refs,
        });
        Ok(self)
    }

    /// The execution order: insertion order, except that a command moves after any command it
    /// references. Errors on unknown targets and cycles.
    pub fn order(&self) -> Result<Vec<usize>, BatchError> {
        let index: HashMap<&str, usize> = self
            .commands
            .iter()
            .enumerate()
            .map(|(i, c)| (c.key.as_str(), i))
            .collect();
        let mut deps: Vec<Vec<usize>> = Vec::with_capacity(self.commands.len());
        for c in &self.commands {
            let mut d = Vec::new();
            for t in &c.refs {
                match index.get(t.as_str()) {
                    Some(&j) if self.commands[j].key == c.key => {
                        return Err(BatchError::Cycle(c.key.clone()));
                    }
                    Some(&j) => d.push(j),
                    None => {
                        return Err(BatchError::UnknownReference {
                            key: c.key.clone(),
                            target: t.clone(),
                        });
                    }
                }
            }
            deps.push(d);
        }
        // Stable topological order: repeatedly take the first command whose dependencies ran.
        let n = self.commands.len();
        let mut placed = vec![false; n];
        let mut out = Vec::with_capacity(n);
        while out.len() < n {
            let before = out.len();
            let mut i = 0;
            while i < n {
                if !placed[i] && deps[i].iter().all(|&d| placed[d]) {
                    placed[i] = true;
                    out.push(i);
                    // Restart from the front so earlier-inserted commands keep priority.
                    i = 0;
                    continue;
                }
                i += 1;
            }
            if out.len() == before {
                let stuck = (0..n).find(|&i| !placed[i]).unwrap_or(0);
                return Err(BatchError::Cycle(self.commands[stuck].key.clone()));
            }
        }
        Ok(out)
    }

    /// Run every command; returns `(key, outcome)` in insertion order. Errors building the batch
    /// (unknown references, cycles) become an error outcome for every command, nothing is sent.
    pub async fn run<T: Transport>(&self, transport: &T) -> Vec<(String, Outcome)> {
        self.run_with_progress(transport, |_, _| {}).await
    }

    /// As [`Batch::run`], calling `progress(done, total)` after each request.
    pub async fn run_with_progress<T: Transport>(
        &self,
        transport: &T,
        mut progress: impl FnMut(usize, usize),
    ) -> Vec<(String, Outcome)> {
        let order = match self.order() {
            Ok(o) => o,
            Err(e) => {
                return self
                    .commands
                    .iter()
                    .map(|c| {
                        (
                            c.key.clone(),
                            Outcome::Error {
                                code: "INVALID_BATCH".into(),
                                description: e.to_string(),
                            },
                        )
                    })
                    .collect();
            }
        };
        let mut outcomes: HashMap<String, Outcome> = HashMap::new();
        let mut queue: std::collections::VecDeque<usize> = order.into();
        let mut unknown_retries: HashMap<usize, u32> = HashMap::new();
        let mut halted: Option<String> = None;
        let total = self.commands.len();
        while !queue.is_empty() {
            if let Some(why) = &halted {
                for i in queue.drain(..) {
                    outcomes.insert(
                        self.commands[i].key.clone(),
                        Outcome::NotExecuted {
                            reason: why.clone(),
                        },
                    );
                }
                break;
            }
            // Build one request.
            let mut chunk: Vec<(usize, String)> = Vec::new();
            let mut in_chunk: HashSet<&str> = HashSet::new();
            let mut client_failed = false;
            while let Some(&i) = queue.front() {
                if chunk.len() == MAX_COMMANDS {
                    break;
                }
                let c = &self.commands[i];
                let mut text = c.text();
                let mut blocked = false;
                let mut failure: Option<String> = None;
                for r in references(&text) {
                    if in_chunk.contains(r.target.as_str()) {
                        if c.is_write {
                            blocked = true; // run after the referenced command's request
                            break;
                        }
                        continue;
                    }
                    match outcomes.get(&r.target) {
                        Some(Outcome::Ok { result, .. }) => match resolve(result, &r.path) {
                            Some(v) => {
                                text = text.replacen(&r.raw, &query::encode_value(&v), 1);
                            }
                            None => {
                                failure = Some(format!(
                                    "reference {} does not resolve in the result of `{}`",
                                    r.raw, r.target
                                ));
                                break;
                            }
                        },
                        Some(_) => {
                            failure = Some(format!("reference to failed command {}", r.target));
                            break;
                        }
                        None => {
                            // Not run yet and not in this request: cannot happen in topological
                            // order, but never send a literal.
                            blocked = true;
                            break;
                        }
                    }
                }
                if blocked {
                    break;
                }
                queue.pop_front();
                if let Some(description) = failure {
                    outcomes.insert(
                        c.key.clone(),
                        Outcome::Error {
                            code: "REFERENCE_FAILED".into(),
                            description,
                        },
                    );
                    if self.halt {
                        client_failed = true;
                        halted = Some(format!("halted: command {} failed", c.key));
                        break;
                    }
                    continue;
                }
                in_chunk.insert(c.key.as_str());
                chunk.push((i, text));
            }
            if chunk.is_empty() {
                if client_failed || queue.is_empty() {
                    continue;
                }
                // Defensive: nothing could be placed (should be impossible); fail the rest.
                for i in queue.drain(..) {
                    outcomes.insert(
                        self.commands[i].key.clone(),
                        Outcome::NotExecuted {
                            reason: "could not be scheduled".into(),
                        },
                    );
                }
                break;
            }
            let cmd: Map<String, Value> = chunk
                .iter()
                .map(|(i, t)| (self.commands[*i].key.clone(), Value::String(t.clone())))
                .collect();
            let any_write = chunk.iter().any(|(i, _)| self.commands[*i].is_write);
            let reply = transport.send_batch(cmd, self.halt, any_write).await;
            match reply {
                Ok(resp) => {
                    let reply = Reply::from_result(resp.result);
                    let mut first_failure: Option<String> = None;
                    for (i, _) in &chunk {
                        let c = &self.commands[*i];
                        let o = reply.outcome(&c.key);
                        if !o.is_ok()
                            && first_failure.is_none()
                            && !matches!(o, Outcome::NotExecuted { .. })
                        {
                            first_failure = Some(c.key.clone());
                        }
                        outcomes.insert(c.key.clone(), o);
                    }
                    // Reads that shared a request with their referenced command: if the
                    // reference did not resolve, the portal ran them on a literal. Discard.
                    for (i, _) in &chunk {
                        let c = &self.commands[*i];
                        if !outcomes.get(&c.key).is_some_and(Outcome::is_ok) {
                            continue;
                        }
                        for r in references(&c.text()) {
                            if !in_chunk.contains(r.target.as_str()) {
                                continue;
                            }
                            let bad = match outcomes.get(&r.target) {
                                Some(Outcome::Ok { result, .. }) => {
                                    resolve(result, &r.path).is_none().then(|| {
                                        format!(
                                            "reference {} does not resolve in the result of `{}`",
                                            r.raw, r.target
                                        )
                                    })
                                }
                                _ => Some(format!("reference to failed command {}", r.target)),
                            };
                            if let Some(description) = bad {
                                outcomes.insert(
                                    c.key.clone(),
                                    Outcome::Error {
                                        code: "REFERENCE_FAILED".into(),
                                        description,
                                    },
                                );
                                break;
                            }
                        }
                    }
                    if self.halt
                        && let Some(k) = first_failure
                    {
                        halted = Some(format!("halted: command {k} failed"));
                    }
                }
                Err(Error::OutcomeUnknown { reason, .. }) => {
                    // Writes may have happened: report, never resend. Reads go back to the
                    // front of the queue (unless they depend on a write of this request).
                    let writes: HashSet<&str> = chunk
                        .iter()
                        .filter(|(i, _)| self.commands[*i].is_write)
                        .map(|(i, _)| self.commands[*i].key.as_str())
                        .collect();
                    let mut again = Vec::new();
                    for (i, _) in &chunk {
                        let c = &self.commands[*i];
                        let n = unknown_retries.entry(*i).or_insert(0);
                        if c.is_write {
                            outcomes.insert(
                                c.key.clone(),
                                Outcome::Unknown {
                                    reason: reason.clone(),
                                },
                            );
                        } else if c.refs.iter().any(|t| writes.contains(t.as_str())) {
                            outcomes.insert(
                                c.key.clone(),
                                Outcome::Error {
                                    code: "REFERENCE_FAILED".into(),
                                    description: format!(
                                        "reference to a command whose outcome is unknown ({reason})"
                                    ),
                                },
                            );
                        } else if *n >= UNKNOWN_READ_RETRIES {
                            outcomes.insert(
                                c.key.clone(),
                                Outcome::Error {
                                    code: "TRANSIENT".into(),
                                    description: reason.clone(),
                                },
                            );
                        } else {
                            *n += 1;
                            again.push(*i);
                        }
                    }
                    for i in again.into_iter().rev() {
                        queue.push_front(i);
                    }
                    if self.halt && !writes.is_empty() {
                        halted = Some("halted: a write's outcome is unknown".into());
                    }
                }
                Err(e) => {
                    let class = e.class();
                    let (code, description) = match &e {
                        Error::Api(a) => (a.code.clone(), a.description.clone()),
                        other => (class_code(class).into(), other.to_string()),
                    };
                    for (i, _) in &chunk {
                        outcomes.insert(
                            self.commands[*i].key.clone(),
                            Outcome::Error {
                                code: code.clone(),
                                description: description.clone(),
                            },
                        );
                    }
                    if self.halt
                        || matches!(
                            class,
                            ErrorClass::Reauthorize | ErrorClass::PortalStop | ErrorClass::Usage
                        )
                    {
                        halted = Some(format!("not sent: an earlier request failed ({code})"));
                    }
                }
            }
            progress(outcomes.len(), total);
        }
        self.commands
            .iter()
            .map(|c| {
                let o = outcomes.remove(&c.key).unwrap_or(Outcome::NotExecuted {
                    reason: "not reached".into(),
                });
                (c.key.clone(), o)
            })
            .collect()
    }
}

fn class_code(c: ErrorClass) -> &'static str {
    match c {
        ErrorClass::Transient => "TRANSIENT",
        ErrorClass::Reauthorize => "AUTH",
        ErrorClass::Usage => "USAGE",
        ErrorClass::OutcomeUnknown => "OUTCOME_UNKNOWN",
        _ => "ERROR",
    }
}

/// A `$result[key][a][b]` occurrence in a command's text.
#[derive(Debug, Clone, PartialEq, Eq)]
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
fn resolve(result: &Value, path: &[String]) -> Option<String> {
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

/// The `result` of a batch response (reference §5.3). Maps may arrive as `[]` when empty, or
/// as JSON arrays when the keys were `0..n-1`.
#[derive(Debug, Default)]
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_references() {
        let r = references("crm.lead.get?id=$result[a][0][ID]&x=$result[b]");
        assert_eq!(r.len(), 2);
        assert_eq!(r[0].target, "a");
        assert_eq!(r[0].path, vec!["0", "ID"]);
        assert_eq!(r[0].raw, "$result[a][0][ID]");
        assert_eq!(r[1].target, "b");
    }

    #[test]
    fn order_moves_dependents_after_targets() {
        let mut b = Batch::new();
        b.add("x", "crm.lead.get", json!({"id": "$result[y][ID]"}))
            .unwrap();
        b.add("y", "user.current", json!({})).unwrap();
        b.add("z", "server.time", json!({})).unwrap();
        assert_eq!(b.order().unwrap(), vec![1, 0, 2]);
        let mut c = Batch::new();
        c.add("a", "m.get", json!({"i": "$result[b]"})).unwrap();
        c.add("b", "m.get", json!({"i": "$result[a]"})).unwrap();
        assert!(matches!(c.order(), Err(BatchError::Cycle(_))));
        let mut d = Batch::new();
        d.add("a", "m.get", json!({"i": "$result[nope]"})).unwrap();
        assert!(matches!(
            d.order(),
            Err(BatchError::UnknownReference { .. })
        ));
        assert!(matches!(
            d.add("a", "m.get", json!({})),
            Err(BatchError::DuplicateKey(_))
        ));
        assert!(d.add("b[", "m.get", json!({})).is_err());
    }
}
