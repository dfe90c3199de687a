//! The client tokens in the guard's `guard.db` (one host). Each operation runs on a blocking
//! thread: the table is small, but SQLite may wait for a lock another process holds.

use std::path::Path;
use std::sync::{Arc, Mutex};

use super::Row;
use crate::GuardError;

const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS mcp_tokens (name TEXT PRIMARY KEY, hash TEXT NOT NULL, policy TEXT NOT NULL,
    created_at REAL NOT NULL, revoked_at REAL);
";

fn db_err(e: rusqlite::Error) -> GuardError {
    GuardError::Store(e.to_string())
}

#[derive(Clone)]
pub(super) struct SqliteTokens {
    conn: Arc<Mutex<rusqlite::Connection>>,
}

impl SqliteTokens {
    pub(super) fn open(guard_dir: &Path) -> Result<SqliteTokens, GuardError> {
        b24::auth::ensure_private_dir(guard_dir).map_err(|e| GuardError::Io {
            path: guard_dir.display().to_string(),
            reason: e.to_string(),
        })?;
        let path = guard_dir.join("guard.db");
        let conn = rusqlite::Connection::open(&path).map_err(db_err)?;
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let _ = std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600));
        }
        conn.busy_timeout(std::time::Duration::from_secs(30))
            .map_err(db_err)?;
        conn.pragma_update(None, "journal_mode", "WAL")
            .map_err(db_err)?;
        conn.execute_batch(SCHEMA).map_err(db_err)?;
        Ok(SqliteTokens {
            conn: Arc::new(Mutex::new(conn)),
        })
    }

    async fn with<T: Send + 'static>(
        &self,
        f: impl FnOnce(&rusqlite::Connection) -> Result<T, rusqlite::Error> + Send + 'static,
    ) -> Result<T, GuardError> {
        let conn = self.conn.clone();
        tokio::task::spawn_blocking(move || {
            let c = conn.lock().unwrap_or_else(|p| p.into_inner());
            f(&c).map_err(db_err)
        })
        .await
        .map_err(|e| GuardError::Store(format!("the token store's worker failed: {e}")))?
    }

    pub(super) async fn insert(
        &self,
        name: &str,
        hash: &str,
        policy: &str,
        at: f64,
    ) -> Result<bool, GuardError> {
        let (name, hash, policy) = (name.to_string(), hash.to_string(), policy.to_string());
        self.with(move |c| {
            c.execute(
                "INSERT OR IGNORE INTO mcp_tokens (name, hash, policy, created_at) VALUES (?1, ?2, ?3, ?4)",
                rusqlite::params![name, hash, policy, at],
            )
            .map(|n| n == 1)
        })
        .await
    }

    pub(super) async fn rows(&self) -> Result<Vec<Row>, GuardError> {
        self.with(|c| {
            let mut st = c.prepare(
                "SELECT name, hash, policy, created_at, revoked_at FROM mcp_tokens ORDER BY name",
            )?;
            let rows = st.query_map([], |r| {
                Ok(Row {
                    name: r.get(0)?,
                    hash: r.get(1)?,
                    policy: r.get(2)?,
                    created_at: r.get(3)?,
                    revoked_at: r.get(4)?,
                })
            })?;
            rows.collect()
        })
        .await
    }

    pub(super) async fn revoke(&self, name: &str, at: f64) -> Result<Option<bool>, GuardError> {
        let name = name.to_string();
        self.with(move |c| {
            let changed = c.execute(
                "UPDATE mcp_tokens SET revoked_at = ?2 WHERE name = ?1 AND revoked_at IS NULL",
                rusqlite::params![name, at],
            )?;
            if changed == 1 {
                return Ok(Some(true));
            }
            let exists: i64 = c.query_row(
                "SELECT COUNT(*) FROM mcp_tokens WHERE name = ?1",
                [&name],
                |r| r.get(0),
            )?;
            Ok((exists > 0).then_some(false))
        })
        .await
    }
}
