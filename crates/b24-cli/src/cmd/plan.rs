//! `b24 plan`: record a write for later `b24 apply` (plan → apply).
//!
//! A plan fixes the exact call (method + params, hashed) for a limited time, so the person or
//! the operator's policy can require that writes are reviewed before they happen.

use serde_json::json;

use crate::cmd::call::read_params;
use crate::exec::{Api, Guard, Origin, check_plan};
use crate::exit::{self, Exit};
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
    let mut params = read_params(args.params.as_deref())?;
    crate::exec::strip_credentials(&mut params);
    let guard = Guard::from_globals(g)?;
    let api = if args.v3 { Api::V3 } else { Api::V2 };
    let risk = check_plan(&guard, &args.method, &params)?;
    let store = guard.store()?;
    let plan = store
        .create_plan(
            &args.method,
            &params,
            api.as_str(),
            risk.as_str(),
            args.ttl as f64,
        )
        .map_err(|e| Exit::new(exit::USAGE, e.to_string()))?;
    guard.record(
        Origin::Cli,
        &args.method,
        vec![
            ("risk", json!(risk)),
            ("decision", json!("plan")),
            ("plan_id", json!(plan.id)),
            ("params", guard.redact(&params)),
        ],
    );
    let confirm = if risk == b24_guard::Risk::Destructive {
        "--confirm-destructive"
    } else {
        "--confirm-write"
    };
    let out = json!({
        "id": plan.id,
        "method": plan.method,
        "params": guard.redact(&plan.params),
        "api": plan.api,
        "risk": plan.risk,
        "hash": plan.hash,
        "created_at": plan.created_at as i64,
        "expires_at": plan.expires_at as i64,
        "apply": format!("b24 apply {} {confirm}", plan.id),
    });
    println!("{}", serde_json::to_string_pretty(&out)?);
    Ok(exit::OK)
}
