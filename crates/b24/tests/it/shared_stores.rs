//! Shared stores: one rate budget (the same checks on SQLite and PostgreSQL) and one OAuth pair
//! shared by clients that have nothing else in common (separate pools, as separate hosts would
//! have).
//!
//! The PostgreSQL ones run when `B24_TEST_PG_URL` is set (`.ci/run` sets it and `B24_REQUIRE_PG=1`); a plain
//! `cargo test` says they were skipped.

use std::collections::HashMap;
use std::sync::Arc;

use b24::config::RateLimits;
use std::time::Instant;

use b24::limiter::{Clock, Limiter, RateStore, SqliteStore, SystemClock};
use b24::pg::PgStore;
use b24::{Client, Config};
use b24_sandbox::SandboxConfig;
use serde_json::json;

/// A fresh schema on the test server, or None (skipped) when no server was given.
async fn pg_url(test: &str) -> Option<String> {
    b24_test_support::pg_url("b24c", test).await
}

/// The portal's counter (+1 a request, drains at `rate`); returns the highest level reached.
fn portal_level_peak(times: &[f64], rate: f64) -> f64 {
    let (mut level, mut last, mut peak) = (0.0f64, times[0], 0.0f64);
    for &t in times {
        level = (level - (t - last) * rate).max(0.0) + 1.0;
        last = t;
        peak = peak.max(level);
    }
    peak
}

/// The same checks for every shared rate store: `hosts` are separate connections to one
/// store, `late` is one more opened afterwards. `db_clock`: the store reads the time itself
/// (PostgreSQL's `clock_timestamp()`), so a send is placed at when its reservation returned
/// plus its wait; otherwise every limiter gets one frozen clock and a wait is exactly its send
/// time after the first, whatever the machine's load does to when the tasks run (with the wall
/// clock, a task delayed between its reservation and reading the time made its send look later
/// than it was: a loaded machine saw a SQLite peak of 50.6 that no portal would have seen).
async fn hosts_share_one_bucket(
    hosts: Vec<Box<dyn RateStore>>,
    late: Box<dyn RateStore>,
    db_clock: bool,
) {
    let t0 = SystemClock.now();
    let clock = || -> Box<dyn Clock> {
        if db_clock {
            Box::new(SystemClock)
        } else {
            Box::new(Frozen(t0))
        }
    };
    let limiters: Vec<Arc<Limiter>> = hosts
        .into_iter()
        .map(|s| Arc::new(Limiter::new(s, RateLimits::STANDARD, clock())))
        .collect();
    // 150 reservations at once from three "hosts": each learns when it may send. The limiter
    // would sleep until then; we record the send time instead of waiting 50 s.
    let origin = Instant::now();
    let mut tasks = Vec::new();
    for i in 0..150 {
        let l = limiters[i % limiters.len()].clone();
        tasks.push(tokio::spawn(async move {
            let wait = l_reserve(&l).await;
            if db_clock {
                origin.elapsed().as_secs_f64() + wait
            } else {
                wait
            }
        }));
    }
    let mut sends = Vec::new();
    for t in tasks {
        sends.push(t.await.unwrap());
    }
    sends.sort_by(|a, b| a.partial_cmp(b).unwrap());
    // The 51st slot is 0.5 s after the first: everything within 0.25 s went in the burst.
    let immediate = sends.iter().filter(|s| **s < sends[0] + 0.25).count();
    assert!(
        (48..=50).contains(&immediate),
        "the burst of 50 is shared, not 50 per host: {immediate} went at once"
    );
    let peak = portal_level_peak(&sends, 2.0);
    assert!(
        peak <= 50.05,
        "the shared model let the bucket reach {peak:.2}"
    );
    // 100 beyond the burst drain at 2/s: the last goes out ~50 s after the first.
    let span = sends[149] - sends[0];
    assert!((span - 50.0).abs() < 1.0, "span {span:.2}");
    // A 503 seen by one host fills the bucket for all of them.
    let other = Limiter::new(late, RateLimits::STANDARD, clock());
    other.fill("other.portal").await.unwrap();
    let level = limiters[0].level("other.portal").await.unwrap();
    assert!((level - 50.0).abs() < 0.1, "level after a 503: {level}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn three_hosts_share_one_bucket_in_postgres() {
    let Some(url) = pg_url("rate").await else {
        return;
    };
    let mut hosts: Vec<Box<dyn RateStore>> = Vec::new();
    for _ in 0..3 {
        hosts.push(Box::new(PgStore::connect(&url).await.unwrap().rate_store()));
    }
    let late = Box::new(PgStore::connect(&url).await.unwrap().rate_store());
    hosts_share_one_bucket(hosts, late, true).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn three_processes_share_one_bucket_in_sqlite() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("limiter.db");
    let hosts: Vec<Box<dyn RateStore>> = (0..3)
        .map(|_| Box::new(SqliteStore::open(&path).unwrap()) as Box<dyn RateStore>)
        .collect();
    hosts_share_one_bucket(hosts, Box::new(SqliteStore::open(&path).unwrap()), false).await;
}

/// Reserve without sleeping: the store's answer is the wait.
/// A clock that stands still.
#[derive(Clone, Copy)]
struct Frozen(f64);

impl Clock for Frozen {
    fn now(&self) -> f64 {
        self.0
    }
}

async fn l_reserve(l: &Limiter) -> f64 {
    l.reserve_only("cluster.portal")
        .await
        .unwrap()
        .as_secs_f64()
}

fn oauth_config(sb: &b24_sandbox::Sandbox, url: &str, state: &std::path::Path) -> Config {
    let i = sb.info();
    let vars: HashMap<&str, String> = [
        ("B24_AUTH_MODE", "oauth".to_string()),
        ("B24_DOMAIN", i.base_url.clone()),
        ("B24_CLIENT_ID", i.client_id.clone()),
        ("B24_CLIENT_SECRET", i.client_secret.clone()),
        ("B24_ACCESS_TOKEN", i.access_token.clone()),
        ("B24_REFRESH_TOKEN", i.refresh_token.clone()),
        ("B24_OAUTH_TOKEN_URL", i.oauth_token_url.clone()),
        ("B24_STORE_URL", url.to_string()),
    ]
    .into_iter()
    .collect();
    Config::from_lookup(&|k| vars.get(k).cloned(), state.to_path_buf()).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn eight_hosts_expire_at_once_and_refresh_once() {
    let Some(url) = pg_url("tokens").await else {
        return;
    };
    let sb = b24_sandbox::start(SandboxConfig::default()).await.unwrap();
    let mut clients = Vec::new();
    for _ in 0..8 {
        // Separate state dirs: no file lock is shared, only the database.
        let dir = tempfile::tempdir().unwrap();
        let cfg = oauth_config(&sb, &url, dir.path());
        assert_eq!(cfg.token_backend, b24::config::TokenBackend::Postgres);
        clients.push((Client::new(cfg).await.unwrap(), dir));
    }
    clients[0].0.call("profile", json!({})).await.unwrap();
    sb.expire_access_tokens();
    let mut tasks = Vec::new();
    for (c, _) in &clients {
        let c = c.clone();
        tasks.push(tokio::spawn(
            async move { c.call("profile", json!({})).await },
        ));
    }
    for t in tasks {
        t.await
            .unwrap()
            .expect("every host got through after the refresh");
    }
    assert_eq!(sb.stats().refreshes, 1, "{:?}", sb.stats());
    // A host that starts later takes the rotated pair from the database, not the stale env.
    let dir = tempfile::tempdir().unwrap();
    let cfg = oauth_config(&sb, &url, dir.path());
    let token_file = cfg.token_file();
    let late = Client::new(cfg).await.unwrap();
    late.call("profile", json!({})).await.unwrap();
    assert_eq!(sb.stats().refreshes, 1);
    for (c, d) in &clients {
        assert!(
            !c.config().token_file().exists() && d.path().exists(),
            "no token file is written when the pair lives in PostgreSQL"
        );
    }
    assert!(!token_file.exists());
}

/// A `tat` row far in the future, infinite or NaN (a clock that jumped, a hand edit) reads as a
/// full bucket: the wait stays within a full bucket plus the longest believable queue.
#[tokio::test]
async fn corrupt_postgres_rate_rows_give_bounded_waits() {
    let Some(url) = pg_url("corrupt").await else {
        return;
    };
    let store = PgStore::connect(&url).await.unwrap();
    let l = Limiter::new(
        Box::new(store.rate_store()),
        RateLimits::STANDARD,
        Box::new(SystemClock),
    );
    l.reserve_only("p").await.unwrap(); // creates the table row
    let g = b24::limiter::Gcra::new(RateLimits::STANDARD);
    let most = g.capacity * g.t + b24::limiter::MAX_QUEUE_SECS + g.t;
    let (client, conn) = tokio_postgres::connect(&url, tokio_postgres::NoTls)
        .await
        .unwrap();
    tokio::spawn(conn);
    for tat in [
        "'Infinity'",
        "'NaN'",
        "1e300",
        "extract(epoch from now()) + 1e9",
    ] {
        client
            .execute(
                &format!("UPDATE b24_rate_limit SET tat = {tat} WHERE portal = 'p'"),
                &[],
            )
            .await
            .unwrap();
        let w = l.reserve_only("p").await.unwrap().as_secs_f64();
        assert!(w <= most + 0.5, "tat {tat}: wait {w}");
        l.fill("p").await.unwrap();
        let level = l.level("p").await.unwrap();
        assert!(level.is_finite(), "tat {tat}: level {level}");
    }
}
