//! `ONOFFLINEEVENT` of an installed portal: recorded on its registry row, not queued, and
//! still what wakes a single-portal worker long before its next scheduled poll. A portal
//! without an installed row (a pinned token, a webhook set-up) keeps the queued notification.

use std::sync::Arc;
use std::time::{Duration, Instant};

use b24_events::Store;
use b24_events::installs::Installations;
use b24_events::listen::ServeLimits;
use b24_events::worker::{WakeWatch, WorkerConfig, WorkerStats};
use b24_sandbox::{SandboxConfig, start_many};
use serde_json::json;
use tokio_util::sync::CancellationToken;

use crate::portals::client_for;
use crate::receiver::{form, post, serve, serve_at};

async fn wake_is_recorded_not_queued(db: String, dir: tempfile::TempDir) {
    let ps = start_many(
        SandboxConfig {
            limits: false,
            ..Default::default()
        },
        1,
    )
    .await
    .unwrap();
    let p = ps.get(0).unwrap();
    let rx = serve_at(db, dir, &["127.0.0.1:*"], None, ServeLimits::default()).await;
    assert_eq!(p.install_app(&rx.url).await.status, 200);
    let reg = Installations::open(&rx.db).await.unwrap();
    let member = p.info().member_id.clone();
    let c = client_for(&reg, p, &member).await;
    c.call(
        "event.bind",
        json!({"event": "ONCRMLEADADD", "event_type": "offline"}),
    )
    .await
    .unwrap();
    c.call(
        "event.bind",
        json!({"event": "ONOFFLINEEVENT", "handler": rx.url, "options": {"minTimeout": 0}}),
    )
    .await
    .unwrap();
    let store = Arc::new(Store::open(&rx.db).await.unwrap());
    // The install event is the only queued job so far.
    while let Some(j) = store
        .claim("setup", 50, 30.0)
        .await
        .unwrap()
        .first()
        .cloned()
    {
        store.complete(&j, "setup").await.unwrap();
    }
    let processed_before = store.stats().await.unwrap().processed;

    let (handler, ran) = crate::polling::recording_handler();
    let stats = Arc::new(WorkerStats::default());
    let stop = CancellationToken::new();
    let worker = tokio::spawn(b24_events::worker::run(
        store.clone(),
        handler,
        WorkerConfig {
            pull: Some(c.clone()),
            poll_interval: Duration::from_millis(250),
            poll_max: Duration::from_secs(30),
            wake_watch: Some(WakeWatch::new(reg.clone(), member.clone())),
            ..WorkerConfig::default()
        },
        stats.clone(),
        stop.clone(),
    ));
    // Idle for 4 s: polls at 0, .25, .75, 1.75, 3.75 s; the next is 7.75 s.
    tokio::time::sleep(Duration::from_secs(4)).await;
    let woken_before = reg.woken_at(&member).await.unwrap().unwrap();
    let changed = Instant::now();
    assert_eq!(p.emit_lead_adds(1), 1);
    let deadline = changed + Duration::from_secs(3);
    let latency = loop {
        if let Some((_, at)) = ran.lock().unwrap().first() {
            break at.duration_since(changed);
        }
        assert!(
            Instant::now() < deadline,
            "the wake-up never reached the worker (stats {})",
            stats.snapshot()
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    };
    stop.cancel();
    worker.await.unwrap().unwrap();
    assert!(
        reg.woken_at(&member).await.unwrap().unwrap() > woken_before,
        "the portal's ONOFFLINEEVENT is on its registry row"
    );
    let ran = ran.lock().unwrap().clone();
    assert_eq!(
        ran.iter().map(|(n, _)| n.as_str()).collect::<Vec<_>>(),
        ["ONCRMLEADADD"],
        "only the offline event reached the handler"
    );
    assert_eq!(stats.snapshot()["wakeups"], 1);
    let q = store.stats().await.unwrap();
    assert_eq!(
        (q.ready, q.running, q.processed - processed_before),
        (0, 0, 1),
        "one job went through the queue, the lead; nothing was queued for the wake-up"
    );
    assert!(latency < Duration::from_secs(3), "{latency:?}");
    let _ = std::io::Write::write_all(
        &mut std::io::stderr(),
        format!("registry wake-up: change → handler run in {latency:?} (next scheduled poll ~3.75 s away)\n")
            .as_bytes(),
    );
    ps.shutdown().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn an_installed_portals_wake_up_is_recorded_not_queued_sqlite() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("q.db").to_str().unwrap().to_string();
    wake_is_recorded_not_queued(db, dir).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn an_installed_portals_wake_up_is_recorded_not_queued_postgres() {
    let Some(url) = crate::conformance::pg("wakeups_recorded").await else {
        return;
    };
    wake_is_recorded_not_queued(url, tempfile::tempdir().unwrap()).await;
}

/// A receiver with a pinned token has no installed row to record on: the notification is
/// queued as before, and a worker handles it as a wake-up.
#[tokio::test(flavor = "multi_thread")]
async fn a_portal_without_an_installed_row_still_gets_the_queued_wake_up() {
    let rx = serve(&[], Some("pinned-app-token"), ServeLimits::default()).await;
    let f = form(
        "ONOFFLINEEVENT",
        "member-x",
        "pinned-app-token",
        0,
        "x.bitrix24.test",
        "",
    );
    assert_eq!(post(&rx.url, f).await, 200);
    let store = Store::open(&rx.db).await.unwrap();
    let jobs = store.claim("t", 10, 30.0).await.unwrap();
    assert_eq!(
        jobs.iter().map(|j| j.name.as_str()).collect::<Vec<_>>(),
        ["ONOFFLINEEVENT"]
    );
    let reg = Installations::open(&rx.db).await.unwrap();
    assert_eq!(reg.woken_at("member-x").await.unwrap(), None);
}

/// A worker that started before its portal's install was recorded finds the row later (every
/// `FIND_EVERY`) and from then on sees its wake-ups; a wake-up of another portal does not
/// count.
#[tokio::test(flavor = "multi_thread")]
async fn a_watch_by_domain_finds_a_row_recorded_after_it_started() {
    let ps = start_many(SandboxConfig::default(), 2).await.unwrap();
    let (p, other) = (ps.get(0).unwrap(), ps.get(1).unwrap());
    let rx = serve(&["127.0.0.1:*"], None, ServeLimits::default()).await;
    let reg = Installations::open(&rx.db).await.unwrap();
    let mut w = WakeWatch::by_domain(reg.clone(), p.info().domain.clone());
    assert!(!w.woken().await);
    assert_eq!(w.member_id(), None, "nothing installed yet");
    assert_eq!(p.install_app(&rx.url).await.status, 200);
    assert_eq!(other.install_app(&rx.url).await.status, 200);
    tokio::time::sleep(Duration::from_millis(5100)).await;
    assert!(
        !w.woken().await,
        "the first look at the row only learns where it stands"
    );
    assert_eq!(w.member_id(), Some(p.info().member_id.as_str()));
    assert!(reg.wake(&other.info().member_id).await.unwrap());
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(!w.woken().await, "another portal's wake-up");
    assert!(reg.wake(&p.info().member_id).await.unwrap());
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(w.woken().await, "its own wake-up");
    ps.shutdown().await;
}
