//! `b24 export`: stream every item of a list method (NDJSON by default; `-o csv|json|table`).
//!
//! With `--out FILE --checkpoint CP` the file and the checkpoint always agree, whenever the
//! process is killed. Per request's worth of items (a "page"):
//! 1. the page is appended to FILE and fsynced;
//! 2. the progress after the page, with FILE's length, is written to `CP.tmp`, fsynced and
//!    renamed over CP (one system call).
//!
//! A resume first truncates FILE to the length CP records: bytes of a page whose checkpoint
//! never became visible are cut off, and that page is fetched again. Every item ends up in the
//! file exactly once, with no torn line. A FILE shorter than CP says was changed by someone
//! else: that is refused rather than guessed at.
//!
//! To stdout (nothing can be truncated there) the order is: prepare the checkpoint (fsynced,
//! not visible), write and flush the page, rename. A kill before the rename loses nothing; only
//! a kill in the instant between the flush and the rename would repeat that one page, so the
//! skill and the docs use `--out`. SIGINT/SIGTERM are handled: the current page is finished and
//! checkpointed, then the command exits with 130.

use std::io::{IsTerminal, Write};
use std::path::{Path, PathBuf};
use std::time::Instant;

use b24::export::{ExportOptions, Strategy};
use futures::StreamExt;
use serde_json::{Map, Value};

use crate::render::{Format, Records};

mod checkpoint;
mod limit;

use checkpoint::{
    Checkpoint, OutDigest, OutputState, digest_hex, load_checkpoint, open_out,
    prepare_stdout_checkpoint, refuse_clobbering, save_checkpoint, state_err, verify_prefix,
};
pub use limit::{fetch_limited, write_all};

use crate::cmd::call::read_params;
use crate::exit::{self, Exit};
use crate::globals::Globals;

#[derive(Debug, clap::Args)]
#[command(after_help = "Examples:
  b24 export crm.lead.list --out leads.ndjson --checkpoint leads.cp   # rerun after a kill
  b24 export crm.deal.list --select ID,TITLE,STAGE_ID --filter '{\"CATEGORY_ID\":0}' | jq .TITLE
  b24 export crm.deal.list --select ID,TITLE,OPPORTUNITY -o csv --out deals.csv
  b24 export crm.lead.list --params '{\"order\":{\"ID\":\"DESC\"}}' --limit 5 -o table
  b24 export user.get --strategy offset

Strategies: `auto` (default) uses keyset paging by ID (no counting, 50 list commands to a
request, several requests in flight within the rate budget) when the method supports it, and
`offset` (start/next) otherwise. With --out FILE --checkpoint CP, a killed export continues
where it stopped when run again: FILE is cut back to what CP recorded, so every item is in it
exactly once. --limit N pages with start/next in the params' order and stops after N items
(no more requests than N needs).")]
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
    /// Write the items to FILE instead of stdout (resumable with --checkpoint).
    #[arg(long, value_name = "FILE")]
    pub out: Option<PathBuf>,
    /// Stop after N items (in the params' order; no more pages fetched than N needs).
    #[arg(long, value_name = "N", conflicts_with = "checkpoint")]
    pub limit: Option<u64>,
    #[command(flatten)]
    pub output: crate::render::OutputArgs,
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
    let format = args.output.format(Format::Ndjson);
    let mut hint: Vec<String> = args
        .select
        .iter()
        .map(|s| s.trim().to_string())
        .filter(|s| !s.is_empty() && !s.contains('*'))
        .collect();
    if hint.is_empty() {
        hint = crate::render::select_columns(&params);
    }
    let target = Target {
        format,
        file: args.out,
        hint,
    };
    check_out(&target, args.checkpoint.as_deref(), g)?;
    if let Some(n) = args.limit {
        return limit::limited(&args.method, params, n, target, g).await;
    }
    let mut opts = ExportOptions::new(&args.method, params);
    opts.strategy = match args.strategy {
        StrategyArg::Auto => Strategy::Auto,
        StrategyArg::Keyset => Strategy::Keyset,
        StrategyArg::Offset => Strategy::Offset,
    };
    opts.concurrency = args.concurrency as usize;
    stream(opts, args.checkpoint, target, g).await
}

/// Refuse an `--out` that is the checkpoint itself or one of b24's own records (see
/// [`refuse_clobbering`]), before anything is opened or fetched.
pub fn check_out(target: &Target, checkpoint: Option<&Path>, g: &Globals) -> anyhow::Result<()> {
    if target.file.is_none() && checkpoint.is_none() {
        return Ok(());
    }
    let gate = crate::exec::gate(g, b24_guard::gate::Origin::Cli)?;
    let mut protected = vec![g.state_dir()];
    if let Some(d) = gate.audit_log().path().parent() {
        protected.push(d.to_path_buf());
    }
    if let Some(out) = &target.file {
        refuse_clobbering("--out", out, checkpoint, &protected)?;
    }
    // The checkpoint is renamed over its path: never over one of b24's records either.
    if let Some(cp) = checkpoint {
        refuse_clobbering("--checkpoint", cp, None, &protected)?;
    }
    Ok(())
}

/// Where and how an export's items go.
pub struct Target {
    pub format: Format,
    /// `--out FILE`; stdout when `None`.
    pub file: Option<PathBuf>,
    /// Columns for csv/table (from `--select`).
    pub hint: Vec<String>,
}

/// Run an export (shared with `b24 list --all`).
pub async fn stream(
    mut opts: ExportOptions,
    checkpoint: Option<PathBuf>,
    target: Target,
    g: &Globals,
) -> anyhow::Result<i32> {
    let started = Instant::now();
    if checkpoint.is_some() && matches!(target.format, Format::Json | Format::Table) {
        return Err(Exit::new(
            exit::USAGE,
            "--checkpoint resumes ndjson or csv output (a JSON document or a table cannot be continued); use -o ndjson or -o csv",
        ));
    }
    let mut resume_output: Option<OutputState> = None;
    let mut resume_columns: Option<Vec<String>> = None;
    if let Some(cp) = &checkpoint
        && let Some(c) = load_checkpoint(cp)?
    {
        let p = c.progress;
        if !p.matches(&opts) {
            return Err(Exit::new(
                exit::USAGE,
                format!(
                    "checkpoint {} belongs to another export (method or params differ); remove it or use another file",
                    cp.display()
                ),
            ));
        }
        let recorded_file = c.output.as_ref().and_then(|o| o.file.clone());
        match (&recorded_file, &target.file) {
            (Some(f), None) => {
                return Err(Exit::new(
                    exit::USAGE,
                    format!(
                        "checkpoint {} records an export into {}: resume it with --out {}",
                        cp.display(),
                        f.display(),
                        f.display()
                    ),
                ));
            }
            (None, Some(f)) if p.emitted > 0 => {
                return Err(Exit::new(
                    exit::USAGE,
                    format!(
                        "checkpoint {} records an export to stdout, not into {}: resume it without --out (appending with >>), or remove the checkpoint to start over",
                        cp.display(),
                        f.display()
                    ),
                ));
            }
            (Some(a), Some(b)) if std::path::absolute(a).ok() != std::path::absolute(b).ok() => {
                return Err(Exit::new(
                    exit::USAGE,
                    format!(
                        "checkpoint {} records an export into {}, not {}",
                        cp.display(),
                        a.display(),
                        b.display()
                    ),
                ));
            }
            _ => {}
        }
        if let Some(o) = &c.output
            && o.format != target.format
            && p.emitted > 0
        {
            return Err(Exit::new(
                exit::USAGE,
                format!(
                    "checkpoint {} records {:?} output; resume with the same -o",
                    cp.display(),
                    o.format
                ),
            ));
        }
        if p.is_done() {
            if !g.quiet {
                crate::errln!(
                    "b24 export: checkpoint {} says the export is complete ({} items); nothing to do",
                    cp.display(),
                    p.emitted
                );
            }
            return Ok(exit::OK);
        }
        resume_columns = c.output.as_ref().and_then(|o| o.columns.clone());
        resume_output = c.output.filter(|o| o.file.is_some());
        opts.resume = Some(p);
    }
    let resumed_from = opts.resume.as_ref().map(|p| p.emitted).unwrap_or(0);
    // The same gate as any other call: read-only list methods only, allow/deny lists, packs,
    // read-only mode, audit.
    let gate = crate::exec::gate(g, b24_guard::gate::Origin::Cli)?;
    let mut digest = match (&target.file, &resume_output) {
        (Some(path), Some(o)) => verify_prefix(path, o)?,
        _ => OutDigest::default(),
    };
    let mut file = match &target.file {
        Some(path) => Some(open_out(path, resume_output.as_ref().map(|o| o.bytes))?),
        None => None,
    };
    let mut file_len = resume_output.as_ref().map(|o| o.bytes).unwrap_or(0);
    let pretty = match &target.file {
        Some(_) => crate::render::pretty_forced(),
        None => crate::render::pretty_stdout(),
    };
    let mut records = Records::new(
        Vec::with_capacity(1 << 20),
        target.format,
        pretty,
        target.hint.clone(),
    )
    .resume_columns(resume_columns);
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
    let mut emitted = 0u64;
    let mut interrupted = false;
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()).ok();
    let write_err = |e: std::io::Error, what: &Option<PathBuf>| match what {
        Some(p) => Exit::new(exit::INTERNAL, format!("--out {}: {e}", p.display())),
        None => crate::out::map(e),
    };
    // Twice a second: is the client waiting for a method's operating-time budget?
    let mut tick = tokio::time::interval(std::time::Duration::from_millis(500));
    let mut noted = None;
    loop {
        let next = tokio::select! {
            p = s.next() => p,
            _ = tick.tick() => { show_wait(&bar, &client, g, &mut noted); continue; }
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
        for it in &page.items {
            records.push(it)?;
        }
        let buf = std::mem::take(records.get_mut());
        match (&mut file, &checkpoint) {
            (Some(f), cp) => {
                // 1. the page into the file, durable; 2. the checkpoint that says so.
                f.write_all(&buf)
                    .and_then(|_| if cp.is_some() { f.sync_data() } else { Ok(()) })
                    .map_err(|e| write_err(e, &target.file))?;
                file_len += buf.len() as u64;
                sha2::Digest::update(&mut digest, &buf);
                if let Some(cp) = cp {
                    save_checkpoint(
                        cp,
                        &Checkpoint {
                            progress: page.progress.clone(),
                            output: Some(OutputState {
                                file: target.file.clone(),
                                bytes: file_len,
                                format: target.format,
                                columns: records.columns().map(<[String]>::to_vec),
                                sha256: Some(digest_hex(&digest)),
                            }),
                        },
                    )?;
                }
            }
            (None, cp) => {
                let prepared = match cp {
                    Some(cp) => Some(prepare_stdout_checkpoint(
                        cp,
                        &page.progress,
                        target.format,
                        &records,
                    )?),
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
                if let Some((tmp, cp)) = prepared {
                    std::fs::rename(&tmp, cp).map_err(|e| {
                        state_err(format!("cannot write checkpoint {}: {e}", cp.display()))
                    })?;
                }
            }
        }
        *records.get_mut() = buf;
        records.get_mut().clear();
        emitted += page.items.len() as u64;
        if let Some(t) = page.progress.total {
            bar.set_length(t.max(page.progress.emitted));
        }
        bar.set_position(page.progress.emitted);
    }
    bar.finish_and_clear();
    // Close the output: a JSON array's `]`, a table, a csv header for an empty selection.
    let tail = records.finish()?;
    if !tail.is_empty() {
        match &mut file {
            Some(f) => f
                .write_all(&tail)
                .and_then(|_| f.sync_data())
                .map_err(|e| write_err(e, &target.file))?,
            None => crate::out::bytes(&tail)?,
        }
    }
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
            "{spinner} {pos} items ({per_sec}) [{elapsed_precise}] {wide_bar} eta {eta} {msg}",
        )
        .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar()),
    );
    bar.set_draw_target(indicatif::ProgressDrawTarget::stderr());
    bar
}

/// Show what the client waits for: on the bar, or (no terminal) one stderr line per long
/// wait. Pacing keeps a long export under the method's operating-time budget; a block is the
/// portal's, and the export waits it out instead of failing.
fn show_wait(
    bar: &indicatif::ProgressBar,
    client: &b24::Client,
    g: &Globals,
    noted: &mut Option<(String, bool)>,
) {
    let w = client
        .waiting()
        .into_iter()
        .max_by(|a, b| a.secs_left.total_cmp(&b.secs_left));
    let Some(w) = w.filter(|w| w.secs_left >= 1.0) else {
        bar.set_message("");
        *noted = None;
        return;
    };
    let msg = if w.blocked {
        format!(
            "{} blocked by the portal (OPERATION_TIME_LIMIT): waiting {:.0} s for its budget",
            w.method, w.secs_left
        )
    } else {
        format!(
            "{} paced to its operating-time budget: next request in {:.0} s",
            w.method, w.secs_left
        )
    };
    if !bar.is_hidden() {
        bar.set_message(msg);
        return;
    }
    let key = (w.method.clone(), w.blocked);
    if !g.quiet && (w.blocked || w.secs_left >= 10.0) && noted.as_ref() != Some(&key) {
        crate::errln!("b24 export: {msg}");
        *noted = Some(key);
    }
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
    let paced = if st.operating_waits > 0 || st.operating_blocks > 0 {
        format!(
            ", {:.1} s waiting for operating-time budgets ({} blocks)",
            st.operating_wait_ms as f64 / 1000.0,
            st.operating_blocks
        )
    } else {
        String::new()
    };
    crate::errln!(
        "b24 export: {what}: {emitted} items{} in {} requests, {} retries{paced}, {secs:.1} s ({:.0} items/s)",
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
