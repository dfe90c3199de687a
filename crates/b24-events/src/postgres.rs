//! The PostgreSQL queue: many workers on many hosts. Claims use `FOR UPDATE SKIP LOCKED`, so
//! workers never wait on each other's rows; enqueue sends `NOTIFY b24_jobs` and idle workers
//! `LISTEN` instead of polling. The versioned migrations ([`MIGRATIONS`]) are applied on connect (and by
//! `b24 db migrate`). Every time the queue reasons about comes from the database's clock
//! (`now()` in each statement), so hosts with skewed clocks still agree on leases and schedules.

use std::sync::Arc;
use std::time::Duration;

use b24::pg::{MigrationLock, PgRole, PoolSpec};
use deadpool_postgres::Pool;
use serde_json::Value;
use tokio::sync::Notify;

use crate::queue::{DeadLetter, Job, NewEvent, QueueStats, RetryRule};
use crate::{EventsError, Result};

fn e(err: impl std::fmt::Display) -> EventsError {
    EventsError::Store(format!("postgres: {err}"))
}

/// The database's clock as Unix seconds. Every time the queue reasons about (leases, `run_at`,
/// reaping, backoff, retention) is read from it, never from a host's clock: hosts whose clocks
/// disagree still agree on who holds a lease.
macro_rules! db_now {
    () => {
        "extract(epoch from now())::float8"
    };
}

/// Processed keys deleted per statement when pruning.
const PRUNE_BATCH: i64 = 5000;

mod migrate;

pub use migrate::MIGRATIONS;
use migrate::migrate;

/// The advisory lock (two-key form, apart from the one-key locks of migrations, pulls and
/// refreshes) that orders claims: each claim reads every portal's running count and takes
/// its jobs before the next one looks, so a per-portal limit holds across hosts. A claim
/// holds it for a few short statements.
const CLAIM_LOCK: (i32, i32) = (724244, 1);

/// How often a queue without the installations registry looks again for it.
const INSTALLS_RECHECK: Duration = Duration::from_secs(5);

/// The portals with ready jobs, each with its running count: a skip scan of
/// `b24_jobs_portal` (one index probe per portal, whatever the number of jobs).
const PORTALS: &str = "
WITH RECURSIVE m(member_id) AS (
  (SELECT member_id FROM b24_jobs WHERE state = 'ready' ORDER BY member_id LIMIT 1)
  UNION ALL
  SELECT (SELECT j.member_id FROM b24_jobs j WHERE j.state = 'ready' AND j.member_id > m.member_id
          ORDER BY j.member_id LIMIT 1) FROM m WHERE m.member_id IS NOT NULL)
SELECT m.member_id, (SELECT count(*) FROM b24_jobs r WHERE r.state = 'running' AND r.member_id = m.member_id)";

pub struct PgQueue {
    pool: Pool,
    notify: Arc<Notify>,
    listener: tokio::task::JoinHandle<()>,
    /// Whether the database has the installations registry (`b24_installations`), and when
    /// that was last looked at while it had not.
    installs: std::sync::Mutex<(bool, Option<std::time::Instant>)>,
}

impl Drop for PgQueue {
    fn drop(&mut self) {
        self.listener.abort();
    }
}

impl PgQueue {
    /// Connect with the queue's share of the process's connection budget
    /// ([`b24::pg::PoolBudget`]) and apply the missing [`MIGRATIONS`].
    pub async fn connect(url: &str) -> Result<PgQueue> {
        Self::connect_with(url, &PoolSpec::for_role(PgRole::Queue)).await
    }

    /// As [`Self::connect`], with an explicit pool (its `LISTEN` session is one more
    /// connection).
    pub async fn connect_with(url: &str, spec: &PoolSpec) -> Result<PgQueue> {
        let p = b24::pg::open_pool(
            url,
            spec,
            MigrationLock::Key(migrate::MIGRATION_LOCK),
            |tx| {
                Box::pin(async move {
                    migrate(tx)
                        .await
                        .map(drop)
                        .map_err(|err| b24::Error::state_msg(err.to_string()))
                })
            },
        )
        .await
        .map_err(|err| EventsError::Store(err.to_string()))?;
        let notify = Arc::new(Notify::new());
        let listener = tokio::spawn(listen(p.config, notify.clone()));
        Ok(PgQueue {
            pool: p.pool,
            notify,
            listener,
            installs: std::sync::Mutex::new((false, None)),
        })
    }

    /// The schema version (`b24_events_schema`).
    pub async fn schema_version(&self) -> Result<i64> {
        let r = self
            .client()
            .await?
            .query_one("SELECT version FROM b24_events_schema", &[])
            .await
            .map_err(e)?;
        Ok(r.get(0))
    }

    async fn client(&self) -> Result<deadpool_postgres::Object> {
        self.pool.get().await.map_err(e)
    }

    pub async fn wait_for_work(&self, max: Duration) {
        let _ = tokio::time::timeout(max, self.notify.notified()).await;
    }

    async fn insert(tx: &deadpool_postgres::Transaction<'_>, events: &[NewEvent]) -> Result<usize> {
        let st = tx
            .prepare_cached(concat!(
                "INSERT INTO b24_jobs (key, source, name, payload, run_at, created_at, member_id)
                 SELECT $1, $2, $3, $4, ",
                db_now!(),
                ", ",
                db_now!(),
                ", $5 WHERE NOT EXISTS (SELECT 1 FROM b24_processed WHERE key = $1)
                 ON CONFLICT (key) DO NOTHING"
            ))
            .await
            .map_err(e)?;
        let mut n = 0;
        for ev in events {
            n += tx
                .execute(
                    &st,
                    &[
                        &ev.key,
                        &ev.source,
                        &ev.name,
                        &ev.payload.to_string(),
                        &crate::queue::portal_of(&ev.payload),
                    ],
                )
                .await
                .map_err(e)? as usize;
        }
        Ok(n)
    }

    /// Wake the idle workers after new jobs were committed.
    ///
    /// Not inside the durable transaction that queued them: PostgreSQL takes one
    /// database-wide lock for a NOTIFY at commit and keeps it until the commit is on disk, so
    /// every queueing transaction (receiver deliveries, offline pulls, on every host) waited
    /// for the WAL flushes of those ahead of it. Sent on its own, committed without waiting for
    /// the flush, it holds the lock for microseconds. Best effort: a lost notification costs
    /// the idle workers their next look (within half a second), never a job. A connection on
    /// which it failed may be left inside the aborted transaction, so it is not given back to
    /// the pool but closed.
    async fn notify(c: deadpool_postgres::Object) {
        if let Err(err) = c
            .batch_execute("BEGIN; SET LOCAL synchronous_commit TO OFF; NOTIFY b24_jobs; COMMIT")
            .await
        {
            tracing::debug!(error = %err, "NOTIFY b24_jobs");
            drop(deadpool_postgres::Object::take(c));
        }
    }

    pub async fn enqueue(&self, events: &[NewEvent]) -> Result<usize> {
        let mut c = self.client().await?;
        let tx = c.transaction().await.map_err(e)?;
        let n = Self::insert(&tx, events).await?;
        tx.commit().await.map_err(e)?;
        if n > 0 {
            Self::notify(c).await;
        }
        Ok(n)
    }

    pub async fn enqueue_offline(&self, events: &[NewEvent], process_id: &str) -> Result<usize> {
        let mut c = self.client().await?;
        let tx = c.transaction().await.map_err(e)?;
        let n = Self::insert(&tx, events).await?;
        let st = tx
            .prepare_cached(concat!(
                "INSERT INTO b24_offline_pending VALUES ($1, ",
                db_now!(),
                ") ON CONFLICT DO NOTHING"
            ))
            .await
            .map_err(e)?;
        tx.execute(&st, &[&process_id]).await.map_err(e)?;
        tx.commit().await.map_err(e)?;
        if n > 0 {
            Self::notify(c).await;
        }
        Ok(n)
    }

    pub async fn pending_processes(&self) -> Result<Vec<String>> {
        let rows = self
            .client()
            .await?
            .query(
                "SELECT process_id FROM b24_offline_pending ORDER BY created_at",
                &[],
            )
            .await
            .map_err(e)?;
        Ok(rows.iter().map(|r| r.get(0)).collect())
    }

    pub async fn forget_process(&self, process_id: &str) -> Result<()> {
        let c = self.client().await?;
        let st = c
            .prepare_cached("DELETE FROM b24_offline_pending WHERE process_id = $1")
            .await
            .map_err(e)?;
        c.execute(&st, &[&process_id]).await.map_err(e)?;
        Ok(())
    }

    /// Whether the installations registry is in this database (looked up again every
    /// [`INSTALLS_RECHECK`] until it is: a receiver may create it after the worker started).
    async fn has_installs(&self, c: &tokio_postgres::Client) -> Result<bool> {
        {
            let g = self.installs.lock().unwrap_or_else(|p| p.into_inner());
            if g.0 || g.1.is_some_and(|t| t.elapsed() < INSTALLS_RECHECK) {
                return Ok(g.0);
            }
        }
        let found: bool = c
            .query_one("SELECT to_regclass('b24_installations') IS NOT NULL", &[])
            .await
            .map_err(e)?
            .get(0);
        *self.installs.lock().unwrap_or_else(|p| p.into_inner()) =
            (found, Some(std::time::Instant::now()));
        Ok(found)
    }

    /// Claim up to `n` ready jobs, fairly across portals and within `per_portal` running
    /// jobs each (see [`crate::Store::claim_with`]), under `CLAIM_LOCK`.
    pub async fn claim(
        &self,
        worker: &str,
        n: i64,
        lease_secs: f64,
        per_portal: Option<i64>,
    ) -> Result<Vec<Job>> {
        // The order is pick_fair's (rank, run_at, id), computed in SQL.
        use crate::queue::{PortalLoad, allowance, per_portal_reads};
        let mut c = self.client().await?;
        let installs = self.has_installs(&c).await?;
        // Every idle worker wakes on the same NOTIFY; the ones that come second find the job
        // taken. Looking first (one index probe, no lock) keeps them out of the claim lock's
        // queue, where each waited for the claims ahead of it.
        let st = c
            .prepare_cached(concat!(
                "SELECT EXISTS (SELECT 1 FROM b24_jobs WHERE state = 'ready' AND run_at <= ",
                db_now!(),
                ")"
            ))
            .await
            .map_err(e)?;
        let ready: bool = c.query_one(&st, &[]).await.map_err(e)?.get(0);
        if !ready {
            return Ok(Vec::new());
        }
        let tx = c.transaction().await.map_err(e)?;
        // The claim lock is held until the commit; a durable commit would hold it across a
        // WAL flush as well, serialising every host's claims behind the disk. A claim lost to a
        // database crash is what an expired lease already is — the job runs again, under the
        // same key — and the completion that records the handled key commits durably (which
        // also flushes this claim ahead of it).
        tx.batch_execute(&format!(
            "SET LOCAL synchronous_commit TO OFF; SELECT pg_advisory_xact_lock({}, {})",
            CLAIM_LOCK.0, CLAIM_LOCK.1
        ))
        .await
        .map_err(e)?;
        let sql = if installs {
            format!(
                "{PORTALS}, (SELECT state FROM b24_installations i WHERE i.member_id = m.member_id) FROM m WHERE m.member_id IS NOT NULL"
            )
        } else {
            format!("{PORTALS}, NULL::text FROM m WHERE m.member_id IS NOT NULL")
        };
        // Every statement under the claim lock is a cached prepared one: a plain query string
        // costs a second round trip (parse, then bind) while the lock is held.
        let portals_st = tx.prepare_cached(&sql).await.map_err(e)?;
        let portals: Vec<PortalLoad> = tx
            .query(&portals_st, &[])
            .await
            .map_err(e)?
            .iter()
            .map(|r| PortalLoad {
                member_id: r.get(0),
                running: r.get(1),
                install_state: r.get(2),
            })
            .collect();
        let ended: Vec<&str> = portals
            .iter()
            .filter(|p| p.ended())
            .map(|p| p.member_id.as_str())
            .collect();
        if !ended.is_empty() {
            let n = tx
                .execute(
                    concat!(
                        "WITH gone AS (
                           DELETE FROM b24_jobs WHERE state = 'ready' AND member_id = ANY($1) AND upper(name) <> $2
                           RETURNING key, source, name, payload, attempts, member_id)
                         INSERT INTO b24_dlq (key, source, name, payload, attempts, last_error, failed_at, member_id)
                         SELECT key, source, name, payload, attempts, $3, ",
                        db_now!(),
                        ", member_id FROM gone"
                    ),
                    &[
                        &ended,
                        &crate::queue::HANDLED_AFTER_UNINSTALL,
                        &crate::queue::UNINSTALLED,
                    ],
                )
                .await
                .map_err(e)?;
            if n > 0 {
                tracing::info!(portals = ?ended, dropped = n, "events of uninstalled portals moved to the dead letters");
            }
        }
        let (members, allow): (Vec<&str>, Vec<i64>) = portals
            .iter()
            .map(|p| (p.member_id.as_str(), allowance(p.running, per_portal, n)))
            .filter(|(_, a)| *a > 0)
            .unzip();
        let read = concat!(
            "WITH c AS (
               SELECT c.id, c.run_at, row_number() OVER (PARTITION BY p.member_id ORDER BY c.run_at, c.id) AS rn
               FROM unnest($1::text[], $2::int8[]) AS p(member_id, k)
               CROSS JOIN LATERAL (
                 SELECT id, run_at FROM b24_jobs j
                 WHERE j.state = 'ready' AND j.member_id = p.member_id AND j.run_at <= ",
            db_now!(),
            "
                 ORDER BY j.run_at, j.id LIMIT p.k) c)
             SELECT id FROM c ORDER BY rn, run_at, id LIMIT $3"
        );
        let read = tx.prepare_cached(read).await.map_err(e)?;
        let k = per_portal_reads(members.len(), n);
        let reads = |k: i64| -> Vec<i64> { allow.iter().map(|a| k.min(*a)).collect() };
        let mut ids: Vec<i64> = tx
            .query(&read, &[&members, &reads(k), &n])
            .await
            .map_err(e)?
            .iter()
            .map(|r| r.get(0))
            .collect();
        if (ids.len() as i64) < n && k < n && !members.is_empty() {
            // Some portals had no due job (retries waiting): read deeper into the others.
            ids = tx
                .query(&read, &[&members, &reads(n), &n])
                .await
                .map_err(e)?
                .iter()
                .map(|r| r.get(0))
                .collect();
        }
        let rows = if ids.is_empty() {
            vec![]
        } else {
            let take = tx
                .prepare_cached(concat!(
                    "UPDATE b24_jobs SET state = 'running', attempts = attempts + 1, locked_by = $1, lease_until = ",
                    db_now!(),
                    " + $2 WHERE id = ANY($3) AND state = 'ready'
                     RETURNING id, key, name, payload, attempts"
                ))
                .await
                .map_err(e)?;
            tx.query(&take, &[&worker, &lease_secs, &ids])
                .await
                .map_err(e)?
        };
        tx.commit().await.map_err(e)?;
        let order: std::collections::HashMap<i64, usize> =
            ids.iter().enumerate().map(|(i, id)| (*id, i)).collect();
        let mut jobs: Vec<Job> = rows
            .iter()
            .map(|r| Job {
                id: r.get(0),
                key: r.get(1),
                name: r.get(2),
                payload: serde_json::from_str(r.get::<_, &str>(3)).unwrap_or(Value::Null),
                attempts: r.get(4),
            })
            .collect();
        jobs.sort_by_key(|j| order.get(&j.id).copied().unwrap_or(usize::MAX));
        Ok(jobs)
    }

    pub async fn complete(&self, job: &Job, worker: &str) -> Result<bool> {
        let mut c = self.client().await?;
        let tx = c.transaction().await.map_err(e)?;
        let n = tx
            .execute(
                "DELETE FROM b24_jobs WHERE id = $1 AND locked_by = $2 AND state = 'running'",
                &[&job.id, &worker],
            )
            .await
            .map_err(e)?;
        tx.execute(
            concat!(
                "INSERT INTO b24_processed VALUES ($1, ",
                db_now!(),
                ") ON CONFLICT DO NOTHING"
            ),
            &[&job.key],
        )
        .await
        .map_err(e)?;
        tx.commit().await.map_err(e)?;
        Ok(n == 1)
    }

    /// Every job of `jobs` in one statement (one commit, one flush): the rows this worker
    /// still holds are deleted and every key is recorded as processed (a handler that
    /// succeeded ran its effect even if its lease was lost meanwhile). Returns, per job,
    /// whether this worker still held it. The reaper skips rows locked here, so the two never
    /// wait on each other in opposite orders.
    pub async fn complete_many(&self, jobs: &[Job], worker: &str) -> Result<Vec<bool>> {
        if jobs.is_empty() {
            return Ok(vec![]);
        }
        let ids: Vec<i64> = jobs.iter().map(|j| j.id).collect();
        let keys: Vec<&str> = jobs.iter().map(|j| j.key.as_str()).collect();
        let c = self.client().await?;
        let st = c
            .prepare_cached(concat!(
                "WITH gone AS (
                   DELETE FROM b24_jobs WHERE id = ANY($1) AND locked_by = $2 AND state = 'running'
                   RETURNING id),
                 rec AS (
                   INSERT INTO b24_processed SELECT k, ",
                db_now!(),
                " FROM unnest($3::text[]) AS k
                   ON CONFLICT DO NOTHING)
                 SELECT id FROM gone"
            ))
            .await
            .map_err(e)?;
        let rows = c.query(&st, &[&ids, &worker, &keys]).await.map_err(e)?;
        let held: std::collections::HashSet<i64> = rows.iter().map(|r| r.get(0)).collect();
        Ok(jobs.iter().map(|j| held.contains(&j.id)).collect())
    }

    /// [`PgQueue::complete_many`], then a claim of up to `n` jobs.
    pub async fn complete_and_claim(
        &self,
        done: &[Job],
        worker: &str,
        n: i64,
        lease_secs: f64,
        per_portal: Option<i64>,
    ) -> Result<Vec<Job>> {
        self.complete_many(done, worker).await?;
        if n > 0 {
            self.claim(worker, n, lease_secs, per_portal).await
        } else {
            Ok(vec![])
        }
    }

    pub async fn fail(
        &self,
        job: &Job,
        worker: &str,
        error: &str,
        rule: RetryRule,
    ) -> Result<bool> {
        let mut c = self.client().await?;
        let tx = c.transaction().await.map_err(e)?;
        let dead = job.attempts >= rule.max_attempts;
        if dead {
            let n = tx
                .execute(
                    concat!(
                        "INSERT INTO b24_dlq (key, source, name, payload, attempts, last_error, failed_at, member_id)
                     SELECT key, source, name, payload, attempts, $3, ",
                        db_now!(),
                        ", member_id FROM b24_jobs WHERE id = $1 AND locked_by = $2"
                    ),
                    &[&job.id, &worker, &error],
                )
                .await
                .map_err(e)?;
            if n == 1 {
                tx.execute("DELETE FROM b24_jobs WHERE id = $1", &[&job.id])
                    .await
                    .map_err(e)?;
            }
        } else {
            tx.execute(
                concat!(
                    "UPDATE b24_jobs SET state = 'ready', locked_by = NULL, lease_until = NULL, last_error = $3, run_at = ",
                    db_now!(),
                    " + $4 WHERE id = $1 AND locked_by = $2"
                ),
                &[&job.id, &worker, &error, &rule.delay(job.attempts)],
            )
            .await
            .map_err(e)?;
        }
        tx.commit().await.map_err(e)?;
        Ok(dead)
    }

    /// Extend the leases this worker still holds to `lease_secs` from the database's now; per
    /// job, whether it was still held.
    pub async fn renew(&self, jobs: &[Job], worker: &str, lease_secs: f64) -> Result<Vec<bool>> {
        if jobs.is_empty() {
            return Ok(vec![]);
        }
        let ids: Vec<i64> = jobs.iter().map(|j| j.id).collect();
        let rows = self
            .client()
            .await?
            .query(
                concat!(
                    "UPDATE b24_jobs SET lease_until = ",
                    db_now!(),
                    " + $3 WHERE id = ANY($1) AND locked_by = $2 AND state = 'running' RETURNING id"
                ),
                &[&ids, &worker, &lease_secs],
            )
            .await
            .map_err(e)?;
        let held: std::collections::HashSet<i64> = rows.iter().map(|r| r.get(0)).collect();
        Ok(jobs.iter().map(|j| held.contains(&j.id)).collect())
    }

    /// Forget processed keys recorded more than `older_than_secs` ago (database clock), in
    /// batches so no statement holds many row locks for long.
    pub async fn prune_processed(&self, older_than_secs: f64) -> Result<u64> {
        let c = self.client().await?;
        let mut total = 0;
        loop {
            let n = c
                .execute(
                    concat!(
                        "DELETE FROM b24_processed WHERE key IN (SELECT key FROM b24_processed WHERE done_at < ",
                        db_now!(),
                        " - $1 LIMIT $2 FOR UPDATE SKIP LOCKED)"
                    ),
                    &[&older_than_secs, &PRUNE_BATCH],
                )
                .await
                .map_err(e)?;
            total += n;
            if n < PRUNE_BATCH as u64 {
                return Ok(total);
            }
        }
    }

    pub async fn release(&self, job: &Job, worker: &str) -> Result<()> {
        self.client()
            .await?
            .execute(
                "UPDATE b24_jobs SET state = 'ready', locked_by = NULL, lease_until = NULL, attempts = GREATEST(attempts - 1, 0) WHERE id = $1 AND locked_by = $2",
                &[&job.id, &worker],
            )
            .await
            .map_err(e)?;
        Ok(())
    }

    pub async fn reap(&self) -> Result<u64> {
        self.client()
            .await?
            .execute(
                concat!(
                    "WITH expired AS (
                   SELECT id FROM b24_jobs WHERE state = 'running' AND lease_until < ",
                    db_now!(),
                    " FOR UPDATE SKIP LOCKED)
                 UPDATE b24_jobs j SET state = 'ready', locked_by = NULL, lease_until = NULL
                 FROM expired WHERE j.id = expired.id"
                ),
                &[],
            )
            .await
            .map_err(e)
    }

    pub async fn stats(&self) -> Result<QueueStats> {
        let c = self.client().await?;
        let r = c
            .query_one(
                "SELECT (SELECT COUNT(*) FROM b24_jobs WHERE state = 'ready'), (SELECT COUNT(*) FROM b24_jobs WHERE state = 'running'),
                        (SELECT COUNT(*) FROM b24_dlq), (SELECT COUNT(*) FROM b24_processed),
                        (SELECT extract(epoch from now())::float8 - MIN(created_at) FROM b24_jobs)",
                &[],
            )
            .await
            .map_err(e)?;
        let age: Option<f64> = r.get(4);
        Ok(QueueStats {
            ready: r.get(0),
            running: r.get(1),
            dead: r.get(2),
            processed: r.get(3),
            oldest_age_secs: age.map(|a| a.max(0.0)).unwrap_or(0.0),
        })
    }

    pub async fn is_processed(&self, key: &str) -> Result<bool> {
        Ok(!self
            .client()
            .await?
            .query("SELECT 1 FROM b24_processed WHERE key = $1", &[&key])
            .await
            .map_err(e)?
            .is_empty())
    }

    fn dead(r: &tokio_postgres::Row) -> DeadLetter {
        DeadLetter {
            id: r.get(0),
            key: r.get(1),
            name: r.get(2),
            payload: serde_json::from_str(r.get::<_, &str>(3)).unwrap_or(Value::Null),
            attempts: r.get(4),
            last_error: r.get(5),
            failed_at: r.get(6),
        }
    }

    pub async fn dlq_list(&self, limit: i64) -> Result<Vec<DeadLetter>> {
        let rows = self
            .client()
            .await?
            .query("SELECT id, key, name, payload, attempts, last_error, failed_at FROM b24_dlq ORDER BY id LIMIT $1", &[&limit])
            .await
            .map_err(e)?;
        Ok(rows.iter().map(Self::dead).collect())
    }

    pub async fn dlq_get(&self, id: i64) -> Result<Option<DeadLetter>> {
        let rows = self
            .client()
            .await?
            .query("SELECT id, key, name, payload, attempts, last_error, failed_at FROM b24_dlq WHERE id = $1", &[&id])
            .await
            .map_err(e)?;
        Ok(rows.first().map(Self::dead))
    }

    pub async fn dlq_replay(&self, id: Option<i64>) -> Result<u64> {
        let mut c = self.client().await?;
        let tx = c.transaction().await.map_err(e)?;
        let n = tx
            .execute(
                concat!(
                    "INSERT INTO b24_jobs (key, source, name, payload, run_at, created_at, member_id)
                 SELECT key, source, name, payload, ",
                    db_now!(),
                    ", ",
                    db_now!(),
                    ", member_id FROM b24_dlq WHERE ($1::BIGINT IS NULL OR id = $1) ON CONFLICT (key) DO NOTHING"
                ),
                &[&id],
            )
            .await
            .map_err(e)?;
        tx.execute(
            "DELETE FROM b24_dlq WHERE ($1::BIGINT IS NULL OR id = $1)",
            &[&id],
        )
        .await
        .map_err(e)?;
        tx.batch_execute("NOTIFY b24_jobs").await.map_err(e)?;
        tx.commit().await.map_err(e)?;
        Ok(n)
    }

    pub async fn dlq_purge(&self) -> Result<u64> {
        self.client()
            .await?
            .execute("DELETE FROM b24_dlq", &[])
            .await
            .map_err(e)
    }

    pub async fn app_token(&self, member_id: &str) -> Result<Option<String>> {
        let rows = self
            .client()
            .await?
            .query(
                "SELECT token FROM b24_app_tokens WHERE member_id = $1",
                &[&member_id],
            )
            .await
            .map_err(e)?;
        Ok(rows.first().map(|r| r.get(0)))
    }

    pub async fn set_app_token(&self, member_id: &str, token: Option<&str>) -> Result<()> {
        let c = self.client().await?;
        match token {
            Some(t) => c
                .execute(
                    concat!(
                        "INSERT INTO b24_app_tokens VALUES ($1, $2, ",
                        db_now!(),
                        ") ON CONFLICT (member_id) DO UPDATE SET token = EXCLUDED.token, updated_at = EXCLUDED.updated_at"
                    ),
                    &[&member_id, &t],
                )
                .await
                .map_err(e)?,
            None => c.execute("DELETE FROM b24_app_tokens WHERE member_id = $1", &[&member_id]).await.map_err(e)?,
        };
        Ok(())
    }
}

/// A dedicated connection that LISTENs and wakes idle workers; reconnects on failure.
async fn listen(cfg: tokio_postgres::Config, notify: Arc<Notify>) {
    loop {
        if let Ok((client, mut conn)) = cfg.connect(tokio_postgres::NoTls).await {
            let n2 = notify.clone();
            let driver = tokio::spawn(async move {
                let mut stream = futures::stream::poll_fn(move |cx| conn.poll_message(cx));
                use futures::StreamExt;
                while let Some(Ok(msg)) = stream.next().await {
                    if let tokio_postgres::AsyncMessage::Notification(_) = msg {
                        n2.notify_waiters();
                    }
                }
            });
            if client.batch_execute("LISTEN b24_jobs").await.is_ok() {
                let _ = driver.await;
            } else {
                driver.abort();
            }
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
}

/// Create a fresh schema and return a URL whose connections use it (tests, multi-tenant).
pub async fn isolated_url(base: &str, schema: &str) -> Result<String> {
    if !schema
        .chars()
        .all(|c| c.is_ascii_alphanumeric() || c == '_')
    {
        return Err(EventsError::Config(format!("bad schema name `{schema}`")));
    }
    let (client, conn) = tokio_postgres::connect(base, tokio_postgres::NoTls)
        .await
        .map_err(e)?;
    let h = tokio::spawn(conn);
    client
        .batch_execute(&format!("CREATE SCHEMA IF NOT EXISTS {schema}"))
        .await
        .map_err(e)?;
    drop(client);
    let _ = h.await;
    let sep = if base.contains('?') { '&' } else { '?' };
    Ok(format!("{base}{sep}options=-csearch_path%3D{schema}"))
}
