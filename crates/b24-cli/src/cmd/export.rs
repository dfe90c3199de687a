//! `b24 export`: stream every item of a list method as ndjson.
//!
//! Checkpoint order, per request's worth of items (a "page"):
//! 1. the progress *after* the page is written to `FILE.tmp` and fsynced (not yet visible);
//! 2. the page's items are written to stdout and flushed;
//! 3. `FILE.tmp` is renamed over `FILE` (one system call).
//!
//! A kill before 3 leaves the old checkpoint, which still lists the page's ID ranges as pending:
//! nothing is lost. Only a kill in the instant between the end of 2 and 3 (no await point, no
//! allocation between them) would repeat that one page on resume; a kill anywhere else —
//! including while waiting for the portal, where an export spends nearly all its time — resumes
//! with every item exactly once. SIGINT/SIGTERM are handled: the current page is finished and
//! checkpointed, then the command exits with 130.

use std::io::{IsTerminal, Write};
use std::path::PathBuf;
use std::time::Instant;

use b24::export::{ExportOptions, Progress, Strategy};
use futures::StreamExt;
use serde_json::{Map, Value};

use crate::cmd::call::read_params;
use crate::exit::{self, Exit};
use crate::globals::Globals;

#[derive(Debug, clap::Args)]
#[command(after_help = "Examples:
  b24 export crm.lead.list > leads.ndjson
  b24 export crm.deal.list --select ID,TITLE,STAGE_ID --filter '{\"CATEGORY_ID\":0}' | jq .TITLE
  b24 export crm.item.list --params '{\"entityTypeId\":2}' --checkpoint deals.cp >> deals.ndjson
  b24 export user.get --strategy offset

Strategies: `auto` (default) uses keyset paging by ID (no counting, 50 list commands to a
request, several requests in flight within the rate budget) when the method supports it, and
`offset` (start/next) otherwise. With --checkpoint, a killed export continues where it stopped;
append the second run's output to the first (>>) and every item is there once.")]
pub struct Args {
    /// List method, e.g. `crm.lead.list`.
    pub method: String,
    /// Parameters: inline JSON, `@file` or `-` for stdin.
    #[arg(long, short = 'p', value_name = "JSON|@FILE|-")]
    pub params: Option<String>,
    /// Fields to select (comma-separated); the ID is always included.
    #[arg(long, value_delimiter = ',', value_name = "F,...")]
    pub select: Vec<String>,
    /// Filter as a JSON object (merged into the params' filter).
    #[arg(long, value_name = "JSON")]
    pub filter: Option<String>,
    /// Paging strategy.
    #[arg(long, value_enum, default_value = "auto")]
    pub strategy: StrategyArg,
    /// Resume from / record progress in this file.
    #[arg(long, value_name = "FILE")]
    pub checkpoint: Option<PathBuf>,
    /// Requests in flight at once (each up to 2,500 items).
    #[arg(long, default_value_t = 4, value_parser = clap::value_parser!(u16).range(1..=32))]
    pub concurrency: u16,
}

#[derive(Debug, Clone, Copy, clap::ValueEnum)]
pub enum StrategyArg {
    Auto,
    Keyset,
    Offset,
}

/// Build the export's params from --params, --select and --filter.
pub fn build_params(
    params: Option<&str>,
    select: &[String],
    filter: Option<&str>,
) -> anyhow::Result<Value> {
    let mut p = read_params(params)?;
    let Some(obj) = p.as_object_mut() else {
        return Err(Exit::new(
            exit::USAGE,
            "--params must be a JSON object for export",
        ));
    };
    let select: Vec<Value> = select
        .iter()
        .map(|s| s.trim())
        .filter(|s| !s.is_empty())
        .map(|s| Value::String(s.to_string()))
        .collect();
    if !select.is_empty() {
        obj.insert("select".into(), Value::Array(select));
    }
    if let Some(f) = filter {
        let f: Value = serde_json::from_str(f)
            .map_err(|e| Exit::new(exit::USAGE, format!("--filter: not valid JSON: {e}")))?;
        let Value::Object(f) = f else {
            return Err(Exit::new(exit::USAGE, "--filter must be a JSON object"));
        };
        let key = obj
            .keys()
            .find(|k| k.eq_ignore_ascii_case("filter"))
            .cloned()
            .unwrap_or_else(|| "filter".into());
        let entry = obj.entry(key).or_insert_with(|| Value::Object(Map::new()));
        if !entry.is_object() {
            *entry = Value::Object(Map::new());
        }
        if let Value::Object(m) = entry {
            m.extend(f);
        }
    }
    Ok(p)
}

pub async fn run(args: Args, g: &Globals) -> anyhow::Result<i32> {
    let params = build_params(args.params.as_deref(), &args.select, args.filter.as_deref())?;
    let mut opts = ExportOptions::new(&args.method, params);
    opts.strategy = match args.strategy {
        StrategyArg::Auto => Strategy::Auto,
        StrategyArg::Keyset => Strategy::Keyset,
        StrategyArg::Offset => Strategy::Offset,
    };
    opts.concurrency = args.concurrency as usize;
    stream(opts, args.checkpoint, g).await
}

/// Run an export to stdout (shared with `b24 list --all`).
pub async fn stream(
    mut opts: ExportOptions,
    checkpoint: Option<PathBuf>,
    g: &Globals,
) -> anyhow::Result<i32> {
    let started = Instant::now();
    if let Some(cp) = &checkpoint
        && let Some(p) = Progress::load(cp)?
    {
        if !p.matches(&opts) {
            return Err(Exit::new(
                exit::USAGE,
                format!(
                    "checkpoint {} belongs to another export (method or params differ); remove it or use another file",
                    cp.display()
                ),
            ));
        }
        if p.is_done() {
            if !g.quiet {
                eprintln!(
                    "b24 export: checkpoint {} says the export is complete ({} items); nothing to do",
                    cp.display(),
                    p.emitted
                );
            }
            return Ok(exit::OK);
        }
        opts.resume = Some(p);
    }
    let resumed_from = opts.resume.as_ref().map(|p| p.emitted).unwrap_or(0);
    // The same gate as any other call: read-only list methods only, allow/deny lists, packs,
    // read-only mode, audit.
    let gate = crate::exec::gate(g, b24_guard::gate::Origin::Cli)?;
    let run = gate
        .export(b24_guard::gate::ExportRequest { opts })
        .await
        .map_err(crate::exec::gate_error)?;
    let b24_guard::gate::ExportRun {
        pages: mut s,
        client,
        end,
    } = run;
    let bar = progress_bar(g);
    let mut out = std::io::stdout();
    let mut buf: Vec<u8> = Vec::with_capacity(1 << 20);
    let mut emitted = 0u64;
    let mut interrupted = false;
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()).ok();
    loop {
        let next = tokio::select! {
            p = s.next() => p,
            _ = tokio::signal::ctrl_c() => { interrupted = true; None }
            _ = async { match term.as_mut() { Some(t) => { t.recv().await; } None => std::future::pending::<()>().await } } => { interrupted = true; None }
        };
        let Some(page) = next else { break };
        let page = match page {
            Ok(p) => p,
            Err(e) => {
                bar.finish_and_clear();
                summary(g, emitted, resumed_from, &client, started, "failed");
                let _ = end.finish("error", emitted);
                return Err(e.into());
            }
        };
        buf.clear();
        for it in &page.items {
            serde_json::to_writer(&mut buf, it)?;
            buf.push(b'\n');
        }
        let prepared = match &checkpoint {
            Some(cp) => Some(page.progress.prepare(cp)?),
            None => None,
        };
        if let Err(e) = out.write_all(&buf).and_then(|_| out.flush()) {
            if e.kind() == std::io::ErrorKind::BrokenPipe {
                // The reader went away (e.g. `| head`): stop quietly, say so in the audit log.
                let _ = end.finish("closed", emitted);
                return Ok(exit::OK);
            }
            return Err(e.into());
        }
        if let Some(p) = prepared {
            p.commit()?;
        }
        emitted += page.items.len() as u64;
        if let Some(t) = page.progress.total {
            bar.set_length(t.max(page.progress.emitted));
        }
        bar.set_position(page.progress.emitted);
    }
    bar.finish_and_clear();
    end.finish(if interrupted { "interrupted" } else { "ok" }, emitted)
        .map_err(crate::exec::gate_error)?;
    if interrupted {
        summary(g, emitted, resumed_from, &client, started, "interrupted");
        return Ok(exit::INTERRUPTED);
    }
    summary(g, emitted, resumed_from, &client, started, "done");
    Ok(exit::OK)
}

fn progress_bar(g: &Globals) -> indicatif::ProgressBar {
    if g.quiet || !std::io::stderr().is_terminal() {
        return indicatif::ProgressBar::hidden();
    }
    let bar = indicatif::ProgressBar::new(0);
    bar.set_style(
        indicatif::ProgressStyle::with_template(
            "{spinner} {pos} items ({per_sec}) [{elapsed_precise}] {wide_bar} eta {eta}",
        )
        .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar()),
    );
    bar.set_draw_target(indicatif::ProgressDrawTarget::stderr());
    bar
}

fn summary(
    g: &Globals,
    emitted: u64,
    resumed_from: u64,
    client: &b24::Client,
    started: Instant,
    what: &str,
) {
    if g.quiet {
        return;
    }
    let st = client.stats();
    let secs = started.elapsed().as_secs_f64();
    eprintln!(
        "b24 export: {what}: {emitted} items{} in {} requests, {} retries, {secs:.1} s ({:.0} items/s)",
        if resumed_from > 0 {
            format!(" (resumed after {resumed_from})")
        } else {
            String::new()
        },
        st.requests,
        st.retries,
        emitted as f64 / secs.max(1e-9)
    );
}
