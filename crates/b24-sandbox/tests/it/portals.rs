//! Many portals in one process: each its own domain, member, tokens, bucket, queue and data;
//! one application (client id and secret) installed on all of them.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use b24_sandbox::{SandboxConfig, start_many};
use serde_json::json;

use crate::support::{app, hook, http};

#[tokio::test(flavor = "multi_thread")]
async fn portals_are_separate_but_share_the_application() {
    let ps = start_many(SandboxConfig::default(), 3).await.unwrap();
    assert_eq!(ps.len(), 3);
    let infos = ps.infos();
    let mut members: Vec<_> = infos.iter().map(|i| i.member_id.clone()).collect();
    members.sort();
    members.dedup();
    assert_eq!(members.len(), 3);
    for i in &infos[1..] {
        assert_eq!(i.client_id, infos[0].client_id, "one application");
        assert_eq!(i.client_secret, infos[0].client_secret);
        assert_ne!(i.domain, infos[0].domain);
        assert_ne!(i.application_token, infos[0].application_token);
        assert_ne!(i.access_token, infos[0].access_token);
    }
    // Portal 0 is what a single-portal start with the same seed gives.
    let single = b24_sandbox::start(SandboxConfig::default()).await.unwrap();
    assert_eq!(single.info().member_id, infos[0].member_id);
    assert_eq!(single.info().application_token, infos[0].application_token);
    single.shutdown().await;
    let (p0, p1, p2) = (ps.get(0).unwrap(), ps.get(1).unwrap(), ps.get(2).unwrap());
    assert!(std::ptr::eq(ps.find(&infos[1].member_id).unwrap(), p1));
    assert!(std::ptr::eq(ps.find(&infos[2].domain).unwrap(), p2));

    // A token of portal 0 means nothing on portal 1.
    let r = http()
        .post(format!("{}/rest/app.info", p1.base_url()))
        .json(&json!({"auth": infos[0].access_token}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 401);
    let (s, b) = app(p1, "app.info", json!({})).await;
    assert_eq!(s, 200);
    assert_eq!(b["result"]["CODE"], json!(infos[0].client_id));

    // Buckets are per portal: portal 1 flooded to 503, portal 2 untouched.
    let mut refused = 0;
    for _ in 0..60 {
        let (s, _) = hook(p1, "server.time", json!({})).await;
        refused += usize::from(s == 503);
    }
    assert!(refused >= 5, "portal 1's bucket (50) overflowed: {refused}");
    let (s, _) = hook(p2, "server.time", json!({})).await;
    assert_eq!(s, 200, "portal 2 has its own bucket");
    assert_eq!(p2.stats().count_503, 0);

    // Data and offline queues are per portal.
    app(
        p0,
        "event.bind",
        json!({"event": "ONCRMLEADADD", "event_type": "offline"}),
    )
    .await;
    app(
        p2,
        "event.bind",
        json!({"event": "ONCRMLEADADD", "event_type": "offline"}),
    )
    .await;
    assert_eq!(p0.emit_lead_adds(4), 4);
    assert_eq!(p0.stats().offline_queue_depth, 4);
    assert_eq!(p2.stats().offline_queue_depth, 0);
    let (_, b) = app(p2, "crm.lead.list", json!({})).await;
    assert_eq!(b["total"], json!(0), "portal 2 has no leads: {b}");
    ps.shutdown().await;
}

type Seen = Arc<Mutex<Vec<HashMap<String, String>>>>;

async fn handler() -> (Seen, String) {
    let seen: Seen = Arc::default();
    let s2 = seen.clone();
    let app = axum::Router::new().route(
        "/h",
        axum::routing::post(
            move |axum::extract::Form(f): axum::extract::Form<HashMap<String, String>>| {
                let s = s2.clone();
                async move {
                    s.lock().unwrap().push(f);
                    "ok"
                }
            },
        ),
    );
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}/h", l.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(l, app).await });
    (seen, url)
}

#[tokio::test(flavor = "multi_thread")]
async fn install_and_uninstall_drive_the_app_lifecycle() {
    let ps = start_many(SandboxConfig::default(), 2).await.unwrap();
    let p1 = ps.get(1).unwrap();
    let (seen, url) = handler().await;
    assert_eq!(p1.install_app(&url).await.status, 200);
    let install = seen.lock().unwrap()[0].clone();
    assert_eq!(install["event"], "ONAPPINSTALL");
    assert_eq!(install["auth[member_id]"], p1.info().member_id);
    assert_eq!(install["auth[domain]"], p1.info().domain);
    assert_eq!(
        install["auth[application_token]"],
        p1.info().application_token
    );
    let at = install["auth[access_token]"].clone();
    assert!(!install["auth[refresh_token]"].is_empty());
    // The install's token works on its portal (the receiver verifies with app.info).
    let r = http()
        .post(format!("{}/rest/app.info", p1.base_url()))
        .json(&json!({"auth": at}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);

    // Uninstall through the control endpoint: no tokens in the event, every token revoked.
    let r = http()
        .post(format!(
            "{}/_sandbox/uninstall?handler={url}",
            p1.base_url()
        ))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let un = seen.lock().unwrap()[1].clone();
    assert_eq!(un["event"], "ONAPPUNINSTALL");
    assert!(!un.contains_key("auth[access_token]"));
    assert_eq!(un["auth[application_token]"], p1.info().application_token);
    let r = http()
        .post(format!("{}/rest/app.info", p1.base_url()))
        .json(&json!({"auth": at}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 401, "the app is gone from the portal");
    // Portal 0 is untouched.
    let (s, _) = app(ps.get(0).unwrap(), "app.info", json!({})).await;
    assert_eq!(s, 200);
    let r = http()
        .post(format!(
            "{}/_sandbox/install?handler=file:///etc/passwd",
            p1.base_url()
        ))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 400);
    ps.shutdown().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn one_oauth_server_for_every_portal() {
    let ps = start_many(SandboxConfig::default(), 3).await.unwrap();
    let (p0, p2) = (ps.get(0).unwrap(), ps.get(2).unwrap());
    let i2 = p2.info();
    // Portal 2's refresh token exchanged at portal 0's token endpoint (as at oauth.bitrix.info).
    let r = http()
        .get(&p0.info().oauth_token_url)
        .query(&[
            ("grant_type", "refresh_token"),
            ("client_id", i2.client_id.as_str()),
            ("client_secret", i2.client_secret.as_str()),
            ("refresh_token", i2.refresh_token.as_str()),
        ])
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let b: serde_json::Value = r.json().await.unwrap();
    assert_eq!(b["member_id"], json!(i2.member_id), "{b}");
    assert_eq!(p2.stats().refreshes, 1);
    assert_eq!(p0.stats().refreshes, 0);
    let (s, _) = crate::support::app(p2, "server.time", json!({})).await;
    assert_eq!(s, 200);
    ps.shutdown().await;
}
