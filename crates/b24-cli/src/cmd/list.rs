//! `b24 list`: list one page, or every page with --all.

use std::path::PathBuf;

use b24::export::{ExportOptions, Strategy};

use crate::cmd::call::read_params;
use b24_guard::gate::{CallOutcome, CallRequest, NoPerson, Origin};

use crate::exec;
use crate::exit;
use crate::globals::Globals;

#[derive(Debug, clap::Args)]
#[command(after_help = "Examples:
  b24 list crm.lead.list --params '{\"select\":[\"ID\",\"TITLE\"]}'      # one page (50) as JSON
  b24 list crm.lead.list --start 50                                    # the second page
  b24 list crm.lead.list --all > leads.ndjson                          # every item, as `b24 export`

One page prints `{\"items\": [...], \"total\": N, \"next\": M}` as JSON; --all streams NDJSON.")]
pub struct Args {
    /// List method, e.g. `crm.lead.list`.
    pub method: String,
    /// Parameters: inline JSON, `@file` or `-` for stdin.
    #[arg(long, short = 'p', value_name = "JSON|@FILE|-")]
    pub params: Option<String>,
    /// Offset of the page (`start`).
    #[arg(long, conflicts_with = "all")]
    pub start: Option<i64>,
    /// Every item (NDJSON), exactly as `b24 export METHOD`.
    #[arg(long)]
    pub all: bool,
    /// With --all: resume from / record progress in this file.
    #[arg(long, requires = "all", value_name = "FILE")]
    pub checkpoint: Option<PathBuf>,
}

pub async fn run(args: Args, g: &Globals) -> anyhow::Result<i32> {
    let mut params = read_params(args.params.as_deref())?;
    if args.all {
        let mut opts = ExportOptions::new(&args.method, params);
        opts.strategy = Strategy::Auto;
        return crate::cmd::export::stream(opts, args.checkpoint, g).await;
    }
    if let (Some(start), Some(o)) = (args.start, params.as_object_mut()) {
        o.insert("start".into(), start.into());
    }
    let req = CallRequest {
        method: args.method,
        params,
        ..Default::default()
    };
    let gate = exec::gate(g, Origin::Cli)?;
    match gate.call(req, &NoPerson).await.map_err(exec::gate_error)? {
        CallOutcome::Done { response, .. } => {
            let items = b24::export::extract_items(response.result);
            let mut out = serde_json::json!({"items": items});
            if let Some(t) = response.total {
                out["total"] = t.into();
            }
            if let Some(n) = response.next {
                out["next"] = n.into();
            }
            crate::out::pretty(&out)?;
            Ok(exit::OK)
        }
        CallOutcome::DryRun(plan) => {
            crate::out::pretty(&plan)?;
            Ok(exit::OK)
        }
    }
}
