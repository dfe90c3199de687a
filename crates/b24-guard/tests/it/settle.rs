//! Writes that settle (issue 21), through the gate against the sandbox with the fault that
//! runs a write and then loses its answer (`lose_after_write`). Every case asserts from the
//! sandbox's data — its records and its request log — that the write took effect exactly once
//! (or, where nothing may be guessed, that nothing was resent), not from what the gate says.
//!
//! The fixture and helpers are here; the cases are in `settle/`, one file per concern.

use std::sync::Arc;

use b24_guard::audit::Filter;
use b24_guard::gate::{
    ApplyRequest, BatchCommandSpec, BatchRequest, BatchRun, CallOutcome, CallRequest, Gate,
    GateError, NoPerson, Origin, PlanRequest, PortalSlot,
};
use b24_guard::policy::AgentPolicy;
use b24_guard::sources::{CallerInputs, OperatorPaths, resolve};
use b24_sandbox::{FaultSpec, Sandbox, SandboxConfig};
use serde_json::{Value, json};

pub(crate) struct Fixture {
    sb: Sandbox,
    dir: tempfile::TempDir,
}

impl Fixture {
    pub(crate) async fn new() -> Fixture {
        let sb = b24_sandbox::start(SandboxConfig {
            seed_leads: 5,
            ..Default::default()
        })
        .await
        .expect("sandbox starts");
        Fixture {
            sb,
            dir: tempfile::tempdir().unwrap(),
        }
    }

    /// A fresh gate (as a new `b24` process would build it) over the same records.
    pub(crate) fn gate(&self) -> Gate {
        self.gate_with(AgentPolicy {
            allow: vec!["*".into()],
            allow_unlisted: true,
            ..Default::default()
        })
    }

    /// The same, under the caller's policy flags `flags`.
    pub(crate) fn gate_with(&self, flags: AgentPolicy) -> Gate {
        let d = self.dir.path();
        let paths = OperatorPaths {
            system: d.join("etc/b24/policy.toml"),
            user: Some(d.join("home/.config/b24/policy.toml")),
            user_state: Some(d.join("home/.local/state/b24")),
        };
        let caller = CallerInputs {
            flags,
            ..Default::default()
        };
        let state = d.join("caller");
        let resolved = resolve(&paths, &caller, &state).expect("policy resolves");
        let url = self.sb.info().webhook_url.clone();
        let cfg = b24::Config::from_lookup(
            &|k: &str| (k == "B24_WEBHOOK_URL").then(|| url.clone()),
            state.join("client"),
        )
        .expect("config");
        let slot = PortalSlot::new(Ok(cfg), Arc::new(tokio::sync::OnceCell::new()));
        Gate::new(resolved, slot, Origin::Cli)
    }

    pub(crate) fn lose(&self, n: u32) {
        self.sb.set_faults(FaultSpec {
            lose_after_write: n,
            ..Default::default()
        });
    }

    /// How many requests for `method` the portal received.
    pub(crate) fn requests(&self, method: &str) -> usize {
        self.sb
            .request_log()
            .iter()
            .filter(|r| r.method == method)
            .count()
    }

    /// Read the portal's data (reads are never hit by the counted faults).
    pub(crate) async fn read(&self, method: &str, params: Value, v3: bool) -> Value {
        let c = self.gate().client().await.unwrap();
        let r = if v3 {
            c.call_v3(method, params, Default::default()).await
        } else {
            c.call_with(method, params, Default::default()).await
        };
        r.expect("read").result
    }

    pub(crate) async fn leads_where(&self, filter: Value) -> Vec<Value> {
        let v = self
            .read(
                "crm.lead.list",
                json!({"filter": filter, "select": ["ID", "TITLE", "ORIGIN_ID"]}),
                false,
            )
            .await;
        v.as_array().cloned().unwrap_or_default()
    }

    async fn tasks(&self) -> Vec<Value> {
        let v = self
            .read(
                "tasks.task.list",
                json!({"select": ["id", "title"], "pagination": {"limit": 1000}}),
                true,
            )
            .await;
        v["items"].as_array().cloned().unwrap_or_default()
    }
}

pub(crate) fn write(method: &str, params: Value) -> CallRequest {
    CallRequest {
        method: method.into(),
        params,
        confirm_write: true,
        confirm_destructive: true,
        ..Default::default()
    }
}

fn v3(method: &str, params: Value) -> CallRequest {
    CallRequest {
        api: b24_guard::gate::Api::V3,
        ..write(method, params)
    }
}

fn unknown(r: &Result<CallOutcome, GateError>) -> bool {
    matches!(r, Err(GateError::Client(b24::Error::OutcomeUnknown { .. })))
}

fn result(r: Result<CallOutcome, GateError>) -> Value {
    match r {
        Ok(CallOutcome::Done { response, .. }) => response.result,
        other => panic!("not done: {other:?}"),
    }
}

/// The call ids of writes the log lists as outcome-unknown.
fn unknown_ids(g: &Gate) -> Vec<String> {
    g.audit_log()
        .records(&Filter::default(), usize::MAX)
        .unwrap()
        .into_iter()
        .filter(|r| r["decision"] == "allow" && r["outcome"] == "unknown")
        .filter_map(|r| r["call_id"].as_str().map(str::to_string))
        .collect()
}

mod later;
mod records;
mod resend;
