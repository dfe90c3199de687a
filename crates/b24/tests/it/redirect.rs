//! Redirects: only the portal's own origin over https (or loopback http) is followed; any
//! other hop stops with `Error::Redirect`, names the new place without its path, and sends it
//! nothing — no webhook code, no OAuth token.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use axum::Router;
use axum::extract::{Request, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use b24::{Client, Config, Error};
use serde_json::json;

const CODE: &str = "s3cretwebhookcode";
const TOKEN: &str = "acc3sstokenvalue";

/// Every request a test server received: "METHOD path body".
type Log = Arc<Mutex<Vec<String>>>;

#[derive(Clone)]
struct Srv {
    log: Log,
    /// Where to send the client (`None` = answer 200 with a result).
    answer: Arc<dyn Fn(&str) -> Option<(StatusCode, String)> + Send + Sync>,
}

async fn handle(State(s): State<Srv>, req: Request) -> Response {
    let path = req
        .uri()
        .path_and_query()
        .map(|p| p.to_string())
        .unwrap_or_default();
    let method = req.method().to_string();
    let body = axum::body::to_bytes(req.into_body(), 1 << 20)
        .await
        .unwrap_or_default();
    s.log.lock().unwrap().push(format!(
        "{method} {path} {}",
        String::from_utf8_lossy(&body)
    ));
    match (s.answer)(&path) {
        Some((status, location)) => {
            let mut h = HeaderMap::new();
            h.insert(header::LOCATION, location.parse().unwrap());
            (status, h, "").into_response()
        }
        None => {
            axum::Json(json!({"result": "ok", "time": {"start": 0, "finish": 0}})).into_response()
        }
    }
}

/// A plain-http server on loopback; `answer` decides per path.
async fn server(
    answer: impl Fn(&str) -> Option<(StatusCode, String)> + Send + Sync + 'static,
) -> (SocketAddr, Log) {
    let log: Log = Arc::default();
    let app = Router::new().fallback(handle).with_state(Srv {
        log: log.clone(),
        answer: Arc::new(answer),
    });
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    tokio::spawn(async move {
        let _ = axum::serve(l, app).await;
    });
    (addr, log)
}

/// The same over TLS with a fresh self-signed certificate; returns the CA file to trust.
async fn tls_server(
    answer: impl Fn(&str) -> Option<(StatusCode, String)> + Send + Sync + 'static,
    dir: &std::path::Path,
) -> (SocketAddr, Log, std::path::PathBuf) {
    let log: Log = Arc::default();
    let app = Router::new().fallback(handle).with_state(Srv {
        log: log.clone(),
        answer: Arc::new(answer),
    });
    let ck =
        rcgen::generate_simple_self_signed(vec!["127.0.0.1".into(), "localhost".into()]).unwrap();
    let ca = dir.join("ca.pem");
    std::fs::write(&ca, ck.cert.pem()).unwrap();
    // The provider the whole workspace builds (RustlsConfig::from_pem needs a default).
    b24::tls::install_default_provider();
    let tls = axum_server::tls_rustls::RustlsConfig::from_pem(
        ck.cert.pem().into_bytes(),
        ck.signing_key.serialize_pem().into_bytes(),
    )
    .await
    .unwrap();
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    l.set_nonblocking(true).unwrap();
    let addr = l.local_addr().unwrap();
    let srv = axum_server::from_tcp_rustls(l, tls).unwrap();
    tokio::spawn(async move {
        let _ = srv.serve(app.into_make_service()).await;
    });
    (addr, log, ca)
}

fn config(vars: &[(&str, &str)], state: &std::path::Path) -> Config {
    let m: HashMap<String, String> = vars
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    Config::from_lookup(&|k| m.get(k).cloned(), state.to_path_buf()).expect("config")
}

async fn webhook(base: &str, extra: &[(&str, &str)], state: &std::path::Path) -> Client {
    let url = format!("{base}/rest/1/{CODE}/");
    let mut vars = vec![
        ("B24_WEBHOOK_URL", url.as_str()),
        ("B24_RATE_LIMITER", "off"),
        ("B24_MAX_RETRIES", "3"),
    ];
    vars.extend_from_slice(extra);
    Client::new(config(&vars, state)).await.unwrap()
}

fn assert_refused(e: &Error, to: &str, why: &str) {
    match e {
        Error::Redirect {
            location, reason, ..
        } => {
            assert_eq!(location, &format!("{to}/…"), "{e}");
            assert!(reason.contains(why), "{e}");
        }
        other => panic!("expected a refused redirect, got {other:?}"),
    }
    let text = e.to_string();
    assert!(!text.contains(CODE) && !text.contains(TOKEN), "{text}");
}

#[tokio::test]
async fn cross_origin_redirect_is_refused_and_sends_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let (other, other_log) = server(|_| None).await;
    // Absolute location on another port, a protocol-relative one, and another host name for
    // the same address: three other origins.
    for (status, target) in [
        (StatusCode::TEMPORARY_REDIRECT, format!("http://{other}")),
        (StatusCode::MOVED_PERMANENTLY, format!("//{other}")),
        (
            StatusCode::PERMANENT_REDIRECT,
            format!("http://localhost:{}", other.port()),
        ),
    ] {
        let t = target.clone();
        let (portal, portal_log) = server(move |p| Some((status, format!("{t}{p}")))).await;
        let c = webhook(&format!("http://{portal}"), &[], dir.path()).await;
        for method in ["crm.lead.add", "crm.lead.list"] {
            let e = c
                .call(method, json!({"FIELDS": {"TITLE": "x"}}))
                .await
                .unwrap_err();
            let shown = match target.strip_prefix("//") {
                Some(rest) => format!("http://{rest}"),
                None => target.clone(),
            };
            assert_refused(&e, &shown, "another origin");
        }
        // One request per call, never retried: a redirect is an answer, not a failure.
        assert_eq!(portal_log.lock().unwrap().len(), 2, "{target}");
    }
    assert!(
        other_log.lock().unwrap().is_empty(),
        "{:?}",
        other_log.lock().unwrap()
    );
}

#[tokio::test]
async fn oauth_token_is_not_resent_across_origins() {
    let dir = tempfile::tempdir().unwrap();
    let (other, other_log) = server(|_| None).await;
    let (portal, portal_log) =
        server(move |p| Some((StatusCode::FOUND, format!("http://{other}{p}")))).await;
    let base = format!("http://{portal}");
    let token_url = format!("http://{other}/oauth/token/");
    let c = Client::new(config(
        &[
            ("B24_AUTH_MODE", "oauth"),
            ("B24_DOMAIN", &base),
            ("B24_CLIENT_ID", "app.1"),
            ("B24_CLIENT_SECRET", "clientsecret"),
            ("B24_ACCESS_TOKEN", TOKEN),
            ("B24_REFRESH_TOKEN", "refreshtokenvalue"),
            ("B24_OAUTH_TOKEN_URL", &token_url),
            ("B24_RATE_LIMITER", "off"),
        ],
        dir.path(),
    ))
    .await
    .unwrap();
    let e = c.call("user.current", json!({})).await.unwrap_err();
    assert_refused(&e, &format!("http://{other}"), "another origin");
    // The portal saw the token once (it is the portal); the other server saw nothing at all,
    // neither the call nor a refresh.
    assert_eq!(portal_log.lock().unwrap().len(), 1);
    assert!(portal_log.lock().unwrap()[0].contains(TOKEN));
    assert!(other_log.lock().unwrap().is_empty());
}

#[tokio::test]
async fn same_origin_redirect_is_followed_with_a_bounded_number_of_hops() {
    let dir = tempfile::tempdir().unwrap();
    // `/rest/...json` → `/moved/...json` on the same origin: followed, and the answer used.
    let (portal, log) = server(|p| {
        p.starts_with("/rest/")
            .then(|| (StatusCode::PERMANENT_REDIRECT, format!("/moved{p}")))
    })
    .await;
    let c = webhook(&format!("http://{portal}"), &[], dir.path()).await;
    let r = c.call("server.time", json!({})).await.unwrap();
    assert_eq!(r.result, json!("ok"));
    let seen = log.lock().unwrap().clone();
    assert_eq!(seen.len(), 2, "{seen:?}");
    assert!(seen[1].starts_with(&format!("POST /moved/rest/1/{CODE}/server.time.json")));

    // A loop on the same origin stops after a few hops instead of spinning.
    let (looping, log) = server(|p| Some((StatusCode::TEMPORARY_REDIRECT, p.to_string()))).await;
    let c = webhook(&format!("http://{looping}"), &[], dir.path()).await;
    let e = c.call("server.time", json!({})).await.unwrap_err();
    assert!(
        matches!(&e, Error::Redirect { reason, .. } if reason.contains("redirects in a row")),
        "{e}"
    );
    assert_eq!(
        log.lock().unwrap().len(),
        6,
        "the first request and five hops"
    );
    assert!(!e.to_string().contains(CODE));
}

#[tokio::test]
async fn https_to_http_downgrade_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let (other, other_log) = server(|_| None).await;
    let (portal, portal_log, ca) = tls_server(
        move |p| Some((StatusCode::TEMPORARY_REDIRECT, format!("http://{other}{p}"))),
        dir.path(),
    )
    .await;
    let ca = ca.to_string_lossy().to_string();
    let c = webhook(
        &format!("https://{portal}"),
        &[("B24_CA_FILE", ca.as_str())],
        dir.path(),
    )
    .await;
    let e = c.call("crm.lead.add", json!({})).await.unwrap_err();
    assert_refused(&e, &format!("http://{other}"), "downgrade");
    assert_eq!(portal_log.lock().unwrap().len(), 1);
    assert!(other_log.lock().unwrap().is_empty());
}
