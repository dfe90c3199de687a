//! Plans, idempotency records and the write budget, in one SQLite file (mode 0600): they
//! hold call parameters, which may be personal data.

use std::path::{Path, PathBuf};
use std::sync::Mutex;

use rusqlite::{OptionalExtension, params};
use serde_json::Value;
use sha2::Digest;

use crate::GuardError;

fn db_err(e: rusqlite::Error) -> GuardError {
    GuardError::Store(e.to_string())
}

pub fn now() -> f64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs_f64())
        .unwrap_or(0.0)
}

/// Canonical JSON (sorted keys) so that equal params hash equally.
pub fn canonical(v: &Value) -> String {
    fn sort(v: &Value) -> Value {
        match v {
            Value::Object(o) => {
                let mut keys: Vec<&String> = o.keys().collect();
                keys.sort();
                Value::Object(keys.into_iter().map(|k| (k.clone(), sort(&o[k]))).collect())
            }
            Value::Array(a) => Value::Array(a.iter().map(sort).collect()),
            other => other.clone(),
        }
    }
    sort(v).to_string()
}

/// sha256 of method + canonical params.
pub fn call_hash(method: &str, params: &Value) -> String {
    hex::encode(sha2::Sha256::digest(
        format!("{}\n{}", method.to_ascii_lowercase(), canonical(params)).as_bytes(),
    ))
}

/// A recorded plan.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Plan {
    pub id: String,
    pub method: String,
    pub params: Value,
    pub api: String,
    pub risk: String,
    pub hash: String,
    pub created_at: f64,
    pub expires_at: f64,
    pub state: String,
}

/// Why a plan cannot be applied.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PlanRefusal {
    NotFound,
    Expired,
    Altered,
    AlreadyApplied,
}

/// What the idempotency store knows about a key.
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

pub struct GuardStore {
    path: PathBuf,
    conn: Mutex<rusqlite::Connection>,
}

impl GuardStore {
    pub fn open(state_dir: &Path) -> Result<GuardStore, GuardError> {
        std::fs::create_dir_all(state_dir).map_err(|e| GuardError::Io {
            path: state_dir.display().to_string(),
            reason: e.to_string(),
        })?;
        let path = state_dir.join("guard.db");
        let conn = rusqlite::Connection::open(&path).map_err(db_err)?;
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let _ = std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600));
        }
        conn.busy_timeout(std::time::Duration::from_secs(10))
            .map_err(db_err)?;
        conn.pragma_update(None, "journal_mode", "WAL")
            .map_err(db_err)?;
        conn.execute_batch(
            "CREATE TABLE IF NOT EXISTS plans (id TEXT PRIMARY KEY, method TEXT NOT NULL, params TEXT NOT NULL, api TEXT NOT NULL,
                risk TEXT NOT NULL, hash TEXT NOT NULL, created_at REAL NOT NULL, expires_at REAL NOT NULL, state TEXT NOT NULL);
             CREATE TABLE IF NOT EXISTS idempotency (key TEXT PRIMARY KEY, method TEXT NOT NULL, hash TEXT NOT NULL,
                state TEXT NOT NULL, result TEXT, updated_at REAL NOT NULL);
             CREATE TABLE IF NOT EXISTS writes (ts REAL NOT NULL);",
        )
        .map_err(db_err)?;
        for suffix in ["-wal", "-shm"] {
            #[cfg(unix)]
            {
                use std::os::unix::fs::PermissionsExt;
                let p = PathBuf::from(format!("{}{suffix}", path.display()));
                let _ = std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o600));
            }
        }
        Ok(GuardStore {
            path,
            conn: Mutex::new(conn),
        })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    fn conn(&self) -> std::sync::MutexGuard<'_, rusqlite::Connection> {
        self.conn.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Record a plan.
    pub fn create_plan(
        &self,
        method: &str,
        params: &Value,
        api: &str,
        risk: &str,
        ttl_secs: f64,
    ) -> Result<Plan, GuardError> {
        let t = now();
        let hash = call_hash(method, params);
        let id = format!("pl_{}", &uuid::Uuid::now_v7().simple().to_string()[..20]);
        let plan = Plan {
            id: id.clone(),
            method: method.to_string(),
            params: params.clone(),
            api: api.to_string(),
            risk: risk.to_string(),
            hash: hash.clone(),
            created_at: t,
            expires_at: t + ttl_secs,
            state: "open".into(),
        };
        self.conn()
            .execute(
                "INSERT INTO plans VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, 'open')",
                params![
                    id,
                    method,
                    canonical(params),
                    api,
                    risk,
                    hash,
                    t,
                    t + ttl_secs
                ],
            )
            .map_err(db_err)?;
        Ok(plan)
    }

    pub fn get_plan(&self, id: &str) -> Result<Option<Plan>, GuardError> {
        self.conn()
            .query_row("SELECT id, method, params, api, risk, hash, created_at, expires_at, state FROM plans WHERE id = ?1", [id], |r| {
                Ok(Plan {
                    id: r.get(0)?,
                    method: r.get(1)?,
                    params: serde_json::from_str(&r.get::<_, String>(2)?).unwrap_or(Value::Null),
                    api: r.get(3)?,
                    risk: r.get(4)?,
                    hash: r.get(5)?,
                    created_at: r.get(6)?,
                    expires_at: r.get(7)?,
                    state: r.get(8)?,
                })
            })
            .optional()
            .map_err(db_err)
    }

    /// Claim a plan for applying, atomically: of two concurrent applies only one wins. The
    /// stored params are re-hashed, so a plan edited in the database is refused.
    pub fn claim_plan(&self, id: &str) -> Result<Result<Plan, PlanRefusal>, GuardError> {
        let Some(plan) = self.get_plan(id)? else {
            return Ok(Err(PlanRefusal::NotFound));
        };
        if call_hash(&plan.method, &plan.params) != plan.hash {
            return Ok(Err(PlanRefusal::Altered));
        }
        if plan.state != "open" {
            return Ok(Err(PlanRefusal::AlreadyApplied));
        }
        if plan.expires_at < now() {
            return Ok(Err(PlanRefusal::Expired));
        }
        let n = self
            .conn()
            .execute(
                "UPDATE plans SET state = 'applying' WHERE id = ?1 AND state = 'open'",
                [id],
            )
            .map_err(db_err)?;
        if n != 1 {
            return Ok(Err(PlanRefusal::AlreadyApplied));
        }
        Ok(Ok(plan))
    }

    /// Record how an applied plan ended (`applied`, `failed`, `unknown`).
    pub fn finish_plan(&self, id: &str, state: &str) -> Result<(), GuardError> {
        self.conn()
            .execute(
                "UPDATE plans SET state = ?2 WHERE id = ?1",
                params![id, state],
            )
            .map_err(db_err)?;
        Ok(())
    }

    /// Look up a key, taking it (in flight) when new. One transaction: two processes with the
    /// same key cannot both get `New`.
    pub fn begin_key(
        &self,
        key: &str,
        method: &str,
        params: &Value,
    ) -> Result<KeyState, GuardError> {
        let hash = call_hash(method, params);
        let mut conn = self.conn();
        let tx = conn
            .transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)
            .map_err(db_err)?;
        let row: Option<(String, String, String, Option<String>)> = tx
            .query_row(
                "SELECT method, hash, state, result FROM idempotency WHERE key = ?1",
                [key],
                |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?)),
            )
            .optional()
            .map_err(db_err)?;
        let state = match row {
            None => {
                tx.execute(
                    "INSERT INTO idempotency VALUES (?1, ?2, ?3, 'in_flight', NULL, ?4)",
                    params![key, method, hash, now()],
                )
                .map_err(db_err)?;
                KeyState::New
            }
            Some((m, h, _, _)) if h != hash => KeyState::Mismatch { method: m },
            Some((_, _, s, r)) => match s.as_str() {
                "done" => KeyState::Done(
                    r.and_then(|x| serde_json::from_str(&x).ok())
                        .unwrap_or(Value::Null),
                ),
                "unknown" => KeyState::Unknown,
                _ => KeyState::InFlight,
            },
        };
        tx.commit().map_err(db_err)?;
        Ok(state)
    }

    /// The call succeeded: record its result under the key.
    pub fn key_done(&self, key: &str, result: &Value) -> Result<(), GuardError> {
        self.conn()
            .execute("UPDATE idempotency SET state = 'done', result = ?2, updated_at = ?3 WHERE key = ?1", params![key, result.to_string(), now()])
            .map_err(db_err)?;
        Ok(())
    }

    /// The call failed definitely (the portal refused it): free the key for a retry.
    pub fn key_failed(&self, key: &str) -> Result<(), GuardError> {
        self.conn()
            .execute("DELETE FROM idempotency WHERE key = ?1", [key])
            .map_err(db_err)?;
        Ok(())
    }

    /// The outcome is unknown: keep the key blocked until a person checks.
    pub fn key_unknown(&self, key: &str) -> Result<(), GuardError> {
        self.conn()
            .execute(
                "UPDATE idempotency SET state = 'unknown', updated_at = ?2 WHERE key = ?1",
                params![key, now()],
            )
            .map_err(db_err)?;
        Ok(())
    }

    /// Count a write, and how many happened in the last hour (this one included).
    pub fn count_write(&self) -> Result<u64, GuardError> {
        let conn = self.conn();
        let t = now();
        conn.execute("DELETE FROM writes WHERE ts < ?1", [t - 3600.0])
            .map_err(db_err)?;
        conn.execute("INSERT INTO writes VALUES (?1)", [t])
            .map_err(db_err)?;
        conn.query_row("SELECT COUNT(*) FROM writes", [], |r| r.get::<_, i64>(0))
            .map(|n| n as u64)
            .map_err(db_err)
    }

    /// Writes in the last hour.
    pub fn writes_last_hour(&self) -> Result<u64, GuardError> {
        self.conn()
            .query_row(
                "SELECT COUNT(*) FROM writes WHERE ts >= ?1",
                [now() - 3600.0],
                |r| r.get::<_, i64>(0),
            )
            .map(|n| n as u64)
            .map_err(db_err)
    }
}
