//! `b24 dlq`: inspect, replay and purge dead-lettered events.

use crate::cmd::events::open_store;
use crate::exit::{self, Exit};
use crate::globals::Globals;

#[derive(Debug, clap::Args)]
#[command(after_help = "Examples:
  b24 dlq list
  b24 dlq show 12
  b24 dlq replay 12        # or: b24 dlq replay --all
  b24 dlq purge --yes")]
pub struct Args {
    #[command(subcommand)]
    pub cmd: Sub,
    /// Queue store: a SQLite path (default: queue.db in the state dir) or postgres://…
    #[arg(long, env = "B24_STORE_URL", global = true)]
    pub store: Option<String>,
}

#[derive(Debug, clap::Subcommand)]
pub enum Sub {
    /// Dead letters as NDJSON.
    #[command(after_help = "Example:\n  b24 dlq list --limit 20")]
    List {
        /// At most this many dead letters.
        #[arg(long, default_value_t = 100)]
        limit: i64,
        #[command(flatten)]
        output: crate::render::OutputArgs,
    },
    /// One dead letter with its payload and last error.
    #[command(after_help = "Example:\n  b24 dlq show 42")]
    Show { id: i64 },
    /// Put dead letters back into the queue with fresh attempts.
    #[command(after_help = "Example:\n  b24 dlq replay --all")]
    Replay {
        id: Option<i64>,
        #[arg(long, conflicts_with = "id")]
        all: bool,
    },
    /// Delete every dead letter.
    #[command(after_help = "Example:\n  b24 dlq purge --yes")]
    Purge {
        /// Required: purging cannot be undone.
        #[arg(long)]
        yes: bool,
    },
}

pub async fn run(args: Args, g: &Globals) -> anyhow::Result<i32> {
    let store = open_store(g, args.store.as_deref()).await?;
    let err = |e: b24_events::EventsError| Exit::new(exit::USAGE, e.to_string());
    match args.cmd {
        Sub::List { limit, output } => {
            let format = output.format(crate::render::Format::Ndjson);
            let records: Vec<serde_json::Value> = store
                .dlq_list(limit)
                .await
                .map_err(err)?
                .into_iter()
                .map(|d| serde_json::json!({"id": d.id, "key": d.key, "event": d.name, "attempts": d.attempts, "last_error": d.last_error, "failed_at": d.failed_at}))
                .collect();
            crate::render::print(format, Vec::new(), &records)?;
        }
        Sub::Show { id } => match store.dlq_get(id).await.map_err(err)? {
            Some(d) => crate::out::text(&serde_json::to_string_pretty(&d)?)?,
            None => return Err(Exit::new(exit::API, format!("no dead letter {id}"))),
        },
        Sub::Replay { id, all } => {
            if id.is_none() && !all {
                return Err(Exit::new(exit::USAGE, "give a dead-letter id or --all"));
            }
            let n = store.dlq_replay(id).await.map_err(err)?;
            crate::outln!("{}", serde_json::json!({"replayed": n}))?;
        }
        Sub::Purge { yes } => {
            if !yes {
                return Err(Exit::new(
                    exit::USAGE,
                    "purging deletes dead letters for good: re-run with --yes",
                ));
            }
            crate::outln!(
                "{}",
                serde_json::json!({"purged": store.dlq_purge().await.map_err(err)?})
            )?;
        }
    }
    Ok(exit::OK)
}
