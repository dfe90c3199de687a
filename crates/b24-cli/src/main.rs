//! `b24`: the thin binary over the b24 library crates.
//!
//! stdout carries data only (JSON / NDJSON / CSV / a table / MCP JSON-RPC); everything else goes to stderr.
//! Exit codes are documented in [`exit`].
// Unused dependencies are a compile error (issue 16): rustc sees every crate this target
// links, so the check costs nothing beyond the build CI already does. Test builds see the
// dev-dependencies too, hence the `not(test)`.
#![cfg_attr(not(test), deny(unused_crate_dependencies))]

mod cmd;
mod exec;
mod exit;
mod globals;
mod logs;
mod mcp;
mod out;
mod policy_args;
mod render;

use clap::FromArgMatches;

fn main() -> std::process::ExitCode {
    // Parse with the plain command tree; only help, version and usage errors need the one
    // that hides the global flags in subcommands (building it costs a fifth of a call).
    let matches = match globals::tree().try_get_matches() {
        Ok(m) => m,
        Err(_) => globals::command().get_matches(),
    };
    let mut cli = cmd::Cli::from_arg_matches(&matches).unwrap_or_else(|e| e.exit());
    // `--portal` after the subcommand (see `globals::tree`).
    globals::lift_portal(&matches, &mut cli.globals).unwrap_or_else(|e| e.exit());
    globals::init_tracing(&cli.globals);
    let rt = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("b24: cannot start the async runtime: {e}");
            return std::process::ExitCode::from(exit::USAGE as u8);
        }
    };
    let result = rt.block_on(cmd::run(cli));
    match result {
        Ok(code) => std::process::ExitCode::from(code as u8),
        // The reader of stdout went away: stop quietly (see `out`).
        Err(err) if out::is_closed(&err) => std::process::ExitCode::from(exit::OK as u8),
        Err(err) => {
            let code = exit::code_for(&err);
            // Every message passes the one redactor (known secrets and credential shapes), and
            // shows control characters as escapes: a portal's error often repeats the value it
            // refused, which may come from outside and carry terminal sequences.
            let msg = render::for_terminal(&b24_guard::redact::text(&describe(&err)));
            let _ = std::io::Write::write_all(
                &mut std::io::stderr(),
                format!("b24: error: {msg}\n").as_bytes(),
            );
            std::process::ExitCode::from(code as u8)
        }
    }
}

/// The error as printed: for a portal error, its meaning and fix (from the library's table,
/// the same text MCP gives the model) under the portal's own words; an empty code is not
/// printed as a code.
fn describe(err: &anyhow::Error) -> String {
    let text = exit::chain_text(err).replace("<empty code>: ", "");
    for cause in err.chain() {
        if let Some(b24::Error::Api(a)) = cause.downcast_ref::<b24::Error>() {
            let f = b24_guard::fixes::portal_error(&a.code, &a.description, &a.method);
            return format!("{text}\n  meaning: {}\n  fix: {}", f.meaning, f.fix);
        }
    }
    text
}
