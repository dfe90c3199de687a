//! The tools that reach the portal: b24_read, b24_write, b24_plan, b24_apply, b24_batch and
//! b24_export. Each builds its request and hands it to the gate ([`B24Mcp::gate`]); the gate
//! decides (policy, confirmations, budget, idempotency, audit), these only shape the answer.

use b24_guard::Risk;
use b24_guard::gate::{
    Api, ApplyRequest, BatchCommandSpec, BatchRequest, BatchRun, BatchTally, CallOutcome,
    CallRequest, GateError, NoPerson, Person, PlanRequest,
};
use rmcp::handler::server::wrapper::Parameters;
use rmcp::model::{CallToolResult, RequestMetaObject};
use rmcp::{ErrorData, Peer, RoleServer, tool, tool_router};
use serde_json::{Value, json};

use super::args::{ApplyArgs, BatchArgs, ExportArgs, PlanArgs, ReadArgs, WriteArgs};
use super::errors::{self, tool_error_value};
use super::paging::{self, Cursor};
use super::server::{B24Mcp, invalid};
use crate::exec;

/// Hard cap on items per b24_export call (MCP answers must stay small).
const MAX_EXPORT_ITEMS: u32 = 5000;
/// Hard cap on commands per b24_batch call.
const MAX_BATCH_COMMANDS: usize = 1000;

fn api_of(v3: bool) -> Api {
    if v3 { Api::V3 } else { Api::V2 }
}

impl B24Mcp {
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

#[tool_router(router = portal_router, vis = "pub(super)")]
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
                    if let Some(c) = cursor {
                        v["cursor"] = json!(c.render());
                    }
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
}
