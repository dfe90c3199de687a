//! Many commands per request: the v2 `batch` method (docs/protocol.md §5), without its traps.
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
mod reply;
mod run;

pub use reply::{Reference, Reply, references};

use std::collections::{HashMap, HashSet};
use std::future::Future;

use serde_json::{Map, Value};

use crate::client::is_read_name;
use crate::{Client, Error, ErrorClass, Response};

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

    /// As [`Transport::send_batch`] for long jobs (export, many-chunk batches): waits for the
    /// methods' operating-time budgets — pace and blocks — however long that takes, instead of
    /// giving up within one call's retry budget.
    fn send_batch_patient(
        &self,
        cmd: Map<String, Value>,
        halt: bool,
        is_write: bool,
    ) -> impl Future<Output = Result<Response, Error>> + Send {
        self.send_batch(cmd, halt, is_write)
    }

    /// How many commands of `method` one request should carry (at most `want`) so that a
    /// request stays a small share of the method's operating-time budget.
    fn room(&self, method: &str, want: usize) -> impl Future<Output = usize> + Send {
        let _ = method;
        std::future::ready(want.max(1))
    }
}

impl Transport for Client {
    fn send_batch(
        &self,
        cmd: Map<String, Value>,
        halt: bool,
        is_write: bool,
    ) -> impl Future<Output = Result<Response, Error>> + Send {
        self.send_batch_paced(cmd, halt, is_write, self.is_patient())
    }

    fn send_batch_patient(
        &self,
        cmd: Map<String, Value>,
        halt: bool,
        is_write: bool,
    ) -> impl Future<Output = Result<Response, Error>> + Send {
        self.send_batch_paced(cmd, halt, is_write, true)
    }

    fn room(&self, method: &str, want: usize) -> impl Future<Output = usize> + Send {
        self.operating_room(method, want)
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
///
/// Exhaustive on purpose: a caller that records outcomes (the gate's ledger) must account
/// for every kind, so a new kind must be a compile error there rather than fall into a `_`.
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
    patient: bool,
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

    /// Wait out the portal's operating-time blocks and the client's pacing, however long they
    /// last, instead of failing within one call's retry budget (for long jobs). A batch of more
    /// than 50 commands (several requests) is always patient.
    pub fn patient(&mut self, patient: bool) -> &mut Self {
        self.patient = patient;
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
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

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
