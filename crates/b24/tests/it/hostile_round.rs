//! Hostile round on the PostgreSQL pools: a refresh-lock try cancelled half-way, and
//! `B24_PG_POOL_SIZE` spellings that are not plainly a number.

use std::sync::Arc;
use std::time::Duration;

use b24::pg::{MigrationLock, PgRole, PoolBudget, PoolSpec};
use tokio::sync::Semaphore;

/// `+8`, `0008`, unicode digits, exponents and the like are not "a whole number from 6 to
/// 1000" as an operator would write it: refused, naming the variable, never read as something
/// else. A number too large for any integer is quoted as given, not as another number.
#[test]
fn pool_size_spellings_other_than_plain_digits_are_refused() {
    for bad in [
        "+8",
        "+16",
        "-0",
        "1e3",
        "١٦",
        "１６",
        "16\u{0}",
        "1_000",
        "0x10",
        "16 16",
        "\u{200b}16",
    ] {
        match PoolBudget::parse(bad) {
            Err(b24::Error::Config(msg)) => assert!(msg.contains("B24_PG_POOL_SIZE"), "{msg}"),
            other => panic!("{bad:?} accepted: {other:?}"),
        }
    }
    match PoolBudget::parse("4294967297") {
        Err(b24::Error::Config(msg)) => {
            assert!(
                msg.contains("4294967297") && !msg.contains("4294967295"),
                "{msg}"
            )
        }
        other => panic!("accepted: {other:?}"),
    }
    assert_eq!(PoolBudget::parse("16").unwrap().total(), 16);
    assert_eq!(PoolBudget::parse(" 1000\n").unwrap().total(), 1000);
}

/// A `session_lock` cancelled while its `pg_try_advisory_lock` is in flight (a caller's
/// timeout, an MCP request cancelled) must not leave the lock held by a connection that goes
/// back to the pool: a pooled session never ends, so every other process's refresh of that
/// portal would wait for a lock nobody releases.
#[tokio::test(flavor = "current_thread")]
async fn pg_cancelled_lock_try_leaves_no_lock_on_a_pooled_connection() {
    let Some(url) = b24_test_support::pg_url("b24h", "cancel_lock").await else {
        return;
    };
    let spec = PoolSpec {
        role: PgRole::Client,
        max_size: 1,
        wait_timeout: Duration::from_secs(10),
    };
    let p = b24::pg::open_pool(&url, &spec, MigrationLock::Key(0x6231_6868), |_| {
        Box::pin(async { Ok(()) })
    })
    .await
    .unwrap();
    let sessions = Arc::new(Semaphore::new(2));
    let key = format!("b24-hostile-cancel-{}", std::process::id());
    let mut leaks = 0;
    let mut cancelled = 0;
    for k in 0..400u32 {
        let lock = b24::pg::session_lock(&p.pool, &sessions, &key, Duration::from_secs(5));
        tokio::select! {
            biased;
            r = lock => drop(r.unwrap()),
            _ = async { for _ in 0..(k % 40) { tokio::task::yield_now().await; } } => {
                cancelled += 1;
            }
        }
        // The pool's only connection: does it hold an advisory lock now?
        let c = p.pool.get().await.unwrap();
        let held: i64 = c
            .query_one(
                "SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND pid = pg_backend_pid()",
                &[],
            )
            .await
            .unwrap()
            .get(0);
        if held > 0 {
            leaks += 1;
            // Release it so the next round starts clean.
            c.execute("SELECT pg_advisory_unlock_all()", &[])
                .await
                .unwrap();
        }
    }
    assert!(cancelled > 0, "some tries were cancelled");
    assert_eq!(
        leaks, 0,
        "{leaks} of {cancelled} cancelled tries left the refresh lock on a pooled connection"
    );
}

/// A process stopped half-way through its migration (here: a session holding the store's
/// migration lock and doing nothing) must not hold every process that starts after it for
/// good: opening the pool gives up after the spec's wait with an error naming the lock, and
/// succeeds once the lock is free.
#[tokio::test(flavor = "multi_thread")]
async fn pg_migration_lock_wait_is_bounded() {
    let Some(url) = b24_test_support::pg_url("b24h", "stuck_migration").await else {
        return;
    };
    let key: i64 = 0x6231_0000 + i64::from(std::process::id() % 0xffff);
    let (stuck, conn) = tokio_postgres::connect(&url, tokio_postgres::NoTls)
        .await
        .unwrap();
    let h = tokio::spawn(conn);
    stuck
        .execute("SELECT pg_advisory_lock($1)", &[&key])
        .await
        .unwrap();
    let spec = PoolSpec {
        role: PgRole::Client,
        max_size: 1,
        wait_timeout: Duration::from_millis(800),
    };
    let open = || {
        b24::pg::open_pool(&url, &spec, MigrationLock::Key(key), |tx| {
            b24::pg::batch(tx, "CREATE TABLE IF NOT EXISTS hostile_t (x INT)")
        })
    };
    let t0 = std::time::Instant::now();
    let r = tokio::time::timeout(Duration::from_secs(20), open()).await;
    let waited = t0.elapsed();
    match r {
        Ok(Err(b24::Error::State { context, .. })) => {
            assert!(context.contains("migration lock"), "{context}")
        }
        Ok(other) => panic!("opened past a held migration lock: {other:?}"),
        Err(_) => panic!("still waiting for the migration lock after 20 s"),
    }
    assert!(waited < Duration::from_secs(10), "{waited:?}");
    drop(stuck);
    let _ = h.await;
    let p = open().await.expect("opens once the lock is free");
    // The server's lock_timeout is back for the pool's connections.
    let c = p.pool.get().await.unwrap();
    let lt: String = c.query_one("SHOW lock_timeout", &[]).await.unwrap().get(0);
    assert_eq!(
        lt, "0",
        "the pool's sessions keep the server's lock_timeout"
    );
}

/// When the server refuses a connection (too many clients, a database that is not there), the
/// error says what the server said, also to callers that keep only the message: before, it
/// read "Error occurred while creating a new object: db error" and nothing else.
#[tokio::test(flavor = "multi_thread")]
async fn pg_connection_refusals_carry_the_servers_words() {
    let Ok(base) = std::env::var("B24_TEST_PG_URL") else {
        return;
    };
    let url = match base.rsplit_once('/') {
        Some((head, _)) => format!("{head}/b24_no_such_database_{}", std::process::id()),
        None => return,
    };
    let spec = PoolSpec {
        role: PgRole::Client,
        max_size: 1,
        wait_timeout: Duration::from_secs(5),
    };
    let r = b24::pg::open_pool(&url, &spec, MigrationLock::Key(1), |_| {
        Box::pin(async { Ok(()) })
    })
    .await;
    let msg = match r {
        Err(e) => e.to_string(),
        Ok(_) => panic!("opened a pool on a database that does not exist"),
    };
    assert!(msg.contains("does not exist"), "{msg}");
}
