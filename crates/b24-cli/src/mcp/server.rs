//! The MCP tools. Each tool's input schema is derived from its argument type (`///` docs on the
//! fields become the descriptions); annotations tell the client which tools only read.
//!
//! Every call to the portal goes through the gate (`b24_guard::gate`) with `Origin::Mcp`: the
//! same policy, the same refusals, the same idempotency store and the same audit log as the
//! CLI. When the client supports elicitation, the person confirms destructive calls. The
//! annotations are hints for the client; the gates are enforced here regardless of them.

use std::sync::Arc;

use b24_guard::gate::{
    Answer, ApplyRequest, BatchCommandSpec, BatchRequest, BatchRun, BatchTally, CallOutcome,
    CallRequest, Gate, GateError, NoPerson, Origin, Person, PlanRequest,
};
use b24_guard::{Catalog, Risk};
use futures::future::BoxFuture;
use rmcp::handler::server::router::tool::ToolRouter;
use rmcp::handler::server::wrapper::Parameters;
use rmcp::model::{
    CallToolResult, ClientResult, ElicitRequest, ElicitRequestParams, ElicitationAction,
    ElicitationSchema, Implementation, ProtocolVersion, RequestMetaObject, ServerCapabilities,
    ServerConfig, ServerRequest,
};
use rmcp::{ErrorData, Peer, RoleServer, ServerHandler, tool, tool_handler, tool_router};
use schemars::JsonSchema;
use serde::Deserialize;
use serde_json::{Map, Value, json};

use super::errors::{self, tool_error_value};
use super::paging::{self, Cursor};
use crate::exec;
use crate::exit::{self, Exit};
use crate::globals::Globals;
use b24_guard::gate::Api;

/// Shown to the client at initialization: how to use the tools safely.
pub const INSTRUCTIONS: &str = "b24 gives access to one Bitrix24 portal with guardrails.
Reads: b24_read (read-only methods), b24_export (a bounded set of pages with a resume cursor), b24_batch (many commands in few requests).
Find methods with b24_search_methods and check their scope, risk and paging with b24_describe.
Writes are gated. The reviewed path: b24_plan records the exact call (nothing is sent) and returns a plan_id; show it to the person; then b24_apply {plan_id} runs it exactly once (destructive plans also need confirm_destructive: true).
A direct b24_write needs confirm: true, and destructive methods (delete, ...) need confirm_destructive: true. Give writes an idempotency_key so a retry can never duplicate them.
A refused call returns isError with the reason and the fix, and nothing reaches the portal. The operator's policy can forbid methods outright; no argument overrides it.
b24_queue_status reports the local event queue and dead-letter queue.";

/// Hard cap on items per b24_export call (MCP answers must stay small).
const MAX_EXPORT_ITEMS: u32 = 5000;
/// Hard cap on commands per b24_batch call.
const MAX_BATCH_COMMANDS: usize = 1000;
/// How long a person has to answer a confirmation request.
const ELICIT_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(600);

/// A JSON object of REST parameters.
type Params = Map<String, Value>;

#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ReadArgs {
    /// REST method, e.g. `crm.lead.list`, `crm.deal.get`, `user.current`. Only read-only
    /// methods are accepted here.
    pub method: String,
    /// Method parameters, e.g. {"filter": {"STATUS_ID": "NEW"}, "select": ["ID", "TITLE"]}.
    #[serde(default)]
    pub params: Option<Params>,
    /// Call REST 3.0 (`/rest/api/`) instead of the classic REST v2.
    #[serde(default)]
    pub v3: bool,
}

#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct WriteArgs {
    /// REST method, e.g. `crm.lead.add`, `crm.deal.update`, `crm.lead.delete`.
    pub method: String,
    /// Method parameters, e.g. {"fields": {"TITLE": "New lead"}}.
    #[serde(default)]
    pub params: Option<Params>,
    /// Call REST 3.0 (`/rest/api/`) instead of the classic REST v2.
    #[serde(default)]
    pub v3: bool,
    /// Confirm a write (add/update/...). Required unless `plan_id` names a recorded plan.
    #[serde(default)]
    pub confirm: bool,
    /// Confirm a destructive call (delete, ...). Required for destructive methods.
    #[serde(default)]
    pub confirm_destructive: bool,
    /// Apply this plan from b24_plan instead (it must be for the same method and params).
    #[serde(default)]
    pub plan_id: Option<String>,
    /// A key that makes the write happen at most once: repeating the call with the same key
    /// returns the first answer instead of writing again.
    #[serde(default)]
    pub idempotency_key: Option<String>,
}

#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct PlanArgs {
    /// REST method to plan, e.g. `crm.deal.update`.
    pub method: String,
    /// Method parameters, exactly as they will be sent.
    #[serde(default)]
    pub params: Option<Params>,
    /// Plan a REST 3.0 call.
    #[serde(default)]
    pub v3: bool,
    /// Seconds the plan stays valid (default 900, at most 86400).
    #[serde(default)]
    pub ttl_secs: Option<u64>,
}

#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ApplyArgs {
    /// The plan id returned by b24_plan (`pl_...`).
    pub plan_id: String,
    /// Confirm a destructive plan (delete, ...). Not needed for other writes: applying a
    /// recorded plan by its id is the confirmation.
    #[serde(default)]
    pub confirm_destructive: bool,
}

#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct BatchCommand {
    /// Name for this command's result, used in `$result[key]` references (default: its position).
    #[serde(default)]
    pub key: Option<String>,
    /// REST method, e.g. `crm.lead.get`.
    pub method: String,
    /// Method parameters; may refer to earlier results, e.g. {"id": "$result[first][ID]"}.
    #[serde(default)]
    pub params: Option<Params>,
}

#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct BatchArgs {
    /// The commands, run in order, 50 per request.
    pub commands: Vec<BatchCommand>,
    /// Stop at the first failing command; later ones are not executed.
    #[serde(default)]
    pub halt: bool,
    /// Confirm the writes among the commands.
    #[serde(default)]
    pub confirm: bool,
    /// Confirm the destructive commands among them.
    #[serde(default)]
    pub confirm_destructive: bool,
}

#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ExportArgs {
    /// A read-only list method, e.g. `crm.lead.list`, `crm.deal.list`, `user.get`.
    pub method: String,
    /// List parameters (`filter`, `select`, ...); paging params are set by b24.
    #[serde(default)]
    pub params: Option<Params>,
    /// Most items to return in this call (default 200, at most 5000).
    #[serde(default)]
    pub max_items: Option<u32>,
    /// The `cursor` from the previous answer, to continue after its last item.
    #[serde(default)]
    pub cursor: Option<String>,
}

#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct DescribeArgs {
    /// Method name, e.g. `crm.deal.list`.
    pub method: String,
}

#[derive(Debug, Clone, Copy, Deserialize, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum RiskArg {
    Read,
    Write,
    Admin,
    Destructive,
}

#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct SearchArgs {
    /// Substring of the method name, or a scope (e.g. `deal`, `crm`, `task`).
    #[serde(default)]
    pub query: Option<String>,
    /// Only this capability pack (core, comms, automation, collab, content, boards, commerce, ...).
    #[serde(default)]
    pub pack: Option<String>,
    /// Only this risk class.
    #[serde(default)]
    pub risk: Option<RiskArg>,
    /// Most methods to return (default 50, at most 500).
    #[serde(default)]
    pub limit: Option<u32>,
}

/// b24_queue_status takes no arguments.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct QueueArgs {}

/// The person behind an MCP client, reached through elicitation (form mode).
struct McpPerson {
    peer: Peer<RoleServer>,
    enabled: bool,
    /// The request's own `_meta` declared form elicitation (stateless protocol eras carry the
    /// client's capabilities on every request instead of at initialization).
    meta_declared: bool,
}

impl McpPerson {
    /// The client declared form elicitation (whatever its protocol version).
    fn declared(&self) -> bool {
        self.enabled
            && (self.meta_declared
                || self.peer.peer_info().is_some_and(|info| {
                    info.capabilities
                        .elicitation
                        .as_ref()
                        .is_some_and(|c| c.form.is_some() || c.url.is_none())
                }))
    }

    fn supported(&self) -> bool {
        if !self.enabled {
            return false;
        }
        let Some(info) = self.peer.peer_info() else {
            return false;
        };
        // 2026-07-28 forbids server-to-client requests (it would need a multi-round-trip
        // result); older clients must have declared form elicitation.
        let form = info
            .capabilities
            .elicitation
            .as_ref()
            .is_some_and(|c| c.form.is_some() || c.url.is_none());
        form && info.protocol_version < ProtocolVersion::V_2026_07_28
    }
}

impl Person for McpPerson {
    fn can_ask(&self) -> bool {
        self.supported()
    }

    fn declares_person(&self) -> bool {
        self.declared()
    }

    fn ask(&self, question: String) -> BoxFuture<'_, Answer> {
        Box::pin(async move {
            if !self.supported() {
                return Answer::CannotAsk;
            }
            let Ok(schema) = ElicitationSchema::builder()
                .required_bool("confirm")
                .build()
            else {
                return Answer::CannotAsk;
            };
            let req = ServerRequest::ElicitRequest(ElicitRequest::new(
                ElicitRequestParams::FormElicitationParams {
                    meta: None,
                    message: b24_guard::redact::text(&question),
                    requested_schema: schema,
                },
            ));
            match tokio::time::timeout(ELICIT_TIMEOUT, self.peer.send_request(req)).await {
                Ok(Ok(ClientResult::ElicitResult(r))) => match r.action {
                    ElicitationAction::Accept
                        if r.content
                            .as_ref()
                            .and_then(|c| c.get("confirm"))
                            .and_then(Value::as_bool)
                            == Some(true) =>
                    {
                        Answer::Yes
                    }
                    ElicitationAction::Accept => {
                        Answer::No("the person did not tick confirm".into())
                    }
                    ElicitationAction::Decline => Answer::No("the person declined".into()),
                    _ => Answer::No("the person cancelled".into()),
                },
                Ok(Ok(_)) => Answer::CannotAsk,
                Ok(Err(e)) => {
                    tracing::info!("mcp: elicitation failed: {e}");
                    Answer::CannotAsk
                }
                Err(_) => Answer::No("no answer within 10 minutes".into()),
            }
        })
    }
}

/// The MCP server: the tools over one process's configuration.
#[derive(Clone)]
pub struct B24Mcp {
    g: Arc<Globals>,
    elicit: bool,
    tool_router: ToolRouter<Self>,
}

fn invalid(msg: impl Into<String>) -> ErrorData {
    ErrorData::invalid_params(msg.into(), None)
}

/// A method name for the catalog tools (normalised like every other name).
fn method_name(m: &str) -> Result<String, ErrorData> {
    b24_guard::method::normalise(m)
        .map(|m| m.to_string())
        .map_err(|e| invalid(e.to_string()))
}

fn api_of(v3: bool) -> Api {
    if v3 { Api::V3 } else { Api::V2 }
}

impl B24Mcp {
    pub fn new(g: Globals, elicit: bool) -> B24Mcp {
        B24Mcp {
            g: Arc::new(g),
            elicit,
            tool_router: Self::tool_router(),
        }
    }

    /// The gate, built per tool call so operator policy edits apply at once.
    fn gate(&self) -> anyhow::Result<Gate> {
        exec::gate(&self.g, Origin::Mcp)
    }

    fn person(&self, peer: Peer<RoleServer>, meta: &RequestMetaObject) -> McpPerson {
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

    fn fail(&self, e: &anyhow::Error) -> CallToolResult {
        tool_error_value(b24_guard::redact::value(&errors::error_value(e)))
    }

    fn fail_gate(&self, e: GateError) -> CallToolResult {
        self.fail(&exec::gate_error(e))
    }

    fn ok(&self, v: Value) -> CallToolResult {
        CallToolResult::structured(b24_guard::redact::value(&v))
    }

    /// Run one call through the gate and shape the answer.
    async fn run_call(&self, req: CallRequest, person: &dyn Person) -> CallToolResult {
        let gate = match self.gate() {
            Ok(g) => g,
            Err(e) => return self.fail(&e),
        };
        let method = req.method.trim().to_string();
        match gate.call(req, person).await {
            Ok(CallOutcome::Done { response, replayed }) => self.ok(json!({
                "method": method,
                "result": response.result,
                "total": response.total,
                "next": response.next,
                "replayed": replayed,
            })),
            Ok(CallOutcome::DryRun(v)) => self.ok(v),
            Err(e) => self.fail_gate(e),
        }
    }

    /// Apply a recorded plan (b24_apply, and b24_write with a plan_id).
    async fn apply_plan(
        &self,
        person: &dyn Person,
        plan_id: &str,
        expect: Option<(String, Option<Value>)>,
        confirm_destructive: bool,
    ) -> CallToolResult {
        let gate = match self.gate() {
            Ok(g) => g,
            Err(e) => return self.fail(&e),
        };
        let req = ApplyRequest {
            plan_id: plan_id.to_string(),
            // Applying a recorded plan by its id is the confirmation of a write.
            confirm_write: true,
            confirm_destructive,
            expect,
        };
        match gate.apply(req, person).await {
            Ok((plan, CallOutcome::Done { response, replayed })) => self.ok(json!({
                "plan_id": plan.id,
                "method": plan.method,
                "applied": true,
                "result": response.result,
                "replayed": replayed,
            })),
            Ok((_, CallOutcome::DryRun(v))) => self.ok(v),
            Err(e) => {
                let open = matches!(e, GateError::Refused(_));
                let mut v = b24_guard::redact::value(&errors::error_value(&exec::gate_error(e)));
                if open {
                    v["plan_state"] = json!("open: fix the cause and call b24_apply again");
                }
                tool_error_value(v)
            }
        }
    }
}

#[tool_router(router = tool_router)]
impl B24Mcp {
    /// Call a read-only Bitrix24 REST method.
    #[tool(
        name = "b24_read",
        description = "Call a read-only Bitrix24 REST method (list/get/fields/current...). Writes are refused here: use b24_plan + b24_apply or b24_write. Paged lists return `next`; for many pages use b24_export.",
        annotations(
            title = "Read from Bitrix24",
            read_only_hint = true,
            open_world_hint = true
        )
    )]
    async fn b24_read(
        &self,
        Parameters(a): Parameters<ReadArgs>,
    ) -> Result<CallToolResult, ErrorData> {
        let req = CallRequest {
            method: a.method,
            params: Value::Object(a.params.unwrap_or_default()),
            api: api_of(a.v3),
            reads_only: true,
            ..Default::default()
        };
        Ok(self.run_call(req, &NoPerson).await)
    }

    /// Call a Bitrix24 method that changes data.
    #[tool(
        name = "b24_write",
        description = "Call a Bitrix24 REST method that changes data (add/update/delete/...). Needs confirm: true, or a plan_id from b24_plan. Destructive methods are confirmed by the person when the client supports elicitation (the model's own confirm_destructive is then not enough); otherwise they need confirm_destructive: true. Give an idempotency_key so a retry never writes twice. A refusal sends nothing.",
        annotations(
            title = "Write to Bitrix24",
            read_only_hint = false,
            destructive_hint = true,
            idempotent_hint = false,
            open_world_hint = true
        )
    )]
    async fn b24_write(
        &self,
        Parameters(a): Parameters<WriteArgs>,
        peer: Peer<RoleServer>,
        meta: RequestMetaObject,
    ) -> Result<CallToolResult, ErrorData> {
        let person = self.person(peer, &meta);
        if let Some(id) = a.plan_id.as_deref() {
            let id = id.trim();
            if id.is_empty() {
                return Err(invalid("`plan_id` is empty"));
            }
            let given = a.params.clone().map(Value::Object);
            return Ok(self
                .apply_plan(
                    &person,
                    id,
                    Some((a.method.clone(), given)),
                    a.confirm_destructive,
                )
                .await);
        }
        let req = CallRequest {
            method: a.method,
            params: Value::Object(a.params.unwrap_or_default()),
            api: api_of(a.v3),
            confirm_write: a.confirm,
            confirm_destructive: a.confirm_destructive,
            idempotency_key: a.idempotency_key,
            ..Default::default()
        };
        Ok(self.run_call(req, &person).await)
    }

    /// Record a write for review; nothing is sent.
    #[tool(
        name = "b24_plan",
        description = "Record a write (method + params, hashed) as a plan for later b24_apply; nothing is sent to the portal. Returns plan_id, risk and expiry. Show the plan to the person before applying it.",
        annotations(
            title = "Plan a write",
            read_only_hint = false,
            destructive_hint = false,
            idempotent_hint = false,
            open_world_hint = false
        )
    )]
    async fn b24_plan(
        &self,
        Parameters(a): Parameters<PlanArgs>,
    ) -> Result<CallToolResult, ErrorData> {
        let ttl = a.ttl_secs.unwrap_or(900);
        if ttl == 0 || ttl > 86_400 {
            return Err(invalid("`ttl_secs` must be between 1 and 86400"));
        }
        let gate = match self.gate() {
            Ok(g) => g,
            Err(e) => return Ok(self.fail(&e)),
        };
        let req = PlanRequest {
            method: a.method,
            params: Value::Object(a.params.unwrap_or_default()),
            api: api_of(a.v3),
            ttl_secs: ttl,
        };
        let planned = match gate.plan(req).await {
            Ok(p) => p,
            Err(e) => return Ok(self.fail_gate(e)),
        };
        let plan = planned.plan;
        let apply = if planned.risk == Risk::Destructive {
            json!({"plan_id": plan.id, "confirm_destructive": true})
        } else {
            json!({"plan_id": plan.id})
        };
        Ok(self.ok(json!({
            "plan_id": plan.id,
            "method": plan.method,
            "params": gate.redact(&plan.params),
            "api": plan.api,
            "risk": plan.risk,
            "hash": plan.hash,
            "created_at": plan.created_at as i64,
            "expires_at": plan.expires_at as i64,
            "sent": false,
            "next": format!("show this to the person; to run it, call b24_apply with {apply}"),
        })))
    }

    /// Run a recorded plan exactly once.
    #[tool(
        name = "b24_apply",
        description = "Run a plan recorded by b24_plan exactly once (the plan id doubles as its idempotency key, so a repeated apply never writes twice). A destructive plan is confirmed by the person when the client supports elicitation, otherwise it needs confirm_destructive: true.",
        annotations(
            title = "Apply a plan",
            read_only_hint = false,
            destructive_hint = true,
            idempotent_hint = true,
            open_world_hint = true
        )
    )]
    async fn b24_apply(
        &self,
        Parameters(a): Parameters<ApplyArgs>,
        peer: Peer<RoleServer>,
        meta: RequestMetaObject,
    ) -> Result<CallToolResult, ErrorData> {
        let id = a.plan_id.trim();
        if id.is_empty() {
            return Err(invalid("`plan_id` is empty"));
        }
        let person = self.person(peer, &meta);
        Ok(self
            .apply_plan(&person, id, None, a.confirm_destructive)
            .await)
    }

    /// Many commands in few requests.
    #[tool(
        name = "b24_batch",
        description = "Run many REST commands, 50 per request, in order, with $result[key][field] references to earlier results. Every command is checked on its own: writes need confirm: true; destructive commands are confirmed by the person when the client can ask, else need confirm_destructive: true. Returns one outcome per command (ok / error / not_executed / unknown).",
        annotations(
            title = "Batch",
            read_only_hint = false,
            destructive_hint = true,
            idempotent_hint = false,
            open_world_hint = true
        )
    )]
    async fn b24_batch(
        &self,
        Parameters(a): Parameters<BatchArgs>,
        peer: Peer<RoleServer>,
        meta: RequestMetaObject,
    ) -> Result<CallToolResult, ErrorData> {
        if a.commands.is_empty() {
            return Err(invalid("`commands` is empty"));
        }
        if a.commands.len() > MAX_BATCH_COMMANDS {
            return Err(invalid(format!(
                "at most {MAX_BATCH_COMMANDS} commands per call; split the work"
            )));
        }
        let methods: Vec<(String, String)> = a
            .commands
            .iter()
            .enumerate()
            .map(|(i, c)| {
                (
                    c.key.clone().unwrap_or_else(|| i.to_string()),
                    c.method.trim().to_ascii_lowercase(),
                )
            })
            .collect();
        let commands = a
            .commands
            .into_iter()
            .enumerate()
            .map(|(i, c)| BatchCommandSpec::Params {
                key: c.key.unwrap_or_else(|| i.to_string()),
                method: c.method,
                params: Value::Object(c.params.unwrap_or_default()),
            })
            .collect();
        let req = BatchRequest {
            commands,
            halt: a.halt,
            confirm_write: a.confirm,
            confirm_destructive: a.confirm_destructive,
            dry_run: false,
        };
        let gate = match self.gate() {
            Ok(g) => g,
            Err(e) => return Ok(self.fail(&e)),
        };
        let person = self.person(peer, &meta);
        let results = match gate.batch(req, &person).await {
            Ok(BatchRun::Done { results, .. }) => results,
            Ok(BatchRun::DryRun(lines)) => return Ok(self.ok(json!({"dry_run": lines}))),
            Err(e) => return Ok(self.fail_gate(e)),
        };
        let mut tally = BatchTally::default();
        let mut out = Vec::with_capacity(results.len());
        for (key, o) in &results {
            let (mut line, _) = tally.add(key, o);
            // Tool answers also say how to fix what failed.
            match o {
                b24::batch::Outcome::Error { code, .. } => {
                    let m = methods
                        .iter()
                        .find(|c| &c.0 == key)
                        .map(|c| c.1.as_str())
                        .unwrap_or("");
                    line["error"]["fix"] = json!(errors::fix_for_code(code, m));
                }
                b24::batch::Outcome::Unknown { .. } => {
                    line["fix"] =
                        json!("check the portal for the effect before repeating this command");
                }
                _ => {}
            }
            out.push(line);
        }
        let BatchTally {
            ok,
            failed,
            skipped,
            unknown,
        } = tally;
        let v = json!({
            "commands": results.len(),
            "ok": ok,
            "error": failed,
            "not_executed": skipped,
            "unknown": unknown,
            "results": out,
        });
        if ok == 0 && failed > 0 {
            let mut v = b24_guard::redact::value(&v);
            v["message"] = json!(format!(
                "every executed command failed ({failed} errors); see results[].error for the Bitrix24 code and fix"
            ));
            return Ok(tool_error_value(v));
        }
        Ok(self.ok(v))
    }

    /// A bounded set of pages of a list, with a resume cursor.
    #[tool(
        name = "b24_export",
        description = "Fetch up to max_items items (default 200, at most 5000) of a read-only list method, in ID order for CRM lists. Returns items, `more` (whether more remain) and `cursor`: pass it back to continue exactly after the last item.",
        annotations(title = "Export a list", read_only_hint = true, open_world_hint = true)
    )]
    async fn b24_export(
        &self,
        Parameters(a): Parameters<ExportArgs>,
    ) -> Result<CallToolResult, ErrorData> {
        let max = a.max_items.unwrap_or(200);
        if max == 0 || max > MAX_EXPORT_ITEMS {
            return Err(invalid(format!(
                "`max_items` must be between 1 and {MAX_EXPORT_ITEMS}"
            )));
        }
        // The gate decides on the name it normalises; paging uses the same name.
        let method = match b24_guard::method::normalise(&a.method) {
            Ok(m) => m.to_string(),
            Err(e) => return Err(invalid(e.to_string())),
        };
        let field = paging::keyset_field(&method);
        let mut cursor = match a.cursor.as_deref().map(str::trim).filter(|c| !c.is_empty()) {
            Some(c) => {
                let parsed = Cursor::parse(c).ok_or_else(|| {
                    invalid(format!("`cursor` {c:?} is not a cursor from b24_export"))
                })?;
                if matches!(parsed, Cursor::After(_)) != field.is_some() {
                    return Err(invalid(format!(
                        "`cursor` {c:?} belongs to another kind of list than {method}"
                    )));
                }
                Some(parsed)
            }
            None => None,
        };
        let mut base = a.params.unwrap_or_default();
        // Keyset paging needs the ID of every item: make sure a `select` includes it.
        if let (Some(f), Some(Value::Array(sel))) = (field, base.get_mut("select")) {
            let has = sel.iter().any(|x| {
                x.as_str()
                    .is_some_and(|s| s.eq_ignore_ascii_case(f) || s == "*")
            });
            if !has {
                sel.push(json!(f));
            }
        }
        let gate = match self.gate() {
            Ok(g) => g,
            Err(e) => return Ok(self.fail(&e)),
        };
        let mut items: Vec<Value> = Vec::new();
        let mut more = true;
        let mut total = None;
        while (items.len() as u32) < max {
            let req = CallRequest {
                method: method.clone(),
                params: paging::page_params(&base, field, cursor),
                reads_only: true,
                ..Default::default()
            };
            let response = match gate.call(req, &NoPerson).await {
                Ok(CallOutcome::Done { response, .. }) => response,
                Ok(CallOutcome::DryRun(v)) => return Ok(self.ok(v)),
                Err(e) => {
                    let mut v =
                        b24_guard::redact::value(&errors::error_value(&exec::gate_error(e)));
                    v["items_before_error"] = json!(items.len());
                    v["cursor"] = json!(cursor.map(Cursor::render));
                    return Ok(tool_error_value(v));
                }
            };
            if response.total.is_some() {
                total = response.total;
            }
            let page = b24::export::extract_items(response.result);
            let got = page.len();
            let room = (max as usize).saturating_sub(items.len());
            let truncated = got > room;
            let mut start = match cursor {
                Some(Cursor::Start(n)) => n,
                _ => 0,
            };
            let before = cursor;
            for it in page.into_iter().take(room) {
                match field {
                    Some(f) => {
                        if let Some(id) = paging::item_id(&it, f) {
                            cursor = Some(Cursor::After(id));
                        }
                    }
                    None => {
                        start += 1;
                        cursor = Some(Cursor::Start(start));
                    }
                }
                items.push(it);
            }
            more = match field {
                // A full page may have more behind it; a short page is the end.
                Some(_) => truncated || got >= 50,
                None => truncated || response.next.is_some(),
            };
            if !more || got == 0 {
                more = more && got > 0;
                break;
            }
            if cursor == before {
                // Items without a readable ID: the cursor cannot advance, so stop rather than loop.
                let v = json!({
                    "error": "paging",
                    "message": format!("{method}: the items carry no numeric `{}` to page by; use b24_read with `start` instead", field.unwrap_or("ID")),
                });
                return Ok(tool_error_value(v));
            }
        }
        Ok(self.ok(json!({
            "method": method,
            "count": items.len(),
            "items": items,
            "more": more,
            "cursor": if more { cursor.map(Cursor::render) } else { None },
            "total": total,
        })))
    }

    /// One method from the catalog.
    #[tool(
        name = "b24_describe",
        description = "Describe a Bitrix24 REST method from b24's catalog of 1,600+ documented methods: scope, risk (read/write/admin/destructive) and the confirmation it needs, paging, idempotency, documentation link and the errors to expect.",
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
        Ok(match describe(&method) {
            Ok(v) => self.ok(v),
            Err(v) => tool_error_value(v),
        })
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
        let tcc = rmcp::handler::server::tool::ToolCallContext::new(self, request, context);
        match self.tool_router.call(tcc).await {
            Err(e)
                if e.code == rmcp::model::ErrorCode::INVALID_PARAMS
                    && !e.message.contains("tool not found") =>
            {
                Ok(as_result(e))
            }
            other => other,
        }
    }

    fn get_info(&self) -> ServerConfig {
        ServerConfig::new(ServerCapabilities::builder().enable_tools().build())
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
        "pack": m.pack,
        "api": m.api,
        "lists": m.lists,
        "paging": if m.lists { json!({"page_size": 50, "tool": "b24_export (max_items + cursor)"}) } else { Value::Null },
        "idempotent": m.idempotent,
        "deprecated": m.deprecated,
        "who_can_call": m.who_can_call,
        "doc": m.doc_url(),
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
