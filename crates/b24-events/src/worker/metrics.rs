//! Prometheus text for the queue and the worker.

use std::sync::atomic::Ordering::Relaxed;

use super::WorkerStats;

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
    g(
        "b24_worker_offline_polls_total",
        "event.offline.get rounds (adaptive: back off while the portal's queue is empty)",
        w.polls.load(Relaxed) as f64,
    );
    g(
        "b24_worker_wakeups_total",
        "ONOFFLINEEVENT notifications that made the worker pull at once",
        w.wakeups.load(Relaxed) as f64,
    );
    g(
        "b24_worker_lease_renewals_total",
        "Leases extended while a handler ran",
        w.renewals.load(Relaxed) as f64,
    );
    g(
        "b24_processed_keys_pruned_total",
        "Processed idempotency keys forgotten after the retention window",
        w.pruned.load(Relaxed) as f64,
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
