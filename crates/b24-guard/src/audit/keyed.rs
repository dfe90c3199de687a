//! Reading the records a decision may rest on: `b24 settle` acts (resends, marks writes
//! settled) on what the log says, so it reads only records whose MAC checks under the guard
//! key and that continue the chain from the one before. A line written or edited without the
//! key — a forged "settled" record, an edited outcome — is never taken for a record.

use serde_json::{Map, Value};

use super::AuditLog;
use super::chain::{self, GENESIS, Line, classify, err};
use crate::GuardError;
use crate::keys::GuardKey;

impl AuditLog {
    /// The keyed records of the log, oldest first, each checked (MAC under the guard key, and
    /// `prev` naming the MAC of the record before). `Err` when the log cannot be read, has no
    /// key, or a keyed-looking line does not check out: settling is refused then, not done on
    /// part of the history.
    pub fn keyed_records(&self) -> Result<Vec<Map<String, Value>>, GuardError> {
        let Some(key) = GuardKey::load_existing(&self.state_dir)? else {
            return Ok(vec![]);
        };
        let f = match std::fs::File::open(&self.path) {
            Ok(f) => f,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(vec![]),
            Err(e) => return Err(err(&self.path, e)),
        };
        let mut lines = chain::Lines::new(f, 0, 0);
        let mut out = Vec::new();
        let mut last_mac: Option<String> = None;
        while let Some((lineno, _, bytes, _)) = lines.next_line().map_err(|e| err(&self.path, e))? {
            match classify(bytes, Some(&key)) {
                Line::Record { prev, mac, rec, .. } => {
                    let continues = match &last_mac {
                        Some(m) => *m == prev,
                        None => prev == GENESIS || out.is_empty(),
                    };
                    if !continues {
                        return Err(err(
                            &self.path,
                            format!("line {lineno}: the record does not continue the chain"),
                        ));
                    }
                    last_mac = Some(mac);
                    out.push(rec);
                }
                Line::BadMac { seq } => {
                    return Err(err(
                        &self.path,
                        format!(
                            "line {lineno} (seq {}): the record's MAC does not check (edited, or written without the guard key)",
                            seq.map(|s| s.to_string()).unwrap_or_else(|| "?".into())
                        ),
                    ));
                }
                // Old unkeyed records and sealed garbage carry no decisions settle acts on.
                Line::Legacy(_) | Line::Other => {}
            }
        }
        Ok(out)
    }
}
