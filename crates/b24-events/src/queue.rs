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

/// The portal an event belongs to: its payload's `auth[member_id]` (online events carry it; the
/// many-portal puller adds it to offline ones), or `""` for a single-portal deployment's
/// untagged events. The queue schedules fairly between these values and limits the handlers
/// running for each. Portal-supplied: at most [`MAX_MEMBER_ID`] bytes are kept (the receiver
/// refuses longer ones), cut on a character boundary.
pub fn portal_of(payload: &Value) -> String {
    let m = match payload.get("auth").and_then(|a| a.get("member_id")) {
        Some(Value::String(s)) => s.clone(),
        Some(Value::Number(n)) => n.to_string(),
        _ => return String::new(),
    };
    if m.len() <= MAX_MEMBER_ID {
        return m;
    }
    let mut end = MAX_MEMBER_ID;
    while !m.is_char_boundary(end) {
        end -= 1;
    }
    m[..end].to_string()
}

/// The longest member id the queue keeps (the receiver's own bound).
pub const MAX_MEMBER_ID: usize = 128;

/// The reason a dead letter carries when its portal removed the app before it was handled.
pub const UNINSTALLED: &str = "uninstalled";

/// Lifecycle events that are handled even after their portal removed the app: the uninstall
/// notification itself (the app's chance to clean up its own data; it cannot call the portal
/// any more, whose tokens are gone).
pub(crate) const HANDLED_AFTER_UNINSTALL: &str = "ONAPPUNINSTALL";

/// A portal with ready jobs, as a claim sees it.
#[derive(Debug, Clone)]
pub(crate) struct PortalLoad {
    pub member_id: String,
    /// Jobs of this portal running now (on every worker sharing the store).
    pub running: i64,
    /// The installation's state when the registry knows the portal.
    pub install_state: Option<String>,
}

impl PortalLoad {
    /// Whether the app was removed from this portal: its queued events are dropped.
    pub fn ended(&self) -> bool {
        !self.member_id.is_empty()
            && self
                .install_state
                .as_deref()
                .is_some_and(|s| s != "installed")
    }
}

/// How many jobs of each portal one claim reads (`k`): a claim takes at most `n` jobs and at
/// most one per portal per round, so with at least `n` portals waiting the heads are enough.
pub(crate) fn per_portal_reads(portals: usize, n: i64) -> i64 {
    if portals as i64 >= n { 1 } else { n }
}

/// How many more jobs of a portal may start now (`limit` = handlers per portal, `None` = no
/// limit), at most `n`.
pub(crate) fn allowance(running: i64, limit: Option<i64>, n: i64) -> i64 {
    match limit {
        Some(l) => (l - running).clamp(0, n),
        None => n,
    }
}

/// Due jobs read by a claim: `(portal index, id, run_at)`.
pub(crate) type Candidates = Vec<(usize, i64, f64)>;

/// Round-robin across portals: every portal's first due job before any portal's second, and
/// within a round the longest-waiting first. `cands` holds each portal's due jobs in its own
/// order (`run_at`, `id`), as `(portal, id, run_at)`; returns at most `n` ids in claim order.
pub(crate) fn pick_fair(cands: &[(usize, i64, f64)], n: usize) -> Vec<i64> {
    let mut seen: std::collections::HashMap<usize, u32> = std::collections::HashMap::new();
    let mut ranked: Vec<(u32, f64, i64)> = cands
        .iter()
        .map(|&(p, id, run_at)| {
            let r = seen.entry(p).or_default();
            *r += 1;
            (*r, run_at, id)
        })
        .collect();
    ranked.sort_by(|a, b| a.0.cmp(&b.0).then(a.1.total_cmp(&b.1)).then(a.2.cmp(&b.2)));
    ranked.into_iter().take(n).map(|(_, _, id)| id).collect()
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

    /// Claim up to `n` ready jobs under a lease, fairly across portals (see
    /// [`Store::claim_with`]), with no limit per portal.
    pub async fn claim(&self, worker: &str, n: i64, lease_secs: f64) -> Result<Vec<Job>> {
        self.claim_with(worker, n, lease_secs, None).await
    }

    /// Claim up to `n` ready jobs under a lease. Portals (the events' `auth[member_id]`, see
    /// [`portal_of`]) take turns: every portal's oldest due job comes before any portal's
    /// second, so a portal with 20,000 queued events delays another portal's event by at most
    /// one job per claim. `per_portal` caps the jobs of one portal running at once, counted
    /// over every worker sharing the store (the claim reads the running count in the same
    /// transaction: SQLite's write lock, a PostgreSQL advisory lock that orders claims).
    /// Ready events of a portal whose app was uninstalled are moved to the dead letters with
    /// the reason [`UNINSTALLED`] instead (except `ONAPPUNINSTALL` itself).
    pub async fn claim_with(
        &self,
        worker: &str,
        n: i64,
        lease_secs: f64,
        per_portal: Option<i64>,
    ) -> Result<Vec<Job>> {
        self.complete_and_claim_with(&[], worker, n, lease_secs, per_portal)
            .await
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
        self.complete_and_claim_with(done, worker, n, lease_secs, None)
            .await
    }

    /// [`Store::complete_and_claim`] with the claim's per-portal limit (see
    /// [`Store::claim_with`]).
    pub async fn complete_and_claim_with(
        &self,
        done: &[Job],
        worker: &str,
        n: i64,
        lease_secs: f64,
        per_portal: Option<i64>,
    ) -> Result<Vec<Job>> {
        both!(self, q => q.complete_and_claim(done, worker, n, lease_secs, per_portal).await)
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
