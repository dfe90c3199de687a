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
    std::panic::set_hook(Box::new(print_panic));
    // ring as the process-default TLS provider before anything builds a reqwest client or a
    // rustls server (reqwest has no provider of its own here and would panic without one).
    b24::tls::install_default_provider();
    // A panic that reaches here (not one a task's join handle caught) ends the process with the
    // internal-failure code, not the runtime's 101, which no caller could read.
    std::panic::catch_unwind(run).unwrap_or(std::process::ExitCode::from(exit::INTERNAL as u8))
}

/// The panic hook: the default one prints the message as is, and a panic's message may carry
/// whatever the code was holding (a token in a formatted value, a portal's answer). This one
/// prints it through the one redactor, like every other message, then the backtrace when
/// `RUST_BACKTRACE` asks for one.
fn print_panic(info: &std::panic::PanicHookInfo<'_>) {
    let payload = info.payload();
    let message = payload
        .downcast_ref::<&str>()
        .copied()
        .or_else(|| payload.downcast_ref::<String>().map(String::as_str));
    let thread = std::thread::current();
    let backtrace = std::backtrace::Backtrace::capture();
    let backtrace = (backtrace.status() == std::backtrace::BacktraceStatus::Captured)
        .then(|| backtrace.to_string());
    let text = panic_text(
        thread.name(),
        message,
        info.location().map(|l| l.to_string()),
        backtrace.as_deref(),
    );
    let _ = std::io::Write::write_all(&mut std::io::stderr(), text.as_bytes());
}

/// What [`print_panic`] writes: one `b24: internal error` line (thread, place, message) and
/// the backtrace if any, all redacted and with control characters shown as escapes.
fn panic_text(
    thread: Option<&str>,
    message: Option<&str>,
    location: Option<String>,
    backtrace: Option<&str>,
) -> String {
    let mut line = format!(
        "b24: internal error: thread '{}' panicked",
        thread.unwrap_or("<unnamed>")
    );
    if let Some(l) = location {
        line.push_str(&format!(" at {l}"));
    }
    line.push_str(&format!(": {}", message.unwrap_or("(no message)")));
    let mut out = render::for_terminal(&b24_guard::redact::text(&line));
    out.push('\n');
    if let Some(bt) = backtrace {
        out.push_str(&b24_guard::redact::text(bt));
        out.push('\n');
    }
    out
}

fn run() -> std::process::ExitCode {
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
            crate::errln!("b24: cannot start the async runtime: {e}");
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn panic_messages_are_redacted() {
        b24_guard::redact::remember(["panic-known-s3cr3t-value".to_string()]);
        let t = panic_text(
            Some("tokio-runtime-worker"),
            Some(
                "called `Result::unwrap()` on an `Err` value: token panic-known-s3cr3t-value at https://p.example/rest/1/abcdef123456/x?auth=zzzzzzzz\x1b[2J",
            ),
            Some("crates/x.rs:1:2".into()),
            Some("   0: frame with panic-known-s3cr3t-value"),
        );
        for secret in ["panic-known-s3cr3t-value", "abcdef123456", "zzzzzzzz"] {
            assert!(!t.contains(secret), "{t}");
        }
        assert!(!t.contains('\x1b'), "control characters are escaped: {t}");
        assert!(
            t.starts_with(
                "b24: internal error: thread 'tokio-runtime-worker' panicked at crates/x.rs:1:2: called"
            ),
            "{t}"
        );
        assert!(t.contains("frame with [redacted]"), "{t}");
        assert_eq!(
            panic_text(None, None, None, None),
            "b24: internal error: thread '<unnamed>' panicked: (no message)\n"
        );
    }
}
