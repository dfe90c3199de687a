//! The queue's data model and the backend-independent [`Store`].

use serde_json::Value;

use crate::Result;
use crate::postgres::PgQueue;
use crate::sqlite::SqliteQueue;

/// An event to enqueue. `key` identifies it: the same key is never queued or handled twice.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct NewEvent {
    pub key: String,
    /// `online` or `offline`.
    pub source: String,
    pub name: String,
    pub payload: Value,
}

/// A claimed job.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct Job {
    pub id: i64,
    pub key: String,
    pub name: String,
    pub payload: Value,
    /// Attempts including this one.
    pub attempts: i32,
}

/// A dead-lettered event.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct DeadLetter {
    pub id: i64,
    pub key: String,
    pub name: String,
    pub payload: Value,
    pub attempts: i32,
    pub last_error: String,
    pub failed_at: f64,
}

/// Queue depth and health.
#[derive(Debug, Clone, Default, PartialEq, serde::Serialize)]
pub struct QueueStats {
    pub ready: i64,
    pub running: i64,
    pub dead: i64,
    pub processed: i64,
    /// Age in seconds of the oldest queued (ready or running) job.
    pub oldest_age_secs: f64,
}

/// Retry policy for failed handlers.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct RetryRule {
    pub max_attempts: i32,
    pub base_secs: f64,
    pub max_secs: f64,
}

impl Default for RetryRule {
    fn default() -> Self {
        RetryRule {
            max_attempts: 5,
            base_secs: 2.0,
            max_secs: 300.0,
        }
    }
}

impl RetryRule {
    pub fn delay(&self, attempts: i32) -> f64 {
        (self.base_secs * 2f64.powi(attempts.saturating_sub(1).min(30))).min(self.max_secs)
    }
}

/// The queue store, on SQLite (one host) or PostgreSQL (many hosts).
pub enum Store {
    Sqlite(SqliteQueue),
    Postgres(PgQueue),
}

macro_rules! both {
    ($self:ident, $q:ident => $e:expr) => {
        match $self {
            Store::Sqlite($q) => $e,
            Store::Postgres($q) => $e,
        }
    };
}

impl Store {
    /// Open by URL: `postgres://…` / `postgresql://…`, `sqlite:PATH`, or a plain file path.
    pub async fn open(url: &str) -> Result<Store> {
        if url.starts_with("postgres://") || url.starts_with("postgresql://") {
            return Ok(Store::Postgres(PgQueue::connect(url).await?));
        }
        let path = url
            .strip_prefix("sqlite://")
            .or_else(|| url.strip_prefix("sqlite:"))
            .unwrap_or(url);
        Ok(Store::Sqlite(SqliteQueue::open(std::path::Path::new(
            path,
        ))?))
    }

    pub fn backend(&self) -> &'static str {
        match self {
            Store::Sqlite(_) => "sqlite",
            Store::Postgres(_) => "postgres",
        }
    }

    /// Enqueue; returns how many were new (duplicates and already-processed keys are skipped).
    pub async fn enqueue(&self, events: &[NewEvent]) -> Result<usize> {
        both!(self, q => q.enqueue(events).await)
    }

    /// Enqueue and remember an offline `process_id` in the same transaction.
    pub async fn enqueue_offline(&self, events: &[NewEvent], process_id: &str) -> Result<usize> {
        both!(self, q => q.enqueue_offline(events, process_id).await)
    }

    /// Offline reservations committed locally but not yet cleared on the portal.
    pub async fn pending_processes(&self) -> Result<Vec<String>> {
        both!(self, q => q.pending_processes().await)
    }

    pub async fn forget_process(&self, process_id: &str) -> Result<()> {
        both!(self, q => q.forget_process(process_id).await)
    }

    /// Claim up to `n` ready jobs under a lease.
    pub async fn claim(&self, worker: &str, n: i64, lease_secs: f64) -> Result<Vec<Job>> {
        both!(self, q => q.claim(worker, n, lease_secs).await)
    }

    /// Done: delete the job and record its key, in one transaction.
    pub async fn complete(&self, job: &Job, worker: &str) -> Result<bool> {
        both!(self, q => q.complete(job, worker).await)
    }

    /// Done, for several jobs: each job's delete and its idempotency record commit together
    /// (SQLite: all in one transaction; PostgreSQL: one transaction per job, run concurrently).
    /// Per job, whether this worker still held its lease.
    pub async fn complete_many(&self, jobs: &[Job], worker: &str) -> Result<Vec<bool>> {
        both!(self, q => q.complete_many(jobs, worker).await)
    }

    /// Complete `done` (as [`Store::complete_many`]) and claim up to `n` more jobs. On SQLite
    /// both happen in one transaction: the worker's usual step costs one commit.
    pub async fn complete_and_claim(
        &self,
        done: &[Job],
        worker: &str,
        n: i64,
        lease_secs: f64,
    ) -> Result<Vec<Job>> {
        both!(self, q => q.complete_and_claim(done, worker, n, lease_secs).await)
    }

    /// Failed: retry later with backoff, or move to the dead letters after the last attempt.
    /// Returns true when it was dead-lettered.
    pub async fn fail(
        &self,
        job: &Job,
        worker: &str,
        error: &str,
        rule: RetryRule,
    ) -> Result<bool> {
        both!(self, q => q.fail(job, worker, error, rule).await)
    }

    /// Extend the leases `worker` still holds on `jobs` to `lease_secs` from now (the
    /// database's clock on PostgreSQL). Per job, whether the lease was still held: `false`
    /// means it expired and was reaped, and another worker may be running the job.
    pub async fn renew(&self, jobs: &[Job], worker: &str, lease_secs: f64) -> Result<Vec<bool>> {
        both!(self, q => q.renew(jobs, worker, lease_secs).await)
    }

    /// Forget idempotency records older than `older_than_secs`; returns how many. A key
    /// forgotten this way is queued again if the same delivery ever comes back, so the window
    /// must exceed the longest time a duplicate can arrive (see the worker's
    /// `processed_retention`).
    pub async fn prune_processed(&self, older_than_secs: f64) -> Result<u64> {
        both!(self, q => q.prune_processed(older_than_secs).await)
    }

    /// The schema version the store is at (SQLite `user_version`; PostgreSQL
    /// `b24_events_schema`).
    pub async fn schema_version(&self) -> Result<i64> {
        both!(self, q => q.schema_version().await)
    }

    /// Pretend this host's clock is `secs` off (tests of clock skew). SQLite keeps its times
    /// from the host's clock (one host by construction), so the offset moves them; PostgreSQL
    /// reads every time from the database, so the offset changes nothing there, which is
    /// what the skew tests show.
    pub fn with_host_clock_offset(mut self, secs: f64) -> Store {
        if let Store::Sqlite(q) = &mut self {
            q.set_clock_offset(secs);
        }
        self
    }

    /// Give a lease back untouched (shutdown): the attempt does not count.
    pub async fn release(&self, job: &Job, worker: &str) -> Result<()> {
        both!(self, q => q.release(job, worker).await)
    }

    /// Return jobs whose lease expired (their worker died) to the ready state.
    pub async fn reap(&self) -> Result<u64> {
        both!(self, q => q.reap().await)
    }

    pub async fn stats(&self) -> Result<QueueStats> {
        both!(self, q => q.stats().await)
    }

    pub async fn is_processed(&self, key: &str) -> Result<bool> {
        both!(self, q => q.is_processed(key).await)
    }

    pub async fn dlq_list(&self, limit: i64) -> Result<Vec<DeadLetter>> {
        both!(self, q => q.dlq_list(limit).await)
    }

    pub async fn dlq_get(&self, id: i64) -> Result<Option<DeadLetter>> {
        both!(self, q => q.dlq_get(id).await)
    }

    /// Move dead letters back into the queue with fresh attempts (`None` = all).
    pub async fn dlq_replay(&self, id: Option<i64>) -> Result<u64> {
        both!(self, q => q.dlq_replay(id).await)
    }

    pub async fn dlq_purge(&self) -> Result<u64> {
        both!(self, q => q.dlq_purge().await)
    }

    /// The application token stored for a portal (`member_id`).
    pub async fn app_token(&self, member_id: &str) -> Result<Option<String>> {
        both!(self, q => q.app_token(member_id).await)
    }

    pub async fn set_app_token(&self, member_id: &str, token: Option<&str>) -> Result<()> {
        both!(self, q => q.set_app_token(member_id, token).await)
    }

    /// Wait until new jobs may be available (PostgreSQL: LISTEN/NOTIFY; SQLite: a short sleep).
    pub async fn wait_for_work(&self, max: std::time::Duration) {
        match self {
            Store::Sqlite(_) => {
                tokio::time::sleep(max.min(std::time::Duration::from_millis(200))).await
            }
            Store::Postgres(q) => q.wait_for_work(max).await,
        }
    }
}
