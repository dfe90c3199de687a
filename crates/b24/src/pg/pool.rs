//! Opening a PostgreSQL pool for one of b24's stores, and the per-process connection budget
//! those pools share.
//!
//! Every store that lives in PostgreSQL (this crate's token and rate stores, the MCP client
//! tokens of `b24-guard`, the event queue and the receiver's inbox of `b24-events`) opens its
//! pool through [`open_pool`]: parse the URL, name the connections after the store (the
//! `application_name` an operator sees in `pg_stat_activity`), size the pool from the
//! process's [`PoolBudget`], and apply the store's schema.
//!
//! The schema is applied in one transaction under a transaction-scoped advisory lock because
//! several processes start at once (a fleet of workers and a receiver after a deploy, each
//! applying the same migration): `CREATE TABLE IF NOT EXISTS` is not safe against a concurrent
//! twin (both see no table, one fails on the catalog's unique index), and a versioned
//! migration must be read and applied by one process at a time. The lock is the transaction's,
//! so a start-up cancelled half-way rolls back and leaves no lock behind on the pooled
//! connection.
//!
//! The budget: `B24_PG_POOL_SIZE` (read by the `b24` binary, which hands it to
//! [`set_process_budget`]) is the most connections one process opens to the database, all
//! stores together. [`PoolBudget::share`] splits it between the roles; a process opens only the
//! pools of the roles it uses, so its real count is at most the total. The default, 16, lets
//! four `b24 worker` processes and one `b24 events serve` stay near 70 connections, well under
//! PostgreSQL's default `max_connections` of 100.

use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use deadpool_postgres::{Manager, ManagerConfig, Pool, RecyclingMethod, Runtime, Transaction};
use futures::future::BoxFuture;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use crate::Error;

/// The stores that hold PostgreSQL connections, each a share of the [`PoolBudget`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum PgRole {
    /// This crate's [`super::PgStore`]: rate limiter, operating time, token rows, write budget.
    Client,
    /// The sessions that hold a portal's token-refresh lock (one each, outside the pool).
    TokenLock,
    /// `b24-guard`'s MCP client tokens.
    Guard,
    /// `b24-events`' queue pool (its `LISTEN` session is one more, counted in the share).
    Queue,
    /// `b24-events`' receiver inbox and installations registry.
    Inbox,
}

impl PgRole {
    /// The `application_name` its connections carry (after the URL's own, if it names one).
    pub fn application_name(self) -> &'static str {
        match self {
            PgRole::Client => "b24-client",
            PgRole::TokenLock => "b24-token-lock",
            PgRole::Guard => "b24-mcp-clients",
            PgRole::Queue => "b24-queue",
            PgRole::Inbox => "b24-inbox",
        }
    }
}

/// The most PostgreSQL connections one process opens, all stores together.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PoolBudget {
    total: u32,
}

impl Default for PoolBudget {
    fn default() -> Self {
        PoolBudget {
            total: PoolBudget::DEFAULT,
        }
    }
}

impl PoolBudget {
    /// The default total per process.
    pub const DEFAULT: u32 = 16;
    /// The smallest total: one connection for each role and two for the queue (its pool and
    /// its `LISTEN` session).
    pub const MIN: u32 = 6;
    /// The largest total accepted: far beyond any server's useful `max_connections` share, so
    /// a larger number is a typo rather than a plan.
    pub const MAX: u32 = 1000;

    /// A budget of `total` connections, refused outside [`Self::MIN`]..=[`Self::MAX`].
    pub fn new(total: u32) -> Result<PoolBudget, Error> {
        if !(Self::MIN..=Self::MAX).contains(&total) {
            return Err(Error::Config(format!(
                "B24_PG_POOL_SIZE must be a whole number from {} to {} (connections per process), not {total}",
                Self::MIN,
                Self::MAX
            )));
        }
        Ok(PoolBudget { total })
    }

    /// Parse the value of `B24_PG_POOL_SIZE`.
    pub fn parse(value: &str) -> Result<PoolBudget, Error> {
        let v = value.trim();
        // Plain ASCII digits only: Rust's integer parser also takes a leading `+`, which is no
        // number an operator writes here. Too many digits for any integer is refused below
        // with the value as given (not as another number).
        let digits = !v.is_empty() && v.bytes().all(|b| b.is_ascii_digit());
        match v.parse::<u32>() {
            Ok(n) if digits => Self::new(n),
            _ => Err(Error::Config(format!(
                "B24_PG_POOL_SIZE must be a whole number from {} to {} (connections per process), not `{}`",
                Self::MIN,
                Self::MAX,
                v.chars().take(40).collect::<String>()
            ))),
        }
    }

    /// The total.
    pub fn total(self) -> u32 {
        self.total
    }

    /// How many connections `role` may hold; the shares of all roles add up to the total.
    /// The queue takes what the others leave (it is the busiest) minus its `LISTEN` session.
    pub fn share(self, role: PgRole) -> usize {
        let t = self.total as usize;
        let inbox = (t / 8).max(1);
        let client = (t * 3 / 16).max(1);
        let guard = (t / 16).max(1);
        let locks = (t / 8).max(1);
        match role {
            PgRole::Client => client,
            PgRole::TokenLock => locks,
            PgRole::Guard => guard,
            PgRole::Inbox => inbox,
            // `MIN` keeps this ≥ 1.
            PgRole::Queue => t - inbox - client - guard - locks - 1,
        }
    }
}

/// 0: not set, the default applies.
static PROCESS_BUDGET: AtomicU32 = AtomicU32::new(0);

/// Set the process's budget; pools opened afterwards are sized from it (pools already open
/// keep their size). The `b24` binary calls this once at start-up with `B24_PG_POOL_SIZE`.
pub fn set_process_budget(budget: PoolBudget) {
    PROCESS_BUDGET.store(budget.total, Ordering::Relaxed);
}

/// The process's budget: the one set by [`set_process_budget`], else the default.
pub fn process_budget() -> PoolBudget {
    match PROCESS_BUDGET.load(Ordering::Relaxed) {
        0 => PoolBudget::default(),
        total => PoolBudget { total },
    }
}

/// How to open one store's pool.
#[derive(Debug, Clone)]
pub struct PoolSpec {
    /// Whose connections these are (names them, and sizes the pool by default).
    pub role: PgRole,
    /// The pool's size.
    pub max_size: usize,
    /// How long a caller waits for a free connection before getting an error; also how long
    /// [`open_pool`] waits for another process's migration of the same store.
    pub wait_timeout: Duration,
}

impl PoolSpec {
    /// `role`'s share of the process's budget, waiting up to 30 s for a connection.
    pub fn for_role(role: PgRole) -> PoolSpec {
        PoolSpec {
            role,
            max_size: process_budget().share(role),
            wait_timeout: Duration::from_secs(30),
        }
    }
}

/// The advisory lock a store's migration holds: a number, or a name hashed by the server
/// (`hashtext`), as each store has always used.
#[derive(Debug, Clone, Copy)]
pub enum MigrationLock {
    /// `pg_advisory_xact_lock(key)`.
    Key(i64),
    /// `pg_advisory_xact_lock(hashtext(name))`.
    Name(&'static str),
}

/// An open pool and the connection settings it uses (with its `application_name`), for the
/// sessions a store keeps outside the pool (`LISTEN`, a session lock).
#[derive(Clone)]
pub struct PgPool {
    /// The pool.
    pub pool: Pool,
    /// The URL's settings with the role's `application_name`.
    pub config: tokio_postgres::Config,
}

impl std::fmt::Debug for PgPool {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PgPool").finish_non_exhaustive()
    }
}

pub(crate) fn pg_err(what: &str, e: impl std::error::Error + Send + Sync + 'static) -> Error {
    // tokio-postgres errors never include the connection string, so the password stays out.
    // The server's own words are in the source chain ("db error" alone says nothing; "FATAL:
    // sorry, too many clients already" says to wait), and callers that keep only the message
    // (`to_string()`) would lose them: appended here.
    let mut text = format!("postgres {what}: {e}");
    let mut cause = e.source();
    while let Some(c) = cause {
        let c_text = c.to_string();
        if !text.contains(&c_text) {
            text.push_str(": ");
            text.push_str(&c_text);
        }
        cause = c.source();
    }
    Error::state(text, e)
}

/// The connection settings of `url` with `role`'s `application_name` (appended to the URL's
/// own, `app:b24-queue`, so an operator who names the process still sees each store).
pub fn role_config(url: &str, role: PgRole) -> Result<tokio_postgres::Config, Error> {
    let mut config: tokio_postgres::Config = url
        .parse()
        .map_err(|e| Error::Config(format!("B24_STORE_URL is not a PostgreSQL URL: {e}")))?;
    let name = match config.get_application_name() {
        Some(own) if !own.is_empty() => format!("{own}:{}", role.application_name()),
        _ => role.application_name().to_string(),
    };
    config.application_name(&name);
    Ok(config)
}

/// Open a pool to `url` as `spec` says and apply a store's schema: `migrate` runs inside one
/// transaction that first takes `lock` (see the module's notes for why).
///
/// Must run inside a Tokio runtime (the pool times its waits with it).
pub async fn open_pool<F>(
    url: &str,
    spec: &PoolSpec,
    lock: MigrationLock,
    migrate: F,
) -> Result<PgPool, Error>
where
    F: for<'t> FnOnce(&'t Transaction<'t>) -> BoxFuture<'t, Result<(), Error>>,
{
    if spec.max_size == 0 {
        return Err(Error::Config(format!(
            "the {} pool needs at least one connection",
            spec.role.application_name()
        )));
    }
    let config = role_config(url, spec.role)?;
    let mgr = Manager::from_config(
        config.clone(),
        tokio_postgres::NoTls,
        ManagerConfig {
            recycling_method: RecyclingMethod::Fast,
        },
    );
    // A bounded wait for a connection: one that never comes is an error (logged, retried by
    // the caller) rather than a task stalled for good.
    let pool = Pool::builder(mgr)
        .max_size(spec.max_size)
        .wait_timeout(Some(spec.wait_timeout))
        .runtime(Runtime::Tokio1)
        .build()
        .map_err(|e| pg_err("pool", e))?;
    let mut c = pool.get().await.map_err(|e| pg_err("connect", e))?;
    let tx = c.transaction().await.map_err(|e| pg_err("migrate", e))?;
    // A bounded wait for the migration lock: a process stopped half-way through its migration
    // (SIGSTOP, a host cut off whose session the server has not reaped yet, for hours with
    // default keepalives) would otherwise hold every process that starts after it, silently
    // and for good. Only the lock's wait is bounded; the migration itself is not.
    let bound = format!("{}ms", spec.wait_timeout.as_millis().max(1));
    let before: String = tx
        .query_one(
            "SELECT current_setting('lock_timeout'), set_config('lock_timeout', $1, true)",
            &[&bound],
        )
        .await
        .and_then(|r| r.try_get(0))
        .map_err(|e| pg_err("migrate", e))?;
    let locked = match lock {
        MigrationLock::Key(k) => tx.execute("SELECT pg_advisory_xact_lock($1)", &[&k]).await,
        MigrationLock::Name(n) => {
            tx.execute("SELECT pg_advisory_xact_lock(hashtext($1))", &[&n])
                .await
        }
    };
    locked.map_err(|e| {
        let waited = e.code() == Some(&tokio_postgres::error::SqlState::LOCK_NOT_AVAILABLE);
        if waited {
            Error::state(
                format!(
                    "postgres migrate: another process held the {} schema's migration lock for {:.1} s; retry later",
                    spec.role.application_name(),
                    spec.wait_timeout.as_secs_f64()
                ),
                e,
            )
        } else {
            pg_err("migrate", e)
        }
    })?;
    // The server's own setting again for the migration.
    tx.execute("SELECT set_config('lock_timeout', $1, true)", &[&before])
        .await
        .map_err(|e| pg_err("migrate", e))?;
    migrate(&tx).await?;
    tx.commit().await.map_err(|e| pg_err("migrate", e))?;
    drop(c);
    Ok(PgPool { pool, config })
}

/// Run `sql` (several statements) in `tx`: the usual body of a migration.
pub fn batch<'t>(tx: &'t Transaction<'t>, sql: &'t str) -> BoxFuture<'t, Result<(), Error>> {
    Box::pin(async move {
        tx.batch_execute(sql)
            .await
            .map_err(|e| pg_err("migrate", e))
    })
}

/// The process's lock sessions: the [`PgRole::TokenLock`] share of the budget as it was when
/// first asked for. Every refresh lock of the process (this crate's token rows, `b24-events`'
/// installations) holds one permit while its session is open, so portals refreshing together
/// open at most this many connections, whatever their number.
pub fn lock_sessions() -> Arc<Semaphore> {
    static SESSIONS: OnceLock<Arc<Semaphore>> = OnceLock::new();
    SESSIONS
        .get_or_init(|| Arc::new(Semaphore::new(process_budget().share(PgRole::TokenLock))))
        .clone()
}

/// A permit of `sessions`, waiting at most `wait`; `what` names the lock in the error.
pub async fn lock_permit(
    sessions: &Arc<Semaphore>,
    wait: Duration,
    what: &str,
) -> Result<OwnedSemaphorePermit, Error> {
    match tokio::time::timeout(wait, sessions.clone().acquire_owned()).await {
        Ok(Ok(p)) => Ok(p),
        Ok(Err(e)) => Err(Error::state(format!("{what}: lock sessions closed"), e)),
        Err(_) => Err(Error::state_msg(format!(
            "{what}: every PostgreSQL lock session of this process stayed busy for {:.1} s; retry later",
            wait.as_secs_f64()
        ))),
    }
}

/// A session advisory lock on a connection taken out of its pool: the lock ends with the
/// session (dropping this closes the connection, and the server releases the session's
/// locks), so no pooled connection ever goes back holding it. It holds one of the lock
/// sessions it was taken under until dropped.
pub struct SessionLock {
    _client: deadpool_postgres::ClientWrapper,
    _permit: OwnedSemaphorePermit,
}

impl std::fmt::Debug for SessionLock {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SessionLock").finish_non_exhaustive()
    }
}

/// Take the session advisory lock `hashtext(key)` (a refresh's single-flight lock), waiting
/// at most `wait` for whoever holds it — in this process or another — before failing with
/// [`Error::State`].
///
/// A waiter holds nothing while it waits: each try takes one of `sessions` and a pooled
/// connection for one `pg_try_advisory_lock`, and gives both back when the lock is taken
/// elsewhere, then tries again after a pause (20 ms doubling to 500 ms). Only a holder keeps
/// a connection (taken out of the pool, renamed `…:b24-token-lock`) and a session, so portals
/// stuck behind another process's refresh cannot use up the pool or the sessions and starve
/// the refreshes of other portals; the connections are at most the pool's plus `sessions`.
pub async fn session_lock(
    pool: &Pool,
    sessions: &Arc<Semaphore>,
    key: &str,
    wait: Duration,
) -> Result<SessionLock, Error> {
    let deadline = tokio::time::Instant::now() + wait;
    let mut pause = Duration::from_millis(20);
    loop {
        let left = deadline.saturating_duration_since(tokio::time::Instant::now());
        let permit = lock_permit(sessions, left, key).await?;
        let left = deadline.saturating_duration_since(tokio::time::Instant::now());
        let conn = match tokio::time::timeout(left, pool.get()).await {
            Ok(c) => c.map_err(|e| pg_err("connect", e))?,
            Err(_) => {
                return Err(Error::state_msg(format!(
                    "{key}: no pooled PostgreSQL connection within {:.1} s; retry later",
                    wait.as_secs_f64()
                )));
            }
        };
        // Until the server's answer is read, this connection may hold the lock: see `Unsure`.
        let conn = Unsure(Some(conn));
        let got: bool = conn
            .get()
            .query_one("SELECT pg_try_advisory_lock(hashtext($1))", &[&key])
            .await
            .map_err(|e| pg_err("lock", e))?
            .try_get(0)
            .map_err(|e| pg_err("lock", e))?;
        let conn = conn.settled();
        if got {
            let client = deadpool_postgres::Object::take(conn);
            // Operators see the holder as such in pg_stat_activity (the URL's own name kept).
            let _ = client
                .execute(
                    "SELECT set_config('application_name', regexp_replace(current_setting('application_name'), '[^:]*$', $1), false)",
                    &[&PgRole::TokenLock.application_name()],
                )
                .await;
            return Ok(SessionLock {
                _client: client,
                _permit: permit,
            });
        }
        drop(conn);
        drop(permit);
        if tokio::time::Instant::now() + pause >= deadline {
            return Err(Error::state_msg(format!(
                "{key}: lock not acquired within {:.1} s (another refresh holds it); retry later",
                wait.as_secs_f64()
            )));
        }
        tokio::time::sleep(pause).await;
        pause = (pause * 2).min(Duration::from_millis(500));
    }
}

/// A pooled connection whose `pg_try_advisory_lock` may or may not have taken the lock on the
/// server. If the try is abandoned before its answer is read (the caller's future dropped by a
/// timeout or a cancelled MCP request, or an error), the lock may be held by the session, and
/// a pooled session never ends: back in the pool, the connection would keep the lock for good
/// and every other process's refresh of that portal would wait in vain. So, fail-closed, the
/// connection is taken out of the pool and closed on drop (the server then releases whatever
/// the session held); only [`Unsure::settled`], after a definite answer, hands it back.
struct Unsure(Option<deadpool_postgres::Object>);

impl Unsure {
    fn get(&self) -> &deadpool_postgres::Object {
        self.0.as_ref().expect("present until settled or dropped")
    }

    fn settled(mut self) -> deadpool_postgres::Object {
        self.0.take().expect("present until settled or dropped")
    }
}

impl Drop for Unsure {
    fn drop(&mut self) {
        if let Some(conn) = self.0.take() {
            // Dropping the wrapper aborts its connection task: the socket closes.
            drop(deadpool_postgres::Object::take(conn));
        }
    }
}
