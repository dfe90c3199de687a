//! Events queued for a portal that has since removed the app are not handled: they go to the
//! dead letters with the reason `uninstalled`, and nothing reaches that portal — while the
//! other portal's events are handled as usual (SQLite and PostgreSQL).

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use b24_events::handler::Handler;
use b24_events::installs::Installations;
use b24_events::listen::ServeLimits;
use b24_events::worker::{WorkerConfig, WorkerStats};
use b24_sandbox::{SandboxConfig, start_many};
use serde_json::json;
use tokio_util::sync::CancellationToken;

use crate::portals::client_for;
use crate::receiver::{form, post, serve_at};

async fn uninstalled_portal_gets_nothing(db: String, dir: tempfile::TempDir) {
    let ps = start_many(SandboxConfig::default(), 2).await.unwrap();
    let (p0, p1) = (ps.get(0).unwrap(), ps.get(1).unwrap());
    let rx = serve_at(db, dir, &["127.0.0.1:*"], None, ServeLimits::default()).await;
    assert_eq!(p0.install_app(&rx.url).await.status, 200);
    assert_eq!(p1.install_app(&rx.url).await.status, 200);
    let reg = Installations::open(&rx.db).await.unwrap();
    let (m0, m1) = (p0.info().member_id.clone(), p1.info().member_id.clone());
    // The handler acts on each event's portal with that portal's client (made while both
    // were installed: a handler that kept one would still reach the portal).
    let clients = Arc::new(HashMap::from([
        (m0.clone(), client_for(&reg, p0, &m0).await),
        (m1.clone(), client_for(&reg, p1, &m1).await),
    ]));
    for (p, m) in [(p0, &m0), (p1, &m1)] {
        for i in 1..=3 {
            let f = form(
                "ONCRMLEADADD",
                m,
                &p.info().application_token,
                i,
                &p.info().domain,
                "",
            );
            assert_eq!(post(&rx.url, f).await, 200);
        }
    }
    // Portal 1 removes the app while its events are still queued.
    assert_eq!(p1.uninstall_app(&rx.url).await.status, 200);
    p0.reset_stats();
    p1.reset_stats();

    let seen: Arc<Mutex<Vec<(String, String)>>> = Arc::default();
    let (c2, s2) = (clients.clone(), seen.clone());
    let handler = Handler::in_process(move |job| {
        let member = job.payload["auth"]["member_id"]
            .as_str()
            .unwrap_or("")
            .to_string();
        let (clients, seen, name) = (c2.clone(), s2.clone(), job.name.clone());
        let id = job.payload["data"]["FIELDS"]["ID"].clone();
        async move {
            seen.lock().unwrap().push((member.clone(), name.clone()));
            if name == "ONCRMLEADADD" {
                let c = clients.get(&member).ok_or("unknown portal")?;
                c.call("crm.lead.list", json!({"filter": {"ID": id}}))
                    .await
                    .map_err(|e| e.to_string())?;
            }
            Ok(())
        }
    });
    let store = Arc::new(rx.store().await);
    let cfg = WorkerConfig {
        id: "w".into(),
        once: true,
        retry: b24_events::queue::RetryRule {
            max_attempts: 1,
            base_secs: 0.0,
            max_secs: 0.0,
        },
        ..WorkerConfig::default()
    };
    let stats = Arc::new(WorkerStats::default());
    b24_events::worker::run(
        store.clone(),
        handler,
        cfg,
        stats.clone(),
        CancellationToken::new(),
    )
    .await
    .unwrap();

    assert!(
        p1.request_log().is_empty(),
        "nothing reached the uninstalled portal: {:?}",
        p1.request_log()
            .iter()
            .map(|r| r.method.clone())
            .collect::<Vec<_>>()
    );
    let to_p0: Vec<String> = p0.request_log().into_iter().map(|r| r.method).collect();
    assert_eq!(
        to_p0.iter().filter(|m| *m == "crm.lead.list").count(),
        3,
        "{to_p0:?}"
    );
    let seen = seen.lock().unwrap().clone();
    let of_p1: Vec<&str> = seen
        .iter()
        .filter(|(m, _)| *m == m1)
        .map(|(_, n)| n.as_str())
        .collect();
    assert_eq!(
        of_p1,
        ["ONAPPUNINSTALL"],
        "only the uninstall notification of portal 1 is handled"
    );
    assert_eq!(seen.iter().filter(|(m, _)| *m == m0).count(), 4, "{seen:?}");
    let dead = store.dlq_list(100).await.unwrap();
    assert_eq!(
        dead.len(),
        4,
        "three leads and the install of portal 1: {:?}",
        dead.iter()
            .map(|d| (
                d.name.clone(),
                d.last_error.clone(),
                d.payload["auth"]["member_id"].clone()
            ))
            .collect::<Vec<_>>()
    );
    for d in &dead {
        assert_eq!(d.last_error, b24_events::queue::UNINSTALLED);
        assert_eq!(d.payload["auth"]["member_id"], json!(m1));
    }
    assert_eq!(stats.failed.load(std::sync::atomic::Ordering::Relaxed), 0);
    // A replay does not bring them to the portal either: still uninstalled.
    assert_eq!(store.dlq_replay(None).await.unwrap(), 4);
    assert!(store.claim("w2", 10, 30.0).await.unwrap().is_empty());
    assert_eq!(store.dlq_list(100).await.unwrap().len(), 4);
    ps.shutdown().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn events_of_an_uninstalled_portal_are_dead_lettered_sqlite() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("q.db").to_str().unwrap().to_string();
    uninstalled_portal_gets_nothing(db, dir).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn events_of_an_uninstalled_portal_are_dead_lettered_postgres() {
    let Some(url) = crate::conformance::pg("uninstalled").await else {
        return;
    };
    uninstalled_portal_gets_nothing(url, tempfile::tempdir().unwrap()).await;
}
