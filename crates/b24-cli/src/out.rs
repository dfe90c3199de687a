//! Data on stdout. A reader that goes away early (`b24 call … | head -1`) is not a failure of
//! the command: writing stops, nothing panics, and `main` exits quietly with the code the work
//! earned (the gate has already put a sent write in the audit log before anything is printed).

use std::io::Write;

use serde_json::Value;

/// stdout was closed by the reader.
#[derive(Debug)]
pub struct Closed;

impl std::fmt::Display for Closed {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("stdout was closed")
    }
}

impl std::error::Error for Closed {}

pub(crate) fn map(e: std::io::Error) -> anyhow::Error {
    if e.kind() == std::io::ErrorKind::BrokenPipe {
        anyhow::Error::new(Closed)
    } else {
        anyhow::Error::new(e).context("writing to stdout")
    }
}

/// Write raw bytes to stdout and flush.
pub fn bytes(b: &[u8]) -> anyhow::Result<()> {
    let mut out = std::io::stdout().lock();
    out.write_all(b).and_then(|_| out.flush()).map_err(map)
}

/// One JSON document with a newline: pretty on a terminal, compact in a pipe or file (or as
/// `--pretty` / `--compact` say; see [`crate::render`]).
pub fn pretty(v: &Value) -> anyhow::Result<()> {
    let mut s = if crate::render::pretty_stdout() {
        serde_json::to_string_pretty(v)?
    } else {
        serde_json::to_string(v)?
    };
    s.push('\n');
    bytes(s.as_bytes())
}

/// One value as a single NDJSON line.
pub fn line(v: &Value) -> anyhow::Result<()> {
    let mut s = serde_json::to_string(v)?;
    s.push('\n');
    bytes(s.as_bytes())
}

/// One line of text.
pub fn text(s: &str) -> anyhow::Result<()> {
    let mut line = String::with_capacity(s.len() + 1);
    line.push_str(s);
    line.push('\n');
    bytes(line.as_bytes())
}

/// `println!` for data on stdout, without its panic when the reader has gone: evaluates to
/// `anyhow::Result<()>`, so callers write `outln!(…)?`.
#[macro_export]
macro_rules! outln {
    () => {
        $crate::out::text("")
    };
    ($($arg:tt)*) => {
        $crate::out::text(&format!($($arg)*))
    };
}

/// One line on stderr, for messages to the person running b24.
pub fn err_text(s: &str) {
    use std::io::Write;
    let mut line = String::with_capacity(s.len() + 1);
    line.push_str(s);
    line.push('\n');
    // A full disk or a reader that went away (`2>/dev/full`, a closed pipe) must not turn a
    // finished command into a panic, exit 8 instead of its own code: `eprintln!` panics on a
    // failed write, so nothing in this binary uses it (clippy.toml forbids it).
    let _ = std::io::stderr().lock().write_all(line.as_bytes());
}

/// `eprintln!` without its panic when stderr cannot be written (see [`err_text`]).
#[macro_export]
macro_rules! errln {
    ($($arg:tt)*) => {
        $crate::out::err_text(&format!($($arg)*))
    };
}

/// Whether an error is (caused by) a closed stdout.
pub fn is_closed(err: &anyhow::Error) -> bool {
    err.chain().any(|c| c.downcast_ref::<Closed>().is_some())
}
