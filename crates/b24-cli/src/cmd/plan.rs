//! `b24 plan`: record a write for later `b24 apply` (plan → apply).
//!
//! A plan fixes the exact call (method + params, hashed) for a limited time, so the person or
//! the operator's policy can require that writes are reviewed before they happen.

use b24_guard::gate::{Api, Origin, PlanRequest};
use serde_json::json;

use crate::cmd::call::read_params;
use crate::exec;
use crate::exit;
use crate::globals::Globals;

#[derive(Debug, clap::Args)]
#[command(after_help = "Examples:
  b24 plan crm.lead.add --params '{\"fields\":{\"TITLE\":\"New lead\"}}'
  b24 apply pl_0190c3c1a2b3c4d5e6f7 --confirm-write")]
pub struct Args {
    /// REST method to plan, e.g. `crm.deal.update`.
    pub method: String,
    /// Parameters: inline JSON, `@file` or `-` for stdin.
    #[arg(long, short = 'p', value_name = "JSON|@FILE|-")]
    pub params: Option<String>,
    /// Plan a REST 3.0 call.
    #[arg(long)]
    pub v3: bool,
    /// Seconds the plan stays valid (default 900, or B24_PLAN_TTL_SEC).
    #[arg(long, env = "B24_PLAN_TTL_SEC", default_value_t = 900)]
    pub ttl: u64,
}

pub async fn run(args: Args, g: &Globals) -> anyhow::Result<i32> {
    let params = read_params(args.params.as_deref())?;
    let gate = exec::gate(g, Origin::Cli)?;
    let req = PlanRequest {
        method: args.method,
        params,
        api: if args.v3 { Api::V3 } else { Api::V2 },
        ttl_secs: args.ttl,
    };
    let planned = gate.plan(req).await.map_err(exec::gate_error)?;
    let plan = planned.plan;
    let confirm = if planned.risk == b24_guard::Risk::Destructive {
        "--confirm-destructive"
    } else {
        "--confirm-write"
    };
    let out = json!({
        "id": plan.id,
        "method": plan.method,
        "params": gate.redact(&plan.params),
        "api": plan.api,
        "risk": plan.risk,
        "hash": plan.hash,
        "created_at": plan.created_at as i64,
        "expires_at": plan.expires_at as i64,
        "apply": format!("b24 apply {} {confirm}", plan.id),
    });
    crate::out::pretty(&out)?;
    Ok(exit::OK)
}
