//! Issue 15: CRM reference data (statuses, funnels, stages) and a deal's stage check; revoked
//! OAuth tokens.

use b24_sandbox::SandboxConfig;
use serde_json::{Value, json};

use crate::support::{app, err, hook, http, start};

fn quiet() -> SandboxConfig {
    SandboxConfig {
        limits: false,
        ..Default::default()
    }
}

#[tokio::test]
async fn status_directories_and_funnels() {
    let sb = start(quiet()).await;
    let (s, b) = hook(
        &sb,
        "crm.status.list",
        json!({"order": {"SORT": "ASC"}, "filter": {"ENTITY_ID": "DEAL_STAGE"}}),
    )
    .await;
    assert_eq!(s, 200);
    let ids: Vec<&str> = b["result"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["STATUS_ID"].as_str().unwrap())
        .collect();
    assert_eq!(ids.first(), Some(&"NEW"));
    assert!(ids.contains(&"WON") && ids.contains(&"LOSE"));
    assert_eq!(b["total"], json!(ids.len()));
    let won = b["result"]
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["STATUS_ID"] == "WON")
        .unwrap();
    assert_eq!(won["SEMANTICS"], "S");
    assert_eq!(won["EXTRA"]["SEMANTICS"], "success");
    assert!(won["SORT"].is_string() && won["CATEGORY_ID"].is_null());

    let (_, b) = hook(
        &sb,
        "crm.status.entity.items",
        json!({"entityId": "STATUS"}),
    )
    .await;
    assert_eq!(
        b["result"][0],
        json!({"NAME": "Unassigned", "SORT": 10, "STATUS_ID": "NEW"})
    );
    let (s, b) = hook(&sb, "crm.status.entity.items", json!({"entityId": "NOPE"})).await;
    assert_eq!(
        (s, err(&b)),
        (
            400,
            ("", "The parameter entityId is not defined or invalid.")
        )
    );

    let (_, b) = hook(&sb, "crm.category.list", json!({"entityTypeId": 2})).await;
    let cats = b["result"]["categories"].as_array().unwrap();
    assert_eq!(cats.len(), 2);
    assert_eq!(
        (cats[0]["id"].clone(), cats[0]["isDefault"].clone()),
        (json!(0), json!("Y"))
    );
    assert_eq!(b["total"], json!(2));
    let (_, b) = hook(&sb, "crm.dealcategory.stage.list", json!({"id": 1})).await;
    assert_eq!(b["result"][0]["STATUS_ID"], "C1:NEW");
    let (s, _) = hook(&sb, "crm.dealcategory.stage.list", json!({"id": 77})).await;
    assert_eq!(s, 400);
    // They are listed and scoped like other CRM methods.
    let (_, b) = hook(&sb, "methods", json!({})).await;
    assert!(
        b["result"]
            .as_array()
            .unwrap()
            .contains(&json!("crm.status.list"))
    );
}

#[tokio::test]
async fn a_deal_stage_must_exist_in_its_funnel() {
    let sb = start(quiet()).await;
    let (s, b) = hook(
        &sb,
        "crm.deal.add",
        json!({"fields": {"TITLE": "x", "STAGE_ID": "NOT_A_STAGE"}}),
    )
    .await;
    assert_eq!(s, 400, "{b}");
    assert_eq!(err(&b).0, "");
    let (_, l) = hook(&sb, "crm.deal.list", json!({})).await;
    assert_eq!(l["total"], json!(0), "nothing was stored");
    // A stage of another funnel is refused too; the funnel's own prefix is accepted.
    let (s, _) = hook(
        &sb,
        "crm.deal.add",
        json!({"fields": {"CATEGORY_ID": 1, "STAGE_ID": "WON"}}),
    )
    .await;
    assert_eq!(s, 400);
    let (s, b) = hook(&sb, "crm.deal.add", json!({"fields": {"CATEGORY_ID": 1}})).await;
    assert_eq!(s, 200);
    let id = b["result"].clone();
    let (_, d) = hook(&sb, "crm.deal.get", json!({"id": id})).await;
    assert_eq!(
        d["result"]["STAGE_ID"], "C1:NEW",
        "a new deal starts in its funnel"
    );
    assert_eq!(
        hook(
            &sb,
            "crm.deal.update",
            json!({"id": id, "fields": {"STAGE_ID": "C1:WON"}})
        )
        .await
        .0,
        200
    );
    let (s, _) = hook(
        &sb,
        "crm.deal.update",
        json!({"id": id, "fields": {"STAGE_ID": "EXECUTING"}}),
    )
    .await;
    assert_eq!(s, 400, "the stored funnel is checked on update");
    let (s, b) = hook(
        &sb,
        "crm.item.add",
        json!({"entityTypeId": 2, "fields": {"title": "i", "stageId": "NOT_A_STAGE"}}),
    )
    .await;
    assert_eq!((s, err(&b).0), (400, "INVALID_ARG_VALUE"));
}

#[tokio::test]
async fn revoked_tokens_answer_invalid_token() {
    let sb = start(quiet()).await;
    assert_eq!(app(&sb, "user.current", json!({})).await.0, 200);
    let r = http()
        .post(format!("{}/_sandbox/revoke-tokens", sb.base_url()))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let (s, b) = app(&sb, "user.current", json!({})).await;
    assert_eq!((s, err(&b).0), (401, "invalid_token"));
    // An unknown token is still NO_AUTH_FOUND.
    let r = http()
        .post(format!("{}/rest/user.current", sb.base_url()))
        .json(&json!({"auth": "nosuchtoken"}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 401);
    assert_eq!(r.json::<Value>().await.unwrap()["error"], "NO_AUTH_FOUND");
    // Its refresh token is gone as well.
    let info = sb.info().clone();
    let r = http()
        .post(&info.oauth_token_url)
        .form(&[
            ("grant_type", "refresh_token"),
            ("client_id", info.client_id.as_str()),
            ("client_secret", info.client_secret.as_str()),
            ("refresh_token", info.refresh_token.as_str()),
        ])
        .send()
        .await
        .unwrap();
    assert_eq!(r.json::<Value>().await.unwrap()["error"], "invalid_grant");
}
