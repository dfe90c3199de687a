//! Adaptive offline polling against the sandbox portal: how many `event.offline.get` requests
//! an idle worker makes (simulated time), and how fast an `ONOFFLINEEVENT` wake-up gets a
//! change to the handler (real time).

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use b24_events::handler::Handler;
use b24_events::worker::{WorkerConfig, WorkerStats};
use b24_events::{NewEvent, Store};
use b24_sandbox::SandboxConfig;
use serde_json::json;
use tokio_util::sync::CancellationToken;

async fn oauth_client(sb: &b24_sandbox::Sandbox, state: &std::path::Path) -> b24::Client {
    let i = sb.info();
    let vars: HashMap<&str, &str> = [
        ("B24_AUTH_MODE", "oauth"),
        ("B24_DOMAIN", i.base_url.as_str()),
        ("B24_CLIENT_ID", i.client_id.as_str()),
        ("B24_CLIENT_SECRET", i.client_secret.as_str()),
        ("B24_ACCESS_TOKEN", i.access_token.as_str()),
        ("B24_REFRESH_TOKEN", i.refresh_token.as_str()),
        ("B24_OAUTH_TOKEN_URL", i.oauth_token_url.as_str()),
        ("B24_RATE_LIMITER", "memory"),
    ]
    .into_iter()
    .collect();
    let cfg =
        b24::Config::from_lookup(&|k| vars.get(k).map(|v| v.to_string()), state.to_path_buf())
            .unwrap();
    b24::Client::new(cfg).await.unwrap()
}

fn offline_gets(sb: &b24_sandbox::Sandbox) -> usize {
    sb.request_log()
        .iter()
        .filter(|r| r.method == "event.offline.get")
        .count()
}

/// Ten simulated minutes of an idle worker with the default schedule (1 s doubling to 30 s).
#[tokio::test(start_paused = true)]
async fn an_idle_worker_makes_few_requests() {
    let sb = b24_sandbox::start(SandboxConfig {
        limits: false,
        ..Default::default()
    })
    .await
    .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let client = oauth_client(&sb, dir.path()).await;
    client
        .call(
            "event.bind",
            json!({"event": "ONCRMLEADADD", "event_type": "offline"}),
        )
        .await
        .unwrap();
    let store = Arc::new(
        Store::open(dir.path().join("q.db").to_str().unwrap())
            .await
            .unwrap(),
    );
    let stats = Arc::new(WorkerStats::default());
    let stop = CancellationToken::new();
    let worker = tokio::spawn(b24_events::worker::run(
        store,
        Handler::in_process(|_job| async { Ok(()) }),
        WorkerConfig {
            pull: Some(client),
            ..WorkerConfig::default()
        },
        stats.clone(),
        stop.clone(),
    ));
    tokio::time::sleep(Duration::from_secs(600)).await;
    let first = offline_gets(&sb);
    tokio::time::sleep(Duration::from_secs(600)).await;
    let second = offline_gets(&sb) - first;
    stop.cancel();
    worker.await.unwrap().unwrap();
    let _ = std::io::Write::write_all(
        &mut std::io::stderr(),
        format!(
            "idle worker: {first} event.offline.get in the first 10 simulated minutes ({:.3}/s), {second} in the next 10 ({:.3}/s = {:.2}% of the 2/s refill)\n",
            first as f64 / 600.0,
            second as f64 / 600.0,
            second as f64 / 600.0 / 2.0 * 100.0
        )
        .as_bytes(),
    );
    // Polls at 0, 1, 3, 7, 15, 31 s, then every 30 s.
    assert!((22..=25).contains(&first), "first 10 minutes: {first}");
    assert!((19..=21).contains(&second), "steady state: {second}");
    assert!(
        (second as f64 / 600.0) < 0.04,
        "under 2% of the bucket's refill"
    );
}

/// A worker backed off to a long wait; a change happens on the portal and the receiver queues
/// the portal's ONOFFLINEEVENT notification: the handler runs at once, not at the next poll.
#[tokio::test(flavor = "multi_thread")]
async fn onofflineevent_wakes_the_worker_at_once() {
    let sb = b24_sandbox::start(SandboxConfig {
        limits: false,
        ..Default::default()
    })
    .await
    .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let client = oauth_client(&sb, dir.path()).await;
    client
        .call(
            "event.bind",
            json!({"event": "ONCRMLEADADD", "event_type": "offline"}),
        )
        .await
        .unwrap();
    let store = Arc::new(
        Store::open(dir.path().join("q.db").to_str().unwrap())
            .await
            .unwrap(),
    );
    let (handler, ran) = recording_handler();
    let stats = Arc::new(WorkerStats::default());
    let stop = CancellationToken::new();
    let worker = tokio::spawn(b24_events::worker::run(
        store.clone(),
        handler,
        WorkerConfig {
            pull: Some(client),
            poll_interval: Duration::from_millis(250),
            poll_max: Duration::from_secs(30),
            ..WorkerConfig::default()
        },
        stats.clone(),
        stop.clone(),
    ));
    // Idle for 8 s: polls at 0, .25, .75, 1.75, 3.75, 7.75 s; the next is 8 s away.
    tokio::time::sleep(Duration::from_millis(8000)).await;
    let polls_before = stats.snapshot()["polls"].as_u64().unwrap();
    let changed = Instant::now();
    b24::tls::install_default_provider();
    let r: serde_json::Value = reqwest::Client::new()
        .post(format!("{}crm.lead.add", sb.info().webhook_url))
        .json(&json!({"fields": {"TITLE": "wake"}}))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert!(r["result"].as_u64().is_some(), "{r}");
    // What `b24 events serve` queues when the portal posts ONOFFLINEEVENT.
    store
        .enqueue(&[NewEvent {
            key: "online:wake-1".into(),
            source: "online".into(),
            name: "ONOFFLINEEVENT".into(),
            payload: json!({"event": "ONOFFLINEEVENT", "data": []}),
        }])
        .await
        .unwrap();
    let deadline = changed + Duration::from_secs(5);
    let latency = loop {
        if let Some((_, at)) = ran.lock().unwrap().first() {
            break at.duration_since(changed);
        }
        assert!(
            Instant::now() < deadline,
            "the change never reached the handler"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    };
    stop.cancel();
    worker.await.unwrap().unwrap();
    let ran = ran.lock().unwrap().clone();
    assert_eq!(ran.len(), 1);
    assert_eq!(
        ran[0].0, "ONCRMLEADADD",
        "the wake-up itself is not handed to the handler"
    );
    let snap = stats.snapshot();
    assert_eq!(snap["wakeups"], 1);
    assert_eq!(
        snap["handled"], 1,
        "a wake-up is not counted as a handled event"
    );
    assert!(snap["polls"].as_u64().unwrap() > polls_before);
    assert!(store.is_processed("online:wake-1").await.unwrap());
    let _ = std::io::Write::write_all(
        &mut std::io::stderr(),
        format!("ONOFFLINEEVENT wake-up: change → handler run in {latency:?} (the next scheduled poll was ~7.75 s away)\n").as_bytes(),
    );
    assert!(latency < Duration::from_millis(1500), "{latency:?}");
}

/// The events a handler ran, by name, with the moment each ran.
pub(crate) type Ran = Arc<Mutex<Vec<(String, Instant)>>>;

/// A handler that succeeds and records each event it ran.
pub(crate) fn recording_handler() -> (Handler, Ran) {
    let ran: Ran = Arc::default();
    let r2 = ran.clone();
    let handler = Handler::in_process(move |job| {
        r2.lock().unwrap().push((job.name.clone(), Instant::now()));
        async { Ok(()) }
    });
    (handler, ran)
}
