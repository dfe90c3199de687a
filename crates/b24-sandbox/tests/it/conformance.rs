use std::time::Duration;

use b24_sandbox::SandboxConfig;
use serde_json::{Value, json};

use crate::support::{app, err, hook, http, install_crypto_provider, start};

#[tokio::test]
async fn error_codes_and_statuses() {
    let sb = start(SandboxConfig {
        seed_leads: 1,
        ..Default::default()
    })
    .await;
    let base = sb.base_url().to_string();
    let r = http()
        .get(format!("{base}/rest/1/wrongcode/user.current.json"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 401);
    assert_eq!(r.json::<Value>().await.unwrap()["error"], "NO_AUTH_FOUND");
    let (s, b) = hook(&sb, "no.such.method", json!({})).await;
    assert_eq!((s, err(&b).0), (404, "ERROR_METHOD_NOT_FOUND"));
    let (s, b) = hook(
        &sb,
        "event.bind",
        json!({"event": "ONCRMLEADADD", "handler": "https://x.example/h"}),
    )
    .await;
    assert_eq!((s, err(&b).0), (403, "WRONG_AUTH_TYPE"));
    let (s, b) = hook(&sb, "app.info", json!({})).await;
    assert_eq!(
        err(&b),
        (
            "ACCESS_DENIED",
            "Access denied! Application context required"
        )
    );
    assert_eq!(s, 400);
    let (s, b) = hook(&sb, "crm.lead.get", json!({"id": 999})).await;
    assert_eq!((s, err(&b)), (400, ("", "Not found")));
    let (s, b) = hook(&sb, "crm.lead.get", json!({})).await;
    assert_eq!((s, err(&b)), (400, ("", "ID is not defined or invalid.")));
    let (s, b) = hook(&sb, "crm.lead.add", json!({"fields": "x"})).await;
    assert_eq!(
        (s, err(&b)),
        (400, ("", "Parameter 'fields' must be array."))
    );
    let (s, b) = hook(&sb, "crm.item.get", json!({"entityTypeId": 999, "id": 1})).await;
    assert_eq!((s, err(&b).0), (400, "NOT_FOUND"));
    let (s, b) = app(&sb, "profile", json!({})).await;
    assert_eq!((s, b["result"]["ADMIN"].clone()), (200, json!(true)));
    sb.expire_access_tokens();
    let (s, b) = app(&sb, "profile", json!({})).await;
    assert_eq!((s, err(&b).0), (401, "expired_token"));
    // Malformed bodies get an error, never a crash; the server keeps serving.
    let r = http()
        .post(format!("{}crm.lead.list.json", sb.info().webhook_url))
        .header("content-type", "application/json")
        .body("{not json")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 400);
    assert_eq!(r.json::<Value>().await.unwrap()["error"], "INVALID_REQUEST");
    let big = vec![b'a'; 11 * 1024 * 1024];
    let r = http()
        .post(format!("{}crm.lead.list.json", sb.info().webhook_url))
        .header("content-type", "application/json")
        .body(big)
        .send()
        .await;
    if let Ok(r) = r {
        assert_eq!(r.status(), 413);
    }
    let (s, _) = hook(&sb, "server.time", json!({})).await;
    assert_eq!(s, 200);
}

#[tokio::test]
async fn scopes_and_plans() {
    let sb = start(SandboxConfig {
        webhook_scopes: Some(vec!["user".into()]),
        ..Default::default()
    })
    .await;
    let (s, b) = hook(&sb, "crm.lead.list", json!({})).await;
    assert_eq!((s, err(&b).0), (403, "insufficient_scope"));
    let (_, b) = hook(&sb, "scope", json!({})).await;
    assert_eq!(b["result"], json!(["user"]));
    let sb = start(SandboxConfig {
        free_plan: true,
        ..Default::default()
    })
    .await;
    let (s, b) = hook(&sb, "user.current", json!({})).await;
    assert_eq!(
        (s, err(&b)),
        (
            403,
            (
                "ACCESS_DENIED",
                "REST API is available only on commercial plans"
            )
        )
    );
}

#[tokio::test]
async fn paging_edges() {
    let sb = start(SandboxConfig {
        seed_leads: 120,
        limits: false,
        ..Default::default()
    })
    .await;
    let (_, b) = hook(&sb, "crm.lead.list", json!({"select": ["ID"]})).await;
    assert_eq!(
        (
            b["result"].as_array().unwrap().len(),
            b["next"].clone(),
            b["total"].clone()
        ),
        (50, json!(50), json!(120))
    );
    let (_, b) = hook(&sb, "crm.lead.list", json!({"start": 100})).await;
    assert_eq!(b["result"].as_array().unwrap().len(), 20);
    assert!(b.get("next").is_none(), "no next on the last page");
    let (_, b) = hook(&sb, "crm.lead.list", json!({"start": 500})).await;
    assert_eq!(b["result"], json!([]));
    // start=-1: no counting, no next; keyset by ID.
    let (_, b) = hook(
        &sb,
        "crm.lead.list",
        json!({"start": -1, "order": {"ID": "ASC"}, "filter": {">ID": 100}, "select": ["ID"]}),
    )
    .await;
    let ids: Vec<&str> = b["result"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["ID"].as_str().unwrap())
        .collect();
    assert_eq!(ids.len(), 20);
    assert_eq!(ids[0], "101");
    assert!(b.get("next").is_none());
    assert_eq!(b["total"], json!(0));
    // Values are strings, as on the portal; crm.item is typed camelCase.
    let (_, b) = hook(&sb, "crm.lead.get", json!({"ID": 5})).await;
    assert_eq!(b["result"]["ID"], json!("5"));
    assert!(b["result"]["OPPORTUNITY"].is_string());
    let (_, b) = hook(
        &sb,
        "crm.item.list",
        json!({"entityTypeId": 1, "select": ["id", "title"], "order": {"id": "DESC"}}),
    )
    .await;
    assert_eq!(b["result"]["items"][0]["id"], json!(120));
    assert_eq!(b["total"], json!(120));
    // Filter operators.
    let (_, b) = hook(
        &sb,
        "crm.lead.list",
        json!({"filter": {"@ID": [3, 4, 200], "!ID": 4}, "select": ["ID"]}),
    )
    .await;
    assert_eq!(b["result"], json!([{"ID": "3"}]));
    let (s, b) = hook(
        &sb,
        "crm.item.list",
        json!({"entityTypeId": 1, "filter": {"bogusField": 1}}),
    )
    .await;
    assert_eq!((s, err(&b).0), (400, "INVALID_ARG_VALUE"));
}

#[tokio::test]
async fn batch_substitution_halt_and_limits() {
    let sb = start(SandboxConfig {
        limits: false,
        ..Default::default()
    })
    .await;
    let (_, b) = hook(
        &sb,
        "batch",
        json!({"halt": 0, "cmd": {
            "a": "crm.lead.add?fields[TITLE]=A%26B",
            "b": "crm.lead.get?id=$result[a]",
            "bad": "crm.lead.get?id=424242",
            "c": "crm.lead.list?filter[ID]=$result[a]&select[]=TITLE"
        }}),
    )
    .await;
    let r = &b["result"];
    assert_eq!(r["result"]["b"]["TITLE"], "A&B");
    assert_eq!(r["result"]["c"][0]["TITLE"], "A&B");
    assert_eq!(r["result_error"]["bad"]["error_description"], "Not found");
    assert_eq!(r["result_total"]["c"], json!(1));
    assert!(
        r["result_next"] == json!([]),
        "empty maps are PHP empty arrays"
    );
    // halt stops at the first failure: later commands are absent everywhere.
    let (_, b) = hook(
        &sb,
        "batch",
        json!({"halt": 1, "cmd": ["crm.lead.get?id=424242", "server.time"]}),
    )
    .await;
    assert_eq!(b["result"]["result"], json!([]));
    assert!(
        b["result"]["result_error"]
            .as_array()
            .map(|a| a.len() == 1)
            .unwrap_or(false),
        "{b}"
    );
    // An unresolved reference is sent on as literal text (that's the portal's behaviour).
    let (_, b) = hook(
        &sb,
        "batch",
        json!({"cmd": {"x": "crm.lead.get?id=$result[nope][ID]"}}),
    )
    .await;
    assert_eq!(
        b["result"]["result_error"]["x"]["error_description"],
        "ID is not defined or invalid."
    );
    // More than 50 commands and a nested batch are answered per command (see fidelity.rs).
    let cmds: Vec<String> = (0..51).map(|_| "server.time".to_string()).collect();
    let (s, b) = hook(&sb, "batch", json!({"cmd": cmds})).await;
    assert_eq!(s, 200);
    assert_eq!(
        b["result"]["result_error"]["50"]["error"],
        "ERROR_BATCH_LENGTH_EXCEEDED"
    );
    let (s, b) = hook(
        &sb,
        "batch",
        json!({"cmd": {"x": "batch?cmd[y]=server.time"}}),
    )
    .await;
    assert_eq!(s, 200);
    assert_eq!(
        b["result"]["result_error"]["x"]["error"],
        "ERROR_BATCH_METHOD_NOT_ALLOWED"
    );
    // A batch is one request against the bucket.
    assert_eq!(sb.stats().methods["batch"], 5);
}

#[tokio::test]
async fn rest_v3_idempotency_key() {
    let sb = start(SandboxConfig::default()).await;
    let url = format!(
        "{}/rest/api/1/{}/tasks.task.add",
        sb.base_url(),
        sb.info().webhook_code
    );
    let body = json!({"fields": {"title": "Call back"}});
    let send = |key: &str, body: &Value| {
        http()
            .post(&url)
            .header("Idempotency-Key", key)
            .json(body)
            .send()
    };
    let r1 = send("k1", &body).await.unwrap();
    assert_eq!(r1.status(), 200);
    assert!(r1.headers().get("idempotent-replayed").is_none());
    let v1: Value = r1.json().await.unwrap();
    let r2 = send("k1", &body).await.unwrap();
    assert_eq!(r2.headers()["idempotent-replayed"], "true");
    assert_eq!(r2.json::<Value>().await.unwrap()["result"], v1["result"]);
    let r3 = send("k1", &json!({"fields": {"title": "other"}}))
        .await
        .unwrap();
    assert_eq!(r3.status(), 422);
    let v3: Value = r3.json().await.unwrap();
    assert_eq!(
        v3["error"]["code"],
        "BITRIX_REST_V3_EXCEPTION_IDEMPOTENCYKEYREUSEDEXCEPTION"
    );
    let r4 = send("k2", &body).await.unwrap();
    let v4: Value = r4.json().await.unwrap();
    assert_ne!(v4["result"]["item"]["id"], v1["result"]["item"]["id"]);
    // v3 wants JSON only and reads no query string.
    let r = http()
        .post(&url)
        .header("content-type", "application/x-www-form-urlencoded")
        .body("fields[title]=x")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 400);
    assert_eq!(
        r.json::<Value>().await.unwrap()["error"]["code"],
        "BITRIX_REST_V3_EXCEPTION_INVALIDJSONEXCEPTION"
    );
    let get = format!(
        "{}/rest/api/1/{}/tasks.task.get?id=1",
        sb.base_url(),
        sb.info().webhook_code
    );
    let r = http().get(&get).send().await.unwrap();
    assert_eq!(
        r.json::<Value>().await.unwrap()["error"]["code"],
        "BITRIX_REST_V3_EXCEPTION_VALIDATION_REQUESTVALIDATIONEXCEPTION"
    );
}

#[tokio::test]
async fn form_and_multipart_bodies() {
    let sb = start(SandboxConfig {
        limits: false,
        ..Default::default()
    })
    .await;
    let url = format!("{}crm.contact.add", sb.info().webhook_url);
    let r = http()
        .post(&url)
        .header("content-type", "application/x-www-form-urlencoded")
        .body(
            "fields[NAME]=Ann&fields[EMAIL][0][VALUE]=ann%40x.io&fields[EMAIL][0][VALUE_TYPE]=WORK",
        )
        .send()
        .await
        .unwrap();
    assert_eq!(r.json::<Value>().await.unwrap()["result"], json!(1));
    let form = reqwest::multipart::Form::new().text("fields[NAME]", "Bob");
    let r = http().post(&url).multipart(form).send().await.unwrap();
    assert_eq!(r.json::<Value>().await.unwrap()["result"], json!(2));
    let r = http()
        .get(format!("{}crm.contact.get?id=1", sb.info().webhook_url))
        .send()
        .await
        .unwrap();
    let v: Value = r.json().await.unwrap();
    assert_eq!(v["result"]["NAME"], "Ann");
    assert_eq!(v["result"]["HAS_EMAIL"], "Y");
    let (_, v) = hook(
        &sb,
        "crm.contact.list",
        json!({"select": ["ID", "EMAIL"], "filter": {"EMAIL": "ann@x.io"}}),
    )
    .await;
    assert_eq!(v["result"][0]["EMAIL"][0]["VALUE"], "ann@x.io");
}

mod events;
mod limits;
mod oauth;
