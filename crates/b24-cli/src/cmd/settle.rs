//! `b24 settle`: re-examine writes the audit log lists as outcome-unknown (exit 7 of an earlier
//! run) and settle them the way the gate does right after the failure — a REST 3.0 resend
//! under the same `Idempotency-Key`, a resent update or delete, a look-up of a stamped add.
//! Each result is appended to the audit log as a settlement record. The decisions are the
//! library's (`Gate::settle`); this only renders them.

use b24_guard::gate::Origin;

use crate::exec;
use crate::exit::{self, Exit};
use crate::globals::Globals;

#[derive(Debug, clap::Args)]
#[command(after_help = "Examples:
  b24 settle
  b24 settle 0190c3c1a2b37c4d8e9f00aa11bb22cc
  b24 settle 0190c3c1a2b37c4d8e9f00aa11bb22cc:lead2

Prints one JSON line per write: {call_id, command?, method, status: settled|failed|unknown,
class, evidence}. Exit code: 0 every write's outcome is now known, 7 some stay unknown,
3 the audit log fails verification (nothing is settled from a log that may be forged).")]
pub struct Args {
    /// The write to settle: the `call_id`, `request_id` or `seq` of its `outcome: unknown`
    /// record (`CALL_ID:KEY` for one command of a batch). Default: every unsettled one that
    /// b24 has a way to settle (other adds are only examined when named).
    pub record: Option<String>,
}

pub async fn run(args: Args, g: &Globals) -> anyhow::Result<i32> {
    let gate = exec::gate(g, Origin::Cli)?;
    let reports = match gate.settle(args.record.as_deref()).await {
        Ok(r) => r,
        Err(b24_guard::gate::GateError::Audit(e)) => {
            return Err(Exit::new(exit::API, format!("refused: {e}")));
        }
        Err(e) => return Err(exec::gate_error(e)),
    };
    let mut unknown = 0;
    for r in &reports {
        if !r.is_known() {
            unknown += 1;
        }
        crate::outln!("{}", serde_json::to_value(r)?)?;
    }
    crate::errln!(
        "b24: {} write(s) examined, {} settled or failed for good, {unknown} still unknown",
        reports.len(),
        reports.len() - unknown
    );
    Ok(if unknown > 0 {
        exit::OUTCOME_UNKNOWN
    } else {
        exit::OK
    })
}
