//! The worker's `--metrics-listen` endpoint, scraped over HTTP: the exposition parses as
//! Prometheus text, keeps the metric names, reports what the worker did, and bounds the
//! per-portal label sets.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::Ordering::Relaxed;

use b24_events::fleet::{FleetStats, MAX_PORTAL_LABELS};
use b24_events::handler::Handler;
use b24_events::worker::metrics::{MetricsSource, serve};
use b24_events::worker::{WorkerConfig, WorkerStats};
use b24_events::{NewEvent, Store};
use serde_json::json;
use tokio_util::sync::CancellationToken;

/// One sample: name, labels, value.
type Sample = (String, Vec<(String, String)>, f64);

/// A strict reader of the text format: `# HELP`/`# TYPE` lines, then samples
/// `name{k="v",...} value` whose family was typed before them.
fn parse(text: &str) -> (HashMap<String, String>, Vec<Sample>) {
    let mut types = HashMap::new();
    let mut samples = Vec::new();
    let is_name = |s: &str| {
        !s.is_empty()
            && s.chars().enumerate().all(|(i, c)| {
                c.is_ascii_alphabetic() || c == '_' || c == ':' || (i > 0 && c.is_ascii_digit())
            })
    };
    for line in text.lines() {
        if let Some(rest) = line.strip_prefix("# TYPE ") {
            let (name, kind) = rest.split_once(' ').expect("TYPE name kind");
            assert!(is_name(name), "{line}");
            assert!(["counter", "gauge"].contains(&kind), "{line}");
            assert!(
                types.insert(name.to_string(), kind.to_string()).is_none(),
                "typed twice: {line}"
            );
            continue;
        }
        if line.starts_with("# HELP ") {
            continue;
        }
        assert!(!line.starts_with('#'), "unexpected comment: {line}");
        let (series, value) = line.rsplit_once(' ').expect("sample value");
        let value: f64 = value.parse().unwrap_or_else(|_| panic!("value: {line}"));
        let (name, labels) = match series.split_once('{') {
            None => (series.to_string(), vec![]),
            Some((n, l)) => {
                let l = l.strip_suffix('}').expect("closing brace");
                let labels = l
                    .split("\",")
                    .filter(|p| !p.is_empty())
                    .map(|p| {
                        let (k, v) = p.split_once("=\"").expect("k=\"v\"");
                        (k.to_string(), v.trim_end_matches('"').to_string())
                    })
                    .collect();
                (n.to_string(), labels)
            }
        };
        assert!(is_name(&name), "{line}");
        assert!(types.contains_key(&name), "sample before its TYPE: {line}");
        if types[&name] == "counter" {
            assert!(name.ends_with("_total"), "counter without _total: {line}");
        }
        samples.push((name, labels, value));
    }
    (types, samples)
}

fn value(samples: &[Sample], name: &str, labels: &[(&str, &str)]) -> Option<f64> {
    samples
        .iter()
        .find(|(n, l, _)| {
            n == name
                && l.len() == labels.len()
                && labels
                    .iter()
                    .all(|(k, v)| l.iter().any(|(a, b)| a == k && b == v))
        })
        .map(|s| s.2)
}

#[tokio::test(flavor = "multi_thread")]
async fn metrics_endpoint_serves_parseable_prometheus_text() {
    let dir = tempfile::tempdir().unwrap();
    let store = Arc::new(
        Store::open(dir.path().join("q.db").to_str().unwrap())
            .await
            .unwrap(),
    );
    let events: Vec<NewEvent> = (0..5)
        .map(|i| NewEvent {
            key: format!("m{i}"),
            source: "online".into(),
            name: "ONCRMLEADADD".into(),
            payload: json!({"ID": i, "auth": {"member_id": format!("p{}", i % 2)}}),
        })
        .collect();
    store.enqueue(&events).await.unwrap();
    let worker = Arc::new(WorkerStats::default());
    b24_events::worker::run(
        store.clone(),
        Handler::in_process(|_| async { Ok(()) }),
        WorkerConfig {
            once: true,
            per_portal_concurrency: Some(1),
            ..WorkerConfig::default()
        },
        worker.clone(),
        CancellationToken::new(),
    )
    .await
    .unwrap();
    // The fleet's counters: three portals, then more portals than the label bound.
    let fleet = Arc::new(FleetStats::default());
    fleet.portals.store(3, Relaxed);
    fleet.bump("a1b2c3", |c| c.polls += 2);
    fleet.bump("a1b2c3", |c| c.pulled += 7);
    fleet.bump("bad\"id\n{x}", |c| c.errors += 1);
    for i in 0..MAX_PORTAL_LABELS + 50 {
        fleet.bump(&format!("many{i}"), |c| c.polls += 1);
    }
    let (addr, server) = serve(
        "127.0.0.1:0".parse().unwrap(),
        MetricsSource {
            store: store.clone(),
            worker: worker.clone(),
            client: None,
            fleet: Some(fleet.clone()),
        },
    )
    .await
    .unwrap();
    b24::tls::install_default_provider();
    let resp = reqwest::get(format!("http://{addr}/metrics"))
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    let ctype = resp.headers()["content-type"].to_str().unwrap().to_string();
    assert!(ctype.starts_with("text/plain; version=0.0.4"), "{ctype}");
    let text = resp.text().await.unwrap();
    let (types, samples) = parse(&text);
    for (name, kind) in [
        ("b24_queue_ready", "gauge"),
        ("b24_queue_running", "gauge"),
        ("b24_queue_oldest_age_seconds", "gauge"),
        ("b24_dlq_size", "gauge"),
        ("b24_events_processed_total", "counter"),
        ("b24_worker_handled_total", "counter"),
        ("b24_worker_failures_total", "counter"),
        ("b24_worker_pulled_total", "counter"),
        ("b24_worker_offline_polls_total", "counter"),
        ("b24_worker_wakeups_total", "counter"),
        ("b24_worker_lease_renewals_total", "counter"),
        ("b24_processed_keys_pruned_total", "counter"),
        ("b24_fleet_portals", "gauge"),
        ("b24_portal_polls_total", "counter"),
        ("b24_portal_pulled_total", "counter"),
        ("b24_portal_errors_total", "counter"),
        ("b24_portal_locked_elsewhere_total", "counter"),
        ("b24_portal_at_cap_total", "counter"),
    ] {
        assert_eq!(types.get(name).map(String::as_str), Some(kind), "{name}");
    }
    assert_eq!(value(&samples, "b24_worker_handled_total", &[]), Some(5.0));
    assert_eq!(
        value(&samples, "b24_events_processed_total", &[]),
        Some(5.0)
    );
    assert_eq!(value(&samples, "b24_queue_ready", &[]), Some(0.0));
    assert_eq!(value(&samples, "b24_fleet_portals", &[]), Some(3.0));
    let m = [("member_id", "a1b2c3")];
    assert_eq!(value(&samples, "b24_portal_polls_total", &m), Some(2.0));
    assert_eq!(value(&samples, "b24_portal_pulled_total", &m), Some(7.0));
    // A hostile member id is reduced to what a label may hold.
    let hostile = [("member_id", "badidx")];
    assert_eq!(
        value(&samples, "b24_portal_errors_total", &hostile),
        Some(1.0)
    );
    // The bound: at most MAX_PORTAL_LABELS portals of their own, the rest under `other`.
    let polls: Vec<&Sample> = samples
        .iter()
        .filter(|s| s.0 == "b24_portal_polls_total")
        .collect();
    assert_eq!(polls.len(), MAX_PORTAL_LABELS + 1, "{}", polls.len());
    let other = value(
        &samples,
        "b24_portal_polls_total",
        &[("member_id", "other")],
    )
    .unwrap();
    // 2 + 2,050 portals: the first 2,000 have their own label sets, 52 share `other`.
    assert_eq!(other, 52.0);
    server.abort();
}
