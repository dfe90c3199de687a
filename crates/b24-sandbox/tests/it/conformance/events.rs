//! Events: the offline queue's process-id semantics, and online events delivered
//! form-encoded, once.
//!
//! A module of `tests/it/conformance.rs`, so it shares its imports.

use super::*;

#[tokio::test]
async fn offline_events_process_id_semantics() {
    let sb = start(SandboxConfig {
        limits: false,
        ..Default::default()
    })
    .await;
    let (s, _) = app(
        &sb,
        "event.bind",
        json!({"event": "ONCRMLEADADD", "event_type": "offline"}),
    )
    .await;
    assert_eq!(s, 200);
    app(
        &sb,
        "event.bind",
        json!({"event": "ONCRMLEADUPDATE", "event_type": "offline"}),
    )
    .await;
    for t in ["a", "b", "c"] {
        hook(&sb, "crm.lead.add", json!({"fields": {"TITLE": t}})).await;
    }
    for _ in 0..5 {
        hook(
            &sb,
            "crm.lead.update",
            json!({"id": 1, "fields": {"TITLE": "z"}}),
        )
        .await;
    }
    let (_, b) = app(&sb, "event.offline.list", json!({})).await;
    assert_eq!(
        b["total"],
        json!(4),
        "three adds and one coalesced update: {b}"
    );
    let row = &b["result"][0];
    for k in [
        "ID",
        "TIMESTAMP_X",
        "EVENT_NAME",
        "EVENT_DATA",
        "EVENT_ADDITIONAL",
        "MESSAGE_ID",
        "PROCESS_ID",
        "ERROR",
    ] {
        assert!(row.get(k).is_some(), "offline rows carry {k}");
    }
    let (_, g1) = app(&sb, "event.offline.get", json!({"clear": 0, "limit": 3})).await;
    let p1 = g1["result"]["process_id"].as_str().unwrap().to_string();
    assert_eq!(g1["result"]["events"].as_array().unwrap().len(), 3);
    assert_eq!(g1["result"]["events"][0]["EVENT_DATA"]["FIELDS"]["ID"], "1");
    let (_, g2) = app(&sb, "event.offline.get", json!({"clear": 0})).await;
    let p2 = g2["result"]["process_id"].as_str().unwrap().to_string();
    assert_ne!(p1, p2);
    assert_eq!(
        g2["result"]["events"].as_array().unwrap().len(),
        1,
        "reserved rows are hidden from other readers"
    );
    let (_, again) = app(&sb, "event.offline.get", json!({"process_id": p1})).await;
    assert_eq!(
        again["result"]["events"], g1["result"]["events"],
        "re-read by process_id"
    );
    app(&sb, "event.offline.clear", json!({"process_id": p1})).await;
    let (_, b) = app(&sb, "event.offline.list", json!({})).await;
    assert_eq!(b["total"], json!(1));
    let mid = g2["result"]["events"][0]["MESSAGE_ID"].clone();
    app(
        &sb,
        "event.offline.error",
        json!({"process_id": p2, "message_id": [mid]}),
    )
    .await;
    let (_, b) = app(&sb, "event.offline.list", json!({})).await;
    assert_eq!(b["result"][0]["ERROR"], "1");
    let (_, g) = app(&sb, "event.offline.get", json!({"clear": 0})).await;
    assert_eq!(g["result"]["events"], json!([]));
    let (_, g) = app(&sb, "event.offline.get", json!({"clear": 1, "error": 1})).await;
    assert_eq!(g["result"]["events"].as_array().unwrap().len(), 1);
    assert_eq!(g["result"]["process_id"], Value::Null);
    let (_, b) = app(&sb, "event.offline.list", json!({})).await;
    assert_eq!(b["total"], json!(0));
    let (s, b) = app(&sb, "event.offline.clear", json!({})).await;
    assert_eq!((s, err(&b).0), (400, "ERROR_REQUIRED_PARAMETERS_MISSING"));
}

#[tokio::test]
async fn online_events_are_delivered_form_encoded_once() {
    use std::sync::{Arc, Mutex};
    let got: Arc<Mutex<Vec<String>>> = Arc::default();
    let g2 = got.clone();
    let app_router = axum::Router::new().route(
        "/hook",
        axum::routing::post(move |body: String| {
            let g = g2.clone();
            async move {
                g.lock().unwrap().push(body);
                axum::http::StatusCode::INTERNAL_SERVER_ERROR // the portal must not retry
            }
        }),
    );
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(l, app_router).await.unwrap() });
    let sb = start(SandboxConfig {
        limits: false,
        ..Default::default()
    })
    .await;
    app(
        &sb,
        "event.bind",
        json!({"event": "ONCRMDEALADD", "handler": format!("http://{addr}/hook")}),
    )
    .await;
    let (s, b) = app(
        &sb,
        "event.bind",
        json!({"event": "ONCRMDEALADD", "handler": format!("http://{addr}/hook")}),
    )
    .await;
    assert_eq!((s, err(&b).0), (400, "ERROR_HANDLER_ALREADY_EXIST"));
    hook(&sb, "crm.deal.add", json!({"fields": {"TITLE": "d"}})).await;
    for _ in 0..50 {
        if !got.lock().unwrap().is_empty() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    tokio::time::sleep(Duration::from_millis(200)).await;
    let got = got.lock().unwrap().clone();
    assert_eq!(got.len(), 1, "delivered once, never redelivered");
    let body = &got[0];
    assert!(body.contains("event=ONCRMDEALADD"));
    assert!(body.contains("data%5BFIELDS%5D%5BID%5D=1"));
    assert!(body.contains(&format!(
        "auth%5Bapplication_token%5D={}",
        sb.info().application_token
    )));
    assert!(body.contains(&format!("auth%5Bmember_id%5D={}", sb.info().member_id)));
}
