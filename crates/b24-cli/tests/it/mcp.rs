//! `b24 mcp` end to end: the real binary as a subprocess, driven by the rmcp client over stdio
//! and over Streamable HTTP (`b24 mcp --http`, bearer tokens per client), against an in-process
//! sandbox portal. Every gate is checked against what actually reached
//! the sandbox and what the audit log recorded.
//!
//! The helpers its modules share are here; the tests are in `mcp/`, one file per concern.

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

pub(crate) type Client = RunningService<RoleClient, ()>;

/// Start `b24 mcp` in `env` with a plain client (no elicitation).
pub(crate) async fn connect(env: &Env) -> Client {
    let cmd = tokio::process::Command::from(env.cmd(&["mcp"]));
    let transport = TokioChildProcess::new(cmd).expect("spawn b24 mcp");
    tokio::time::timeout(Duration::from_secs(30), ().serve(transport))
        .await
        .expect("initialize in time")
        .expect("initialize")
}

pub(crate) async fn call<S: rmcp::service::Service<RoleClient>>(
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

pub(crate) fn text(r: &CallToolResult) -> String {
    r.content
        .iter()
        .filter_map(|c| c.as_text().map(|t| t.text.clone()))
        .collect::<Vec<_>>()
        .join("\n")
}

pub(crate) fn structured(r: &CallToolResult) -> Value {
    r.structured_content.clone().unwrap_or(Value::Null)
}

pub(crate) fn is_error(r: &CallToolResult) -> bool {
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

// Over stdio.
mod gates;
mod protocol;
mod tools;

// Over Streamable HTTP.
mod http_clients;
mod http_serving;
// Hostile clients of `b24 mcp --http` (forged tokens, foreign sessions, widening policy files).
mod http_attacks;

// The skill as resources and prompts, and the tools' schemas.
mod resources;
mod schemas;
