//! The SQLite queue (default): WAL, one writer at a time, claims inside `BEGIN IMMEDIATE`.
//!
//! Every write transaction costs a WAL write of each page it touches, so the worker completes
//! the jobs that finished together and claims their successors in one transaction
//! ([`SqliteQueue::complete_and_claim`]).

use std::path::Path;
use std::sync::Mutex;

use rusqlite::{OptionalExtension, TransactionBehavior, params};
use serde_json::Value;

use crate::queue::{DeadLetter, Job, NewEvent, QueueStats, RetryRule};
use crate::{EventsError, Result, now};

/// Processed keys deleted per transaction when pruning.
const PRUNE_BATCH: i64 = 5000;

fn e(err: rusqlite::Error) -> EventsError {
    EventsError::Store(err.to_string())
}

/// Versioned migrations: entry `i` takes the schema from `user_version` `i` to `i + 1`. They
/// run in one `BEGIN IMMEDIATE` transaction with the version bump, so concurrent openers (the
/// receiver and a worker starting together) apply each one once.
/// Version 1 is the original schema (`IF NOT EXISTS`: stores created before versioning, at
/// `user_version` 0, take it unchanged).
pub const MIGRATIONS: &[&str] = &[
    "
CREATE TABLE IF NOT EXISTS b24_jobs (
  id INTEGER PRIMARY KEY AUTOINCREMENT,
  key TEXT NOT NULL UNIQUE,
  source TEXT NOT NULL,
  name TEXT NOT NULL,
  payload TEXT NOT NULL,
  state TEXT NOT NULL DEFAULT 'ready',
  attempts INTEGER NOT NULL DEFAULT 0,
  run_at REAL NOT NULL,
  lease_until REAL,
  locked_by TEXT,
  last_error TEXT,
  created_at REAL NOT NULL);
CREATE INDEX IF NOT EXISTS b24_jobs_ready ON b24_jobs (state, run_at, id);
CREATE TABLE IF NOT EXISTS b24_processed (key TEXT PRIMARY KEY, done_at REAL NOT NULL);
CREATE TABLE IF NOT EXISTS b24_dlq (
  id INTEGER PRIMARY KEY AUTOINCREMENT, key TEXT NOT NULL, source TEXT NOT NULL, name TEXT NOT NULL,
  payload TEXT NOT NULL, attempts INTEGER NOT NULL, last_error TEXT NOT NULL, failed_at REAL NOT NULL);
CREATE TABLE IF NOT EXISTS b24_offline_pending (process_id TEXT PRIMARY KEY, created_at REAL NOT NULL);
CREATE TABLE IF NOT EXISTS b24_app_tokens (member_id TEXT PRIMARY KEY, token TEXT NOT NULL, updated_at REAL NOT NULL);
",
    // 2: pruning processed keys by age scans `done_at`.
    "CREATE INDEX IF NOT EXISTS b24_processed_done_at ON b24_processed (done_at);",
    // 3: each job names its portal (fair claims, per-portal limits, uninstalled portals).
    "
ALTER TABLE b24_jobs ADD COLUMN member_id TEXT NOT NULL DEFAULT '';
ALTER TABLE b24_dlq ADD COLUMN member_id TEXT NOT NULL DEFAULT '';
UPDATE b24_jobs SET member_id = COALESCE(substr(CAST(json_extract(payload, '$.auth.member_id') AS TEXT), 1, 128), '')
  WHERE json_valid(payload) AND json_type(payload, '$.auth.member_id') IN ('text', 'integer');
UPDATE b24_dlq SET member_id = COALESCE(substr(CAST(json_extract(payload, '$.auth.member_id') AS TEXT), 1, 128), '')
  WHERE json_valid(payload) AND json_type(payload, '$.auth.member_id') IN ('text', 'integer');
CREATE INDEX IF NOT EXISTS b24_jobs_portal ON b24_jobs (state, member_id, run_at, id);
",
];

/// The portals with ready jobs, each with its running count: a skip scan of
/// `b24_jobs_portal` (one index seek per portal, whatever the number of jobs).
const PORTALS: &str = "
WITH RECURSIVE m(member_id) AS (
  SELECT (SELECT member_id FROM b24_jobs WHERE state = 'ready' ORDER BY member_id LIMIT 1)
  UNION ALL
  SELECT (SELECT j.member_id FROM b24_jobs j WHERE j.state = 'ready' AND j.member_id > m.member_id
          ORDER BY j.member_id LIMIT 1) FROM m WHERE m.member_id IS NOT NULL)
SELECT member_id, (SELECT count(*) FROM b24_jobs r WHERE r.state = 'running' AND r.member_id = m.member_id)
FROM m WHERE member_id IS NOT NULL";

/// Bring the schema to the newest version, one transaction for all the steps it lacks.
fn migrate(conn: &mut rusqlite::Connection) -> Result<()> {
    let tx = conn
        .transaction_with_behavior(TransactionBehavior::Immediate)
        .map_err(e)?;
    let have: i64 = tx
        .query_row("PRAGMA user_version", [], |r| r.get(0))
        .map_err(e)?;
    if have > MIGRATIONS.len() as i64 {
        // Fail closed: a newer b24 changed the schema in ways this one does not know.
        return Err(EventsError::Store(format!(
            "queue schema version {have} is newer than this b24 knows ({})",
            MIGRATIONS.len()
        )));
    }
    for m in &MIGRATIONS[have as usize..] {
        tx.execute_batch(m).map_err(e)?;
    }
    tx.pragma_update(None, "user_version", MIGRATIONS.len() as i64)
        .map_err(e)?;
    tx.commit().map_err(e)
}

pub struct SqliteQueue {
    conn: Mutex<rusqlite::Connection>,
    /// SQLite's clock is this host's clock (one host by construction); the offset lets tests
    /// simulate a host whose clock is wrong.
    clock_offset: f64,
    /// The write-ahead log (`PATH-wal`).
    wal: std::path::PathBuf,
}

impl SqliteQueue {
    pub fn open(path: &Path) -> Result<SqliteQueue> {
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir)
                .map_err(|x| EventsError::Store(format!("{}: {x}", dir.display())))?;
        }
        let mut conn = rusqlite::Connection::open(path).map_err(e)?;
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let _ = std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600));
        }
        conn.busy_timeout(std::time::Duration::from_secs(30))
            .map_err(e)?;
        conn.pragma_update(None, "journal_mode", "WAL").map_err(e)?;
        // NORMAL: a commit survives a crash of this process, and the write-ahead log is
        // fsynced only where a commit must also survive a power loss: after the offline pull's
        // commit, before the portal's copy is cleared ([`SqliteQueue::enqueue_offline`]; the
        // receiver does the same before its 200). FULL would fsync every completion too, ~3 ms
        // each, for records whose loss only means a handler runs again.
        conn.pragma_update(None, "synchronous", "NORMAL")
            .map_err(e)?;
        // Stable plans: otherwise the claim's bound `LIMIT ?` makes SQLite re-prepare the
        // statement whenever the bound value (the number of free slots) changes.
        conn.set_db_config(
            rusqlite::config::DbConfig::SQLITE_DBCONFIG_ENABLE_QPSG,
            true,
        )
        .map_err(e)?;
        migrate(&mut conn)?;
        Ok(SqliteQueue {
            conn: Mutex::new(conn),
            clock_offset: 0.0,
            wal: {
                let mut w = path.as_os_str().to_owned();
                w.push("-wal");
                w.into()
            },
        })
    }

    /// Flush the write-ahead log to disk: every commit so far survives a power loss.
    fn sync_wal(&self) -> Result<()> {
        std::fs::File::open(&self.wal)
            .and_then(|f| f.sync_data())
            .map_err(|x| EventsError::Store(format!("fsync {}: {x}", self.wal.display())))
    }

    /// Shift this store's clock (tests of skewed hosts).
    pub fn set_clock_offset(&mut self, secs: f64) {
        self.clock_offset = secs;
    }

    fn now(&self) -> f64 {
        now() + self.clock_offset
    }

    /// The schema version (`PRAGMA user_version`).
    pub async fn schema_version(&self) -> Result<i64> {
        self.conn()
            .query_row("PRAGMA user_version", [], |r| r.get(0))
            .map_err(e)
    }

    fn conn(&self) -> std::sync::MutexGuard<'_, rusqlite::Connection> {
        self.conn.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn insert(tx: &rusqlite::Transaction, events: &[NewEvent], t: f64) -> Result<usize> {
        let mut n = 0;
        let mut done = tx
            .prepare_cached("SELECT 1 FROM b24_processed WHERE key = ?1")
            .map_err(e)?;
        let mut ins = tx
            .prepare_cached("INSERT INTO b24_jobs (key, source, name, payload, run_at, created_at, member_id) VALUES (?1, ?2, ?3, ?4, ?5, ?5, ?6) ON CONFLICT(key) DO NOTHING")
            .map_err(e)?;
        for ev in events {
            if done.exists([&ev.key]).map_err(e)? {
                continue;
            }
            n += ins
                .execute(params![
                    ev.key,
                    ev.source,
                    ev.name,
                    ev.payload.to_string(),
                    t,
                    crate::queue::portal_of(&ev.payload)
                ])
                .map_err(e)?;
        }
        Ok(n)
    }

    pub async fn enqueue(&self, events: &[NewEvent]) -> Result<usize> {
        let mut c = self.conn();
        let tx = c
            .transaction_with_behavior(TransactionBehavior::Immediate)
            .map_err(e)?;
        let n = Self::insert(&tx, events, self.now())?;
        tx.commit().map_err(e)?;
        Ok(n)
    }

    pub async fn enqueue_offline(&self, events: &[NewEvent], process_id: &str) -> Result<usize> {
        let mut c = self.conn();
        let tx = c
            .transaction_with_behavior(TransactionBehavior::Immediate)
            .map_err(e)?;
        let n = Self::insert(&tx, events, self.now())?;
        tx.execute(
            "INSERT INTO b24_offline_pending VALUES (?1, ?2) ON CONFLICT DO NOTHING",
            params![process_id, self.now()],
        )
        .map_err(e)?;
        tx.commit().map_err(e)?;
        drop(c);
        // The caller clears these rows on the portal next: they must be on disk first.
        self.sync_wal()?;
        Ok(n)
    }

    pub async fn pending_processes(&self) -> Result<Vec<String>> {
        let c = self.conn();
        let mut st = c
            .prepare("SELECT process_id FROM b24_offline_pending ORDER BY created_at")
            .map_err(e)?;
        let rows = st.query_map([], |r| r.get(0)).map_err(e)?;
        rows.collect::<std::result::Result<Vec<String>, _>>()
            .map_err(e)
    }

    pub async fn forget_process(&self, process_id: &str) -> Result<()> {
        self.conn()
            .execute(
                "DELETE FROM b24_offline_pending WHERE process_id = ?1",
                [process_id],
            )
            .map_err(e)?;
        Ok(())
    }

    /// Claim up to `n` ready jobs (inside the caller's write transaction, which makes the
    /// per-portal running counts exact for every process on this store): portals take turns
    /// ([`crate::queue::pick_fair`]), each within `per_portal` running jobs; the ready jobs of
    /// an uninstalled portal go to the dead letters first.
    fn claim_in(
        tx: &rusqlite::Transaction,
        worker: &str,
        n: i64,
        lease_secs: f64,
        t: f64,
        per_portal: Option<i64>,
    ) -> Result<Vec<Job>> {
        use crate::queue::{allowance, per_portal_reads, pick_fair};
        let portals = Self::portals(tx)?;
        for p in portals.iter().filter(|p| p.ended()) {
            Self::drop_uninstalled(tx, &p.member_id, t)?;
        }
        let open: Vec<(&str, i64)> = portals
            .iter()
            .map(|p| (p.member_id.as_str(), allowance(p.running, per_portal, n)))
            .filter(|(_, a)| *a > 0)
            .collect();
        let mut due = tx
            .prepare_cached(
                "SELECT id, run_at FROM b24_jobs WHERE state = 'ready' AND member_id = ?1 AND run_at <= ?2
                 ORDER BY run_at, id LIMIT ?3",
            )
            .map_err(e)?;
        let mut read = |k: i64| -> Result<(crate::queue::Candidates, bool)> {
            let mut cands = Vec::new();
            let mut more = false;
            for (i, (m, a)) in open.iter().enumerate() {
                let lim = k.min(*a);
                let rows = due
                    .query_map(params![m, t, lim], |r| Ok((i, r.get(0)?, r.get(1)?)))
                    .map_err(e)?
                    .collect::<std::result::Result<Vec<_>, _>>()
                    .map_err(e)?;
                more |= rows.len() as i64 == lim && lim < *a;
                cands.extend(rows);
            }
            Ok((cands, more))
        };
        let k = per_portal_reads(open.len(), n);
        let (mut cands, more) = read(k)?;
        if (cands.len() as i64) < n && more {
            // Some portals had no due job (retries waiting): read deeper into the others.
            cands = read(n)?.0;
        }
        let ids = pick_fair(&cands, n.max(0) as usize);
        let mut st = tx
            .prepare_cached(
                "UPDATE b24_jobs SET state = 'running', attempts = attempts + 1, locked_by = ?1, lease_until = ?2
                 WHERE id = ?3 AND state = 'ready'
                 RETURNING id, key, name, payload, attempts",
            )
            .map_err(e)?;
        let mut jobs = Vec::with_capacity(ids.len());
        for id in ids {
            let job = st
                .query_row(params![worker, t + lease_secs, id], |r| {
                    Ok(Job {
                        id: r.get(0)?,
                        key: r.get(1)?,
                        name: r.get(2)?,
                        payload: serde_json::from_str(&r.get::<_, String>(3)?)
                            .unwrap_or(Value::Null),
                        attempts: r.get(4)?,
                    })
                })
                .optional()
                .map_err(e)?;
            jobs.extend(job);
        }
        Ok(jobs)
    }

    /// The portals with ready jobs, their running counts and (when this store also holds the
    /// installations registry) their installation state.
    fn portals(tx: &rusqlite::Transaction) -> Result<Vec<crate::queue::PortalLoad>> {
        let installs = tx
            .prepare_cached(
                "SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = 'b24_installations'",
            )
            .map_err(e)?
            .exists([])
            .map_err(e)?;
        let mut st = tx.prepare_cached(PORTALS).map_err(e)?;
        let mut out = st
            .query_map([], |r| {
                Ok(crate::queue::PortalLoad {
                    member_id: r.get(0)?,
                    running: r.get(1)?,
                    install_state: None,
                })
            })
            .map_err(e)?
            .collect::<std::result::Result<Vec<_>, _>>()
            .map_err(e)?;
        if installs {
            let mut state = tx
                .prepare_cached("SELECT state FROM b24_installations WHERE member_id = ?1")
                .map_err(e)?;
            for p in out.iter_mut().filter(|p| !p.member_id.is_empty()) {
                p.install_state = state
                    .query_row([&p.member_id], |r| r.get(0))
                    .optional()
                    .map_err(e)?;
            }
        }
        Ok(out)
    }

    /// Move a removed portal's ready events to the dead letters (reason
    /// [`crate::queue::UNINSTALLED`]); its `ONAPPUNINSTALL` stays to be handled.
    fn drop_uninstalled(tx: &rusqlite::Transaction, member: &str, t: f64) -> Result<usize> {
        let keep = crate::queue::HANDLED_AFTER_UNINSTALL;
        tx.prepare_cached(
            "INSERT INTO b24_dlq (key, source, name, payload, attempts, last_error, failed_at, member_id)
             SELECT key, source, name, payload, attempts, ?2, ?3, member_id FROM b24_jobs
             WHERE state = 'ready' AND member_id = ?1 AND upper(name) <> ?4",
        )
        .map_err(e)?
        .execute(params![member, crate::queue::UNINSTALLED, t, keep])
        .map_err(e)?;
        let n = tx
            .prepare_cached(
                "DELETE FROM b24_jobs WHERE state = 'ready' AND member_id = ?1 AND upper(name) <> ?2",
            )
            .map_err(e)?
            .execute(params![member, keep])
            .map_err(e)?;
        if n > 0 {
            tracing::info!(member_id = %member, dropped = n, "events of an uninstalled portal moved to the dead letters");
        }
        Ok(n)
    }

    /// Complete jobs (inside the caller's transaction): delete each one this worker still holds
    /// and record its key. Per job, whether the lease was still held.
    fn complete_in(
        tx: &rusqlite::Transaction,
        jobs: &[Job],
        worker: &str,
        t: f64,
    ) -> Result<Vec<bool>> {
        let mut del = tx
            .prepare_cached(
                "DELETE FROM b24_jobs WHERE id = ?1 AND locked_by = ?2 AND state = 'running'",
            )
            .map_err(e)?;
        let mut rec = tx
            .prepare_cached("INSERT INTO b24_processed VALUES (?1, ?2) ON CONFLICT DO NOTHING")
            .map_err(e)?;
        let mut held = Vec::with_capacity(jobs.len());
        for job in jobs {
            held.push(del.execute(params![job.id, worker]).map_err(e)? == 1);
            rec.execute(params![job.key, t]).map_err(e)?;
        }
        Ok(held)
    }

    pub async fn complete(&self, job: &Job, worker: &str) -> Result<bool> {
        Ok(self
            .complete_many(std::slice::from_ref(job), worker)
            .await?[0])
    }

    /// One transaction for a batch of completions (each job's delete with its idempotency
    /// record); per job, whether its lease was still held.
    pub async fn complete_many(&self, jobs: &[Job], worker: &str) -> Result<Vec<bool>> {
        if jobs.is_empty() {
            return Ok(vec![]);
        }
        let mut c = self.conn();
        let tx = c
            .transaction_with_behavior(TransactionBehavior::Immediate)
            .map_err(e)?;
        let held = Self::complete_in(&tx, jobs, worker, self.now())?;
        tx.commit().map_err(e)?;
        Ok(held)
    }

    /// Complete `done` and claim up to `n` more, in one transaction.
    pub async fn complete_and_claim(
        &self,
        done: &[Job],
        worker: &str,
        n: i64,
        lease_secs: f64,
        per_portal: Option<i64>,
    ) -> Result<Vec<Job>> {
        let mut c = self.conn();
        let tx = c
            .transaction_with_behavior(TransactionBehavior::Immediate)
            .map_err(e)?;
        Self::complete_in(&tx, done, worker, self.now())?;
        let jobs = if n > 0 {
            Self::claim_in(&tx, worker, n, lease_secs, self.now(), per_portal)?
        } else {
            vec![]
        };
        tx.commit().map_err(e)?;
        Ok(jobs)
    }

    pub async fn fail(
        &self,
        job: &Job,
        worker: &str,
        error: &str,
        rule: RetryRule,
    ) -> Result<bool> {
        let mut c = self.conn();
        let tx = c
            .transaction_with_behavior(TransactionBehavior::Immediate)
            .map_err(e)?;
        let dead = job.attempts >= rule.max_attempts;
        if dead {
            let n = tx
                .execute(
                    "INSERT INTO b24_dlq (key, source, name, payload, attempts, last_error, failed_at, member_id)
                     SELECT key, source, name, payload, attempts, ?3, ?4, member_id FROM b24_jobs WHERE id = ?1 AND locked_by = ?2",
                    params![job.id, worker, error, self.now()],
                )
                .map_err(e)?;
            if n == 1 {
                tx.execute("DELETE FROM b24_jobs WHERE id = ?1", [job.id])
                    .map_err(e)?;
            }
        } else {
            tx.execute(
                "UPDATE b24_jobs SET state = 'ready', locked_by = NULL, lease_until = NULL, last_error = ?3, run_at = ?4 WHERE id = ?1 AND locked_by = ?2",
                params![job.id, worker, error, self.now() + rule.delay(job.attempts)],
            )
            .map_err(e)?;
        }
        tx.commit().map_err(e)?;
        Ok(dead)
    }

    /// Extend the leases this worker still holds to `lease_secs` from now; per job, whether
    /// it was still held.
    pub async fn renew(&self, jobs: &[Job], worker: &str, lease_secs: f64) -> Result<Vec<bool>> {
        let t = self.now();
        let c = self.conn();
        let mut st = c
            .prepare_cached(
                "UPDATE b24_jobs SET lease_until = ?3 WHERE id = ?1 AND locked_by = ?2 AND state = 'running'",
            )
            .map_err(e)?;
        jobs.iter()
            .map(|j| {
                Ok(st
                    .execute(params![j.id, worker, t + lease_secs])
                    .map_err(e)?
                    == 1)
            })
            .collect()
    }

    /// Forget processed keys recorded more than `older_than_secs` ago, in batches (each its
    /// own short transaction, so the receiver is never held up for long).
    pub async fn prune_processed(&self, older_than_secs: f64) -> Result<u64> {
        let cutoff = self.now() - older_than_secs;
        let mut total = 0;
        loop {
            let n = self
                .conn()
                .prepare_cached(
                    "DELETE FROM b24_processed WHERE key IN (SELECT key FROM b24_processed WHERE done_at < ?1 LIMIT ?2)",
                )
                .map_err(e)?
                .execute(params![cutoff, PRUNE_BATCH])
                .map_err(e)?;
            total += n as u64;
            if n < PRUNE_BATCH as usize {
                return Ok(total);
            }
            tokio::task::yield_now().await;
        }
    }

    pub async fn release(&self, job: &Job, worker: &str) -> Result<()> {
        self.conn()
            .execute(
                "UPDATE b24_jobs SET state = 'ready', locked_by = NULL, lease_until = NULL, attempts = MAX(attempts - 1, 0) WHERE id = ?1 AND locked_by = ?2",
                params![job.id, worker],
            )
            .map_err(e)?;
        Ok(())
    }

    pub async fn reap(&self) -> Result<u64> {
        let n = self
            .conn()
            .prepare_cached("UPDATE b24_jobs SET state = 'ready', locked_by = NULL, lease_until = NULL WHERE state = 'running' AND lease_until < ?1")
            .map_err(e)?
            .execute([self.now()])
            .map_err(e)?;
        Ok(n as u64)
    }

    pub async fn stats(&self) -> Result<QueueStats> {
        let c = self.conn();
        let count = |sql: &str| c.query_row(sql, [], |r| r.get::<_, i64>(0)).map_err(e);
        let oldest: Option<f64> = c
            .query_row("SELECT MIN(created_at) FROM b24_jobs", [], |r| r.get(0))
            .map_err(e)?;
        Ok(QueueStats {
            ready: count("SELECT COUNT(*) FROM b24_jobs WHERE state = 'ready'")?,
            running: count("SELECT COUNT(*) FROM b24_jobs WHERE state = 'running'")?,
            dead: count("SELECT COUNT(*) FROM b24_dlq")?,
            processed: count("SELECT COUNT(*) FROM b24_processed")?,
            oldest_age_secs: oldest.map(|o| (self.now() - o).max(0.0)).unwrap_or(0.0),
        })
    }

    pub async fn is_processed(&self, key: &str) -> Result<bool> {
        self.conn()
            .prepare_cached("SELECT 1 FROM b24_processed WHERE key = ?1")
            .map_err(e)?
            .exists([key])
            .map_err(e)
    }

    fn dead(r: &rusqlite::Row) -> rusqlite::Result<DeadLetter> {
        Ok(DeadLetter {
            id: r.get(0)?,
            key: r.get(1)?,
            name: r.get(2)?,
            payload: serde_json::from_str(&r.get::<_, String>(3)?).unwrap_or(Value::Null),
            attempts: r.get(4)?,
            last_error: r.get(5)?,
            failed_at: r.get(6)?,
        })
    }

    pub async fn dlq_list(&self, limit: i64) -> Result<Vec<DeadLetter>> {
        let c = self.conn();
        let mut st = c.prepare("SELECT id, key, name, payload, attempts, last_error, failed_at FROM b24_dlq ORDER BY id LIMIT ?1").map_err(e)?;
        let rows = st.query_map([limit], Self::dead).map_err(e)?;
        rows.collect::<std::result::Result<Vec<_>, _>>().map_err(e)
    }

    pub async fn dlq_get(&self, id: i64) -> Result<Option<DeadLetter>> {
        self.conn()
            .query_row("SELECT id, key, name, payload, attempts, last_error, failed_at FROM b24_dlq WHERE id = ?1", [id], Self::dead)
            .optional()
            .map_err(e)
    }

    pub async fn dlq_replay(&self, id: Option<i64>) -> Result<u64> {
        let mut c = self.conn();
        let tx = c
            .transaction_with_behavior(TransactionBehavior::Immediate)
            .map_err(e)?;
        let filter = if id.is_some() {
            "WHERE id = ?1"
        } else {
            "WHERE ?1 IS NULL"
        };
        let n = tx
            .execute(
                &format!("INSERT INTO b24_jobs (key, source, name, payload, run_at, created_at, member_id) SELECT key, source, name, payload, ?2, ?2, member_id FROM b24_dlq {filter} ON CONFLICT(key) DO NOTHING"),
                params![id, self.now()],
            )
            .map_err(e)?;
        tx.execute(&format!("DELETE FROM b24_dlq {filter}"), params![id])
            .map_err(e)?;
        tx.commit().map_err(e)?;
        Ok(n as u64)
    }

    pub async fn dlq_purge(&self) -> Result<u64> {
        Ok(self.conn().execute("DELETE FROM b24_dlq", []).map_err(e)? as u64)
    }

    pub async fn app_token(&self, member_id: &str) -> Result<Option<String>> {
        self.conn()
            .query_row(
                "SELECT token FROM b24_app_tokens WHERE member_id = ?1",
                [member_id],
                |r| r.get(0),
            )
            .optional()
            .map_err(e)
    }

    pub async fn set_app_token(&self, member_id: &str, token: Option<&str>) -> Result<()> {
        let c = self.conn();
        match token {
            Some(t) => c
                .execute(
                    "INSERT INTO b24_app_tokens VALUES (?1, ?2, ?3) ON CONFLICT(member_id) DO UPDATE SET token = excluded.token, updated_at = excluded.updated_at",
                    params![member_id, t, self.now()],
                )
                .map_err(e)?,
            None => c.execute("DELETE FROM b24_app_tokens WHERE member_id = ?1", [member_id]).map_err(e)?,
        };
        Ok(())
    }
}
