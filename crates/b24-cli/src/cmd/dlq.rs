//! `b24 dlq`: inspect, replay and purge dead-lettered events, and (`list --rejected`) see what
//! the receiver turned away: deliveries refused at the door (bad or forged token, unknown
//! member, too large, malformed) and authenticated ones it could not represent, kept raw.
//! Neither kind is in the queue, so neither can be replayed; no body or token is printed.

use crate::cmd::events::open_store;
use crate::exit::{self, Exit};
use crate::globals::Globals;

#[derive(Debug, clap::Args)]
#[command(after_help = "Examples:
  b24 dlq list
  b24 dlq list --rejected  # refused by the receiver: reason, claimed event/member, size
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
    /// Dead letters as NDJSON (with --rejected: what the receiver refused instead).
    #[command(after_help = "Examples:\n  b24 dlq list --limit 20\n  b24 dlq list --rejected")]
    List {
        /// At most this many dead letters (of each kind, with --rejected).
        #[arg(long, default_value_t = 100)]
        limit: i64,
        /// List deliveries the receiver refused instead: `rejected_at_door` (not
        /// authenticated, or over a limit; newest first; the event and member are what the
        /// body claimed) and `unrepresentable` (authenticated, kept raw; oldest first). Each
        /// with its reason; never the body or a token.
        #[arg(long)]
        rejected: bool,
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
    // Dead letters keep a handler's stderr and an event's fields, which may echo a credential:
    // the redactor must know the configured ones before anything is printed. A configuration
    // that does not resolve still leaves the shape-based redaction, and dlq needs no portal.
    let _ = g.config();
    let err = |e: b24_events::EventsError| Exit::new(exit::USAGE, e.to_string());
    if let Sub::List {
        limit,
        rejected: true,
        output,
    } = &args.cmd
    {
        let url = crate::cmd::events::store_url(g, args.store.as_deref())?;
        b24::config::store_kind(&url).map_err(|e| Exit::new(exit::USAGE, e.to_string()))?;
        let inbox = b24_events::inbox::Inbox::open(&url).await.map_err(err)?;
        let records = rejected(&inbox, *limit).await.map_err(err)?;
        crate::render::print(
            output.format(crate::render::Format::Ndjson),
            Vec::new(),
            &records,
        )?;
        return Ok(exit::OK);
    }
    let store = open_store(g, args.store.as_deref()).await?;
    match args.cmd {
        Sub::List { limit, output, .. } => {
            let format = output.format(crate::render::Format::Ndjson);
            let records: Vec<serde_json::Value> = store
                .dlq_list(limit)
                .await
                .map_err(err)?
                .into_iter()
                .map(|d| serde_json::json!({"id": d.id, "key": d.key, "event": d.name, "attempts": d.attempts, "last_error": b24_guard::redact::text(&d.last_error), "failed_at": d.failed_at}))
                .collect();
            crate::render::print(format, Vec::new(), &records)?;
        }
        Sub::Show { id } => match store.dlq_get(id).await.map_err(err)? {
            // `last_error` holds a handler's stderr tail and the payload an event's fields:
            // either may carry a credential, so both pass the one redactor on the way out.
            Some(d) => crate::out::text(&serde_json::to_string_pretty(
                &b24_guard::redact::value(&serde_json::to_value(&d)?),
            )?)?,
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

/// The receiver's refusals as records: at the door first (newest first), then the
/// authenticated deliveries kept raw (only their size: the raw body holds tokens).
async fn rejected(
    inbox: &b24_events::inbox::Inbox,
    limit: i64,
) -> b24_events::Result<Vec<serde_json::Value>> {
    let ts = |t: f64| {
        jiff::Timestamp::from_millisecond((t * 1000.0) as i64)
            .map(|x| x.to_string())
            .unwrap_or_default()
    };
    let mut out: Vec<serde_json::Value> = inbox
        .refusals(limit)
        .await?
        .into_iter()
        .map(|r| {
            serde_json::json!({
                "kind": "rejected_at_door", "id": r.id, "reason": r.reason,
                "claimed_event": r.event, "claimed_member_id": r.member_id, "bytes": r.bytes,
                "not_noted_before": r.more, "received_at": ts(r.received_at),
            })
        })
        .collect();
    out.extend(inbox.rejects(limit).await?.into_iter().map(|r| {
        serde_json::json!({
            "kind": "unrepresentable", "id": r.id, "key": r.key, "reason": r.reason,
            "event": r.event, "member_id": r.member_id, "bytes": r.raw_body.len(),
            "received_at": ts(r.received_at),
        })
    }));
    Ok(out)
}
