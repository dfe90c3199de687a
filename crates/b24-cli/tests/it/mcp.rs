//! `b24 mcp` end to end: the real binary as a subprocess, driven by the rmcp client over stdio
//! and over Streamable HTTP (`b24 mcp --http`, bearer tokens per client), against an in-process
//! sandbox portal. Every gate is checked against what actually reached
//! the sandbox and what the audit log recorded.

use std::time::Duration;

use crate::support::*;
use rmcp::model::{
    CallToolRequestParams, CallToolResult, ClientCapabilities, ClientConfig, ElicitRequestParams,
    ElicitResult, ElicitationAction, ElicitationCapability, FormElicitationCapability,
    Implementation,
};
use rmcp::service::{RequestContext, RunningService};
use rmcp::transport::TokioChildProcess;
use rmcp::{ClientHandler, ErrorData, RoleClient, ServiceExt};
use serde_json::{Value, json};

type Client = RunningService<RoleClient, ()>;

/// Start `b24 mcp` in `env` with a plain client (no elicitation).
async fn connect(env: &Env) -> Client {
    let cmd = tokio::process::Command::from(env.cmd(&["mcp"]));
    let transport = TokioChildProcess::new(cmd).expect("spawn b24 mcp");
    tokio::time::timeout(Duration::from_secs(30), ().serve(transport))
        .await
        .expect("initialize in time")
        .expect("initialize")
}

async fn call<S: rmcp::service::Service<RoleClient>>(
    c: &RunningService<RoleClient, S>,
    tool: &str,
    args: Value,
) -> CallToolResult {
    let Value::Object(args) = args else {
        panic!("arguments must be an object")
    };
    let p = CallToolRequestParams::new(tool.to_string()).with_arguments(args);
    tokio::time::timeout(Duration::from_secs(60), c.call_tool(p))
        .await
        .expect("answer in time")
        .unwrap_or_else(|e| panic!("{tool}: protocol error {e}"))
}

fn text(r: &CallToolResult) -> String {
    r.content
        .iter()
        .filter_map(|c| c.as_text().map(|t| t.text.clone()))
        .collect::<Vec<_>>()
        .join("\n")
}

fn structured(r: &CallToolResult) -> Value {
    r.structured_content.clone().unwrap_or(Value::Null)
}

fn is_error(r: &CallToolResult) -> bool {
    r.is_error == Some(true)
}

/// The audit log's records with origin `mcp`.
fn mcp_audit(env: &Env) -> Vec<Value> {
    let path = env.state_dir().join("audit.jsonl");
    let text = std::fs::read_to_string(&path).unwrap_or_default();
    text.lines()
        .filter_map(|l| serde_json::from_str::<Value>(l).ok())
        .filter(|r| r["origin"] == "mcp")
        .collect()
}

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

/// A client that can be asked, and answers `confirm` with a fixed choice.
#[derive(Clone)]
struct Person {
    accept: bool,
}

impl ClientHandler for Person {
    fn get_info(&self) -> ClientConfig {
        let mut caps = ClientCapabilities::default();
        caps.elicitation =
            Some(ElicitationCapability::new().with_form(FormElicitationCapability::default()));
        ClientConfig::new(caps, Implementation::new("test-person", "1.0"))
    }

    async fn create_elicitation(
        &self,
        request: ElicitRequestParams,
        _ctx: RequestContext<RoleClient>,
    ) -> Result<ElicitResult, ErrorData> {
        let ElicitRequestParams::FormElicitationParams { message, .. } = request else {
            return Ok(ElicitResult::new(ElicitationAction::Decline));
        };
        assert!(message.contains("crm.lead.delete"), "{message}");
        Ok(if self.accept {
            ElicitResult::new(ElicitationAction::Accept).with_content(json!({"confirm": true}))
        } else {
            ElicitResult::new(ElicitationAction::Decline)
        })
    }
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

/// Raw JSON-RPC lines on stdin: bad input gets protocol errors and the server keeps serving.
#[tokio::test(flavor = "multi_thread")]
async fn bad_messages_get_protocol_errors_and_the_server_keeps_serving() {
    use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
    let env = Env::bare();
    let mut cmd = tokio::process::Command::from(env.cmd(&["mcp"]));
    cmd.stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .kill_on_drop(true);
    let mut child = cmd.spawn().expect("spawn b24 mcp");
    let mut stdin = child.stdin.take().unwrap();
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    let mut send = async |v: &str| {
        stdin.write_all(v.as_bytes()).await.unwrap();
        stdin.write_all(b"\n").await.unwrap();
        stdin.flush().await.unwrap();
    };
    async fn next(lines: &mut tokio::io::Lines<BufReader<tokio::process::ChildStdout>>) -> Value {
        let l = tokio::time::timeout(Duration::from_secs(30), lines.next_line())
            .await
            .expect("a reply in time")
            .unwrap()
            .expect("a line");
        serde_json::from_str(&l).unwrap_or_else(|e| panic!("stdout line is not JSON ({e}): {l}"))
    }
    let list = r#"{"jsonrpc":"2.0","id":"list","method":"tools/list"}"#;
    send(r#"{"jsonrpc":"2.0","id":1,"method":"initialize","params":{"protocolVersion":"2025-11-25","capabilities":{},"clientInfo":{"name":"raw","version":"1"}}}"#).await;
    let init = next(&mut lines).await;
    assert_eq!(init["result"]["serverInfo"]["name"], "b24", "{init}");
    send(r#"{"jsonrpc":"2.0","method":"notifications/initialized"}"#).await;

    // Not JSON at all: -32700 with id null.
    send(r#"{"jsonrpc":"2.0","id":2,"method":"tools/li"#).await;
    let e = next(&mut lines).await;
    assert_eq!(e["error"]["code"], -32700, "{e}");
    assert!(e["id"].is_null());
    send(list).await;
    let ok = next(&mut lines).await;
    assert_eq!(ok["id"], "list");
    assert!(ok["result"]["tools"].as_array().unwrap().len() >= 9);

    // An unknown tool: a protocol error for that id.
    send(r#"{"jsonrpc":"2.0","id":3,"method":"tools/call","params":{"name":"b24_drop_database","arguments":{}}}"#).await;
    let e = next(&mut lines).await;
    assert_eq!(
        (e["id"].clone(), e["error"]["code"].clone()),
        (json!(3), json!(-32602)),
        "{e}"
    );
    send(list).await;
    assert_eq!(next(&mut lines).await["id"], "list");

    // Arguments that do not match the schema: a tool result with isError naming the problem,
    // so the model sees the message and can fix its call.
    for (id, args) in [
        (4, r#"{"methd":"crm.lead.list"}"#),
        (5, r#"{"method":42}"#),
        (6, r#"{}"#),
        (7, r#"{"method":"crm.lead%2Elist"}"#),
    ] {
        send(&format!(
            r#"{{"jsonrpc":"2.0","id":{id},"method":"tools/call","params":{{"name":"b24_read","arguments":{args}}}}}"#
        ))
        .await;
        let e = next(&mut lines).await;
        assert_eq!(e["id"], id, "{e}");
        assert_eq!(e["result"]["isError"], true, "{e}");
        let text = e["result"]["content"][0]["text"].as_str().unwrap_or("");
        assert!(
            text.contains("b24_read") || text.contains("malformed"),
            "{e}"
        );
    }
    // Valid JSON that is not a JSON-RPC message: an Invalid Request error.
    send(r#"{"hello":"world"}"#).await;
    let e = next(&mut lines).await;
    assert_eq!(e["error"]["code"], -32600, "{e}");
    send(list).await;
    assert_eq!(next(&mut lines).await["id"], "list");

    // Closing stdin ends the server cleanly.
    #[allow(clippy::drop_non_drop)]
    drop(send);
    drop(stdin);
    let status = tokio::time::timeout(Duration::from_secs(30), child.wait())
        .await
        .expect("exits on stdin EOF")
        .unwrap();
    assert!(status.success(), "{status:?}");
}

/// The protocol versions current clients speak: the stateless 2026-07-28 (`server/discover`,
/// no handshake) and the `initialize` era (2025-06-18 here); the same tools in both.
#[tokio::test(flavor = "multi_thread")]
async fn both_protocol_eras_are_served() {
    use rmcp::ClientServiceExt;
    use rmcp::model::ProtocolVersion;
    use rmcp::service::ClientLifecycleMode;
    let sb = sandbox_with_leads(2).await;
    let env = Env::webhook(&sb);

    let cmd = tokio::process::Command::from(env.cmd(&["mcp"]));
    let modern = ()
        .serve_with_lifecycle(
            TokioChildProcess::new(cmd).unwrap(),
            ClientLifecycleMode::Discover {
                preferred_versions: vec![ProtocolVersion::V_2026_07_28],
            },
        )
        .await
        .expect("server/discover");
    let info = modern.peer_info().expect("discover result");
    assert_eq!(info.protocol_version, ProtocolVersion::V_2026_07_28);
    assert_eq!(modern.list_all_tools().await.unwrap().len(), 9);
    let r = call(&modern, "b24_read", json!({"method": "crm.lead.list"})).await;
    assert!(!is_error(&r), "{}", text(&r));
    // No elicitation on the stateless protocol: a destructive call is refused with the fix.
    let r = call(
        &modern,
        "b24_write",
        json!({"method": "crm.lead.delete", "params": {"id": 1}, "confirm": true}),
    )
    .await;
    assert!(is_error(&r) && text(&r).contains("confirm_destructive"));
    modern.cancel().await.ok();

    #[derive(Clone)]
    struct Old;
    impl ClientHandler for Old {
        fn get_info(&self) -> ClientConfig {
            let mut c = ClientConfig::new(
                ClientCapabilities::default(),
                Implementation::new("old-client", "1.0"),
            );
            c.protocol_version = ProtocolVersion::V_2025_06_18;
            c
        }
    }
    let cmd = tokio::process::Command::from(env.cmd(&["mcp"]));
    let old = Old
        .serve(TokioChildProcess::new(cmd).unwrap())
        .await
        .expect("initialize");
    assert_eq!(
        old.peer_info().unwrap().protocol_version,
        ProtocolVersion::V_2025_06_18
    );
    let r = call(&old, "b24_read", json!({"method": "user.current"})).await;
    assert!(!is_error(&r), "{}", text(&r));
    old.cancel().await.ok();
    assert_eq!(calls_of(&sb, "crm.lead.delete"), 0);
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

// ---- Streamable HTTP (`b24 mcp --http`) with bearer tokens per client ----

use rmcp::transport::StreamableHttpClientTransport;
use rmcp::transport::streamable_http_client::StreamableHttpClientTransportConfig;

/// `b24 mcp --http 127.0.0.1:0` running in `env`; killed on drop.
struct HttpServer {
    child: tokio::process::Child,
    url: String,
    stderr: std::sync::Arc<std::sync::Mutex<String>>,
    /// The task draining stderr; it ends when the server's stderr closes.
    drain: Option<tokio::task::JoinHandle<()>>,
}

impl HttpServer {
    async fn start(env: &Env, extra: &[&str]) -> HttpServer {
        use tokio::io::AsyncBufReadExt;
        let mut args = vec!["mcp", "--http", "127.0.0.1:0"];
        args.extend_from_slice(extra);
        let mut cmd = tokio::process::Command::from(env.cmd(&args));
        cmd.stderr(std::process::Stdio::piped())
            .stdout(std::process::Stdio::null())
            .kill_on_drop(true);
        let mut child = cmd.spawn().expect("spawn b24 mcp --http");
        let mut lines = tokio::io::BufReader::new(child.stderr.take().unwrap()).lines();
        let stderr = std::sync::Arc::new(std::sync::Mutex::new(String::new()));
        let url = tokio::time::timeout(Duration::from_secs(30), async {
            while let Ok(Some(l)) = lines.next_line().await {
                stderr.lock().unwrap().push_str(&format!("{l}\n"));
                if let Some(rest) = l.split("serving Streamable HTTP at ").nth(1) {
                    return rest.split_whitespace().next().unwrap().to_string();
                }
            }
            panic!("b24 mcp --http ended: {}", stderr.lock().unwrap());
        })
        .await
        .expect("the server says where it listens");
        // Keep draining stderr so the server never blocks on a full pipe.
        let keep = stderr.clone();
        let drain = tokio::spawn(async move {
            while let Ok(Some(l)) = lines.next_line().await {
                keep.lock().unwrap().push_str(&format!("{l}\n"));
            }
        });
        HttpServer {
            child,
            url,
            stderr,
            drain: Some(drain),
        }
    }

    /// Everything the server wrote to stderr, once it has exited (the drain reaches EOF).
    async fn stderr_at_exit(&mut self) -> String {
        if let Some(d) = self.drain.take() {
            let _ = tokio::time::timeout(Duration::from_secs(20), d).await;
        }
        self.stderr()
    }

    fn stderr(&self) -> String {
        self.stderr.lock().unwrap().clone()
    }
}

/// Issue a token for `name` with `policy` (policy.toml text) through the real CLI.
async fn token_add(env: &Env, name: &str, policy: &str) -> String {
    let file = env.dir.path().join(format!("{name}.policy.toml"));
    std::fs::write(&file, policy).unwrap();
    let o = env
        .run(&[
            "mcp",
            "token",
            "add",
            name,
            "--policy",
            file.to_str().unwrap(),
        ])
        .await;
    assert_eq!(code(&o), 0, "{}", stderr(&o));
    let v = json(&o);
    assert_eq!(v["name"], name);
    v["token"].as_str().expect("token").to_string()
}

/// A client of the stateless 2026-07-28 revision (`server/discover`, no session).
async fn http_client_stateless(url: &str, token: &str) -> Client {
    use rmcp::ClientServiceExt;
    use rmcp::model::ProtocolVersion;
    use rmcp::service::ClientLifecycleMode;
    let cfg = StreamableHttpClientTransportConfig::with_uri(url.to_string()).auth_header(token);
    let c = ()
        .serve_with_lifecycle(
            StreamableHttpClientTransport::from_config(cfg),
            ClientLifecycleMode::Discover {
                preferred_versions: vec![ProtocolVersion::V_2026_07_28],
            },
        )
        .await
        .expect("server/discover");
    assert_eq!(
        c.peer_info().unwrap().protocol_version,
        ProtocolVersion::V_2026_07_28
    );
    c
}

/// A client of the `initialize` era (`serve` runs the handshake; the server gives a session).
async fn http_client(url: &str, token: &str) -> Result<Client, String> {
    let cfg = StreamableHttpClientTransportConfig::with_uri(url.to_string()).auth_header(token);
    let transport = StreamableHttpClientTransport::from_config(cfg);
    tokio::time::timeout(Duration::from_secs(30), ().serve(transport))
        .await
        .expect("initialize in time")
        .map_err(|e| e.to_string())
}

/// A raw JSON-RPC POST to the endpoint (what a misbehaving client could send).
async fn raw_post(
    url: &str,
    headers: &[(&str, &str)],
    body: Value,
) -> (reqwest::StatusCode, reqwest::header::HeaderMap, String) {
    let mut rb = reqwest::Client::new()
        .post(url)
        .header("content-type", "application/json")
        .header("accept", "application/json, text/event-stream");
    for (k, v) in headers {
        rb = rb.header(*k, *v);
    }
    let r = rb.body(body.to_string()).send().await.expect("http");
    let (s, h) = (r.status(), r.headers().clone());
    (s, h, r.text().await.unwrap_or_default())
}

fn initialize_body() -> Value {
    json!({"jsonrpc": "2.0", "id": 1, "method": "initialize", "params": {
        "protocolVersion": "2025-06-18", "capabilities": {},
        "clientInfo": {"name": "raw", "version": "1"}}})
}

fn tools_call_body(method: &str) -> Value {
    json!({"jsonrpc": "2.0", "id": 2, "method": "tools/call",
           "params": {"name": "b24_read", "arguments": {"method": method}}})
}

/// Every audit record (any origin).
fn audit_records(env: &Env) -> Vec<Value> {
    let text = std::fs::read_to_string(env.state_dir().join("audit.jsonl")).unwrap_or_default();
    text.lines()
        .filter_map(|l| serde_json::from_str::<Value>(l).ok())
        .collect()
}

#[tokio::test(flavor = "multi_thread")]
async fn http_needs_a_valid_token_and_nothing_unauthenticated_reaches_the_portal() {
    let sb = sandbox_with_leads(2).await;
    let env = Env::webhook(&sb);
    let token = token_add(&env, "reader", "read_only = true\n").await;
    let server = HttpServer::start(&env, &[]).await;
    assert!(
        server.url.starts_with("http://127.0.0.1:"),
        "{}",
        server.url
    );

    // No token, a wrong token, a token of the wrong scheme, the token in the query string: 401,
    // whatever the request asks (initialize or a tool call straight away).
    let wrong = format!("{token}x");
    let cases: Vec<(Vec<(&str, String)>, bool)> = vec![
        (vec![], false),
        (vec![("authorization", format!("Bearer {wrong}"))], true),
        (vec![("authorization", "Bearer b24mcp_".to_string())], true),
        (vec![("authorization", format!("Basic {token}"))], true),
        (vec![("authorization", "Bearer".to_string())], true),
    ];
    for (headers, invalid) in &cases {
        let h: Vec<(&str, &str)> = headers.iter().map(|(k, v)| (*k, v.as_str())).collect();
        for body in [initialize_body(), tools_call_body("crm.lead.list")] {
            let (status, hdrs, text) = raw_post(&server.url, &h, body).await;
            assert_eq!(status, 401, "{headers:?}: {text}");
            let challenge = hdrs["www-authenticate"].to_str().unwrap();
            assert!(challenge.starts_with("Bearer "), "{challenge}");
            assert_eq!(challenge.contains("invalid_token"), *invalid, "{challenge}");
            assert!(!text.contains(&token), "the answer echoes the token");
        }
    }
    let (status, _, _) = raw_post(
        &format!("{}?access_token={token}", server.url),
        &[],
        tools_call_body("crm.lead.list"),
    )
    .await;
    assert_eq!(status, 401, "a token in the URL is not accepted");
    // The real client with a wrong token cannot even initialize.
    let Err(e) = http_client(&server.url, &wrong).await else {
        panic!("a client with a wrong token initialized")
    };
    assert!(
        e.contains("401") || e.to_lowercase().contains("auth"),
        "{e}"
    );
    assert!(
        sb.request_log().is_empty(),
        "unauthenticated requests reached the portal: {:?}",
        sb.request_log()
    );
    assert!(
        audit_records(&env).is_empty(),
        "unauthenticated requests reached the gate"
    );

    // A foreign browser Origin is refused (DNS rebinding), even with a valid token.
    let bearer = format!("Bearer {token}");
    let (status, _, _) = raw_post(
        &server.url,
        &[
            ("authorization", bearer.as_str()),
            ("origin", "http://evil.example"),
        ],
        initialize_body(),
    )
    .await;
    assert_eq!(status, 403);
    // So is a Host that is not this server's (a rebinding attacker's name for 127.0.0.1).
    let (status, _, _) = raw_post(
        &server.url,
        &[
            ("authorization", bearer.as_str()),
            ("host", "attacker.example"),
        ],
        initialize_body(),
    )
    .await;
    assert_eq!(status, 403);
    assert!(sb.request_log().is_empty());

    // With the token: the guarded path, with the client's name in the audit record.
    let client = http_client(&server.url, &token).await.expect("initialize");
    let r = call(&client, "b24_read", json!({"method": "crm.lead.list"})).await;
    assert!(!is_error(&r), "{}", text(&r));
    assert_eq!(structured(&r)["result"].as_array().map(Vec::len), Some(2));
    assert_eq!(calls_of(&sb, "crm.lead.list"), 1);
    let audit = audit_records(&env);
    assert!(
        audit.iter().any(|r| r["method"] == "crm.lead.list"
            && r["origin"] == "mcp"
            && r["client"] == "reader"),
        "{audit:#?}"
    );
    // The token never reaches the audit log, the guard store or stderr.
    let raw = std::fs::read(env.state_dir().join("audit.jsonl")).unwrap();
    assert_no_secrets("the audit log", &raw, std::slice::from_ref(&token));
    let db = std::fs::read(env.state_dir().join("guard.db")).unwrap();
    assert_no_secrets("the guard store", &db, &[token[7..].to_string()]);
    assert_no_secrets("the server's stderr", server.stderr().as_bytes(), &[token]);
    client.cancel().await.ok();
    sb.shutdown().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn http_tokens_have_their_own_policy_audit_identity_and_write_budget() {
    let sb = sandbox_with_leads(1).await;
    let env = Env::webhook(&sb);
    let reader = token_add(&env, "reader", "read_only = true\n").await;
    let leads = token_add(
        &env,
        "lead-writer",
        "allow = [\"crm.lead.*\"]\nmax_writes_per_hour = 1\n",
    )
    .await;
    let other = token_add(
        &env,
        "second-writer",
        "allow = [\"crm.lead.*\"]\nmax_writes_per_hour = 1\n",
    )
    .await;
    let server = HttpServer::start(&env, &[]).await;
    let (a, b, c) = tokio::join!(
        http_client(&server.url, &reader),
        http_client(&server.url, &leads),
        http_client(&server.url, &other)
    );
    let (a, b, c) = (a.unwrap(), b.unwrap(), c.unwrap());
    let add = |title: &str| json!({"method": "crm.lead.add", "params": {"fields": {"TITLE": title}}, "confirm": true});

    // Token A (read-only) is refused the write token B may do; nothing reaches the portal.
    let r = call(&a, "b24_write", add("from reader")).await;
    assert!(is_error(&r), "{}", text(&r));
    assert!(text(&r).contains("read-only"), "{}", text(&r));
    assert!(text(&r).contains("MCP client reader"), "{}", text(&r));
    // The fix names who can change it, not CLI flags the model does not have.
    assert!(
        !text(&r).contains("--read-only") && text(&r).contains("ask the operator"),
        "{}",
        text(&r)
    );
    assert_eq!(calls_of(&sb, "crm.lead.add"), 0);
    let r = call(&b, "b24_write", add("from lead-writer")).await;
    assert!(!is_error(&r), "{}", text(&r));
    assert_eq!(calls_of(&sb, "crm.lead.add"), 1);

    // B's file allows only leads: deals are refused for B and readable for A.
    let r = call(&b, "b24_read", json!({"method": "crm.deal.list"})).await;
    assert!(is_error(&r), "{}", text(&r));
    let r = call(&a, "b24_read", json!({"method": "crm.deal.list"})).await;
    assert!(!is_error(&r), "{}", text(&r));
    assert_eq!(calls_of(&sb, "crm.deal.list"), 1);

    // Budgets are per client: B has spent its one write, C still has its own.
    let r = call(&b, "b24_write", add("B again")).await;
    assert!(is_error(&r), "{}", text(&r));
    assert!(text(&r).contains("write budget"), "{}", text(&r));
    assert_eq!(calls_of(&sb, "crm.lead.add"), 1);
    let r = call(&c, "b24_write", add("from second-writer")).await;
    assert!(!is_error(&r), "{}", text(&r));
    assert_eq!(calls_of(&sb, "crm.lead.add"), 2);

    // The audit log names each client, never a token.
    let audit = audit_records(&env);
    let has = |client: &str, decision: &str| {
        audit.iter().any(|r| {
            r["client"] == client && r["method"] == "crm.lead.add" && r["decision"] == decision
        })
    };
    assert!(has("reader", "deny"), "{audit:#?}");
    assert!(has("lead-writer", "allow"), "{audit:#?}");
    assert!(has("lead-writer", "deny"), "{audit:#?}");
    assert!(has("second-writer", "allow"), "{audit:#?}");
    assert!(
        audit
            .iter()
            .filter(|r| r["origin"] == "mcp")
            .all(|r| r["client"].is_string()),
        "a record over HTTP without its client: {audit:#?}"
    );
    let raw = std::fs::read(env.state_dir().join("audit.jsonl")).unwrap();
    assert_no_secrets("the audit log", &raw, &[reader, leads, other]);

    // A client's policy file that goes missing refuses that client's calls (fail closed).
    std::fs::remove_file(env.dir.path().join("reader.policy.toml")).unwrap();
    let before = sb.request_log().len();
    let r = call(&a, "b24_read", json!({"method": "crm.lead.list"})).await;
    assert!(is_error(&r), "{}", text(&r));
    assert!(text(&r).contains("reader"), "{}", text(&r));
    assert_eq!(sb.request_log().len(), before);
    for cl in [a, b, c] {
        cl.cancel().await.ok();
    }
    sb.shutdown().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn http_revoked_token_is_refused_at_its_next_request() {
    let sb = sandbox_with_leads(1).await;
    let env = Env::webhook(&sb);
    let token = token_add(&env, "temp", "read_only = true\n").await;
    let keep = token_add(&env, "keep", "read_only = true\n").await;
    let server = HttpServer::start(&env, &[]).await;
    let client = http_client(&server.url, &token).await.expect("initialize");
    let kept = http_client(&server.url, &keep).await.expect("initialize");
    let r = call(&client, "b24_read", json!({"method": "crm.lead.list"})).await;
    assert!(!is_error(&r), "{}", text(&r));
    assert_eq!(calls_of(&sb, "crm.lead.list"), 1);

    let o = env.run(&["mcp", "token", "revoke", "temp"]).await;
    assert_eq!(code(&o), 0, "{}", stderr(&o));
    assert_eq!(json(&o)["revoked"], true);
    let o = env.run(&["mcp", "token", "list"]).await;
    let list = json(&o);
    assert_eq!(list[1]["name"], "temp");
    assert_eq!(list[1]["active"], false);
    assert!(!stdout(&o).contains("b24mcp_"), "list shows a token");

    // The open session of the revoked token gets nothing more.
    let p = CallToolRequestParams::new("b24_read").with_arguments(
        json!({"method": "crm.lead.list"})
            .as_object()
            .unwrap()
            .clone(),
    );
    let res = tokio::time::timeout(Duration::from_secs(60), client.call_tool(p)).await;
    assert!(
        matches!(res, Ok(Err(_)) | Err(_)),
        "a revoked token was served: {res:?}"
    );
    // A new connection with it is refused; the other client goes on.
    assert!(http_client(&server.url, &token).await.is_err());
    let (status, _, _) = raw_post(
        &server.url,
        &[("authorization", format!("Bearer {token}").as_str())],
        initialize_body(),
    )
    .await;
    assert_eq!(status, 401);
    assert_eq!(calls_of(&sb, "crm.lead.list"), 1);
    let r = call(&kept, "b24_read", json!({"method": "crm.lead.list"})).await;
    assert!(!is_error(&r), "{}", text(&r));
    assert_eq!(calls_of(&sb, "crm.lead.list"), 2);
    // A revoked name is not issued again (old audit records keep meaning one client).
    let f = env.dir.path().join("temp.policy.toml");
    let o = env
        .run(&[
            "mcp",
            "token",
            "add",
            "temp",
            "--policy",
            f.to_str().unwrap(),
        ])
        .await;
    assert_eq!(code(&o), 2, "{}", stderr(&o));
    kept.cancel().await.ok();
    drop(client);
    sb.shutdown().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn http_concurrent_sessions_stay_apart() {
    let sb = sandbox_with_leads(3).await;
    let env = Env::webhook(&sb);
    let a = token_add(&env, "agent-a", "read_only = true\n").await;
    let b = token_add(&env, "agent-b", "read_only = true\n").await;
    let server = HttpServer::start(&env, &[]).await;

    // Eight clients (four per token) calling at the same time: six with sessions (the
    // `initialize` era), two stateless (2026-07-28).
    let mut tasks = Vec::new();
    for i in 0..8 {
        let (url, tok) = (
            server.url.clone(),
            if i % 2 == 0 { a.clone() } else { b.clone() },
        );
        tasks.push(tokio::spawn(async move {
            let c = if i >= 6 {
                http_client_stateless(&url, &tok).await
            } else {
                http_client(&url, &tok).await.expect("initialize")
            };
            for _ in 0..3 {
                let r = call(&c, "b24_read", json!({"method": "crm.lead.list"})).await;
                assert!(!is_error(&r), "{}", text(&r));
                assert_eq!(structured(&r)["result"].as_array().map(Vec::len), Some(3));
            }
            c.cancel().await.ok();
        }));
    }
    for t in tasks {
        t.await.expect("session task");
    }
    assert_eq!(calls_of(&sb, "crm.lead.list"), 24);
    let audit = audit_records(&env);
    let count = |c: &str| {
        audit
            .iter()
            .filter(|r| r["client"] == c && r["method"] == "crm.lead.list")
            .count()
    };
    // Each read is recorded once (intent and outcome may be one or two records).
    assert!(
        count("agent-a") >= 12 && count("agent-a") == count("agent-b"),
        "{audit:#?}"
    );

    // A session belongs to the token that opened it: another valid token cannot use it.
    let (status, hdrs, _) = raw_post(
        &server.url,
        &[("authorization", format!("Bearer {a}").as_str())],
        initialize_body(),
    )
    .await;
    assert_eq!(status, 200);
    let sid = hdrs["mcp-session-id"].to_str().unwrap().to_string();
    let before = calls_of(&sb, "crm.lead.list");
    let (status, _, _) = raw_post(
        &server.url,
        &[
            ("authorization", format!("Bearer {b}").as_str()),
            ("mcp-session-id", sid.as_str()),
            ("mcp-protocol-version", "2025-06-18"),
        ],
        tools_call_body("crm.lead.list"),
    )
    .await;
    assert_eq!(status, 404);
    assert_eq!(calls_of(&sb, "crm.lead.list"), before);
    sb.shutdown().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn http_refuses_cleartext_off_loopback_serves_tls_and_stops_on_sigterm() {
    let sb = sandbox_with_leads(1).await;
    let env = Env::webhook(&sb);
    // A non-loopback address without TLS is refused before anything listens.
    let o = env
        .run(&[
            "mcp",
            "--http",
            "0.0.0.0:0",
            "--allowed-host",
            "mcp.example.com",
        ])
        .await;
    assert_eq!(code(&o), 2, "{}", stderr(&o));
    assert!(stderr(&o).contains("--tls-cert"), "{}", stderr(&o));
    // A wildcard address must name its host names (DNS rebinding).
    let o = env
        .run(&["mcp", "--http", "0.0.0.0:0", "--behind-tls-proxy"])
        .await;
    assert_eq!(code(&o), 2, "{}", stderr(&o));
    assert!(stderr(&o).contains("--allowed-host"), "{}", stderr(&o));

    // HTTPS with the operator's certificate.
    let ck = rcgen::generate_simple_self_signed(vec!["localhost".to_string()]).unwrap();
    let (cert, key) = (
        env.dir.path().join("cert.pem"),
        env.dir.path().join("key.pem"),
    );
    std::fs::write(&cert, ck.cert.pem()).unwrap();
    std::fs::write(&key, ck.signing_key.serialize_pem()).unwrap();
    let token = token_add(&env, "tls", "read_only = true\n").await;
    let mut server = HttpServer::start(
        &env,
        &[
            "--tls-cert",
            cert.to_str().unwrap(),
            "--tls-key",
            key.to_str().unwrap(),
        ],
    )
    .await;
    assert!(server.url.starts_with("https://"), "{}", server.url);
    let url = server.url.replace("127.0.0.1", "localhost");
    let http = reqwest::Client::builder()
        .add_root_certificate(reqwest::Certificate::from_pem(ck.cert.pem().as_bytes()).unwrap())
        .build()
        .unwrap();
    let cfg = StreamableHttpClientTransportConfig::with_uri(url).auth_header(token);
    let client =
        ().serve(StreamableHttpClientTransport::with_client(http, cfg))
            .await
            .expect("initialize over https");
    let r = call(&client, "b24_read", json!({"method": "crm.lead.list"})).await;
    assert!(!is_error(&r), "{}", text(&r));
    assert_eq!(calls_of(&sb, "crm.lead.list"), 1);

    // SIGTERM with a session open: the server ends its sessions and exits 0.
    let pid = server.child.id().expect("pid") as i32;
    // SAFETY-free: libc::kill on the child we started.
    assert_eq!(unsafe_free_kill(pid), 0);
    let status = tokio::time::timeout(Duration::from_secs(20), server.child.wait())
        .await
        .expect("the server stops within the grace period")
        .unwrap();
    assert!(status.success(), "{status:?}: {}", server.stderr());
    // The task draining stderr may not have read the last line yet when the process ends:
    // wait for it to reach the end of the pipe.
    let err = server.stderr_at_exit().await;
    assert!(err.contains("stopped"), "{err}");
    drop(client);
    sb.shutdown().await;
}

/// SIGTERM to `pid` through the `kill` command (the workspace forbids unsafe code).
fn unsafe_free_kill(pid: i32) -> i32 {
    std::process::Command::new("kill")
        .args(["-TERM", &pid.to_string()])
        .status()
        .map(|s| s.code().unwrap_or(-1))
        .unwrap_or(-1)
}

/// With `B24_STORE_URL=postgres://…` a client's budget is shared by every host serving it: two
/// `b24 mcp --http` hosts (separate state dirs, one database) each issue a token named `agent`;
/// its one write per hour is spent on the first host and refused on the second, while another
/// client there still has its own.
#[tokio::test(flavor = "multi_thread")]
async fn http_client_budgets_are_shared_by_a_cluster_through_postgres() {
    let Some(url) = pg_test_url("mcp_client_budget").await else {
        return;
    };
    let sb = sandbox_with_leads(0).await;
    let policy = "allow = [\"crm.lead.*\"]\nmax_writes_per_hour = 1\n";
    let mut hosts = Vec::new();
    for _ in 0..2 {
        let mut env = Env::webhook(&sb);
        env.set("B24_STORE_URL", &url);
        hosts.push(env);
    }
    // The tokens live in PostgreSQL too: one issued on the first host serves the client on
    // both (and the name cannot be issued a second time on the other).
    let t1 = token_add(&hosts[0], "agent", policy).await;
    let t2 = t1.clone();
    let other = token_add(&hosts[1], "other", policy).await;
    let s1 = HttpServer::start(&hosts[0], &[]).await;
    let s2 = HttpServer::start(&hosts[1], &[]).await;
    let a1 = http_client(&s1.url, &t1).await.unwrap();
    let a2 = http_client(&s2.url, &t2).await.unwrap();
    let o2 = http_client(&s2.url, &other).await.unwrap();
    let add =
        json!({"method": "crm.lead.add", "params": {"fields": {"TITLE": "x"}}, "confirm": true});
    let r = call(&a1, "b24_write", add.clone()).await;
    assert!(!is_error(&r), "{}", text(&r));
    let r = call(&a2, "b24_write", add.clone()).await;
    assert!(
        is_error(&r) && text(&r).contains("write budget"),
        "{}",
        text(&r)
    );
    let r = call(&o2, "b24_write", add).await;
    assert!(!is_error(&r), "{}", text(&r));
    assert_eq!(calls_of(&sb, "crm.lead.add"), 2);
    for c in [a1, a2, o2] {
        c.cancel().await.ok();
    }
    sb.shutdown().await;
}

/// Over HTTP the person behind a client is asked too (elicitation on the request's stream), and
/// the confirmation is recorded under the client's name.
#[tokio::test(flavor = "multi_thread")]
async fn http_a_person_confirms_a_destructive_call_through_the_client() {
    let sb = sandbox_with_leads(3).await;
    let env = Env::webhook(&sb);
    let token = token_add(&env, "cleaner", "allow = [\"crm.lead.*\"]\n").await;
    let server = HttpServer::start(&env, &[]).await;
    for accept in [false, true] {
        let cfg = StreamableHttpClientTransportConfig::with_uri(server.url.clone())
            .auth_header(token.clone());
        let client = Person { accept }
            .serve(StreamableHttpClientTransport::from_config(cfg))
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
            assert!(
                is_error(&r) && text(&r).contains("declined"),
                "{}",
                text(&r)
            );
            assert_eq!(calls_of(&sb, "crm.lead.delete"), 0);
        }
        client.cancel().await.ok();
    }
    let audit = audit_records(&env);
    assert!(
        audit.iter().any(|r| r["decision"] == "confirmed_by_person"
            && r["via"] == "elicitation"
            && r["client"] == "cleaner"),
        "{audit:#?}"
    );
    sb.shutdown().await;
}

/// A client whose connection drops while a tool runs resumes the stream with `Last-Event-ID`
/// and gets the answer without the call being sent twice.
#[tokio::test(flavor = "multi_thread")]
async fn http_a_dropped_stream_resumes_with_last_event_id() {
    let sb = sandbox(SandboxConfig {
        seed_leads: 2,
        faults: "latency=1500ms".parse().unwrap(),
        ..Default::default()
    })
    .await;
    let env = Env::webhook(&sb);
    let token = token_add(&env, "resumer", "read_only = true\n").await;
    let server = HttpServer::start(&env, &[]).await;
    let bearer = format!("Bearer {token}");
    let (status, hdrs, _) = raw_post(
        &server.url,
        &[("authorization", bearer.as_str())],
        initialize_body(),
    )
    .await;
    assert_eq!(status, 200);
    let sid = hdrs["mcp-session-id"].to_str().unwrap().to_string();
    let session = [
        ("authorization", bearer.as_str()),
        ("mcp-session-id", sid.as_str()),
        ("mcp-protocol-version", "2025-06-18"),
    ];
    let (status, _, _) = raw_post(
        &server.url,
        &session,
        json!({"jsonrpc": "2.0", "method": "notifications/initialized"}),
    )
    .await;
    assert_eq!(status, 202);

    // The call starts; the client reads the priming event and then loses the connection.
    let mut rb = reqwest::Client::new()
        .post(&server.url)
        .header("content-type", "application/json")
        .header("accept", "application/json, text/event-stream");
    for (k, v) in session {
        rb = rb.header(k, v);
    }
    let mut resp = rb
        .body(tools_call_body("crm.lead.list").to_string())
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    let mut seen = String::new();
    let last_id = loop {
        let chunk = tokio::time::timeout(Duration::from_secs(10), resp.chunk())
            .await
            .expect("the priming event in time")
            .unwrap()
            .expect("stream open");
        seen.push_str(&String::from_utf8_lossy(&chunk));
        if let Some(id) = seen
            .lines()
            .find_map(|l| l.strip_prefix("id: ").map(str::to_string))
        {
            break id;
        }
    };
    assert!(!seen.contains("\"result\""), "answered too early: {seen}");
    drop(resp);

    // Reconnect with Last-Event-ID: the answer arrives, and the portal saw one call.
    let mut rb = reqwest::Client::new()
        .get(&server.url)
        .header("accept", "text/event-stream")
        .header("last-event-id", last_id.as_str());
    for (k, v) in session {
        rb = rb.header(k, v);
    }
    let mut resp = rb.send().await.unwrap();
    assert_eq!(resp.status(), 200);
    let mut body = String::new();
    while !body.contains("\"result\"") {
        let chunk = tokio::time::timeout(Duration::from_secs(10), resp.chunk())
            .await
            .unwrap_or_else(|_| panic!("no answer after resuming: {body}"))
            .unwrap();
        match chunk {
            Some(c) => body.push_str(&String::from_utf8_lossy(&c)),
            None => panic!("the resumed stream ended without the answer: {body}"),
        }
    }
    assert!(body.contains("\"id\":2"), "{body}");
    assert!(body.contains("crm.lead.list"), "{body}");
    assert_eq!(calls_of(&sb, "crm.lead.list"), 1);
    sb.shutdown().await;
}

/// Idempotency keys belong to their client: the same key from another client is a new write
/// (not a replay of the first client's answer, nor a collision with it).
#[tokio::test(flavor = "multi_thread")]
async fn http_idempotency_keys_are_per_client() {
    let sb = sandbox_with_leads(0).await;
    let env = Env::webhook(&sb);
    let a = token_add(&env, "writer-a", "allow = [\"crm.lead.*\"]\n").await;
    let b = token_add(&env, "writer-b", "allow = [\"crm.lead.*\"]\n").await;
    let server = HttpServer::start(&env, &[]).await;
    let ca = http_client(&server.url, &a).await.unwrap();
    let cb = http_client(&server.url, &b).await.unwrap();
    let args = json!({"method": "crm.lead.add", "params": {"fields": {"TITLE": "Once"}},
                      "confirm": true, "idempotency_key": "retry-1"});
    let first = call(&ca, "b24_write", args.clone()).await;
    assert!(!is_error(&first), "{}", text(&first));
    let again = call(&ca, "b24_write", args.clone()).await;
    assert_eq!(structured(&again)["replayed"], true, "{}", text(&again));
    assert_eq!(calls_of(&sb, "crm.lead.add"), 1);
    let other = call(&cb, "b24_write", args).await;
    assert!(!is_error(&other), "{}", text(&other));
    assert_eq!(structured(&other)["replayed"], false, "{}", text(&other));
    assert_ne!(structured(&other)["result"], structured(&first)["result"]);
    assert_eq!(calls_of(&sb, "crm.lead.add"), 2);
    ca.cancel().await.ok();
    cb.cancel().await.ok();
    sb.shutdown().await;
}

// Hostile clients of `b24 mcp --http` (forged tokens, foreign sessions, widening policy files).
#[path = "mcp/http_attacks.rs"]
mod http_attacks;
#[path = "mcp/resources.rs"]
mod resources;
#[path = "mcp/schemas.rs"]
mod schemas;
