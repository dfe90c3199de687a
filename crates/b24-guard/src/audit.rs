//! The audit log: append-only JSONL, one record per call, refusal, plan and apply. Each record
//! carries the hash of the previous one, so an edited or deleted line breaks the chain and
//! `verify` names it. Appends from several processes are serialised by a lock file.

use std::io::{BufRead, Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};

use serde_json::{Map, Value, json};
use sha2::Digest;

use crate::GuardError;

const GENESIS: &str = "0000000000000000000000000000000000000000000000000000000000000000";

pub struct AuditLog {
    path: PathBuf,
}

fn err(path: &Path, e: impl std::fmt::Display) -> GuardError {
    GuardError::Audit {
        path: path.display().to_string(),
        reason: e.to_string(),
    }
}

fn hash_of(record_without_hash: &Value) -> String {
    hex::encode(sha2::Sha256::digest(
        crate::store::canonical(record_without_hash).as_bytes(),
    ))
}

impl AuditLog {
    pub fn new(path: impl Into<PathBuf>) -> AuditLog {
        AuditLog { path: path.into() }
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Append one record (fields of `fields` plus v, ts, prev_hash, hash).
    pub fn append(&self, fields: Map<String, Value>) -> Result<Value, GuardError> {
        let p = &self.path;
        if let Some(dir) = p.parent() {
            std::fs::create_dir_all(dir).map_err(|e| err(p, e))?;
        }
        let mut opts = std::fs::OpenOptions::new();
        opts.create(true).write(true).truncate(false);
        #[cfg(unix)]
        {
            use std::os::unix::fs::OpenOptionsExt;
            opts.mode(0o600);
        }
        let lock = opts.open(p.with_extension("lock")).map_err(|e| err(p, e))?;
        lock.lock().map_err(|e| err(p, e))?;
        let prev = last_hash(p)?;
        let mut rec = Map::new();
        rec.insert("v".into(), json!(1));
        rec.insert("ts".into(), json!(jiff::Timestamp::now().to_string()));
        for (k, v) in fields {
            rec.insert(k, v);
        }
        rec.insert("prev_hash".into(), json!(prev));
        let h = hash_of(&Value::Object(rec.clone()));
        rec.insert("hash".into(), json!(h));
        let line = serde_json::to_string(&rec).map_err(|e| err(p, e))?;
        let mut aopts = std::fs::OpenOptions::new();
        aopts.create(true).append(true);
        #[cfg(unix)]
        {
            use std::os::unix::fs::OpenOptionsExt;
            aopts.mode(0o600);
        }
        let mut f = aopts.open(p).map_err(|e| err(p, e))?;
        f.write_all(format!("{line}\n").as_bytes())
            .and_then(|_| f.sync_data())
            .map_err(|e| err(p, e))?;
        drop(lock);
        Ok(Value::Object(rec))
    }

    /// Check the whole chain. `Ok(n)` = n records intact; `Err` names the first bad line.
    pub fn verify(&self) -> Result<Result<usize, String>, GuardError> {
        let f = match std::fs::File::open(&self.path) {
            Ok(f) => f,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Ok(0)),
            Err(e) => return Err(err(&self.path, e)),
        };
        let mut prev = GENESIS.to_string();
        let mut n = 0;
        for (i, line) in std::io::BufReader::new(f).lines().enumerate() {
            let line = line.map_err(|e| err(&self.path, e))?;
            let lineno = i + 1;
            let Ok(Value::Object(mut rec)) = serde_json::from_str::<Value>(&line) else {
                return Ok(Err(format!("line {lineno}: not a JSON record")));
            };
            let Some(Value::String(h)) = rec.remove("hash") else {
                return Ok(Err(format!("line {lineno}: no hash")));
            };
            if rec.get("prev_hash").and_then(|v| v.as_str()) != Some(prev.as_str()) {
                return Ok(Err(format!(
                    "line {lineno}: the chain is broken (a record before it was removed or changed)"
                )));
            }
            if hash_of(&Value::Object(rec)) != h {
                return Ok(Err(format!(
                    "line {lineno}: the record was changed after it was written"
                )));
            }
            prev = h;
            n += 1;
        }
        Ok(Ok(n))
    }

    /// The last `n` records.
    pub fn tail(&self, n: usize) -> Result<Vec<Value>, GuardError> {
        let text = match std::fs::read_to_string(&self.path) {
            Ok(t) => t,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(vec![]),
            Err(e) => return Err(err(&self.path, e)),
        };
        let lines: Vec<&str> = text.lines().collect();
        Ok(lines[lines.len().saturating_sub(n)..]
            .iter()
            .filter_map(|l| serde_json::from_str(l).ok())
            .collect())
    }
}

/// The hash of the last record (genesis when empty), reading only the file's tail.
fn last_hash(p: &Path) -> Result<String, GuardError> {
    let mut f = match std::fs::File::open(p) {
        Ok(f) => f,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(GENESIS.into()),
        Err(e) => return Err(err(p, e)),
    };
    let len = f.metadata().map_err(|e| err(p, e))?.len();
    let start = len.saturating_sub(64 * 1024);
    f.seek(SeekFrom::Start(start)).map_err(|e| err(p, e))?;
    let mut buf = String::new();
    f.read_to_string(&mut buf).map_err(|e| err(p, e))?;
    match buf.lines().rev().find(|l| !l.trim().is_empty()) {
        None => Ok(GENESIS.into()),
        Some(l) => serde_json::from_str::<Value>(l)
            .ok()
            .and_then(|v| v.get("hash").and_then(|h| h.as_str()).map(str::to_string))
            .ok_or_else(|| err(p, "the last record is unreadable; run `b24 audit verify`")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn chain_detects_edits_and_removals() {
        let d = tempfile::tempdir().unwrap();
        let log = AuditLog::new(d.path().join("audit.jsonl"));
        for i in 0..5 {
            let mut m = Map::new();
            m.insert("method".into(), json!(format!("crm.lead.get#{i}")));
            log.append(m).unwrap();
        }
        assert_eq!(log.verify().unwrap(), Ok(5));
        let text = std::fs::read_to_string(log.path()).unwrap();
        std::fs::write(log.path(), text.replace("crm.lead.get#2", "crm.lead.get#9")).unwrap();
        assert!(log.verify().unwrap().unwrap_err().starts_with("line 3"));
        let lines: Vec<&str> = text.lines().collect();
        let removed = [&lines[..1], &lines[2..]].concat().join("\n") + "\n";
        std::fs::write(log.path(), removed).unwrap();
        assert!(log.verify().unwrap().unwrap_err().starts_with("line 2"));
        std::fs::write(log.path(), &text).unwrap();
        assert_eq!(log.verify().unwrap(), Ok(5));
        assert_eq!(log.tail(2).unwrap().len(), 2);
    }
}
