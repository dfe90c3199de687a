//! The PostgreSQL queue's schema: versioned migrations, applied in one transaction under a
//! transaction-scoped advisory lock.

use super::e;
use crate::{EventsError, Result};

/// Versioned migrations: entry `i` takes the schema from version `i` to `i + 1`
/// (`b24_events_schema`). Version 1 is the original schema (`IF NOT EXISTS`, so stores created
/// before versioning take it unchanged).
pub const MIGRATIONS: &[&str] = &[
    "CREATE TABLE IF NOT EXISTS b24_jobs (
       id BIGSERIAL PRIMARY KEY, key TEXT NOT NULL UNIQUE, source TEXT NOT NULL, name TEXT NOT NULL,
       payload TEXT NOT NULL, state TEXT NOT NULL DEFAULT 'ready', attempts INT NOT NULL DEFAULT 0,
       run_at DOUBLE PRECISION NOT NULL, lease_until DOUBLE PRECISION, locked_by TEXT, last_error TEXT,
       created_at DOUBLE PRECISION NOT NULL);
     CREATE INDEX IF NOT EXISTS b24_jobs_ready ON b24_jobs (state, run_at, id);
     CREATE TABLE IF NOT EXISTS b24_processed (key TEXT PRIMARY KEY, done_at DOUBLE PRECISION NOT NULL);
     CREATE TABLE IF NOT EXISTS b24_dlq (id BIGSERIAL PRIMARY KEY, key TEXT NOT NULL, source TEXT NOT NULL, name TEXT NOT NULL,
       payload TEXT NOT NULL, attempts INT NOT NULL, last_error TEXT NOT NULL, failed_at DOUBLE PRECISION NOT NULL);
     CREATE TABLE IF NOT EXISTS b24_offline_pending (process_id TEXT PRIMARY KEY, created_at DOUBLE PRECISION NOT NULL);
     CREATE TABLE IF NOT EXISTS b24_app_tokens (member_id TEXT PRIMARY KEY, token TEXT NOT NULL, updated_at DOUBLE PRECISION NOT NULL)",
    // 2: pruning processed keys by age scans `done_at`.
    "CREATE INDEX IF NOT EXISTS b24_processed_done_at ON b24_processed (done_at)",
    // 3: each job names its portal (fair claims, per-portal limits, uninstalled portals).
    // `json` (not `jsonb`) reads the payloads: it accepts every text serde_json writes.
    "ALTER TABLE b24_jobs ADD COLUMN IF NOT EXISTS member_id TEXT NOT NULL DEFAULT '';
     ALTER TABLE b24_dlq ADD COLUMN IF NOT EXISTS member_id TEXT NOT NULL DEFAULT '';
     UPDATE b24_jobs SET member_id = left(payload::json->'auth'->>'member_id', 128)
       WHERE json_typeof(payload::json) = 'object' AND json_typeof(payload::json->'auth') = 'object'
         AND json_typeof(payload::json->'auth'->'member_id') IN ('string', 'number');
     UPDATE b24_dlq SET member_id = left(payload::json->'auth'->>'member_id', 128)
       WHERE json_typeof(payload::json) = 'object' AND json_typeof(payload::json->'auth') = 'object'
         AND json_typeof(payload::json->'auth'->'member_id') IN ('string', 'number');
     CREATE INDEX IF NOT EXISTS b24_jobs_portal ON b24_jobs (state, member_id, run_at, id)",
];

/// The advisory lock that serialises migrations (held for one transaction only).
pub(super) const MIGRATION_LOCK: i64 = 724242;

/// Apply the migrations this database lacks, inside `tx`, which holds [`MIGRATION_LOCK`]
/// ([`b24::pg::open_pool`] takes it): concurrent starts wait for each other, and a start-up
/// cancelled half-way rolls back and leaves no lock behind on a pooled connection (a session
/// lock would stay with the connection the pool keeps).
pub(super) async fn migrate(tx: &deadpool_postgres::Transaction<'_>) -> Result<i64> {
    tx.batch_execute("CREATE TABLE IF NOT EXISTS b24_events_schema (version BIGINT NOT NULL)")
        .await
        .map_err(e)?;
    let have: i64 = match tx
        .query_opt("SELECT version FROM b24_events_schema", &[])
        .await
        .map_err(e)?
    {
        Some(r) => r.get(0),
        None => {
            tx.execute("INSERT INTO b24_events_schema VALUES (0)", &[])
                .await
                .map_err(e)?;
            0
        }
    };
    let want = MIGRATIONS.len() as i64;
    if have > want {
        // Fail closed: a newer b24 changed the schema in ways this one does not know.
        return Err(EventsError::Store(format!(
            "queue schema version {have} is newer than this b24 knows ({want})"
        )));
    }
    for m in &MIGRATIONS[have as usize..] {
        tx.batch_execute(m).await.map_err(e)?;
    }
    tx.execute("UPDATE b24_events_schema SET version = $1", &[&want])
        .await
        .map_err(e)?;
    Ok(want)
}
