//! The queue's and the receiver inbox's PostgreSQL pools: sizes as the server sees them
//! (`pg_stat_activity`, by `application_name`) and migrations started by several processes at
//! once.

use std::time::Duration;

use b24::pg::{PgRole, PoolBudget, PoolSpec};
use b24_events::inbox::Inbox;
use b24_events::{NewEvent, Store};

async fn pg_url(test: &str, app: &str) -> Option<String> {
    let url = b24_test_support::pg_url("b24e", test).await?;
    Some(format!("{url}&application_name={app}"))
}

async fn count(name: &str) -> i64 {
    let base = std::env::var("B24_TEST_PG_URL").unwrap();
    let (c, conn) = tokio_postgres::connect(&base, tokio_postgres::NoTls)
        .await
        .unwrap();
    let h = tokio::spawn(conn);
    let n: i64 = c
        .query_one(
            "SELECT count(*) FROM pg_stat_activity WHERE application_name = $1",
            &[&name],
        )
        .await
        .unwrap()
        .get(0);
    drop(c);
    let _ = h.await;
    n
}

/// A receiver and workers starting together on an empty database: every queue and inbox
/// migrates (or waits for the one migrating) and none fails.
#[tokio::test(flavor = "multi_thread")]
async fn pg_queue_and_inbox_migrate_concurrently() {
    let app = format!("e{}_migr", std::process::id());
    let Some(url) = pg_url("migr", &app).await else {
        return;
    };
    let mut tasks = Vec::new();
    for _ in 0..5 {
        let u = url.clone();
        tasks.push(tokio::spawn(async move { Store::open(&u).await.map(drop) }));
        let u = url.clone();
        tasks.push(tokio::spawn(async move { Inbox::open(&u).await.map(drop) }));
    }
    for t in tasks {
        t.await.unwrap().expect("concurrent start");
    }
    let q = Store::open(&url).await.unwrap();
    assert_eq!(q.stats().await.unwrap().ready, 0);
}

/// An inbox with an explicit pool never opens more than it; the queue, with the default
/// budget, stays within its share (its pool and its LISTEN session) however many callers.
#[tokio::test(flavor = "multi_thread")]
async fn pg_pool_sizes_are_honoured() {
    let app = format!("e{}_size", std::process::id());
    let Some(url) = pg_url("size", &app).await else {
        return;
    };
    let spec = PoolSpec {
        role: PgRole::Inbox,
        max_size: 2,
        wait_timeout: Duration::from_secs(10),
    };
    let inbox = Inbox::open_postgres(&url, &spec).await.unwrap();
    let Inbox::Postgres(pool) = &inbox else {
        panic!("a PostgreSQL inbox")
    };
    let tasks: Vec<_> = (0..10)
        .map(|_| {
            let pool = pool.clone();
            tokio::spawn(async move {
                let c = pool.get().await.unwrap();
                c.execute("SELECT pg_sleep(0.3)", &[]).await.unwrap();
            })
        })
        .collect();
    tokio::time::sleep(Duration::from_millis(150)).await;
    let busy = count(&format!("{app}:b24-inbox")).await;
    for t in tasks {
        t.await.unwrap();
    }
    assert_eq!(busy, 2, "10 callers on an inbox pool of 2");

    let q = std::sync::Arc::new(Store::open(&url).await.unwrap());
    let tasks: Vec<_> = (0..40)
        .map(|i| {
            let q = q.clone();
            tokio::spawn(async move {
                let ev = NewEvent {
                    key: format!("k{i}"),
                    source: "test".into(),
                    name: "ONCRMDEALADD".into(),
                    payload: serde_json::json!({"i": i}),
                };
                q.enqueue(&[ev]).await.unwrap();
                q.stats().await.unwrap();
            })
        })
        .collect();
    for t in tasks {
        t.await.unwrap();
    }
    let queue = count(&format!("{app}:b24-queue")).await;
    let share = PoolBudget::default().share(PgRole::Queue) as i64 + 1;
    assert!(
        (2..=share).contains(&queue),
        "{queue} queue connections, share {share}"
    );
    assert_eq!(q.stats().await.unwrap().ready, 40);
}
