//! Issue 15: one test per difference from the real portal that the sandbox used to have —
//! batch parsing, offline-event details, scopes, and realistic timing.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use b24_sandbox::{SandboxConfig, Timing};
use serde_json::{Value, json};

use crate::support::{app, err, hook, http, start};

fn quiet() -> SandboxConfig {
    SandboxConfig {
        limits: false,
        ..Default::default()
    }
}

#[tokio::test]
async fn batch_decodes_each_command_before_substituting_references() {
    let sb = start(SandboxConfig {
        seed_leads: 3,
        ..quiet()
    })
    .await;
    // The reference arrives URL-encoded, as the official SDKs encode sub-commands.
    let (s, b) = hook(
        &sb,
        "batch",
        json!({"halt": 1, "cmd": {
            "first": "crm.lead.list?order%5BID%5D=DESC&select%5B0%5D=ID",
            "get": "crm.lead.get?id=%24result%5Bfirst%5D%5B0%5D%5BID%5D",
        }}),
    )
    .await;
    assert_eq!(s, 200);
    assert_eq!(b["result"]["result_error"], json!([]), "{b}");
    assert_eq!(b["result"]["result"]["get"]["ID"], "3");
    // The whole batch form-encoded: each command is encoded twice, references too.
    let body = "halt=0&cmd%5Ba%5D=crm.lead.add%3Ffields%255BTITLE%255D%3DX%2526Y\
                &cmd%5Bb%5D=crm.lead.get%3Fid%3D%2524result%255Ba%255D";
    let r = http()
        .post(format!("{}batch.json", sb.info().webhook_url))
        .header("content-type", "application/x-www-form-urlencoded")
        .body(body)
        .send()
        .await
        .unwrap();
    let b: Value = r.json().await.unwrap();
    assert_eq!(b["result"]["result"]["b"]["TITLE"], "X&Y", "{b}");
}

#[tokio::test]
async fn batch_next_total_time_and_error_references() {
    let sb = start(SandboxConfig {
        seed_leads: 120,
        ..quiet()
    })
    .await;
    let (_, b) = hook(
        &sb,
        "batch",
        json!({"cmd": {
            "p1": "crm.lead.list?select[]=ID",
            "p2": "crm.lead.list?select[]=ID&start=$next[p1]",
            "last": "crm.lead.get?id=$total[p1]",
            "missing": "crm.lead.get?id=424242",
            "why": "crm.lead.add?fields[TITLE]=$error[missing][error_description]",
            "took": "crm.lead.add?fields[TITLE]=took $time[p1][duration]",
            "seen": "crm.lead.get?id=$result[why]",
            "seen2": "crm.lead.get?id=$result[took]",
        }}),
    )
    .await;
    let r = &b["result"]["result"];
    assert_eq!(r["p2"][0]["ID"], "51", "{b}");
    assert_eq!(r["last"]["ID"], "120");
    assert_eq!(r["seen"]["TITLE"], "Not found");
    let took = r["seen2"]["TITLE"].as_str().unwrap();
    assert!(took.starts_with("took 0."), "{took}");
}

#[tokio::test]
async fn batch_over_fifty_runs_the_first_fifty() {
    let sb = start(quiet()).await;
    let cmds: Vec<String> = (0..52)
        .map(|i| format!("crm.lead.add?fields[TITLE]=L{i}"))
        .collect();
    let (s, b) = hook(&sb, "batch", json!({"cmd": cmds})).await;
    assert_eq!(s, 200, "the batch itself is answered");
    let r = &b["result"];
    assert_eq!(r["result"].as_array().unwrap().len(), 50);
    let errors = r["result_error"].as_object().unwrap();
    assert_eq!(
        errors.keys().collect::<Vec<_>>(),
        vec!["50", "51"],
        "excess commands are answered per command"
    );
    assert_eq!(
        err(&errors["51"]),
        ("ERROR_BATCH_LENGTH_EXCEEDED", "Max batch length exceeded")
    );
    let (_, l) = hook(&sb, "crm.lead.list", json!({"select": ["ID"]})).await;
    assert_eq!(l["total"], json!(50), "commands past 50 did not run");
    // With halt the first excess command stops the batch.
    let cmds: Vec<String> = (0..53).map(|_| "server.time".to_string()).collect();
    let (_, b) = hook(&sb, "batch", json!({"halt": 1, "cmd": cmds})).await;
    assert_eq!(
        b["result"]["result_error"].as_object().unwrap().len(),
        1,
        "{b}"
    );
}

#[tokio::test]
async fn nested_batch_fails_only_that_command() {
    let sb = start(quiet()).await;
    let (s, b) = hook(
        &sb,
        "batch",
        json!({"cmd": {
            "a": "server.time",
            "inner": "batch?cmd[y]=server.time",
            "b": "scope",
        }}),
    )
    .await;
    assert_eq!(s, 200);
    let r = &b["result"];
    assert!(
        r["result"]["a"].is_string() && r["result"]["b"].is_array(),
        "{b}"
    );
    assert_eq!(
        err(&r["result_error"]["inner"]),
        (
            "ERROR_BATCH_METHOD_NOT_ALLOWED",
            "Method is not allowed for batch usage"
        )
    );
}

async fn bind_offline(sb: &b24_sandbox::Sandbox, event: &str, connector: Option<&str>) {
    let mut p = json!({"event": event, "event_type": "offline"});
    if let Some(c) = connector {
        p["auth_connector"] = json!(c);
    }
    let (s, b) = app(sb, "event.bind", p).await;
    assert_eq!(s, 200, "{b}");
}

async fn list_total(sb: &b24_sandbox::Sandbox, connector: Option<&str>) -> u64 {
    let p = match connector {
        Some(c) => json!({"auth_connector": c}),
        None => json!({}),
    };
    let (_, b) = app(sb, "event.offline.list", p).await;
    b["total"].as_u64().unwrap()
}

#[tokio::test]
async fn offline_list_reads_one_connector_and_skips_the_apps_own_changes() {
    let sb = start(quiet()).await;
    bind_offline(&sb, "ONCRMLEADADD", None).await;
    bind_offline(&sb, "ONCRMLEADADD", Some("sync")).await;
    hook(&sb, "crm.lead.add", json!({"fields": {"TITLE": "a"}})).await;
    assert_eq!(list_total(&sb, None).await, 1);
    assert_eq!(list_total(&sb, Some("sync")).await, 1);
    // Reading one connector's queue leaves the other alone.
    app(
        &sb,
        "event.offline.get",
        json!({"auth_connector": "sync", "clear": 1}),
    )
    .await;
    assert_eq!(list_total(&sb, Some("sync")).await, 0);
    assert_eq!(list_total(&sb, None).await, 1);
    // The app's own write with its connector is not queued for that connector...
    let (s, _) = app(
        &sb,
        "crm.lead.add",
        json!({"fields": {"TITLE": "mine"}, "auth_connector": "sync"}),
    )
    .await;
    assert_eq!(s, 200);
    assert_eq!(list_total(&sb, Some("sync")).await, 0);
    assert_eq!(list_total(&sb, None).await, 2, "other queues still get it");
    // ...also inside a batch; without the connector the change is queued.
    app(
        &sb,
        "batch",
        json!({"cmd": {"a": "crm.lead.add?fields[TITLE]=b&auth_connector=sync"}}),
    )
    .await;
    assert_eq!(list_total(&sb, Some("sync")).await, 0);
    app(&sb, "crm.lead.add", json!({"fields": {"TITLE": "c"}})).await;
    assert_eq!(list_total(&sb, Some("sync")).await, 1);
}

#[tokio::test]
async fn offline_message_id_is_derived_and_repeats_merge() {
    let sb = start(quiet()).await;
    bind_offline(&sb, "ONCRMLEADADD", None).await;
    bind_offline(&sb, "ONCRMLEADUPDATE", None).await;
    hook(&sb, "crm.lead.add", json!({"fields": {"TITLE": "a"}})).await;
    let (_, b) = app(&sb, "event.offline.list", json!({})).await;
    // md5("ONCRMLEADADD|" . json_encode(["FIELDS" => ["ID" => "1"]]))
    assert_eq!(
        b["result"][0]["MESSAGE_ID"],
        "7d82821d6397ce62efe771b2ef9a639f"
    );
    for t in ["x", "y", "z"] {
        hook(
            &sb,
            "crm.lead.update",
            json!({"id": 1, "fields": {"TITLE": t}}),
        )
        .await;
    }
    let (_, b) = app(&sb, "event.offline.list", json!({})).await;
    assert_eq!(
        b["total"],
        json!(2),
        "three updates merge into one row: {b}"
    );
    let upd = &b["result"][1];
    assert_eq!(upd["MESSAGE_ID"], "d68113140913fd39d50f56803ab3e203");
    assert_eq!(upd["ID"], "2");
    // A reserved row is not merged into: the repeat makes a new row.
    let (_, g) = app(&sb, "event.offline.get", json!({"clear": 0})).await;
    assert_eq!(g["result"]["events"].as_array().unwrap().len(), 2);
    hook(
        &sb,
        "crm.lead.update",
        json!({"id": 1, "fields": {"TITLE": "again"}}),
    )
    .await;
    let (_, b) = app(&sb, "event.offline.list", json!({})).await;
    assert_eq!(b["total"], json!(3));
}

/// A local handler that records every form body it receives.
async fn recorder() -> (String, Arc<Mutex<Vec<(String, String)>>>) {
    let got: Arc<Mutex<Vec<(String, String)>>> = Arc::default();
    let g = got.clone();
    let router = axum::Router::new().route(
        "/{name}",
        axum::routing::post(
            move |axum::extract::Path(name): axum::extract::Path<String>, body: String| {
                let g = g.clone();
                async move {
                    g.lock().unwrap().push((name, body));
                    "ok"
                }
            },
        ),
    );
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(l, router).await.unwrap() });
    (format!("http://{addr}"), got)
}

async fn settle(got: &Arc<Mutex<Vec<(String, String)>>>, want: usize) {
    for _ in 0..100 {
        if got.lock().unwrap().len() >= want {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    tokio::time::sleep(Duration::from_millis(100)).await;
}

#[tokio::test]
async fn onofflineevent_notifies_bound_handlers_per_min_timeout() {
    let (base, got) = recorder().await;
    let sb = start(SandboxConfig {
        manual_clock: true,
        ..quiet()
    })
    .await;
    bind_offline(&sb, "ONCRMLEADADD", None).await;
    let (s, b) = app(
        &sb,
        "event.bind",
        json!({"event": "ONOFFLINEEVENT", "handler": format!("{base}/every"),
               "options": {"minTimeout": 0}}),
    )
    .await;
    assert_eq!(s, 200, "{b}");
    app(
        &sb,
        "event.bind",
        json!({"event": "ONOFFLINEEVENT", "handler": format!("{base}/default")}),
    )
    .await;
    // One request queueing three rows: one notification per handler.
    hook(
        &sb,
        "batch",
        json!({"cmd": ["crm.lead.add?fields[TITLE]=a", "crm.lead.add?fields[TITLE]=b",
                       "crm.lead.add?fields[TITLE]=c"]}),
    )
    .await;
    settle(&got, 2).await;
    // A second request within a second: only minTimeout=0 is notified again.
    hook(&sb, "crm.lead.add", json!({"fields": {"TITLE": "d"}})).await;
    settle(&got, 3).await;
    // A read queues nothing and notifies nobody.
    hook(&sb, "crm.lead.list", json!({})).await;
    sb.advance_clock(Duration::from_secs(2));
    hook(&sb, "crm.lead.add", json!({"fields": {"TITLE": "e"}})).await;
    settle(&got, 5).await;
    let got = got.lock().unwrap().clone();
    let count = |n: &str| got.iter().filter(|(name, _)| name == n).count();
    assert_eq!((count("every"), count("default")), (3, 2), "{got:?}");
    let body = &got[0].1;
    assert!(body.contains("event=ONOFFLINEEVENT"), "{body}");
    assert!(
        body.contains("auth%5Brefresh_token%5D="),
        "full auth: {body}"
    );
    assert!(body.contains("event_handler_id="));
    assert!(!body.contains("data%5B"), "data is empty: {body}");
}

#[tokio::test]
async fn scopes_are_chosen_for_webhook_and_app() {
    let sb = start(SandboxConfig {
        webhook_scopes: Some(vec!["crm".into()]),
        app_scopes: Some(vec!["user".into(), "task".into()]),
        ..quiet()
    })
    .await;
    assert_eq!(hook(&sb, "crm.lead.list", json!({})).await.0, 200);
    let (s, b) = hook(&sb, "user.get", json!({})).await;
    assert_eq!((s, err(&b).0), (403, "insufficient_scope"));
    // Methods of scope basic are always there.
    assert_eq!(hook(&sb, "server.time", json!({})).await.0, 200);
    let (s, b) = app(&sb, "crm.deal.list", json!({})).await;
    assert_eq!(
        (s, err(&b)),
        (
            403,
            (
                "insufficient_scope",
                "The request requires higher privileges than provided by the access token"
            )
        )
    );
    assert_eq!(app(&sb, "user.current", json!({})).await.0, 200);
    let (_, b) = app(&sb, "scope", json!({})).await;
    assert_eq!(b["result"], json!(["user", "task"]));
    // Inside a batch the miss is that command's error.
    let (_, b) = app(
        &sb,
        "batch",
        json!({"cmd": {"u": "user.current", "l": "crm.lead.list"}}),
    )
    .await;
    assert_eq!(
        b["result"]["result_error"]["l"]["error"],
        "insufficient_scope"
    );
    assert!(b["result"]["result"]["u"].is_object());
    // The OAuth server prints the app's scopes.
    let info = sb.info().clone();
    let r: Value = http()
        .post(&info.oauth_token_url)
        .form(&[
            ("grant_type", "refresh_token"),
            ("client_id", info.client_id.as_str()),
            ("client_secret", info.client_secret.as_str()),
            ("refresh_token", info.refresh_token.as_str()),
        ])
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(r["scope"], "user,task");
}

async fn timed(sb: &b24_sandbox::Sandbox, method: &str, p: Value) -> (f64, f64) {
    let t = Instant::now();
    let (s, b) = hook(sb, method, p).await;
    assert_eq!(s, 200, "{b}");
    (
        t.elapsed().as_secs_f64(),
        b["time"]["duration"].as_f64().unwrap(),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn realistic_timing_answers_after_the_modelled_duration() {
    let cfg = SandboxConfig {
        seed_leads: 20_000,
        timing: Timing::Realistic,
        ..quiet()
    };
    let sb = start(cfg.clone()).await;
    // Counting 20,000 rows: 0.097 s + 20,000 × 49.8 s / 2,387,743 ≈ 0.51 s.
    let (wall, dur) = timed(&sb, "crm.lead.list", json!({"select": ["ID"]})).await;
    assert!((0.45..0.6).contains(&dur), "{dur}");
    assert!(wall >= dur, "answered after its duration: {wall} < {dur}");
    // A keyset page without counting: the published 0.097 s.
    let keyset = json!({"start": -1, "order": {"ID": "ASC"}, "filter": {">ID": 0}});
    let (wall, dur) = timed(&sb, "crm.lead.list", keyset.clone()).await;
    assert!(
        (dur - 0.097).abs() < 1e-9 && wall >= dur && wall < 0.4,
        "{wall} {dur}"
    );
    // A batch takes the sum of its commands.
    let cmd = "crm.lead.list?start=-1&order[ID]=ASC&filter[>ID]=0";
    let (wall, dur) = timed(&sb, "batch", json!({"cmd": [cmd, cmd, cmd, cmd]})).await;
    assert!((dur - 0.388).abs() < 1e-6 && wall >= dur, "{wall} {dur}");
    // Calls in flight at once overlap.
    let t = Instant::now();
    let calls = (0..4).map(|_| hook(&sb, "crm.lead.list", json!({"select": ["ID"]})));
    for (s, _) in futures::future::join_all(calls).await {
        assert_eq!(s, 200);
    }
    let wall = t.elapsed().as_secs_f64();
    assert!(wall < 1.5, "four 0.51 s calls took {wall} s");
    // Instant timing reports the same duration without waiting for it.
    let sb = start(SandboxConfig {
        timing: Timing::Instant,
        ..cfg
    })
    .await;
    let (wall, dur) = timed(&sb, "crm.lead.list", json!({"select": ["ID"]})).await;
    assert!(dur > 0.45 && wall < dur, "{wall} {dur}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn realistic_timing_counts_operating_time_when_a_call_finishes() {
    // Each counted page of 20,000 leads costs ≈ 0.51 s against a 0.3 s budget.
    let cfg = SandboxConfig {
        seed_leads: 20_000,
        operating_limit_secs: 0.3,
        timing: Timing::Realistic,
        ..Default::default()
    };
    let sb = start(cfg.clone()).await;
    let page = || hook(&sb, "crm.lead.list", json!({"select": ["ID"]}));
    // Two calls in flight at once both pass the check: neither has finished yet.
    let (a, b) = tokio::join!(page(), page());
    assert_eq!((a.0, b.0), (200, 200));
    let op = a.1["time"]["operating"].as_f64().unwrap();
    assert!(op > 0.45, "the answer reports its own time: {op}");
    let (s, b) = page().await;
    assert_eq!((s, err(&b).0), (429, "OPERATION_TIME_LIMIT"));
    // Inside a batch a command sees the commands before it: the second is blocked.
    let cmd = "crm.deal.list?select[]=ID";
    let cfg = SandboxConfig {
        operating_limit_secs: 0.05,
        ..cfg
    };
    let sb = start(cfg).await;
    let (_, b) = hook(&sb, "batch", json!({"cmd": [cmd, cmd, cmd]})).await;
    let r = &b["result"];
    assert!(
        r["result"]["0"].is_array() || r["result"][0].is_array(),
        "{b}"
    );
    for k in ["1", "2"] {
        assert_eq!(r["result_error"][k]["error"], "OPERATION_TIME_LIMIT", "{b}");
    }
    // Instant timing bills at once: a second call is blocked immediately.
    let sb = start(SandboxConfig {
        seed_leads: 20_000,
        operating_limit_secs: 0.3,
        ..Default::default()
    })
    .await;
    assert_eq!(hook(&sb, "crm.lead.list", json!({})).await.0, 200);
    assert_eq!(hook(&sb, "crm.lead.list", json!({})).await.0, 429);
}
