//! The worker loop: pull offline events (optional, on an adaptive schedule), reap expired
//! leases, claim jobs, run the handler under a renewed lease, and complete (with the
//! idempotency record) or fail (backoff, then dead letters). In the background it prunes
//! idempotency records older than the retention window.
//!
//! `ONOFFLINEEVENT` jobs (the portal's "new offline rows" notification, queued by the online
//! receiver for a portal without an installed registry row) are not handed to the handler:
//! they are completed and make the next offline pull due at once. An installed portal's
//! notification is recorded on its registry row instead, which [`WakeWatch`] reads.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::time::{Duration, Instant};

use tokio_util::sync::CancellationToken;

use crate::handler::Handler;
use crate::queue::{Job, RetryRule, Store};
use crate::{Result, pull};

pub mod metrics;
mod poll;
mod wake;

pub use metrics::metrics;
pub use poll::PollSchedule;
pub use wake::WakeWatch;

/// The portal's notification that its offline queue got new rows.
pub const WAKE_EVENT: &str = "ONOFFLINEEVENT";

fn is_wake(job: &Job) -> bool {
    job.name.eq_ignore_ascii_case(WAKE_EVENT)
}

/// Default wait between offline pulls while events keep coming (`--poll-interval`).
pub const DEFAULT_POLL_INTERVAL: Duration = Duration::from_secs(1);
/// Default longest wait between offline pulls of an idle worker (`--poll-max`): one
/// `event.offline.get` per 30 s is 1.7% of the standard plan's refill (2 requests/s).
pub const DEFAULT_POLL_MAX: Duration = Duration::from_secs(30);
/// Default retention of processed idempotency keys (`--processed-retention`).
pub const DEFAULT_PROCESSED_RETENTION: Duration = Duration::from_secs(14 * 24 * 3600);
/// How often the processed keys are pruned.
const PRUNE_EVERY: Duration = Duration::from_secs(600);

/// Worker settings.
#[derive(Clone)]
pub struct WorkerConfig {
    pub id: String,
    pub concurrency: usize,
    /// A claimed job's lease. It is renewed every third of it while the handler runs, so a
    /// handler slower than the lease is not started again beside itself; the lease only runs
    /// out when the worker is gone.
    pub lease_secs: f64,
    pub retry: RetryRule,
    /// Pull offline events from the portal with this client (None = queue only).
    pub pull: Option<b24::Client>,
    /// Exit when there is nothing left to do.
    pub once: bool,
    /// Shortest wait between offline pulls (while events keep coming).
    pub poll_interval: Duration,
    /// Longest wait between offline pulls (an idle portal); the wait doubles up to it.
    pub poll_max: Duration,
    /// Forget processed idempotency keys older than this (None = keep for ever). A delivery
    /// that comes back after its key was forgotten is handled again.
    pub processed_retention: Option<Duration>,
    /// Most handlers running at once for one portal (`auth[member_id]`), counted over every
    /// worker on the store (None = no limit). A portal's own bucket (2 requests/s on the
    /// standard plan) is what its handlers share, so more handlers than a few only queue at
    /// its limiter while other portals' events wait for a slot.
    pub per_portal_concurrency: Option<usize>,
    /// The installed portal `pull` serves, whose wake-ups the receiver records in the
    /// installations registry rather than queues (see [`WakeWatch`]).
    pub wake_watch: Option<WakeWatch>,
}

/// The per-portal limit `b24 worker --all-portals` uses unless told otherwise.
pub const DEFAULT_PER_PORTAL_CONCURRENCY: usize = 4;

impl Default for WorkerConfig {
    fn default() -> Self {
        WorkerConfig {
            id: format!("worker-{}", std::process::id()),
            concurrency: 4,
            lease_secs: 60.0,
            retry: RetryRule::default(),
            pull: None,
            once: false,
            poll_interval: DEFAULT_POLL_INTERVAL,
            poll_max: DEFAULT_POLL_MAX,
            processed_retention: Some(DEFAULT_PROCESSED_RETENTION),
            per_portal_concurrency: None,
            wake_watch: None,
        }
    }
}

/// Counters (also served as Prometheus metrics).
#[derive(Debug, Default)]
pub struct WorkerStats {
    pub handled: AtomicU64,
    pub failed: AtomicU64,
    pub dead: AtomicU64,
    pub pulled: AtomicU64,
    pub reaped: AtomicU64,
    /// `event.offline.get` rounds started (each is one request when the portal is idle).
    pub polls: AtomicU64,
    /// `ONOFFLINEEVENT` notifications that woke the puller.
    pub wakeups: AtomicU64,
    /// Lease renewals of running handlers.
    pub renewals: AtomicU64,
    /// Processed keys forgotten after the retention window.
    pub pruned: AtomicU64,
}

impl WorkerStats {
    pub fn snapshot(&self) -> serde_json::Value {
        serde_json::json!({
            "handled": self.handled.load(Relaxed),
            "failed": self.failed.load(Relaxed),
            "dead_lettered": self.dead.load(Relaxed),
            "pulled": self.pulled.load(Relaxed),
            "reaped": self.reaped.load(Relaxed),
            "polls": self.polls.load(Relaxed),
            "wakeups": self.wakeups.load(Relaxed),
            "lease_renewals": self.renewals.load(Relaxed),
            "pruned_keys": self.pruned.load(Relaxed),
        })
    }

    /// Whether any handler run failed (retried or dead-lettered): `--once` then exits 1.
    pub fn had_failures(&self) -> bool {
        self.failed.load(Relaxed) > 0 || self.dead.load(Relaxed) > 0
    }
}

/// How often a worker returns expired leases to the queue. Leases last at least a second and
/// usually much longer, so reaping on every claim would only add a write per claim.
const REAP_EVERY: Duration = Duration::from_millis(500);

/// The running handlers, and the jobs whose handler succeeded but that are not recorded as done
/// yet. Jobs that finish together are recorded together: one `complete_many` (one transaction
/// on SQLite), and the next claim refills all their slots at once.
#[derive(Default)]
struct Running {
    /// Each task yields its job when the handler succeeded; failures are recorded by the task.
    tasks: tokio::task::JoinSet<Result<Option<Job>>>,
    done: Vec<Job>,
}

impl Running {
    fn take(
        &mut self,
        r: std::result::Result<Result<Option<Job>>, tokio::task::JoinError>,
    ) -> Result<()> {
        let outcome = r.map_err(|e| crate::EventsError::Handler(e.to_string()))??;
        self.done.extend(outcome);
        Ok(())
    }

    /// Collect the tasks that have already finished.
    fn collect(&mut self) -> Result<()> {
        while let Some(r) = self.tasks.try_join_next() {
            self.take(r)?;
        }
        Ok(())
    }

    /// Wait for one task, then collect the others that finished with it.
    async fn settle(&mut self) -> Result<()> {
        if let Some(r) = self.tasks.join_next().await {
            self.take(r)?;
            // Tasks woken together get to finish before we look.
            tokio::task::yield_now().await;
            self.collect()?;
        }
        Ok(())
    }

    /// Wait for every running handler, recording finished jobs as they finish. A job that is
    /// done but not recorded has no lease renewal any more: waiting for the slowest handler
    /// before recording the others would let their leases run out, and another worker would
    /// run them again.
    async fn finish(&mut self, store: &Store, worker: &str, stats: &WorkerStats) -> Result<()> {
        loop {
            self.record(store, worker, stats).await?;
            if self.tasks.is_empty() {
                return Ok(());
            }
            self.settle().await?;
        }
    }

    /// Record the succeeded jobs as done and claim up to `free` more (one transaction on
    /// SQLite).
    async fn record_and_claim(
        &mut self,
        store: &Store,
        cfg: &WorkerConfig,
        free: i64,
        stats: &WorkerStats,
    ) -> Result<Vec<Job>> {
        if free <= 0 {
            self.record(store, &cfg.id, stats).await?;
            return Ok(vec![]);
        }
        let n = self.count(stats);
        let jobs = store
            .complete_and_claim_with(
                &self.done,
                &cfg.id,
                free,
                cfg.lease_secs,
                cfg.per_portal_concurrency.map(|n| n.max(1) as i64),
            )
            .await
            .inspect_err(|_| {
                stats.handled.fetch_sub(n, Relaxed);
            })?;
        self.done.clear();
        Ok(jobs)
    }

    /// Count the handled jobs among `done` (wake-ups are not handled events) before they are
    /// recorded: the store's `processed` count must never run ahead of `handled` for a reader
    /// of the metrics (taken back if the recording fails).
    fn count(&self, stats: &WorkerStats) -> u64 {
        let n = self.done.iter().filter(|j| !is_wake(j)).count() as u64;
        stats.handled.fetch_add(n, Relaxed);
        n
    }

    /// Record the succeeded jobs as done: each job's delete with its idempotency record.
    async fn record(&mut self, store: &Store, worker: &str, stats: &WorkerStats) -> Result<()> {
        if self.done.is_empty() {
            return Ok(());
        }
        let n = self.count(stats);
        store
            .complete_many(&self.done, worker)
            .await
            .inspect_err(|_| {
                stats.handled.fetch_sub(n, Relaxed);
            })?;
        self.done.clear();
        Ok(())
    }
}

/// Run until `stop` is cancelled (or, with `once`, until the queue is drained).
/// On stop, no new job is claimed; running handlers finish, and their leases are completed
/// or released, so nothing is lost.
pub async fn run(
    store: Arc<Store>,
    handler: Handler,
    cfg: WorkerConfig,
    stats: Arc<WorkerStats>,
    stop: CancellationToken,
) -> Result<()> {
    // Only the portal's host, never its address: a webhook's address carries its code.
    tracing::info!(
        worker = %cfg.id,
        concurrency = cfg.concurrency,
        per_portal_concurrency = ?cfg.per_portal_concurrency,
        pulls = cfg.pull.as_ref().map(b24::Client::portal).unwrap_or("none (queue only)"),
        store = store.backend(),
        once = cfg.once,
        "worker started"
    );
    if let Some(client) = &cfg.pull {
        let r = pull::recover(client, &store).await?;
        stats.pulled.fetch_add(r.fetched as u64, Relaxed);
        if r.fetched > 0 {
            tracing::info!(
                recovered = r.fetched,
                "offline events left by an earlier run queued"
            );
        }
    }
    let pruner = cfg
        .processed_retention
        .map(|keep| tokio::spawn(prune(store.clone(), keep, stats.clone())));
    let handler = Arc::new(handler);
    let mut running = Running::default();
    let result = work(&store, &handler, &cfg, &stats, &stop, &mut running).await;
    if result.is_err() {
        // Whatever else failed, record the handlers that did succeed (best effort: if this
        // fails too, their leases expire and they run again).
        let _ = running.record(&store, &cfg.id, &stats).await;
    }
    if let Some(p) = pruner {
        p.abort();
    }
    match &result {
        Ok(()) => tracing::info!(worker = %cfg.id, stats = %stats.snapshot(), "worker stopped"),
        Err(e) => {
            tracing::error!(worker = %cfg.id, error = %e, stats = %stats.snapshot(), "worker stopped on an error")
        }
    }
    result
}

/// Forget processed keys older than `keep`, now and every [`PRUNE_EVERY`]. A failure is
/// logged and retried at the next round: pruning is housekeeping, not the worker's job.
async fn prune(store: Arc<Store>, keep: Duration, stats: Arc<WorkerStats>) {
    let mut every = tokio::time::interval(PRUNE_EVERY);
    every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        every.tick().await;
        match store.prune_processed(keep.as_secs_f64()).await {
            Ok(n) => {
                stats.pruned.fetch_add(n, Relaxed);
                if n > 0 {
                    tracing::info!(
                        pruned = n,
                        "forgot processed keys past the retention window"
                    );
                }
            }
            Err(e) => tracing::warn!(error = %e, "pruning processed keys failed"),
        }
    }
}

/// Run the handler for one claimed job, renewing its lease every third of the lease while it
/// runs. `Ok(Some(job))` = succeeded (recorded by the loop with the others that finish with
/// it); failures are recorded here.
async fn handle(
    job: Job,
    store: Arc<Store>,
    handler: Arc<Handler>,
    stats: Arc<WorkerStats>,
    worker: String,
    lease_secs: f64,
    retry: RetryRule,
) -> Result<Option<Job>> {
    let every = Duration::from_secs_f64((lease_secs / 3.0).max(0.05));
    let mut renew = tokio::time::interval_at(tokio::time::Instant::now() + every, every);
    renew.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let outcome = {
        let running = handler.run(&job);
        tokio::pin!(running);
        loop {
            tokio::select! {
                r = &mut running => break r,
                _ = renew.tick() => {
                    match store.renew(std::slice::from_ref(&job), &worker, lease_secs).await {
                        Ok(held) if held.first() == Some(&true) => {
                            stats.renewals.fetch_add(1, Relaxed);
                        }
                        // Lost (this worker was stalled past its lease): another worker may
                        // run the job too; the key still makes its recording happen once.
                        Ok(_) => tracing::warn!(key = %job.key, "lease lost while the handler ran"),
                        Err(e) => tracing::warn!(key = %job.key, error = %e, "lease renewal failed"),
                    }
                }
            }
        }
    };
    match outcome {
        Ok(()) => Ok(Some(job)),
        Err(why) => {
            tracing::warn!(key = %job.key, attempt = job.attempts, %why, "handler failed");
            stats.failed.fetch_add(1, Relaxed);
            if store.fail(&job, &worker, &why, retry).await? {
                stats.dead.fetch_add(1, Relaxed);
                tracing::warn!(
                    key = %job.key,
                    event = ?job.name,
                    member_id = %crate::queue::portal_of(&job.payload),
                    attempts = job.attempts,
                    "event dead-lettered: no attempts left (see `b24 dlq`)"
                );
            }
            Ok(None)
        }
    }
}

async fn work(
    store: &Arc<Store>,
    handler: &Arc<Handler>,
    cfg: &WorkerConfig,
    stats: &Arc<WorkerStats>,
    stop: &CancellationToken,
    running: &mut Running,
) -> Result<()> {
    let mut last_reap: Option<Instant> = None;
    let mut poll = PollSchedule::new(cfg.poll_interval, cfg.poll_max);
    // With `once`, pull until an answer comes back empty (then drain and exit).
    let mut last_found = true;
    let mut wake = cfg.wake_watch.clone().filter(|_| cfg.pull.is_some());
    if let Some(w) = wake.as_mut() {
        // The first look only learns where the row stands.
        w.woken().await;
    }
    loop {
        if let Some(w) = wake.as_mut()
            && w.woken().await
        {
            stats.wakeups.fetch_add(1, Relaxed);
            poll.wake();
        }
        if stop.is_cancelled() {
            tracing::info!(
                running = running.tasks.len(),
                "stopping: no new jobs claimed, waiting for running handlers"
            );
            break;
        }
        let mut pulled_any = false;
        if let Some(client) = &cfg.pull
            && (poll.due() || (cfg.once && last_found))
        {
            running.record(store, &cfg.id, stats).await?;
            stats.polls.fetch_add(1, Relaxed);
            // A pull can take a while (up to 20 batches): handlers that finish meanwhile are
            // recorded as they finish, not after it.
            let pulling = pull::pull(client, store, 50, 20);
            tokio::pin!(pulling);
            let r = loop {
                tokio::select! {
                    r = &mut pulling => break r.inspect_err(|e| {
                        tracing::warn!(portal = client.portal(), error = %e, "offline pull failed");
                    })?,
                    Some(r) = running.tasks.join_next(), if !running.tasks.is_empty() => {
                        running.take(r)?;
                        running.collect()?;
                        running.record(store, &cfg.id, stats).await?;
                    }
                }
            };
            stats.pulled.fetch_add(r.fetched as u64, Relaxed);
            pulled_any = r.fetched > 0;
            last_found = pulled_any;
            poll.pulled(pulled_any);
        }
        if last_reap.is_none_or(|t| t.elapsed() >= REAP_EVERY) {
            stats.reaped.fetch_add(store.reap().await?, Relaxed);
            last_reap = Some(Instant::now());
        }
        let free = cfg.concurrency.saturating_sub(running.tasks.len()) as i64;
        let jobs = running.record_and_claim(store, cfg, free, stats).await?;
        let claimed = jobs.len();
        for job in jobs {
            if is_wake(&job) {
                // A wake-up, not work: recorded as done with the next batch, and the offline
                // queue is read now instead of at the next scheduled poll.
                stats.wakeups.fetch_add(1, Relaxed);
                poll.wake();
                running.done.push(job);
                continue;
            }
            running.tasks.spawn(handle(
                job,
                store.clone(),
                handler.clone(),
                stats.clone(),
                cfg.id.clone(),
                cfg.lease_secs,
                cfg.retry,
            ));
        }
        // Collect finished tasks; surface store errors.
        running.collect()?;
        if claimed == 0 && !pulled_any {
            if cfg.once {
                running.finish(store, &cfg.id, stats).await?;
                let s = store.stats().await?;
                let due_later = s.ready > 0;
                if s.running == 0 && !due_later {
                    break;
                }
                if due_later {
                    tokio::time::sleep(Duration::from_millis(100)).await;
                } else {
                    // Only other workers' jobs (or expired leases not reaped yet) are running:
                    // poll gently until they are done rather than spin on the store.
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
                continue;
            }
            if running.tasks.len() >= cfg.concurrency {
                running.settle().await?;
            } else {
                // Idle: wait for new jobs (NOTIFY on PostgreSQL), a finished handler, or the
                // next scheduled pull, whichever comes first.
                let mut idle = Duration::from_millis(500);
                if cfg.pull.is_some() {
                    idle = idle.min(poll.until_due());
                }
                if wake.is_some() {
                    idle = idle.min(wake::CHECK_EVERY);
                }
                tokio::select! {
                    _ = stop.cancelled() => {}
                    _ = store.wait_for_work(idle) => {}
                    Some(r) = running.tasks.join_next(), if !running.tasks.is_empty() => running.take(r)?,
                }
            }
        } else if running.tasks.len() >= cfg.concurrency {
            running.settle().await?;
        }
    }
    // Graceful stop: let running handlers finish and record their results.
    running.finish(store, &cfg.id, stats).await
}
