//! `b24 methods`: search the method catalog (1,600+ documented methods).

use b24_guard::{Catalog, Risk};

use crate::exit::{self, Exit};
use crate::globals::Globals;

#[derive(Debug, clap::Args)]
#[command(after_help = "Examples:
  b24 methods --search deal --risk read
  b24 methods --pack automation
  b24 methods --packs-summary
  b24 methods --search crm.deal -o table")]
pub struct Args {
    /// Substring of the method name (or a scope).
    #[arg(long, short = 's')]
    pub search: Option<String>,
    /// Only this capability pack (core, comms, automation, collab, content, boards, commerce, …).
    #[arg(long)]
    pub pack: Option<String>,
    /// Only this risk class (read, write, admin, destructive).
    #[arg(long)]
    pub risk: Option<String>,
    /// Print each pack with its method count instead.
    #[arg(long)]
    pub packs_summary: bool,
    #[command(flatten)]
    pub output: crate::render::OutputArgs,
}

pub async fn run(args: Args, _g: &Globals) -> anyhow::Result<i32> {
    let cat = Catalog::builtin();
    if args.packs_summary {
        let mut counts = std::collections::BTreeMap::<String, usize>::new();
        for m in cat.search(None, None, None) {
            *counts.entry(m.pack.clone()).or_default() += 1;
        }
        crate::outln!("{}", serde_json::to_string_pretty(&counts)?)?;
        return Ok(exit::OK);
    }
    let risk = match &args.risk {
        Some(r) => Some(Risk::parse(r).ok_or_else(|| {
            Exit::new(
                exit::USAGE,
                format!("--risk must be read, write, admin or destructive, not `{r}`"),
            )
        })?),
        None => None,
    };
    let found = cat.search(args.search.as_deref(), args.pack.as_deref(), risk);
    let format = args.output.format(crate::render::Format::Ndjson);
    let records: Vec<serde_json::Value> = found
        .iter()
        .map(|m| serde_json::json!({"name": m.name, "scope": m.scope, "risk": m.risk, "pack": m.pack, "api": m.api, "lists": m.lists, "deprecated": m.deprecated, "doc": m.doc_url()}))
        .collect();
    crate::render::print(format, Vec::new(), &records)?;
    if found.is_empty() {
        crate::errln!("b24: no method matches");
    }
    Ok(exit::OK)
}
