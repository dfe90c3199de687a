//! The online receiver: verified events are committed before 200; nothing else is stored.
//! Installs and token rotations are confirmed by the portal (a loopback stand-in here).

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use axum::extract::{Form, State};
use b24_events::Store;
use b24_events::inbox::Inbox;
use b24_events::listen::ServeLimits;
use b24_events::receiver::{ReceiverConfig, ReceiverOptions};
use b24_events::trust::TrustConfig;
use serde_json::json;
use tokio_util::sync::CancellationToken;

/// A stand-in portal answering `app.info` for the access tokens it issued.
#[derive(Clone, Default)]
pub struct Portal {
    /// access token → member_id named in the answer (empty: the answer names none, as on
    /// Bitrix24).
    pub tokens: Arc<Mutex<HashMap<String, String>>>,
    pub calls: Arc<Mutex<usize>>,
}

impl Portal {
    pub async fn start() -> (Portal, String) {
        let p = Portal::default();
        let app = axum::Router::new()
            .route("/rest/app.info", axum::routing::post(app_info))
            .with_state(p.clone());
        let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let host = l.local_addr().unwrap().to_string();
        tokio::spawn(async move { axum::serve(l, app).await });
        (p, host)
    }

    pub fn issue(&self, token: &str, member: &str) {
        self.tokens
            .lock()
            .unwrap()
            .insert(token.into(), member.into());
    }

    pub fn calls(&self) -> usize {
        *self.calls.lock().unwrap()
    }
}

async fn app_info(
    State(p): State<Portal>,
    Form(f): Form<HashMap<String, String>>,
) -> (axum::http::StatusCode, axum::Json<serde_json::Value>) {
    *p.calls.lock().unwrap() += 1;
    let member = p
        .tokens
        .lock()
        .unwrap()
        .get(f.get("auth").map(String::as_str).unwrap_or(""))
        .cloned();
    match member {
        Some(m) => {
            let mut r = json!({"ID": 1, "CODE": "local.app", "VERSION": 1, "STATUS": "L", "INSTALLED": true});
            if !m.is_empty() {
                r["member_id"] = json!(m);
            }
            (axum::http::StatusCode::OK, axum::Json(json!({"result": r})))
        }
        None => (
            axum::http::StatusCode::UNAUTHORIZED,
            axum::Json(json!({"error": "invalid_token"})),
        ),
    }
}

pub struct Rx {
    pub url: String,
    pub db: String,
    pub _dir: tempfile::TempDir,
    pub stop: CancellationToken,
}

impl Drop for Rx {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}

impl Rx {
    pub async fn store(&self) -> Store {
        Store::open(&self.db).await.unwrap()
    }
    pub async fn inbox(&self) -> Inbox {
        Inbox::open(&self.db).await.unwrap()
    }
}

/// A receiver on the hardened listener, trusting `approved` portals.
pub async fn serve(approved: &[&str], pinned: Option<&str>, lim: ServeLimits) -> Rx {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("q.db").to_str().unwrap().to_string();
    serve_at(db, dir, approved, pinned, lim).await
}

/// The same on a given store URL (SQLite path or PostgreSQL).
pub async fn serve_at(
    db: String,
    dir: tempfile::TempDir,
    approved: &[&str],
    pinned: Option<&str>,
    lim: ServeLimits,
) -> Rx {
    let app = b24_events::receiver::open(
        &db,
        ReceiverConfig {
            max_body: 64 * 1024,
            pinned_token: pinned.map(str::to_string),
        },
        ReceiverOptions {
            trust: TrustConfig {
                portals: approved.iter().map(|p| p.parse().unwrap()).collect(),
                loopback_http: true,
                ..Default::default()
            },
            ..Default::default()
        },
    )
    .await
    .unwrap();
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    let stop = CancellationToken::new();
    tokio::spawn(b24_events::listen::serve(l, app, lim, stop.clone()));
    Rx {
        url: format!("http://{addr}/"),
        db,
        _dir: dir,
        stop,
    }
}

pub fn form(event: &str, member: &str, token: &str, id: usize, domain: &str, at: &str) -> String {
    format!(
        "event={event}&data%5BFIELDS%5D%5BID%5D={id}&ts=1700000000&auth%5Bdomain%5D={domain}&auth%5Bmember_id%5D={member}&auth%5Bapplication_token%5D={token}&auth%5Baccess_token%5D={at}"
    )
}

pub async fn post(url: &str, body: impl Into<reqwest::Body>) -> u16 {
    // reqwest has no TLS provider of its own in this workspace: install ring first.
    b24::tls::install_default_provider();
    reqwest::Client::new()
        .post(url)
        .header("content-type", "application/x-www-form-urlencoded")
        .body(body)
        .send()
        .await
        .unwrap()
        .status()
        .as_u16()
}

#[tokio::test(flavor = "multi_thread")]
async fn tokens_are_learned_checked_and_rotated() {
    let (portal, host) = Portal::start().await;
    portal.issue("at-1", "");
    let rx = serve(&[&host], None, ServeLimits::default()).await;
    let url = &rx.url;
    let f = |ev: &str, tok: &str, id: usize| form(ev, "m1", tok, id, &host, "at-1");
    // Unknown portal: only an install can introduce a token.
    assert_eq!(post(url, f("ONCRMLEADADD", "tok1", 1)).await, 401);
    assert_eq!(post(url, f("ONAPPINSTALL", "tok1", 0)).await, 200);
    assert_eq!(portal.calls(), 1, "the install was confirmed by the portal");
    assert_eq!(post(url, f("ONCRMLEADADD", "tok1", 1)).await, 200);
    assert_eq!(post(url, f("ONCRMLEADADD", "forged", 2)).await, 401);
    assert_eq!(
        post(
            url,
            form("ONAPPINSTALL", "m1", "attacker", 0, &host, "made-up")
        )
        .await,
        401,
        "a re-install must match or be confirmed by the portal"
    );
    assert_eq!(post(url, f("ONAPPUPDATE", "tok2", 0)).await, 200);
    assert_eq!(
        post(url, f("ONCRMLEADADD", "tok1", 3)).await,
        401,
        "the old token is gone"
    );
    assert_eq!(post(url, f("ONCRMLEADADD", "tok2", 3)).await, 200);
    assert_eq!(post(url, "event=ONCRMLEADADD&data%5B=1").await, 400);
    assert_eq!(post(url, "no-auth=1").await, 400);
    assert_eq!(post(url, "a=%zz").await, 400);
    assert_eq!(
        post(url, f("ONCRMLEADADD", "tok2", 4) + &"&x=".repeat(30_000)).await,
        413
    );
    // A byte-identical replay is stored once; a distinct delivery with the same data and
    // second (another handler id) is stored too.
    assert_eq!(post(url, f("ONCRMLEADADD", "tok2", 3)).await, 200);
    let other = f("ONCRMLEADADD", "tok2", 3) + "&event_handler_id=9";
    assert_eq!(post(url, other).await, 200);
    let q = rx.store().await;
    let s = q.stats().await.unwrap();
    assert_eq!(
        s.ready, 5,
        "install, add 1, update, add 3 (its replay is not stored), add 3 by handler 9: {s:?}"
    );
    for j in &q.claim("t", 10, 10.0).await.unwrap() {
        assert_eq!(j.payload["auth"]["access_token"], "[redacted]");
        assert_eq!(j.payload["auth"]["application_token"], "[redacted]");
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn forged_installs_are_refused_and_store_nothing() {
    let (portal, host) = Portal::start().await;
    let (evil, evil_host) = Portal::start().await;
    portal.issue("at-real", "");
    evil.issue("at-evil", "");
    let rx = serve(
        &[&host, &format!("m9@{evil_host}")],
        None,
        ServeLimits::default(),
    )
    .await;
    let url = &rx.url;
    // A portal the operator never approved: refused without calling anybody.
    assert_eq!(
        post(url, form("ONAPPINSTALL", "m1", "t", 0, "evil.example", "x")).await,
        401
    );
    // An approved portal that does not know the access token.
    assert_eq!(
        post(url, form("ONAPPINSTALL", "m1", "t", 0, &host, "made-up")).await,
        401
    );
    assert_eq!(portal.calls(), 1);
    // Approved only as m9: cannot install as m1, even with a token valid there.
    assert_eq!(
        post(
            url,
            form("ONAPPINSTALL", "m1", "t", 0, &evil_host, "at-evil")
        )
        .await,
        401
    );
    // The portal answers with another member_id.
    portal.issue("at-named", "m-other");
    assert_eq!(
        post(url, form("ONAPPINSTALL", "m1", "t", 0, &host, "at-named")).await,
        401
    );
    // A portal already recorded for m1 cannot install as m2.
    assert_eq!(
        post(url, form("ONAPPINSTALL", "m1", "t1", 0, &host, "at-real")).await,
        200
    );
    assert_eq!(
        post(url, form("ONAPPINSTALL", "m2", "t2", 0, &host, "at-real")).await,
        401
    );
    let q = rx.store().await;
    assert_eq!(q.app_token("m2").await.unwrap(), None);
    assert_eq!(q.app_token("m1").await.unwrap().as_deref(), Some("t1"));
    assert_eq!(
        q.stats().await.unwrap().ready,
        1,
        "only the genuine install"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn forged_update_cannot_replace_a_token_and_genuine_update_can() {
    let (portal, host) = Portal::start().await;
    let (evil, evil_host) = Portal::start().await;
    portal.issue("at-real", "");
    evil.issue("at-evil", "");
    let rx = serve(&[&host, &evil_host], None, ServeLimits::default()).await;
    let url = &rx.url;
    assert_eq!(
        post(url, form("ONAPPINSTALL", "m1", "t1", 0, &host, "at-real")).await,
        200
    );
    // Forged: a new token with an access token the portal does not know…
    assert_eq!(
        post(
            url,
            form("ONAPPUPDATE", "m1", "forged", 1, &host, "made-up")
        )
        .await,
        401
    );
    // …or naming another (even approved) portal where the forger holds a valid token: the
    // check goes to the portal m1 was verified on.
    assert_eq!(
        post(
            url,
            form("ONAPPUPDATE", "m1", "forged", 2, &evil_host, "at-evil")
        )
        .await,
        401
    );
    assert_eq!(evil.calls(), 0);
    let q = rx.store().await;
    assert_eq!(q.app_token("m1").await.unwrap().as_deref(), Some("t1"));
    assert_eq!(
        post(url, form("ONCRMLEADADD", "m1", "t1", 3, &host, "")).await,
        200,
        "the genuine token still works"
    );
    // Genuine: presenting the current token needs no confirmation.
    let calls = portal.calls();
    assert_eq!(
        post(url, form("ONAPPUPDATE", "m1", "t1", 4, &host, "")).await,
        200
    );
    assert_eq!(portal.calls(), calls);
    // Genuine rotation: confirmed by m1's portal.
    assert_eq!(
        post(url, form("ONAPPUPDATE", "m1", "t2", 5, &host, "at-real")).await,
        200
    );
    assert_eq!(q.app_token("m1").await.unwrap().as_deref(), Some("t2"));
    assert_eq!(
        post(url, form("ONCRMLEADADD", "m1", "t1", 6, &host, "")).await,
        401
    );
    // A re-install whose uninstall never arrived: confirmed by m1's portal too.
    assert_eq!(
        post(url, form("ONAPPINSTALL", "m1", "t3", 7, &host, "at-real")).await,
        200
    );
    assert_eq!(q.app_token("m1").await.unwrap().as_deref(), Some("t3"));
    // A pinned token is the only token.
    let pinned = serve(&[&host], Some("pin"), ServeLimits::default()).await;
    assert_eq!(
        post(
            &pinned.url,
            form("ONAPPINSTALL", "m1", "other", 0, &host, "at-real")
        )
        .await,
        401
    );
    assert_eq!(
        post(
            &pinned.url,
            form("ONAPPUPDATE", "m1", "other", 0, &host, "at-real")
        )
        .await,
        401
    );
    assert_eq!(
        post(&pinned.url, form("ONCRMLEADADD", "m1", "pin", 0, &host, "")).await,
        200
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn the_receiver_on_postgres() {
    let Some(db) = crate::conformance::pg("receiver").await else {
        return;
    };
    let (portal, host) = Portal::start().await;
    portal.issue("at", "");
    let rx = serve_at(
        db,
        tempfile::tempdir().unwrap(),
        &[&host],
        None,
        ServeLimits::default(),
    )
    .await;
    let url = &rx.url;
    assert_eq!(
        post(url, form("ONAPPINSTALL", "m1", "t1", 0, &host, "at")).await,
        200
    );
    assert_eq!(
        post(
            url,
            form("ONAPPUPDATE", "m1", "forged", 0, &host, "made-up")
        )
        .await,
        401
    );
    assert_eq!(
        post(url, form("ONAPPINSTALL", "m2", "t2", 0, &host, "at")).await,
        401,
        "the portal is recorded for m1"
    );
    assert_eq!(
        post(url, form("ONCRMLEADADD", "m1", "t1", 1, &host, "")).await,
        200
    );
    let deep = format!(
        "event=ONY&data{}=v&auth[member_id]=m1&auth[application_token]=t1",
        "[a]".repeat(39)
    );
    assert_eq!(post(url, deep.clone()).await, 200);
    assert_eq!(post(url, deep.clone()).await, 200, "a replay");
    let inbox = rx.inbox().await;
    let rejects = inbox.rejects(10).await.unwrap();
    assert_eq!(rejects.len(), 1, "kept once");
    assert_eq!(rejects[0].raw_body, deep.as_bytes());
    assert_eq!(
        inbox.portal("m1").await.unwrap().as_deref(),
        Some(host.as_str())
    );
    assert_eq!(rx.store().await.stats().await.unwrap().ready, 2);
}
