//! The write budget of a cluster: hosts that share `B24_STORE_URL=postgres://…` share one
//! budget per portal, checked and counted in one transaction in the database.

use std::sync::Arc;

use b24_guard::gate::{CallRequest, Gate, NoPerson, Origin, PortalSlot};
use b24_guard::sources::{CallerInputs, OperatorPaths, resolve};
use serde_json::json;

/// A fresh schema on the test server, or None (skipped) when no server was given.
async fn pg_url(test: &str) -> Option<String> {
    b24_test_support::pg_url("b24g", test).await
}

/// One host: its own operator file (budget 3) and its own guard dir, the shared database.
fn host(dir: &std::path::Path, webhook: &str, store: &str) -> Gate {
    let paths = OperatorPaths {
        system: dir.join("etc/policy.toml"),
        user: None,
        user_state: Some(dir.join("state")),
    };
    std::fs::create_dir_all(dir.join("etc")).unwrap();
    std::fs::write(&paths.system, "max_writes_per_hour = 3\n").unwrap();
    let resolved = resolve(&paths, &CallerInputs::default(), &dir.join("caller")).unwrap();
    let (webhook, store) = (webhook.to_string(), store.to_string());
    let cfg = b24::Config::from_lookup(
        &|k: &str| match k {
            "B24_WEBHOOK_URL" => Some(webhook.clone()),
            "B24_STORE_URL" => Some(store.clone()),
            "B24_RATE_LIMITER" => Some("memory".into()),
            _ => None,
        },
        dir.join("client"),
    )
    .expect("config");
    let slot = PortalSlot::new(Ok(cfg), Arc::new(tokio::sync::OnceCell::new()));
    Gate::new(resolved, slot, Origin::Cli)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn twenty_writers_on_four_hosts_share_a_budget_of_three() {
    let Some(store) = pg_url("budget").await else {
        return;
    };
    let sb = b24_sandbox::start(b24_sandbox::SandboxConfig::default())
        .await
        .unwrap();
    let tmp = tempfile::tempdir().unwrap();
    let hosts: Vec<Arc<Gate>> = (0..4)
        .map(|h| {
            Arc::new(host(
                &tmp.path().join(format!("host{h}")),
                &sb.info().webhook_url,
                &store,
            ))
        })
        .collect();
    let barrier = Arc::new(tokio::sync::Barrier::new(20));
    let mut tasks = Vec::new();
    for i in 0..20 {
        let (gate, b) = (hosts[i % 4].clone(), barrier.clone());
        tasks.push(tokio::spawn(async move {
            let req = CallRequest {
                method: "crm.lead.add".into(),
                params: json!({"fields": {"TITLE": format!("w{i}")}}),
                confirm_write: true,
                ..Default::default()
            };
            b.wait().await;
            gate.call(req, &NoPerson).await.is_ok()
        }));
    }
    let mut ok = 0;
    for t in tasks {
        ok += usize::from(t.await.unwrap());
    }
    let sent = sb.stats().methods.get("crm.lead.add").copied().unwrap_or(0);
    assert_eq!((ok, sent), (3, 3), "allowed / reached the portal");
}
