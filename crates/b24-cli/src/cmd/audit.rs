//! `b24 audit`: inspect and verify the hash-chained audit log.

use crate::exec::Guard;
use crate::exit::{self, Exit};
use crate::globals::Globals;

#[derive(Debug, clap::Args)]
#[command(after_help = "Examples:
  b24 audit verify
  b24 audit tail -n 20")]
pub struct Args {
    #[command(subcommand)]
    pub cmd: Sub,
}

#[derive(Debug, clap::Subcommand)]
pub enum Sub {
    /// Check the hash chain: exits 0 if intact, 3 naming the first changed or missing line.
    #[command(after_help = "Example:\n  b24 audit verify")]
    Verify,
    /// Print the last records as NDJSON.
    #[command(after_help = "Example:\n  b24 audit tail -n 20")]
    Tail {
        #[arg(short = 'n', long, default_value_t = 10)]
        n: usize,
    },
    /// Print where the audit log is.
    #[command(after_help = "Example:\n  b24 audit path")]
    Path,
}

pub async fn run(args: Args, g: &Globals) -> anyhow::Result<i32> {
    let guard = Guard::from_globals(g)?;
    match args.cmd {
        Sub::Verify => match guard
            .audit
            .verify()
            .map_err(|e| Exit::new(exit::USAGE, e.to_string()))?
        {
            Ok(n) => {
                println!(
                    "{}",
                    serde_json::json!({"ok": true, "records": n, "path": guard.audit.path()})
                );
                Ok(exit::OK)
            }
            Err(why) => {
                println!(
                    "{}",
                    serde_json::json!({"ok": false, "error": why, "path": guard.audit.path()})
                );
                Err(Exit::new(
                    exit::API,
                    format!(
                        "audit log {} failed verification: {why}",
                        guard.audit.path().display()
                    ),
                ))
            }
        },
        Sub::Tail { n } => {
            for r in guard
                .audit
                .tail(n)
                .map_err(|e| Exit::new(exit::USAGE, e.to_string()))?
            {
                println!("{r}");
            }
            Ok(exit::OK)
        }
        Sub::Path => {
            println!("{}", serde_json::json!({"path": guard.audit.path()}));
            Ok(exit::OK)
        }
    }
}
