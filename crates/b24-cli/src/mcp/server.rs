//! The MCP tools. Each tool's input schema is derived from its argument type (`///` docs on the
//! fields become the descriptions); annotations tell the client which tools only read.
//!
//! Every call to the portal goes through [`crate::exec`] with `Origin::Mcp`: the same policy,
//! the same refusals, the same idempotency store and the same audit log as the CLI. The
//! annotations are hints for the client; the gates are enforced here regardless of them.

use std::sync::Arc;

use b24_guard::policy::CallCheck;
use b24_guard::{Catalog, Refusal, Risk};
use rmcp::handler::server::router::tool::ToolRouter;
use rmcp::handler::server::wrapper::Parameters;
use rmcp::model::{
    CallToolResult, ClientResult, ElicitRequest, ElicitRequestParams, ElicitationAction,
    ElicitationSchema, Implementation, ProtocolVersion, ServerCapabilities, ServerConfig,
    ServerRequest,
};
use rmcp::{ErrorData, Peer, RoleServer, ServerHandler, tool, tool_handler, tool_router};
use schemars::JsonSchema;
use serde::Deserialize;
use serde_json::{Map, Value, json};

use super::errors::{self, tool_error_value};
use super::paging::{self, Cursor};
use crate::exec::{self, Api, BatchSpec, CallSpec, ExecOutcome, Guard, Origin};
use crate::exit::{self, Exit};
use crate::globals::Globals;

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

/// What the person said when asked to confirm.
enum Asked {
    /// The client cannot be asked (no elicitation capability, or a stateless protocol).
    Unsupported,
    Accepted,
    Refused(String),
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

fn method_name(m: &str) -> Result<String, ErrorData> {
    let m = m.trim();
    if m.is_empty() || m.len() > 200 || m.chars().any(|c| c.is_whitespace() || c == '/') {
        return Err(invalid(format!(
            "`method` must be a REST method name such as crm.lead.list, not {m:?}"
        )));
    }
    Ok(m.to_string())
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

    fn guard(&self) -> anyhow::Result<Guard> {
        Guard::from_globals(&self.g)
    }

    /// Secrets never leave in a tool answer.
    fn redact(&self, v: Value) -> Value {
        let secrets = self
            .g
            .config()
            .ok()
            .map(|c| c.secrets())
            .unwrap_or_default();
        b24_guard::redact::redact(&v, &secrets)
    }

    fn fail(&self, e: &anyhow::Error) -> CallToolResult {
        tool_error_value(self.redact(errors::error_value(e)))
    }

    fn ok(&self, v: Value) -> CallToolResult {
        CallToolResult::structured(self.redact(v))
    }

    /// Ask the person to confirm a destructive call, when the client can be asked.
    async fn ask(&self, peer: &Peer<RoleServer>, message: String) -> Asked {
        if !self.elicit {
            return Asked::Unsupported;
        }
        let Some(info) = peer.peer_info() else {
            return Asked::Unsupported;
        };
        // 2026-07-28 forbids server-to-client requests (it would need a multi-round-trip
        // result); older clients must have declared form elicitation.
        let form = info
            .capabilities
            .elicitation
            .as_ref()
            .is_some_and(|c| c.form.is_some() || c.url.is_none());
        if !form || info.protocol_version >= ProtocolVersion::V_2026_07_28 {
            return Asked::Unsupported;
        }
        let schema = match ElicitationSchema::builder()
            .required_bool("confirm")
            .build()
        {
            Ok(s) => s,
            Err(_) => return Asked::Unsupported,
        };
        let req = ServerRequest::ElicitRequest(ElicitRequest::new(
            ElicitRequestParams::FormElicitationParams {
                meta: None,
                message,
                requested_schema: schema,
            },
        ));
        let answer = tokio::time::timeout(ELICIT_TIMEOUT, peer.send_request(req)).await;
        match answer {
            Ok(Ok(ClientResult::ElicitResult(r))) => match r.action {
                ElicitationAction::Accept
                    if r.content
                        .as_ref()
                        .and_then(|c| c.get("confirm"))
                        .and_then(Value::as_bool)
                        == Some(true) =>
                {
                    Asked::Accepted
                }
                ElicitationAction::Accept => {
                    Asked::Refused("the person did not tick confirm".into())
                }
                ElicitationAction::Decline => Asked::Refused("the person declined".into()),
                _ => Asked::Refused("the person cancelled".into()),
            },
            Ok(Ok(_)) => Asked::Unsupported,
            Ok(Err(e)) => {
                tracing::info!("mcp: elicitation failed: {e}");
                Asked::Unsupported
            }
            Err(_) => Asked::Refused("no answer within 10 minutes".into()),
        }
    }

    /// If every gate but the destructive confirmation would pass, ask the person. Returns the
    /// note to add to a refusal when they said no.
    async fn confirm_destructive(
        &self,
        peer: &Peer<RoleServer>,
        guard: &Guard,
        checks: &[(String, Value)],
        via_plan: bool,
        what: String,
    ) -> (bool, Option<String>) {
        let mut worst = Risk::Read;
        for (m, p) in checks {
            let c = CallCheck {
                method: m,
                params: Some(p),
                confirm_write: true,
                confirm_destructive: true,
                via_plan,
                no_send: false,
            };
            match guard.policy.check(guard.catalog, &c) {
                Ok(r) => worst = worst.max(r),
                Err(_) => return (false, None), // refused anyway: do not bother the person
            }
        }
        if worst != Risk::Destructive {
            return (false, None);
        }
        match self.ask(peer, what).await {
            Asked::Accepted => {
                guard.record(
                    Origin::Mcp,
                    checks.first().map(|c| c.0.as_str()).unwrap_or("batch"),
                    vec![
                        ("risk", json!(Risk::Destructive)),
                        ("decision", json!("confirmed_by_person")),
                        ("via", json!("elicitation")),
                    ],
                );
                (true, None)
            }
            Asked::Refused(why) => (false, Some(why)),
            Asked::Unsupported => (false, None),
        }
    }

    /// Run one call through exec and shape the answer.
    async fn run_call(&self, spec: CallSpec, note: Option<String>) -> CallToolResult {
        let method = spec.method.clone();
        match exec::execute(&self.g, spec).await {
            Ok(ExecOutcome::Done { response, replayed }) => self.ok(json!({
                "method": method,
                "result": response.result,
                "total": response.total,
                "next": response.next,
                "replayed": replayed,
            })),
            Ok(ExecOutcome::DryRun(v)) => self.ok(v),
            Err(e) => {
                let mut v = self.redact(errors::error_value(&e));
                if let Some(n) = note {
                    let msg = format!("{} ({n})", v["message"].as_str().unwrap_or(""));
                    v["message"] = json!(msg);
                    v["elicitation"] = json!(n);
                }
                tool_error_value(v)
            }
        }
    }

    /// Apply a recorded plan (b24_apply, and b24_write with a plan_id).
    async fn apply_plan(
        &self,
        peer: &Peer<RoleServer>,
        plan_id: &str,
        expect: Option<(&str, Option<&Value>)>,
        mut confirm_destructive: bool,
    ) -> CallToolResult {
        let guard = match self.guard() {
            Ok(g) => g,
            Err(e) => return self.fail(&e),
        };
        let store = match guard.store() {
            Ok(s) => s,
            Err(e) => return self.fail(&e),
        };
        let deny = |reason: String| -> CallToolResult {
            guard.record(
                Origin::Mcp,
                "apply",
                vec![
                    ("decision", json!("deny")),
                    ("reason", json!(reason)),
                    ("plan_id", json!(plan_id)),
                ],
            );
            self.fail(&Exit::new(
                exit::POLICY,
                format!("refused plan {plan_id}: {reason}. Record a new plan with b24_plan"),
            ))
        };
        // Look first (to know the risk and ask before claiming), then claim.
        let planned = match store.get_plan(plan_id) {
            Ok(Some(p)) => p,
            Ok(None) => return deny("no such plan".into()),
            Err(e) => return self.fail(&Exit::new(exit::USAGE, e.to_string())),
        };
        if let Some((method, params)) = expect {
            let same_params = params
                .map(|p| {
                    b24_guard::store::call_hash(method, p)
                        == b24_guard::store::call_hash(&planned.method, &planned.params)
                })
                .unwrap_or(true);
            if !planned.method.eq_ignore_ascii_case(method) || !same_params {
                return deny(format!(
                    "the plan is for {} with other params, not this call",
                    planned.method
                ));
            }
        }
        let mut note = None;
        if !confirm_destructive {
            let (yes, why) = self
                .confirm_destructive(
                    peer,
                    &guard,
                    &[(planned.method.clone(), planned.params.clone())],
                    true,
                    format!(
                        "Apply plan {plan_id}: the destructive call {} with params {}?",
                        planned.method,
                        guard.redact(&planned.params)
                    ),
                )
                .await;
            confirm_destructive = yes;
            note = why;
        }
        let plan = match store.claim_plan(plan_id) {
            Ok(Ok(p)) => p,
            Ok(Err(why)) => {
                use b24_guard::store::PlanRefusal;
                let reason = match why {
                    PlanRefusal::NotFound => "no such plan",
                    PlanRefusal::Expired => "the plan expired",
                    PlanRefusal::Altered => {
                        "the plan was altered after it was recorded (hash mismatch)"
                    }
                    PlanRefusal::AlreadyApplied => {
                        "the plan was already applied (a plan runs once)"
                    }
                };
                return deny(reason.into());
            }
            Err(e) => return self.fail(&Exit::new(exit::USAGE, e.to_string())),
        };
        let spec = CallSpec {
            method: plan.method.clone(),
            params: plan.params.clone(),
            api: if plan.api == "v3" { Api::V3 } else { Api::V2 },
            // Applying a recorded plan by its id is the confirmation of a write.
            confirm_write: true,
            confirm_destructive,
            dry_run: false,
            idempotency_key: Some(format!("plan-{}", plan.id)),
            idempotent: false,
            plan_id: Some(plan.id.clone()),
            origin: Origin::Mcp,
        };
        let res = exec::execute(&self.g, spec).await;
        let state = match &res {
            Ok(_) => "applied",
            Err(e) => match exit::code_for(e) {
                exit::POLICY => "open",
                exit::OUTCOME_UNKNOWN => "unknown",
                _ => "failed",
            },
        };
        let _ = store.finish_plan(&plan.id, state);
        match res {
            Ok(ExecOutcome::Done { response, replayed }) => self.ok(json!({
                "plan_id": plan.id,
                "method": plan.method,
                "applied": true,
                "result": response.result,
                "replayed": replayed,
            })),
            Ok(ExecOutcome::DryRun(v)) => self.ok(v),
            Err(e) => {
                let mut v = self.redact(errors::error_value(&e));
                if let Some(n) = note {
                    v["message"] = json!(format!("{} ({n})", v["message"].as_str().unwrap_or("")));
                }
                if state == "open" {
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
        let method = method_name(&a.method)?;
        let params = Value::Object(a.params.unwrap_or_default());
        let guard = match self.guard() {
            Ok(g) => g,
            Err(e) => return Ok(self.fail(&e)),
        };
        let risk = if method.eq_ignore_ascii_case("batch") {
            None
        } else {
            Catalog::builtin().effective_risk(&method, &params)
        };
        if risk != Some(Risk::Read) {
            let (reason, fix) = match risk {
                None if method.eq_ignore_ascii_case("batch") => (
                    "b24_read takes one method; batches are checked command by command".to_string(),
                    "use b24_batch".to_string(),
                ),
                None => (
                    "the method is not in the catalog, so it cannot be known to be read-only".into(),
                    "check the name with b24_search_methods; to call it anyway use b24_write (it is treated as destructive)".into(),
                ),
                Some(r) => (
                    format!("{method} is a {r} method and b24_read takes read-only methods only"),
                    "record it with b24_plan and run it with b24_apply {plan_id}, or call b24_write with confirm: true".into(),
                ),
            };
            let r = Refusal {
                method: method.clone(),
                risk,
                reason,
                fix,
                operator_locked: false,
            };
            let e = guard.refuse(Origin::Mcp, &r, &params, vec![("tool", json!("b24_read"))]);
            return Ok(self.fail(&e));
        }
        let spec = CallSpec {
            method,
            params,
            api: api_of(a.v3),
            origin: Origin::Mcp,
            ..Default::default()
        };
        Ok(self.run_call(spec, None).await)
    }

    /// Call a Bitrix24 method that changes data.
    #[tool(
        name = "b24_write",
        description = "Call a Bitrix24 REST method that changes data (add/update/delete/...). Needs confirm: true, or a plan_id from b24_plan; destructive methods also need confirm_destructive: true (or the person's confirmation, when the client can ask). Give an idempotency_key so a retry never writes twice. A refusal sends nothing.",
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
    ) -> Result<CallToolResult, ErrorData> {
        let method = method_name(&a.method)?;
        if let Some(id) = a.plan_id.as_deref() {
            let id = id.trim();
            if id.is_empty() {
                return Err(invalid("`plan_id` is empty"));
            }
            // Params, when given, must be the planned ones (compared as planned: no credentials).
            let given = a.params.clone().map(|p| {
                let mut v = Value::Object(p);
                exec::strip_credentials(&mut v);
                v
            });
            return Ok(self
                .apply_plan(
                    &peer,
                    id,
                    Some((&method, given.as_ref())),
                    a.confirm_destructive,
                )
                .await);
        }
        let params = Value::Object(a.params.unwrap_or_default());
        if method.eq_ignore_ascii_case("batch") {
            return Ok(tool_error_value(json!({
                "error": "usage",
                "message": "use b24_batch for batches: every command is checked on its own",
            })));
        }
        let guard = match self.guard() {
            Ok(g) => g,
            Err(e) => return Ok(self.fail(&e)),
        };
        let mut confirm_destructive = a.confirm_destructive;
        let mut note = None;
        if !confirm_destructive && a.confirm {
            let shown = guard.redact(&params);
            let (yes, why) = self
                .confirm_destructive(
                    &peer,
                    &guard,
                    &[(method.to_ascii_lowercase(), shown.clone())],
                    false,
                    format!("Run the destructive call {method} with params {shown}?"),
                )
                .await;
            confirm_destructive = yes;
            note = why;
        }
        let key = a
            .idempotency_key
            .map(|k| k.trim().to_string())
            .filter(|k| !k.is_empty());
        let spec = CallSpec {
            method,
            params,
            api: api_of(a.v3),
            confirm_write: a.confirm,
            confirm_destructive,
            idempotency_key: key,
            origin: Origin::Mcp,
            ..Default::default()
        };
        Ok(self.run_call(spec, note).await)
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
        let method = method_name(&a.method)?;
        if method.eq_ignore_ascii_case("batch") {
            return Err(invalid(
                "a batch cannot be planned: plan its writes one by one, or use b24_batch",
            ));
        }
        let ttl = a.ttl_secs.unwrap_or(900);
        if ttl == 0 || ttl > 86_400 {
            return Err(invalid("`ttl_secs` must be between 1 and 86400"));
        }
        let mut params = Value::Object(a.params.unwrap_or_default());
        exec::strip_credentials(&mut params);
        let guard = match self.guard() {
            Ok(g) => g,
            Err(e) => return Ok(self.fail(&e)),
        };
        let shown = guard.redact(&params);
        let check = CallCheck {
            method: &method.to_ascii_lowercase(),
            params: Some(&shown),
            confirm_write: false,
            confirm_destructive: false,
            via_plan: false,
            no_send: true,
        };
        let risk = match guard.policy.check(guard.catalog, &check) {
            Ok(r) => r,
            Err(r) => {
                let e = guard.refuse(Origin::Mcp, &r, &params, vec![("stage", json!("plan"))]);
                return Ok(self.fail(&e));
            }
        };
        let api = api_of(a.v3);
        let store = match guard.store() {
            Ok(s) => s,
            Err(e) => return Ok(self.fail(&e)),
        };
        let plan =
            match store.create_plan(&method, &params, api.as_str(), risk.as_str(), ttl as f64) {
                Ok(p) => p,
                Err(e) => return Ok(self.fail(&Exit::new(exit::USAGE, e.to_string()))),
            };
        guard.record(
            Origin::Mcp,
            &method,
            vec![
                ("risk", json!(risk)),
                ("decision", json!("plan")),
                ("plan_id", json!(plan.id)),
                ("params", guard.redact(&params)),
            ],
        );
        let apply = if risk == Risk::Destructive {
            json!({"plan_id": plan.id, "confirm_destructive": true})
        } else {
            json!({"plan_id": plan.id})
        };
        Ok(self.ok(json!({
            "plan_id": plan.id,
            "method": plan.method,
            "params": guard.redact(&plan.params),
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
        description = "Run a plan recorded by b24_plan exactly once (the plan id doubles as its idempotency key, so a repeated apply never writes twice). A destructive plan also needs confirm_destructive: true, or the person's confirmation when the client can ask.",
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
    ) -> Result<CallToolResult, ErrorData> {
        let id = a.plan_id.trim();
        if id.is_empty() {
            return Err(invalid("`plan_id` is empty"));
        }
        Ok(self
            .apply_plan(&peer, id, None, a.confirm_destructive)
            .await)
    }

    /// Many commands in few requests.
    #[tool(
        name = "b24_batch",
        description = "Run many REST commands, 50 per request, in order, with $result[key][field] references to earlier results. Every command is checked on its own: writes need confirm: true, destructive commands confirm_destructive: true. Returns one outcome per command (ok / error / not_executed / unknown).",
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
    ) -> Result<CallToolResult, ErrorData> {
        if a.commands.is_empty() {
            return Err(invalid("`commands` is empty"));
        }
        if a.commands.len() > MAX_BATCH_COMMANDS {
            return Err(invalid(format!(
                "at most {MAX_BATCH_COMMANDS} commands per call; split the work"
            )));
        }
        let mut batch = b24::batch::Batch::new();
        batch.halt(a.halt);
        let mut cmds = Vec::with_capacity(a.commands.len());
        for (i, c) in a.commands.into_iter().enumerate() {
            let key = c.key.unwrap_or_else(|| i.to_string());
            let method = method_name(&c.method)?;
            if method.eq_ignore_ascii_case("batch") {
                return Err(invalid("a batch may not contain a batch"));
            }
            let mut params = Value::Object(c.params.unwrap_or_default());
            exec::strip_credentials(&mut params);
            batch
                .add(&key, &method, params.clone())
                .map_err(|e| invalid(e.to_string()))?;
            cmds.push((key, method, params));
        }
        batch.order().map_err(|e| invalid(e.to_string()))?;
        let guard = match self.guard() {
            Ok(g) => g,
            Err(e) => return Ok(self.fail(&e)),
        };
        let mut confirm_destructive = a.confirm_destructive;
        let mut note = None;
        if !confirm_destructive && a.confirm {
            let checks: Vec<(String, Value)> = cmds
                .iter()
                .map(|(_, m, p)| (m.to_ascii_lowercase(), guard.redact(p)))
                .collect();
            let listing: Vec<String> = cmds.iter().map(|(k, m, _)| format!("{k}: {m}")).collect();
            let (yes, why) = self
                .confirm_destructive(
                    &peer,
                    &guard,
                    &checks,
                    false,
                    format!(
                        "Run a batch with destructive commands? {}",
                        listing.join(", ")
                    ),
                )
                .await;
            confirm_destructive = yes;
            note = why;
        }
        let spec = BatchSpec {
            commands: cmds,
            confirm_write: a.confirm,
            confirm_destructive,
            dry_run: false,
            origin: Origin::Mcp,
        };
        let permit = match exec::authorize_batch(&self.g, &spec).await {
            Ok(p) => p,
            Err(e) => {
                let mut v = self.redact(errors::error_value(&e));
                if let Some(n) = note {
                    v["message"] = json!(format!("{} ({n})", v["message"].as_str().unwrap_or("")));
                }
                return Ok(tool_error_value(v));
            }
        };
        let client = match self.g.client().await {
            Ok(c) => c,
            Err(e) => return Ok(self.fail(&e)),
        };
        let results = batch.run(&client).await;
        let mut tally = crate::exec::BatchTally::default();
        let mut out = Vec::with_capacity(results.len());
        let mut audit = Vec::with_capacity(results.len());
        for (key, o) in &results {
            let (mut line, record) = tally.add(key, o);
            // Tool answers also say how to fix what failed.
            match o {
                b24::batch::Outcome::Error { code, .. } => {
                    let m = spec
                        .commands
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
            audit.push(record);
            out.push(line);
        }
        let crate::exec::BatchTally {
            ok,
            failed,
            skipped,
            unknown,
        } = tally;
        let _ = permit.finish(&Value::Array(audit));
        let v = json!({
            "commands": results.len(),
            "ok": ok,
            "error": failed,
            "not_executed": skipped,
            "unknown": unknown,
            "results": out,
        });
        if ok == 0 && failed > 0 {
            let mut v = self.redact(v);
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
        let method = method_name(&a.method)?;
        let max = a.max_items.unwrap_or(200);
        if max == 0 || max > MAX_EXPORT_ITEMS {
            return Err(invalid(format!(
                "`max_items` must be between 1 and {MAX_EXPORT_ITEMS}"
            )));
        }
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
        let risk = Catalog::builtin().effective_risk(&method, &Value::Object(base.clone()));
        if risk != Some(Risk::Read) {
            let guard = match self.guard() {
                Ok(g) => g,
                Err(e) => return Ok(self.fail(&e)),
            };
            let r = Refusal {
                method: method.clone(),
                risk,
                reason: "b24_export takes read-only list methods only".into(),
                fix: "find the list method with b24_search_methods (risk read)".into(),
                operator_locked: false,
            };
            let e = guard.refuse(
                Origin::Mcp,
                &r,
                &Value::Object(base),
                vec![("tool", json!("b24_export"))],
            );
            return Ok(self.fail(&e));
        }
        let mut items: Vec<Value> = Vec::new();
        let mut more = true;
        let mut total = None;
        while (items.len() as u32) < max {
            let spec = CallSpec {
                method: method.clone(),
                params: paging::page_params(&base, field, cursor),
                origin: Origin::Mcp,
                ..Default::default()
            };
            let response = match exec::execute(&self.g, spec).await {
                Ok(ExecOutcome::Done { response, .. }) => response,
                Ok(ExecOutcome::DryRun(v)) => return Ok(self.ok(v)),
                Err(e) => {
                    let mut v = self.redact(errors::error_value(&e));
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
        check_arguments(&request.name, request.arguments.as_ref())?;
        let tcc = rmcp::handler::server::tool::ToolCallContext::new(self, request, context);
        self.tool_router.call(tcc).await
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
