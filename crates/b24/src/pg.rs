//! PostgreSQL stores for a cluster: the shared rate-limit state and the OAuth token pair.
//!
//! When several hosts call one portal, the portal still counts one bucket (per portal and
//! source address) and still rotates one refresh token, so both must live where every host
//! sees them. `B24_STORE_URL=postgres://…` selects these stores (the event queue uses the same
//! URL, see `b24-events`).
//!
//! Rate limit: one row per portal holding the GCRA `tat`, updated by a single `INSERT … ON
//! CONFLICT DO UPDATE … RETURNING` statement. The statement reads the *database's* clock, so
//! hosts whose clocks disagree still share one consistent bucket; the `now` the limiter passes
//! is ignored here.
//!
//! Tokens: one row per portal. A refresh holds a session-level advisory lock on a dedicated
//! connection; the lock is released when the guard is dropped (the connection closes, and the
//! server releases session locks of a closed session). Saving the rotated pair is one upsert,
//! so readers see either the old pair or the new one, never half of each. Whoever can read this
//! table can use the portal: grant it like a secret.

use std::sync::Arc;
use std::time::Duration;

use deadpool_postgres::Pool;
use futures::future::BoxFuture;
use tokio::sync::Semaphore;

use crate::Error;
use crate::auth::{TokenPair, TokenStore};
use crate::limiter::operating::{OpState, OperatingStore, Reservation, Update};
use crate::limiter::{Gcra, RateStore};

mod pool;

use pool::pg_err;
pub use pool::{
    MigrationLock, PgPool, PgRole, PoolBudget, PoolSpec, SessionLock, batch, lock_permit,
    lock_sessions, open_pool, process_budget, role_config, session_lock, set_process_budget,
};

/// The schema these stores need. Applied on connect (idempotent) and by `b24 db migrate`.
pub const MIGRATION: &str = "
CREATE TABLE IF NOT EXISTS b24_rate_limit (
    portal TEXT PRIMARY KEY,
    tat DOUBLE PRECISION NOT NULL
);
CREATE TABLE IF NOT EXISTS b24_oauth_tokens (
    portal TEXT PRIMARY KEY,
    pair JSONB NOT NULL,
    updated_at TIMESTAMPTZ NOT NULL DEFAULT now()
);
CREATE TABLE IF NOT EXISTS b24_guard_writes (
    portal TEXT NOT NULL,
    ts TIMESTAMPTZ NOT NULL DEFAULT now()
);
CREATE INDEX IF NOT EXISTS b24_guard_writes_portal_ts ON b24_guard_writes (portal, ts);
CREATE TABLE IF NOT EXISTS b24_operating (
    key TEXT PRIMARY KEY,
    state TEXT NOT NULL
);
";

/// The advisory lock [`MIGRATION`] is applied under.
const MIGRATION_LOCK: MigrationLock = MigrationLock::Name("b24-client-migrate");

/// How long a token refresh waits, by default, for another refresh of the same portal (in
/// this process or another) before it fails with [`Error::State`].
pub const TOKEN_LOCK_WAIT: Duration = Duration::from_secs(45);

/// A connection pool to the store database, shared by the rate and token stores.
#[derive(Clone)]
pub struct PgStore {
    pool: Pool,
    /// The refresh-lock sessions this store may hold at once.
    lock_sessions: Arc<Semaphore>,
    lock_wait: Duration,
}

impl std::fmt::Debug for PgStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PgStore").finish_non_exhaustive()
    }
}

impl PgStore {
    /// Connect and apply [`MIGRATION`], with the client's pool share of the process's
    /// [`PoolBudget`]; refresh locks take their sessions from the process's
    /// [`lock_sessions`].
    pub async fn connect(url: &str) -> Result<PgStore, Error> {
        Self::connect_with(url, &PoolSpec::for_role(PgRole::Client), lock_sessions()).await
    }

    /// Connect with an explicit pool and set of refresh-lock sessions (each session is one
    /// more connection, held while a refresh runs).
    pub async fn connect_with(
        url: &str,
        spec: &PoolSpec,
        lock_sessions: Arc<Semaphore>,
    ) -> Result<PgStore, Error> {
        let p = open_pool(url, spec, MIGRATION_LOCK, |tx| batch(tx, MIGRATION)).await?;
        Ok(PgStore {
            pool: p.pool,
            lock_sessions,
            lock_wait: TOKEN_LOCK_WAIT,
        })
    }

    /// The store of `url` shared by everything in this process (the clients of every portal a
    /// worker serves, the guard's write budget): one pool per URL and runtime, opened on first
    /// use. Keyed by runtime too: a pool's connections live on the runtime that opened them.
    pub async fn shared(url: &str) -> Result<PgStore, Error> {
        static POOLS: std::sync::LazyLock<
            tokio::sync::Mutex<std::collections::HashMap<String, PgStore>>,
        > = std::sync::LazyLock::new(Default::default);
        let key = format!("{}\0{url}", tokio::runtime::Handle::current().id());
        let mut pools = POOLS.lock().await;
        if let Some(p) = pools.get(&key) {
            return Ok(p.clone());
        }
        let p = PgStore::connect(url).await?;
        pools.insert(key, p.clone());
        Ok(p)
    }

    /// How long [`TokenStore::lock`] waits (for a free session, then for the lock) before it
    /// gives up; [`TOKEN_LOCK_WAIT`] by default.
    pub fn with_lock_wait(mut self, wait: Duration) -> PgStore {
        self.lock_wait = wait;
        self
    }

    /// Create the tables if they are missing. Two hosts migrating at once are serialized by
    /// an advisory lock so that `CREATE TABLE IF NOT EXISTS` cannot race.
    pub async fn migrate(&self) -> Result<(), Error> {
        let mut c = self.client().await?;
        let tx = c.transaction().await.map_err(|e| pg_err("migrate", e))?;
        tx.execute(
            "SELECT pg_advisory_xact_lock(hashtext('b24-client-migrate'))",
            &[],
        )
        .await
        .map_err(|e| pg_err("migrate", e))?;
        batch(&tx, MIGRATION).await?;
        tx.commit().await.map_err(|e| pg_err("migrate", e))
    }

    /// The shared rate-limit store.
    pub fn rate_store(&self) -> PgRateStore {
        PgRateStore { db: self.clone() }
    }

    /// The shared operating-time store (table `b24_operating`).
    pub fn operating_store(&self) -> PgOpStore {
        PgOpStore { db: self.clone() }
    }

    /// The token store of one portal.
    pub fn token_store(&self, portal: &str) -> PgTokenStore {
        PgTokenStore {
            db: self.clone(),
            portal: portal.to_string(),
        }
    }

    /// Take `n` writes from an hourly budget of `max` for `portal`, all or none. Check and
    /// count are one transaction under a transaction-scoped advisory lock per portal, and the
    /// hour is the database's, so every host sharing the database shares one budget.
    pub async fn try_take_writes(&self, portal: &str, n: u32, max: u32) -> Result<bool, Error> {
        let err = |e| pg_err("write budget", e);
        let mut c = self.client().await?;
        let tx = c.transaction().await.map_err(err)?;
        tx.execute(
            "SELECT pg_advisory_xact_lock(hashtext('b24-writes:' || $1))",
            &[&portal],
        )
        .await
        .map_err(err)?;
        tx.execute(
            "DELETE FROM b24_guard_writes WHERE portal = $1 AND ts < now() - interval '1 hour'",
            &[&portal],
        )
        .await
        .map_err(err)?;
        let used: i64 = tx
            .query_one(
                "SELECT count(*) FROM b24_guard_writes WHERE portal = $1",
                &[&portal],
            )
            .await
            .map_err(err)?
            .get(0);
        if used.saturating_add(i64::from(n)) > i64::from(max) {
            tx.commit().await.map_err(err)?;
            return Ok(false);
        }
        let n = i32::try_from(n).unwrap_or(i32::MAX);
        tx.execute(
            "INSERT INTO b24_guard_writes (portal, ts) SELECT $1, now() FROM generate_series(1, $2)",
            &[&portal, &n],
        )
        .await
        .map_err(err)?;
        tx.commit().await.map_err(err)?;
        Ok(true)
    }

    async fn client(&self) -> Result<deadpool_postgres::Object, Error> {
        self.pool.get().await.map_err(|e| pg_err("connect", e))
    }
}

/// GCRA state shared by every host that uses the database.
#[derive(Debug, Clone)]
pub struct PgRateStore {
    db: PgStore,
}

/// `$1` portal, `$2` seconds per request, `$3` how far past `now` a stored `tat` is believed
/// (`Gcra::max_tat`); returns the new `tat` and the database's `now`. A `tat` beyond that
/// (or NaN, which PostgreSQL orders above every number) is read as a full bucket.
///
/// It commits without waiting for the WAL flush (`set_config(…, true)` is `SET LOCAL` for
/// this statement's own transaction): it runs before every request to the portal, and a
/// bucket level lost to a database crash costs at most a bucket's worth of early requests,
/// which the portal's own limit and the retries absorb. Other hosts see it at once either way.
const RESERVE: &str = "
WITH clock AS (SELECT extract(epoch FROM clock_timestamp())::float8 AS now,
                      set_config('synchronous_commit', 'off', true) AS quick)
INSERT INTO b24_rate_limit AS r (portal, tat)
SELECT $1, clock.now + $2 FROM clock
ON CONFLICT (portal) DO UPDATE
    SET tat = GREATEST(LEAST(r.tat, (SELECT now FROM clock) + $3), (SELECT now FROM clock)) + $2
RETURNING tat, (SELECT now FROM clock)";

/// `$1` portal, `$2` seconds the full bucket takes to drain, `$3` as in `RESERVE`; never
/// moves a believable `tat` backwards.
const FILL: &str = "
WITH clock AS (SELECT extract(epoch FROM clock_timestamp())::float8 AS now)
INSERT INTO b24_rate_limit AS r (portal, tat)
SELECT $1, clock.now + $2 FROM clock
ON CONFLICT (portal) DO UPDATE
    SET tat = GREATEST(LEAST(r.tat, (SELECT now FROM clock) + $3), (SELECT now FROM clock) + $2)";

const LEVEL: &str = "
SELECT tat, extract(epoch FROM clock_timestamp())::float8 FROM b24_rate_limit WHERE portal = $1";

impl RateStore for PgRateStore {
    fn reserve<'a>(
        &'a self,
        key: &'a str,
        g: &'a Gcra,
        _now: f64,
    ) -> BoxFuture<'a, Result<f64, Error>> {
        Box::pin(async move {
            let c = self.db.client().await?;
            // Cached: one round trip per request to the portal, not two (parse, then bind).
            let st = c
                .prepare_cached(RESERVE)
                .await
                .map_err(|e| pg_err("rate reserve", e))?;
            let row = c
                .query_one(&st, &[&key, &g.t, &(g.max_tat(0.0))])
                .await
                .map_err(|e| pg_err("rate reserve", e))?;
            let (tat, now): (f64, f64) = (row.get(0), row.get(1));
            Ok((tat - now - g.capacity * g.t).max(0.0))
        })
    }

    fn fill<'a>(
        &'a self,
        key: &'a str,
        g: &'a Gcra,
        _now: f64,
    ) -> BoxFuture<'a, Result<(), Error>> {
        Box::pin(async move {
            let c = self.db.client().await?;
            c.execute(FILL, &[&key, &(g.capacity * g.t), &(g.max_tat(0.0))])
                .await
                .map_err(|e| pg_err("rate fill", e))?;
            Ok(())
        })
    }

    fn level<'a>(
        &'a self,
        key: &'a str,
        g: &'a Gcra,
        _now: f64,
    ) -> BoxFuture<'a, Result<f64, Error>> {
        Box::pin(async move {
            let c = self.db.client().await?;
            let row = c
                .query_opt(LEVEL, &[&key])
                .await
                .map_err(|e| pg_err("rate level", e))?;
            Ok(row
                .map(|r| g.level(r.get::<_, f64>(0), r.get::<_, f64>(1)))
                .unwrap_or(0.0))
        })
    }
}

/// Operating-time states shared by every host that uses the database: one row per
/// (portal, credential, method), read and rewritten under a transaction-scoped advisory lock
/// on the key, at the database's clock (hosts whose clocks disagree still share one ledger).
#[derive(Debug, Clone)]
pub struct PgOpStore {
    db: PgStore,
}

impl OperatingStore for PgOpStore {
    fn update<'a>(
        &'a self,
        key: &'a str,
        f: Update<Reservation>,
    ) -> BoxFuture<'a, Result<Reservation, Error>> {
        Box::pin(async move {
            let err = |e| pg_err("operating store", e);
            let mut c = self.db.client().await?;
            let tx = c.transaction().await.map_err(err)?;
            // Cached prepared statements: each plain query string costs a second round trip
            // (parse, then bind), and this runs around every request to the portal.
            // The ledger is a budget, not a record: its commit does not wait for the WAL
            // flush (a crash forgets the last moments of use; the portal's own reports in
            // its answers correct it), set with the lock in one statement.
            let lock = tx
                .prepare_cached(
                    "SELECT set_config('synchronous_commit', 'off', true),
                            pg_advisory_xact_lock(hashtext('b24-operating:' || $1))",
                )
                .await
                .map_err(err)?;
            tx.execute(&lock, &[&key]).await.map_err(err)?;
            let read = tx
                .prepare_cached(
                    "SELECT state, extract(epoch FROM clock_timestamp())::float8
                     FROM (SELECT 1) one LEFT JOIN b24_operating ON key = $1",
                )
                .await
                .map_err(err)?;
            let row = tx.query_one(&read, &[&key]).await.map_err(err)?;
            // The row (if any) and the database's clock in one statement.
            let mut state: OpState = row
                .get::<_, Option<&str>>(0)
                .and_then(|s| serde_json::from_str(s).ok())
                .unwrap_or_default();
            let now: f64 = row.get(1);
            let out = f(&mut state, now);
            let text = serde_json::to_string(&state)
                .map_err(|e| Error::state("operating store: encode", e))?;
            let write = tx
                .prepare_cached(
                    "INSERT INTO b24_operating (key, state) VALUES ($1, $2)
                     ON CONFLICT (key) DO UPDATE SET state = excluded.state",
                )
                .await
                .map_err(err)?;
            tx.execute(&write, &[&key, &text]).await.map_err(err)?;
            tx.commit().await.map_err(err)?;
            Ok(out)
        })
    }

    fn get<'a>(&'a self, key: &'a str) -> BoxFuture<'a, Result<Option<OpState>, Error>> {
        Box::pin(async move {
            let c = self.db.client().await?;
            let row = c
                .query_opt("SELECT state FROM b24_operating WHERE key = $1", &[&key])
                .await
                .map_err(|e| pg_err("operating store", e))?;
            Ok(row.and_then(|r| serde_json::from_str(r.get::<_, &str>(0)).ok()))
        })
    }
}

/// The OAuth pair of one portal, shared by every host that uses the database.
#[derive(Debug, Clone)]
pub struct PgTokenStore {
    db: PgStore,
    portal: String,
}

impl TokenStore for PgTokenStore {
    fn load(&self) -> BoxFuture<'_, Result<Option<TokenPair>, Error>> {
        Box::pin(async move {
            let c = self.db.client().await?;
            let row = c
                .query_opt(
                    "SELECT pair::text FROM b24_oauth_tokens WHERE portal = $1",
                    &[&self.portal],
                )
                .await
                .map_err(|e| pg_err("token load", e))?;
            match row {
                None => Ok(None),
                Some(r) => serde_json::from_str(r.get::<_, &str>(0))
                    .map(Some)
                    .map_err(|e| Error::state("unreadable token row", e)),
            }
        })
    }

    fn save<'a>(&'a self, pair: &'a TokenPair) -> BoxFuture<'a, Result<(), Error>> {
        Box::pin(async move {
            let json = serde_json::to_string(pair).map_err(|e| Error::state("token row", e))?;
            let c = self.db.client().await?;
            c.execute(
                "INSERT INTO b24_oauth_tokens (portal, pair, updated_at) VALUES ($1, $2::text::jsonb, now())
                 ON CONFLICT (portal) DO UPDATE SET pair = excluded.pair, updated_at = now()",
                &[&self.portal, &json],
            )
            .await
            .map_err(|e| pg_err("token save", e))?;
            Ok(())
        })
    }

    /// The refresh lock, taken as [`session_lock`] says: bounded in connections (the pool's
    /// plus the store's lock sessions) and in time (the store's lock wait, then
    /// [`Error::State`]).
    fn lock(&self) -> BoxFuture<'_, Result<Box<dyn Send>, Error>> {
        Box::pin(async move {
            let key = format!("b24-token:{}", self.portal);
            let lock = session_lock(
                &self.db.pool,
                &self.db.lock_sessions,
                &key,
                self.db.lock_wait,
            )
            .await?;
            Ok(Box::new(lock) as Box<dyn Send>)
        })
    }

    fn clear(&self) -> BoxFuture<'_, Result<(), Error>> {
        Box::pin(async move {
            let c = self.db.client().await?;
            c.execute(
                "DELETE FROM b24_oauth_tokens WHERE portal = $1",
                &[&self.portal],
            )
            .await
            .map_err(|e| pg_err("token clear", e))?;
            Ok(())
        })
    }

    fn describe(&self) -> String {
        format!("PostgreSQL table b24_oauth_tokens, portal {}", self.portal)
    }
}
