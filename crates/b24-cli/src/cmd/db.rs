//! `b24 db`: database maintenance for the PostgreSQL store.

use crate::cmd::events::open_store;
use crate::exit::{self, Exit};
use crate::globals::Globals;

#[derive(Debug, clap::Args)]
#[command(after_help = "Example:
  B24_STORE_URL=postgres://b24@db.internal/b24 b24 db migrate")]
pub struct Args {
    #[command(subcommand)]
    pub cmd: Sub,
    /// Store URL (postgres://… or a SQLite path).
    #[arg(long, env = "B24_STORE_URL", global = true)]
    pub store: Option<String>,
}

#[derive(Debug, clap::Subcommand)]
pub enum Sub {
    /// Apply the schema (also done automatically on connect).
    #[command(
        after_help = "Example:\n  B24_STORE_URL=postgres://b24@db.internal/b24 b24 db migrate"
    )]
    Migrate,
    /// Queue statistics.
    #[command(after_help = "Example:\n  b24 db status")]
    Status,
}

pub async fn run(args: Args, g: &Globals) -> anyhow::Result<i32> {
    let store = open_store(g, args.store.as_deref()).await?;
    let stats = store
        .stats()
        .await
        .map_err(|e| Exit::new(exit::USAGE, e.to_string()))?;
    match args.cmd {
        Sub::Migrate => {
            // The client's shared tables (rate-limit state, OAuth tokens) live beside the queue.
            let url = args
                .store
                .clone()
                .or_else(|| g.lookup().ok().and_then(|l| l("B24_STORE_URL")));
            let client_tables = match url.filter(|u| u.starts_with("postgres")) {
                Some(u) => {
                    b24::pg::PgStore::connect(&u)
                        .await
                        .map_err(|e| Exit::new(exit::USAGE, e.to_string()))?;
                    true
                }
                None => false,
            };
            crate::out::line(
                &serde_json::json!({"migrated": true, "backend": store.backend(), "client_tables": client_tables}),
            )?
        }
        Sub::Status => {
            crate::out::line(&serde_json::json!({"backend": store.backend(), "queue": stats}))?
        }
    }
    Ok(exit::OK)
}
