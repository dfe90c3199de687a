//! [`Gate::plan`] and [`Gate::apply`]: record a call now, run it exactly once later.
//!
//! A plan is checked twice: when it is recorded (deny rules, packs, read-only — nothing is sent,
//! so no confirmation yet) and again when it is applied, with everything that applies to a call
//! that is about to be sent. A refusal at apply time leaves the plan open; an ambiguous failure
//! marks it `unknown`, so it is never re-applied blindly.

use serde_json::{Value, json};

use super::call::{Api, CallOutcome, strip_credentials};
use super::confirm::{Confirmed, Person};
use super::{Gate, GateError};
use crate::catalog::Risk;
use crate::method::normalise;
use crate::store::{Plan, call_hash};

/// A call to record as a plan.
#[derive(Debug, Clone, Default)]
pub struct PlanRequest {
    pub method: String,
    pub params: Value,
    pub api: Api,
    /// Seconds the plan stays valid.
    pub ttl_secs: u64,
}

/// A recorded plan and the risk it was judged at.
#[derive(Debug, Clone)]
pub struct Planned {
    pub plan: Plan,
    pub risk: Risk,
}

/// Applying a plan.
#[derive(Debug, Clone, Default)]
pub struct ApplyRequest {
    pub plan_id: String,
    pub confirm_write: bool,
    pub confirm_destructive: bool,
    /// When the caller names the call it expects (MCP `b24_write` with a `plan_id`): the plan
    /// must be for this method and, when given, these params.
    pub expect: Option<(String, Option<Value>)>,
}

impl Gate {
    /// Check and record a plan; nothing is sent.
    pub async fn plan(&self, mut req: PlanRequest) -> Result<Planned, GateError> {
        strip_credentials(&mut req.params);
        if req.ttl_secs > 7 * 86_400 {
            return Err(GateError::Invalid("a plan lives at most 7 days".into()));
        }
        let checked = self.prepare(&req.method, &req.params)?;
        let risk = self.decide(&checked, Confirmed::default(), false, true, &req.params)?;
        let store = self.plan_store()?;
        let plan = store
            .create_plan(
                checked.method.as_str(),
                &req.params,
                req.api.as_str(),
                risk.as_str(),
                req.ttl_secs as f64,
            )
            .map_err(GateError::Store)?;
        let recorded = self.record(
            checked.method.as_str(),
            vec![
                ("risk", json!(risk)),
                ("decision", json!("plan")),
                ("plan_id", json!(plan.id)),
                ("params", self.audit_params(&req.params)),
            ],
        );
        if let Err(e) = recorded {
            let _ = store.finish_plan(&plan.id, "failed");
            return Err(e);
        }
        Ok(Planned { plan, risk })
    }

    /// Look at a plan without applying it.
    pub fn show_plan(&self, id: &str) -> Result<Option<Plan>, GateError> {
        self.plan_store()?.get_plan(id).map_err(GateError::Store)
    }

    /// The plans recorded for this portal, newest first (at most `limit`).
    pub fn list_plans(&self, limit: usize) -> Result<Vec<Plan>, GateError> {
        self.plan_store()?
            .list_plans(limit)
            .map_err(GateError::Store)
    }

    /// The idempotency key a plan is applied under: `plan-ID`, scoped like every key of an MCP
    /// client (`mcp:NAME:plan-ID`) when a client applies it. Callers cannot give a key starting
    /// with `plan-` (see [`Gate::call`]) nor, outside HTTP MCP, one starting with `mcp:`, so
    /// no caller key can be a plan's, and one client's plan keys are never another's.
    pub(super) fn plan_key(&self, id: &str) -> String {
        match &self.client {
            Some(c) => format!("mcp:{c}:plan-{id}"),
            None => format!("plan-{id}"),
        }
    }

    fn refuse_plan(&self, id: &str, reason: &str) -> GateError {
        let r = self.refusal(
            "apply",
            None,
            format!("plan {id}: {reason}"),
            "record a new plan",
            false,
        );
        self.refuse(r, &Value::Null, vec![("plan_id", json!(id))])
    }

    /// Apply a recorded plan exactly once.
    pub async fn apply(
        &self,
        req: ApplyRequest,
        person: &dyn Person,
    ) -> Result<(Plan, CallOutcome), GateError> {
        let id = req.plan_id.trim();
        if id.is_empty() {
            return Err(GateError::Invalid("the plan id is empty".into()));
        }
        let store = self.plan_store()?;
        let Some(planned) = store.get_plan(id).map_err(GateError::Store)? else {
            return Err(self.refuse_plan(id, "no such plan"));
        };
        // An MCP client's plans are its own: refused before anything else (no confirmation
        // is asked for another client's plan), without naming that client.
        let owner = self.plan_owner();
        if planned.portal != owner && (self.client.is_some() || planned.portal.contains("#mcp:")) {
            return Err(self.refuse_plan(
                id,
                "the plan was recorded by another client; record it again",
            ));
        }
        if let Some((method, params)) = &req.expect {
            let same_method = normalise(method)
                .map(|m| m.as_str() == planned.method.to_ascii_lowercase())
                .unwrap_or(false);
            let same_params = params.as_ref().is_none_or(|p| {
                let mut p = p.clone();
                strip_credentials(&mut p);
                call_hash(&planned.method, &p) == call_hash(&planned.method, &planned.params)
            });
            if !same_method || !same_params {
                return Err(self.refuse_plan(
                    id,
                    &format!(
                        "the plan is for {} with other params, not this call",
                        planned.method
                    ),
                ));
            }
        }
        let checked = self.prepare(&planned.method, &planned.params)?;
        let flags = Confirmed {
            write: req.confirm_write,
            destructive: req.confirm_destructive,
            by_person: false,
        };
        let shown = self.redact(&planned.params);
        let m = checked.method.to_string();
        let conf = self
            .settle_confirmation(
                &Self::checks(&checked, true),
                flags,
                person,
                || format!("Apply plan {id}: {m} with params {shown}?"),
                checked.method.as_str(),
            )
            .await?;
        let risk = self.decide(&checked, conf, true, false, &planned.params)?;
        let plan = match store.claim(id).map_err(GateError::Store)? {
            Ok(p) => p,
            Err(why) => return Err(self.refuse_plan(id, &why.to_string())),
        };
        let writes = self.write_count(&checked);
        let res = self
            .send(
                &checked.method,
                risk,
                Api::parse(&plan.api),
                plan.params.clone(),
                Some(self.plan_key(&plan.id)),
                Some(&plan.id),
                conf,
                writes,
            )
            .await;
        // Only a call that reached the client can have happened; anything refused before
        // that (policy, budget, audit, store) gives the plan back.
        let state = match &res {
            Ok(_) => "applied",
            Err(GateError::Client(b24::Error::OutcomeUnknown { .. })) => "unknown",
            Err(GateError::Client(_)) => "failed",
            Err(_) => "open",
        };
        let _ = store.finish_plan(&plan.id, state);
        res.map(|o| (plan, o))
    }
}
