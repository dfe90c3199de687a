//! The receiver's own records, beside the queue: the portal each `member_id` was verified on,
//! the deliveries that were authenticated but cannot be represented as JSON (kept raw, with the
//! reason), and — for SQLite — the flush that makes an enqueue survive power loss.
//!
//! It opens its own connection to the same database as the queue ([`crate::Store`]) and uses
//! its own tables (`b24_receiver_portals`, `b24_receiver_rejects`, and `b24_receiver_refused`
//! for deliveries refused at the door, see [`Refused`]), so the queue's schema is not touched.

mod refused;
mod rows;

pub use refused::{RefusalBudget, Refused};

use std::path::PathBuf;
use std::sync::{Arc, Mutex};

use b24::pg::{MigrationLock, PgRole, PoolSpec};
use deadpool_postgres::Pool;
use rusqlite::{OptionalExtension, params};

use crate::{EventsError, Result, now};

const SQLITE_SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS b24_receiver_portals (
  member_id TEXT PRIMARY KEY, domain TEXT NOT NULL UNIQUE, updated_at REAL NOT NULL);
CREATE TABLE IF NOT EXISTS b24_receiver_rejects (
  id INTEGER PRIMARY KEY AUTOINCREMENT, key TEXT NOT NULL UNIQUE, member_id TEXT NOT NULL,
  event TEXT NOT NULL, reason TEXT NOT NULL, raw_body BLOB NOT NULL, received_at REAL NOT NULL);
";

/// The advisory lock [`PG_SCHEMA`] (with the refused and installations tables) is applied under.
const PG_SCHEMA_LOCK: i64 = 724243;

const PG_SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS b24_receiver_portals (
  member_id TEXT PRIMARY KEY, domain TEXT NOT NULL UNIQUE, updated_at DOUBLE PRECISION NOT NULL);
CREATE TABLE IF NOT EXISTS b24_receiver_rejects (
  id BIGSERIAL PRIMARY KEY, key TEXT NOT NULL UNIQUE, member_id TEXT NOT NULL, event TEXT NOT NULL,
  reason TEXT NOT NULL, raw_body BYTEA NOT NULL, received_at DOUBLE PRECISION NOT NULL);
";

/// An authenticated delivery that was not queued because it cannot be represented.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct Reject {
    pub id: i64,
    pub key: String,
    pub member_id: String,
    pub event: String,
    pub reason: String,
    /// The body exactly as received (tokens included: the table is as private as the queue).
    pub raw_body: Vec<u8>,
    pub received_at: f64,
}

impl rows::FromRow for Reject {
    fn from_row(r: &rows::Row<'_, '_>) -> Result<Self> {
        Ok(Reject {
            id: r.get(0)?,
            key: r.get(1)?,
            member_id: r.get(2)?,
            event: r.get(3)?,
            reason: r.get(4)?,
            raw_body: r.get(5)?,
            received_at: r.get(6)?,
        })
    }
}

/// The receiver's side store.
#[derive(Clone)]
pub enum Inbox {
    Sqlite {
        conn: Arc<Mutex<rusqlite::Connection>>,
        /// The queue's write-ahead log, flushed after each enqueue.
        wal: PathBuf,
    },
    Postgres(Pool),
}

fn se(x: impl std::fmt::Display) -> EventsError {
    EventsError::Store(x.to_string())
}

impl Inbox {
    /// Open beside the queue at the same URL (the rules of [`crate::Store::open`]).
    pub async fn open(url: &str) -> Result<Inbox> {
        if url.starts_with("postgres://") || url.starts_with("postgresql://") {
            return Self::open_postgres(url, &PoolSpec::for_role(PgRole::Inbox)).await;
        }
        let path = PathBuf::from(
            url.strip_prefix("sqlite://")
                .or_else(|| url.strip_prefix("sqlite:"))
                .unwrap_or(url),
        );
        let conn = rusqlite::Connection::open(&path).map_err(se)?;
        conn.busy_timeout(std::time::Duration::from_secs(30))
            .map_err(se)?;
        conn.pragma_update(None, "journal_mode", "WAL")
            .map_err(se)?;
        // This connection's own commits (dead letters, portal records) reach the disk before
        // they return.
        conn.pragma_update(None, "synchronous", "FULL")
            .map_err(se)?;
        conn.execute_batch(SQLITE_SCHEMA).map_err(se)?;
        conn.execute_batch(refused::SQLITE_SCHEMA).map_err(se)?;
        conn.execute_batch(crate::installs::SQLITE_SCHEMA)
            .map_err(se)?;
        // A store created before installations had `wake_at` (it exists: the error is fine).
        for col in ["wake_at", "pull_after", "idle_backoff"] {
            let _ = conn.execute(
                &format!("ALTER TABLE b24_installations ADD COLUMN {col} REAL NOT NULL DEFAULT 0"),
                [],
            );
        }
        let mut wal = path.into_os_string();
        wal.push("-wal");
        Ok(Inbox::Sqlite {
            conn: Arc::new(Mutex::new(conn)),
            wal: wal.into(),
        })
    }

    /// Open a PostgreSQL inbox with an explicit pool (size, wait) instead of the inbox's share
    /// of the process's connection budget ([`b24::pg::PoolBudget`]).
    pub async fn open_postgres(url: &str, spec: &PoolSpec) -> Result<Inbox> {
        let p = b24::pg::open_pool(url, spec, MigrationLock::Key(PG_SCHEMA_LOCK), |tx| {
            Box::pin(async move {
                b24::pg::batch(tx, PG_SCHEMA).await?;
                b24::pg::batch(tx, refused::PG_SCHEMA).await?;
                b24::pg::batch(tx, crate::installs::PG_SCHEMA).await
            })
        })
        .await
        .map_err(se)?;
        Ok(Inbox::Postgres(p.pool))
    }

    async fn sqlite<T: Send + 'static>(
        conn: &Arc<Mutex<rusqlite::Connection>>,
        f: impl FnOnce(&rusqlite::Connection) -> rusqlite::Result<T> + Send + 'static,
    ) -> Result<T> {
        let conn = conn.clone();
        tokio::task::spawn_blocking(move || {
            let c = conn.lock().unwrap_or_else(|p| p.into_inner());
            f(&c).map_err(se)
        })
        .await
        .map_err(se)?
    }

    /// Make the queue's last commit durable across power loss.
    ///
    /// The queue's SQLite connection commits with `synchronous=NORMAL`: in WAL mode a commit
    /// is written to the log but not fsynced. fsync of the log file flushes it (every frame,
    /// whichever connection wrote it). If a checkpoint moved the frames into the database
    /// first, SQLite fsynced the database before reusing the log, so they are durable already.
    /// PostgreSQL commits are durable (`synchronous_commit=on`, the default): nothing to do.
    pub async fn sync_queue(&self) -> Result<()> {
        let Inbox::Sqlite { wal, .. } = self else {
            return Ok(());
        };
        let wal = wal.clone();
        tokio::task::spawn_blocking(move || match std::fs::File::open(&wal) {
            Ok(f) => f.sync_data(),
            // No log: every connection closed and SQLite checkpointed it into the database.
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(e),
        })
        .await
        .map_err(se)?
        .map_err(|e| EventsError::Store(format!("fsync of the queue's log: {e}")))
    }

    /// Keep an authenticated delivery that cannot be queued: reason and raw body (a replay of
    /// the same delivery, same key, is kept once).
    pub async fn reject(
        &self,
        key: &str,
        member_id: &str,
        event: &str,
        reason: &str,
        raw_body: &[u8],
    ) -> Result<()> {
        let (key, member, event, reason, raw) = (
            key.to_string(),
            member_id.to_string(),
            event.to_string(),
            reason.to_string(),
            raw_body.to_vec(),
        );
        match self {
            Inbox::Sqlite { conn, .. } => {
                Self::sqlite(conn, move |c| {
                    c.execute(
                        "INSERT INTO b24_receiver_rejects (key, member_id, event, reason, raw_body, received_at) VALUES (?1, ?2, ?3, ?4, ?5, ?6) ON CONFLICT(key) DO NOTHING",
                        params![key, member, event, reason, raw, now()],
                    )
                    .map(|_| ())
                })
                .await
            }
            Inbox::Postgres(pool) => {
                let c = pool.get().await.map_err(se)?;
                c.execute(
                    "INSERT INTO b24_receiver_rejects (key, member_id, event, reason, raw_body, received_at) VALUES ($1, $2, $3, $4, $5, $6) ON CONFLICT (key) DO NOTHING",
                    &[&key, &member, &event, &reason, &raw, &now()],
                )
                .await
                .map_err(se)?;
                Ok(())
            }
        }
    }

    /// The kept rejects, oldest first.
    pub async fn rejects(&self, limit: i64) -> Result<Vec<Reject>> {
        const Q: &str = "SELECT id, key, member_id, event, reason, raw_body, received_at FROM b24_receiver_rejects ORDER BY id LIMIT ";
        self.select(Q, limit).await
    }

    /// The portal (host) a member was verified on at install.
    pub async fn portal(&self, member_id: &str) -> Result<Option<String>> {
        self.lookup(
            "SELECT domain FROM b24_receiver_portals WHERE member_id = ",
            member_id,
        )
        .await
    }

    /// The member a portal (host) was verified for.
    pub async fn member_of(&self, domain: &str) -> Result<Option<String>> {
        self.lookup(
            "SELECT member_id FROM b24_receiver_portals WHERE domain = ",
            domain,
        )
        .await
    }

    async fn lookup(&self, q: &'static str, arg: &str) -> Result<Option<String>> {
        let arg = arg.to_string();
        match self {
            Inbox::Sqlite { conn, .. } => {
                Self::sqlite(conn, move |c| {
                    c.query_row(&format!("{q}?1"), [arg], |r| r.get(0))
                        .optional()
                })
                .await
            }
            Inbox::Postgres(pool) => {
                let c = pool.get().await.map_err(se)?;
                let row = c.query_opt(&format!("{q}$1"), &[&arg]).await.map_err(se)?;
                Ok(row.map(|r| r.get(0)))
            }
        }
    }

    /// Record (or, with `None`, forget) the portal a member was verified on.
    pub async fn set_portal(&self, member_id: &str, domain: Option<&str>) -> Result<()> {
        let (member, domain) = (member_id.to_string(), domain.map(str::to_string));
        match self {
            Inbox::Sqlite { conn, .. } => {
                Self::sqlite(conn, move |c| {
                    match domain {
                        Some(d) => c.execute(
                            "INSERT INTO b24_receiver_portals VALUES (?1, ?2, ?3) ON CONFLICT(member_id) DO UPDATE SET domain = excluded.domain, updated_at = excluded.updated_at",
                            params![member, d, now()],
                        ),
                        None => c.execute(
                            "DELETE FROM b24_receiver_portals WHERE member_id = ?1",
                            [member],
                        ),
                    }
                    .map(|_| ())
                })
                .await
            }
            Inbox::Postgres(pool) => {
                let c = pool.get().await.map_err(se)?;
                match domain {
                    Some(d) => c.execute(
                        "INSERT INTO b24_receiver_portals VALUES ($1, $2, $3) ON CONFLICT (member_id) DO UPDATE SET domain = EXCLUDED.domain, updated_at = EXCLUDED.updated_at",
                        &[&member, &d, &now()],
                    ).await,
                    None => c.execute("DELETE FROM b24_receiver_portals WHERE member_id = $1", &[&member]).await,
                }
                .map_err(se)?;
                Ok(())
            }
        }
    }
}
