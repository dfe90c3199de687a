//! The gate behind the tools over stdio: refused writes, plans, idempotency keys, a batch
//! that hides a destructive command, a person asked to confirm, and the server's policy flags.
//! Each is checked against what reached the sandbox and what the audit log recorded.
//!
//! A module of `tests/it/mcp.rs`, so it uses its helpers.

use super::*;

#[tokio::test(flavor = "multi_thread")]
async fn read_then_refused_write_then_plan_and_apply_all_audited() {
    let sb = sandbox_with_leads(3).await;
    let env = Env::webhook(&sb);
    let client = connect(&env).await;

    // A read.
    let r = call(&client, "b24_read", json!({"method": "crm.lead.list"})).await;
    assert!(!is_error(&r), "{}", text(&r));
    let v = structured(&r);
    assert_eq!(v["result"].as_array().map(Vec::len), Some(3), "{v}");
    assert_eq!(calls_of(&sb, "crm.lead.list"), 1);

    // A portal error is a tool error with the Bitrix24 code (or description) and the fix.
    let r = call(
        &client,
        "b24_read",
        json!({"method": "crm.lead.get", "params": {"id": 987654}}),
    )
    .await;
    assert!(is_error(&r), "{}", text(&r));
    let v = structured(&r);
    assert_eq!(v["error"], "api", "{v}");
    assert!(
        v["description"].as_str().is_some_and(|d| !d.is_empty()),
        "{v}"
    );
    assert!(text(&r).contains("Fix:"), "{}", text(&r));

    // b24_read refuses a write and points at the write path.
    let add = json!({"fields": {"TITLE": "From MCP"}});
    let r = call(
        &client,
        "b24_read",
        json!({"method": "crm.lead.add", "params": add}),
    )
    .await;
    assert!(is_error(&r));
    assert!(
        text(&r).contains("b24_plan") && text(&r).contains("b24_write"),
        "{}",
        text(&r)
    );

    // A write without confirmation: refused, with the fix, and nothing sent.
    let r = call(
        &client,
        "b24_write",
        json!({"method": "crm.lead.add", "params": add}),
    )
    .await;
    assert!(is_error(&r), "{}", text(&r));
    let t = text(&r);
    assert!(
        t.contains("confirm: true") && t.contains("b24_plan") && t.contains("b24_apply"),
        "{t}"
    );
    assert!(
        !t.contains("--confirm-write"),
        "CLI flags leak into MCP: {t}"
    );
    assert_eq!(structured(&r)["error"], "refused");
    assert_eq!(calls_of(&sb, "crm.lead.add"), 0, "{:?}", sb.request_log());

    // Plan it: still nothing sent.
    let r = call(
        &client,
        "b24_plan",
        json!({"method": "crm.lead.add", "params": add}),
    )
    .await;
    assert!(!is_error(&r), "{}", text(&r));
    let plan = structured(&r);
    let plan_id = plan["plan_id"].as_str().expect("plan_id").to_string();
    assert_eq!(plan["risk"], "write");
    assert_eq!(calls_of(&sb, "crm.lead.add"), 0);

    // Apply it: exactly one add.
    let r = call(&client, "b24_apply", json!({"plan_id": plan_id})).await;
    assert!(!is_error(&r), "{}", text(&r));
    let new_id = structured(&r)["result"].clone();
    assert!(
        new_id.as_u64().is_some() || new_id.as_str().is_some(),
        "{new_id}"
    );
    assert_eq!(calls_of(&sb, "crm.lead.add"), 1);

    // A plan runs once.
    let r = call(&client, "b24_apply", json!({"plan_id": plan_id})).await;
    assert!(is_error(&r));
    assert!(text(&r).contains("already applied"), "{}", text(&r));
    assert_eq!(calls_of(&sb, "crm.lead.add"), 1);

    // A destructive call with only confirm: refused (this client cannot be asked).
    let r = call(
        &client,
        "b24_write",
        json!({"method": "crm.lead.delete", "params": {"id": 1}, "confirm": true}),
    )
    .await;
    assert!(is_error(&r));
    assert!(
        text(&r).contains("confirm_destructive: true"),
        "{}",
        text(&r)
    );
    assert_eq!(calls_of(&sb, "crm.lead.delete"), 0);

    // Both the refusal and the apply are in the audit log, with origin mcp.
    let audit = mcp_audit(&env);
    let denied = audit
        .iter()
        .any(|r| r["method"] == "crm.lead.add" && r["decision"] == "deny");
    let planned = audit
        .iter()
        .any(|r| r["decision"] == "plan" && r["plan_id"] == plan_id.as_str());
    let applied = audit.iter().any(|r| {
        r["method"] == "crm.lead.add"
            && r["decision"] == "allow"
            && r["outcome"] == "ok"
            && r["plan_id"] == plan_id.as_str()
    });
    assert!(
        denied && planned && applied,
        "audit (origin mcp): {audit:#?}"
    );
    // No secret in the audit log.
    let raw = std::fs::read(env.state_dir().join("audit.jsonl")).unwrap();
    assert_no_secrets("the audit log", &raw, &[sb.info().webhook_code.clone()]);
    client.cancel().await.ok();
    sb.shutdown().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn confirmed_write_with_idempotency_key_happens_once() {
    let sb = sandbox_with_leads(0).await;
    let env = Env::webhook(&sb);
    let client = connect(&env).await;
    let args = json!({"method": "crm.lead.add", "params": {"fields": {"TITLE": "Once"}},
                      "confirm": true, "idempotency_key": "mcp-test-1"});
    let first = call(&client, "b24_write", args.clone()).await;
    assert!(!is_error(&first), "{}", text(&first));
    let again = call(&client, "b24_write", args).await;
    assert!(!is_error(&again), "{}", text(&again));
    assert_eq!(structured(&again)["replayed"], true);
    assert_eq!(structured(&first)["result"], structured(&again)["result"]);
    assert_eq!(calls_of(&sb, "crm.lead.add"), 1);

    // b24_write with a plan id runs that plan, and only for the planned call.
    let add = json!({"fields": {"TITLE": "Planned"}});
    let r = call(
        &client,
        "b24_plan",
        json!({"method": "crm.lead.add", "params": add}),
    )
    .await;
    let plan_id = structured(&r)["plan_id"].as_str().unwrap().to_string();
    let r = call(
        &client,
        "b24_write",
        json!({"method": "crm.lead.update", "params": {"id": 1}, "plan_id": plan_id}),
    )
    .await;
    assert!(is_error(&r), "{}", text(&r));
    assert_eq!(
        calls_of(&sb, "crm.lead.add") + calls_of(&sb, "crm.lead.update"),
        1
    );
    let r = call(
        &client,
        "b24_write",
        json!({"method": "crm.lead.add", "params": add, "plan_id": plan_id}),
    )
    .await;
    assert!(!is_error(&r), "{}", text(&r));
    assert_eq!(calls_of(&sb, "crm.lead.add"), 2);
    client.cancel().await.ok();
    sb.shutdown().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn batch_cannot_hide_a_destructive_command() {
    let sb = sandbox_with_leads(3).await;
    let env = Env::webhook(&sb);
    let client = connect(&env).await;
    let r = call(
        &client,
        "b24_batch",
        json!({"commands": [
            {"key": "a", "method": "crm.lead.list"},
            {"key": "b", "method": "crm.lead.delete", "params": {"id": 2}}
        ], "confirm": true}),
    )
    .await;
    assert!(is_error(&r));
    assert!(text(&r).contains("crm.lead.delete"), "{}", text(&r));
    assert_eq!(sb.stats().requests, 0, "{:?}", sb.request_log());
    // Reads only: one request, per-command outcomes.
    let r = call(
        &client,
        "b24_batch",
        json!({"commands": [
            {"key": "me", "method": "user.current"},
            {"key": "leads", "method": "crm.lead.list"}
        ]}),
    )
    .await;
    assert!(!is_error(&r), "{}", text(&r));
    let v = structured(&r);
    assert_eq!(v["ok"], 2, "{v}");
    assert_eq!(v["results"][1]["key"], "leads");
    client.cancel().await.ok();
    sb.shutdown().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_person_can_confirm_or_decline_a_destructive_call() {
    let sb = sandbox_with_leads(3).await;
    let env = Env::webhook(&sb);
    for accept in [false, true] {
        let cmd = tokio::process::Command::from(env.cmd(&["mcp"]));
        let client = Person { accept }
            .serve(TokioChildProcess::new(cmd).unwrap())
            .await
            .expect("initialize");
        let r = call(
            &client,
            "b24_write",
            json!({"method": "crm.lead.delete", "params": {"id": 1}, "confirm": true}),
        )
        .await;
        if accept {
            assert!(!is_error(&r), "{}", text(&r));
            assert_eq!(calls_of(&sb, "crm.lead.delete"), 1);
        } else {
            assert!(is_error(&r));
            assert!(text(&r).contains("declined"), "{}", text(&r));
            assert_eq!(calls_of(&sb, "crm.lead.delete"), 0);
        }
        client.cancel().await.ok();
    }
    let audit = mcp_audit(&env);
    assert!(
        audit
            .iter()
            .any(|r| r["decision"] == "confirmed_by_person" && r["via"] == "elicitation"),
        "{audit:#?}"
    );
    sb.shutdown().await;
}

/// The policy flags given to `b24 mcp` bind every tool; no tool argument loosens them.
#[tokio::test(flavor = "multi_thread")]
async fn server_policy_flags_bind_every_tool() {
    let sb = sandbox_with_leads(2).await;
    let env = Env::webhook(&sb);
    let cmd = tokio::process::Command::from(env.cmd(&["mcp", "--read-only"]));
    let client = ().serve(TokioChildProcess::new(cmd).unwrap()).await.unwrap();
    let r = call(
        &client,
        "b24_write",
        json!({"method": "crm.lead.add", "params": {"fields": {"TITLE": "x"}}, "confirm": true, "confirm_destructive": true}),
    )
    .await;
    assert!(
        is_error(&r) && text(&r).contains("read-only"),
        "{}",
        text(&r)
    );
    let r = call(&client, "b24_plan", json!({"method": "crm.lead.add"})).await;
    assert!(
        is_error(&r) && text(&r).contains("read-only"),
        "{}",
        text(&r)
    );
    let r = call(&client, "b24_read", json!({"method": "crm.lead.list"})).await;
    assert!(!is_error(&r), "{}", text(&r));
    assert_eq!(calls_of(&sb, "crm.lead.add"), 0);
    client.cancel().await.ok();
    sb.shutdown().await;
}
