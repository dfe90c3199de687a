//! Client behaviour end to end: auth, refresh single flight, retries, limits.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::Router;
use axum::routing::post;
use b24::{CallOptions, Client, Config, Error};
use b24_sandbox::{FaultSpec, SandboxConfig};
use serde_json::{Value, json};

fn config(vars: &[(&str, &str)], state: &std::path::Path) -> Config {
    let m: HashMap<String, String> = vars
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    Config::from_lookup(&|k| m.get(k).cloned(), state.to_path_buf()).expect("config")
}

async fn webhook_client(
    sb: &b24_sandbox::Sandbox,
    extra: &[(&str, &str)],
    state: &std::path::Path,
) -> Client {
    let mut vars = vec![
        ("B24_WEBHOOK_URL", sb.info().webhook_url.as_str()),
        ("B24_RATE_LIMITER", "memory"),
    ];
    vars.extend_from_slice(extra);
    Client::new(config(&vars, state)).await.unwrap()
}

async fn oauth_client(sb: &b24_sandbox::Sandbox, state: &std::path::Path) -> Client {
    let i = sb.info();
    Client::new(config(
        &[
            ("B24_AUTH_MODE", "oauth"),
            ("B24_DOMAIN", &i.base_url),
            ("B24_CLIENT_ID", &i.client_id),
            ("B24_CLIENT_SECRET", &i.client_secret),
            ("B24_ACCESS_TOKEN", &i.access_token),
            ("B24_REFRESH_TOKEN", &i.refresh_token),
            ("B24_OAUTH_TOKEN_URL", &i.oauth_token_url),
            ("B24_RATE_LIMITER", "memory"),
        ],
        state,
    ))
    .await
    .unwrap()
}

#[tokio::test]
async fn webhook_and_oauth_calls() {
    let sb = b24_sandbox::start(SandboxConfig {
        seed_leads: 3,
        ..Default::default()
    })
    .await
    .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let c = webhook_client(&sb, &[], dir.path()).await;
    let r = c
        .call("crm.lead.list", json!({"select": ["ID"]}))
        .await
        .unwrap();
    assert_eq!(r.result.as_array().unwrap().len(), 3);
    assert_eq!(r.total, Some(3));
    assert!(r.time.unwrap().operating.is_some());

    let o = oauth_client(&sb, dir.path()).await;
    let r = o.call("app.info", json!({})).await.unwrap();
    assert_eq!(r.result["INSTALLED"], json!(true));
    // The webhook may not call app-only methods: a permanent error, not retried.
    let e = c.call("event.get", json!({})).await.unwrap_err();
    assert!(
        matches!(&e, Error::Api(a) if a.code == "WRONG_AUTH_TYPE" && a.http_status == 403),
        "{e}"
    );
    assert_eq!(sb.stats().methods["event.get"], 1);
}

#[tokio::test]
async fn expired_token_refreshes_once_and_retries() {
    let sb = b24_sandbox::start(SandboxConfig::default()).await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let c = oauth_client(&sb, dir.path()).await;
    c.call("profile", json!({})).await.unwrap();
    sb.expire_access_tokens();
    let r = c.call("profile", json!({})).await.unwrap();
    assert_eq!(r.result["ID"], json!("1"));
    assert_eq!(sb.stats().refreshes, 1);
    // The rotated pair was written 0600 to the state dir, and a new client adopts it.
    let file = c.config().token_file();
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        assert_eq!(
            std::fs::metadata(&file).unwrap().permissions().mode() & 0o777,
            0o600
        );
    }
    let stored: Value = serde_json::from_slice(&std::fs::read(&file).unwrap()).unwrap();
    assert_ne!(
        stored["refresh_token"],
        json!(sb.info().refresh_token),
        "the refresh token rotated"
    );
    let c2 = oauth_client(&sb, dir.path()).await;
    c2.call("profile", json!({})).await.unwrap();
    assert_eq!(
        sb.stats().refreshes,
        1,
        "a new client uses the stored pair, not the consumed env one"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_expiry_causes_a_single_refresh() {
    let sb = b24_sandbox::start(SandboxConfig {
        limits: false,
        ..Default::default()
    })
    .await
    .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let c = oauth_client(&sb, dir.path()).await;
    c.call("profile", json!({})).await.unwrap();
    sb.expire_access_tokens();
    let mut tasks = Vec::new();
    for _ in 0..20 {
        let c = c.clone();
        tasks.push(tokio::spawn(async move {
            c.call("user.current", json!({})).await
        }));
    }
    for t in tasks {
        t.await.unwrap().unwrap();
    }
    assert_eq!(sb.stats().refreshes, 1);
    assert_eq!(c.stats().refreshes, 1);
}

#[tokio::test]
async fn query_limit_exceeded_is_retried_even_for_writes() {
    // The first request of every pair is refused with 503 by the fault spec's seed.
    let sb = b24_sandbox::start(SandboxConfig {
        limits: false,
        seed: 3,
        ..Default::default()
    })
    .await
    .unwrap();
    sb.set_faults("rate503=0.5".parse::<FaultSpec>().unwrap());
    let dir = tempfile::tempdir().unwrap();
    let c = webhook_client(&sb, &[("B24_RETRY_BUDGET_SECS", "60")], dir.path()).await;
    let mut ids = Vec::new();
    for i in 0..10 {
        let r = c
            .call_with(
                "crm.lead.add",
                json!({"fields": {"TITLE": format!("t{i}")}}),
                CallOptions::write(true),
            )
            .await
            .unwrap();
        ids.push(r.result.as_u64().unwrap());
    }
    let s = sb.stats();
    assert!(s.count_503 > 0, "the fault spec injected 503s");
    assert_eq!(c.stats().status_503, s.count_503);
    // Every write happened exactly once: 10 leads, ids 1..=10.
    assert_eq!(ids, (1..=10).collect::<Vec<u64>>());
    let list = c.call("crm.lead.list", json!({})).await.unwrap();
    assert_eq!(list.total, Some(10));
}

#[tokio::test]
async fn a_write_that_times_out_is_not_resent() {
    let sb = b24_sandbox::start(SandboxConfig {
        limits: false,
        ..Default::default()
    })
    .await
    .unwrap();
    sb.set_faults("timeout=1".parse().unwrap());
    let dir = tempfile::tempdir().unwrap();
    let c = webhook_client(&sb, &[("B24_TIMEOUT_SECS", "0.5")], dir.path()).await;
    let e = c
        .call_with(
            "crm.lead.add",
            json!({"fields": {"TITLE": "x"}}),
            CallOptions::default().with_idempotency_key("k-1"),
        )
        .await
        .unwrap_err();
    assert!(
        matches!(&e, Error::OutcomeUnknown { idempotency_key: Some(k), .. } if k == "k-1"),
        "{e}"
    );
    assert_eq!(sb.stats().methods["crm.lead.add"], 1, "sent exactly once");
    // A read in the same situation is retried (and gives up within its budget).
    let c = webhook_client(
        &sb,
        &[("B24_TIMEOUT_SECS", "0.3"), ("B24_MAX_RETRIES", "2")],
        dir.path(),
    )
    .await;
    let e = c.call("crm.lead.list", json!({})).await.unwrap_err();
    assert!(matches!(e, Error::Transient { attempts: 3, .. }), "{e}");
    assert_eq!(sb.stats().methods["crm.lead.list"], 3);
}

/// A scripted portal: answers each request with the next (status, body) and records arrival times.
fn scripted(answers: Vec<(u16, Value)>) -> (Router, Arc<Mutex<Vec<Instant>>>) {
    let seen = Arc::new(Mutex::new(Vec::new()));
    let answers = Arc::new(Mutex::new(answers.into_iter()));
    let s2 = seen.clone();
    let app = Router::new().route(
        "/rest/{*p}",
        post(move || {
            let seen = s2.clone();
            let answers = answers.clone();
            async move {
                seen.lock().unwrap().push(Instant::now());
                let (status, body) = answers
                    .lock()
                    .unwrap()
                    .next()
                    .unwrap_or((500, json!({"error": "INTERNAL_SERVER_ERROR"})));
                (
                    axum::http::StatusCode::from_u16(status).unwrap(),
                    axum::Json(body),
                )
            }
        }),
    );
    (app, seen)
}

async fn serve(app: Router) -> String {
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(l, app).await.unwrap() });
    format!("http://{addr}/rest/1/code123456/")
}

fn unix_now() -> f64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs_f64()
}

#[tokio::test]
async fn operation_time_limit_waits_for_the_reset() {
    let reset = unix_now().ceil() + 2.0;
    let (app, seen) = scripted(vec![
        (
            200,
            json!({"result": [], "time": {"operating": 12.0, "operating_reset_at": reset}}),
        ),
        (
            429,
            json!({"error": "OPERATION_TIME_LIMIT", "error_description": "Method is blocked due to operation time limit"}),
        ),
        (200, json!({"result": [1], "time": {"operating": 1.0}})),
    ]);
    let url = serve(app).await;
    let dir = tempfile::tempdir().unwrap();
    let c = Client::new(config(
        &[("B24_WEBHOOK_URL", &url), ("B24_RATE_LIMITER", "memory")],
        dir.path(),
    ))
    .await
    .unwrap();
    c.call("crm.deal.list", json!({})).await.unwrap();
    let r = c.call("crm.deal.list", json!({})).await.unwrap();
    assert_eq!(r.result, json!([1]));
    let seen = seen.lock().unwrap().clone();
    assert_eq!(seen.len(), 3, "one blocked call, one retry after the reset");
    let waited = seen[2].duration_since(seen[1]);
    assert!(
        waited >= Duration::from_millis(900),
        "retried only after operating_reset_at (waited {waited:?})"
    );
    assert_eq!(c.stats().status_429, 1);
}

#[tokio::test]
async fn a_method_near_its_budget_pauses_before_the_portal_blocks_it() {
    let reset = unix_now().ceil() + 2.0;
    let (app, seen) = scripted(vec![
        (
            200,
            json!({"result": [], "time": {"operating": 470.0, "operating_reset_at": reset}}),
        ),
        (200, json!({"result": [2], "time": {"operating": 3.0}})),
    ]);
    let url = serve(app).await;
    let dir = tempfile::tempdir().unwrap();
    let c = Client::new(config(
        &[("B24_WEBHOOK_URL", &url), ("B24_RATE_LIMITER", "memory")],
        dir.path(),
    ))
    .await
    .unwrap();
    c.call("crm.deal.list", json!({})).await.unwrap();
    c.call("crm.deal.list", json!({})).await.unwrap();
    let seen = seen.lock().unwrap().clone();
    assert_eq!(seen.len(), 2, "no 429 was provoked");
    assert!(
        unix_now() >= reset - 0.05,
        "the second call waited for the reset"
    );
}

#[tokio::test]
async fn garbage_answers_give_clear_errors() {
    let (app, _) = scripted(vec![
        (502, json!("<html>")),
        (200, json!({"unexpected": true})),
        (400, json!({"error": "", "error_description": "Not found"})),
    ]);
    let url = serve(app).await;
    let dir = tempfile::tempdir().unwrap();
    let c = Client::new(config(
        &[
            ("B24_WEBHOOK_URL", &url),
            ("B24_RATE_LIMITER", "memory"),
            ("B24_MAX_RETRIES", "0"),
        ],
        dir.path(),
    ))
    .await
    .unwrap();
    // 502 on a write: may have executed → outcome unknown, and the message never shows the code.
    let e = c.call("crm.deal.add", json!({})).await.unwrap_err();
    assert!(matches!(e, Error::OutcomeUnknown { .. }), "{e}");
    assert!(!e.to_string().contains("code123456"));
    let e = c.call("crm.deal.get", json!({"id": 1})).await.unwrap_err();
    assert!(matches!(e, Error::Decode { .. }), "{e}");
    let e = c.call("crm.deal.get", json!({"id": 1})).await.unwrap_err();
    assert!(
        matches!(&e, Error::Api(a) if a.code.is_empty() && a.description == "Not found"),
        "{e}"
    );
}
