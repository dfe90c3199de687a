//! Many portals in one queue: portals take turns at every claim (a flood cannot starve the
//! others), a per-portal limit on running handlers holds across workers, and an uninstalled
//! portal's events are dead-lettered instead of handled — on both backends.

use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering::SeqCst};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use b24_events::handler::Handler;
use b24_events::worker::{WorkerConfig, WorkerStats};
use b24_events::{NewEvent, Store};
use serde_json::json;
use tokio_util::sync::CancellationToken;

use crate::conformance::{backends, pg};

/// An event of portal `member`, online (as the receiver queues it) or offline (as the
/// many-portal puller does).
fn ev(member: &str, i: usize, source: &str) -> NewEvent {
    NewEvent {
        key: format!("{source}:{member}:{i}"),
        source: source.into(),
        name: "ONCRMLEADADD".into(),
        payload: json!({"ID": i, "auth": {"member_id": member, "domain": format!("{member}.example")}}),
    }
}

/// 2,000 events of one portal, then one event on each of 20 others: while they wait, each
/// claim of 4 takes at most one flooded event (the oldest head goes first, then the other
/// portals' heads), so all 20 are among the first 27 leases — without turns they would wait
/// behind the 2,000.
#[tokio::test(flavor = "multi_thread")]
async fn a_flooded_portal_does_not_starve_the_others() {
    for source in ["online", "offline"] {
        for (q, _d) in backends(&format!("fair_{source}")).await {
            let flood: Vec<NewEvent> = (0..2000).map(|i| ev("flood", i, source)).collect();
            for chunk in flood.chunks(500) {
                q.enqueue(chunk).await.unwrap();
            }
            let quiet: Vec<String> = (0..20).map(|p| format!("quiet{p:02}")).collect();
            for m in &quiet {
                q.enqueue(&[ev(m, 0, source)]).await.unwrap();
            }
            // One worker taking 4 at a time, completing as it goes.
            let mut order: Vec<String> = Vec::new();
            while order.len() < 60 {
                let jobs = q.claim("w", 4, 30.0).await.unwrap();
                assert!(!jobs.is_empty());
                for j in &jobs {
                    order.push(j.payload["auth"]["member_id"].as_str().unwrap().into());
                }
                q.complete_many(&jobs, "w").await.unwrap();
            }
            let last_quiet = order
                .iter()
                .rposition(|m| m != "flood")
                .expect("quiet events were handled");
            assert!(
                last_quiet < 27,
                "{} {source}: the 20 quiet portals' events were done by lease {} (order {:?})",
                q.backend(),
                last_quiet + 1,
                &order[..30]
            );
            for m in &quiet {
                assert_eq!(order.iter().filter(|o| *o == m).count(), 1, "{m}");
            }
            // The flood still drains completely, oldest first.
            let mut rest = 0;
            loop {
                let jobs = q.claim("w", 100, 30.0).await.unwrap();
                if jobs.is_empty() {
                    break;
                }
                rest += jobs.len();
                q.complete_many(&jobs, "w").await.unwrap();
            }
            assert_eq!(rest + order.len(), 2020, "{}", q.backend());
        }
    }
}

/// A portal whose only due events are far behind others' retries still gets claimed, and a
/// claim fills its slots from the portals that have due events.
#[tokio::test(flavor = "multi_thread")]
async fn claims_fill_up_when_many_portals_have_nothing_due() {
    for (q, _d) in backends("fair_fill").await {
        // 30 portals, one event each, all failed once with a long backoff.
        for p in 0..30 {
            q.enqueue(&[ev(&format!("p{p}"), 0, "online")])
                .await
                .unwrap();
        }
        let rule = b24_events::queue::RetryRule {
            max_attempts: 5,
            base_secs: 3600.0,
            max_secs: 3600.0,
        };
        for j in q.claim("w", 100, 30.0).await.unwrap() {
            assert!(!q.fail(&j, "w", "later", rule).await.unwrap());
        }
        for i in 0..40 {
            q.enqueue(&[ev("busy", i, "online")]).await.unwrap();
        }
        let jobs = q.claim("w", 16, 30.0).await.unwrap();
        assert_eq!(
            jobs.len(),
            16,
            "{}: slots filled from the one due portal",
            q.backend()
        );
    }
}

/// `per_portal` running jobs at most, per claim and across claims, and the slots free up as
/// jobs complete.
#[tokio::test(flavor = "multi_thread")]
async fn per_portal_limit_holds_across_claims() {
    for (q, _d) in backends("fair_limit").await {
        for m in ["a", "b"] {
            let evs: Vec<NewEvent> = (0..30).map(|i| ev(m, i, "online")).collect();
            q.enqueue(&evs).await.unwrap();
        }
        let first = q.claim_with("w1", 16, 30.0, Some(3)).await.unwrap();
        assert_eq!(first.len(), 6, "{}: 3 of each portal", q.backend());
        let again = q.claim_with("w2", 16, 30.0, Some(3)).await.unwrap();
        assert!(
            again.is_empty(),
            "{}: both portals at their limit",
            q.backend()
        );
        let a_done: Vec<_> = first
            .iter()
            .filter(|j| j.payload["auth"]["member_id"] == "a")
            .take(2)
            .cloned()
            .collect();
        let next = q
            .complete_and_claim_with(&a_done, "w1", 16, 30.0, Some(3))
            .await
            .unwrap();
        assert_eq!(next.len(), 2, "{}", q.backend());
        assert!(next.iter().all(|j| j.payload["auth"]["member_id"] == "a"));
        // Without a limit the rest is claimable.
        assert_eq!(q.claim("w3", 100, 30.0).await.unwrap().len(), 60 - 8);
    }
}

/// Several worker loops (separate stores on PostgreSQL: as separate processes would have)
/// share the queue with a per-portal limit of 2: no portal ever has more than 2 handlers
/// running at once, everything is handled once, and on SQLite one worker keeps the same
/// limit.
async fn limit_across_workers(url: &str, workers: usize) {
    let running: Arc<Mutex<HashMap<String, usize>>> = Arc::default();
    let peak: Arc<Mutex<HashMap<String, usize>>> = Arc::default();
    let handled = Arc::new(AtomicUsize::new(0));
    let setup = Store::open(url).await.unwrap();
    for m in ["a", "b", "c"] {
        let evs: Vec<NewEvent> = (0..40).map(|i| ev(m, i, "offline")).collect();
        setup.enqueue(&evs).await.unwrap();
    }
    let stop = CancellationToken::new();
    let mut tasks = Vec::new();
    for w in 0..workers {
        let (running, peak, handled) = (running.clone(), peak.clone(), handled.clone());
        let handler = Handler::in_process(move |job| {
            let (running, peak, handled) = (running.clone(), peak.clone(), handled.clone());
            let m = job.payload["auth"]["member_id"]
                .as_str()
                .unwrap_or("")
                .to_string();
            async move {
                {
                    let mut r = running.lock().unwrap();
                    *r.entry(m.clone()).or_default() += 1;
                    let n = r[&m];
                    let all: usize = r.values().sum();
                    let mut p = peak.lock().unwrap();
                    let pk = p.entry(m.clone()).or_default();
                    *pk = (*pk).max(n);
                    let pa = p.entry("*".into()).or_default();
                    *pa = (*pa).max(all);
                }
                tokio::time::sleep(Duration::from_millis(15)).await;
                *running.lock().unwrap().get_mut(&m).unwrap() -= 1;
                handled.fetch_add(1, SeqCst);
                Ok(())
            }
        });
        let cfg = WorkerConfig {
            id: format!("lim-{w}"),
            concurrency: 8,
            once: true,
            per_portal_concurrency: Some(2),
            ..WorkerConfig::default()
        };
        let store = Arc::new(Store::open(url).await.unwrap());
        tasks.push(tokio::spawn(b24_events::worker::run(
            store,
            handler,
            cfg,
            Arc::new(WorkerStats::default()),
            stop.clone(),
        )));
    }
    for t in tasks {
        tokio::time::timeout(Duration::from_secs(60), t)
            .await
            .expect("drained")
            .unwrap()
            .unwrap();
    }
    assert_eq!(handled.load(SeqCst), 120);
    let peak = peak.lock().unwrap().clone();
    for m in ["a", "b", "c"] {
        let p = peak.get(m).copied().unwrap_or(0);
        assert_eq!(
            p, 2,
            "portal {m}: {p} handlers at once at most ({workers} workers)"
        );
    }
    // The limit is what bound them: the portals together ran more than 2 at once.
    assert!(peak["*"] > 2, "{peak:?}");
    assert_eq!(setup.stats().await.unwrap().processed, 120);
}

#[tokio::test(flavor = "multi_thread")]
async fn per_portal_limit_within_a_sqlite_worker() {
    let dir = tempfile::tempdir().unwrap();
    limit_across_workers(dir.path().join("q.db").to_str().unwrap(), 1).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn per_portal_limit_across_postgres_workers() {
    let Some(url) = pg("fair_workers").await else {
        return;
    };
    limit_across_workers(&url, 3).await;
}

/// A queue from before jobs named their portal: the migration reads each queued event's
/// portal from its payload, so old rows take turns and count against the limit too.
#[tokio::test(flavor = "multi_thread")]
async fn migration_backfills_the_portal_of_queued_events() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("q.db");
    {
        let c = rusqlite::Connection::open(&path).unwrap();
        for m in &b24_events::sqlite::MIGRATIONS[..2] {
            c.execute_batch(m).unwrap();
        }
        c.pragma_update(None, "user_version", 2).unwrap();
        for (i, m) in ["x", "x", "y", "y"].iter().enumerate() {
            c.execute(
                "INSERT INTO b24_jobs (key, source, name, payload, run_at, created_at) VALUES (?1, 'online', 'ONCRMLEADADD', ?2, 0, 0)",
                rusqlite::params![format!("old{i}"), json!({"auth": {"member_id": m}}).to_string()],
            )
            .unwrap();
        }
    }
    let q = Store::open(path.to_str().unwrap()).await.unwrap();
    assert_eq!(q.schema_version().await.unwrap(), 3);
    let jobs = q.claim_with("w", 10, 30.0, Some(1)).await.unwrap();
    let mut got: Vec<&str> = jobs
        .iter()
        .map(|j| j.payload["auth"]["member_id"].as_str().unwrap())
        .collect();
    got.sort();
    assert_eq!(got, ["x", "y"], "one per portal");
}
