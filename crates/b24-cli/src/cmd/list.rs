//! `b24 list`: list one page, or every page with --all.

use std::path::PathBuf;

use b24::export::{ExportOptions, Strategy};

use serde_json::Value;

use crate::cmd::call::read_params;
use crate::cmd::export::{self, Target};
use crate::render::Format;
use b24_guard::gate::{CallOutcome, CallRequest, NoPerson, Origin};

use crate::exec;
use crate::exit;
use crate::globals::Globals;

#[derive(Debug, clap::Args)]
#[command(after_help = "Examples:
  b24 list crm.lead.list --params '{\"select\":[\"ID\",\"TITLE\"]}'      # one page (50) as JSON
  b24 list crm.lead.list --start 50                                    # the second page
  b24 list crm.lead.list --params '{\"order\":{\"ID\":\"DESC\"}}' --limit 5 -o table  # the 5 newest
  b24 list crm.lead.list --all -o csv --select ID,TITLE --out leads.csv   # every item, as `b24 export`

One page prints `{\"items\": [...], \"total\": N, \"next\": M}` as JSON; --all streams NDJSON.
--limit N stops after N items and fetches no page more than N needs; `next` then says where
the following items start. -o ndjson|csv|table prints the items alone.")]
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
    #[arg(long, requires = "all", value_name = "FILE", conflicts_with = "limit")]
    pub checkpoint: Option<PathBuf>,
    /// With --all: write the items to FILE instead of stdout (resumable with --checkpoint).
    #[arg(long, requires = "all", value_name = "FILE")]
    pub out: Option<PathBuf>,
    /// Stop after N items, in the params' order (pages through `start` as far as N needs).
    #[arg(long, value_name = "N")]
    pub limit: Option<u64>,
    /// Columns for csv and table output (comma-separated); also sent as the `select` param.
    #[arg(long, value_delimiter = ',', value_name = "F,...")]
    pub select: Vec<String>,
    #[command(flatten)]
    pub output: crate::render::OutputArgs,
}

pub async fn run(args: Args, g: &Globals) -> anyhow::Result<i32> {
    let mut params = read_params(args.params.as_deref())?;
    let select: Vec<Value> = args
        .select
        .iter()
        .map(|s| s.trim())
        .filter(|s| !s.is_empty())
        .map(|s| Value::String(s.to_string()))
        .collect();
    if !select.is_empty()
        && let Some(o) = params.as_object_mut()
    {
        o.retain(|k, _| !k.eq_ignore_ascii_case("select"));
        o.insert("select".into(), Value::Array(select));
    }
    let hint = crate::render::select_columns(&params);
    if args.all {
        let target = Target {
            format: args.output.format(Format::Ndjson),
            file: args.out,
            hint,
        };
        export::check_out(&target, args.checkpoint.as_deref(), g)?;
        if let Some(n) = args.limit {
            let (items, _, _) = export::fetch_limited(&args.method, params, 0, n, g).await?;
            return export::write_all(&items, target);
        }
        let mut opts = ExportOptions::new(&args.method, params);
        opts.strategy = Strategy::Auto;
        return export::stream(opts, args.checkpoint, target, g).await;
    }
    let format = args.output.format(Format::Json);
    if let Some(n) = args.limit {
        let (items, total, next) =
            export::fetch_limited(&args.method, params, args.start.unwrap_or(0), n, g).await?;
        return page(format, hint, items, total, next);
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
            page(
                format,
                hint,
                items,
                response.total,
                response.next.map(|n| n as i64),
            )
        }
        CallOutcome::DryRun(plan) => {
            crate::out::pretty(&plan)?;
            Ok(exit::OK)
        }
    }
}

/// One page: `{items, total, next}` as JSON, or the items alone in another format.
fn page(
    format: Format,
    hint: Vec<String>,
    items: Vec<Value>,
    total: Option<u64>,
    next: Option<i64>,
) -> anyhow::Result<i32> {
    if format != Format::Json {
        crate::render::print(format, hint, &items)?;
        return Ok(exit::OK);
    }
    let mut out = serde_json::json!({"items": items});
    if let Some(t) = total {
        out["total"] = t.into();
    }
    if let Some(n) = next {
        out["next"] = n.into();
    }
    crate::out::pretty(&out)?;
    Ok(exit::OK)
}
