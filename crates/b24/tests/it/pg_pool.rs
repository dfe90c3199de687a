//! The PostgreSQL pools: the per-process budget (`B24_PG_POOL_SIZE`) and its checks, pool sizes
//! as seen by the server (`pg_stat_activity`, by `application_name`), migrations started by
//! several pools at once, and the bounded token-refresh lock.
//!
//! The PostgreSQL ones run when `B24_TEST_PG_URL` is set; a plain `cargo test` skips them.

use std::sync::Arc;
use std::time::{Duration, Instant};

use b24::auth::TokenStore;
use b24::pg::{MigrationLock, PgRole, PgStore, PoolBudget, PoolSpec};
use tokio::sync::Semaphore;

/// A fresh schema whose connections carry `application_name = app`.
async fn pg_url(test: &str, app: &str) -> Option<String> {
    let url = b24_test_support::pg_url("b24p", test).await?;
    Some(format!("{url}&application_name={app}"))
}

fn app_name(test: &str) -> String {
    format!("t{}_{test}", std::process::id())
}

/// Connections the server has open under `name`.
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

fn spec(role: PgRole, max_size: usize) -> PoolSpec {
    PoolSpec {
        role,
        max_size,
        wait_timeout: Duration::from_secs(10),
    }
}

#[test]
fn pg_budget_refuses_bad_sizes() {
    for bad in [
        "0",
        "5",
        "-1",
        "",
        "  ",
        "abc",
        "12.5",
        "1001",
        "99999999999999999999",
    ] {
        match PoolBudget::parse(bad) {
            Err(b24::Error::Config(msg)) => assert!(msg.contains("B24_PG_POOL_SIZE"), "{msg}"),
            other => panic!("{bad:?} accepted: {other:?}"),
        }
    }
    assert_eq!(PoolBudget::parse(" 24 ").unwrap().total(), 24);
    assert_eq!(PoolBudget::default().total(), PoolBudget::DEFAULT);
}

#[test]
fn pg_budget_shares_add_up_to_the_total() {
    let roles = [
        PgRole::Client,
        PgRole::TokenLock,
        PgRole::Guard,
        PgRole::Queue,
        PgRole::Inbox,
    ];
    for t in PoolBudget::MIN..=PoolBudget::MAX {
        let b = PoolBudget::new(t).unwrap();
        let shares: Vec<usize> = roles.iter().map(|r| b.share(*r)).collect();
        assert!(shares.iter().all(|s| *s >= 1), "{t}: {shares:?}");
        // + 1: the queue's LISTEN session.
        assert_eq!(
            shares.iter().sum::<usize>() + 1,
            t as usize,
            "{t}: {shares:?}"
        );
    }
    // The default: 4 workers (queue, inbox, client, lock sessions) and a receiver (queue,
    // inbox) stay well under PostgreSQL's default max_connections of 100.
    let d = PoolBudget::default();
    let queue = d.share(PgRole::Queue) + 1;
    let worker =
        queue + d.share(PgRole::Inbox) + d.share(PgRole::Client) + d.share(PgRole::TokenLock);
    let receiver = queue + d.share(PgRole::Inbox);
    assert!(4 * worker + receiver <= 80, "{worker} {receiver}");
}

#[tokio::test]
async fn pg_pool_size_is_honoured() {
    let app = app_name("size");
    let Some(url) = pg_url("size", &app).await else {
        return;
    };
    let p = b24::pg::open_pool(
        &url,
        &spec(PgRole::Client, 3),
        MigrationLock::Key(1),
        |tx| b24::pg::batch(tx, "CREATE TABLE IF NOT EXISTS t (x int)"),
    )
    .await
    .unwrap();
    let name = format!("{app}:b24-client");
    let mut tasks = Vec::new();
    for _ in 0..12 {
        let pool = p.pool.clone();
        tasks.push(tokio::spawn(async move {
            let c = pool.get().await.unwrap();
            c.execute("SELECT pg_sleep(0.3)", &[]).await.unwrap();
        }));
    }
    tokio::time::sleep(Duration::from_millis(150)).await;
    let busy = count(&name).await;
    for t in tasks {
        t.await.unwrap();
    }
    assert_eq!(busy, 3, "12 callers on a pool of 3");
    assert_eq!(count(&name).await, 3);
    assert_eq!(p.pool.status().max_size, 3);
    drop(p);
}

#[tokio::test]
async fn pg_concurrent_migrations_from_many_pools() {
    let app = app_name("migr");
    let Some(url) = pg_url("migr", &app).await else {
        return;
    };
    let mut tasks = Vec::new();
    for _ in 0..8 {
        let url = url.clone();
        tasks.push(tokio::spawn(async move {
            PgStore::connect_with(&url, &spec(PgRole::Client, 1), Arc::new(Semaphore::new(1))).await
        }));
    }
    let mut stores = Vec::new();
    for t in tasks {
        stores.push(
            t.await
                .unwrap()
                .expect("every concurrent start migrates or waits"),
        );
    }
    // The schema is there and usable from each.
    for s in &stores {
        s.token_store("p.example").load().await.unwrap();
    }
    assert!(count(&format!("{app}:b24-client")).await <= 8);
}

#[tokio::test]
async fn pg_token_lock_waits_are_bounded() {
    let app = app_name("lock");
    let Some(url) = pg_url("lock", &app).await else {
        return;
    };
    let locks = format!("{app}:b24-token-lock");
    let a = PgStore::connect_with(&url, &spec(PgRole::Client, 1), Arc::new(Semaphore::new(2)))
        .await
        .unwrap();
    let b = PgStore::connect_with(&url, &spec(PgRole::Client, 1), Arc::new(Semaphore::new(2)))
        .await
        .unwrap()
        .with_lock_wait(Duration::from_millis(400));
    // Another "process" (store a) holds portal p's refresh lock.
    let held = a.token_store("p.example").lock().await.unwrap();
    let t = Instant::now();
    let err = match b.token_store("p.example").lock().await {
        Err(e) => e,
        Ok(_) => panic!("the lock is held elsewhere"),
    };
    assert!(matches!(err, b24::Error::State { .. }), "{err:?}");
    assert!(err.to_string().contains("b24-token:p.example"), "{err}");
    assert!(t.elapsed() < Duration::from_secs(5), "{:?}", t.elapsed());
    // The waiter held no session while it waited: only the holder's is there.
    assert_eq!(count(&locks).await, 1);
    drop(held);
    // Once let go, the waiter gets it.
    let got = b.token_store("p.example").lock().await.unwrap();
    drop(got);

    // A store with one lock session: a second portal's refresh waits for the session (no
    // new connection) and gives up in time.
    let c = PgStore::connect_with(&url, &spec(PgRole::Client, 1), Arc::new(Semaphore::new(1)))
        .await
        .unwrap()
        .with_lock_wait(Duration::from_millis(300));
    let q = c.token_store("q.example").lock().await.unwrap();
    let before = count(&locks).await;
    let err = match c.token_store("r.example").lock().await {
        Err(e) => e,
        Ok(_) => panic!("the only session is busy"),
    };
    assert!(matches!(err, b24::Error::State { .. }), "{err:?}");
    assert_eq!(count(&locks).await, before);
    drop(q);
    c.token_store("r.example").lock().await.unwrap();
}

/// Portals waiting behind another process's refresh do not starve this process's other
/// refreshes: with one lock session and a one-connection pool, a waiter on portal p (held
/// elsewhere) leaves room for portal q's refresh, which gets its lock at once.
#[tokio::test(flavor = "multi_thread")]
async fn pg_token_lock_waiters_do_not_starve_other_portals() {
    let app = app_name("starve");
    let Some(url) = pg_url("starve", &app).await else {
        return;
    };
    let other = PgStore::connect_with(&url, &spec(PgRole::Client, 1), Arc::new(Semaphore::new(1)))
        .await
        .unwrap();
    let held = other.token_store("p.example").lock().await.unwrap();
    let me = PgStore::connect_with(&url, &spec(PgRole::Client, 1), Arc::new(Semaphore::new(1)))
        .await
        .unwrap()
        .with_lock_wait(Duration::from_secs(3));
    let waiters: Vec<_> = (0..4)
        .map(|_| {
            let s = me.token_store("p.example");
            tokio::spawn(async move { s.lock().await.map(drop) })
        })
        .collect();
    tokio::time::sleep(Duration::from_millis(100)).await;
    let t = Instant::now();
    let q = me.token_store("q.example").lock().await.unwrap();
    assert!(t.elapsed() < Duration::from_secs(2), "{:?}", t.elapsed());
    // The pool still serves ordinary work meanwhile.
    me.token_store("q.example").load().await.unwrap();
    drop(q);
    drop(held);
    for w in waiters {
        w.await
            .unwrap()
            .expect("each waiter gets p once it is free");
    }
    // Every holder's session is gone (closing is asynchronous: allow it a moment).
    let mut left = count(&format!("{app}:b24-token-lock")).await;
    for _ in 0..20 {
        if left == 0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
        left = count(&format!("{app}:b24-token-lock")).await;
    }
    assert_eq!(left, 0);
}
