//! `b24 apply`: run a recorded plan exactly once.

use b24_guard::gate::{ApplyRequest, CallOutcome, NoPerson, Origin};

use crate::exec;
use crate::exit;
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
    let gate = exec::gate(g, Origin::Cli)?;
    let req = ApplyRequest {
        plan_id: args.plan_id,
        confirm_write: args.confirm_write,
        confirm_destructive: args.confirm_destructive,
        expect: None,
    };
    let (_plan, outcome) = gate.apply(req, &NoPerson).await.map_err(exec::gate_error)?;
    match outcome {
        CallOutcome::Done { response, .. } => {
            let out = if args.raw {
                &response.raw
            } else {
                &response.result
            };
            crate::out::pretty(out)?;
        }
        CallOutcome::DryRun(v) => crate::out::pretty(&v)?,
    }
    Ok(exit::OK)
}
