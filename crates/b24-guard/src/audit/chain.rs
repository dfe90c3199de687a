//! The pieces of the keyed chain shared by append and verify: how a line is classified, the
//! head file, and the scan that finds where a valid chain ends.
//!
//! Record (one JSON line): `{"v":2,"seq":N,"ts":…, …fields…, "prev":"<mac of N-1>","mac":"…"}`
//! where `mac` is HMAC-SHA256 (audit-chain key) of the canonical JSON of the record without
//! `mac`. Seq 1's `prev` is [`GENESIS`].

use std::io::{BufRead, Read, Seek, SeekFrom, Write};
use std::path::Path;

use serde_json::{Map, Value, json};
use sha2::Digest;

use crate::GuardError;
use crate::keys::{GuardKey, Purpose};
use crate::store::canonical;

pub(crate) const GENESIS: &str = "0000000000000000000000000000000000000000000000000000000000000000";

/// Markers b24 writes itself; callers' fields may not carry this key.
pub(crate) const MARKER: &str = "marker";

/// Benign markers: they acknowledge torn or unreadable lines (whose digests they list).
pub(crate) const M_REPAIR: &str = "repair";
pub(crate) const M_CHAIN_START: &str = "chain_start";
/// Tamper markers: appending went on, but `verify` fails at them for good.
pub(crate) const M_LOG_CUT: &str = "log_cut";
pub(crate) const M_LOG_MISMATCH: &str = "log_mismatch";
pub(crate) const M_HEAD_MISSING: &str = "head_missing";
pub(crate) const M_HEAD_INVALID: &str = "head_invalid";

pub(crate) fn err(path: &Path, e: impl std::fmt::Display) -> GuardError {
    GuardError::Audit {
        path: path.display().to_string(),
        reason: e.to_string(),
    }
}

pub(crate) fn sha256_hex(b: &[u8]) -> String {
    hex::encode(sha2::Sha256::digest(b))
}

pub(crate) fn record_mac(key: &GuardKey, rec_without_mac: &Map<String, Value>) -> String {
    let c = canonical(&Value::Object(rec_without_mac.clone()));
    key.tag(Purpose::AuditChain, &[c.as_bytes()])
}

/// One line of the log as found.
pub(crate) enum Line {
    /// A v2 record whose MAC checks out.
    Record {
        seq: u64,
        prev: String,
        mac: String,
        rec: Map<String, Value>,
    },
    /// Shaped like a v2 record, but the MAC does not match.
    BadMac { seq: Option<u64> },
    /// A record of the old unkeyed chain (`prev_hash`/`hash`, no `seq`).
    Legacy(Map<String, Value>),
    /// Anything else: a torn write, garbage, an empty line.
    Other,
}

pub(crate) fn classify(bytes: &[u8], key: Option<&GuardKey>) -> Line {
    let Ok(Value::Object(mut rec)) = serde_json::from_slice::<Value>(bytes) else {
        return Line::Other;
    };
    if rec.get("v") != Some(&json!(2)) {
        if !rec.contains_key("seq") && rec.contains_key("hash") && rec.contains_key("prev_hash") {
            return Line::Legacy(rec);
        }
        return Line::Other;
    }
    let seq = rec.get("seq").and_then(Value::as_u64);
    let Some(Value::String(mac)) = rec.remove("mac") else {
        return Line::BadMac { seq };
    };
    let (Some(seq), Some(prev), Some(key)) = (
        seq,
        rec.get("prev").and_then(Value::as_str).map(str::to_string),
        key,
    ) else {
        return Line::BadMac { seq };
    };
    let c = canonical(&Value::Object(rec.clone()));
    if !key.check(Purpose::AuditChain, &[c.as_bytes()], &mac) {
        return Line::BadMac { seq: Some(seq) };
    }
    Line::Record {
        seq,
        prev,
        mac,
        rec,
    }
}

/// Where the chain stands: the last record's seq and MAC and where its line sits in the file.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub(crate) struct Head {
    pub seq: u64,
    pub mac: String,
    /// Log length in bytes right after that record.
    pub len: u64,
    pub last_off: u64,
    /// Length of the last record's line, newline included.
    pub last_len: u64,
    pub last_sha256: String,
}

impl Head {
    pub fn genesis() -> Head {
        Head {
            seq: 0,
            mac: GENESIS.into(),
            len: 0,
            last_off: 0,
            last_len: 0,
            last_sha256: String::new(),
        }
    }

    fn body(&self) -> String {
        canonical(&serde_json::to_value(self).unwrap_or(Value::Null))
    }
}

/// What the head file holds.
pub(crate) enum HeadState {
    Missing,
    /// Present but unreadable or its MAC does not match (edited, or written without the key).
    Invalid(String),
    Ok(Head),
}

pub(crate) fn read_head(path: &Path, key: Option<&GuardKey>) -> Result<HeadState, GuardError> {
    let text = match std::fs::read_to_string(path) {
        Ok(t) if t.trim().is_empty() => {
            return Ok(HeadState::Invalid("empty".into()));
        }
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(HeadState::Missing),
        Err(e) if e.kind() == std::io::ErrorKind::InvalidData => {
            return Ok(HeadState::Invalid("not UTF-8".into()));
        }
        Err(e) => return Err(err(path, e)),
    };
    let Ok(Value::Object(mut o)) = serde_json::from_str::<Value>(&text) else {
        return Ok(HeadState::Invalid("not a JSON object".into()));
    };
    let Some(Value::String(tag)) = o.remove("head_mac") else {
        return Ok(HeadState::Invalid("no head_mac".into()));
    };
    let Ok(head) = serde_json::from_value::<Head>(Value::Object(o)) else {
        return Ok(HeadState::Invalid("fields missing".into()));
    };
    let Some(key) = key else {
        return Ok(HeadState::Invalid("the guard key is missing".into()));
    };
    if !key.check(Purpose::AuditHead, &[head.body().as_bytes()], &tag) {
        return Ok(HeadState::Invalid(
            "its MAC does not match (edited, or written without the key)".into(),
        ));
    }
    Ok(HeadState::Ok(head))
}

/// The head file is one line padded to this size and rewritten in place: a write this small
/// at offset 0 lands whole, and an in-place rewrite costs no rename or inode churn.
const HEAD_SIZE: usize = 512;

/// Rewrite the head file in place. Only `durable` writes are fsynced: the log is fsynced
/// before every head update, so a head write lost in a crash leaves the previous head, one
/// record behind, which the next append adopts. The genesis head is durable so that a crash
/// right after the very first record is not mistaken for a deleted head.
pub(crate) fn write_head(
    path: &Path,
    key: &GuardKey,
    head: &Head,
    durable: bool,
) -> Result<(), GuardError> {
    let body = head.body();
    let mut v = serde_json::to_value(head).map_err(|e| err(path, e))?;
    v["head_mac"] = json!(key.tag(Purpose::AuditHead, &[body.as_bytes()]));
    let mut line = v.to_string().into_bytes();
    if line.len() >= HEAD_SIZE {
        return Err(err(path, "the head record does not fit its slot"));
    }
    line.resize(HEAD_SIZE - 1, b' ');
    line.push(b'\n');
    let mut opts = std::fs::OpenOptions::new();
    opts.write(true).create(true).truncate(false);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        opts.mode(0o600);
    }
    let mut f = opts.open(path).map_err(|e| err(path, e))?;
    f.seek(SeekFrom::Start(0))
        .and_then(|_| f.write_all(&line))
        .map_err(|e| err(path, e))?;
    if f.metadata().map_err(|e| err(path, e))?.len() != HEAD_SIZE as u64 {
        f.set_len(HEAD_SIZE as u64).map_err(|e| err(path, e))?;
    }
    if durable {
        f.sync_all().map_err(|e| err(path, e))?;
    }
    Ok(())
}

/// A stretch of the log that is not part of the chain (torn write, garbage, empty line).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Span {
    pub line: u64,
    pub offset: u64,
    /// Bytes of the line, without its newline.
    pub len: u64,
    pub sha256: String,
    pub terminated: bool,
}

impl Span {
    pub fn to_json(&self) -> Value {
        json!({"offset": self.offset, "len": self.len, "sha256": self.sha256})
    }
}

/// (line number, byte offset, bytes without the newline, whether a newline ended it).
pub(crate) type RawLine<'a> = (u64, u64, &'a [u8], bool);

/// Reads the log line by line as bytes (no encoding assumptions), tracking offsets.
pub(crate) struct Lines<R> {
    r: std::io::BufReader<R>,
    pub offset: u64,
    pub lineno: u64,
    buf: Vec<u8>,
}

impl<R: Read> Lines<R> {
    pub fn new(r: R, offset: u64, lineno: u64) -> Lines<R> {
        Lines {
            r: std::io::BufReader::with_capacity(256 * 1024, r),
            offset,
            lineno,
            buf: Vec::new(),
        }
    }

    /// Next line: (line number, offset, bytes without newline, terminated).
    pub fn next_line(&mut self) -> std::io::Result<Option<RawLine<'_>>> {
        self.buf.clear();
        let n = self.r.read_until(b'\n', &mut self.buf)?;
        if n == 0 {
            return Ok(None);
        }
        let off = self.offset;
        self.offset += n as u64;
        self.lineno += 1;
        let terminated = self.buf.last() == Some(&b'\n');
        if terminated {
            self.buf.pop();
        }
        Ok(Some((self.lineno, off, &self.buf, terminated)))
    }
}

/// What a scan of part of the log found.
pub(crate) struct Scan {
    /// The chain's end: the last record that continues from the starting head.
    pub head: Head,
    /// Records adopted (valid continuations found after the starting head).
    pub adopted: u64,
    /// Lines after the chain's end that are not part of it.
    pub spans: Vec<Span>,
    /// Old-format (unkeyed) records at the start, before any v2 record.
    pub legacy: u64,
    /// Spans shaped like keyed records (wrong MAC, or not continuing the chain): history
    /// that does not check out, never to be sealed as mere garbage at a chain start.
    pub keyed_looking: u64,
}

/// Scan from `start.len` to the end of the file: follow records that continue the chain from
/// `start`; after the first line that does not, everything is a span (it will be sealed).
pub(crate) fn scan(
    file: &mut std::fs::File,
    start: &Head,
    key: &GuardKey,
    allow_legacy: bool,
) -> std::io::Result<Scan> {
    file.seek(SeekFrom::Start(start.len))?;
    let mut lines = Lines::new(&mut *file, start.len, 0);
    let mut head = start.clone();
    let (mut adopted, mut legacy, mut keyed_looking, mut spans) = (0, 0, 0, Vec::new());
    while let Some((lineno, off, bytes, terminated)) = lines.next_line()? {
        let full_len = bytes.len() as u64 + u64::from(terminated);
        if spans.is_empty() {
            match classify(bytes, Some(key)) {
                Line::Record { seq, prev, mac, .. } if seq == head.seq + 1 && prev == head.mac => {
                    let mut raw = bytes.to_vec();
                    if terminated {
                        raw.push(b'\n');
                    }
                    head = Head {
                        seq,
                        mac,
                        len: off + full_len,
                        last_off: off,
                        last_len: full_len,
                        last_sha256: sha256_hex(&raw),
                    };
                    adopted += 1;
                    continue;
                }
                Line::Legacy(_) if allow_legacy && head.seq == 0 => {
                    legacy += 1;
                    head.len = off + full_len;
                    continue;
                }
                _ => {}
            }
        }
        if matches!(
            classify(bytes, Some(key)),
            Line::Record { .. } | Line::BadMac { .. }
        ) {
            keyed_looking += 1;
        }
        spans.push(Span {
            line: lineno,
            offset: off,
            len: bytes.len() as u64,
            sha256: sha256_hex(bytes),
            terminated,
        });
    }
    Ok(Scan {
        head,
        adopted,
        spans,
        legacy,
        keyed_looking,
    })
}

/// Whether the bytes where the head says the last record is are that record.
pub(crate) fn last_record_matches(file: &mut std::fs::File, head: &Head) -> std::io::Result<bool> {
    if head.seq == 0 {
        return Ok(true);
    }
    let Ok(n) = usize::try_from(head.last_len) else {
        return Ok(false);
    };
    let mut buf = vec![0u8; n];
    file.seek(SeekFrom::Start(head.last_off))?;
    match file.read_exact(&mut buf) {
        Ok(()) => Ok(sha256_hex(&buf) == head.last_sha256),
        Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => Ok(false),
        Err(e) => Err(e),
    }
}

/// Whether a non-empty file ends with a newline (reads one byte).
pub(crate) fn ends_with_newline(file: &mut std::fs::File, size: u64) -> std::io::Result<bool> {
    if size == 0 {
        return Ok(true);
    }
    let mut b = [0u8; 1];
    file.seek(SeekFrom::Start(size - 1))?;
    file.read_exact(&mut b)?;
    Ok(b[0] == b'\n')
}
