//! Limits of `b24 mcp` a hostile client runs into: oversized or too many prompt arguments, more
//! HTTP sessions than a client (or the server) may hold, and idempotency keys that would let a
//! plan's apply collide with a caller's write — another client's, or the CLI's. Each attempt is
//! checked against the sandbox's request log (nothing reached the portal that should not have)
//! and the server must keep serving.

use std::time::Duration;

use crate::support::*;
use rmcp::model::GetPromptRequestParams;
use rmcp::transport::StreamableHttpClientTransport;
use rmcp::transport::streamable_http_client::StreamableHttpClientTransportConfig;
use rmcp::{ErrorData, ServiceExt};
use serde_json::{Value, json};

// The stdio client and the tool-call helpers are `mcp.rs`'s.
use crate::mcp::{Client, call as tool, connect as stdio, is_error as failed, structured, text};

/// Every method the sandbox has seen, in order.
fn portal_calls(sb: &Sandbox) -> Vec<String> {
    sb.request_log().into_iter().map(|r| r.method).collect()
}

async fn prompt(
    c: &Client,
    name: &str,
    args: serde_json::Map<String, Value>,
) -> Result<String, ErrorData> {
    let mut p = GetPromptRequestParams::new(name);
    p.arguments = Some(args);
    let r = tokio::time::timeout(Duration::from_secs(30), c.get_prompt(p))
        .await
        .expect("answer in time");
    match r {
        Ok(r) => Ok(r
            .messages
            .iter()
            .filter_map(|m| m.content.as_text().map(|t| t.text.clone()))
            .collect::<Vec<_>>()
            .join("\n")),
        Err(rmcp::ServiceError::McpError(e)) => Err(e),
        Err(other) => panic!("{name}: {other}"),
    }
}

fn obj(v: Value) -> serde_json::Map<String, Value> {
    match v {
        Value::Object(o) => o,
        _ => panic!("an object"),
    }
}

/// Prompt arguments are capped at 4096 bytes each and 8 in all: beyond, `-32602` naming the
/// limit (no panic, nothing filled in), and the server keeps serving. A long unknown name is
/// not echoed whole.
#[tokio::test(flavor = "multi_thread")]
async fn prompt_arguments_longer_or_more_than_the_caps_are_refused() {
    let sb = sandbox_with_leads(1).await;
    let env = Env::webhook(&sb);
    let c = stdio(&env).await;
    let start = portal_calls(&sb).len();
    let at_cap = "e".repeat(4096);
    let ok = prompt(&c, "diagnose_error", obj(json!({"error": at_cap})))
        .await
        .expect("4096 bytes are taken");
    assert!(ok.contains(&at_cap));
    let mut attempts = 0;
    for (what, args) in [
        ("4097 bytes", json!({"error": "e".repeat(4097)})),
        ("a megabyte", json!({"error": "e".repeat(1 << 20)})),
        (
            "multi-byte text over the cap",
            json!({"error": "я".repeat(2049)}),
        ),
        ("a big non-string", json!({"error": vec!["e"; 2000]})),
        (
            "an optional argument",
            json!({"error": "x", "method": "m".repeat(5000)}),
        ),
    ] {
        let e = prompt(&c, "diagnose_error", obj(args)).await.unwrap_err();
        assert_eq!(e.code.0, -32602, "{what}: {e:?}");
        assert!(e.message.contains("at most 4096"), "{what}: {}", e.message);
        attempts += 1;
    }
    // Too many arguments, whatever their names.
    let mut many = serde_json::Map::new();
    for i in 0..9 {
        many.insert(format!("a{i}"), json!("x"));
    }
    let e = prompt(&c, "diagnose_error", many).await.unwrap_err();
    assert_eq!(e.code.0, -32602);
    assert!(e.message.contains("limit 8"), "{}", e.message);
    let mut huge = serde_json::Map::new();
    for i in 0..10_000 {
        huge.insert(format!("k{i}"), json!(i));
    }
    let e = prompt(&c, "export_list", huge).await.unwrap_err();
    assert!(e.message.contains("10000 arguments"), "{}", e.message);
    // A long unknown name (or prompt name) comes back shortened.
    let long = "n".repeat(100_000);
    let e = prompt(&c, "diagnose_error", obj(json!({ long.clone(): "x" })))
        .await
        .unwrap_err();
    assert!(e.message.len() < 400, "{}", e.message.len());
    let e = prompt(&c, &long, serde_json::Map::new()).await.unwrap_err();
    assert!(e.message.len() < 600, "{}", e.message.len());
    attempts += 4;
    // Still serving, and nothing of this reached the portal.
    assert!(
        prompt(&c, "diagnose_error", obj(json!({"error": "ACCESS_DENIED"})))
            .await
            .is_ok()
    );
    assert_eq!(portal_calls(&sb).len(), start, "{:?}", portal_calls(&sb));
    eprintln!("prompt arguments: {attempts} oversized attempts refused");
    c.cancel().await.ok();
    sb.shutdown().await;
}

// ---- HTTP ----

/// `b24 mcp --http 127.0.0.1:0` with `extra` flags; killed on drop.
struct Server {
    _child: tokio::process::Child,
    url: String,
}

async fn serve(env: &Env, extra: &[&str]) -> Server {
    use tokio::io::AsyncBufReadExt;
    let mut args = vec!["mcp", "--http", "127.0.0.1:0"];
    args.extend_from_slice(extra);
    let mut cmd = tokio::process::Command::from(env.cmd(&args));
    cmd.stderr(std::process::Stdio::piped())
        .stdout(std::process::Stdio::null())
        .kill_on_drop(true);
    let mut child = cmd.spawn().expect("spawn b24 mcp --http");
    let mut lines = tokio::io::BufReader::new(child.stderr.take().unwrap()).lines();
    let url = tokio::time::timeout(Duration::from_secs(30), async {
        while let Ok(Some(l)) = lines.next_line().await {
            if let Some(rest) = l.split("serving Streamable HTTP at ").nth(1) {
                return rest.split_whitespace().next().unwrap().to_string();
            }
        }
        panic!("b24 mcp --http ended before serving");
    })
    .await
    .expect("the server says where it listens");
    // Keep reading stderr so the server never blocks on a full pipe.
    tokio::spawn(async move { while let Ok(Some(_)) = lines.next_line().await {} });
    Server { _child: child, url }
}

async fn token(env: &Env, name: &str, policy: &str) -> String {
    let file = env.dir.path().join(format!("{name}.toml"));
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
    json(&o)["token"].as_str().unwrap().to_string()
}

async fn http(url: &str, token: &str) -> Client {
    let cfg = StreamableHttpClientTransportConfig::with_uri(url.to_string()).auth_header(token);
    let t = StreamableHttpClientTransport::from_config(cfg);
    tokio::time::timeout(Duration::from_secs(30), ().serve(t))
        .await
        .expect("initialize in time")
        .expect("initialize")
}

/// A raw `initialize`: the status, the session id if one was opened, and the body.
async fn initialize(url: &str, token: &str) -> (u16, Option<String>, String) {
    let body = json!({"jsonrpc": "2.0", "id": 1, "method": "initialize", "params": {
        "protocolVersion": "2025-06-18", "capabilities": {},
        "clientInfo": {"name": "raw", "version": "1"}}});
    let r = reqwest::Client::new()
        .post(url)
        .header("content-type", "application/json")
        .header("accept", "application/json, text/event-stream")
        .header("authorization", format!("Bearer {token}"))
        .timeout(Duration::from_secs(20))
        .body(body.to_string())
        .send()
        .await
        .expect("http");
    let status = r.status().as_u16();
    let sid = r
        .headers()
        .get("mcp-session-id")
        .and_then(|v| v.to_str().ok())
        .map(str::to_string);
    (status, sid, r.text().await.unwrap_or_default())
}

async fn delete(url: &str, token: &str, sid: &str) -> u16 {
    reqwest::Client::new()
        .delete(url)
        .header("authorization", format!("Bearer {token}"))
        .header("mcp-session-id", sid)
        .header("mcp-protocol-version", "2025-06-18")
        .send()
        .await
        .expect("http")
        .status()
        .as_u16()
}

/// Refused with 429 and a JSON-RPC error naming `flag`; no session id handed out.
fn assert_capped((status, sid, body): &(u16, Option<String>, String), flag: &str) {
    assert_eq!(*status, 429, "{body}");
    assert!(sid.is_none(), "a session was opened: {sid:?}");
    let v: Value = serde_json::from_str(body).expect("a JSON-RPC error");
    assert_eq!(v["error"]["data"]["error"], "too_many_sessions", "{v}");
    assert!(
        v["error"]["message"].as_str().unwrap().contains(flag),
        "{v}"
    );
}

/// Sessions are capped per client and in all: at a cap a new session is refused with 429 (no
/// live session is closed for it — they all still serve), parallel opens cannot overshoot it,
/// a session ended with DELETE frees its place, and idle sessions expire and free theirs.
#[tokio::test(flavor = "multi_thread")]
async fn http_sessions_are_capped_per_client_and_in_all_and_idle_ones_expire() {
    let sb = sandbox_with_leads(1).await;
    let env = Env::webhook(&sb);
    let a = token(&env, "sess-a", "read_only = true\n").await;
    let b = token(&env, "sess-b", "read_only = true\n").await;
    let c = token(&env, "sess-c", "read_only = true\n").await;
    let server = serve(
        &env,
        &[
            "--max-sessions-per-client",
            "3",
            "--max-sessions",
            "5",
            "--session-idle-secs",
            "3",
        ],
    )
    .await;
    let url = server.url.as_str();
    let start = portal_calls(&sb).len();
    // Client A: two raw sessions and one real client, then the cap.
    let mut a_sessions = Vec::new();
    for _ in 0..2 {
        let (s, sid, body) = initialize(url, &a).await;
        assert_eq!(s, 200, "{body}");
        a_sessions.push(sid.unwrap());
    }
    let ca = http(url, &a).await;
    assert_capped(&initialize(url, &a).await, "--max-sessions-per-client 3");
    // Parallel opens by B: exactly two fit under the total of 5, whatever the race.
    let opens = futures::future::join_all((0..6).map(|_| initialize(url, &b))).await;
    let opened: Vec<String> = opens.iter().filter_map(|(_, s, _)| s.clone()).collect();
    assert_eq!(opened.len(), 2, "{opens:?}");
    for o in opens.iter().filter(|(_, s, _)| s.is_none()) {
        assert_capped(o, "--max-sessions 5");
    }
    // C has none yet, and still cannot open one: the server is full.
    assert_capped(&initialize(url, &c).await, "--max-sessions 5");
    // Nothing was evicted: A's real session still reads, once.
    let before = calls_of(&sb, "crm.lead.list");
    let r = tool(&ca, "b24_read", json!({"method": "crm.lead.list"})).await;
    assert!(!failed(&r), "{}", text(&r));
    assert_eq!(calls_of(&sb, "crm.lead.list"), before + 1);
    // Only the owner can end a session; then its place is free (for anyone under their cap).
    assert_eq!(delete(url, &b, &a_sessions[0]).await, 404);
    assert_capped(&initialize(url, &c).await, "--max-sessions 5");
    assert_eq!(delete(url, &a, &a_sessions[0]).await, 202);
    let (s, sid, body) = initialize(url, &c).await;
    assert_eq!(s, 200, "{body}");
    assert!(sid.is_some());
    assert_capped(&initialize(url, &c).await, "--max-sessions 5");
    // Everyone idle for longer than --session-idle-secs: the sessions expire and the places
    // come back — to the caps exactly (refused opens took none for good).
    ca.cancel().await.ok();
    tokio::time::sleep(Duration::from_secs(5)).await;
    for _ in 0..3 {
        let (s, _, body) = initialize(url, &a).await;
        assert_eq!(s, 200, "after idle: {body}");
    }
    assert_capped(&initialize(url, &a).await, "--max-sessions-per-client 3");
    for _ in 0..2 {
        assert_eq!(initialize(url, &c).await.0, 200);
    }
    assert_capped(&initialize(url, &b).await, "--max-sessions 5");
    // An expired session is gone, not revived.
    let r = reqwest::Client::new()
        .post(url)
        .header("content-type", "application/json")
        .header("accept", "application/json, text/event-stream")
        .header("authorization", format!("Bearer {b}"))
        .header("mcp-session-id", opened[0].as_str())
        .header("mcp-protocol-version", "2025-06-18")
        .body(json!({"jsonrpc": "2.0", "id": 2, "method": "tools/list"}).to_string())
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 404);
    // Of all this, the portal saw the one read.
    assert_eq!(
        portal_calls(&sb).len(),
        start + 1,
        "{:?}",
        portal_calls(&sb)
    );
    sb.shutdown().await;
}

/// Caps of 0 or an idle time of 0 are refused before listening.
#[tokio::test(flavor = "multi_thread")]
async fn http_session_caps_of_zero_are_refused() {
    let env = Env::bare();
    for flags in [
        ["--max-sessions", "0"],
        ["--max-sessions-per-client", "0"],
        ["--session-idle-secs", "0"],
    ] {
        let mut args = vec!["mcp", "--http", "127.0.0.1:0"];
        args.extend_from_slice(&flags);
        let o = tokio::time::timeout(Duration::from_secs(30), env.run(&args))
            .await
            .expect("refused at once");
        assert_eq!(code(&o), 2, "{flags:?}: {}", stderr(&o));
        assert!(stderr(&o).contains("at least 1"), "{}", stderr(&o));
    }
}

/// The audit records of writes (the intent: `outcome` sending) with their key.
fn keyed_writes(env: &Env) -> Vec<(Value, Value)> {
    let text = std::fs::read_to_string(env.state_dir().join("audit.jsonl")).unwrap_or_default();
    text.lines()
        .filter_map(|l| serde_json::from_str::<Value>(l).ok())
        .filter(|r| r["outcome"] == "sending")
        .map(|r| (r["client"].clone(), r["idempotency_key"].clone()))
        .collect()
}

/// A plan is applied under a key scoped like every other key of its caller: `mcp:NAME:plan-ID`
/// for an HTTP client, `plan-ID` outside. No caller can give a `plan-` key, so no write — of
/// another client, of the same client, of the CLI or of stdio MCP — can pre-empt a plan or be
/// replayed as its result; and the same caller key from two clients and the CLI is three writes.
#[tokio::test(flavor = "multi_thread")]
async fn plan_keys_are_scoped_and_no_caller_key_collides_with_them() {
    let sb = sandbox_with_leads(0).await;
    let env = Env::webhook(&sb);
    let a = token(&env, "keys-a", "allow = [\"crm.lead.*\"]\n").await;
    let b = token(&env, "keys-b", "allow = [\"crm.lead.*\"]\n").await;
    let server = serve(&env, &[]).await;
    let ca = http(&server.url, &a).await;
    let cb = http(&server.url, &b).await;
    let add = json!({"method": "crm.lead.add", "params": {"fields": {"TITLE": "Same"}}});
    let mut ids = Vec::new();
    for c in [&ca, &cb] {
        let p = tool(c, "b24_plan", add.clone()).await;
        assert!(!failed(&p), "{}", text(&p));
        ids.push(structured(&p)["plan_id"].as_str().unwrap().to_string());
    }
    let cli_plan = json(
        &env.run(&[
            "plan",
            "crm.lead.add",
            "--params",
            r#"{"fields":{"TITLE":"Same"}}"#,
        ])
        .await,
    );
    let cli_id = cli_plan["id"].as_str().unwrap().to_string();
    // Every caller tries to take a plan's key, its own or another's, with the very call the
    // plan holds (a replay would mark the plan applied without sending it).
    let mut w = add.clone();
    w["confirm"] = json!(true);
    let stdio_c = stdio(&env).await;
    let mut attempts = 0;
    for id in ids.iter().chain([&cli_id]) {
        for key in [format!("plan-{id}"), format!("  plan-{id}")] {
            w["idempotency_key"] = json!(key);
            for c in [&ca, &cb, &stdio_c] {
                let r = tool(c, "b24_write", w.clone()).await;
                assert!(failed(&r), "{key}: {}", text(&r));
                assert!(text(&r).contains("reserved"), "{}", text(&r));
                attempts += 1;
            }
            let o = env
                .run(&[
                    "call",
                    "crm.lead.add",
                    "--params",
                    r#"{"fields":{"TITLE":"Same"}}"#,
                    "--confirm-write",
                    "--idempotency-key",
                    &key,
                ])
                .await;
            assert_eq!(code(&o), 2, "{key}: {}", stderr(&o));
            assert!(stderr(&o).contains("reserved"), "{}", stderr(&o));
            attempts += 1;
        }
        // Nor an HTTP client's scoped plan key from outside HTTP MCP.
        for who in ["keys-a", "keys-b"] {
            let key = format!("mcp:{who}:plan-{id}");
            w["idempotency_key"] = json!(key);
            let r = tool(&stdio_c, "b24_write", w.clone()).await;
            assert!(failed(&r) && text(&r).contains("reserved"), "{}", text(&r));
            attempts += 1;
        }
    }
    assert_eq!(calls_of(&sb, "crm.lead.add"), 0, "{:?}", portal_calls(&sb));
    // Each plan applies once, for real, under its caller's scope.
    for (c, id) in [(&ca, &ids[0]), (&cb, &ids[1])] {
        let r = tool(c, "b24_apply", json!({"plan_id": id})).await;
        assert!(!failed(&r), "{}", text(&r));
        assert_eq!(structured(&r)["replayed"], false, "{}", text(&r));
    }
    let o = env.run(&["apply", &cli_id, "--confirm-write"]).await;
    assert_eq!(code(&o), 0, "{}", stderr(&o));
    assert_eq!(calls_of(&sb, "crm.lead.add"), 3);
    let writes = keyed_writes(&env);
    for want in [
        (
            json!("keys-a"),
            json!(format!("mcp:keys-a:plan-{}", ids[0])),
        ),
        (
            json!("keys-b"),
            json!(format!("mcp:keys-b:plan-{}", ids[1])),
        ),
        (Value::Null, json!(format!("plan-{cli_id}"))),
    ] {
        assert!(writes.contains(&want), "{want:?} not in {writes:#?}");
    }
    // One caller key, three callers: three writes, each with its own result, none replayed.
    w["idempotency_key"] = json!("retry-1");
    let ra = tool(&ca, "b24_write", w.clone()).await;
    let rb = tool(&cb, "b24_write", w.clone()).await;
    for r in [&ra, &rb] {
        assert!(!failed(r), "{}", text(r));
        assert_eq!(structured(r)["replayed"], false);
    }
    assert_ne!(structured(&ra)["result"], structured(&rb)["result"]);
    let o = env
        .run(&[
            "call",
            "crm.lead.add",
            "--params",
            r#"{"fields":{"TITLE":"Same"}}"#,
            "--confirm-write",
            "--idempotency-key",
            "retry-1",
        ])
        .await;
    assert_eq!(code(&o), 0, "{}", stderr(&o));
    let cli_result = json(&o);
    assert_ne!(cli_result, structured(&ra)["result"]);
    assert_ne!(cli_result, structured(&rb)["result"]);
    assert_eq!(calls_of(&sb, "crm.lead.add"), 6);
    // Repeated, each is its own caller's replay.
    let again = tool(&ca, "b24_write", w.clone()).await;
    assert_eq!(structured(&again)["replayed"], true, "{}", text(&again));
    assert_eq!(structured(&again)["result"], structured(&ra)["result"]);
    assert_eq!(calls_of(&sb, "crm.lead.add"), 6);
    eprintln!("plan keys: {attempts} attempts to take a plan's key, all refused before sending");
    for c in [ca, cb, stdio_c] {
        c.cancel().await.ok();
    }
    sb.shutdown().await;
}

/// Keys spelled `b24-…` (any case) are b24's own: a keyless write's key is `b24-` and a
/// UUIDv7, pruned a week after it is done. A caller's key of that shape would be pruned too
/// and a later retry sent again, so no caller — the CLI, stdio MCP, an HTTP client — may give
/// one; the refusal sends nothing. b24's own keys still work: keyless writes are sent (and
/// recorded under `b24-…`), and `--idempotent`'s derived keys replay.
#[tokio::test(flavor = "multi_thread")]
async fn caller_keys_spelled_like_b24s_own_are_refused_before_sending() {
    let sb = sandbox_with_leads(0).await;
    let env = Env::webhook(&sb);
    let a = token(&env, "b24keys", "allow = [\"crm.lead.*\"]\n").await;
    let server = serve(&env, &[]).await;
    let ca = http(&server.url, &a).await;
    let stdio_c = stdio(&env).await;
    let params = r#"{"fields":{"TITLE":"Mine"}}"#;
    let made = format!("b24-{}", uuid::Uuid::now_v7().simple());
    let keys = [
        made.clone(),
        made.to_uppercase(),
        format!("  {made}"),
        "b24-mine".to_string(),
        "B24-retry-1".to_string(),
        "b24-".to_string(),
    ];
    let mut w = json!({"method": "crm.lead.add", "params": {"fields": {"TITLE": "Mine"}},
                       "confirm": true});
    for key in &keys {
        w["idempotency_key"] = json!(key);
        for c in [&ca, &stdio_c] {
            let r = tool(c, "b24_write", w.clone()).await;
            assert!(failed(&r), "{key}: {}", text(&r));
            assert!(text(&r).contains("reserved"), "{key}: {}", text(&r));
        }
        let args = [
            "call",
            "crm.lead.add",
            "--params",
            params,
            "--confirm-write",
            "--idempotency-key",
            key,
        ];
        let o = env.run(&args).await;
        assert_eq!(code(&o), 2, "{key}: {}", stderr(&o));
        assert!(stderr(&o).contains("reserved"), "{key}: {}", stderr(&o));
    }
    assert!(
        !portal_calls(&sb).iter().any(|m| m == "crm.lead.add"),
        "a refused key sent nothing: {:?}",
        portal_calls(&sb)
    );
    // b24's own keys: keyless writes from each caller go out under a generated `b24-` key.
    w.as_object_mut().unwrap().remove("idempotency_key");
    for c in [&ca, &stdio_c] {
        let r = tool(c, "b24_write", w.clone()).await;
        assert!(!failed(&r), "{}", text(&r));
    }
    let o = env
        .run(&[
            "call",
            "crm.lead.add",
            "--params",
            params,
            "--confirm-write",
        ])
        .await;
    assert_eq!(code(&o), 0, "{}", stderr(&o));
    assert_eq!(calls_of(&sb, "crm.lead.add"), 3);
    let generated = keyed_writes(&env)
        .into_iter()
        .filter(|(_, k)| k.as_str().is_some_and(|k| k.starts_with("b24-")))
        .count();
    assert_eq!(generated, 3, "{:#?}", keyed_writes(&env));
    // And `--idempotent`'s derived key: sent once, then replayed.
    for _ in 0..2 {
        let o = env
            .run(&[
                "call",
                "crm.lead.add",
                "--params",
                params,
                "--confirm-write",
                "--idempotent",
            ])
            .await;
        assert_eq!(code(&o), 0, "{}", stderr(&o));
    }
    assert_eq!(calls_of(&sb, "crm.lead.add"), 4);
    for c in [ca, stdio_c] {
        c.cancel().await.ok();
    }
    sb.shutdown().await;
}
