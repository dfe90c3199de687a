//! Two PostgreSQL workers whose hosts' clocks are a minute apart. Leases, `run_at` and the
//! reaper read the database's clock, so the skew changes nothing: each event's effect happens
//! exactly once, and no lease is reaped from under a running handler.
//!
//! The same harness with times from the hosts' clocks (two SQLite stores on one file with the
//! same offsets, tried while writing this) fails: 16 of 200 effects ran twice or three times,
//! 17 leases were reaped from under running handlers, and when the events are enqueued with the
//! clock of neither host, the host behind gets no work at all.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use b24_events::handler::Handler;
use b24_events::queue::RetryRule;
use b24_events::worker::{WorkerConfig, WorkerStats};
use b24_events::{NewEvent, Store};
use serde_json::json;
use tokio_util::sync::CancellationToken;

use crate::conformance::pg;

#[tokio::test(flavor = "multi_thread")]
async fn two_postgres_workers_a_minute_apart_handle_each_event_once() {
    let Some(url) = pg("skew").await else {
        return;
    };
    const N: usize = 200;
    let seed = Store::open(&url)
        .await
        .unwrap()
        .with_host_clock_offset(-30.0);
    let events: Vec<NewEvent> = (0..N)
        .map(|i| NewEvent {
            key: format!("skew{i}"),
            source: "offline".into(),
            name: "ONCRMDEALUPDATE".into(),
            payload: json!({"ID": i}),
        })
        .collect();
    seed.enqueue(&events).await.unwrap();
    // Effects, per key; every 25th event is slower than the 2 s lease, and every 40th fails
    // once (its retry is scheduled on the database clock).
    let effects: Arc<Mutex<HashMap<String, usize>>> = Arc::default();
    let attempts: Arc<Mutex<HashMap<String, usize>>> = Arc::default();
    let mut workers = Vec::new();
    let mut stats = Vec::new();
    // Host A is a minute behind host B; the events were enqueued on host A.
    for (w, offset) in [(0, -30.0), (1, 30.0)] {
        let store = Arc::new(
            Store::open(&url)
                .await
                .unwrap()
                .with_host_clock_offset(offset),
        );
        let (effects, attempts) = (effects.clone(), attempts.clone());
        let handler = Handler::in_process(move |job| {
            let (effects, attempts, key) = (effects.clone(), attempts.clone(), job.key.clone());
            let id = job.payload["ID"].as_u64().unwrap_or(0);
            async move {
                let n = {
                    let mut a = attempts.lock().unwrap();
                    let n = a.entry(key.clone()).or_default();
                    *n += 1;
                    *n
                };
                if id.is_multiple_of(40) && n == 1 {
                    return Err("fails once".into());
                }
                let ms = if id.is_multiple_of(25) { 2500 } else { 40 };
                tokio::time::sleep(Duration::from_millis(ms)).await;
                *effects.lock().unwrap().entry(key).or_default() += 1;
                Ok(())
            }
        })
        .with_timeout(Duration::from_secs(30));
        let cfg = WorkerConfig {
            id: format!("skew-w{w}"),
            concurrency: 4,
            lease_secs: 2.0,
            retry: RetryRule {
                max_attempts: 3,
                base_secs: 1.0,
                max_secs: 1.0,
            },
            once: true,
            ..WorkerConfig::default()
        };
        let s = Arc::new(WorkerStats::default());
        stats.push(s.clone());
        workers.push(tokio::spawn(b24_events::worker::run(
            store,
            handler,
            cfg,
            s,
            CancellationToken::new(),
        )));
    }
    for w in workers {
        w.await.unwrap().unwrap();
    }
    let effects = effects.lock().unwrap().clone();
    assert_eq!(effects.len(), N);
    let twice: Vec<_> = effects.iter().filter(|(_, n)| **n != 1).collect();
    assert!(
        twice.is_empty(),
        "effects not exactly once: {twice:?}; {:?}",
        stats.iter().map(|s| s.snapshot()).collect::<Vec<_>>()
    );
    let attempts = attempts.lock().unwrap().clone();
    for (k, n) in &attempts {
        let id: u64 = k[4..].parse().unwrap();
        assert_eq!(*n, if id.is_multiple_of(40) { 2 } else { 1 }, "{k}");
    }
    let s = seed.stats().await.unwrap();
    assert_eq!(
        (s.processed, s.ready, s.running, s.dead),
        (N as i64, 0, 0, 0)
    );
    let reaped: u64 = stats
        .iter()
        .map(|s| s.snapshot()["reaped"].as_u64().unwrap())
        .sum();
    assert_eq!(
        reaped, 0,
        "no lease was reaped from under a running handler"
    );
    let handled: Vec<u64> = stats
        .iter()
        .map(|s| s.snapshot()["handled"].as_u64().unwrap())
        .collect();
    assert!(
        handled.iter().all(|&h| h > 0),
        "both workers worked: {handled:?}"
    );
}
