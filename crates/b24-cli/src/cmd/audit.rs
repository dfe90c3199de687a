//! `b24 audit`: verify, read and export the keyed, hash-chained audit log.

use b24_guard::audit::Filter;

use crate::exec::Guard;
use crate::exit::{self, Exit};
use crate::globals::Globals;

#[derive(Debug, clap::Args)]
#[command(after_help = "Examples:
  b24 audit verify
  b24 audit tail -n 20 --decision deny
  b24 audit export --method 'crm.lead.*' --since 2026-01-01T00:00:00Z > leads.json")]
pub struct Args {
    #[command(subcommand)]
    pub cmd: Sub,
}

/// Which records to show.
#[derive(Debug, Clone, clap::Args)]
pub struct FilterArgs {
    /// Only this method (case-insensitive); a trailing `*` matches a prefix.
    #[arg(long)]
    pub method: Option<String>,
    /// Only this decision: allow, deny, dry_run, plan, replayed.
    #[arg(long)]
    pub decision: Option<String>,
    /// Only records at or after this time (RFC 3339, e.g. 2026-01-01T00:00:00Z).
    #[arg(long)]
    pub since: Option<String>,
}

impl FilterArgs {
    fn filter(&self) -> anyhow::Result<Filter> {
        let since = match &self.since {
            None => None,
            Some(s) => Some(s.parse::<jiff::Timestamp>().map_err(|e| {
                Exit::new(
                    exit::USAGE,
                    format!("--since {s}: not an RFC 3339 time ({e}); e.g. 2026-01-01T00:00:00Z"),
                )
            })?),
        };
        Ok(Filter {
            method: self.method.clone(),
            decision: self.decision.clone(),
            since,
        })
    }
}

#[derive(Debug, clap::Subcommand)]
pub enum Sub {
    /// Check the keyed chain and its head: exits 0 if intact, 3 naming the first changed,
    /// missing or cut record (line and seq), an emptied or deleted log, or a forged chain.
    #[command(after_help = "Example:\n  b24 audit verify")]
    Verify,
    /// Print the last records as NDJSON, optionally filtered.
    #[command(
        after_help = "Example:\n  b24 audit tail -n 20 --method 'crm.deal.*' --decision deny"
    )]
    Tail {
        #[arg(short = 'n', long, default_value_t = 10)]
        n: usize,
        #[command(flatten)]
        filter: FilterArgs,
        #[command(flatten)]
        output: crate::render::OutputArgs,
    },
    /// Print every matching record as one JSON array (for whoever reviews what an agent did).
    #[command(
        after_help = "Example:\n  b24 audit export --since 2026-01-01T00:00:00Z > audit.json"
    )]
    Export {
        #[command(flatten)]
        filter: FilterArgs,
        #[command(flatten)]
        output: crate::render::OutputArgs,
    },
    /// Print where the audit log and its head are.
    #[command(after_help = "Example:\n  b24 audit path")]
    Path,
}

pub async fn run(args: Args, g: &Globals) -> anyhow::Result<i32> {
    let guard = Guard::from_globals(g)?;
    let log = &guard.audit;
    let usage = |e: b24_guard::GuardError| Exit::new(exit::USAGE, e.to_string());
    match args.cmd {
        Sub::Verify => {
            let r = log.verify_report().map_err(usage)?;
            let mut out = serde_json::json!({
                "ok": r.is_ok(),
                "records": r.records,
                "legacy_records": r.legacy_records,
                "head": {"seq": r.head_seq, "mac": r.head_mac, "path": log.head_path()},
                "notes": r.notes,
                "path": log.path(),
            });
            for n in &r.notes {
                crate::errln!("b24: note: {n}");
            }
            match r.problem {
                None => {
                    crate::outln!("{out}")?;
                    Ok(exit::OK)
                }
                Some(p) => {
                    out["error"] = serde_json::json!(p.to_string());
                    out["problem"] = serde_json::json!(p);
                    crate::outln!("{out}")?;
                    Err(Exit::new(
                        exit::API,
                        format!(
                            "audit log {} failed verification: {p}",
                            log.path().display()
                        ),
                    ))
                }
            }
        }
        Sub::Tail { n, filter, output } => {
            let format = output.format(crate::render::Format::Ndjson);
            let records = log.records(&filter.filter()?, n).map_err(usage)?;
            crate::render::print(format, Vec::new(), &records)?;
            Ok(exit::OK)
        }
        Sub::Export { filter, output } => {
            let format = output.format(crate::render::Format::Json);
            let all = log.records(&filter.filter()?, usize::MAX).map_err(usage)?;
            crate::render::print(format, Vec::new(), &all)?;
            Ok(exit::OK)
        }
        Sub::Path => {
            crate::outln!(
                "{}",
                serde_json::json!({"path": log.path(), "head": log.head_path()})
            )?;
            Ok(exit::OK)
        }
    }
}
