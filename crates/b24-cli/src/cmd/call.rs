//! `b24 call`: call any REST method (v2, or v3 with --v3) and print its result as JSON.

use std::io::Read;

use b24_guard::gate::{Api, CallOutcome, CallRequest, NoPerson, Origin};

use crate::exec;
use crate::exit::{self, Exit};
use crate::globals::Globals;

#[derive(Debug, clap::Args)]
#[command(after_help = "Examples:
  b24 call user.current
  b24 call crm.lead.list --params '{\"select\":[\"ID\",\"TITLE\"],\"filter\":{\">ID\":0}}'
  b24 call crm.lead.add --params @lead.json --confirm-write --idempotent
  echo '{\"id\":42}' | b24 call crm.lead.get --params -
  b24 call tasks.task.get --v3 --params '{\"id\":1,\"select\":[\"id\",\"title\"]}'
  b24 call crm.lead.list -p '{\"select\":[\"ID\",\"TITLE\"]}' -o csv > leads.csv

JSON is pretty on a terminal and compact in a pipe (--pretty / --compact to choose).")]
pub struct Args {
    /// REST method, e.g. `crm.lead.list`.
    pub method: String,
    /// Parameters: inline JSON, `@file` or `-` for stdin.
    #[arg(long, short = 'p', value_name = "JSON|@FILE|-")]
    pub params: Option<String>,
    /// Print the whole envelope (result, next, total, time) instead of `result`.
    #[arg(long)]
    pub raw: bool,
    /// Use REST 3.0 (`/rest/api/...`, JSON body, v3 error shape).
    #[arg(long, conflicts_with = "api")]
    pub v3: bool,
    /// API version: v2 (default) or v3.
    #[arg(long, value_parser = ["v2", "v3"])]
    pub api: Option<String>,
    /// Allow a write (add/update/...).
    #[arg(long)]
    pub confirm_write: bool,
    /// Allow a destructive call (delete/kill/...).
    #[arg(long)]
    pub confirm_destructive: bool,
    /// Show what would be sent (method, risk, endpoint without secrets, params); send nothing.
    #[arg(long)]
    pub dry_run: bool,
    /// Record this write under a key: repeating it returns the recorded result, sends nothing.
    #[arg(long, value_name = "KEY")]
    pub idempotency_key: Option<String>,
    /// Derive the idempotency key: from a natural key in the params (`ORIGIN_ID`, `EXTERNAL_ID`
    /// or `idempotency_key`, at the top level or in `fields`, as the original Python skill did),
    /// else from method + params.
    #[arg(long, conflicts_with = "idempotency_key")]
    pub idempotent: bool,
    #[command(flatten)]
    pub output: crate::render::OutputArgs,
}

/// Read `--params`: inline JSON, `@file`, or `-` (stdin).
pub fn read_params(arg: Option<&str>) -> anyhow::Result<serde_json::Value> {
    let Some(arg) = arg else {
        return Ok(serde_json::json!({}));
    };
    let (text, from) = if arg == "-" {
        let mut s = String::new();
        std::io::stdin()
            .read_to_string(&mut s)
            .map_err(|e| Exit::new(exit::USAGE, format!("reading params from stdin: {e}")))?;
        (s, "stdin".to_string())
    } else if let Some(path) = arg.strip_prefix('@') {
        let s = std::fs::read_to_string(path)
            .map_err(|e| Exit::new(exit::USAGE, format!("--params @{path}: {e}")))?;
        (s, path.to_string())
    } else {
        (arg.to_string(), "--params".to_string())
    };
    let v: serde_json::Value = serde_json::from_str(text.trim())
        .map_err(|e| Exit::new(exit::USAGE, format!("{from}: not valid JSON: {e}")))?;
    if !v.is_object() && !v.is_array() {
        return Err(Exit::new(
            exit::USAGE,
            format!("{from}: params must be a JSON object (or array)"),
        ));
    }
    Ok(v)
}

/// A natural idempotency key in the params: `ORIGIN_ID`, `EXTERNAL_ID` or `idempotency_key`
/// (any case) at the top level or inside `fields`, scoped to the method.
pub fn natural_key(method: &str, params: &serde_json::Value) -> Option<String> {
    const NAMES: [&str; 3] = ["ORIGIN_ID", "EXTERNAL_ID", "IDEMPOTENCY_KEY"];
    let find = |o: &serde_json::Map<String, serde_json::Value>| {
        o.iter().find_map(|(k, v)| {
            let name = NAMES.iter().find(|n| k.eq_ignore_ascii_case(n))?;
            let v = match v {
                serde_json::Value::String(s) if !s.trim().is_empty() => s.trim().to_string(),
                serde_json::Value::Number(n) => n.to_string(),
                _ => return None,
            };
            Some(format!("{name}={v}"))
        })
    };
    let obj = params.as_object()?;
    let found = find(obj).or_else(|| {
        obj.iter()
            .find(|(k, _)| k.eq_ignore_ascii_case("fields"))
            .and_then(|(_, f)| f.as_object())
            .and_then(find)
    })?;
    Some(format!(
        "natural:{}:{found}",
        method.trim().to_ascii_lowercase()
    ))
}

pub async fn run(args: Args, g: &Globals) -> anyhow::Result<i32> {
    let mut params = read_params(args.params.as_deref())?;
    if b24_guard::gate::strip_credentials(&mut params) && !g.quiet {
        crate::errln!(
            "b24: note: credential parameters were removed from params; b24 authenticates calls itself"
        );
    }
    let format = args.output.format(crate::render::Format::Json);
    let hint = crate::render::select_columns(&params);
    let api = if args.v3 || args.api.as_deref() == Some("v3") {
        Api::V3
    } else {
        Api::V2
    };
    // The original skill's natural keys: the same external record is written once, and the
    // same key with other params is refused by the idempotency store (never replayed blindly).
    let natural = args
        .idempotent
        .then(|| natural_key(&args.method, &params))
        .flatten();
    let req = CallRequest {
        method: args.method,
        params,
        api,
        confirm_write: args.confirm_write,
        confirm_destructive: args.confirm_destructive,
        dry_run: args.dry_run,
        idempotent: args.idempotent && natural.is_none(),
        idempotency_key: args.idempotency_key.or(natural),
        reads_only: false,
    };
    let gate = exec::gate(g, Origin::Cli)?;
    match gate.call(req, &NoPerson).await.map_err(exec::gate_error)? {
        CallOutcome::Done { response, replayed } => {
            if replayed && !g.quiet {
                crate::errln!(
                    "b24: answered from the idempotency record; nothing was sent to the portal"
                );
            }
            let out = if args.raw {
                &response.raw
            } else {
                &response.result
            };
            crate::render::value(format, hint, out)?;
            Ok(exit::OK)
        }
        CallOutcome::DryRun(plan) => {
            crate::out::pretty(&plan)?;
            Ok(exit::OK)
        }
    }
}
