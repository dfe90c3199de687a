//! `verify`: walk the whole log once (streaming, bytes — no size or encoding assumptions) and
//! check the keyed chain, the sealed spans and the head.

use serde_json::{Value, json};
use sha2::Digest;

use super::AuditLog;
use super::chain::{self, GENESIS, Head, HeadState, Line, MARKER, Span, classify, err};
use crate::GuardError;
use crate::keys::GuardKey;
use crate::store::canonical;

/// The first thing found wrong, and where.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Problem {
    /// 1-based line of the log, when the problem sits on a line.
    pub line: Option<u64>,
    /// The record's sequence number, when known.
    pub seq: Option<u64>,
    pub what: String,
}

impl std::fmt::Display for Problem {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match (self.line, self.seq) {
            (Some(l), Some(s)) => write!(f, "line {l} (seq {s}): {}", self.what),
            (Some(l), None) => write!(f, "line {l}: {}", self.what),
            (None, Some(s)) => write!(f, "seq {s}: {}", self.what),
            (None, None) => f.write_str(&self.what),
        }
    }
}

/// What `verify` found.
#[derive(Debug, Clone, Default, serde::Serialize)]
pub struct VerifyReport {
    /// Keyed records checked (up to the problem, if any).
    pub records: u64,
    /// Old unkeyed records at the start of the log (checked against their own SHA-256 chain).
    pub legacy_records: u64,
    /// Seq and MAC the head file names (note them somewhere else to detect a rollback).
    pub head_seq: Option<u64>,
    pub head_mac: Option<String>,
    /// Torn or unreadable lines sealed by repair markers, and anything else worth knowing
    /// that does not make the log untrustworthy.
    pub notes: Vec<String>,
    pub problem: Option<Problem>,
}

impl VerifyReport {
    pub fn is_ok(&self) -> bool {
        self.problem.is_none()
    }
}

fn problem(line: Option<u64>, seq: Option<u64>, what: impl Into<String>) -> Option<Problem> {
    Some(Problem {
        line,
        seq,
        what: what.into(),
    })
}

impl AuditLog {
    /// Check the whole chain (old signature): `Ok(n)` = n records intact; `Err` names the
    /// first problem ("line N (seq S): …").
    pub fn verify(&self) -> Result<Result<usize, String>, GuardError> {
        let r = self.verify_report()?;
        Ok(match r.problem {
            None => Ok((r.records + r.legacy_records) as usize),
            Some(p) => Err(p.to_string()),
        })
    }

    /// Check the whole log and its head. `Err` only when the files cannot be read; anything
    /// wrong with their contents is `report.problem`.
    pub fn verify_report(&self) -> Result<VerifyReport, GuardError> {
        let key = GuardKey::load_existing(&self.state_dir)?;
        // Read the head under the appenders' lock so it is never seen half-rewritten; the
        // log is read after, so it can only be ahead of the head (which is accepted).
        let lock = std::fs::OpenOptions::new()
            .write(true)
            .open(&self.lock_path)
            .ok()
            .filter(|l| l.lock().is_ok());
        let head = chain::read_head(&self.head_path, key.as_ref());
        drop(lock);
        let head = head?;
        let mut rep = VerifyReport::default();
        if let HeadState::Ok(h) = &head {
            rep.head_seq = Some(h.seq);
            rep.head_mac = Some(h.mac.clone());
        }
        let file = match std::fs::File::open(&self.path) {
            Ok(f) => Some(f),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => None,
            Err(e) => return Err(err(&self.path, e)),
        };
        let mut walk = Walk {
            key: key.as_ref(),
            cur: (0, GENESIS.to_string()),
            legacy_prev: GENESIS.to_string(),
            pending: Vec::new(),
            mac_at: Vec::new(),
            last_line: 0,
            bad: None,
        };
        if let Some(f) = file {
            let mut lines = chain::Lines::new(f, 0, 0);
            while let Some((lineno, off, bytes, terminated)) =
                lines.next_line().map_err(|e| err(&self.path, e))?
            {
                rep.problem = walk.line(&mut rep, &head, lineno, off, bytes, terminated);
                if rep.problem.is_some() {
                    return Ok(rep);
                }
            }
        } else if matches!(head, HeadState::Ok(ref h) if h.seq > 0) {
            rep.problem = problem(
                None,
                None,
                format!(
                    "the log is missing but the head {} says it held {} records: it was deleted",
                    self.head_path.display(),
                    rep.head_seq.unwrap_or(0)
                ),
            );
            return Ok(rep);
        }
        if let Some(p) = walk.bad_problem() {
            rep.problem = Some(p);
            return Ok(rep);
        }
        if let Some(first) = walk.pending.first() {
            rep.notes.push(format!(
                "{} unreadable line(s) after the last record (from line {}): a torn or foreign write; the next append seals it",
                walk.pending.len(),
                first.line
            ));
        }
        rep.problem = walk.finish(&rep, &head, self);
        if let HeadState::Ok(h) = &head
            && rep.problem.is_none()
            && walk.cur.0 > h.seq
        {
            rep.notes.push(format!(
                "the head names seq {} but the log goes on to seq {}: an append was interrupted after writing its record (the next append catches the head up)",
                h.seq, walk.cur.0
            ));
        }
        Ok(rep)
    }
}

struct Walk<'a> {
    key: Option<&'a GuardKey>,
    /// Last good keyed record: (seq, mac).
    cur: (u64, String),
    legacy_prev: String,
    /// Lines since the last record that are not records; the next record must seal them.
    pending: Vec<Span>,
    /// (seq, mac, line) of records, only the one the head names is looked up afterwards.
    mac_at: Vec<(u64, String)>,
    last_line: u64,
    /// The first pending line shaped like a keyed record whose MAC does not match.
    bad: Option<(u64, Option<u64>)>,
}

impl Walk<'_> {
    fn push_span(&mut self, lineno: u64, off: u64, bytes: &[u8], terminated: bool) {
        self.pending.push(Span {
            line: lineno,
            offset: off,
            len: bytes.len() as u64,
            sha256: chain::sha256_hex(bytes),
            terminated,
        });
    }

    /// The problem a pending record-shaped line with a wrong MAC stands for.
    fn bad_problem(&self) -> Option<Problem> {
        let (line, seq) = self.bad?;
        if self.key.is_none() {
            return problem(
                Some(line),
                seq,
                "the guard key is missing, so the keyed chain cannot be checked (was guard.key deleted?)",
            );
        }
        problem(
            Some(line),
            seq,
            "the record was changed after it was written (its MAC does not match; a chain recomputed without the key fails here too)",
        )
    }

    fn line(
        &mut self,
        rep: &mut VerifyReport,
        head: &HeadState,
        lineno: u64,
        off: u64,
        bytes: &[u8],
        terminated: bool,
    ) -> Option<Problem> {
        let seen_v2 = self.cur.0 > 0;
        match classify(bytes, self.key) {
            Line::Legacy(mut rec) if !seen_v2 && self.pending.is_empty() => {
                let Some(Value::String(h)) = rec.remove("hash") else {
                    return problem(Some(lineno), None, "a legacy record without its hash");
                };
                if rec.get("prev_hash").and_then(Value::as_str) != Some(&self.legacy_prev)
                    || hex::encode(sha2::Sha256::digest(
                        canonical(&Value::Object(rec)).as_bytes(),
                    )) != h
                {
                    return problem(
                        Some(lineno),
                        None,
                        "a legacy (unkeyed) record was changed, or one before it was removed",
                    );
                }
                self.legacy_prev = h;
                rep.legacy_records += 1;
                None
            }
            Line::BadMac { seq } => {
                // Either an edited record (a failure) or a foreign line that only looks like
                // one, which a repair marker may have sealed: decided by what follows.
                if self.bad.is_none() {
                    self.bad = Some((lineno, seq));
                }
                self.push_span(lineno, off, bytes, terminated);
                None
            }
            Line::Record {
                seq,
                prev,
                mac,
                rec,
            } => {
                let marker = rec.get(MARKER).and_then(Value::as_str).unwrap_or("");
                let reason = rec.get("reason").and_then(Value::as_str).unwrap_or("");
                let want: Vec<Value> = self.pending.iter().map(Span::to_json).collect();
                // A chain start may seal garbage and torn lines, never record-shaped ones:
                // those are history that does not check out.
                let seals = (marker == chain::M_REPAIR
                    || (marker == chain::M_CHAIN_START && self.bad.is_none()))
                    && rec.get("spans") == Some(&json!(want));
                if !seals && let Some(p) = self.bad_problem() {
                    return Some(p);
                }
                if seq != self.cur.0 + 1 || prev != self.cur.1 {
                    let what = match marker {
                        chain::M_LOG_CUT
                        | chain::M_LOG_MISMATCH
                        | chain::M_HEAD_MISSING
                        | chain::M_HEAD_INVALID => format!(
                            "b24 found tampering when it wrote this record: {reason}; records between seq {} and seq {seq} are missing",
                            self.cur.0
                        ),
                        _ if seq <= self.cur.0 => format!(
                            "seq {seq} after seq {}: records were reordered or duplicated",
                            self.cur.0
                        ),
                        _ => format!(
                            "seq {seq} where seq {} was expected: records before it were removed (or the log was cut and written on)",
                            self.cur.0 + 1
                        ),
                    };
                    return problem(Some(lineno), Some(seq), what);
                }
                match marker {
                    chain::M_REPAIR | chain::M_CHAIN_START => {
                        if !seals {
                            let line = self.pending.first().map_or(lineno, |s| s.line);
                            return problem(
                                Some(line),
                                None,
                                "lines before this record are not the ones its repair marker sealed",
                            );
                        }
                        if marker == chain::M_CHAIN_START && seq != 1 {
                            return problem(Some(lineno), Some(seq), "a chain start in mid-log");
                        }
                        if !self.pending.is_empty() {
                            rep.notes
                                .push(format!("line {lineno} (seq {seq}): {reason}"));
                        }
                    }
                    chain::M_LOG_CUT
                    | chain::M_LOG_MISMATCH
                    | chain::M_HEAD_MISSING
                    | chain::M_HEAD_INVALID => {
                        return problem(
                            Some(lineno),
                            Some(seq),
                            format!("b24 found tampering when it wrote this record: {reason}"),
                        );
                    }
                    _ if !self.pending.is_empty() => {
                        let s = &self.pending[0];
                        return problem(
                            Some(s.line),
                            None,
                            "not an audit record (a foreign line inside the log, not sealed by a repair marker)",
                        );
                    }
                    _ => {}
                }
                self.pending.clear();
                self.bad = None;
                if let HeadState::Ok(h) = head
                    && h.seq == seq
                {
                    self.mac_at.push((seq, mac.clone()));
                }
                self.cur = (seq, mac);
                self.last_line = lineno;
                rep.records += 1;
                None
            }
            Line::Legacy(_) | Line::Other => {
                self.push_span(lineno, off, bytes, terminated);
                None
            }
        }
    }

    fn finish(&self, rep: &VerifyReport, head: &HeadState, log: &AuditLog) -> Option<Problem> {
        let (seq, _) = &self.cur;
        let hp = log.head_path.display();
        match head {
            HeadState::Invalid(why) => {
                problem(None, None, format!("the head file {hp} is invalid: {why}"))
            }
            HeadState::Missing if *seq > 0 => problem(
                None,
                Some(*seq),
                format!(
                    "the head file {hp} is missing, so a cut tail cannot be ruled out (the log ends at seq {seq}, line {})",
                    self.last_line
                ),
            ),
            HeadState::Missing => None,
            HeadState::Ok(h) => check_head(h, *seq, self.last_line, rep, &self.mac_at),
        }
    }
}

fn check_head(
    h: &Head,
    seq: u64,
    last_line: u64,
    rep: &VerifyReport,
    mac_at: &[(u64, String)],
) -> Option<Problem> {
    if h.seq == 0 {
        return None;
    }
    if rep.records == 0 {
        return problem(
            None,
            Some(h.seq),
            format!(
                "the log holds no records but the head says it held {}: it was emptied or replaced",
                h.seq
            ),
        );
    }
    if seq < h.seq {
        return problem(
            Some(last_line),
            Some(seq),
            format!(
                "the log ends at seq {seq} but the head says seq {}: the tail was cut (seq {}..={} missing)",
                h.seq,
                seq + 1,
                h.seq
            ),
        );
    }
    if !mac_at.iter().any(|(s, m)| *s == h.seq && *m == h.mac) {
        return problem(
            None,
            Some(h.seq),
            "the record at the head's seq is not the one the head names: the log was replaced",
        );
    }
    None
}
