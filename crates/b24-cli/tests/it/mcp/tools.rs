//! The tools as a client sees them over stdio: the list with schemas and annotations,
//! `b24_describe` (and unknown parameters refused), bounded export pages, the catalog and queue
//! tools.
//!
//! A module of `tests/it/mcp.rs`, so it uses its helpers.

use super::*;

#[tokio::test(flavor = "multi_thread")]
async fn tools_are_listed_with_schemas_and_annotations() {
    let env = Env::bare();
    let client = connect(&env).await;
    let info = client.peer_info().expect("server info");
    let server = info.server_info.clone().expect("serverInfo");
    assert_eq!(server.name, "b24");
    assert_eq!(server.version, env!("CARGO_PKG_VERSION"));
    let instructions = info.instructions.clone().unwrap_or_default();
    assert!(
        instructions.contains("b24_plan") && instructions.contains("b24_apply"),
        "{instructions}"
    );
    let tools = client.list_all_tools().await.expect("tools/list");
    let mut names: Vec<&str> = tools.iter().map(|t| t.name.as_ref()).collect();
    names.sort();
    assert_eq!(
        names,
        [
            "b24_apply",
            "b24_batch",
            "b24_describe",
            "b24_export",
            "b24_plan",
            "b24_queue_status",
            "b24_read",
            "b24_search_methods",
            "b24_write"
        ]
    );
    let tool = |n: &str| tools.iter().find(|t| t.name == n).unwrap().clone();
    for ro in [
        "b24_read",
        "b24_export",
        "b24_describe",
        "b24_search_methods",
        "b24_queue_status",
    ] {
        let a = tool(ro).annotations.expect("annotations");
        assert_eq!(a.read_only_hint, Some(true), "{ro}");
    }
    for w in ["b24_write", "b24_apply", "b24_batch"] {
        let a = tool(w).annotations.expect("annotations");
        assert_eq!(a.read_only_hint, Some(false), "{w}");
        assert_eq!(a.destructive_hint, Some(true), "{w}");
    }
    assert_eq!(
        tool("b24_plan").annotations.unwrap().destructive_hint,
        Some(false)
    );
    // Schemas come from the Rust types; field docs become descriptions.
    let s = Value::Object((*tool("b24_write").input_schema).clone());
    assert_eq!(s["type"], "object");
    assert_eq!(s["required"], json!(["method"]), "{s}");
    for f in [
        "method",
        "params",
        "confirm",
        "confirm_destructive",
        "plan_id",
        "idempotency_key",
    ] {
        assert!(
            s["properties"][f]["description"].as_str().is_some(),
            "b24_write.{f} has no description: {s}"
        );
    }
    assert_eq!(s["additionalProperties"], json!(false));
    let e = Value::Object((*tool("b24_export").input_schema).clone());
    assert!(e["properties"]["max_items"].is_object() && e["properties"]["cursor"].is_object());
    client.cancel().await.ok();
}

/// MCP checks parameters by default: b24_describe returns them as structured content, and a
/// parameter the method does not take is refused with nothing sent.
#[tokio::test(flavor = "multi_thread")]
async fn describe_returns_parameters_and_unknown_ones_are_refused() {
    let sb = sandbox_with_leads(1).await;
    let env = Env::webhook(&sb);
    let client = connect(&env).await;
    let r = call(&client, "b24_describe", json!({"method": "crm.deal.add"})).await;
    let v = structured(&r);
    assert_eq!(v["parameters"]["status"], "complete", "{v}");
    let names: Vec<&str> = v["parameters"]["params"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|p| p["name"].as_str())
        .collect();
    assert_eq!(names, ["fields", "params"]);
    assert!(v.get("live_fields").is_none());
    let r = call(
        &client,
        "b24_describe",
        json!({"method": "crm.deal.update", "live": true}),
    )
    .await;
    let v = structured(&r);
    assert_eq!(v["live_fields"]["from"], "crm.deal.fields", "{v}");
    assert!(
        v["live_fields"]["fields"]
            .as_array()
            .unwrap()
            .iter()
            .any(|f| f["name"] == "TITLE" && f["documented"] == true && f["live"] == true),
        "{v}"
    );
    assert_eq!(calls_of(&sb, "crm.deal.fields"), 1);
    for (tool, method, params) in [
        (
            "b24_write",
            "crm.lead.update",
            json!({"id": 1, "feilds": {"TITLE": "x"}}),
        ),
        (
            "b24_write",
            "crm.lead.update",
            json!({"ID": 1, "fields": {}, "PARAMS": {"Evil": "Y"}}),
        ),
        (
            "b24_read",
            "crm.lead.get",
            json!({"id": 1, "Select": ["ID"]}),
        ),
        (
            "b24_plan",
            "crm.lead.update",
            json!({"id": 1, "fields[TITLE]": "x", "sneak[x]": 1}),
        ),
    ] {
        let mut args = json!({"method": method, "params": params});
        if tool == "b24_write" {
            args["confirm"] = json!(true);
        }
        let r = call(&client, tool, args).await;
        assert!(is_error(&r), "{tool} {params}: {}", text(&r));
        assert!(
            text(&r).contains("does not take"),
            "{tool} {params}: {}",
            text(&r)
        );
    }
    let r = call(
        &client,
        "b24_batch",
        json!({"commands": [{"method": "crm.lead.get", "params": {"id": 1, "EVIL": 1}}]}),
    )
    .await;
    assert!(is_error(&r), "{}", text(&r));
    let sent: Vec<String> = sb.request_log().into_iter().map(|l| l.method).collect();
    assert_eq!(
        sent,
        ["crm.deal.fields"],
        "only the describe read reached the portal"
    );
    // documented names in any case pass
    let r = call(
        &client,
        "b24_read",
        json!({"method": "crm.lead.get", "params": {"ID": 1}}),
    )
    .await;
    assert!(!is_error(&r), "{}", text(&r));
    client.cancel().await.ok();
    sb.shutdown().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn export_returns_bounded_pages_and_resumes_exactly() {
    let sb = sandbox_with_leads(120).await;
    let env = Env::webhook(&sb);
    let client = connect(&env).await;
    let mut ids = Vec::new();
    let r = call(
        &client,
        "b24_export",
        json!({"method": "crm.lead.list", "params": {"select": ["ID", "TITLE"]}, "max_items": 70}),
    )
    .await;
    assert!(!is_error(&r), "{}", text(&r));
    let v = structured(&r);
    assert_eq!(v["count"], 70, "{v}");
    assert_eq!(v["more"], true);
    let cursor = v["cursor"].as_str().expect("cursor").to_string();
    ids.extend(
        v["items"]
            .as_array()
            .unwrap()
            .iter()
            .map(|i| i["ID"].clone()),
    );
    let r = call(
        &client,
        "b24_export",
        json!({"method": "crm.lead.list", "params": {"select": ["TITLE"]}, "max_items": 500, "cursor": cursor}),
    )
    .await;
    let v = structured(&r);
    assert_eq!(v["count"], 50, "{v}");
    assert_eq!(v["more"], false);
    assert!(v["cursor"].is_null());
    ids.extend(
        v["items"]
            .as_array()
            .unwrap()
            .iter()
            .map(|i| i["ID"].clone()),
    );
    let mut uniq: Vec<String> = ids.iter().map(|i| i.to_string()).collect();
    uniq.sort();
    uniq.dedup();
    assert_eq!(uniq.len(), 120, "every lead exactly once");
    // A write method is not exportable.
    let r = call(&client, "b24_export", json!({"method": "crm.lead.add"})).await;
    assert!(is_error(&r));
    client.cancel().await.ok();
    sb.shutdown().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn catalog_and_queue_tools() {
    let env = Env::bare();
    let client = connect(&env).await;
    let r = call(
        &client,
        "b24_describe",
        json!({"method": "crm.lead.delete"}),
    )
    .await;
    let v = structured(&r);
    assert_eq!(v["risk"], "destructive", "{v}");
    assert_eq!(v["needs"], "confirm_destructive: true");
    let r = call(&client, "b24_describe", json!({"method": "crm.nope.zap"})).await;
    assert!(is_error(&r));
    let r = call(
        &client,
        "b24_search_methods",
        json!({"query": "crm.deal", "risk": "read", "limit": 5}),
    )
    .await;
    let v = structured(&r);
    let ms = v["methods"].as_array().unwrap();
    assert!(!ms.is_empty() && ms.len() <= 5);
    assert!(
        ms.iter()
            .all(|m| m["risk"] == "read" && m["name"].as_str().unwrap().contains("crm.deal"))
    );
    let r = call(&client, "b24_queue_status", json!({})).await;
    assert!(!is_error(&r), "{}", text(&r));
    let v = structured(&r);
    assert_eq!(
        (v["ready"].clone(), v["dead"].clone()),
        (json!(0), json!(0))
    );
    client.cancel().await.ok();
}
