//! Idle portals cost one `event.offline.get` per back-off period in all, however many hosts
//! pull them: the hosts share the schedule, and one that lost the race for a portal's pull
//! lock does not poll it again before it has seen the winner's finding.

use std::sync::Arc;
use std::time::Duration;

use b24_events::fleet::{FleetConfig, FleetStats, run};
use b24_events::installs::Installations;
use b24_events::listen::ServeLimits;
use b24_sandbox::{SandboxConfig, start_many};

use crate::portals::factory;
use crate::receiver::serve_at;

const PORTALS: usize = 4;
const HOSTS: usize = 4;

async fn idle_polls(db: String, dir: tempfile::TempDir) {
    let ps = start_many(
        SandboxConfig {
            limits: false,
            ..Default::default()
        },
        PORTALS,
    )
    .await
    .unwrap();
    let rx = serve_at(db, dir, &["127.0.0.1:*"], None, ServeLimits::default()).await;
    for p in ps.iter() {
        assert_eq!(p.install_app(&rx.url).await.status, 200);
    }
    let store = Arc::new(b24_events::Store::open(&rx.db).await.unwrap());
    let stop = tokio_util::sync::CancellationToken::new();
    // The back-off reaches its ceiling (400 ms) within a second; the re-read (500 ms) is
    // slower than a lock loser's retry (50 ms), as with the defaults (500 ms / 200 ms).
    let ceiling = Duration::from_millis(400);
    let cfg = FleetConfig {
        concurrency: 4,
        poll_min: Duration::from_millis(50),
        poll_max: ceiling,
        rescan: Duration::from_millis(500),
        ..Default::default()
    };
    let mut hosts = Vec::new();
    for _ in 0..HOSTS {
        let host = Installations::open(&rx.db).await.unwrap();
        hosts.push(tokio::spawn(run(
            host.clone(),
            store.clone(),
            cfg.clone(),
            factory(host, &ps),
            Arc::new(FleetStats::default()),
            stop.clone(),
        )));
    }
    tokio::time::sleep(Duration::from_secs(3)).await;
    for p in ps.iter() {
        p.reset_stats();
    }
    let window = Duration::from_secs(6);
    tokio::time::sleep(window).await;
    let requests: Vec<u64> = ps.iter().map(|p| p.stats().requests).collect();
    stop.cancel();
    for h in hosts {
        h.await.unwrap().unwrap();
    }
    // One poll per ceiling in all is 15 in the window; a poll takes a little time and the
    // periods drift, so allow half as many again. Two polls per period (each host that lost
    // the lock polling once more) would be about 30.
    let once = (window.as_secs_f64() / ceiling.as_secs_f64()).round() as u64;
    eprintln!(
        "requests per idle portal in {window:?}: {requests:?} (one poll per ceiling: {once})"
    );
    for (i, n) in requests.iter().enumerate() {
        assert!(
            *n <= once * 3 / 2,
            "portal {i}: {n} requests in {window:?} by {HOSTS} hosts; one poll per {ceiling:?} is {once} ({requests:?})"
        );
        assert!(*n >= once / 3, "portal {i} is still polled: {requests:?}");
    }
    ps.shutdown().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn idle_portals_are_polled_once_per_backoff_by_all_hosts_sqlite() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("q.db").to_str().unwrap().to_string();
    idle_polls(db, dir).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn idle_portals_are_polled_once_per_backoff_by_all_hosts_postgres() {
    let Some(url) = crate::conformance::pg("idle_polls").await else {
        return;
    };
    idle_polls(url, tempfile::tempdir().unwrap()).await;
}
