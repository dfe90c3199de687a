//! Whole lists as a stream of items, at the portal's ceiling (docs/protocol.md §6, §7).
//!
//! # Keyset over ID ranges (strategy `keyset`, the default for `auto`)
//!
//! One `batch` request first asks for the smallest and the largest ID (`order ID ASC` and `DESC`,
//! `start=-1`, `select ID`: two cheap commands, no counting). The span `(min-1, max]` is then
//! cut into sub-ranges, and every list command covers one of them:
//! `filter {">ID": lo, "<=ID": hi}`, `order {ID: ASC}`, `start=-1`. Fifty such commands go into
//! one request, so a request returns up to 2,500 items, and several requests are in flight at
//! once (the client's limiter keeps them within the portal's rate budget).
//!
//! Why ranges rather than chaining `$result[prev][49][ID]` inside one request: a chain needs no
//! density estimate, but when a page comes back short (a gap, the end of the data) every later
//! command in the chain gets an unresolved reference, which the portal sends on as literal text
//! (docs/protocol.md §5.2) — wasted commands at best, a wrong filter at worst — and a chain
//! cannot be split across parallel requests. Ranges are independent, so they parallelise, and each is
//! sized from the density observed so far (`width = 50 / items-per-ID`). With the usual dense
//! auto-increment IDs a range of 50 IDs holds exactly 50 items: N items cost ⌈N/2,500⌉ requests
//! plus the probe. A range that comes back full (50 items) but ends before its upper bound keeps
//! its remainder `(last, hi]` as new work; a short page closes its range.
//!
//! Exactly once: every ID belongs to exactly one pending range, an item is emitted only by the
//! command whose range holds its ID (items outside it are dropped), and a range shrinks only past
//! emitted IDs. Records added or deleted during the export cannot shift anything, unlike offsets.
//!
//! # Offset (`offset`)
//!
//! For methods that cannot be keyed: `start = 0, 50, …`, also packed 50 pages to a request once
//! the first page has told the total (fewer when the method's operating-time budget is small
//! next to a page's cost), `concurrency` requests in flight, pages emitted in order. Offsets
//! shift if records are added or deleted meanwhile; that is the method's limitation, not ours.
//!
//! # Operating time
//!
//! Every request goes through [`Transport::send_batch_patient`]: the client paces each method
//! to its operating-time budget and waits out a block instead of failing (a blocked command did
//! not run; its range or page is sent again). See [`crate::limiter::operating`].
//!
//! # Resuming
//!
//! Every [`Page`] carries a [`Progress`]: the ranges not yet emitted (including those in
//! flight), counted items and the request's identity. Write the page's items first, then the
//! progress (see [`Progress::prepare`]): a restart from that file emits the rest exactly once.

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};

use futures::Stream;
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value, json};
use sha2::Digest;
use tokio::task::JoinSet;

use crate::Error;
use crate::batch::{MAX_COMMANDS, Outcome, Reply, Transport, query};
use crate::envelope::lenient_u64;
use crate::error::ApiError;

mod keyset;
mod offset;

use keyset::{keyset, probe_keyset};
use offset::offset;

/// The page size of v2 list methods.
const PAGE: usize = 50;

/// Consecutive failed requests (after the client's own retries) an export survives.
const EXPORT_RETRIES: u32 = 3;

/// How to page through a list.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
#[non_exhaustive]
pub enum Strategy {
    /// Keyset when the method can be keyed by ID, offset otherwise.
    #[default]
    Auto,
    /// `filter >ID`, ordered by ID: each item once even while the list changes.
    Keyset,
    /// `start=N` pages, for methods without a usable ID order.
    Offset,
}

/// What to export.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct ExportOptions {
    /// The list method, e.g. `crm.lead.list`.
    pub method: String,
    /// The list method's params (`filter`, `select`, ...). `order` and `start` are set by the
    /// exporter.
    pub params: Value,
    /// How to walk the list.
    pub strategy: Strategy,
    /// Requests in flight at once (each up to 50 commands).
    pub concurrency: usize,
    /// Continue from a saved [`Progress`] (it must match method and params).
    pub resume: Option<Progress>,
}

impl ExportOptions {
    /// Options for exporting `method` with `params` (strategy chosen automatically).
    pub fn new(method: &str, params: Value) -> ExportOptions {
        ExportOptions {
            method: method.to_string(),
            params,
            strategy: Strategy::Auto,
            concurrency: 4,
            resume: None,
        }
    }
}

/// Where an export stands; serialised as the checkpoint file.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[non_exhaustive]
pub struct Progress {
    /// Version of the checkpoint format.
    pub version: u32,
    /// The exported method (a checkpoint resumes only the same export).
    pub method: String,
    /// SHA-256 of the method and params, so a checkpoint is not applied to another export.
    pub params_digest: String,
    /// `keyset` or `offset` (never `auto`).
    pub strategy: Strategy,
    /// Keyset: ID ranges `(lo, hi]` not yet emitted. Offset: page-number ranges `(lo, hi]`.
    pub pending: Vec<(u64, u64)>,
    /// Items emitted so far.
    pub emitted: u64,
    /// The list's total, when known (offset), or an estimate from the ID span (keyset).
    pub total: Option<u64>,
    /// True once the probe has run (`pending` is meaningful).
    pub started: bool,
}

impl Progress {
    fn fresh(opts: &ExportOptions, strategy: Strategy) -> Progress {
        Progress {
            version: 1,
            method: opts.method.clone(),
            params_digest: digest(&opts.method, &opts.params),
            strategy,
            pending: Vec::new(),
            emitted: 0,
            total: None,
            started: false,
        }
    }

    /// True when nothing remains.
    pub fn is_done(&self) -> bool {
        self.started && self.pending.is_empty()
    }

    /// Read a checkpoint; `Ok(None)` when the file does not exist.
    pub fn load(path: &Path) -> Result<Option<Progress>, Error> {
        match std::fs::read(path) {
            Ok(b) => serde_json::from_slice(&b).map(Some).map_err(|e| {
                Error::state(
                    format!("checkpoint {} is not valid: {e}", path.display()),
                    e,
                )
            }),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(Error::state(
                format!("cannot read checkpoint {}: {e}", path.display()),
                e,
            )),
        }
    }

    /// Write the checkpoint to a temporary file next to `path` and fsync it, without making it
    /// visible. The intended order is: prepare, write and flush the page's items, then
    /// [`Prepared::commit`] (one `rename`). A kill before the items are flushed loses nothing
    /// (the visible checkpoint still lists the page's ranges as pending and nothing of the page
    /// was written); a kill after the commit loses nothing either. Only a kill in the instant
    /// between the flush and the rename — no await point, no allocation between them — would
    /// make a resume repeat that one page; the order never loses an item.
    pub fn prepare(&self, path: &Path) -> Result<Prepared, Error> {
        use std::io::Write;
        let tmp = tmp_path(path);
        let io = |e: std::io::Error| {
            Error::state(
                format!("cannot write checkpoint {}: {e}", path.display()),
                e,
            )
        };
        let mut f = std::fs::File::create(&tmp).map_err(io)?;
        let body = serde_json::to_vec(self).map_err(|e| Error::state("checkpoint", e))?;
        f.write_all(&body).map_err(io)?;
        f.sync_all().map_err(io)?;
        Ok(Prepared {
            tmp,
            path: path.to_path_buf(),
        })
    }

    /// Prepare and commit at once.
    pub fn save(&self, path: &Path) -> Result<(), Error> {
        self.prepare(path)?.commit()
    }

    /// Check that this checkpoint belongs to `opts`.
    pub fn matches(&self, opts: &ExportOptions) -> bool {
        self.method == opts.method && self.params_digest == digest(&opts.method, &opts.params)
    }
}

/// A checkpoint written but not yet visible.
#[derive(Debug)]
pub struct Prepared {
    tmp: PathBuf,
    path: PathBuf,
}

impl Prepared {
    /// Make the prepared checkpoint visible (one atomic rename).
    pub fn commit(self) -> Result<(), Error> {
        std::fs::rename(&self.tmp, &self.path).map_err(|e| {
            Error::state(
                format!("cannot write checkpoint {}: {e}", self.path.display()),
                e,
            )
        })
    }
}

fn tmp_path(path: &Path) -> PathBuf {
    let mut name = path
        .file_name()
        .map(|n| n.to_os_string())
        .unwrap_or_default();
    name.push(".tmp");
    path.with_file_name(name)
}

fn digest(method: &str, params: &Value) -> String {
    let mut h = sha2::Sha256::new();
    h.update(method.as_bytes());
    h.update(b"\n");
    h.update(params.to_string().as_bytes());
    hex::encode(h.finalize())
}

/// The items of one request, in ID order per range, and the progress after them.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct Page {
    /// The items of this page, in ID order per range.
    pub items: Vec<Value>,
    /// Where the export stands after these items (save it as the checkpoint).
    pub progress: Progress,
}

/// Stream pages of items. Memory is bounded by `concurrency` requests of 2,500 items.
pub fn pages<T: Transport + Clone + 'static>(
    transport: T,
    opts: ExportOptions,
) -> impl Stream<Item = Result<Page, Error>> + Send + 'static {
    let (tx, rx) = tokio::sync::mpsc::channel::<Result<Page, Error>>(1);
    // The driver runs in its own task under a supervisor that holds the last sender: if the
    // driver panics (or is aborted), the consumer gets an error rather than a stream that
    // simply ends, which would look like a finished export.
    tokio::spawn(async move {
        let driver_tx = tx.clone();
        let driver = tokio::spawn(async move { drive(transport, opts, &driver_tx).await });
        let failed = match driver.await {
            Ok(Ok(())) => None,
            Ok(Err(e)) => Some(e),
            Err(e) => Some(Error::state("the export driver task failed", e)),
        };
        if let Some(e) = failed {
            let _ = tx.send(Err(e)).await;
        }
    });
    futures::stream::unfold(rx, |mut rx| async move { rx.recv().await.map(|x| (x, rx)) })
}

/// Stream items one by one (a convenience over [`pages`]).
pub fn items<T: Transport + Clone + 'static>(
    transport: T,
    opts: ExportOptions,
) -> impl Stream<Item = Result<Value, Error>> + Send + 'static {
    use futures::StreamExt;
    pages(transport, opts).flat_map(|p| {
        let v: Vec<Result<Value, Error>> = match p {
            Ok(p) => p.items.into_iter().map(Ok).collect(),
            Err(e) => vec![Err(e)],
        };
        futures::stream::iter(v)
    })
}

/// Stream items decoded into the caller's type `T` (see [`crate::Response::json`]). An item
/// that does not fit `T` is an [`Error::Decode`] naming the item's position and field; the
/// stream goes on after it, so a caller may skip such items or stop.
pub fn items_as<T, Tr>(
    transport: Tr,
    opts: ExportOptions,
) -> impl Stream<Item = Result<T, Error>> + Send + 'static
where
    T: serde::de::DeserializeOwned + Send + 'static,
    Tr: Transport + Clone + 'static,
{
    use futures::StreamExt;
    let method = opts.method.clone();
    items(transport, opts)
        .map(move |r| r.and_then(|v| crate::envelope::decode(&v, &format!("{method} item"))))
}

type Tx = tokio::sync::mpsc::Sender<Result<Page, Error>>;

/// Field names for a method: `crm.item.*` speaks camelCase `id`.
fn id_field(method: &str) -> &'static str {
    let m = method.to_ascii_lowercase();
    if m.starts_with("crm.item.") {
        "id"
    } else {
        "ID"
    }
}

/// The items of a list result: an array, `{"items": [...]}`, or a map keyed by ID.
pub fn extract_items(result: Value) -> Vec<Value> {
    match result {
        Value::Array(a) => a,
        Value::Object(mut o) => match o.remove("items") {
            Some(Value::Array(a)) => a,
            Some(other) => {
                o.insert("items".into(), other);
                o.into_iter()
                    .map(|(_, v)| v)
                    .filter(Value::is_object)
                    .collect()
            }
            None => o
                .into_iter()
                .map(|(_, v)| v)
                .filter(Value::is_object)
                .collect(),
        },
        _ => Vec::new(),
    }
}

fn id_of(item: &Value) -> Option<u64> {
    item.get("ID")
        .or_else(|| item.get("id"))
        .and_then(lenient_u64)
}

/// A command of the export's batch failed: reported as the method's own error, marked as
/// coming from inside a batch (`http_status` 0), not as the batch's HTTP 200.
fn api(method: &str, code: &str, description: String) -> Error {
    Error::Api(ApiError {
        code: code.into(),
        description,
        http_status: 0,
        method: method.into(),
    })
}

/// True for the portal's operating-time block: the command did not run and will, once the
/// method's budget resets (the client's patient send waits for that).
fn is_block(code: &str) -> bool {
    code.eq_ignore_ascii_case("OPERATION_TIME_LIMIT")
}

/// Consecutive requests of an export that meet a block before it gives up. Each resend waits
/// until the budget resets (the transport's patient send), so this is not a busy loop.
const BLOCKED_RESENDS: u32 = 30;

async fn drive<T: Transport + Clone + 'static>(
    transport: T,
    opts: ExportOptions,
    tx: &Tx,
) -> Result<(), Error> {
    if !opts.params.is_object() && !opts.params.is_null() {
        return Err(Error::Config("export params must be a JSON object".into()));
    }
    let mut probed = None;
    let progress = match &opts.resume {
        Some(p) if !p.matches(&opts) => {
            return Err(Error::Config(
                "the checkpoint belongs to another export (method or params differ)".into(),
            ));
        }
        Some(p) => p.clone(),
        None => {
            let strategy = match opts.strategy {
                Strategy::Auto => match probe_keyset(&transport, &opts).await? {
                    Some(span) => {
                        probed = Some(span);
                        Strategy::Keyset
                    }
                    None => Strategy::Offset,
                },
                s => s,
            };
            Progress::fresh(&opts, strategy)
        }
    };
    if progress.is_done() {
        return Ok(());
    }
    match progress.strategy {
        Strategy::Offset => offset(transport, opts, progress, tx).await,
        _ => keyset(transport, opts, progress, probed, tx).await,
    }
}

/// Base params: the user's, with `filter` as an object and without `order`/`start`.
fn base_params(params: &Value) -> (Map<String, Value>, Map<String, Value>) {
    let mut base = params.as_object().cloned().unwrap_or_default();
    let mut filter = Map::new();
    let keys: Vec<String> = base.keys().cloned().collect();
    for k in keys {
        let lk = k.to_ascii_lowercase();
        if lk == "filter" {
            if let Some(Value::Object(f)) = base.remove(&k) {
                filter = f;
            }
        } else if lk == "order" || lk == "start" {
            base.remove(&k);
        }
    }
    // Keyset needs the ID in every item.
    if let Some(Value::Array(a)) = base
        .iter_mut()
        .find(|(k, _)| k.eq_ignore_ascii_case("select"))
        .map(|(_, v)| v)
        && !a.is_empty()
        && !a.iter().any(|s| {
            s.as_str()
                .is_some_and(|s| s.eq_ignore_ascii_case("id") || s == "*")
        })
    {
        a.push(json!("ID"));
    }
    (base, filter)
}

/// Send a read-only request; one that failed after the client's own retries is sent again a
/// few times (lists are reads, resending cannot duplicate anything).
async fn send_read<T: Transport>(t: &T, cmd: Map<String, Value>) -> Result<crate::Response, Error> {
    let mut failures = 0;
    loop {
        match t.send_batch_patient(cmd.clone(), false, false).await {
            Err(e) if e.class() == crate::ErrorClass::Transient && failures < EXPORT_RETRIES => {
                failures += 1;
                tracing::warn!(error = %e, "export request failed; sending it again");
            }
            other => return other,
        }
    }
}

enum OutcomeKind {
    Ok,
    Error(String, String),
    Missing,
}

impl Reply {
    fn outcome_ref(&self, key: &str) -> OutcomeKind {
        if self.error.contains_key(key)
            && let Outcome::Error { code, description } = self.outcome(key)
        {
            return OutcomeKind::Error(code, description);
        }
        if self.result.contains_key(key) {
            OutcomeKind::Ok
        } else {
            OutcomeKind::Missing
        }
    }
}

#[cfg(test)]
mod tests {
    use super::keyset::{coalesce, keyed_command};
    use super::*;

    #[test]
    fn ranges_coalesce() {
        assert_eq!(
            coalesce(vec![(5, 9), (0, 5), (20, 30), (9, 9)]),
            vec![(0, 9), (20, 30)]
        );
    }

    #[test]
    fn items_in_every_shape() {
        assert_eq!(extract_items(json!([{"ID": "1"}])).len(), 1);
        assert_eq!(
            extract_items(json!({"items": [{"id": 1}, {"id": 2}]})).len(),
            2
        );
        assert_eq!(extract_items(json!({"1": {"ID": "1"}})).len(), 1);
        assert_eq!(id_of(&json!({"id": 7})), Some(7));
        assert_eq!(id_of(&json!({"ID": "8"})), Some(8));
    }

    #[test]
    fn commands_carry_keyset_params() {
        let (b, f) =
            base_params(&json!({"select": ["TITLE"], "filter": {"STATUS_ID": "NEW"}, "start": 5}));
        let c = keyed_command(
            "crm.lead.list",
            &b,
            &f,
            "ID",
            Some(10),
            Some(60),
            false,
            false,
        );
        assert_eq!(
            c,
            "crm.lead.list?select[0]=TITLE&select[1]=ID&filter[STATUS_ID]=NEW&filter[%3EID]=10&filter[%3C%3DID]=60&order[ID]=ASC&start=-1"
        );
    }
}
