//! The audit log: append-only JSONL, one record per call, refusal, plan and apply.
//!
//! Records carry a sequence number and an HMAC-SHA256 chain keyed with the guard key
//! ([`crate::keys`]), so an edited, removed or reordered record — or a chain recomputed without
//! the key — fails [`AuditLog::verify_report`]. The chain's head (last seq, its MAC and where it
//! ends in the file) is kept apart in a head file, MAC'd too, so a cut tail, an emptied or a
//! deleted log are caught as well.
//!
//! Appending never reads a fixed-size tail: it trusts the head, checks that the head's last
//! record is still where the head says (reading exactly that record), and reads only what was
//! written after it. A torn last line (crash, disk full) or a garbage line is sealed by a
//! `repair` marker record that lists each bad line's offset, length and SHA-256, and auditing
//! goes on; `verify` accepts exactly those lines. If the log was cut, replaced or its head
//! removed, the append still records (continuing from the head) after a tamper marker that
//! `verify` reports for good. Whatever cannot be written is an `Err`: the caller must not
//! send a write it could not record (fail closed).
//!
//! Appends from several processes are serialised by an advisory lock file.

mod chain;
mod keyed;
mod params;
mod verify;

use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use serde_json::{Map, Value, json};

use crate::GuardError;
use crate::keys::GuardKey;
use chain::{Head, HeadState, MARKER, err};

pub use params::ParamsMode;
pub use verify::{Problem, VerifyReport};

/// An audit log plus where its key and head live.
pub struct AuditLog {
    path: PathBuf,
    head_path: PathBuf,
    lock_path: PathBuf,
    state_dir: PathBuf,
    key: OnceLock<GuardKey>,
}

/// What [`AuditLog::append_record`] wrote.
#[derive(Debug, Clone)]
pub struct Appended {
    /// The caller's record as written (with `seq`, `ts`, `prev`, `mac`).
    pub record: Value,
    pub seq: u64,
    /// Marker records written first, one line each: what was repaired or found tampered. The
    /// gate may print them as warnings; they are in the log either way.
    pub notes: Vec<String>,
}

impl AuditLog {
    /// A log at `path` whose key (`guard.key`) and head (`<file name>.head`) live in the log's
    /// own directory. Kept for callers that know only the log path; prefer [`AuditLog::open`].
    pub fn new(path: impl Into<PathBuf>) -> AuditLog {
        let path = path.into();
        let dir = path
            .parent()
            .filter(|p| !p.as_os_str().is_empty())
            .map(Path::to_path_buf)
            .unwrap_or_else(|| PathBuf::from("."));
        AuditLog::open(path, &dir)
    }

    /// A log at `log_path` with its key and head kept in `state_dir` (`guard.key`,
    /// `<log file name>.head`, `<log file name>.lock`). Nothing is created until the first
    /// append; verifying never creates a key.
    pub fn open(log_path: impl Into<PathBuf>, state_dir: &Path) -> AuditLog {
        let path = log_path.into();
        let name = path
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_else(|| "audit.jsonl".into());
        AuditLog {
            head_path: state_dir.join(format!("{name}.head")),
            lock_path: state_dir.join(format!("{name}.lock")),
            state_dir: state_dir.to_path_buf(),
            path,
            key: OnceLock::new(),
        }
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Where the head (last seq and MAC) is kept.
    pub fn head_path(&self) -> &Path {
        &self.head_path
    }

    fn key(&self) -> Result<&GuardKey, GuardError> {
        if let Some(k) = self.key.get() {
            return Ok(k);
        }
        let k = GuardKey::load_or_create(&self.state_dir)?;
        Ok(self.key.get_or_init(|| k))
    }

    /// What to record about a call's params, per the operator's [`ParamsMode`]: by default the
    /// key paths and a keyed digest of the values; `Full` keeps the values with secrets
    /// (secret-named keys, and every string in `secrets`) redacted. Secrets are never kept.
    pub fn params_entry(
        &self,
        params: &Value,
        mode: ParamsMode,
        secrets: &[String],
    ) -> Result<Value, GuardError> {
        Ok(params::entry(params, mode, secrets, self.key()?))
    }

    /// Append one record (old signature): the record as written.
    pub fn append(&self, fields: Map<String, Value>) -> Result<Value, GuardError> {
        self.append_record(fields).map(|a| a.record)
    }

    /// Append one record: `fields` plus `v`, `seq`, `ts`, `prev`, `mac` (those names and
    /// `marker` are reserved and dropped from `fields`). `Err` means nothing was recorded: the
    /// caller must not send a write (fail closed).
    pub fn append_record(&self, fields: Map<String, Value>) -> Result<Appended, GuardError> {
        let p = &self.path;
        if let Some(dir) = p.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir).map_err(|e| err(p, e))?;
        }
        std::fs::create_dir_all(&self.state_dir).map_err(|e| err(&self.state_dir, e))?;
        let key = self.key()?;
        let mut opts = std::fs::OpenOptions::new();
        opts.create(true).write(true).truncate(false);
        #[cfg(unix)]
        {
            use std::os::unix::fs::OpenOptionsExt;
            opts.mode(0o600);
        }
        let lock = opts
            .open(&self.lock_path)
            .map_err(|e| err(&self.lock_path, e))?;
        lock.lock().map_err(|e| err(&self.lock_path, e))?;
        let res = self.append_locked(key, fields);
        drop(lock);
        res
    }

    fn append_locked(
        &self,
        key: &GuardKey,
        fields: Map<String, Value>,
    ) -> Result<Appended, GuardError> {
        let p = &self.path;
        match std::fs::metadata(p) {
            Ok(m) if !m.is_file() => {
                return Err(err(
                    p,
                    "not a regular file: the audit log must be a file b24 can append to",
                ));
            }
            _ => {}
        }
        let mut aopts = std::fs::OpenOptions::new();
        aopts.create(true).read(true).append(true);
        #[cfg(unix)]
        {
            use std::os::unix::fs::OpenOptionsExt;
            aopts.mode(0o600);
        }
        let mut f = aopts.open(p).map_err(|e| err(p, e))?;
        let size = f.metadata().map_err(|e| err(p, e))?.len();
        let head_state = chain::read_head(&self.head_path, Some(key))?;
        let (mut head, markers) = self.recover(&mut f, size, head_state, key)?;

        let mut out = Vec::new();
        if !chain::ends_with_newline(&mut f, size).map_err(|e| err(p, e))? {
            out.push(b'\n');
        }
        let mut notes = Vec::new();
        let mut last_line = Vec::new();
        let mut record = Value::Null;
        let n_markers = markers.len();
        for (i, m) in markers
            .into_iter()
            .chain(std::iter::once(fields))
            .enumerate()
        {
            let is_marker = i < n_markers;
            let rec = build(&head, m, is_marker, key);
            let mut line = serde_json::to_vec(&rec).map_err(|e| err(p, e))?;
            line.push(b'\n');
            if is_marker {
                notes.push(format!(
                    "audit log {}: {}",
                    p.display(),
                    rec.get("reason")
                        .and_then(Value::as_str)
                        .unwrap_or("marker")
                ));
            }
            head.seq += 1;
            head.mac = rec["mac"].as_str().unwrap_or_default().to_string();
            out.extend_from_slice(&line);
            last_line = line;
            record = rec;
        }
        f.write_all(&out)
            .and_then(|_| f.sync_data())
            .map_err(|e| err(p, e))?;
        let len = f.metadata().map_err(|e| err(p, e))?.len();
        head.len = len;
        head.last_len = last_line.len() as u64;
        head.last_off = len - head.last_len;
        head.last_sha256 = chain::sha256_hex(&last_line);
        chain::write_head(&self.head_path, key, &head, false)?;
        Ok(Appended {
            seq: head.seq,
            record,
            notes,
        })
    }

    /// Where the chain goes on from, and the marker records to write first.
    fn recover(
        &self,
        f: &mut std::fs::File,
        size: u64,
        head_state: HeadState,
        key: &GuardKey,
    ) -> Result<(Head, Vec<Map<String, Value>>), GuardError> {
        let p = &self.path;
        let io = |e: std::io::Error| err(p, e);
        let marker = |kind: &str, reason: String, extra: Value| {
            let mut m = Map::new();
            m.insert(MARKER.into(), json!(kind));
            m.insert("reason".into(), json!(reason));
            if let Value::Object(o) = extra {
                m.extend(o);
            }
            m
        };
        match head_state {
            HeadState::Ok(h) => {
                if size < h.len {
                    let reason = format!(
                        "the log is {size} bytes but the head recorded {} bytes up to seq {}: it was cut or emptied",
                        h.len, h.seq
                    );
                    let extra =
                        json!({"expected_len": h.len, "found_len": size, "head_seq": h.seq});
                    return Ok((h, vec![marker(chain::M_LOG_CUT, reason, extra)]));
                }
                if !chain::last_record_matches(f, &h).map_err(io)? {
                    let reason = format!(
                        "record seq {} is no longer where the head says (offset {}): the log was replaced or edited",
                        h.seq, h.last_off
                    );
                    let extra = json!({"head_seq": h.seq, "found_len": size});
                    return Ok((h, vec![marker(chain::M_LOG_MISMATCH, reason, extra)]));
                }
                if size == h.len {
                    return Ok((h, vec![]));
                }
                let s = chain::scan(f, &h, key, false).map_err(io)?;
                let mut markers = vec![];
                if !s.spans.is_empty() {
                    markers.push(seal(chain::M_REPAIR, &s, "after the last record"));
                }
                Ok((s.head, markers))
            }
            state => {
                let s = chain::scan(f, &Head::genesis(), key, true).map_err(io)?;
                let invalid = match state {
                    HeadState::Invalid(why) => Some(why),
                    _ => None,
                };
                if s.head.seq == 0 && s.keyed_looking == 0 && invalid.is_none() {
                    // No keyed record yet: a new log, or one from an older b24 (unkeyed).
                    // Write the head first, so that a crash right after the first record
                    // leaves a head to adopt it from instead of a false "head missing".
                    if s.spans.is_empty() {
                        chain::write_head(&self.head_path, key, &s.head, true)?;
                    }
                    if s.spans.is_empty() && s.legacy == 0 {
                        return Ok((s.head, vec![]));
                    }
                    let mut m = seal(chain::M_CHAIN_START, &s, "before the keyed chain");
                    m.insert("legacy_records".into(), json!(s.legacy));
                    return Ok((s.head, vec![m]));
                }
                let (kind, reason) = match invalid {
                    Some(why) => (
                        chain::M_HEAD_INVALID,
                        format!(
                            "the head file {} is invalid ({why}); went on from the last valid record, seq {}",
                            self.head_path.display(),
                            s.head.seq
                        ),
                    ),
                    None => (
                        chain::M_HEAD_MISSING,
                        format!(
                            "the head file {} was missing; went on from the last valid record, seq {}: records after it may have been cut",
                            self.head_path.display(),
                            s.head.seq
                        ),
                    ),
                };
                let spans: Vec<Value> = s.spans.iter().map(chain::Span::to_json).collect();
                let extra = json!({"recovered_seq": s.head.seq, "spans": spans});
                Ok((s.head, vec![marker(kind, reason, extra)]))
            }
        }
    }

    /// The last `n` records that parse as JSON (old signature).
    pub fn tail(&self, n: usize) -> Result<Vec<Value>, GuardError> {
        self.records(&Filter::default(), n)
    }

    /// The last `limit` records matching `filter`, oldest first. Streams the file; lines that
    /// are not records are skipped (verify reports them).
    pub fn records(&self, filter: &Filter, limit: usize) -> Result<Vec<Value>, GuardError> {
        let f = match std::fs::File::open(&self.path) {
            Ok(f) => f,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(vec![]),
            Err(e) => return Err(err(&self.path, e)),
        };
        let mut lines = chain::Lines::new(f, 0, 0);
        let mut out = std::collections::VecDeque::new();
        while let Some((_, _, bytes, _)) = lines.next_line().map_err(|e| err(&self.path, e))? {
            let Ok(v @ Value::Object(_)) = serde_json::from_slice::<Value>(bytes) else {
                continue;
            };
            if filter.matches(&v) {
                out.push_back(v);
                if out.len() > limit {
                    out.pop_front();
                }
            }
        }
        Ok(out.into())
    }
}

/// Which records [`AuditLog::records`] returns. Empty fields match everything.
#[derive(Debug, Clone, Default)]
pub struct Filter {
    /// Exact method (case-insensitive), or a prefix when it ends with `*`.
    pub method: Option<String>,
    /// Exact decision (`allow`, `deny`, `dry_run`, `plan`, `replayed`, …).
    pub decision: Option<String>,
    /// Only records at or after this time.
    pub since: Option<jiff::Timestamp>,
}

impl Filter {
    pub fn matches(&self, v: &Value) -> bool {
        if let Some(m) = &self.method {
            let have = v
                .get("method")
                .and_then(Value::as_str)
                .unwrap_or("")
                .to_ascii_lowercase();
            let want = m.to_ascii_lowercase();
            let ok = match want.strip_suffix('*') {
                Some(prefix) => have.starts_with(prefix),
                None => have == want,
            };
            if !ok {
                return false;
            }
        }
        if let Some(d) = &self.decision
            && v.get("decision").and_then(Value::as_str) != Some(d.as_str())
        {
            return false;
        }
        if let Some(since) = self.since {
            let ts = v
                .get("ts")
                .and_then(Value::as_str)
                .and_then(|t| t.parse::<jiff::Timestamp>().ok());
            if ts.is_none_or(|t| t < since) {
                return false;
            }
        }
        true
    }
}

/// A marker sealing the spans a scan found.
fn seal(kind: &str, s: &chain::Scan, where_: &str) -> Map<String, Value> {
    let torn = s.spans.iter().filter(|x| !x.terminated).count();
    let reason = format!(
        "sealed {} unreadable line(s) {where_} ({torn} torn, lines listed by offset and SHA-256); {} complete record(s) adopted",
        s.spans.len(),
        s.adopted
    );
    let mut m = Map::new();
    m.insert(MARKER.into(), json!(kind));
    m.insert("reason".into(), json!(reason));
    m.insert(
        "spans".into(),
        Value::Array(s.spans.iter().map(chain::Span::to_json).collect()),
    );
    m
}

/// One record continuing the chain from `head`.
fn build(head: &Head, fields: Map<String, Value>, is_marker: bool, key: &GuardKey) -> Value {
    const RESERVED: &[&str] = &["v", "seq", "ts", "prev", "mac"];
    let mut rec = Map::new();
    rec.insert("v".into(), json!(2));
    rec.insert("seq".into(), json!(head.seq + 1));
    rec.insert("ts".into(), json!(jiff::Timestamp::now().to_string()));
    for (k, v) in fields {
        if RESERVED.contains(&k.as_str()) || (k == MARKER && !is_marker) {
            continue;
        }
        rec.insert(k, v);
    }
    rec.insert("prev".into(), json!(head.mac));
    let mac = chain::record_mac(key, &rec);
    rec.insert("mac".into(), json!(mac));
    Value::Object(rec)
}
