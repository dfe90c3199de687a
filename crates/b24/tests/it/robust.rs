//! No panic from outside input: numeric settings, stored limiter state, portal answers, a
//! misspelt store URL, a driver task that panics; and bounded token refreshes.

use std::collections::HashMap;
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

use axum::Router;
use axum::extract::State;
use axum::routing::{get, post};
use b24::batch::Transport;
use b24::config::{LimiterBackend, RateLimits, StoreKind, store_kind};
use b24::export::{ExportOptions, Strategy, pages};
use b24::limiter::{Gcra, Limiter, MAX_QUEUE_SECS, SqliteStore, SystemClock};
use b24::{Client, Config, Error, ErrorClass, Response};
use futures::StreamExt;
use proptest::prelude::*;
use proptest::strategy::Strategy as _;
use serde_json::{Map, Value, json};

fn lookup(vars: &[(&str, &str)]) -> Result<Config, Error> {
    let m: HashMap<String, String> = vars
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    Config::from_lookup(&|k| m.get(k).cloned(), "/tmp/b24-robust".into())
}

const HOOK: (&str, &str) = ("B24_WEBHOOK_URL", "https://ex.bitrix24.com/rest/1/code/");

const NUMERIC: [&str; 7] = [
    "B24_RETRY_BUDGET_SECS",
    "B24_TIMEOUT_SECS",
    "B24_MAX_RETRIES",
    "B24_RATE_BURST",
    "B24_RATE_PER_SEC",
    "B24_RATE_MARGIN",
    "B24_OPERATING_LIMIT_SECS",
];

#[test]
fn out_of_range_numbers_are_configuration_errors() {
    for name in NUMERIC {
        for v in [
            "-1",
            "-0.5",
            "1e300",
            "inf",
            "NaN",
            "1e19",
            "4294967296",
            "abc",
        ] {
            let e = lookup(&[HOOK, (name, v)]).expect_err(&format!("{name}={v}"));
            assert!(matches!(e, Error::Config(_)), "{name}={v}: {e}");
            assert_eq!(e.class(), ErrorClass::Usage);
            assert!(e.to_string().contains(name), "{e}");
        }
    }
    assert!(lookup(&[HOOK, ("B24_MAX_RETRIES", "2.5")]).is_err());
    assert!(lookup(&[HOOK, ("B24_TIMEOUT_SECS", "0")]).is_err());
    let c = lookup(&[
        HOOK,
        ("B24_MAX_RETRIES", "1000"),
        ("B24_RETRY_BUDGET_SECS", "0"),
        ("B24_TIMEOUT_SECS", "0.25"),
    ])
    .unwrap();
    assert_eq!(c.retry.max_attempts, 1001);
    assert_eq!(c.retry.max_total, Duration::ZERO);
    assert_eq!(c.timeout, Duration::from_millis(250));
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    /// Any text in any numeric setting: a configuration or an error, never a panic, and an
    /// accepted configuration stays within bounds that no later arithmetic can overflow.
    #[test]
    fn arbitrary_numeric_settings_never_panic(
        which in 0..NUMERIC.len(),
        v in prop_oneof![
            any::<f64>().prop_map(|f| f.to_string()),
            any::<i64>().prop_map(|i| i.to_string()),
            "[-+0-9.eE]{1,12}",
            ".{0,8}",
        ],
    ) {
        if let Ok(c) = lookup(&[HOOK, (NUMERIC[which], v.as_str())]) {
            prop_assert!(c.retry.max_attempts >= 1 && c.retry.max_attempts <= 1001);
            prop_assert!(c.retry.max_total <= Duration::from_secs(86_400));
            prop_assert!(c.timeout > Duration::ZERO && c.timeout <= Duration::from_secs(3600));
            prop_assert!(c.limits.burst >= 1.0 && c.limits.per_sec > 0.0);
            let g = Gcra::new(c.limits);
            prop_assert!(g.t.is_finite() && g.capacity.is_finite());
        }
    }

    /// Whatever the stored `tat` and the clock say, a reservation asks for a finite wait no
    /// longer than a full bucket plus the longest believable queue, and the level is finite.
    #[test]
    fn arbitrary_limiter_state_gives_bounded_waits(
        tat in prop_oneof![any::<f64>(), Just(f64::INFINITY), Just(f64::NAN), Just(1e300)],
        now in 0.0f64..4e9,
        burst in 1.0f64..1e4,
        per_sec in 0.001f64..1e4,
    ) {
        let g = Gcra::new(RateLimits::new(burst, per_sec, 0.0));
        let (new_tat, wait) = g.reserve(tat, now);
        prop_assert!(new_tat.is_finite() && wait.is_finite());
        prop_assert!(wait >= 0.0 && wait <= g.capacity * g.t + MAX_QUEUE_SECS + g.t);
        prop_assert!(g.fill(tat, now).is_finite());
        prop_assert!(g.level(tat, now).is_finite());
    }
}

fn set_tat(path: &Path, key: &str, tat: f64) {
    let c = rusqlite::Connection::open(path).unwrap();
    c.execute(
        "INSERT INTO b24_rate (portal, tat) VALUES (?1, ?2) \
         ON CONFLICT(portal) DO UPDATE SET tat = excluded.tat",
        rusqlite::params![key, tat],
    )
    .unwrap();
}

#[tokio::test]
async fn stored_limiter_state_far_ahead_is_clamped_not_slept() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("limiter.db");
    let store = SqliteStore::open(&path).unwrap();
    let limits = RateLimits::STANDARD;
    let l = Limiter::new(Box::new(store), limits, Box::new(SystemClock));
    let g = Gcra::new(limits);
    let most = Duration::from_secs_f64(g.capacity * g.t + MAX_QUEUE_SECS + g.t);
    for tat in [1e300, f64::INFINITY, f64::MAX, 4e12, -1e300] {
        set_tat(&path, "p", tat);
        let w = l.reserve_only("p").await.unwrap();
        assert!(w <= most, "tat {tat}: wait {w:?}");
    }

    // Through a client: a queue longer than the call's budget fails at once, sending nothing.
    let sb = b24_sandbox::start(Default::default()).await.unwrap();
    let key = sb.info().domain.clone();
    let cfg = lookup(&[
        ("B24_WEBHOOK_URL", sb.info().webhook_url.as_str()),
        ("B24_RETRY_BUDGET_SECS", "5"),
    ]);
    let mut cfg = cfg.unwrap();
    cfg.limiter = LimiterBackend::Sqlite(path.clone());
    let c = Client::new(cfg).await.unwrap();
    set_tat(&path, &key, 1e300);
    let t = Instant::now();
    let e = c.call("server.time", json!({})).await.unwrap_err();
    assert!(t.elapsed() < Duration::from_secs(2), "{:?}", t.elapsed());
    assert!(matches!(e, Error::Transient { .. }), "{e}");
    assert!(e.to_string().contains("retry budget"), "{e}");
    assert_eq!(sb.stats().requests, 0);
}

#[test]
fn misspelt_store_url_is_a_configuration_error() {
    for bad in [
        "postgress://u@db/b24",
        "postgre://db/x",
        "mysql://db/x",
        "postgres:/db",
    ] {
        let e = lookup(&[HOOK, ("B24_STORE_URL", bad)]).expect_err(bad);
        assert!(
            matches!(&e, Error::Config(m) if m.contains("unknown scheme")),
            "{bad}: {e}"
        );
        assert!(store_kind(bad).is_err());
    }
    assert_eq!(store_kind("postgres://db/x").unwrap(), StoreKind::Postgres);
    assert_eq!(
        store_kind("PostgreSQL://db/x").unwrap(),
        StoreKind::Postgres
    );
    for ok in [
        "sqlite:/var/q.db",
        "/var/lib/b24/queue.db",
        "queue.db",
        "C:\\b24\\q.db",
    ] {
        assert_eq!(store_kind(ok).unwrap(), StoreKind::Sqlite, "{ok}");
    }
    let c = lookup(&[HOOK, ("B24_STORE_URL", "postgres://u@db/b24")]).unwrap();
    assert_eq!(c.limiter, LimiterBackend::Postgres);
}

/// A transport that answers the keyset probe with an item whose ID is 0, then offset pages.
#[derive(Clone)]
struct IdZero;

impl Transport for IdZero {
    async fn send_batch(
        &self,
        cmd: Map<String, Value>,
        _halt: bool,
        _is_write: bool,
    ) -> Result<Response, Error> {
        let mut result = Map::new();
        let mut total = Map::new();
        for (k, _) in cmd {
            let items = match k.as_str() {
                "lo" => json!([{"ID": "0"}]),
                "hi" => json!([{"ID": "2"}]),
                _ => {
                    total.insert(k.clone(), json!(3));
                    json!([{"ID": "0"}, {"ID": "1"}, {"ID": "2"}])
                }
            };
            result.insert(k, items);
        }
        let result =
            json!({"result": result, "result_error": {}, "result_total": total, "result_next": {}});
        Ok(Response::from_result(result))
    }
}

#[tokio::test]
async fn an_item_with_id_zero_is_exported_by_offset_without_underflow() {
    let mut o = ExportOptions::new("crm.lead.list", json!({}));
    o.strategy = Strategy::Auto;
    let mut ids = Vec::new();
    let mut s = Box::pin(pages(IdZero, o));
    while let Some(p) = s.next().await {
        for it in p.unwrap().items {
            ids.push(it["ID"].as_str().unwrap().to_string());
        }
    }
    assert_eq!(ids, ["0", "1", "2"]);

    // Asked for keyset explicitly, it says why it cannot rather than underflowing.
    let mut o = ExportOptions::new("crm.lead.list", json!({}));
    o.strategy = Strategy::Keyset;
    let first = Box::pin(pages(IdZero, o)).next().await.unwrap();
    assert!(matches!(first, Err(Error::Config(_))), "{first:?}");
}

/// A transport whose every request panics (a bug in a transport or in the driver).
#[derive(Clone)]
struct Panics;

impl Transport for Panics {
    async fn send_batch(
        &self,
        _cmd: Map<String, Value>,
        _halt: bool,
        _is_write: bool,
    ) -> Result<Response, Error> {
        panic!("transport bug")
    }
}

#[tokio::test]
async fn a_panic_in_the_export_driver_is_an_error_not_the_end() {
    for strategy in [Strategy::Auto, Strategy::Offset, Strategy::Keyset] {
        let mut o = ExportOptions::new("crm.lead.list", json!({}));
        o.strategy = strategy;
        let got: Vec<_> = pages(Panics, o).collect().await;
        assert_eq!(got.len(), 1, "{strategy:?}");
        let e = got.into_iter().next().unwrap().unwrap_err();
        assert!(matches!(e, Error::State { .. }), "{e}");
        assert_eq!(e.class(), ErrorClass::Internal);
        assert!(
            std::error::Error::source(&e).is_some(),
            "the join error is kept as the cause"
        );
    }
}

#[derive(Clone, Default)]
struct Counts {
    calls: Arc<AtomicU32>,
    refreshes: Arc<AtomicU32>,
}

#[tokio::test]
async fn a_portal_that_keeps_refusing_fresh_tokens_is_an_auth_error() {
    let counts = Counts::default();
    let app = Router::new()
        .route(
            "/rest/{method}",
            post(|State(c): State<Counts>| async move {
                c.calls.fetch_add(1, Ordering::SeqCst);
                (
                    axum::http::StatusCode::UNAUTHORIZED,
                    axum::Json(json!({"error": "expired_token", "error_description": "The access token provided has expired."})),
                )
            }),
        )
        .route(
            "/oauth/token/",
            get(|State(c): State<Counts>| async move {
                let n = c.refreshes.fetch_add(1, Ordering::SeqCst);
                axum::Json(json!({
                    "access_token": format!("access{n}"),
                    "refresh_token": format!("refresh{n}"),
                    "expires_in": 3600,
                }))
            }),
        )
        .with_state(counts.clone());
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    tokio::spawn(async move {
        let _ = axum::serve(l, app).await;
    });
    let dir = tempfile::tempdir().unwrap();
    let base = format!("http://{addr}");
    let token_url = format!("{base}/oauth/token/");
    let m: HashMap<&str, &str> = [
        ("B24_AUTH_MODE", "oauth"),
        ("B24_DOMAIN", base.as_str()),
        ("B24_CLIENT_ID", "app.1"),
        ("B24_CLIENT_SECRET", "secret"),
        ("B24_ACCESS_TOKEN", "access"),
        ("B24_REFRESH_TOKEN", "refresh"),
        ("B24_OAUTH_TOKEN_URL", token_url.as_str()),
        ("B24_RATE_LIMITER", "off"),
    ]
    .into_iter()
    .collect();
    let cfg = Config::from_lookup(&|k| m.get(k).map(|v| v.to_string()), dir.path().into()).unwrap();
    let c = Client::new(cfg).await.unwrap();
    let e = tokio::time::timeout(Duration::from_secs(10), c.call("user.current", json!({})))
        .await
        .expect("the call ends instead of refreshing for ever")
        .unwrap_err();
    assert!(matches!(e, Error::Auth { .. }), "{e}");
    assert_eq!(e.class(), ErrorClass::Reauthorize);
    assert_eq!(counts.refreshes.load(Ordering::SeqCst), 2);
    assert_eq!(counts.calls.load(Ordering::SeqCst), 3);
}

#[tokio::test]
async fn https_uses_compiled_in_roots_plus_the_ca_file() {
    let sb = b24_sandbox::start(b24_sandbox::SandboxConfig {
        tls: true,
        ..Default::default()
    })
    .await
    .unwrap();
    let i = sb.info();
    let ca = i.ca_file.as_ref().unwrap().to_string_lossy().to_string();
    let with_ca = lookup(&[
        ("B24_WEBHOOK_URL", i.webhook_url.as_str()),
        ("B24_RATE_LIMITER", "memory"),
        ("B24_CA_FILE", ca.as_str()),
    ])
    .unwrap();
    let c = Client::new(with_ca).await.unwrap();
    assert!(c.call("server.time", json!({})).await.is_ok());

    // Without the sandbox's CA the public roots do not vouch for it: refused, never sent.
    let without = lookup(&[
        ("B24_WEBHOOK_URL", i.webhook_url.as_str()),
        ("B24_RATE_LIMITER", "memory"),
        ("B24_MAX_RETRIES", "0"),
    ])
    .unwrap();
    let before = sb.stats().requests;
    let e = Client::new(without)
        .await
        .unwrap()
        .call("server.time", json!({}))
        .await
        .unwrap_err();
    assert!(matches!(e, Error::Transient { .. }), "{e}");
    assert_eq!(sb.stats().requests, before);

    // A CA file that holds no certificate is a configuration error, not an empty trust list.
    let dir = tempfile::tempdir().unwrap();
    let junk = dir.path().join("junk.pem");
    std::fs::write(&junk, "not a certificate").unwrap();
    let junk = junk.to_string_lossy().to_string();
    let cfg = lookup(&[
        ("B24_WEBHOOK_URL", i.webhook_url.as_str()),
        ("B24_CA_FILE", junk.as_str()),
    ])
    .unwrap();
    assert!(matches!(Client::new(cfg).await, Err(Error::Config(_))));
}
