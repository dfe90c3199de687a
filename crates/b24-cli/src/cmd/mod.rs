//! The command tree. One module per command; each has `Args` and `run`.

pub mod apply;
pub mod audit;
pub mod auth;
pub mod batch;
pub mod call;
pub mod completions;
pub mod db;
pub mod demo;
pub mod describe;
pub mod dlq;
pub mod doctor;
pub mod events;
pub mod export;
pub mod list;
pub mod mcp;
pub mod methods;
pub mod plan;
pub mod portals;
pub mod sandbox;
pub mod settle;
pub mod worker;

use crate::globals::Globals;

/// b24 — work with a Bitrix24 portal safely and fast.
///
/// stdout carries data only (JSON or NDJSON); messages, progress and logs go to stderr.
///
/// Exit codes: 0 ok; 1 done with partial failures; 2 usage or configuration; 3 API error;
/// 4 refused by policy; 5 authentication; 6 transient failure after retries;
/// 7 outcome unknown (a write may have happened); 8 internal or local-state failure;
/// 130 interrupted.
#[derive(Debug, clap::Parser)]
#[command(name = "b24", version, propagate_version = true, max_term_width = 100)]
pub struct Cli {
    #[command(flatten)]
    pub globals: Globals,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, clap::Subcommand)]
pub enum Command {
    /// Call any REST method (v2, or v3 with --v3).
    Call(call::Args),
    /// Run many commands in batches of 50, with $result references.
    Batch(batch::Args),
    /// Stream every item of a list method as NDJSON.
    Export(export::Args),
    /// List one page, or every page with --all.
    List(list::Args),
    /// Record a planned write for later `b24 apply`.
    Plan(plan::Args),
    /// Apply a recorded plan exactly once.
    Apply(apply::Args),
    /// Inspect and verify the audit log.
    Audit(audit::Args),
    /// Settle writes an earlier run left outcome-unknown (exit 7).
    Settle(settle::Args),
    /// Search the method catalog.
    Methods(methods::Args),
    /// Describe one method from the catalog.
    Describe(describe::Args),
    /// Bind, unbind and list event handlers; serve the online receiver.
    Events(events::Args),
    /// Pull offline events and run handlers for queued events.
    Worker(worker::Args),
    /// Inspect, replay and purge dead-lettered events.
    Dlq(dlq::Args),
    /// Database maintenance (migrations for PostgreSQL stores).
    Db(db::Args),
    /// Run the local emulated Bitrix24 portal.
    Sandbox(sandbox::Args),
    /// The portals the app is installed on: list, show, remove.
    Portals(portals::Args),
    /// OAuth login, status and logout.
    Auth(auth::Args),
    /// Diagnose configuration, connectivity, auth and limits.
    Doctor(doctor::Args),
    /// A guided tour against an embedded sandbox portal.
    Demo(demo::Args),
    /// Serve b24 as an MCP server (stdio, or Streamable HTTP with client tokens).
    Mcp(mcp::Args),
    /// Print shell completions.
    Completions(completions::Args),
}

pub async fn run(cli: Cli) -> anyhow::Result<i32> {
    let g = cli.globals;
    // Under `auth`, `--portal HOST` is the host to log in to; an installation named before
    // `auth` would be ignored, and `auth logout` would then delete the tokens of whichever
    // portal `B24_DOMAIN` names. Refused, so that the portal acted on is the one named.
    if let (Command::Auth(_), Some(p)) = (&cli.command, &g.portal) {
        return Err(crate::exit::Exit::new(
            crate::exit::USAGE,
            format!(
                "`b24 --portal {p} auth …`: under auth, --portal names the host to log in to; write `b24 auth SUBCOMMAND --portal HOST`"
            ),
        ));
    }
    pg_budget(&g)?;
    portals::prime(&g).await?;
    match cli.command {
        Command::Call(a) => call::run(a, &g).await,
        Command::Batch(a) => batch::run(a, &g).await,
        Command::Export(a) => export::run(a, &g).await,
        Command::List(a) => list::run(a, &g).await,
        Command::Plan(a) => plan::run(a, &g).await,
        Command::Apply(a) => apply::run(a, &g).await,
        Command::Audit(a) => audit::run(a, &g).await,
        Command::Settle(a) => settle::run(a, &g).await,
        Command::Methods(a) => methods::run(a, &g).await,
        Command::Describe(a) => describe::run(a, &g).await,
        Command::Events(a) => events::run(a, &g).await,
        Command::Worker(a) => worker::run(a, &g).await,
        Command::Dlq(a) => dlq::run(a, &g).await,
        Command::Db(a) => db::run(a, &g).await,
        Command::Sandbox(a) => sandbox::run(a, &g).await,
        Command::Portals(a) => portals::run(a, &g).await,
        Command::Auth(a) => auth::run(a, &g).await,
        Command::Doctor(a) => doctor::run(a, &g).await,
        Command::Demo(a) => demo::run(a, &g).await,
        Command::Mcp(a) => mcp::run(a, &g).await,
        Command::Completions(a) => completions::run(a, &g).await,
    }
}

/// `B24_PG_POOL_SIZE`: the most PostgreSQL connections this process opens, all its stores
/// together (`b24 worker`, `b24 events serve`, `b24 mcp` and the rest); the library validates
/// it and splits it between the stores (`b24::pg::PoolBudget`). Handed over before any store is
/// opened. Unset: the library's default.
///
/// Set but empty, or not UTF-8, in the process environment is a usage error too, not "unset":
/// [`Globals::lookup`] skips such values (for every variable), which here would silently
/// replace the operator's intended limit with the default — fail closed instead.
fn pg_budget(g: &Globals) -> anyhow::Result<()> {
    if let Some(raw) = std::env::var_os("B24_PG_POOL_SIZE") {
        let why = match raw.to_str() {
            None => Some("is not UTF-8"),
            Some(v) if v.trim().is_empty() => Some("is set but empty"),
            Some(_) => None,
        };
        if let Some(why) = why {
            return Err(crate::exit::Exit::new(
                crate::exit::USAGE,
                format!(
                    "B24_PG_POOL_SIZE {why}: set it to a whole number of connections per process, or unset it for the default"
                ),
            ));
        }
    }
    // A broken profile or --env-file is reported by the command that reads it.
    let Ok(lookup) = g.lookup() else {
        return Ok(());
    };
    if let Some(v) = lookup("B24_PG_POOL_SIZE") {
        let budget = b24::pg::PoolBudget::parse(&v)
            .map_err(|e| crate::exit::Exit::new(crate::exit::USAGE, e.to_string()))?;
        b24::pg::set_process_budget(budget);
    }
    Ok(())
}
