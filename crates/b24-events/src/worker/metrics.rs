//! Prometheus metrics for the queue, the worker and the many-portal puller, encoded by the
//! Prometheus project's `prometheus-client` (text format 0.0.4), and the `--metrics-listen`
//! endpoint that serves them.
//!
//! Every value is read at scrape time (queue depths from the store, counters from the
//! worker's and fleet's atomics), so one [`Collector`] per scrape encodes a snapshot: the
//! counters stay where the worker increments them and nothing is counted twice.
//!
//! Labels: `method` (REST methods the client has called: bounded by the methods it uses) and
//! `member_id` on the `b24_portal_*` series — one label set per installed portal up to
//! [`crate::fleet::MAX_PORTAL_LABELS`] (2,000), the rest summed under `member_id="other"`, and
//! each value at most 64 characters of `[A-Za-z0-9_-]`. So a scrape carries at most
//! 5 × 2,001 portal series whatever the number of portals.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};

use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeMetric};
use prometheus_client::metrics::MetricType;
use prometheus_client::metrics::counter::ConstCounter;
use prometheus_client::metrics::gauge::ConstGauge;
use prometheus_client::registry::Registry;

use super::WorkerStats;
use crate::fleet::{FleetStats, PortalCounters};
use crate::queue::Store;

/// The `Content-Type` of what [`metrics`] returns.
pub const CONTENT_TYPE: &str = prometheus_client::encoding::prometheus_text::CONTENT_TYPE;

/// One value of a series without labels.
#[derive(Debug, Clone, Copy)]
enum Value {
    Counter(u64),
    Gauge(f64),
}

/// A snapshot of everything one scrape reports.
#[derive(Debug, Default)]
struct Snapshot {
    /// (name without `_total` for counters, help, value)
    plain: Vec<(&'static str, &'static str, Value)>,
    /// (method, seconds used, reset_at)
    operating: Vec<(String, f64, Option<i64>)>,
    /// Fleet: installed portals pulled by this process, and per-portal counters.
    fleet_portals: Option<u64>,
    portals: Vec<(String, PortalCounters)>,
}

type PortalGet = fn(&PortalCounters) -> u64;

/// The per-portal counter series (names without `_total`).
const PORTAL_SERIES: [(&str, &str, PortalGet); 5] = [
    (
        "b24_portal_polls",
        "event.offline.get rounds on this portal",
        |c| c.polls,
    ),
    (
        "b24_portal_pulled",
        "Offline events pulled from this portal",
        |c| c.pulled,
    ),
    (
        "b24_portal_errors",
        "Failed pull rounds on this portal",
        |c| c.errors,
    ),
    (
        "b24_portal_locked_elsewhere",
        "Pull rounds skipped because another host held the portal's pull lock",
        |c| c.locked_elsewhere,
    ),
    (
        "b24_portal_at_cap",
        "Pull rounds skipped because the portal had its cap of events queued",
        |c| c.at_cap,
    ),
];

type WorkerGet = fn(&WorkerStats) -> &AtomicU64;

/// The worker's counters (names without `_total`), read from its [`WorkerStats`].
const WORKER_SERIES: [(&str, &str, WorkerGet); 7] = [
    ("b24_worker_handled", "Events handled by this worker", |w| {
        &w.handled
    }),
    (
        "b24_worker_failures",
        "Handler failures (retried or dead-lettered)",
        |w| &w.failed,
    ),
    (
        "b24_worker_pulled",
        "Offline events pulled from the portal",
        |w| &w.pulled,
    ),
    (
        "b24_worker_offline_polls",
        "event.offline.get rounds (adaptive: back off while the portal's queue is empty)",
        |w| &w.polls,
    ),
    (
        "b24_worker_wakeups",
        "ONOFFLINEEVENT notifications that made the worker pull at once",
        |w| &w.wakeups,
    ),
    (
        "b24_worker_lease_renewals",
        "Leases extended while a handler ran",
        |w| &w.renewals,
    ),
    (
        "b24_processed_keys_pruned",
        "Processed idempotency keys forgotten after the retention window",
        |w| &w.pruned,
    ),
];

type ClientGet = fn(&b24::ClientStats) -> u64;

/// A single-portal worker's client counters (names without `_total`).
const CLIENT_SERIES: [(&str, &str, ClientGet); 5] = [
    ("b24_http_requests", "REST requests sent", |c| c.requests),
    ("b24_http_retries", "REST retries", |c| c.retries),
    ("b24_http_503", "QUERY_LIMIT_EXCEEDED answers", |c| {
        c.status_503
    }),
    ("b24_http_429", "OPERATION_TIME_LIMIT answers", |c| {
        c.status_429
    }),
    (
        "b24_limiter_waits",
        "Times the limiter delayed a request",
        |c| c.limiter_waits,
    ),
];

/// A member id as a label value: portal-supplied, so only `[A-Za-z0-9_-]`, 64 at most.
fn member_label(m: &str) -> String {
    m.chars()
        .filter(|c| c.is_ascii_alphanumeric() || *c == '_' || *c == '-')
        .take(64)
        .collect()
}

impl Collector for Snapshot {
    fn encode(&self, mut enc: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        for (name, help, v) in &self.plain {
            match *v {
                Value::Counter(c) => {
                    let m = ConstCounter::new(c);
                    m.encode(enc.encode_descriptor(name, help, None, m.metric_type())?)?;
                }
                Value::Gauge(g) => {
                    let m = ConstGauge::new(g);
                    m.encode(enc.encode_descriptor(name, help, None, m.metric_type())?)?;
                }
            }
        }
        if !self.operating.is_empty() {
            let mut fam = enc.encode_descriptor(
                "b24_operating_seconds",
                "Operating time each method has used in the portal's 10 minute window (limit 480)",
                None,
                MetricType::Gauge,
            )?;
            for (method, used, _) in &self.operating {
                let labels = [("method", method.as_str())];
                ConstGauge::new(*used).encode(fam.encode_family(&labels)?)?;
            }
            let mut fam = enc.encode_descriptor(
                "b24_operating_reset_at",
                "Unix time the method's operating window resets",
                None,
                MetricType::Gauge,
            )?;
            for (method, _, reset) in &self.operating {
                if let Some(r) = reset {
                    let labels = [("method", method.as_str())];
                    ConstGauge::new(*r).encode(fam.encode_family(&labels)?)?;
                }
            }
        }
        if let Some(n) = self.fleet_portals {
            let m = ConstGauge::new(n as i64);
            m.encode(enc.encode_descriptor(
                "b24_fleet_portals",
                "Installed portals this process pulls",
                None,
                m.metric_type(),
            )?)?;
            for (name, help, get) in PORTAL_SERIES {
                let mut fam = enc.encode_descriptor(name, help, None, MetricType::Counter)?;
                for (member, c) in &self.portals {
                    let labels = [("member_id", member.as_str())];
                    ConstCounter::new(get(c)).encode(fam.encode_family(&labels)?)?;
                }
            }
        }
        Ok(())
    }
}

impl Snapshot {
    fn render(self) -> String {
        let mut reg = Registry::default();
        reg.register_collector(Box::new(self));
        let mut out = String::new();
        // Writing to a String cannot fail; an encoder error would be a bug here, and a scrape
        // must not panic the worker: an empty answer shows up as a failed scrape instead.
        if prometheus_client::encoding::prometheus_text::encode(&mut out, &reg).is_err() {
            out.clear();
        }
        out
    }

    fn fleet(&mut self, f: &FleetStats) {
        self.fleet_portals = Some(f.portals.load(Relaxed));
        // Two ids that differ only in characters a label drops share a series (summed): a
        // label set must not repeat.
        let mut portals: std::collections::BTreeMap<String, PortalCounters> = Default::default();
        for (m, c) in f.portal_counters() {
            portals.entry(member_label(&m)).or_default().add(&c);
        }
        self.portals = portals.into_iter().collect();
    }
}

/// Prometheus text for the queue and the worker. `operating` is the client's view of each
/// method's operating-time use: `(method, seconds used in the portal's window, reset_at)`.
pub fn metrics(
    q: &crate::QueueStats,
    w: &WorkerStats,
    client: Option<&b24::ClientStats>,
    operating: &[(String, f64, Option<i64>)],
) -> String {
    snapshot(q, w, client, operating).render()
}

/// [`metrics`] and the many-portal puller's series, in one exposition.
pub fn metrics_with_fleet(
    q: &crate::QueueStats,
    w: &WorkerStats,
    client: Option<&b24::ClientStats>,
    operating: &[(String, f64, Option<i64>)],
    fleet: &FleetStats,
) -> String {
    let mut s = snapshot(q, w, client, operating);
    s.fleet(fleet);
    s.render()
}

/// The fleet's series alone (totals and per-portal counters).
pub fn fleet_metrics(fleet: &FleetStats) -> String {
    let mut s = Snapshot::default();
    s.fleet(fleet);
    s.render()
}

fn snapshot(
    q: &crate::QueueStats,
    w: &WorkerStats,
    client: Option<&b24::ClientStats>,
    operating: &[(String, f64, Option<i64>)],
) -> Snapshot {
    use Value::{Counter, Gauge};
    let mut plain = vec![
        (
            "b24_queue_ready",
            "Events waiting to be handled",
            Gauge(q.ready as f64),
        ),
        (
            "b24_queue_running",
            "Events being handled",
            Gauge(q.running as f64),
        ),
        (
            "b24_queue_oldest_age_seconds",
            "Age of the oldest queued event",
            Gauge(q.oldest_age_secs),
        ),
        ("b24_dlq_size", "Dead-lettered events", Gauge(q.dead as f64)),
        (
            "b24_events_processed",
            "Events recorded as done",
            Counter(q.processed.max(0) as u64),
        ),
    ];
    plain.extend(
        WORKER_SERIES
            .iter()
            .map(|(name, help, get)| (*name, *help, Counter(get(w).load(Relaxed)))),
    );
    if let Some(c) = client {
        plain.extend(
            CLIENT_SERIES
                .iter()
                .map(|(name, help, get)| (*name, *help, Counter(get(c)))),
        );
    }
    Snapshot {
        plain,
        operating: operating.to_vec(),
        ..Default::default()
    }
}

/// What the endpoint reads at each scrape.
#[derive(Clone)]
pub struct MetricsSource {
    pub store: Arc<Store>,
    pub worker: Arc<WorkerStats>,
    /// The portal client of a single-portal worker (HTTP and operating-time series).
    pub client: Option<b24::Client>,
    /// The many-portal puller's counters (`--all-portals`).
    pub fleet: Option<Arc<FleetStats>>,
}

impl MetricsSource {
    /// One scrape's text. A store that cannot be read reports zero depths rather than failing
    /// the scrape (the counters are still worth having).
    pub async fn scrape(&self) -> String {
        let q = self.store.stats().await.unwrap_or_default();
        let client = self.client.as_ref().map(|c| c.stats());
        let operating = self
            .client
            .as_ref()
            .map(|c| c.operating_snapshot())
            .unwrap_or_default();
        match &self.fleet {
            Some(f) => metrics_with_fleet(&q, &self.worker, client.as_ref(), &operating, f),
            None => metrics(&q, &self.worker, client.as_ref(), &operating),
        }
    }
}

/// Serve `GET /metrics` on `addr` (`--metrics-listen`) until the task is dropped. Returns the
/// bound address (port 0 picks one) and the server task.
pub async fn serve(
    addr: SocketAddr,
    source: MetricsSource,
) -> std::io::Result<(SocketAddr, tokio::task::JoinHandle<()>)> {
    let listener = tokio::net::TcpListener::bind(addr).await?;
    let bound = listener.local_addr()?;
    let app = axum::Router::new().route(
        "/metrics",
        axum::routing::get(move || {
            let source = source.clone();
            async move {
                (
                    [(axum::http::header::CONTENT_TYPE, CONTENT_TYPE)],
                    source.scrape().await,
                )
            }
        }),
    );
    let task = tokio::spawn(async move {
        let _ = axum::serve(listener, app).await;
    });
    Ok((bound, task))
}
