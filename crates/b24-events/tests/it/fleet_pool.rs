//! A fleet on PostgreSQL pulling more portals at once than its connection pool holds: every
//! portal is still pulled. (Each pull lock used to hold a pooled connection for its whole round;
//! with as many rounds as pooled connections, every round then waited for a connection of its
//! own to read tokens or commit events, forever, and nothing was pulled or logged.)

use std::sync::Arc;
use std::time::Duration;

use b24_events::fleet::{FleetConfig, FleetStats, run};
use b24_events::installs::Installations;
use b24_events::listen::ServeLimits;
use b24_sandbox::{SandboxConfig, start_many};
use serde_json::json;

use crate::portals::{client_for, factory};
use crate::receiver::serve_at;

/// More than the 8 connections of the registry's and the queue's pools.
const PORTALS: usize = 20;
const PER_PORTAL: usize = 3;

#[tokio::test(flavor = "multi_thread")]
async fn fleet_pulls_more_portals_than_pooled_connections_postgres() {
    let Some(url) = crate::conformance::pg("fleet_pool").await else {
        return;
    };
    let ps = start_many(
        SandboxConfig {
            limits: false,
            ..Default::default()
        },
        PORTALS,
    )
    .await
    .unwrap();
    let rx = serve_at(
        url,
        tempfile::tempdir().unwrap(),
        &["127.0.0.1:*"],
        None,
        ServeLimits::default(),
    )
    .await;
    let reg = Installations::open(&rx.db).await.unwrap();
    for p in ps.iter() {
        assert_eq!(p.install_app(&rx.url).await.status, 200);
        let c = client_for(&reg, p, &p.info().member_id).await;
        c.call(
            "event.bind",
            json!({"event": "ONCRMLEADADD", "event_type": "offline"}),
        )
        .await
        .unwrap();
        assert_eq!(p.emit_lead_adds(PER_PORTAL), PER_PORTAL);
    }
    let store = Arc::new(b24_events::Store::open(&rx.db).await.unwrap());
    let host = Installations::open(&rx.db).await.unwrap();
    let stats = Arc::new(FleetStats::default());
    let stop = tokio_util::sync::CancellationToken::new();
    let cfg = FleetConfig {
        // Twice the pool: every round at once holds a pull lock.
        concurrency: 16,
        poll_min: Duration::from_millis(50),
        poll_max: Duration::from_secs(1),
        rescan: Duration::from_millis(100),
        ..Default::default()
    };
    let fleet = tokio::spawn(run(
        host.clone(),
        store.clone(),
        cfg,
        factory(host, &ps),
        stats.clone(),
        stop.clone(),
    ));
    let want = (PORTALS * PER_PORTAL) as u64;
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    let pulled = || stats.pulled.load(std::sync::atomic::Ordering::Relaxed);
    while pulled() < want && std::time::Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    stop.cancel();
    tokio::time::timeout(Duration::from_secs(30), fleet)
        .await
        .expect("the fleet stops when told")
        .unwrap()
        .unwrap();
    assert_eq!(pulled(), want, "every portal's events pulled");
    for p in ps.iter() {
        assert_eq!(p.stats().offline_queue_depth, 0, "every portal cleared");
        let c = stats.portal(&p.info().member_id).expect("polled");
        assert!(c.pulled as usize == PER_PORTAL, "{c:?}");
    }
    ps.shutdown().await;
}
