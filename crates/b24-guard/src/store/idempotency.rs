//! Idempotency records: a write sent with a key is sent once; a repeat gets the recorded
//! result. Rows are bound to the store's portal and tagged (HMAC over key, portal, method,
//! call hash, state and result), so a key used on another portal, or a row edited in the
//! database (a forged "result"), is refused instead of answered.
//!
//! Each key also keeps the call's params (`idempotency_params`), so that a write whose outcome
//! is unknown can be settled later (`b24 settle`): resent, or looked up by its stamp. The
//! params are checked against the row's tagged call hash before they are used.

use rusqlite::{OptionalExtension, params};
use serde_json::Value;

use super::{GuardStore, call_hash, db_err, now};
use crate::GuardError;
use crate::keys::Purpose;

/// What the idempotency store knows about a key (old form; see [`KeyClaim`]).
#[derive(Debug, Clone, PartialEq)]
pub enum KeyState {
    /// Never seen: the caller now holds it (in flight).
    New,
    /// Done before: the recorded result.
    Done(Value),
    /// A call with this key is running, or died without telling.
    InFlight,
    /// The call's outcome is unknown (it may have happened).
    Unknown,
    /// The key was used for a different call.
    Mismatch { method: String },
}

/// What the idempotency store knows about a key, for this store's portal.
#[derive(Debug, Clone, PartialEq)]
#[non_exhaustive]
pub enum KeyClaim {
    /// Never seen: the caller now holds it (in flight); send the call.
    New,
    /// Done before on this portal: the recorded result; send nothing.
    Done(Value),
    /// A call with this key is running, or died without telling: refuse.
    InFlight,
    /// The call's outcome is unknown (it may have happened): refuse until a person checks.
    Unknown,
    /// The key was used for a different call (`method`) on this portal: refuse.
    Mismatch { method: String },
    /// The key was used on another portal: refuse (never answer with that portal's result).
    OtherPortal { portal: String },
    /// The row was edited in the database or has no tag (older b24): refuse; use a new key.
    Altered,
}

/// A key's row as [`GuardStore::key_record`] read it: tag and params checked.
#[derive(Debug, Clone, PartialEq)]
pub struct KeyRecord {
    pub method: String,
    pub params: Value,
    /// `in_flight`, `done` or `unknown`.
    pub state: String,
    pub result: Option<Value>,
    /// Unix seconds of the last change.
    pub updated_at: f64,
    /// How the gate meant to settle it (`{"api", "class", "stamp"}`), as recorded before the
    /// call was sent; `{}` when nothing was recorded.
    pub meta: Value,
}

/// How long a done row of a key b24 made is kept.
const KEEP_DONE_SECS: f64 = 7.0 * 86_400.0;

/// The keys b24 makes itself for writes sent without one (`gate::send`, `gate::batch`):
/// `b24-` and a UUIDv7 in simple form (32 lower-case hex digits, version digit `7`, variant
/// digit `8`–`b`), as an SQLite `GLOB` pattern (case-sensitive, whole key). Only these are
/// pruned a week after they are done. A prefix alone (`LIKE 'b24-%'`, which also ignores
/// ASCII case) took a caller's own key spelled `b24-…` or `B24-…` for one of ours, and
/// dropped its record: a retry after a week was then sent again instead of replayed.
fn generated_key_glob() -> String {
    let hex = |n: usize| "[0-9a-f]".repeat(n);
    format!("b24-{}7{}[89ab]{}", hex(12), hex(3), hex(15))
}

/// Created with the store's schema when it is opened.
pub(super) const PARAMS_TABLE: &str =
    "CREATE TABLE IF NOT EXISTS idempotency_params (key TEXT NOT NULL,
    portal TEXT NOT NULL, params TEXT NOT NULL, meta TEXT NOT NULL DEFAULT '{}',
    PRIMARY KEY (key, portal))";

impl GuardStore {
    /// The fields a key's row tag covers, in order: one list for making and for checking it.
    fn key_tag_parts<'a>(
        &'a self,
        key: &'a str,
        method: &'a str,
        hash: &'a str,
        state: &'a str,
        result: &'a str,
    ) -> [&'a [u8]; 6] {
        [
            key.as_bytes(),
            self.portal.as_bytes(),
            method.as_bytes(),
            hash.as_bytes(),
            state.as_bytes(),
            result.as_bytes(),
        ]
    }

    fn key_tag(&self, key: &str, method: &str, hash: &str, state: &str, result: &str) -> String {
        let parts = self.key_tag_parts(key, method, hash, state, result);
        self.key.tag(Purpose::Idempotency, &parts)
    }

    /// Whether `tag` is this store's tag of the row: an empty tag never is.
    #[allow(clippy::too_many_arguments)]
    fn key_tag_ok(
        &self,
        key: &str,
        method: &str,
        hash: &str,
        state: &str,
        result: &str,
        tag: &str,
    ) -> bool {
        let parts = self.key_tag_parts(key, method, hash, state, result);
        !tag.is_empty() && self.key.check(Purpose::Idempotency, &parts, tag)
    }

    /// Look up `key` for a call of `method` with `params` on this store's portal, taking it
    /// (in flight) when new. One `BEGIN IMMEDIATE` transaction: two processes with the same
    /// key cannot both get `New`.
    pub fn begin(&self, key: &str, method: &str, params: &Value) -> Result<KeyClaim, GuardError> {
        self.begin_with(key, method, params, &Value::Object(Default::default()))
    }

    /// [`GuardStore::begin`], keeping `meta` (how the call is to be settled) with the params
    /// when the key is new.
    pub fn begin_with(
        &self,
        key: &str,
        method: &str,
        params: &Value,
        meta: &Value,
    ) -> Result<KeyClaim, GuardError> {
        let hash = call_hash(method, params);
        let mut conn = self.conn();
        let tx = conn
            .transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)
            .map_err(db_err)?;
        type Row = (String, String, String, Option<String>, String, String);
        let row: Option<Row> = tx
            .query_row(
                "SELECT method, hash, state, result, portal, tag FROM idempotency WHERE key = ?1",
                [key],
                |r| Row::try_from(r),
            )
            .optional()
            .map_err(db_err)?;
        // Keys b24 made itself (exactly their shape, `generated_key_glob`) only serve
        // settling: once done they are kept a week (for `b24 settle` and a look at the guard
        // store), then dropped, so a long-running server's store does not grow with every
        // write it ever made. A caller's keys are theirs and are never pruned.
        let cutoff = now() - KEEP_DONE_SECS;
        let glob = generated_key_glob();
        let pruned = tx
            .execute(
                "DELETE FROM idempotency WHERE key GLOB ?2 AND state = 'done' AND updated_at < ?1",
                params![cutoff, glob],
            )
            .map_err(db_err)?;
        if pruned > 0 {
            tx.execute(
                "DELETE FROM idempotency_params WHERE key GLOB ?1
                 AND NOT EXISTS (SELECT 1 FROM idempotency i WHERE i.key = idempotency_params.key)",
                [glob],
            )
            .map_err(db_err)?;
        }
        let claim = match row {
            None => {
                let tag = self.key_tag(key, method, &hash, "in_flight", "");
                tx.execute(
                    "INSERT INTO idempotency (key, method, hash, state, result, updated_at, portal, tag)
                     VALUES (?1, ?2, ?3, 'in_flight', NULL, ?4, ?5, ?6)",
                    params![key, method, hash, now(), self.portal, tag],
                )
                .map_err(db_err)?;
                tx.execute(
                    "INSERT OR REPLACE INTO idempotency_params (key, portal, params, meta) VALUES (?1, ?2, ?3, ?4)",
                    params![key, self.portal, params.to_string(), meta.to_string()],
                )
                .map_err(db_err)?;
                KeyClaim::New
            }
            Some((_, _, _, _, portal, _)) if portal != self.portal => {
                KeyClaim::OtherPortal { portal }
            }
            Some((m, h, s, r, _, tag)) => {
                let result = r.unwrap_or_default();
                if !self.key_tag_ok(key, &m, &h, &s, &result, &tag) {
                    KeyClaim::Altered
                } else if h != hash {
                    KeyClaim::Mismatch { method: m }
                } else {
                    match s.as_str() {
                        "done" => match serde_json::from_str(&result) {
                            Ok(v) => KeyClaim::Done(v),
                            Err(_) => KeyClaim::Altered,
                        },
                        "unknown" => KeyClaim::Unknown,
                        _ => KeyClaim::InFlight,
                    }
                }
            }
        };
        tx.commit().map_err(db_err)?;
        Ok(claim)
    }

    /// Record fresh keys (b24 made them: none may exist yet) with their params and meta, all in
    /// one transaction — a batch of 50 writes costs one commit, not 50. `Err` if any key exists.
    pub fn begin_many(&self, rows: &[(&str, &str, &Value, &Value)]) -> Result<(), GuardError> {
        let mut conn = self.conn();
        let tx = conn
            .transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)
            .map_err(db_err)?;
        for (key, method, params, meta) in rows {
            let hash = call_hash(method, params);
            let tag = self.key_tag(key, method, &hash, "in_flight", "");
            tx.execute(
                "INSERT INTO idempotency (key, method, hash, state, result, updated_at, portal, tag)
                 VALUES (?1, ?2, ?3, 'in_flight', NULL, ?4, ?5, ?6)",
                params![key, method, hash, now(), self.portal, tag],
            )
            .map_err(db_err)?;
            tx.execute(
                "INSERT OR REPLACE INTO idempotency_params (key, portal, params, meta) VALUES (?1, ?2, ?3, ?4)",
                params![key, self.portal, params.to_string(), meta.to_string()],
            )
            .map_err(db_err)?;
        }
        tx.commit().map_err(db_err)
    }

    /// The process sending these keys is alive: refresh the time of those still in flight, so
    /// that no `b24 settle` takes them for a dead process's (see `claim_for_settling`).
    pub fn touch_in_flight(&self, keys: &[String]) -> Result<(), GuardError> {
        let mut conn = self.conn();
        let tx = conn
            .transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)
            .map_err(db_err)?;
        let at = now();
        for key in keys {
            tx.execute(
                "UPDATE idempotency SET updated_at = ?2 WHERE key = ?1 AND portal = ?3 AND state = 'in_flight'",
                params![key, at, self.portal],
            )
            .map_err(db_err)?;
        }
        tx.commit().map_err(db_err)
    }

    /// Finish many keys in one transaction: `Some(result)` done, `None` failed (freed).
    pub fn finish_many(&self, rows: &[(&str, Option<&Value>)]) -> Result<(), GuardError> {
        let mut conn = self.conn();
        let tx = conn
            .transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)
            .map_err(db_err)?;
        for (key, result) in rows {
            match result {
                Some(r) => {
                    let row: Option<(String, String)> = tx
                        .query_row(
                            "SELECT method, hash FROM idempotency WHERE key = ?1 AND portal = ?2",
                            params![key, self.portal],
                            |x| Ok((x.get(0)?, x.get(1)?)),
                        )
                        .optional()
                        .map_err(db_err)?;
                    let Some((method, hash)) = row else { continue };
                    let text = r.to_string();
                    let tag = self.key_tag(key, &method, &hash, "done", &text);
                    tx.execute(
                        "UPDATE idempotency SET state = 'done', result = ?2, updated_at = ?3, tag = ?4
                         WHERE key = ?1 AND portal = ?5",
                        params![key, text, now(), tag, self.portal],
                    )
                    .map_err(db_err)?;
                }
                None => {
                    for table in ["idempotency", "idempotency_params"] {
                        tx.execute(
                            &format!("DELETE FROM {table} WHERE key = ?1 AND portal = ?2"),
                            params![key, self.portal],
                        )
                        .map_err(db_err)?;
                    }
                }
            }
        }
        tx.commit().map_err(db_err)
    }

    /// Look up a key (old signature): other-portal and altered rows map to refusing states.
    pub fn begin_key(
        &self,
        key: &str,
        method: &str,
        params: &Value,
    ) -> Result<KeyState, GuardError> {
        Ok(match self.begin(key, method, params)? {
            KeyClaim::New => KeyState::New,
            KeyClaim::Done(v) => KeyState::Done(v),
            KeyClaim::InFlight => KeyState::InFlight,
            KeyClaim::Unknown | KeyClaim::Altered => KeyState::Unknown,
            KeyClaim::Mismatch { method } => KeyState::Mismatch { method },
            KeyClaim::OtherPortal { portal } => KeyState::Mismatch {
                method: format!("a call on another portal, {portal}"),
            },
        })
    }

    /// Move a key of this portal to `state`, re-tagging the row.
    fn set_key(&self, key: &str, state: &str, result: Option<&Value>) -> Result<(), GuardError> {
        let mut conn = self.conn();
        let tx = conn
            .transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)
            .map_err(db_err)?;
        let row: Option<(String, String)> = tx
            .query_row(
                "SELECT method, hash FROM idempotency WHERE key = ?1 AND portal = ?2",
                params![key, self.portal],
                |r| Ok((r.get(0)?, r.get(1)?)),
            )
            .optional()
            .map_err(db_err)?;
        if let Some((method, hash)) = row {
            let text = result.map(Value::to_string);
            let tag = self.key_tag(key, &method, &hash, state, text.as_deref().unwrap_or(""));
            tx.execute(
                "UPDATE idempotency SET state = ?2, result = ?3, updated_at = ?4, tag = ?5 WHERE key = ?1 AND portal = ?6",
                params![key, state, text, now(), tag, self.portal],
            )
            .map_err(db_err)?;
        }
        tx.commit().map_err(db_err)
    }

    /// The call succeeded: record its result under the key.
    pub fn key_done(&self, key: &str, result: &Value) -> Result<(), GuardError> {
        self.set_key(key, "done", Some(result))
    }

    /// The call failed definitely (the portal refused it): free the key for a retry.
    pub fn key_failed(&self, key: &str) -> Result<(), GuardError> {
        let conn = self.conn();
        conn.execute(
            "DELETE FROM idempotency WHERE key = ?1 AND portal = ?2",
            params![key, self.portal],
        )
        .map_err(db_err)?;
        conn.execute(
            "DELETE FROM idempotency_params WHERE key = ?1 AND portal = ?2",
            params![key, self.portal],
        )
        .map_err(db_err)?;
        Ok(())
    }

    /// Take a key whose outcome is unknown for settling (state `in_flight`), so that two
    /// processes never settle one write at once (two look-ups that both find nothing would both
    /// add). A key left `in_flight` for longer than `stale_secs` (a settle that died) can be
    /// taken again. `false`: someone else holds it, or it is not unknown.
    pub fn claim_for_settling(&self, key: &str, stale_secs: f64) -> Result<bool, GuardError> {
        let mut conn = self.conn();
        let tx = conn
            .transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)
            .map_err(db_err)?;
        let row: Option<(String, String, String, f64)> = tx
            .query_row(
                "SELECT method, hash, state, updated_at FROM idempotency WHERE key = ?1 AND portal = ?2",
                params![key, self.portal],
                |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?)),
            )
            .optional()
            .map_err(db_err)?;
        let Some((method, hash, state, at)) = row else {
            return Ok(false);
        };
        let free = state == "unknown" || (state == "in_flight" && now() - at > stale_secs);
        if !free {
            return Ok(false);
        }
        let tag = self.key_tag(key, &method, &hash, "in_flight", "");
        tx.execute(
            "UPDATE idempotency SET state = 'in_flight', result = NULL, updated_at = ?2, tag = ?3
             WHERE key = ?1 AND portal = ?4",
            params![key, now(), tag, self.portal],
        )
        .map_err(db_err)?;
        tx.commit().map_err(db_err)?;
        Ok(true)
    }

    /// A key's row of this portal with its params, for settling. `Ok(None)`: no such key;
    /// `Ok(Some(Err(why)))`: the row or its params were changed in the database (or written by
    /// an older b24 that kept no params) — nothing may be resent from it.
    pub fn key_record(&self, key: &str) -> Result<Option<Result<KeyRecord, String>>, GuardError> {
        let conn = self.conn();
        type Row = (String, String, String, Option<String>, f64, String);
        let row: Option<Row> = conn
            .query_row(
                "SELECT method, hash, state, result, updated_at, tag FROM idempotency WHERE key = ?1 AND portal = ?2",
                params![key, self.portal],
                |r| Row::try_from(r),
            )
            .optional()
            .map_err(db_err)?;
        let Some((method, hash, state, result, updated_at, tag)) = row else {
            return Ok(None);
        };
        let text = result.clone().unwrap_or_default();
        if !self.key_tag_ok(key, &method, &hash, &state, &text, &tag) {
            return Ok(Some(Err(format!(
                "the record of key `{key}` fails its integrity check"
            ))));
        }
        let stored: Option<(String, String)> = conn
            .query_row(
                "SELECT params, meta FROM idempotency_params WHERE key = ?1 AND portal = ?2",
                params![key, self.portal],
                |r| Ok((r.get(0)?, r.get(1)?)),
            )
            .optional()
            .map_err(db_err)?;
        let parsed = stored.and_then(|(p, m)| {
            Some((
                serde_json::from_str::<Value>(&p).ok()?,
                serde_json::from_str::<Value>(&m).ok()?,
            ))
        });
        let Some((params, meta)) = parsed else {
            return Ok(Some(Err(format!("no params are kept for key `{key}`"))));
        };
        if call_hash(&method, &params) != hash {
            return Ok(Some(Err(format!(
                "the params kept for key `{key}` are not the ones it was recorded with"
            ))));
        }
        let result = match result {
            Some(r) => match serde_json::from_str(&r) {
                Ok(v) => Some(v),
                Err(_) => {
                    return Ok(Some(Err(format!(
                        "the result of key `{key}` is unreadable"
                    ))));
                }
            },
            None => None,
        };
        Ok(Some(Ok(KeyRecord {
            method,
            params,
            state,
            result,
            updated_at,
            meta,
        })))
    }

    /// The outcome is unknown: keep the key blocked until a person checks.
    pub fn key_unknown(&self, key: &str) -> Result<(), GuardError> {
        self.set_key(key, "unknown", None)
    }
}

#[cfg(test)]
mod tests {
    use super::generated_key_glob;

    /// The pattern matches the keys the gate makes and nothing a caller would mistake for
    /// them by prefix or case.
    #[test]
    fn the_pattern_matches_generated_keys_only() {
        let db = rusqlite::Connection::open_in_memory().unwrap();
        let glob = |k: &str| -> bool {
            db.query_row("SELECT ?1 GLOB ?2", [k, &generated_key_glob()], |r| {
                r.get(0)
            })
            .unwrap()
        };
        for _ in 0..20 {
            let k = format!("b24-{}", uuid::Uuid::now_v7().simple());
            assert!(glob(&k), "{k}");
            assert!(!glob(&k.to_uppercase()), "{k}");
            assert!(!glob(&format!("{k}0")), "{k}");
            assert!(!glob(&k.replacen("b24-", "B24-", 1)), "{k}");
        }
        for k in [
            "b24-",
            "b24-mine",
            "b24-retry-2026-01-01",
            "b24-%",
            "b24-0123456789abcdef0123456789abcdef",
        ] {
            assert!(!glob(k), "{k}");
        }
    }
}
