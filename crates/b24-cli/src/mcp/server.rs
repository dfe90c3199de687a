//! The MCP server: its state, the catalog tools, argument checking and the handler. The
//! portal tools are in [`super::tools`], their argument types in [`super::args`], and the
//! person behind the client (elicitation) in [`super::person`].
//!
//! Every call to the portal goes through the gate (`b24_guard::gate`) with `Origin::Mcp`: the
//! same policy, the same refusals, the same idempotency store and the same audit log as the
//! CLI. When the client supports elicitation, the person confirms destructive calls. The
//! annotations are hints for the client; the gates are enforced here regardless of them.
//!
//! Over HTTP every request carries the authenticated client ([`McpClient`], put into the
//! request's extensions by [`super::http`]); the tool call runs with it in a task-local, and
//! [`B24Mcp::gate`] narrows the policy by the client's file and names it in the audit records.
//! A server built for HTTP refuses every portal tool when no client is attached (fail closed).

use std::sync::Arc;

use b24_guard::clients::McpClient;
use b24_guard::gate::{Gate, GateError, Origin};
use b24_guard::{Catalog, Risk};
use rmcp::handler::server::router::tool::ToolRouter;
use rmcp::handler::server::wrapper::Parameters;
use rmcp::model::{
    CallToolResult, Implementation, RequestMetaObject, ServerCapabilities, ServerConfig,
};
use rmcp::{ErrorData, Peer, RoleServer, ServerHandler, tool, tool_handler, tool_router};
use serde_json::{Value, json};

use super::args::{
    ApplyArgs, BatchArgs, DescribeArgs, ExportArgs, PlanArgs, QueueArgs, ReadArgs, RiskArg,
    SearchArgs, WriteArgs,
};
use super::errors::{self, tool_error_value};
use super::person::McpPerson;
use crate::exec;
use crate::exit::{self, Exit};
use crate::globals::Globals;

tokio::task_local! {
    /// The HTTP client the current tool call acts for (set around each call by `call_tool`).
    static CLIENT: Option<Arc<McpClient>>;
}

/// Shown to the client at initialization: how to use the tools safely.
pub const INSTRUCTIONS: &str = "b24 gives access to one Bitrix24 portal with guardrails.
Reads: b24_read (read-only methods), b24_export (a bounded set of pages with a resume cursor), b24_batch (many commands in few requests).
Find methods with b24_search_methods and check their scope, risk and paging with b24_describe.
Writes are gated. The reviewed path: b24_plan records the exact call (nothing is sent) and returns a plan_id; show it to the person; then b24_apply {plan_id} runs it exactly once (destructive plans also need confirm_destructive: true).
A direct b24_write needs confirm: true, and destructive methods (delete, ...) need confirm_destructive: true. Give writes an idempotency_key so a retry can never duplicate them.
A refused call returns isError with the reason and the fix, and nothing reaches the portal. The operator's policy can forbid methods outright; no argument overrides it.
b24_queue_status reports the local event queue and dead-letter queue.
Resources: the skill's playbook (b24://skill/playbook), recipes, scenarios, setup notes and one reference per capability pack (b24://skill/packs/core, .../packs/comms, ...); read the playbook first and the pack you need, not everything.
Prompts: update_crm_record (find, plan, apply), export_list, setup_event_handling and diagnose_error lay out the safe path for those tasks.";

/// The MCP server: the tools over one process's configuration.
#[derive(Clone)]
pub struct B24Mcp {
    g: Arc<Globals>,
    elicit: bool,
    /// Served over HTTP: every portal tool needs an authenticated client.
    needs_client: bool,
    tool_router: ToolRouter<Self>,
}

pub(super) fn invalid(msg: impl Into<String>) -> ErrorData {
    ErrorData::invalid_params(msg.into(), None)
}

/// A method name for the catalog tools (normalised like every other name).
fn method_name(m: &str) -> Result<String, ErrorData> {
    b24_guard::method::normalise(m)
        .map(|m| m.to_string())
        .map_err(|e| invalid(e.to_string()))
}

impl B24Mcp {
    /// The server for stdio: the process's own policy and budget.
    pub fn new(g: Globals, elicit: bool) -> B24Mcp {
        B24Mcp {
            g: Arc::new(g),
            elicit,
            needs_client: false,
            tool_router: Self::router(),
        }
    }

    /// Every tool, with portable input schemas and output schemas.
    fn router() -> ToolRouter<Self> {
        let mut r = Self::portal_router() + Self::catalog_router();
        super::schema::finish(&mut r);
        r
    }

    /// The server for HTTP: every tool call acts for the client that authenticated the request.
    pub fn for_http(g: Arc<Globals>, elicit: bool) -> B24Mcp {
        B24Mcp {
            g,
            elicit,
            needs_client: true,
            tool_router: Self::router(),
        }
    }

    /// The gate, built per tool call so operator policy edits (and a client's policy file)
    /// apply at once. Over HTTP it acts for the request's client: its policy file narrows the
    /// operator's, the audit records name it, and its writes count in its own budget.
    pub(super) fn gate(&self) -> anyhow::Result<Gate> {
        let client = CLIENT.try_with(Clone::clone).ok().flatten();
        match client {
            Some(c) => exec::gate_for_client(&self.g, Origin::Mcp, &c),
            None if self.needs_client => Err(Exit::new(
                exit::POLICY,
                "refused: this request carries no authenticated MCP client, so nothing is sent",
            )),
            None => exec::gate(&self.g, Origin::Mcp),
        }
    }

    pub(super) fn person(&self, peer: Peer<RoleServer>, meta: &RequestMetaObject) -> McpPerson {
        let meta_declared = meta
            .client_capabilities()
            .and_then(|c| c.elicitation)
            .is_some_and(|c| c.form.is_some() || c.url.is_none());
        McpPerson {
            peer,
            enabled: self.elicit,
            meta_declared,
        }
    }

    pub(super) fn fail(&self, e: &anyhow::Error) -> CallToolResult {
        tool_error_value(b24_guard::redact::value(&errors::error_value(e)))
    }

    pub(super) fn fail_gate(&self, e: GateError) -> CallToolResult {
        self.fail(&exec::gate_error(e))
    }

    /// A tool's answer. Top-level nulls are dropped: the output schemas declare one type per
    /// field and "absent" for "does not apply" (only `result`, the portal's own value, may be
    /// null).
    pub(super) fn ok(&self, v: Value) -> CallToolResult {
        let mut v = b24_guard::redact::value(&v);
        if let Value::Object(o) = &mut v {
            o.retain(|k, x| !x.is_null() || k == "result");
        }
        CallToolResult::structured(v)
    }
}

#[tool_router(router = catalog_router)]
impl B24Mcp {
    /// One method from the catalog.
    #[tool(
        name = "b24_describe",
        description = "Describe a Bitrix24 REST method from b24's catalog of 1,600+ documented methods: its parameters (name, type, required, allowed values, nested fields), result shape and an example; scope, risk (read/write/admin/destructive) and the confirmation it needs, paging, idempotency, documentation link and the errors to expect. Parameters a method does not take are refused before sending.",
        annotations(
            title = "Describe a method",
            read_only_hint = true,
            open_world_hint = false
        )
    )]
    async fn b24_describe(
        &self,
        Parameters(a): Parameters<DescribeArgs>,
    ) -> Result<CallToolResult, ErrorData> {
        let method = method_name(&a.method)?;
        let mut v = match describe(&method) {
            Ok(v) => v,
            Err(v) => return Ok(tool_error_value(v)),
        };
        if a.live
            && let Some(doc) = b24_guard::knowledge::Knowledge::builtin().get(&method)
        {
            let extra = Value::Object(a.fields_params.unwrap_or_default());
            v["live_fields"] = match self.gate() {
                Ok(gate) => match b24_guard::knowledge::fetch_live(&gate, &doc, extra).await {
                    Ok(Some(r)) => serde_json::to_value(r).unwrap_or(Value::Null),
                    Ok(None) => {
                        json!({"skipped": "no *.fields companion, or it needs fields_params"})
                    }
                    Err(e) => json!({"error": gate.redact_text(&e.to_string())}),
                },
                Err(e) => json!({"error": crate::exit::chain_text(&e)}),
            };
        }
        Ok(self.ok(v))
    }

    /// Search the method catalog.
    #[tool(
        name = "b24_search_methods",
        description = "Search b24's catalog of documented Bitrix24 REST methods by name substring or scope, capability pack and risk. Returns name, scope, risk, pack, api, whether it lists, and the documentation link.",
        annotations(
            title = "Search methods",
            read_only_hint = true,
            open_world_hint = false
        )
    )]
    async fn b24_search_methods(
        &self,
        Parameters(a): Parameters<SearchArgs>,
    ) -> Result<CallToolResult, ErrorData> {
        let limit = a.limit.unwrap_or(50);
        if limit == 0 || limit > 500 {
            return Err(invalid("`limit` must be between 1 and 500"));
        }
        let risk = a.risk.map(|r| match r {
            RiskArg::Read => Risk::Read,
            RiskArg::Write => Risk::Write,
            RiskArg::Admin => Risk::Admin,
            RiskArg::Destructive => Risk::Destructive,
        });
        let query = a.query.as_deref().map(str::trim).filter(|q| !q.is_empty());
        let found = Catalog::builtin().search(query, a.pack.as_deref(), risk);
        let methods: Vec<Value> = found
            .iter()
            .take(limit as usize)
            .map(|m| json!({"name": m.name, "scope": m.scope, "risk": m.risk, "pack": m.pack, "api": m.api, "lists": m.lists, "deprecated": m.deprecated, "doc": m.doc_url()}))
            .collect();
        Ok(self.ok(json!({
            "matches": found.len(),
            "returned": methods.len(),
            "methods": methods,
        })))
    }

    /// Event queue and dead-letter queue.
    #[tool(
        name = "b24_queue_status",
        description = "The local event queue (filled by `b24 events serve` / `b24 worker`): events ready, running, processed, dead-lettered (DLQ), and the age of the oldest waiting event.",
        annotations(
            title = "Event queue status",
            read_only_hint = true,
            open_world_hint = false
        )
    )]
    async fn b24_queue_status(
        &self,
        Parameters(_): Parameters<QueueArgs>,
    ) -> Result<CallToolResult, ErrorData> {
        Ok(match queue_status(&self.g).await {
            Ok(v) => self.ok(v),
            Err(e) => self.fail(&e),
        })
    }
}

/// Arguments that do not match a tool's input schema are a protocol error (`-32602`), as the
/// issue asks: rmcp would otherwise turn them into a tool result. Checked before routing, with
/// the same types the tools deserialize.
fn check_arguments(name: &str, args: Option<&rmcp::model::JsonObject>) -> Result<(), ErrorData> {
    fn parse<T: serde::de::DeserializeOwned>(
        name: &str,
        args: Option<&rmcp::model::JsonObject>,
    ) -> Result<(), ErrorData> {
        let v = Value::Object(args.cloned().unwrap_or_default());
        serde_json::from_value::<T>(v).map(|_| ()).map_err(|e| {
            ErrorData::invalid_params(
                format!("invalid arguments for {name}: {e} (see the tool's inputSchema)"),
                None,
            )
        })
    }
    match name {
        "b24_read" => parse::<ReadArgs>(name, args),
        "b24_write" => parse::<WriteArgs>(name, args),
        "b24_plan" => parse::<PlanArgs>(name, args),
        "b24_apply" => parse::<ApplyArgs>(name, args),
        "b24_batch" => parse::<BatchArgs>(name, args),
        "b24_export" => parse::<ExportArgs>(name, args),
        "b24_describe" => parse::<DescribeArgs>(name, args),
        "b24_search_methods" => parse::<SearchArgs>(name, args),
        "b24_queue_status" => parse::<QueueArgs>(name, args),
        _ => Ok(()), // unknown tools are refused by the router
    }
}

#[tool_handler(router = self.tool_router)]
impl ServerHandler for B24Mcp {
    async fn call_tool(
        &self,
        request: rmcp::model::CallToolRequestParams,
        context: rmcp::service::RequestContext<RoleServer>,
    ) -> Result<rmcp::model::CallToolResponse, ErrorData> {
        // Wrong arguments are the model's to fix, so they come back as a tool result with
        // isError and the message (as the MCP spec asks), not as a protocol error the model
        // never sees. Unknown tools stay protocol errors.
        let as_result = |e: ErrorData| {
            tool_error_value(json!({"error": "invalid_arguments", "message": e.message})).into()
        };
        if let Err(e) = check_arguments(&request.name, request.arguments.as_ref()) {
            return Ok(as_result(e));
        }
        // Over HTTP, the client that authenticated this request (see `super::http`).
        let client = context
            .extensions
            .get::<axum::http::request::Parts>()
            .and_then(|p| p.extensions.get::<Arc<McpClient>>().cloned());
        let tcc = rmcp::handler::server::tool::ToolCallContext::new(self, request, context);
        match CLIENT.scope(client, self.tool_router.call(tcc)).await {
            Err(e)
                if e.code == rmcp::model::ErrorCode::INVALID_PARAMS
                    && !e.message.contains("tool not found") =>
            {
                Ok(as_result(e))
            }
            other => other,
        }
    }

    async fn list_resources(
        &self,
        _request: Option<rmcp::model::PaginatedRequestParams>,
        _context: rmcp::service::RequestContext<RoleServer>,
    ) -> Result<rmcp::model::ListResourcesResult, ErrorData> {
        Ok(super::resources::list())
    }

    async fn list_resource_templates(
        &self,
        _request: Option<rmcp::model::PaginatedRequestParams>,
        _context: rmcp::service::RequestContext<RoleServer>,
    ) -> Result<rmcp::model::ListResourceTemplatesResult, ErrorData> {
        Ok(super::resources::templates())
    }

    async fn read_resource(
        &self,
        request: rmcp::model::ReadResourceRequestParams,
        _context: rmcp::service::RequestContext<RoleServer>,
    ) -> Result<rmcp::model::ReadResourceResponse, ErrorData> {
        super::resources::read(&request.uri).map(Into::into)
    }

    async fn list_prompts(
        &self,
        _request: Option<rmcp::model::PaginatedRequestParams>,
        _context: rmcp::service::RequestContext<RoleServer>,
    ) -> Result<rmcp::model::ListPromptsResult, ErrorData> {
        Ok(super::prompts::list())
    }

    async fn get_prompt(
        &self,
        request: rmcp::model::GetPromptRequestParams,
        _context: rmcp::service::RequestContext<RoleServer>,
    ) -> Result<rmcp::model::GetPromptResponse, ErrorData> {
        super::prompts::get(&request.name, request.arguments.as_ref()).map(Into::into)
    }

    fn get_info(&self) -> ServerConfig {
        let caps = ServerCapabilities::builder()
            .enable_tools()
            .enable_resources()
            .enable_prompts()
            .build();
        ServerConfig::new(caps)
            .with_server_info(Implementation::new("b24", env!("CARGO_PKG_VERSION")))
            .with_instructions(INSTRUCTIONS)
    }
}

/// The catalog entry of a method, with the confirmation it needs in MCP terms.
fn describe(method: &str) -> Result<Value, Value> {
    let cat = Catalog::builtin();
    let Some(m) = cat.get(method) else {
        let close: Vec<String> = cat
            .search(method.rsplit('.').nth(1), None, None)
            .iter()
            .take(8)
            .map(|m| m.name.clone())
            .collect();
        return Err(json!({
            "error": "not_found",
            "message": format!(
                "`{method}` is not in the catalog of documented methods; similar: {}. Search with b24_search_methods.",
                if close.is_empty() { "none".to_string() } else { close.join(", ") }
            ),
            "similar": close,
        }));
    };
    let mut errs = vec![
        json!({"code": "QUERY_LIMIT_EXCEEDED", "http": 503, "fix": errors::fix_for_code("QUERY_LIMIT_EXCEEDED", &m.name)}),
        json!({"code": "OPERATION_TIME_LIMIT", "http": 429, "fix": errors::fix_for_code("OPERATION_TIME_LIMIT", &m.name)}),
        json!({"code": "insufficient_scope", "http": 403, "fix": format!("grant the `{}` scope to the webhook or app", m.scope)}),
        json!({"code": "NO_AUTH_FOUND", "http": 401, "fix": errors::fix_for_code("NO_AUTH_FOUND", &m.name)}),
    ];
    if m.who_can_call
        .to_ascii_lowercase()
        .contains("administrator")
    {
        errs.push(json!({"code": "ACCESS_DENIED", "http": 403, "fix": "call as an administrator"}));
    }
    if m.name.starts_with("event.") {
        errs.push(json!({"code": "WRONG_AUTH_TYPE", "http": 403, "fix": errors::fix_for_code("WRONG_AUTH_TYPE", &m.name)}));
    }
    let (tool, needs) = match m.risk {
        Risk::Read => ("b24_read", Value::Null),
        Risk::Destructive => (
            "b24_plan + b24_apply, or b24_write",
            json!("confirm_destructive: true"),
        ),
        _ => ("b24_plan + b24_apply, or b24_write", json!("confirm: true")),
    };
    Ok(json!({
        "name": m.name,
        "scope": m.scope,
        "risk": m.risk,
        "tool": tool,
        "needs": needs,
        // How a write whose answer was lost is settled (resend, stamp look-up, or not at all).
        "settle": cat.settle_outline(&m.name),
        "pack": m.pack,
        "api": m.api,
        "lists": m.lists,
        "paging": if m.lists { json!({"page_size": 50, "tool": "b24_export (max_items + cursor)"}) } else { Value::Null },
        "idempotent": m.idempotent,
        "deprecated": m.deprecated,
        "who_can_call": m.who_can_call,
        "doc": m.doc_url(),
        // What it takes and returns (from the documentation); unknown parameters are refused
        // before sending while strict parameter checking is on (the MCP default).
        "parameters": b24_guard::knowledge::Knowledge::builtin()
            .get(&m.name)
            .map(|d| d.view())
            .unwrap_or_else(|| json!({"status": "undocumented"})),
        "common_errors": errs,
    }))
}

/// Queue depth and DLQ size from the events store (B24_STORE_URL, or queue.db in the state dir).
async fn queue_status(g: &Globals) -> anyhow::Result<Value> {
    let url = std::env::var("B24_STORE_URL")
        .ok()
        .filter(|u| !u.is_empty());
    let (url, shown) = match url {
        Some(u) => {
            let shown = if u.starts_with("postgres") {
                "postgres (B24_STORE_URL)".to_string()
            } else {
                u.clone()
            };
            (u, shown)
        }
        None => {
            let path = g.state_dir().join("queue.db");
            if !path.exists() {
                // Opening would create it: report an empty queue instead.
                return Ok(json!({
                    "store": path.display().to_string(),
                    "exists": false,
                    "ready": 0, "running": 0, "processed": 0, "dead": 0, "oldest_age_secs": 0.0,
                    "note": "no events have been received yet (`b24 events serve` or `b24 worker` fill the queue)",
                }));
            }
            let s = path.display().to_string();
            (s.clone(), s)
        }
    };
    let store = b24_events::Store::open(&url)
        .await
        .map_err(|e| Exit::new(exit::USAGE, e.to_string()))?;
    let st = store
        .stats()
        .await
        .map_err(|e| Exit::new(exit::USAGE, e.to_string()))?;
    Ok(json!({
        "store": shown,
        "backend": store.backend(),
        "exists": true,
        "ready": st.ready,
        "running": st.running,
        "processed": st.processed,
        "dead": st.dead,
        "dlq": st.dead,
        "oldest_age_secs": st.oldest_age_secs,
        "dlq_hint": if st.dead > 0 { json!("inspect with `b24 dlq list`, replay with `b24 dlq replay --all`") } else { Value::Null },
    }))
}
