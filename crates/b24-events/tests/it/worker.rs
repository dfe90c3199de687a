//! The worker loop with in-process handlers, on both backends.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use b24_events::NewEvent;
use b24_events::handler::Handler;
use b24_events::queue::RetryRule;
use b24_events::worker::{WorkerConfig, WorkerStats};
use serde_json::json;
use tokio_util::sync::CancellationToken;

use crate::conformance::backends;

fn ev(i: usize) -> NewEvent {
    NewEvent {
        key: format!("w{i}"),
        source: "offline".into(),
        name: "ONCRMDEALADD".into(),
        payload: json!({"ID": i}),
    }
}

fn cfg(id: &str, once: bool) -> WorkerConfig {
    WorkerConfig {
        id: id.into(),
        concurrency: 8,
        lease_secs: 30.0,
        retry: RetryRule {
            max_attempts: 2,
            base_secs: 0.0,
            max_secs: 0.0,
        },
        pull: None,
        once,
        ..WorkerConfig::default()
    }
}

type Calls = Arc<Mutex<HashMap<String, usize>>>;

/// Events whose ID is a multiple of 10 always fail.
fn poison(id: u64) -> bool {
    id.is_multiple_of(10)
}

/// Handler runs an event gets: poison ones run once per attempt (2), the others once.
fn expected_runs(key: &str) -> usize {
    if poison(key[1..].parse().unwrap()) {
        2
    } else {
        1
    }
}

/// Counts calls per key; poison events fail.
fn counting_handler(calls: Calls, delay: Duration) -> Handler {
    Handler::in_process(move |job| {
        let (calls, key) = (calls.clone(), job.key.clone());
        let poisoned = poison(job.payload["ID"].as_u64().unwrap_or(0));
        async move {
            tokio::time::sleep(delay).await;
            *calls.lock().unwrap().entry(key).or_default() += 1;
            if poisoned {
                Err("poison".into())
            } else {
                Ok(())
            }
        }
    })
}

#[tokio::test(flavor = "multi_thread")]
async fn once_drains_the_queue_handles_each_event_once_and_dead_letters_poison() {
    for (q, _d) in backends("worker_once").await {
        let q = Arc::new(q);
        q.enqueue(&(1..=300).map(ev).collect::<Vec<_>>())
            .await
            .unwrap();
        let calls: Calls = Arc::default();
        let stats = Arc::new(WorkerStats::default());
        b24_events::worker::run(
            q.clone(),
            counting_handler(calls.clone(), Duration::ZERO),
            cfg("w1", true),
            stats.clone(),
            CancellationToken::new(),
        )
        .await
        .unwrap();
        let s = q.stats().await.unwrap();
        assert_eq!(
            (s.ready, s.running, s.processed, s.dead),
            (0, 0, 270, 30),
            "{}",
            q.backend()
        );
        let snap = stats.snapshot();
        assert_eq!(
            (snap["handled"].as_u64(), snap["dead_lettered"].as_u64()),
            (Some(270), Some(30))
        );
        let calls = calls.lock().unwrap().clone();
        assert_eq!(calls.len(), 300);
        for (key, n) in calls.iter() {
            assert_eq!(*n, expected_runs(key), "{key} on {}", q.backend());
            assert_eq!(
                q.is_processed(key).await.unwrap(),
                expected_runs(key) == 1,
                "{key}"
            );
        }
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_stopped_worker_records_what_its_handlers_finished() {
    for (q, _d) in backends("worker_stop").await {
        let q = Arc::new(q);
        q.enqueue(&(1..=2000).map(ev).collect::<Vec<_>>())
            .await
            .unwrap();
        let calls: Calls = Arc::default();
        let stats = Arc::new(WorkerStats::default());
        let stop = CancellationToken::new();
        let worker = tokio::spawn(b24_events::worker::run(
            q.clone(),
            counting_handler(calls.clone(), Duration::from_millis(5)),
            cfg("w1", false),
            stats.clone(),
            stop.clone(),
        ));
        tokio::time::sleep(Duration::from_millis(300)).await;
        stop.cancel();
        worker.await.unwrap().unwrap();
        let s = q.stats().await.unwrap();
        let handled = stats.snapshot()["handled"].as_i64().unwrap();
        assert!(handled > 0, "{}", q.backend());
        assert_eq!(s.running, 0, "no lease is left behind: {s:?}");
        assert_eq!(s.processed, handled, "every finished handler is recorded");
        assert!(s.ready > 0, "stopped before the end: {s:?}");
        // What was not handled runs later, once.
        let rest = Arc::new(WorkerStats::default());
        b24_events::worker::run(
            q.clone(),
            counting_handler(calls.clone(), Duration::ZERO),
            cfg("w2", true),
            rest.clone(),
            CancellationToken::new(),
        )
        .await
        .unwrap();
        let s = q.stats().await.unwrap();
        assert_eq!((s.processed, s.dead), (1800, 200), "{}", q.backend());
        let calls = calls.lock().unwrap().clone();
        assert_eq!(calls.len(), 2000);
        for (key, n) in calls.iter() {
            assert_eq!(*n, expected_runs(key), "{key} on {}", q.backend());
        }
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn complete_many_records_each_job_with_its_lease_check() {
    for (q, _d) in backends("complete_many").await {
        q.enqueue(&(1..=5).map(ev).collect::<Vec<_>>())
            .await
            .unwrap();
        let jobs = q.claim("w1", 5, 30.0).await.unwrap();
        assert_eq!(jobs.len(), 5);
        assert_eq!(
            q.complete_many(&jobs[..2], "w2").await.unwrap(),
            vec![false, false],
            "a lease held by another worker is not completed"
        );
        assert_eq!(
            q.complete_many(&jobs[2..], "w1").await.unwrap(),
            vec![true, true, true]
        );
        assert!(q.complete_many(&[], "w1").await.unwrap().is_empty());
        let s = q.stats().await.unwrap();
        assert_eq!((s.running, s.processed), (2, 5), "{}", q.backend());
        for j in &jobs {
            assert!(q.is_processed(&j.key).await.unwrap());
        }
        // The worker's step: record what finished, claim successors.
        q.enqueue(&(6..=10).map(ev).collect::<Vec<_>>())
            .await
            .unwrap();
        let first = q.claim("w3", 2, 30.0).await.unwrap();
        let next = q.complete_and_claim(&first, "w3", 2, 30.0).await.unwrap();
        assert_eq!(next.len(), 2, "{}", q.backend());
        assert!(next.iter().all(|j| !first.contains(j)));
        let s = q.stats().await.unwrap();
        assert_eq!(
            (s.ready, s.running, s.processed),
            (1, 4, 7),
            "the jobs of w1 (lease kept by w1), two of w3; {}",
            q.backend()
        );
        assert!(
            q.complete_and_claim(&next, "w3", 0, 30.0)
                .await
                .unwrap()
                .is_empty()
        );
        assert_eq!(q.stats().await.unwrap().processed, 9);
    }
}
