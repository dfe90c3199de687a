//! Plans, idempotency records and the write budget, in one SQLite file (mode 0600): they
//! hold call parameters, which may be personal data.
//!
//! Each store is bound to one portal (an identity string the gate passes in, e.g. domain and
//! member id): plans and idempotency keys recorded for one portal are refused on another.
//! Plan rows and idempotency rows carry an HMAC tag under the guard key ([`crate::keys`]), so
//! editing them in the database is refused rather than acted on; applied plans go into an
//! append-only ledger so resetting a plan's state does not make it run again.

mod idempotency;
mod plans;

use std::path::{Path, PathBuf};
use std::sync::Mutex;

use rusqlite::params;
use serde_json::Value;
use sha2::Digest;

use crate::GuardError;
use crate::keys::GuardKey;

pub use idempotency::{KeyClaim, KeyRecord, KeyState};
pub use plans::{Plan, PlanDenied, PlanRefusal};

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

/// sha256 of method + canonical params (unkeyed: it names a call, it does not protect one).
pub fn call_hash(method: &str, params: &Value) -> String {
    hex::encode(sha2::Sha256::digest(
        format!("{}\n{}", method.to_ascii_lowercase(), canonical(params)).as_bytes(),
    ))
}

pub struct GuardStore {
    path: PathBuf,
    portal: String,
    key: GuardKey,
    conn: Mutex<rusqlite::Connection>,
}

const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS plans (id TEXT PRIMARY KEY, method TEXT NOT NULL, params TEXT NOT NULL, api TEXT NOT NULL,
    risk TEXT NOT NULL, hash TEXT NOT NULL, created_at REAL NOT NULL, expires_at REAL NOT NULL, state TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS idempotency (key TEXT PRIMARY KEY, method TEXT NOT NULL, hash TEXT NOT NULL,
    state TEXT NOT NULL, result TEXT, updated_at REAL NOT NULL);
CREATE TABLE IF NOT EXISTS writes (ts REAL NOT NULL);
CREATE TABLE IF NOT EXISTS plan_ledger (plan_id TEXT PRIMARY KEY, portal TEXT NOT NULL, claimed_at REAL NOT NULL,
    outcome TEXT NOT NULL, mac TEXT NOT NULL);
CREATE TRIGGER IF NOT EXISTS plan_ledger_append_only BEFORE UPDATE OF plan_id, portal, claimed_at ON plan_ledger
    BEGIN SELECT RAISE(ABORT, 'the plan ledger is append-only'); END;
";

/// Columns added since the first schema: (table, column).
const ADDED: &[(&str, &str)] = &[
    ("plans", "portal"),
    ("plans", "tag"),
    ("idempotency", "portal"),
    ("idempotency", "tag"),
    // Which budget a write counts in: "" for the process's own, `mcp:NAME` per MCP client.
    ("writes", "budget"),
    // How `b24 settle` resolved an applied plan whose outcome was unknown (JSON; "" for none).
    ("plans", "settlement"),
];

impl GuardStore {
    /// The store in `state_dir`, bound to no particular portal (portal identity `""`). Kept for
    /// callers that do not know the portal yet; prefer [`GuardStore::open_for_portal`].
    pub fn open(state_dir: &Path) -> Result<GuardStore, GuardError> {
        Self::open_for_portal(state_dir, "")
    }

    /// The store in `state_dir` (`guard.db`, key `guard.key`, both 0600), bound to `portal`: a
    /// stable identity of the portal the calls go to (e.g. `"example.bitrix24.ru#<member_id>"`).
    /// Plans and idempotency keys recorded under another identity are refused.
    pub fn open_for_portal(state_dir: &Path, portal: &str) -> Result<GuardStore, GuardError> {
        std::fs::create_dir_all(state_dir).map_err(|e| GuardError::Io {
            path: state_dir.display().to_string(),
            reason: e.to_string(),
        })?;
        let key = GuardKey::load_or_create(state_dir)?;
        let path = state_dir.join("guard.db");
        let mut conn = rusqlite::Connection::open(&path).map_err(db_err)?;
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let _ = std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600));
        }
        conn.busy_timeout(std::time::Duration::from_secs(30))
            .map_err(db_err)?;
        conn.pragma_update(None, "journal_mode", "WAL")
            .map_err(db_err)?;
        // Each short-lived `b24` process that opens the store first rebuilds the WAL's index by
        // reading the whole WAL (it is rarely checkpointed on exit): keep it to a few pages.
        conn.pragma_update(None, "wal_autocheckpoint", 16)
            .map_err(db_err)?;
        let tx = conn
            .transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)
            .map_err(db_err)?;
        tx.execute_batch(SCHEMA).map_err(db_err)?;
        tx.execute_batch(idempotency::PARAMS_TABLE)
            .map_err(db_err)?;
        for (table, col) in ADDED {
            let has: bool = tx
                .query_row(
                    &format!("SELECT COUNT(*) FROM pragma_table_info('{table}') WHERE name = ?1"),
                    [col],
                    |r| r.get::<_, i64>(0),
                )
                .map_err(db_err)?
                > 0;
            if !has {
                tx.execute_batch(&format!(
                    "ALTER TABLE {table} ADD COLUMN {col} TEXT NOT NULL DEFAULT ''"
                ))
                .map_err(db_err)?;
            }
        }
        tx.commit().map_err(db_err)?;
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
            portal: portal.to_string(),
            key,
            conn: Mutex::new(conn),
        })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The portal identity this store is bound to.
    pub fn portal(&self) -> &str {
        &self.portal
    }

    fn conn(&self) -> std::sync::MutexGuard<'_, rusqlite::Connection> {
        self.conn.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Take one write from the budget if fewer than `max_per_hour` were taken in the last
    /// hour: check and count in one `BEGIN IMMEDIATE` transaction, so of any number of
    /// concurrent writers (threads or processes) exactly the budget passes. `Ok(false)`: used up.
    pub fn try_take_write(&self, max_per_hour: u32) -> Result<bool, GuardError> {
        self.try_take_writes(1, max_per_hour)
    }

    /// Take `n` writes at once (a batch counts each command that writes), all or none.
    pub fn try_take_writes(&self, n: u32, max_per_hour: u32) -> Result<bool, GuardError> {
        self.try_take_writes_for("", n, max_per_hour)
    }

    /// [`GuardStore::try_take_writes`] in a named budget (`mcp:NAME` for an MCP client; `""`
    /// is the budget of the CLI and of `b24 mcp` over stdio).
    pub fn try_take_writes_for(
        &self,
        budget: &str,
        n: u32,
        max_per_hour: u32,
    ) -> Result<bool, GuardError> {
        self.try_take_writes_in(&[(budget, max_per_hour)], n)
    }

    /// Take `n` writes from every named budget at once (each `(name, max per hour)`), or from
    /// none: one transaction, so a write that one budget refuses takes nothing from the others.
    pub fn try_take_writes_in(&self, budgets: &[(&str, u32)], n: u32) -> Result<bool, GuardError> {
        let mut conn = self.conn();
        let tx = conn
            .transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)
            .map_err(db_err)?;
        let t = now();
        tx.execute("DELETE FROM writes WHERE ts < ?1", [t - 3600.0])
            .map_err(db_err)?;
        for (budget, max_per_hour) in budgets {
            let used: i64 = tx
                .query_row(
                    "SELECT COUNT(*) FROM writes WHERE budget = ?1",
                    [budget],
                    |r| r.get(0),
                )
                .map_err(db_err)?;
            if used.saturating_add(i64::from(n)) > i64::from(*max_per_hour) {
                tx.commit().map_err(db_err)?;
                return Ok(false);
            }
        }
        for (budget, _) in budgets {
            for _ in 0..n {
                tx.execute(
                    "INSERT INTO writes (ts, budget) VALUES (?1, ?2)",
                    params![t, budget],
                )
                .map_err(db_err)?;
            }
        }
        tx.commit().map_err(db_err)?;
        Ok(true)
    }

    /// Count a write, and how many happened in the last hour (this one included). Not atomic
    /// with any check: use [`GuardStore::try_take_write`] to enforce a budget.
    pub fn count_write(&self) -> Result<u64, GuardError> {
        let conn = self.conn();
        let t = now();
        conn.execute("DELETE FROM writes WHERE ts < ?1", [t - 3600.0])
            .map_err(db_err)?;
        conn.execute("INSERT INTO writes (ts) VALUES (?1)", params![t])
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
