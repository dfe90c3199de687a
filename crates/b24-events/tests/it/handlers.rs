//! Handlers that misbehave: ignore a large stdin, fork and sleep, flood stderr, never finish,
//! or take longer than their lease.

use std::collections::HashMap;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use b24_events::handler::{Handler, STDERR_TAIL};
use b24_events::queue::RetryRule;
use b24_events::worker::{WorkerConfig, WorkerStats};
use b24_events::{Job, NewEvent};
use serde_json::json;
use tokio_util::sync::CancellationToken;

use crate::conformance::backends;

fn job(payload: serde_json::Value) -> Job {
    Job {
        id: 1,
        key: "k1".into(),
        name: "ONCRMDEALUPDATE".into(),
        payload,
        attempts: 1,
    }
}

fn megabyte() -> serde_json::Value {
    json!({"blob": "x".repeat(1 << 20)})
}

/// Alive = present in /proc and not a zombie (an orphan killed in a container may wait for a
/// reaper that never comes, but it runs nothing).
fn alive(pid: u32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Ok(stat) => {
            let state = stat.rsplit(')').next().unwrap_or("").trim_start();
            !state.starts_with('Z') && !state.starts_with('X')
        }
        Err(_) => false,
    }
}

fn pids(file: &Path) -> Vec<u32> {
    std::fs::read_to_string(file)
        .unwrap_or_default()
        .split_whitespace()
        .map(|p| p.parse().unwrap())
        .collect()
}

#[tokio::test(flavor = "multi_thread")]
async fn a_handler_that_ignores_a_megabyte_of_stdin_does_not_hang_the_slot() {
    // Exits 0 without reading: done, not blocked on the pipe.
    let t = Instant::now();
    let h = Handler::exec("sleep 0.2", Duration::from_secs(5));
    assert_eq!(h.run(&job(megabyte())).await, Ok(()));
    assert!(t.elapsed() < Duration::from_secs(3), "{:?}", t.elapsed());
    // Never reads and never exits: the timeout (which covers the write) ends it.
    let t = Instant::now();
    let h = Handler::exec("sleep 600", Duration::from_secs(1));
    let err = h.run(&job(megabyte())).await.unwrap_err();
    assert!(err.contains("timed out"), "{err}");
    assert!(t.elapsed() < Duration::from_secs(4), "{:?}", t.elapsed());
    // A handler that does read gets all of it.
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("in.json");
    let h = Handler::exec(
        format!("cat > '{}'", out.display()),
        Duration::from_secs(10),
    );
    assert_eq!(h.run(&job(megabyte())).await, Ok(()));
    let got: serde_json::Value = serde_json::from_slice(&std::fs::read(&out).unwrap()).unwrap();
    assert_eq!(got["payload"], megabyte());
}

#[tokio::test(flavor = "multi_thread")]
async fn a_timed_out_handler_takes_its_whole_process_group_with_it() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("pids");
    // The shell starts two background sleeps (one of them a pipeline's child), records their
    // pids, then waits itself.
    let cmd = format!(
        "sleep 600 & echo $! >> '{f}'; (sleep 600; true) & echo $! >> '{f}'; sleep 600",
        f = file.display()
    );
    let t = Instant::now();
    let err = Handler::exec(cmd, Duration::from_millis(800))
        .run(&job(json!({})))
        .await
        .unwrap_err();
    assert!(err.contains("process group was killed"), "{err}");
    assert!(t.elapsed() < Duration::from_secs(4));
    let started = pids(&file);
    assert_eq!(started.len(), 2);
    tokio::time::sleep(Duration::from_millis(200)).await;
    for p in &started {
        assert!(!alive(*p), "pid {p} survived the timeout");
    }
    // A handler that exits 0 while its background child still runs: the child goes too.
    std::fs::remove_file(&file).unwrap();
    let cmd = format!("sleep 600 & echo $! >> '{}'; exit 0", file.display());
    assert_eq!(
        Handler::exec(cmd, Duration::from_secs(5))
            .run(&job(json!({})))
            .await,
        Ok(())
    );
    tokio::time::sleep(Duration::from_millis(200)).await;
    let p = pids(&file)[0];
    assert!(!alive(p), "background child {p} outlived its handler");
}

#[tokio::test(flavor = "multi_thread")]
async fn stderr_is_drained_and_only_its_tail_kept() {
    // 50 MB of stderr, then the line that matters.
    let h = Handler::exec(
        "head -c 50000000 /dev/zero | tr '\\0' x >&2; echo THE-REASON >&2; exit 3",
        Duration::from_secs(60),
    );
    let err = h.run(&job(json!({}))).await.unwrap_err();
    assert!(
        err.contains("exit status: 3"),
        "{}",
        &err[..200.min(err.len())]
    );
    assert!(err.ends_with("THE-REASON"), "the tail is kept");
    assert!(
        err.len() <= STDERR_TAIL + 100,
        "bounded: {} bytes",
        err.len()
    );
}

#[tokio::test(start_paused = true)]
async fn in_process_handlers_time_out() {
    let h = Handler::in_process(|_job| async {
        tokio::time::sleep(Duration::from_secs(3600)).await;
        Ok(())
    })
    .with_timeout(Duration::from_secs(5));
    let err = h.run(&job(json!({}))).await.unwrap_err();
    assert!(err.contains("timed out after 5s"), "{err}");
    assert_eq!(h.timeout(), Duration::from_secs(5));
}

/// Two workers share a queue; every handler run takes 2.5 s against a 1 s lease. Without
/// renewal the other worker would reap the lease and run the event beside the first.
#[tokio::test(flavor = "multi_thread")]
async fn a_handler_slower_than_its_lease_runs_once() {
    for (q, _d) in backends("slow_lease").await {
        let q = Arc::new(q);
        let events: Vec<NewEvent> = (0..6)
            .map(|i| NewEvent {
                key: format!("slow{i}"),
                source: "offline".into(),
                name: "ONCRMDEALUPDATE".into(),
                payload: json!({"ID": i}),
            })
            .collect();
        q.enqueue(&events).await.unwrap();
        let runs: Arc<Mutex<HashMap<String, usize>>> = Arc::default();
        let mut workers = Vec::new();
        let mut all_stats = Vec::new();
        for w in 0..2 {
            let runs = runs.clone();
            let handler = Handler::in_process(move |job| {
                let (runs, key) = (runs.clone(), job.key.clone());
                async move {
                    *runs.lock().unwrap().entry(key).or_default() += 1;
                    tokio::time::sleep(Duration::from_millis(2500)).await;
                    Ok(())
                }
            })
            .with_timeout(Duration::from_secs(20));
            let cfg = WorkerConfig {
                id: format!("slow-w{w}"),
                concurrency: 2,
                lease_secs: 1.0,
                retry: RetryRule::default(),
                once: true,
                ..WorkerConfig::default()
            };
            let stats = Arc::new(WorkerStats::default());
            all_stats.push(stats.clone());
            workers.push(tokio::spawn(b24_events::worker::run(
                q.clone(),
                handler,
                cfg,
                stats,
                CancellationToken::new(),
            )));
        }
        for w in workers {
            w.await.unwrap().unwrap();
        }
        let runs = runs.lock().unwrap().clone();
        assert_eq!(runs.len(), 6, "{}", q.backend());
        assert!(
            runs.values().all(|&n| n == 1),
            "each event ran once on {}: {runs:?}",
            q.backend()
        );
        let s = q.stats().await.unwrap();
        assert_eq!((s.processed, s.ready, s.running), (6, 0, 0));
        let renewals: u64 = all_stats
            .iter()
            .map(|s| s.snapshot()["lease_renewals"].as_u64().unwrap())
            .sum();
        let reaped: u64 = all_stats
            .iter()
            .map(|s| s.snapshot()["reaped"].as_u64().unwrap())
            .sum();
        assert!(renewals >= 6, "leases were renewed: {renewals}");
        assert_eq!(reaped, 0, "no lease ran out on {}", q.backend());
    }
}
