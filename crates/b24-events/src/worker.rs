//! The worker loop: pull offline events (optional), reap expired leases, claim jobs, run the
//! handler, and complete (with the idempotency record) or fail (backoff, then dead letters).

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::time::Duration;

use tokio_util::sync::CancellationToken;

use crate::handler::Handler;
use crate::queue::{RetryRule, Store};
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
    let mut tasks = tokio::task::JoinSet::new();
    loop {
        if stop.is_cancelled() {
            break;
        }
        let mut pulled_any = false;
        if let Some(client) = &cfg.pull {
            let r = pull::pull(client, &store, 50, 20).await?;
            stats.pulled.fetch_add(r.fetched as u64, Relaxed);
            pulled_any = r.fetched > 0;
        }
        stats.reaped.fetch_add(store.reap().await?, Relaxed);
        let free = cfg.concurrency.saturating_sub(tasks.len()) as i64;
        let jobs = if free > 0 {
            store.claim(&cfg.id, free, cfg.lease_secs).await?
        } else {
            vec![]
        };
        let claimed = jobs.len();
        for job in jobs {
            let (store, handler, stats, id, retry) = (
                store.clone(),
                handler.clone(),
                stats.clone(),
                cfg.id.clone(),
                cfg.retry,
            );
            tasks.spawn(async move {
                match handler.run(&job).await {
                    Ok(()) => {
                        store.complete(&job, &id).await?;
                        stats.handled.fetch_add(1, Relaxed);
                    }
                    Err(why) => {
                        tracing::warn!(key = %job.key, attempt = job.attempts, %why, "handler failed");
                        stats.failed.fetch_add(1, Relaxed);
                        if store.fail(&job, &id, &why, retry).await? {
                            stats.dead.fetch_add(1, Relaxed);
                        }
                    }
                }
                Ok::<(), crate::EventsError>(())
            });
        }
        // Reap finished tasks; surface store errors.
        while let Some(r) = tasks.try_join_next() {
            r.map_err(|e| crate::EventsError::Handler(e.to_string()))??;
        }
        if claimed == 0 && !pulled_any {
            if cfg.once {
                while let Some(r) = tasks.join_next().await {
                    r.map_err(|e| crate::EventsError::Handler(e.to_string()))??;
                }
                let s = store.stats().await?;
                let due_later = s.ready > 0;
                if s.running == 0 && !due_later {
                    break;
                }
                if due_later {
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
                continue;
            }
            if tasks.len() >= cfg.concurrency {
                if let Some(r) = tasks.join_next().await {
                    r.map_err(|e| crate::EventsError::Handler(e.to_string()))??;
                }
            } else {
                tokio::select! {
                    _ = stop.cancelled() => {}
                    _ = store.wait_for_work(Duration::from_millis(500)) => {}
                    Some(r) = tasks.join_next(), if !tasks.is_empty() => { r.map_err(|e| crate::EventsError::Handler(e.to_string()))??; }
                }
            }
        } else if tasks.len() >= cfg.concurrency
            && let Some(r) = tasks.join_next().await
        {
            r.map_err(|e| crate::EventsError::Handler(e.to_string()))??;
        }
    }
    // Graceful stop: let running handlers finish (their results are recorded).
    while let Some(r) = tasks.join_next().await {
        r.map_err(|e| crate::EventsError::Handler(e.to_string()))??;
    }
    Ok(())
}

/// Prometheus text for the queue and the worker.
pub fn metrics(
    q: &crate::QueueStats,
    w: &WorkerStats,
    client: Option<&b24::ClientStats>,
) -> String {
    let mut s = String::new();
    let mut g = |name: &str, help: &str, v: f64| {
        s.push_str(&format!(
            "# HELP {name} {help}\n# TYPE {name} gauge\n{name} {v}\n"
        ));
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
    s
}
