//! The worker loop: pull offline events (optional), reap expired leases, claim jobs, run the
//! handler, and complete (with the idempotency record) or fail (backoff, then dead letters).

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::time::{Duration, Instant};

use tokio_util::sync::CancellationToken;

use crate::handler::Handler;
use crate::queue::{Job, RetryRule, Store};
use crate::{Result, pull};

/// Worker settings.
#[derive(Clone)]
pub struct WorkerConfig {
    pub id: String,
    pub concurrency: usize,
    pub lease_secs: f64,
    pub retry: RetryRule,
    /// Pull offline events from the portal with this client (None = queue only).
    pub pull: Option<b24::Client>,
    /// Exit when there is nothing left to do.
    pub once: bool,
}

/// Counters (also served as Prometheus metrics).
#[derive(Debug, Default)]
pub struct WorkerStats {
    pub handled: AtomicU64,
    pub failed: AtomicU64,
    pub dead: AtomicU64,
    pub pulled: AtomicU64,
    pub reaped: AtomicU64,
}

impl WorkerStats {
    pub fn snapshot(&self) -> serde_json::Value {
        serde_json::json!({
            "handled": self.handled.load(Relaxed),
            "failed": self.failed.load(Relaxed),
            "dead_lettered": self.dead.load(Relaxed),
            "pulled": self.pulled.load(Relaxed),
            "reaped": self.reaped.load(Relaxed),
        })
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

    async fn join_all(&mut self) -> Result<()> {
        while let Some(r) = self.tasks.join_next().await {
            self.take(r)?;
        }
        Ok(())
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
        let jobs = store
            .complete_and_claim(&self.done, &cfg.id, free, cfg.lease_secs)
            .await?;
        stats.handled.fetch_add(self.done.len() as u64, Relaxed);
        self.done.clear();
        Ok(jobs)
    }

    /// Record the succeeded jobs as done: each job's delete with its idempotency record.
    async fn record(&mut self, store: &Store, worker: &str, stats: &WorkerStats) -> Result<()> {
        if self.done.is_empty() {
            return Ok(());
        }
        store.complete_many(&self.done, worker).await?;
        stats.handled.fetch_add(self.done.len() as u64, Relaxed);
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
    if let Some(client) = &cfg.pull {
        let r = pull::recover(client, &store).await?;
        stats.pulled.fetch_add(r.fetched as u64, Relaxed);
    }
    let handler = Arc::new(handler);
    let mut running = Running::default();
    let result = work(&store, &handler, &cfg, &stats, &stop, &mut running).await;
    if result.is_err() {
        // Whatever else failed, record the handlers that did succeed (best effort: if this
        // fails too, their leases expire and they run again).
        let _ = running.record(&store, &cfg.id, &stats).await;
    }
    result
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
    loop {
        if stop.is_cancelled() {
            break;
        }
        let mut pulled_any = false;
        if let Some(client) = &cfg.pull {
            running.record(store, &cfg.id, stats).await?;
            // A pull can take a while (up to 20 batches): handlers that finish meanwhile are
            // recorded as they finish, not after it.
            let pulling = pull::pull(client, store, 50, 20);
            tokio::pin!(pulling);
            let r = loop {
                tokio::select! {
                    r = &mut pulling => break r?,
                    Some(r) = running.tasks.join_next(), if !running.tasks.is_empty() => {
                        running.take(r)?;
                        running.collect()?;
                        running.record(store, &cfg.id, stats).await?;
                    }
                }
            };
            stats.pulled.fetch_add(r.fetched as u64, Relaxed);
            pulled_any = r.fetched > 0;
        }
        if last_reap.is_none_or(|t| t.elapsed() >= REAP_EVERY) {
            stats.reaped.fetch_add(store.reap().await?, Relaxed);
            last_reap = Some(Instant::now());
        }
        let free = cfg.concurrency.saturating_sub(running.tasks.len()) as i64;
        let jobs = running.record_and_claim(store, cfg, free, stats).await?;
        let claimed = jobs.len();
        for job in jobs {
            let (store, handler, stats, id, retry) = (
                store.clone(),
                handler.clone(),
                stats.clone(),
                cfg.id.clone(),
                cfg.retry,
            );
            running.tasks.spawn(async move {
                match handler.run(&job).await {
                    // Recorded by the loop, together with the jobs that finish with it.
                    Ok(()) => Ok(Some(job)),
                    Err(why) => {
                        tracing::warn!(key = %job.key, attempt = job.attempts, %why, "handler failed");
                        stats.failed.fetch_add(1, Relaxed);
                        if store.fail(&job, &id, &why, retry).await? {
                            stats.dead.fetch_add(1, Relaxed);
                        }
                        Ok(None)
                    }
                }
            });
        }
        // Collect finished tasks; surface store errors.
        running.collect()?;
        if claimed == 0 && !pulled_any {
            if cfg.once {
                running.join_all().await?;
                running.record(store, &cfg.id, stats).await?;
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
                tokio::select! {
                    _ = stop.cancelled() => {}
                    _ = store.wait_for_work(Duration::from_millis(500)) => {}
                    Some(r) = running.tasks.join_next(), if !running.tasks.is_empty() => running.take(r)?,
                }
            }
        } else if running.tasks.len() >= cfg.concurrency {
            running.settle().await?;
        }
    }
    // Graceful stop: let running handlers finish and record their results.
    running.join_all().await?;
    running.record(store, &cfg.id, stats).await
}

/// Prometheus text for the queue and the worker. `operating` is the client's view of each
/// method's operating-time use: `(method, seconds used in the portal's window, reset_at)`.
pub fn metrics(
    q: &crate::QueueStats,
    w: &WorkerStats,
    client: Option<&b24::ClientStats>,
    operating: &[(String, f64, Option<i64>)],
) -> String {
    let mut s = String::new();
    let mut put = |kind: &str, name: &str, help: &str, v: f64| {
        s.push_str(&format!(
            "# HELP {name} {help}\n# TYPE {name} {kind}\n{name} {v}\n"
        ));
    };
    let mut g = |name: &str, help: &str, v: f64| {
        let kind = if name.ends_with("_total") {
            "counter"
        } else {
            "gauge"
        };
        put(kind, name, help, v)
    };
    g(
        "b24_queue_ready",
        "Events waiting to be handled",
        q.ready as f64,
    );
    g(
        "b24_queue_running",
        "Events being handled",
        q.running as f64,
    );
    g(
        "b24_queue_oldest_age_seconds",
        "Age of the oldest queued event",
        q.oldest_age_secs,
    );
    g("b24_dlq_size", "Dead-lettered events", q.dead as f64);
    g(
        "b24_events_processed_total",
        "Events recorded as done",
        q.processed as f64,
    );
    g(
        "b24_worker_handled_total",
        "Events handled by this worker",
        w.handled.load(Relaxed) as f64,
    );
    g(
        "b24_worker_failures_total",
        "Handler failures (retried or dead-lettered)",
        w.failed.load(Relaxed) as f64,
    );
    g(
        "b24_worker_pulled_total",
        "Offline events pulled from the portal",
        w.pulled.load(Relaxed) as f64,
    );
    if let Some(c) = client {
        g(
            "b24_http_requests_total",
            "REST requests sent",
            c.requests as f64,
        );
        g("b24_http_retries_total", "REST retries", c.retries as f64);
        g(
            "b24_http_503_total",
            "QUERY_LIMIT_EXCEEDED answers",
            c.status_503 as f64,
        );
        g(
            "b24_http_429_total",
            "OPERATION_TIME_LIMIT answers",
            c.status_429 as f64,
        );
        g(
            "b24_limiter_waits_total",
            "Times the limiter delayed a request",
            c.limiter_waits as f64,
        );
    }
    if !operating.is_empty() {
        s.push_str(
            "# HELP b24_operating_seconds Operating time each method has used in the portal's 10 minute window (limit 480)\n# TYPE b24_operating_seconds gauge\n",
        );
        for (method, used, _) in operating {
            s.push_str(&format!(
                "b24_operating_seconds{{method=\"{}\"}} {used}\n",
                method.replace(['"', '\\', '\n'], "_")
            ));
        }
        s.push_str("# HELP b24_operating_reset_at Unix time the method's operating window resets\n# TYPE b24_operating_reset_at gauge\n");
        for (method, _, reset) in operating {
            if let Some(r) = reset {
                s.push_str(&format!(
                    "b24_operating_reset_at{{method=\"{}\"}} {r}\n",
                    method.replace(['"', '\\', '\n'], "_")
                ));
            }
        }
    }
    s
}
