//! Deliveries the receiver refused at the door — bad or forged `application_token`, unknown
//! member, a body too large or malformed, an install the portal did not confirm — so that
//! `b24 dlq list --rejected` can show them beside the authenticated deliveries kept raw.
//!
//! Nothing the sender sent is trusted or kept whole: the reason (the receiver's own word), the
//! event name and member id the body *claimed* (cut to 64 characters, shown as claims), and
//! the body's size. Never the body, never a token. Anyone can send a refused request, so the
//! log is bounded twice: at most [`PER_SECOND`] rows a second per receiver (the rest are
//! counted into the next row's `more`), and only the newest [`KEEP`] rows are kept.

use std::sync::Mutex;

use rusqlite::params;

use super::{Inbox, se};
use crate::{Result, now};

/// Rows kept; older ones are deleted as new ones arrive.
pub const KEEP: i64 = 1000;

/// Rows written per second by one receiver; the rest are only counted.
pub const PER_SECOND: u32 = 10;

pub(super) const SQLITE_SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS b24_receiver_refused (
  id INTEGER PRIMARY KEY AUTOINCREMENT, reason TEXT NOT NULL, event TEXT NOT NULL,
  member_id TEXT NOT NULL, bytes INTEGER NOT NULL, more INTEGER NOT NULL, received_at REAL NOT NULL);
";

pub(super) const PG_SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS b24_receiver_refused (
  id BIGSERIAL PRIMARY KEY, reason TEXT NOT NULL, event TEXT NOT NULL, member_id TEXT NOT NULL,
  bytes BIGINT NOT NULL, more BIGINT NOT NULL, received_at DOUBLE PRECISION NOT NULL);
";

/// A delivery refused before it was authenticated (or because it was not).
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct Refused {
    pub id: i64,
    /// The receiver's reason (`invalid_application_token`, `too_large`, …).
    pub reason: String,
    /// The event name the body claimed ("" when it could not be read).
    pub event: String,
    /// The member id the body claimed ("" when it could not be read).
    pub member_id: String,
    /// The body's size in bytes.
    pub bytes: i64,
    /// Refusals in the second before this one that were only counted, not written.
    pub more: i64,
    pub received_at: f64,
}

/// Per-receiver bound on how many refusals a second are written.
#[derive(Debug, Default)]
pub struct RefusalBudget {
    /// (second, written in it, counted but not written since the last row).
    state: Mutex<(u64, u32, i64)>,
}

impl RefusalBudget {
    /// `Some(more)` when this refusal may be written (with how many were skipped before it).
    pub fn take(&self) -> Option<i64> {
        let sec = now() as u64;
        let mut s = self.state.lock().unwrap_or_else(|p| p.into_inner());
        if s.0 != sec {
            s.0 = sec;
            s.1 = 0;
        }
        if s.1 >= PER_SECOND {
            s.2 += 1;
            return None;
        }
        s.1 += 1;
        Some(std::mem::take(&mut s.2))
    }
}

/// A claim from an unauthenticated body, made safe to store and show: at most 64 characters
/// of letters, digits and `_.-:` (anything else becomes `?`).
fn claim(s: &str) -> String {
    s.chars()
        .take(64)
        .map(|c| {
            if c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '-' | ':') {
                c
            } else {
                '?'
            }
        })
        .collect()
}

impl Inbox {
    /// Note a refused delivery (see the module doc for what is kept).
    pub async fn refused(
        &self,
        reason: &str,
        event: &str,
        member_id: &str,
        bytes: usize,
        more: i64,
    ) -> Result<()> {
        let (reason, event, member) = (claim(reason), claim(event), claim(member_id));
        let bytes = i64::try_from(bytes).unwrap_or(i64::MAX);
        match self {
            Inbox::Sqlite { conn, .. } => {
                Self::sqlite(conn, move |c| {
                    c.execute(
                        "INSERT INTO b24_receiver_refused (reason, event, member_id, bytes, more, received_at) VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
                        params![reason, event, member, bytes, more, now()],
                    )?;
                    c.execute(
                        "DELETE FROM b24_receiver_refused WHERE id <= (SELECT MAX(id) FROM b24_receiver_refused) - ?1",
                        [KEEP],
                    )
                    .map(|_| ())
                })
                .await
            }
            Inbox::Postgres(pool) => {
                let c = pool.get().await.map_err(se)?;
                c.execute(
                    "INSERT INTO b24_receiver_refused (reason, event, member_id, bytes, more, received_at) VALUES ($1, $2, $3, $4, $5, $6)",
                    &[&reason, &event, &member, &bytes, &more, &now()],
                )
                .await
                .map_err(se)?;
                c.execute(
                    "DELETE FROM b24_receiver_refused WHERE id <= (SELECT MAX(id) FROM b24_receiver_refused) - $1",
                    &[&KEEP],
                )
                .await
                .map_err(se)?;
                Ok(())
            }
        }
    }

    /// The refusals kept, newest first.
    pub async fn refusals(&self, limit: i64) -> Result<Vec<Refused>> {
        const Q: &str = "SELECT id, reason, event, member_id, bytes, more, received_at FROM b24_receiver_refused ORDER BY id DESC LIMIT ";
        self.select(Q, limit).await
    }
}

impl super::rows::FromRow for Refused {
    fn from_row(r: &super::rows::Row<'_, '_>) -> Result<Self> {
        Ok(Refused {
            id: r.get(0)?,
            reason: r.get(1)?,
            event: r.get(2)?,
            member_id: r.get(3)?,
            bytes: r.get(4)?,
            more: r.get(5)?,
            received_at: r.get(6)?,
        })
    }
}
