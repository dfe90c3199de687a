//! The same assertions against SQLite and PostgreSQL.

use std::sync::Arc;

use b24_events::queue::RetryRule;
use b24_events::{NewEvent, Store};
use serde_json::json;

fn ev(i: usize) -> NewEvent {
    NewEvent {
        key: format!("k{i}"),
        source: "offline".into(),
        name: "ONCRMLEADADD".into(),
        payload: json!({"ID": i.to_string()}),
    }
}

/// PostgreSQL URL for this test (a fresh schema), or None (skipped) when not configured.
pub async fn pg(name: &str) -> Option<String> {
    b24_test_support::pg_url("t", name).await
}

pub async fn backends(name: &str) -> Vec<(Store, tempfile::TempDir)> {
    let dir = tempfile::tempdir().unwrap();
    let mut v = vec![(
        Store::open(dir.path().join("q.db").to_str().unwrap())
            .await
            .unwrap(),
        dir,
    )];
    if let Some(url) = pg(name).await {
        v.push((
            Store::open(&url).await.unwrap(),
            tempfile::tempdir().unwrap(),
        ));
    }
    v
}

#[tokio::test(flavor = "multi_thread")]
async fn enqueue_dedupes_and_complete_records_the_key() {
    for (q, _d) in backends("dedupe").await {
        assert_eq!(
            q.enqueue(&[ev(1), ev(2), ev(1)]).await.unwrap(),
            2,
            "{}",
            q.backend()
        );
        assert_eq!(q.enqueue(&[ev(2)]).await.unwrap(), 0);
        let jobs = q.claim("w1", 10, 30.0).await.unwrap();
        assert_eq!(jobs.len(), 2);
        assert!(
            q.claim("w2", 10, 30.0).await.unwrap().is_empty(),
            "claimed jobs are not handed out twice"
        );
        assert!(q.complete(&jobs[0], "w1").await.unwrap());
        assert!(q.is_processed("k1").await.unwrap() || q.is_processed("k2").await.unwrap());
        // A processed key is never queued again.
        assert_eq!(
            q.enqueue(
                &[jobs[0].clone()]
                    .iter()
                    .map(|j| NewEvent {
                        key: j.key.clone(),
                        source: "offline".into(),
                        name: j.name.clone(),
                        payload: j.payload.clone()
                    })
                    .collect::<Vec<_>>()
            )
            .await
            .unwrap(),
            0
        );
        // Another worker cannot complete a lease it does not hold.
        assert!(!q.complete(&jobs[1], "w2").await.unwrap());
        let s = q.stats().await.unwrap();
        assert_eq!(
            (s.ready, s.running, s.processed),
            (0, 1, 2),
            "{}",
            q.backend()
        );
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn failures_back_off_then_dead_letter_and_replay() {
    for (q, _d) in backends("dlq").await {
        q.enqueue(&[ev(7)]).await.unwrap();
        let rule = RetryRule {
            max_attempts: 2,
            base_secs: 0.0,
            max_secs: 0.0,
        };
        let j = q.claim("w", 1, 30.0).await.unwrap().remove(0);
        assert!(!q.fail(&j, "w", "boom 1", rule).await.unwrap());
        let j = q.claim("w", 1, 30.0).await.unwrap().remove(0);
        assert_eq!(j.attempts, 2);
        assert!(
            q.fail(&j, "w", "boom 2", rule).await.unwrap(),
            "dead after the last attempt"
        );
        assert!(q.claim("w", 1, 30.0).await.unwrap().is_empty());
        let dl = q.dlq_list(10).await.unwrap();
        assert_eq!(dl.len(), 1);
        assert_eq!((dl[0].last_error.as_str(), dl[0].attempts), ("boom 2", 2));
        assert_eq!(
            q.dlq_get(dl[0].id).await.unwrap().unwrap().payload,
            json!({"ID": "7"})
        );
        assert_eq!(q.dlq_replay(None).await.unwrap(), 1);
        let j = q.claim("w", 1, 30.0).await.unwrap().remove(0);
        assert_eq!(j.attempts, 1, "replay starts fresh");
        assert!(q.complete(&j, "w").await.unwrap());
        assert_eq!(q.stats().await.unwrap().dead, 0);
        // Backoff: a failed job is not due immediately.
        q.enqueue(&[ev(8)]).await.unwrap();
        let j = q.claim("w", 1, 30.0).await.unwrap().remove(0);
        q.fail(
            &j,
            "w",
            "later",
            RetryRule {
                max_attempts: 5,
                base_secs: 60.0,
                max_secs: 60.0,
            },
        )
        .await
        .unwrap();
        assert!(q.claim("w", 1, 30.0).await.unwrap().is_empty());
        assert_eq!(q.stats().await.unwrap().ready, 1);
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn expired_leases_are_reaped_and_released_ones_do_not_count() {
    for (q, _d) in backends("lease").await {
        q.enqueue(&[ev(1), ev(2)]).await.unwrap();
        let jobs = q.claim("dead-worker", 2, 0.01).await.unwrap();
        tokio::time::sleep(std::time::Duration::from_millis(30)).await;
        assert_eq!(q.reap().await.unwrap(), 2);
        let jobs2 = q.claim("w", 2, 30.0).await.unwrap();
        assert_eq!(jobs2.len(), 2);
        assert!(
            !q.complete(&jobs[0], "dead-worker").await.unwrap(),
            "the old lease holder lost it"
        );
        q.release(&jobs2[0], "w").await.unwrap();
        let again = q.claim("w", 1, 30.0).await.unwrap();
        assert_eq!(
            again[0].attempts, jobs2[0].attempts,
            "a released lease does not cost an attempt"
        );
        q.set_app_token("m1", Some("tok")).await.unwrap();
        assert_eq!(q.app_token("m1").await.unwrap().as_deref(), Some("tok"));
        q.set_app_token("m1", None).await.unwrap();
        assert_eq!(q.app_token("m1").await.unwrap(), None);
        q.enqueue_offline(&[ev(9)], "p1").await.unwrap();
        assert_eq!(q.pending_processes().await.unwrap(), vec!["p1".to_string()]);
        q.forget_process("p1").await.unwrap();
        assert!(q.pending_processes().await.unwrap().is_empty());
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn concurrent_claimers_never_share_a_job() {
    for (q, _d) in backends("concurrent").await {
        let q = Arc::new(q);
        q.enqueue(&(0..400).map(ev).collect::<Vec<_>>())
            .await
            .unwrap();
        let mut tasks = Vec::new();
        for w in 0..6 {
            let q = q.clone();
            tasks.push(tokio::spawn(async move {
                let id = format!("w{w}");
                let mut keys = Vec::new();
                loop {
                    let jobs = q.claim(&id, 7, 30.0).await.unwrap();
                    if jobs.is_empty() {
                        break;
                    }
                    for j in jobs {
                        assert!(q.complete(&j, &id).await.unwrap());
                        keys.push(j.key);
                    }
                }
                keys
            }));
        }
        let mut all = Vec::new();
        for t in tasks {
            all.extend(t.await.unwrap());
        }
        let n = all.len();
        all.sort();
        all.dedup();
        assert_eq!((n, all.len()), (400, 400), "{}", q.backend());
        assert_eq!(q.stats().await.unwrap().processed, 400);
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn leases_renew_processed_keys_prune_and_migrations_are_versioned() {
    for (q, _d) in backends("renew_prune").await {
        q.enqueue(&[ev(1), ev(2)]).await.unwrap();
        let jobs = q.claim("w", 2, 0.3).await.unwrap();
        for _ in 0..4 {
            tokio::time::sleep(std::time::Duration::from_millis(150)).await;
            assert_eq!(
                q.renew(&jobs, "w", 0.3).await.unwrap(),
                vec![true, true],
                "{}",
                q.backend()
            );
            assert_eq!(q.reap().await.unwrap(), 0, "renewed leases are not reaped");
        }
        assert_eq!(
            q.renew(&jobs, "other", 0.3).await.unwrap(),
            vec![false, false],
            "only the holder renews"
        );
        tokio::time::sleep(std::time::Duration::from_millis(400)).await;
        assert_eq!(q.reap().await.unwrap(), 2, "unrenewed leases expire");
        assert_eq!(q.renew(&jobs, "w", 0.3).await.unwrap(), vec![false, false]);
        // Retention: keys older than the window go, younger ones stay.
        let jobs = q.claim("w", 2, 30.0).await.unwrap();
        q.complete_many(&jobs, "w").await.unwrap();
        assert_eq!(q.prune_processed(3600.0).await.unwrap(), 0);
        assert!(q.is_processed("k1").await.unwrap());
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        assert_eq!(q.prune_processed(0.01).await.unwrap(), 2, "{}", q.backend());
        assert!(!q.is_processed("k1").await.unwrap());
        assert_eq!(
            q.enqueue(&[ev(1)]).await.unwrap(),
            1,
            "a forgotten key queues again"
        );
        assert_eq!(q.schema_version().await.unwrap(), 3, "{}", q.backend());
    }
    // Re-opening an up-to-date store changes nothing; a store from a newer b24 is refused.
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("q.db");
    let p = path.to_str().unwrap();
    Store::open(p).await.unwrap();
    assert_eq!(
        Store::open(p)
            .await
            .unwrap()
            .schema_version()
            .await
            .unwrap(),
        3
    );
    rusqlite::Connection::open(&path)
        .unwrap()
        .pragma_update(None, "user_version", 99)
        .unwrap();
    assert!(
        Store::open(p).await.is_err(),
        "fail closed on an unknown schema"
    );
    if let Some(url) = pg("versions").await {
        let (a, b) = tokio::join!(Store::open(&url), Store::open(&url));
        assert_eq!(a.unwrap().schema_version().await.unwrap(), 3);
        assert_eq!(b.unwrap().schema_version().await.unwrap(), 3);
    }
}
