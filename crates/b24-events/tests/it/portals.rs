//! One app on many portals: installs recorded per member id after the portal confirms them,
//! uninstall ends a portal's work, and OAuth refreshes single-flight per portal.

use std::sync::Arc;
use std::time::Duration;

use b24::auth::TokenStore;
use b24_events::installs::Installations;
use b24_events::listen::ServeLimits;
use b24_sandbox::{Sandbox, SandboxConfig, start_many};
use serde_json::json;

use crate::receiver::{form, post, serve, serve_at};

async fn client_for(reg: &Installations, sb: &Sandbox, member: &str) -> b24::Client {
    let store = Arc::new(reg.token_store(member));
    let pair = store
        .load()
        .await
        .unwrap()
        .expect("an installed portal has tokens");
    let i = sb.info();
    b24::ClientBuilder::oauth(
        sb.base_url(),
        &i.client_id,
        &i.client_secret,
        &pair.access_token,
        &pair.refresh_token,
    )
    .unwrap()
    .token_url(&i.oauth_token_url)
    .unwrap()
    .token_store(store)
    .build()
    .await
    .unwrap()
}

#[tokio::test(flavor = "multi_thread")]
async fn installs_are_verified_per_portal_and_forgeries_refused() {
    let ps = start_many(SandboxConfig::default(), 3).await.unwrap();
    let (p0, p1, p2) = (ps.get(0).unwrap(), ps.get(1).unwrap(), ps.get(2).unwrap());
    let rx = serve(&["127.0.0.1:*"], None, ServeLimits::default()).await;
    assert_eq!(p0.install_app(&rx.url).await.status, 200);
    assert_eq!(p1.install_app(&rx.url).await.status, 200);
    let reg = Installations::open(&rx.db).await.unwrap();
    let all = reg.list().await.unwrap();
    assert_eq!(all.len(), 2, "{all:?}");
    for p in [p0, p1] {
        let row = reg.find(&p.info().member_id).await.unwrap().unwrap();
        assert_eq!(row.domain, p.info().domain);
        assert!(row.is_installed());
        assert!(row.pair.is_some(), "the install's OAuth pair is kept");
        let by_domain = reg.find(&p.info().domain).await.unwrap().unwrap();
        assert_eq!(by_domain.member_id, p.info().member_id);
    }
    // Forged installs for portal 2: a made-up token, then a genuine token of portal 0 (valid
    // only there: portal 2 does not know it).
    let i2 = p2.info();
    let at0 = reg
        .find(&p0.info().member_id)
        .await
        .unwrap()
        .unwrap()
        .pair
        .unwrap()
        .access_token;
    for at in ["made-up", at0.as_str()] {
        let f = form("ONAPPINSTALL", &i2.member_id, "forged", 0, &i2.domain, at);
        assert_eq!(post(&rx.url, f).await, 401);
    }
    assert!(reg.find(&i2.member_id).await.unwrap().is_none());
    assert_eq!(reg.list().await.unwrap().len(), 2);
    // Each installed portal is reachable with its own recorded tokens.
    for p in [p0, p1] {
        let c = client_for(&reg, p, &p.info().member_id).await;
        let r = c.call("app.info", json!({})).await.unwrap();
        assert_eq!(r.result["INSTALLED"], json!(true));
    }
    assert_eq!(
        p2.stats().requests,
        2,
        "only the two app.info checks reached portal 2"
    );
    ps.shutdown().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn uninstall_ends_the_portals_work_and_keeps_its_trail() {
    let ps = start_many(SandboxConfig::default(), 2).await.unwrap();
    let (p0, p1) = (ps.get(0).unwrap(), ps.get(1).unwrap());
    let rx = serve(&["127.0.0.1:*"], None, ServeLimits::default()).await;
    p0.install_app(&rx.url).await;
    p1.install_app(&rx.url).await;
    let reg = Installations::open(&rx.db).await.unwrap();
    let m1 = p1.info().member_id.clone();
    let c1 = client_for(&reg, p1, &m1).await;
    let store1 = reg.token_store(&m1);
    // A forged uninstall (wrong application token) changes nothing.
    let f = form("ONAPPUNINSTALL", &m1, "forged", 0, &p1.info().domain, "");
    assert_eq!(post(&rx.url, f).await, 401);
    assert!(store1.load().await.unwrap().is_some());
    assert_eq!(p1.uninstall_app(&rx.url).await.status, 200);
    let row = reg.find(&m1).await.unwrap().unwrap();
    assert_eq!(row.state, "uninstalled");
    assert!(row.pair.is_none(), "tokens removed");
    assert!(row.uninstalled_at.is_some());
    assert!(store1.load().await.unwrap().is_none());
    // A refresh that was in flight cannot write tokens back.
    let pair = reg
        .find(&p0.info().member_id)
        .await
        .unwrap()
        .unwrap()
        .pair
        .unwrap();
    assert!(store1.save(&pair).await.is_err());
    assert!(reg.find(&m1).await.unwrap().unwrap().pair.is_none());
    // Its events are refused from now on; its work stops (the client has nothing to refresh
    // with once the portal refuses the old token).
    let f = form(
        "ONCRMLEADADD",
        &m1,
        &p1.info().application_token,
        5,
        &p1.info().domain,
        "",
    );
    assert_eq!(post(&rx.url, f).await, 401);
    p1.expire_access_tokens();
    let before = p1.stats().refreshes;
    assert!(c1.call("server.time", json!({})).await.is_err());
    assert_eq!(
        p1.stats().refreshes,
        before,
        "no refresh after the uninstall"
    );
    // The trail: install and uninstall are both in the queue; portal 0 is untouched.
    let q = b24_events::Store::open(&rx.db).await.unwrap();
    assert_eq!(
        q.stats().await.unwrap().ready,
        3,
        "two installs and one uninstall, nothing else"
    );
    let c0 = client_for(&reg, p0, &p0.info().member_id).await;
    assert!(c0.call("server.time", json!({})).await.is_ok());
    ps.shutdown().await;
}

/// Portal A's refresh is stuck (its lock held by another process); portal B refreshes anyway.
async fn refresh_does_not_block(db: String, dir: tempfile::TempDir) {
    let ps = start_many(SandboxConfig::default(), 2).await.unwrap();
    let (pa, pb) = (ps.get(0).unwrap(), ps.get(1).unwrap());
    let rx = serve_at(db, dir, &["127.0.0.1:*"], None, ServeLimits::default()).await;
    pa.install_app(&rx.url).await;
    pb.install_app(&rx.url).await;
    let reg = Installations::open(&rx.db).await.unwrap();
    let (ma, mb) = (pa.info().member_id.clone(), pb.info().member_id.clone());
    let ca = client_for(&reg, pa, &ma).await;
    let cb = client_for(&reg, pb, &mb).await;
    // Another host holds portal A's refresh lock (its own registry connection).
    let other_host = Installations::open(&rx.db).await.unwrap();
    let held = other_host.token_store(&ma).lock().await.unwrap();
    pa.expire_access_tokens();
    pb.expire_access_tokens();
    let a = tokio::spawn(async move { ca.call("server.time", json!({})).await.map(|_| ()) });
    let t = std::time::Instant::now();
    tokio::time::timeout(Duration::from_secs(10), cb.call("server.time", json!({})))
        .await
        .expect("portal B is not held up by portal A's refresh")
        .unwrap();
    assert_eq!(pb.stats().refreshes, 1);
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(!a.is_finished(), "portal A waits for its own lock");
    assert_eq!(pa.stats().refreshes, 0);
    drop(held);
    tokio::time::timeout(Duration::from_secs(10), a)
        .await
        .expect("portal A proceeds once its lock is free")
        .unwrap()
        .unwrap();
    assert_eq!(pa.stats().refreshes, 1);
    assert!(t.elapsed() < Duration::from_secs(20));
    ps.shutdown().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_refresh_on_one_portal_does_not_block_another_sqlite() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("q.db").to_str().unwrap().to_string();
    refresh_does_not_block(db, dir).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_refresh_on_one_portal_does_not_block_another_postgres() {
    let Some(url) = crate::conformance::pg("portals_refresh").await else {
        return;
    };
    refresh_does_not_block(url, tempfile::tempdir().unwrap()).await;
}

/// Hosts sharing PostgreSQL: N clients on N "hosts" for one portal, all seeing an expired
/// token at once, rotate the portal's refresh token exactly once.
#[tokio::test(flavor = "multi_thread")]
async fn one_refresh_per_portal_across_hosts_postgres() {
    let Some(url) = crate::conformance::pg("portals_one_refresh").await else {
        return;
    };
    let ps = start_many(SandboxConfig::default(), 2).await.unwrap();
    let rx = serve_at(
        url.clone(),
        tempfile::tempdir().unwrap(),
        &["127.0.0.1:*"],
        None,
        ServeLimits::default(),
    )
    .await;
    for p in ps.iter() {
        p.install_app(&rx.url).await;
    }
    let mut clients = Vec::new();
    for p in ps.iter() {
        for _ in 0..4 {
            let host = Installations::open(&url).await.unwrap();
            clients.push(client_for(&host, p, &p.info().member_id).await);
        }
    }
    for p in ps.iter() {
        p.expire_access_tokens();
    }
    let calls = clients
        .into_iter()
        .map(|c| tokio::spawn(async move { c.call("server.time", json!({})).await.map(|_| ()) }));
    for r in futures::future::join_all(calls).await {
        r.unwrap().unwrap();
    }
    for p in ps.iter() {
        assert_eq!(p.stats().refreshes, 1, "one rotation per portal");
    }
    ps.shutdown().await;
}
