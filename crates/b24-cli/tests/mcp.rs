//! `b24 mcp` end to end: the real binary as a subprocess, driven by the rmcp client over stdio,
//! against an in-process sandbox portal. Every gate is checked against what actually reached
//! the sandbox and what the audit log recorded.

mod support;

use std::time::Duration;

use rmcp::model::{
    CallToolRequestParams, CallToolResult, ClientCapabilities, ClientConfig, ElicitRequestParams,
    ElicitResult, ElicitationAction, ElicitationCapability, FormElicitationCapability,
    Implementation,
};
use rmcp::service::{RequestContext, RunningService};
use rmcp::transport::TokioChildProcess;
use rmcp::{ClientHandler, ErrorData, RoleClient, ServiceExt};
use serde_json::{Value, json};
use support::*;

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
