//! The PostgreSQL queue: many workers on many hosts. Claims use `FOR UPDATE SKIP LOCKED`, so
//! workers never wait on each other's rows; enqueue sends `NOTIFY b24_jobs` and idle workers
//! `LISTEN` instead of polling. The migrations are applied on connect (and by `b24 db migrate`).

use std::sync::Arc;
use std::time::Duration;

use deadpool_postgres::{Manager, ManagerConfig, Pool, RecyclingMethod};
use serde_json::Value;
use tokio::sync::Notify;

use crate::queue::{DeadLetter, Job, NewEvent, QueueStats, RetryRule};
use crate::{EventsError, Result, now};

fn e(err: impl std::fmt::Display) -> EventsError {
    EventsError::Store(format!("postgres: {err}"))
}

/// One migration set; each statement is idempotent.
pub const MIGRATIONS: &[&str] = &[
    "CREATE TABLE IF NOT EXISTS b24_jobs (
       id BIGSERIAL PRIMARY KEY, key TEXT NOT NULL UNIQUE, source TEXT NOT NULL, name TEXT NOT NULL,
       payload TEXT NOT NULL, state TEXT NOT NULL DEFAULT 'ready', attempts INT NOT NULL DEFAULT 0,
       run_at DOUBLE PRECISION NOT NULL, lease_until DOUBLE PRECISION, locked_by TEXT, last_error TEXT,
       created_at DOUBLE PRECISION NOT NULL)",
    "CREATE INDEX IF NOT EXISTS b24_jobs_ready ON b24_jobs (state, run_at, id)",
    "CREATE TABLE IF NOT EXISTS b24_processed (key TEXT PRIMARY KEY, done_at DOUBLE PRECISION NOT NULL)",
    "CREATE TABLE IF NOT EXISTS b24_dlq (id BIGSERIAL PRIMARY KEY, key TEXT NOT NULL, source TEXT NOT NULL, name TEXT NOT NULL,
       payload TEXT NOT NULL, attempts INT NOT NULL, last_error TEXT NOT NULL, failed_at DOUBLE PRECISION NOT NULL)",
    "CREATE TABLE IF NOT EXISTS b24_offline_pending (process_id TEXT PRIMARY KEY, created_at DOUBLE PRECISION NOT NULL)",
    "CREATE TABLE IF NOT EXISTS b24_app_tokens (member_id TEXT PRIMARY KEY, token TEXT NOT NULL, updated_at DOUBLE PRECISION NOT NULL)",
];

pub struct PgQueue {
    pool: Pool,
    notify: Arc<Notify>,
    listener: tokio::task::JoinHandle<()>,
}

impl Drop for PgQueue {
    fn drop(&mut self) {
        self.listener.abort();
    }
}

impl PgQueue {
    pub async fn connect(url: &str) -> Result<PgQueue> {
        let cfg: tokio_postgres::Config = url.parse().map_err(e)?;
        let mgr = Manager::from_config(
            cfg.clone(),
            tokio_postgres::NoTls,
            ManagerConfig {
                recycling_method: RecyclingMethod::Fast,
            },
        );
        let pool = Pool::builder(mgr).max_size(8).build().map_err(e)?;
        let client = pool.get().await.map_err(e)?;
        // Concurrent first connects may race on CREATE TABLE IF NOT EXISTS: serialise them.
        client
            .batch_execute("SELECT pg_advisory_lock(724242)")
            .await
            .map_err(e)?;
        let mut res = Ok(());
        for m in MIGRATIONS {
            if let Err(x) = client.batch_execute(m).await {
                res = Err(e(x));
                break;
            }
        }
        client
            .batch_execute("SELECT pg_advisory_unlock(724242)")
            .await
            .map_err(e)?;
        res?;
        let notify = Arc::new(Notify::new());
        let listener = tokio::spawn(listen(cfg, notify.clone()));
        Ok(PgQueue {
            pool,
            notify,
            listener,
        })
    }

    async fn client(&self) -> Result<deadpool_postgres::Object> {
        self.pool.get().await.map_err(e)
    }

    pub async fn wait_for_work(&self, max: Duration) {
        let _ = tokio::time::timeout(max, self.notify.notified()).await;
    }

    async fn insert(tx: &deadpool_postgres::Transaction<'_>, events: &[NewEvent]) -> Result<usize> {
        let t = now();
        let st = tx
            .prepare_cached(
                "INSERT INTO b24_jobs (key, source, name, payload, run_at, created_at)
                 SELECT $1, $2, $3, $4, $5, $5 WHERE NOT EXISTS (SELECT 1 FROM b24_processed WHERE key = $1)
                 ON CONFLICT (key) DO NOTHING",
            )
            .await
            .map_err(e)?;
        let mut n = 0;
        for ev in events {
            n += tx
                .execute(
                    &st,
                    &[&ev.key, &ev.source, &ev.name, &ev.payload.to_string(), &t],
                )
                .await
                .map_err(e)? as usize;
        }
        if n > 0 {
            tx.batch_execute("NOTIFY b24_jobs").await.map_err(e)?;
        }
        Ok(n)
    }

    pub async fn enqueue(&self, events: &[NewEvent]) -> Result<usize> {
        let mut c = self.client().await?;
        let tx = c.transaction().await.map_err(e)?;
        let n = Self::insert(&tx, events).await?;
        tx.commit().await.map_err(e)?;
        Ok(n)
    }

    pub async fn enqueue_offline(&self, events: &[NewEvent], process_id: &str) -> Result<usize> {
        let mut c = self.client().await?;
        let tx = c.transaction().await.map_err(e)?;
        let n = Self::insert(&tx, events).await?;
        tx.execute(
            "INSERT INTO b24_offline_pending VALUES ($1, $2) ON CONFLICT DO NOTHING",
            &[&process_id, &now()],
        )
        .await
        .map_err(e)?;
        tx.commit().await.map_err(e)?;
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
        self.client()
            .await?
            .execute(
                "DELETE FROM b24_offline_pending WHERE process_id = $1",
                &[&process_id],
            )
            .await
            .map_err(e)?;
        Ok(())
    }

    pub async fn claim(&self, worker: &str, n: i64, lease_secs: f64) -> Result<Vec<Job>> {
        let t = now();
        let rows = self
            .client()
            .await?
            .query(
                "WITH next AS (
                   SELECT id FROM b24_jobs WHERE state = 'ready' AND run_at <= $3
                   ORDER BY run_at, id LIMIT $4 FOR UPDATE SKIP LOCKED)
                 UPDATE b24_jobs j SET state = 'running', attempts = attempts + 1, locked_by = $1, lease_until = $2
                 FROM next WHERE j.id = next.id
                 RETURNING j.id, j.key, j.name, j.payload, j.attempts",
                &[&worker, &(t + lease_secs), &t, &n],
            )
            .await
            .map_err(e)?;
        Ok(rows
            .iter()
            .map(|r| Job {
                id: r.get(0),
                key: r.get(1),
                name: r.get(2),
                payload: serde_json::from_str(r.get::<_, &str>(3)).unwrap_or(Value::Null),
                attempts: r.get(4),
            })
            .collect())
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
            "INSERT INTO b24_processed VALUES ($1, $2) ON CONFLICT DO NOTHING",
            &[&job.key, &now()],
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
        let rows = self
            .client()
            .await?
            .query(
                "WITH gone AS (
                   DELETE FROM b24_jobs WHERE id = ANY($1) AND locked_by = $2 AND state = 'running'
                   RETURNING id),
                 rec AS (
                   INSERT INTO b24_processed SELECT k, $3 FROM unnest($4::text[]) AS k
                   ON CONFLICT DO NOTHING)
                 SELECT id FROM gone",
                &[&ids, &worker, &now(), &keys],
            )
            .await
            .map_err(e)?;
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
    ) -> Result<Vec<Job>> {
        self.complete_many(done, worker).await?;
        if n > 0 {
            self.claim(worker, n, lease_secs).await
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
                    "INSERT INTO b24_dlq (key, source, name, payload, attempts, last_error, failed_at)
                     SELECT key, source, name, payload, attempts, $3, $4 FROM b24_jobs WHERE id = $1 AND locked_by = $2",
                    &[&job.id, &worker, &error, &now()],
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
                "UPDATE b24_jobs SET state = 'ready', locked_by = NULL, lease_until = NULL, last_error = $3, run_at = $4 WHERE id = $1 AND locked_by = $2",
                &[&job.id, &worker, &error, &(now() + rule.delay(job.attempts))],
            )
            .await
            .map_err(e)?;
        }
        tx.commit().await.map_err(e)?;
        Ok(dead)
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
                "WITH expired AS (
                   SELECT id FROM b24_jobs WHERE state = 'running' AND lease_until < $1
                   FOR UPDATE SKIP LOCKED)
                 UPDATE b24_jobs j SET state = 'ready', locked_by = NULL, lease_until = NULL
                 FROM expired WHERE j.id = expired.id",
                &[&now()],
            )
            .await
            .map_err(e)
    }

    pub async fn stats(&self) -> Result<QueueStats> {
        let c = self.client().await?;
        let r = c
            .query_one(
                "SELECT (SELECT COUNT(*) FROM b24_jobs WHERE state = 'ready'), (SELECT COUNT(*) FROM b24_jobs WHERE state = 'running'),
                        (SELECT COUNT(*) FROM b24_dlq), (SELECT COUNT(*) FROM b24_processed), (SELECT MIN(created_at) FROM b24_jobs)",
                &[],
            )
            .await
            .map_err(e)?;
        let oldest: Option<f64> = r.get(4);
        Ok(QueueStats {
            ready: r.get(0),
            running: r.get(1),
            dead: r.get(2),
            processed: r.get(3),
            oldest_age_secs: oldest.map(|o| (now() - o).max(0.0)).unwrap_or(0.0),
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
                "INSERT INTO b24_jobs (key, source, name, payload, run_at, created_at)
                 SELECT key, source, name, payload, $2, $2 FROM b24_dlq WHERE ($1::BIGINT IS NULL OR id = $1) ON CONFLICT (key) DO NOTHING",
                &[&id, &now()],
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
                    "INSERT INTO b24_app_tokens VALUES ($1, $2, $3) ON CONFLICT (member_id) DO UPDATE SET token = EXCLUDED.token, updated_at = EXCLUDED.updated_at",
                    &[&member_id, &t, &now()],
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
