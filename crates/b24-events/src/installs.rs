//! Installations: which portals our app is installed on, and each one's OAuth pair.
//!
//! One app serves many portals. The receiver records an installation only after the portal
//! confirmed it (the [`crate::trust`] rules), keyed by `member_id` — the portal's stable id; a
//! portal's domain can change, its member id cannot. The row holds the domain the install was
//! verified on, the OAuth pair the install event carried, and the state (`installed`,
//! `uninstalled`, `removed`). `ONAPPUNINSTALL` clears the tokens but keeps the row (when it was
//! installed and uninstalled: the portal's trail), so nothing can act for that portal any more
//! while the audit log and the queue's records stay intact.
//!
//! The table lives beside the receiver's other records ([`Inbox`]: the same SQLite file or
//! PostgreSQL database as the queue), so one `B24_STORE_URL` names everything a host needs.
//!
//! [`InstallTokenStore`] makes a row usable as the client's
//! [`TokenStore`](b24::auth::TokenStore): refreshes single-flight *per portal* — a PostgreSQL
//! advisory lock (or, on SQLite, a lock file) keyed by the member id — so a slow refresh on one
//! portal never holds up another, and a refresh racing an uninstall can never write tokens back
//! into an uninstalled row.

use std::sync::{Arc, Mutex};

use b24::auth::TokenPair;
use rusqlite::params;

use crate::inbox::Inbox;

mod locks;
use crate::{EventsError, Result, now};
pub use locks::{InstallTokenStore, PullLock};

pub(crate) const SQLITE_SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS b24_installations (
  member_id TEXT PRIMARY KEY, domain TEXT NOT NULL, state TEXT NOT NULL,
  pair TEXT, installed_at REAL NOT NULL, updated_at REAL NOT NULL, uninstalled_at REAL,
  wake_at REAL NOT NULL DEFAULT 0, pull_after REAL NOT NULL DEFAULT 0,
  idle_backoff REAL NOT NULL DEFAULT 0);
";

pub(crate) const PG_SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS b24_installations (
  member_id TEXT PRIMARY KEY, domain TEXT NOT NULL, state TEXT NOT NULL,
  pair TEXT, installed_at DOUBLE PRECISION NOT NULL, updated_at DOUBLE PRECISION NOT NULL,
  uninstalled_at DOUBLE PRECISION, wake_at DOUBLE PRECISION NOT NULL DEFAULT 0);
ALTER TABLE b24_installations ADD COLUMN IF NOT EXISTS wake_at DOUBLE PRECISION NOT NULL DEFAULT 0;
ALTER TABLE b24_installations ADD COLUMN IF NOT EXISTS pull_after DOUBLE PRECISION NOT NULL DEFAULT 0;
ALTER TABLE b24_installations ADD COLUMN IF NOT EXISTS idle_backoff DOUBLE PRECISION NOT NULL DEFAULT 0;
";

/// One portal our app is (or was) installed on. Never holds a secret in `Debug`.
#[derive(Clone, serde::Serialize)]
pub struct Installation {
    pub member_id: String,
    pub domain: String,
    /// `installed`, `uninstalled` (ONAPPUNINSTALL) or `removed` (`b24 portals remove`).
    pub state: String,
    #[serde(skip)]
    pub pair: Option<TokenPair>,
    pub installed_at: f64,
    pub updated_at: f64,
    pub uninstalled_at: Option<f64>,
    /// When the portal last said it has offline events (`ONOFFLINEEVENT`): wakes its puller.
    pub wake_at: f64,
    /// Shared by every host: no idle poll of this portal before then (unix seconds)…
    pub pull_after: f64,
    /// …and the idle back-off that led to it (seconds), so hosts back off together.
    pub idle_backoff: f64,
}

impl std::fmt::Debug for Installation {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Installation")
            .field("member_id", &self.member_id)
            .field("domain", &self.domain)
            .field("state", &self.state)
            .field("has_tokens", &self.pair.is_some())
            .finish()
    }
}

impl Installation {
    pub fn is_installed(&self) -> bool {
        self.state == "installed"
    }

    /// `none`, `valid`, `expired` (refreshable) — for listings; never the tokens themselves.
    pub fn token_state(&self, now_unix: i64) -> &'static str {
        match &self.pair {
            None => "none",
            Some(p) if p.expires.is_some_and(|e| e <= now_unix) => "expired",
            Some(_) => "valid",
        }
    }
}

fn se(x: impl std::fmt::Display) -> EventsError {
    EventsError::Store(x.to_string())
}

fn pair_json(p: Option<&TokenPair>) -> Result<Option<String>> {
    p.map(|p| serde_json::to_string(p).map_err(se)).transpose()
}

fn parse_pair(s: Option<String>) -> Option<TokenPair> {
    s.and_then(|s| serde_json::from_str(&s).ok())
}

const COLS: &str = "member_id, domain, state, pair, installed_at, updated_at, uninstalled_at, wake_at, pull_after, idle_backoff FROM b24_installations";

/// [`COLS`] without the OAuth pair, for the puller's frequent re-reads (it needs the schedule,
/// not the tokens: each portal's client reads those through its token store).
const SCHEDULE_COLS: &str = "member_id, domain, state, CAST(NULL AS TEXT), installed_at, updated_at, uninstalled_at, wake_at, pull_after, idle_backoff FROM b24_installations";

/// Queued or running events per portal. Read from the indexed `member_id` column rather than
/// by parsing every payload: the puller runs this twice a second on every host.
const DEPTHS: &str = "SELECT member_id, count(*) FROM b24_jobs
  WHERE state IN ('ready', 'running') AND member_id <> '' GROUP BY member_id";

/// The installations registry over the receiver's side store.
#[derive(Clone)]
pub struct Installations {
    inbox: Inbox,
    /// The one PostgreSQL session that holds this registry's pull locks (see
    /// [`Installations::try_lock_pull`]): shared by every clone, so a fleet's connections do
    /// not grow with the portals it pulls at once.
    pull_session: Arc<tokio::sync::Mutex<locks::LockSession>>,
}

impl Installations {
    /// Open beside the queue at `url` (SQLite path or `postgres://…`).
    pub async fn open(url: &str) -> Result<Installations> {
        Ok(Installations::from_inbox(Inbox::open(url).await?))
    }

    pub fn from_inbox(inbox: Inbox) -> Installations {
        Installations {
            inbox,
            pull_session: Arc::default(),
        }
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

    /// Record a confirmed install (or update) of `member_id` on `domain`, with the OAuth pair
    /// the event carried (`None` keeps the stored one). A re-install revives an uninstalled row.
    pub async fn record_install(
        &self,
        member_id: &str,
        domain: &str,
        pair: Option<&TokenPair>,
    ) -> Result<()> {
        let (m, d, p, t) = (
            member_id.to_string(),
            domain.to_string(),
            pair_json(pair)?,
            now(),
        );
        match &self.inbox {
            Inbox::Sqlite { conn, .. } => {
                Self::sqlite(conn, move |c| {
                    c.execute(
                        "INSERT INTO b24_installations (member_id, domain, state, pair, installed_at, updated_at, uninstalled_at, wake_at) VALUES (?1, ?2, 'installed', ?3, ?4, ?4, NULL, ?4)
                         ON CONFLICT(member_id) DO UPDATE SET domain = excluded.domain,
                           state = 'installed', pair = COALESCE(excluded.pair, b24_installations.pair),
                           installed_at = CASE WHEN b24_installations.state = 'installed'
                             THEN b24_installations.installed_at ELSE excluded.installed_at END,
                           updated_at = excluded.updated_at, uninstalled_at = NULL",
                        params![m, d, p, t],
                    )
                    .map(|_| ())
                })
                .await
            }
            Inbox::Postgres(pool) => {
                let c = pool.get().await.map_err(se)?;
                c.execute(
                    "INSERT INTO b24_installations (member_id, domain, state, pair, installed_at, updated_at, uninstalled_at, wake_at) VALUES ($1, $2, 'installed', $3, $4, $4, NULL, $4)
                     ON CONFLICT (member_id) DO UPDATE SET domain = EXCLUDED.domain,
                       state = 'installed', pair = COALESCE(EXCLUDED.pair, b24_installations.pair),
                       installed_at = CASE WHEN b24_installations.state = 'installed'
                         THEN b24_installations.installed_at ELSE EXCLUDED.installed_at END,
                       updated_at = EXCLUDED.updated_at, uninstalled_at = NULL",
                    &[&m, &d, &p, &t],
                )
                .await
                .map_err(se)?;
                Ok(())
            }
        }
    }

    /// The portal removed our app (`uninstalled`) or the operator forgot it (`removed`): the
    /// tokens go, the row stays as the portal's trail.
    pub async fn end(&self, member_id: &str, state: &'static str) -> Result<bool> {
        let (m, t) = (member_id.to_string(), now());
        let n = match &self.inbox {
            Inbox::Sqlite { conn, .. } => {
                Self::sqlite(conn, move |c| {
                    c.execute(
                        "UPDATE b24_installations SET state = ?2, pair = NULL, updated_at = ?3,
                           uninstalled_at = ?3 WHERE member_id = ?1",
                        params![m, state, t],
                    )
                })
                .await?
            }
            Inbox::Postgres(pool) => {
                let c = pool.get().await.map_err(se)?;
                c.execute(
                    "UPDATE b24_installations SET state = $2, pair = NULL, updated_at = $3,
                       uninstalled_at = $3 WHERE member_id = $1",
                    &[&m, &state, &t],
                )
                .await
                .map_err(se)? as usize
            }
        };
        Ok(n > 0)
    }

    /// Every installation, installed ones first, then by domain.
    pub async fn list(&self) -> Result<Vec<Installation>> {
        self.query(
            "ORDER BY state <> 'installed', domain".into(),
            None::<String>,
        )
        .await
    }

    /// The installed portals, without their tokens (`pair` is `None`): what the puller
    /// re-reads every `rescan`.
    pub async fn installed_schedule(&self) -> Result<Vec<Installation>> {
        self.query_cols(
            SCHEDULE_COLS,
            "WHERE state = 'installed'".into(),
            None::<String>,
        )
        .await
    }

    /// The installation with this member id or (case-insensitive) domain.
    pub async fn find(&self, key: &str) -> Result<Option<Installation>> {
        let mut v = self
            .query(
                "WHERE member_id = {} OR lower(domain) = lower({}) ORDER BY member_id <> {} LIMIT 1"
                    .into(),
                Some(key.to_string()),
            )
            .await?;
        Ok(v.pop())
    }

    async fn query(&self, tail: String, arg: Option<String>) -> Result<Vec<Installation>> {
        self.query_cols(COLS, tail, arg).await
    }

    async fn query_cols(
        &self,
        cols: &'static str,
        tail: String,
        arg: Option<String>,
    ) -> Result<Vec<Installation>> {
        match &self.inbox {
            Inbox::Sqlite { conn, .. } => {
                let sql = format!("SELECT {cols} {}", tail.replace("{}", "?1"));
                Self::sqlite(conn, move |c| {
                    let mut st = c.prepare(&sql)?;
                    let map = |r: &rusqlite::Row<'_>| {
                        Ok(Installation {
                            member_id: r.get(0)?,
                            domain: r.get(1)?,
                            state: r.get(2)?,
                            pair: parse_pair(r.get(3)?),
                            installed_at: r.get(4)?,
                            updated_at: r.get(5)?,
                            uninstalled_at: r.get(6)?,
                            wake_at: r.get(7)?,
                            pull_after: r.get(8)?,
                            idle_backoff: r.get(9)?,
                        })
                    };
                    match &arg {
                        Some(a) => st.query_map([a], map)?.collect(),
                        None => st.query_map([], map)?.collect(),
                    }
                })
                .await
            }
            Inbox::Postgres(pool) => {
                let sql = format!("SELECT {cols} {}", tail.replace("{}", "$1"));
                let c = pool.get().await.map_err(se)?;
                // Cached: the puller re-reads the schedule twice a second on every host.
                let st = c.prepare_cached(&sql).await.map_err(se)?;
                let rows = match &arg {
                    Some(a) => c.query(&st, &[a]).await,
                    None => c.query(&st, &[]).await,
                }
                .map_err(se)?;
                Ok(rows
                    .iter()
                    .map(|r| Installation {
                        member_id: r.get(0),
                        domain: r.get(1),
                        state: r.get(2),
                        pair: parse_pair(r.get(3)),
                        installed_at: r.get(4),
                        updated_at: r.get(5),
                        uninstalled_at: r.get(6),
                        wake_at: r.get(7),
                        pull_after: r.get(8),
                        idle_backoff: r.get(9),
                    })
                    .collect())
            }
        }
    }

    /// Save a rotated pair — only while the portal is still installed (an uninstall that
    /// happened during the refresh wins). `false` when the row is no longer installed.
    async fn save_pair(&self, member_id: &str, pair: &TokenPair) -> Result<bool> {
        let (m, p, t) = (member_id.to_string(), pair_json(Some(pair))?, now());
        let n = match &self.inbox {
            Inbox::Sqlite { conn, .. } => {
                Self::sqlite(conn, move |c| {
                    c.execute(
                        "UPDATE b24_installations SET pair = ?2, updated_at = ?3
                         WHERE member_id = ?1 AND state = 'installed'",
                        params![m, p, t],
                    )
                })
                .await?
            }
            Inbox::Postgres(pool) => {
                let c = pool.get().await.map_err(se)?;
                c.execute(
                    "UPDATE b24_installations SET pair = $2, updated_at = $3
                     WHERE member_id = $1 AND state = 'installed'",
                    &[&m, &p, &t],
                )
                .await
                .map_err(se)? as usize
            }
        };
        Ok(n > 0)
    }

    /// Events waiting or running in the queue, per `member_id` of the portal that sent them
    /// (the queue's `member_id` column, the payload's `auth[member_id]` stored at enqueue).
    /// Empty when the queue has no table yet.
    pub async fn queue_depths(&self) -> Result<std::collections::HashMap<String, i64>> {
        match &self.inbox {
            Inbox::Sqlite { conn, .. } => {
                Self::sqlite(conn, |c| {
                    let mut st = match c.prepare(DEPTHS) {
                        Ok(st) => st,
                        Err(_) => return Ok(Default::default()),
                    };
                    let rows = st.query_map([], |r| {
                        Ok((r.get::<_, String>(0).unwrap_or_default(), r.get(1)?))
                    })?;
                    rows.collect()
                })
                .await
            }
            Inbox::Postgres(pool) => {
                let c = pool.get().await.map_err(se)?;
                let rows = match c.prepare_cached(DEPTHS).await {
                    Ok(st) => c.query(&st, &[]).await,
                    Err(err) => Err(err),
                };
                Ok(rows
                    .map(|rows| {
                        rows.iter()
                            .filter_map(|r| Some((r.get::<_, Option<String>>(0)?, r.get(1))))
                            .collect()
                    })
                    .unwrap_or_default())
            }
        }
    }

    /// The portal announced offline events (`ONOFFLINEEVENT`, authenticated): wake its puller.
    /// `wake_at` only moves forward, so a receiver whose clock is behind the last one's still
    /// registers as a new wake-up (readers compare it with the last value they saw).
    /// `true` when an installed portal's row took the wake-up (its pullers read `wake_at`);
    /// `false` when no such row exists, and only a queued notification can reach a worker.
    pub async fn wake(&self, member_id: &str) -> Result<bool> {
        let (m, t) = (member_id.to_string(), now());
        let n = match &self.inbox {
            Inbox::Sqlite { conn, .. } => {
                Self::sqlite(conn, move |c| {
                    c.execute(
                        "UPDATE b24_installations SET wake_at = max(wake_at + 0.001, ?2) WHERE member_id = ?1 AND state = 'installed'",
                        params![m, t],
                    )
                })
                .await?
            }
            Inbox::Postgres(pool) => {
                let c = pool.get().await.map_err(se)?;
                let st = c
                    .prepare_cached("UPDATE b24_installations SET wake_at = GREATEST(wake_at + 0.001, $2) WHERE member_id = $1 AND state = 'installed'")
                    .await
                    .map_err(se)?;
                c.execute(&st, &[&m, &t]).await.map_err(se)? as usize
            }
        };
        Ok(n > 0)
    }

    /// When `member_id`'s portal last announced offline events (`wake_at`, unix seconds);
    /// `None` when it is not an installed portal here.
    pub async fn woken_at(&self, member_id: &str) -> Result<Option<f64>> {
        let m = member_id.to_string();
        match &self.inbox {
            Inbox::Sqlite { conn, .. } => {
                Self::sqlite(conn, move |c| {
                    use rusqlite::OptionalExtension;
                    c.query_row(
                        "SELECT wake_at FROM b24_installations WHERE member_id = ?1 AND state = 'installed'",
                        [m],
                        |r| r.get(0),
                    )
                    .optional()
                })
                .await
            }
            Inbox::Postgres(pool) => {
                let c = pool.get().await.map_err(se)?;
                let st = c
                    .prepare_cached("SELECT wake_at FROM b24_installations WHERE member_id = $1 AND state = 'installed'")
                    .await
                    .map_err(se)?;
                Ok(c.query_opt(&st, &[&m]).await.map_err(se)?.map(|r| r.get(0)))
            }
        }
    }

    /// After a pull round: when the portal is next due, shared by every host (one idle poll
    /// per back-off period in all, not one per host). `after_secs` 0 with `backoff` 0 (the
    /// portal had events) clears the schedule: due at once.
    ///
    /// A hint, not a record: on PostgreSQL it commits without waiting for the WAL flush (a
    /// schedule lost to a database crash costs one early poll), and clearing a schedule that
    /// is already clear writes nothing — a flooded portal's rounds no longer write a row each.
    pub async fn schedule_pull(
        &self,
        member_id: &str,
        after_secs: f64,
        backoff: f64,
    ) -> Result<()> {
        let clear = after_secs <= 0.0 && backoff <= 0.0;
        let m = member_id.to_string();
        let t = if clear {
            0.0
        } else {
            now() + after_secs.max(0.0)
        };
        match &self.inbox {
            Inbox::Sqlite { conn, .. } => {
                Self::sqlite(conn, move |c| {
                    c.execute(
                        "UPDATE b24_installations SET pull_after = ?2, idle_backoff = ?3
                     WHERE member_id = ?1 AND (pull_after <> ?2 OR idle_backoff <> ?3)",
                        params![m, t, backoff],
                    )
                    .map(|_| ())
                })
                .await
            }
            Inbox::Postgres(pool) => {
                let mut c = pool.get().await.map_err(se)?;
                let tx = c.transaction().await.map_err(se)?;
                tx.batch_execute("SET LOCAL synchronous_commit TO OFF")
                    .await
                    .map_err(se)?;
                let st = tx
                    .prepare_cached(
                        "UPDATE b24_installations SET pull_after = $2, idle_backoff = $3
                         WHERE member_id = $1 AND (pull_after <> $2 OR idle_backoff <> $3)",
                    )
                    .await
                    .map_err(se)?;
                tx.execute(&st, &[&m, &t, &backoff]).await.map_err(se)?;
                tx.commit().await.map_err(se)
            }
        }
    }
}

/// An OAuth pair from an install event's `auth[...]` (the built payload), if it has one.
pub fn pair_from_event(payload: &serde_json::Value) -> Option<TokenPair> {
    let auth = payload.get("auth")?;
    let s = |k: &str| auth.get(k).and_then(|v| v.as_str()).map(str::to_string);
    let access = s("access_token").filter(|t| !t.is_empty())?;
    let refresh = s("refresh_token").filter(|t| !t.is_empty())?;
    let now = now() as i64;
    let expires = s("expires")
        .and_then(|e| e.parse::<i64>().ok())
        .or_else(|| {
            s("expires_in")
                .and_then(|e| e.parse::<i64>().ok())
                .map(|x| now + x)
        });
    let mut pair = TokenPair::new(access, refresh);
    pair.expires = expires;
    pair.member_id = s("member_id");
    pair.scope = s("scope");
    pair.client_endpoint = s("client_endpoint");
    pair.user_id = s("user_id").and_then(|u| u.parse().ok());
    pair.obtained_at = now;
    Some(pair)
}
