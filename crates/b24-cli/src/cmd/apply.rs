//! `b24 apply`: run a recorded plan exactly once.

use b24_guard::store::PlanRefusal;
use serde_json::json;

use crate::exec::{self, Api, CallSpec, ExecOutcome, Guard, Origin};
use crate::exit::{self, Exit};
use crate::globals::Globals;

#[derive(Debug, clap::Args)]
#[command(after_help = "Example:
  b24 plan crm.lead.delete --params '{\"id\":42}'
  b24 apply pl_0190c3c1a2b3c4d5e6f7 --confirm-destructive")]
pub struct Args {
    /// The plan id printed by `b24 plan`.
    pub plan_id: String,
    /// Allow the planned write.
    #[arg(long)]
    pub confirm_write: bool,
    /// Allow the planned destructive call.
    #[arg(long)]
    pub confirm_destructive: bool,
    /// Print the whole envelope instead of `result`.
    #[arg(long)]
    pub raw: bool,
}

pub async fn run(args: Args, g: &Globals) -> anyhow::Result<i32> {
    let guard = Guard::from_globals(g)?;
    let store = guard.store()?;
    let plan = match store
        .claim_plan(&args.plan_id)
        .map_err(|e| Exit::new(exit::USAGE, e.to_string()))?
    {
        Ok(p) => p,
        Err(why) => {
            let reason = match why {
                PlanRefusal::NotFound => "no such plan",
                PlanRefusal::Expired => "the plan expired",
                PlanRefusal::Altered => {
                    "the plan was altered after it was recorded (hash mismatch)"
                }
                PlanRefusal::AlreadyApplied => "the plan was already applied (a plan runs once)",
            };
            guard.record(
                Origin::Cli,
                "apply",
                vec![
                    ("decision", json!("deny")),
                    ("reason", json!(reason)),
                    ("plan_id", json!(args.plan_id)),
                ],
            );
            return Err(Exit::new(
                exit::POLICY,
                format!(
                    "refused plan {}: {reason}. Record a new plan with `b24 plan`",
                    args.plan_id
                ),
            ));
        }
    };
    let spec = CallSpec {
        method: plan.method.clone(),
        params: plan.params.clone(),
        api: if plan.api == "v3" { Api::V3 } else { Api::V2 },
        confirm_write: args.confirm_write,
        confirm_destructive: args.confirm_destructive,
        dry_run: false,
        idempotency_key: Some(format!("plan-{}", plan.id)),
        idempotent: false,
        plan_id: Some(plan.id.clone()),
        origin: Origin::Cli,
    };
    match exec::execute(g, spec).await {
        Ok(ExecOutcome::Done { response, .. }) => {
            let _ = store.finish_plan(&plan.id, "applied");
            let out = if args.raw {
                &response.raw
            } else {
                &response.result
            };
            println!("{}", serde_json::to_string_pretty(out)?);
            Ok(exit::OK)
        }
        Ok(ExecOutcome::DryRun(v)) => {
            let _ = store.finish_plan(&plan.id, "open");
            println!("{}", serde_json::to_string_pretty(&v)?);
            Ok(exit::OK)
        }
        Err(e) => {
            let code = exit::code_for(&e);
            // A refusal (e.g. a missing --confirm flag) leaves the plan open to apply again;
            // an ambiguous failure must not be re-applied blindly.
            let state = match code {
                exit::POLICY => "open",
                exit::OUTCOME_UNKNOWN => "unknown",
                _ => "failed",
            };
            let _ = store.finish_plan(&plan.id, state);
            Err(e)
        }
    }
}
