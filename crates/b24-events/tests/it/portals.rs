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

pub(crate) async fn client_for(reg: &Installations, sb: &Sandbox, member: &str) -> b24::Client {
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

/// The app's side of every sandbox portal, for the fleet's client factory.
pub(crate) fn factory(
    reg: Installations,
    ps: &b24_sandbox::Portals,
) -> b24_events::fleet::ClientFactory {
    let infos: std::collections::HashMap<String, b24_sandbox::StartInfo> = ps
        .infos()
        .into_iter()
        .map(|i| (i.member_id.clone(), i))
        .collect();
    let infos = Arc::new(infos);
    Arc::new(move |inst: b24_events::installs::Installation| {
        let (reg, infos) = (reg.clone(), infos.clone());
        Box::pin(async move {
            let i = infos
                .get(&inst.member_id)
                .ok_or_else(|| b24_events::EventsError::Config("unknown portal".into()))?;
            let store = Arc::new(reg.token_store(&inst.member_id));
            let pair = store.load().await?.ok_or_else(|| {
                b24_events::EventsError::Config("installed portal without tokens".into())
            })?;
            Ok(b24::ClientBuilder::oauth(
                &i.base_url,
                &i.client_id,
                &i.client_secret,
                &pair.access_token,
                &pair.refresh_token,
            )?
            .token_url(&i.oauth_token_url)?
            .token_store(store)
            .build()
            .await?)
        })
    })
}

/// Two fleet hosts pull six portals, one flooded: every event is queued exactly once, the
/// quiet portals' events are handled long before the flood drains, and the pull locks kept
/// the hosts apart.
async fn fleet_run(db: String, dir: tempfile::TempDir) {
    use b24_events::fleet::{FleetConfig, FleetStats, run};
    let ps = start_many(
        SandboxConfig {
            limits: false,
            ..Default::default()
        },
        6,
    )
    .await
    .unwrap();
    let rx = serve_at(db, dir, &["127.0.0.1:*"], None, ServeLimits::default()).await;
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
        c.call(
            "event.bind",
            json!({"event": "ONOFFLINEEVENT", "handler": rx.url, "options": {"minTimeout": 0}}),
        )
        .await
        .unwrap();
    }
    let store = Arc::new(b24_events::Store::open(&rx.db).await.unwrap());
    // Drain the install events first: only offline events count below.
    while let Some(j) = store
        .claim("setup", 50, 30.0)
        .await
        .unwrap()
        .first()
        .cloned()
    {
        store.complete(&j, "setup").await.unwrap();
    }
    let flooded = ps.get(0).unwrap().info().member_id.clone();
    assert_eq!(ps.get(0).unwrap().emit_lead_adds(1500), 1500);
    for p in ps.iter().skip(1) {
        assert_eq!(p.emit_lead_adds(5), 5);
    }
    let stop = tokio_util::sync::CancellationToken::new();
    let cfg = FleetConfig {
        concurrency: 4,
        per_portal_cap: 100,
        poll_min: Duration::from_millis(50),
        poll_max: Duration::from_secs(2),
        rescan: Duration::from_millis(100),
        ..Default::default()
    };
    let mut hosts = Vec::new();
    let mut host_stats = Vec::new();
    for _ in 0..2 {
        let host = Installations::open(&rx.db).await.unwrap();
        let stats = Arc::new(FleetStats::default());
        host_stats.push(stats.clone());
        hosts.push(tokio::spawn(run(
            host.clone(),
            store.clone(),
            cfg.clone(),
            factory(host, &ps),
            stats,
            stop.clone(),
        )));
    }
    // The handler: one consumer, first come first served from the shared queue.
    let mut seen = std::collections::HashSet::new();
    let (mut flood_done, mut quiet_done, mut flood_when_quiet_done) = (0usize, 0usize, None);
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    while flood_done + quiet_done < 1525 && std::time::Instant::now() < deadline {
        let jobs = store.claim("h", 20, 30.0).await.unwrap();
        if jobs.is_empty() {
            tokio::time::sleep(Duration::from_millis(5)).await;
            continue;
        }
        for j in jobs {
            assert!(store.complete(&j, "h").await.unwrap());
            if j.name != "ONCRMLEADADD" {
                continue;
            }
            assert!(seen.insert(j.key.clone()), "queued once: {}", j.key);
            if j.payload["auth"]["member_id"] == json!(flooded) {
                flood_done += 1;
            } else {
                quiet_done += 1;
                if quiet_done == 25 {
                    flood_when_quiet_done = Some(flood_done);
                }
            }
        }
    }
    stop.cancel();
    for h in hosts {
        h.await.unwrap().unwrap();
    }
    assert_eq!((flood_done, quiet_done), (1500, 25));
    let at = flood_when_quiet_done.unwrap();
    eprintln!("fleet: the 25 quiet events were all handled after {at} of the 1500 flooded ones");
    assert!(
        at <= 400,
        "quiet portals were served while the flood drained: all 25 done after {at} of 1500"
    );
    for p in ps.iter() {
        assert_eq!(p.stats().offline_queue_depth, 0, "every portal cleared");
    }
    let locked: u64 = host_stats
        .iter()
        .flat_map(|s| ps.iter().filter_map(|p| s.portal(&p.info().member_id)))
        .map(|c| c.locked_elsewhere)
        .sum();
    let pulled: u64 = host_stats
        .iter()
        .map(|s| s.pulled.load(std::sync::atomic::Ordering::Relaxed))
        .sum();
    assert_eq!(pulled, 1525, "each event pulled by exactly one host");
    eprintln!("fleet: {locked} rounds found a portal locked by the other host");
    assert!(
        host_stats[0]
            .prometheus()
            .contains(&format!("member_id=\"{flooded}\""))
    );
    ps.shutdown().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn fleet_pulls_every_portal_fairly_sqlite() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("q.db").to_str().unwrap().to_string();
    fleet_run(db, dir).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn fleet_pulls_every_portal_fairly_postgres() {
    let Some(url) = crate::conformance::pg("fleet_fair").await else {
        return;
    };
    fleet_run(url, tempfile::tempdir().unwrap()).await;
}

/// Two hosts never hold one portal's pull lock at once; a host that dies (its session
/// dropped without releasing) frees it.
async fn pull_lock_excludes(url: String) {
    let (h1, h2) = (
        Installations::open(&url).await.unwrap(),
        Installations::open(&url).await.unwrap(),
    );
    let a = h1.try_lock_pull("m1").await.unwrap().expect("free");
    assert!(
        h2.try_lock_pull("m1").await.unwrap().is_none(),
        "held by h1"
    );
    let b = h2
        .try_lock_pull("m2")
        .await
        .unwrap()
        .expect("another portal is free");
    a.release().await;
    let a2 = h2.try_lock_pull("m1").await.unwrap().expect("released");
    assert!(h1.try_lock_pull("m1").await.unwrap().is_none());
    drop(a2); // h2 "dies" without releasing
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert!(h1.try_lock_pull("m1").await.unwrap().is_some());
    b.release().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn two_hosts_never_pull_one_portal_at_once() {
    let dir = tempfile::tempdir().unwrap();
    pull_lock_excludes(dir.path().join("q.db").to_str().unwrap().to_string()).await;
    if let Some(url) = crate::conformance::pg("pull_lock").await {
        pull_lock_excludes(url).await;
    }
}
