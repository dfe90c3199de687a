//! The client tokens in PostgreSQL, for a cluster: when `B24_STORE_URL=postgres://…`, every
//! `b24 mcp --http` host sharing the database reads one table, so a token issued on one host
//! works on all of them and a revocation on one refuses the token on every host at its next
//! request. Only the hash is stored, as in SQLite. The policy path is stored as given: each
//! host reads that path at every call, so it must hold the client's file on every host (a
//! host without it refuses the client's calls).

use b24::pg::{MigrationLock, PgRole, PoolSpec};
use deadpool_postgres::Pool;

use super::Row;
use crate::GuardError;

const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS b24_mcp_tokens (
    name TEXT PRIMARY KEY,
    hash TEXT NOT NULL,
    policy TEXT NOT NULL,
    created_at DOUBLE PRECISION NOT NULL,
    revoked_at DOUBLE PRECISION
);
";

fn pg_err(what: &str, e: impl std::fmt::Display) -> GuardError {
    // tokio-postgres errors never include the connection string, so the password stays out.
    GuardError::Store(format!("postgres {what}: {e}"))
}

/// A pool to the shared database.
pub(super) struct PgTokens {
    pool: Pool,
}

impl PgTokens {
    /// Connect and create the table (under an advisory lock: two hosts starting at once do not
    /// race on `CREATE TABLE IF NOT EXISTS`), with the guard's share of the process's
    /// connection budget ([`b24::pg::PoolBudget`]).
    pub(super) async fn connect(url: &str) -> Result<PgTokens, GuardError> {
        let p = b24::pg::open_pool(
            url,
            &PoolSpec::for_role(PgRole::Guard),
            MigrationLock::Name("b24-mcp-tokens-migrate"),
            |tx| b24::pg::batch(tx, SCHEMA),
        )
        .await
        .map_err(|e| GuardError::Store(e.to_string()))?;
        Ok(PgTokens { pool: p.pool })
    }

    async fn client(&self) -> Result<deadpool_postgres::Object, GuardError> {
        self.pool.get().await.map_err(|e| pg_err("connect", e))
    }

    /// Insert a new client; `false` when the name is taken (revoked names included).
    pub(super) async fn insert(
        &self,
        name: &str,
        hash: &str,
        policy: &str,
        at: f64,
    ) -> Result<bool, GuardError> {
        let n = self
            .client()
            .await?
            .execute(
                "INSERT INTO b24_mcp_tokens (name, hash, policy, created_at) VALUES ($1, $2, $3, $4)
                 ON CONFLICT (name) DO NOTHING",
                &[&name, &hash, &policy, &at],
            )
            .await
            .map_err(|e| pg_err("token add", e))?;
        Ok(n == 1)
    }

    pub(super) async fn rows(&self) -> Result<Vec<Row>, GuardError> {
        let rows = self
            .client()
            .await?
            .query(
                "SELECT name, hash, policy, created_at, revoked_at FROM b24_mcp_tokens ORDER BY name",
                &[],
            )
            .await
            .map_err(|e| pg_err("token read", e))?;
        rows.iter()
            .map(|r| {
                Ok(Row {
                    name: r.try_get(0).map_err(|e| pg_err("token read", e))?,
                    hash: r.try_get(1).map_err(|e| pg_err("token read", e))?,
                    policy: r.try_get(2).map_err(|e| pg_err("token read", e))?,
                    created_at: r.try_get(3).map_err(|e| pg_err("token read", e))?,
                    revoked_at: r.try_get(4).map_err(|e| pg_err("token read", e))?,
                })
            })
            .collect()
    }

    /// Revoke `name`: `Some(true)` revoked now, `Some(false)` already revoked, `None` no such
    /// client.
    pub(super) async fn revoke(&self, name: &str, at: f64) -> Result<Option<bool>, GuardError> {
        let c = self.client().await?;
        let changed = c
            .execute(
                "UPDATE b24_mcp_tokens SET revoked_at = $2 WHERE name = $1 AND revoked_at IS NULL",
                &[&name, &at],
            )
            .await
            .map_err(|e| pg_err("token revoke", e))?;
        if changed == 1 {
            return Ok(Some(true));
        }
        let exists: i64 = c
            .query_one(
                "SELECT count(*) FROM b24_mcp_tokens WHERE name = $1",
                &[&name],
            )
            .await
            .map_err(|e| pg_err("token revoke", e))?
            .get(0);
        Ok((exists > 0).then_some(false))
    }
}
