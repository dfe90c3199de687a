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
#[command(
    args_conflicts_with_subcommands = true,
    after_help = "Examples:
  b24 plan crm.lead.add --params '{\"fields\":{\"TITLE\":\"New lead\"}}'
  b24 plan show pl_0190c3c1a2b3c4d5e6f7
  b24 plan list -o table
  b24 apply pl_0190c3c1a2b3c4d5e6f7 --confirm-write"
)]
pub struct Args {
    #[command(subcommand)]
    pub sub: Option<Sub>,
    /// REST method to plan, e.g. `crm.deal.update`.
    #[arg(required = true)]
    pub method: Option<String>,
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

/// Looking at recorded plans.
#[derive(Debug, clap::Subcommand)]
pub enum Sub {
    /// Show one recorded plan (its params redacted), whether it can still be applied, and how
    /// `b24 settle` resolved it when its apply's outcome was unknown.
    #[command(after_help = "Example:\n  b24 plan show pl_0190c3c1a2b3c4d5e6f7")]
    Show {
        /// The plan id printed by `b24 plan`.
        id: String,
    },
    /// The plans recorded for this portal, newest first (params redacted), with their state.
    #[command(after_help = "Examples:\n  b24 plan list\n  b24 plan list --limit 5 -o table")]
    List {
        /// At most this many plans.
        #[arg(long, default_value_t = 50)]
        limit: usize,
        #[command(flatten)]
        output: crate::render::OutputArgs,
    },
}

pub async fn run(args: Args, g: &Globals) -> anyhow::Result<i32> {
    let gate = exec::gate(g, Origin::Cli)?;
    if let Some(Sub::List { limit, output }) = args.sub {
        let format = output.format(crate::render::Format::Ndjson);
        let now = b24_guard::store::now();
        let records: Vec<serde_json::Value> = gate
            .list_plans(limit)
            .map_err(exec::gate_error)?
            .into_iter()
            .map(|plan| {
                json!({
                    "id": plan.id,
                    "method": plan.method,
                    "risk": plan.risk,
                    "state": plan.state,
                    "expired": plan.expires_at < now,
                    "created_at": plan.created_at as i64,
                    "expires_at": plan.expires_at as i64,
                    "params": gate.redact(&plan.params),
                })
            })
            .collect();
        crate::render::print(format, Vec::new(), &records)?;
        return Ok(exit::OK);
    }
    if let Some(Sub::Show { id }) = args.sub {
        let Some(plan) = gate.show_plan(&id).map_err(exec::gate_error)? else {
            return Err(crate::exit::Exit::new(
                exit::API,
                format!("no plan {id} (for this portal)"),
            ));
        };
        let now = b24_guard::store::now();
        let mut out = json!({
            "id": plan.id,
            "method": plan.method,
            "params": gate.redact(&plan.params),
            "api": plan.api,
            "risk": plan.risk,
            "hash": plan.hash,
            "state": plan.state,
            "created_at": plan.created_at as i64,
            "expires_at": plan.expires_at as i64,
            "expired": plan.expires_at < now,
        });
        // An apply whose outcome was unknown, looked at again by `b24 settle`: what it found
        // (the state above is `applied`/`failed` once that is known).
        if let Some(s) = &plan.settlement {
            out["settlement"] = gate.redact(s);
        }
        crate::out::pretty(&out)?;
        return Ok(exit::OK);
    }
    let Some(method) = args.method else {
        return Err(crate::exit::Exit::new(
            exit::USAGE,
            "give a METHOD to plan (or `b24 plan show ID`, `b24 plan list`)",
        ));
    };
    let params = read_params(args.params.as_deref())?;
    let req = PlanRequest {
        method,
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
