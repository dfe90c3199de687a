//! A GCRA model of the portal's leaky bucket, shared between processes when it lives in SQLite.
//!
//! The portal keeps a counter per portal and source address: every request adds one, the counter
//! drains at `per_sec`, and a request that would take it above `burst` is refused with 503
//! `QUERY_LIMIT_EXCEEDED` (docs/protocol.md §7.2). GCRA tracks the same bucket with one number,
//! the theoretical arrival time `tat` (when the bucket would be empty): the level at time `now`
//! is `(tat - now) * per_sec`. A request is admitted when the level after adding it is at most
//! the capacity. We *reserve* slots: a caller that must wait still advances `tat` and sleeps
//! until its slot, so waiting callers queue fairly and each reservation is one atomic update —
//! which is what lets several processes share one SQLite row without a coordinator.
//!
//! Why not `governor`: its state lives in one process, it cannot be told "the server said 503,
//! treat the bucket as full", and it cannot be stored in SQLite or PostgreSQL.

use std::collections::HashMap;
use std::path::Path;
use std::sync::Mutex;
use std::time::Duration;

use futures::future::BoxFuture;

use crate::Error;
use crate::config::RateLimits;

mod budget;
pub mod operating;

pub use budget::OperatingBudget;

/// Seconds since the Unix epoch, as f64: shared stores need a clock all processes agree on.
pub trait Clock: Send + Sync {
    /// Seconds since the Unix epoch.
    fn now(&self) -> f64;
}

/// The wall clock.
#[derive(Debug, Default, Clone, Copy)]
pub struct SystemClock;

impl Clock for SystemClock {
    fn now(&self) -> f64 {
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_secs_f64())
            .unwrap_or(0.0)
    }
}

/// Tokio's clock (follows `tokio::time::pause`/`advance` in tests), offset to look like Unix time.
#[derive(Debug, Clone, Copy)]
pub struct TokioClock {
    origin: tokio::time::Instant,
    origin_unix: f64,
}

impl TokioClock {
    /// A clock that starts at the current Unix time and then follows tokio's time.
    pub fn new() -> TokioClock {
        TokioClock {
            origin: tokio::time::Instant::now(),
            origin_unix: SystemClock.now(),
        }
    }
}

impl Default for TokioClock {
    fn default() -> Self {
        Self::new()
    }
}

impl Clock for TokioClock {
    fn now(&self) -> f64 {
        self.origin_unix + self.origin.elapsed().as_secs_f64()
    }
}

/// The GCRA arithmetic, shared by every store.
#[derive(Debug, Clone, Copy, PartialEq)]
#[non_exhaustive]
pub struct Gcra {
    /// Seconds per request (1 / per_sec).
    pub t: f64,
    /// Usable capacity (burst − margin), in requests.
    pub capacity: f64,
}

/// How far beyond a full bucket a stored `tat` may reach, in seconds. Waiting callers push
/// `tat` past the full mark one slot each, so a legitimate queue stays well inside this; a
/// larger value (a clock that jumped, a row edited by hand, a corrupt file) is read as "full"
/// instead of making every caller sleep for hours.
pub const MAX_QUEUE_SECS: f64 = 300.0;

impl Gcra {
    /// The bucket of these limits.
    pub fn new(l: RateLimits) -> Gcra {
        Gcra {
            t: 1.0 / l.per_sec,
            capacity: (l.burst - l.margin).max(1.0),
        }
    }

    /// Reserve one slot. Returns the new `tat` and how long the caller must wait.
    pub fn reserve(&self, tat: f64, now: f64) -> (f64, f64) {
        let new_tat = self.sane(tat, now) + self.t;
        // Level after this request = (new_tat - now)/t must be ≤ capacity.
        let wait = (new_tat - now - self.capacity * self.t).max(0.0);
        (new_tat, wait)
    }

    /// The portal said the bucket is full: model it as full right now.
    pub fn fill(&self, tat: f64, now: f64) -> f64 {
        self.sane(tat, now).max(now + self.capacity * self.t)
    }

    /// The latest `tat` believed at `now` (see [`MAX_QUEUE_SECS`]).
    pub fn max_tat(&self, now: f64) -> f64 {
        now + self.capacity * self.t + MAX_QUEUE_SECS
    }

    /// A stored `tat` brought into `[now, max_tat]`; NaN and infinities count as full.
    fn sane(&self, tat: f64, now: f64) -> f64 {
        if tat.is_nan() {
            return self.max_tat(now);
        }
        tat.min(self.max_tat(now)).max(now)
    }

    /// Current level in requests.
    pub fn level(&self, tat: f64, now: f64) -> f64 {
        ((self.sane(tat, now) - now) / self.t).max(0.0)
    }
}

/// Where `tat` per portal lives. Implementations update it atomically.
///
/// The methods return boxed futures so that a network store (PostgreSQL) fits behind the same
/// object as the in-process and SQLite ones; those two finish without awaiting anything.
pub trait RateStore: Send + Sync {
    /// Reserve a slot for `key`; resolves to the seconds to wait before sending.
    fn reserve<'a>(
        &'a self,
        key: &'a str,
        g: &'a Gcra,
        now: f64,
    ) -> BoxFuture<'a, Result<f64, Error>>;
    /// Mark the bucket of `key` full (after a 503 `QUERY_LIMIT_EXCEEDED`).
    fn fill<'a>(&'a self, key: &'a str, g: &'a Gcra, now: f64) -> BoxFuture<'a, Result<(), Error>>;
    /// The modelled level of `key`'s bucket at `now`, in requests (for diagnostics).
    fn level<'a>(
        &'a self,
        key: &'a str,
        g: &'a Gcra,
        now: f64,
    ) -> BoxFuture<'a, Result<f64, Error>>;
}

/// In-process store.
#[derive(Debug, Default)]
pub struct MemoryStore {
    tats: Mutex<HashMap<String, f64>>,
}

impl MemoryStore {
    fn reserve_now(&self, key: &str, g: &Gcra, now: f64) -> f64 {
        let mut m = self.tats.lock().unwrap_or_else(|p| p.into_inner());
        let tat = m.get(key).copied().unwrap_or(0.0);
        let (new_tat, wait) = g.reserve(tat, now);
        m.insert(key.to_string(), new_tat);
        wait
    }

    fn fill_now(&self, key: &str, g: &Gcra, now: f64) {
        let mut m = self.tats.lock().unwrap_or_else(|p| p.into_inner());
        let tat = m.get(key).copied().unwrap_or(0.0);
        m.insert(key.to_string(), g.fill(tat, now));
    }

    fn level_now(&self, key: &str, g: &Gcra, now: f64) -> f64 {
        let m = self.tats.lock().unwrap_or_else(|p| p.into_inner());
        m.get(key).map(|t| g.level(*t, now)).unwrap_or(0.0)
    }
}

impl RateStore for MemoryStore {
    fn reserve<'a>(
        &'a self,
        key: &'a str,
        g: &'a Gcra,
        now: f64,
    ) -> BoxFuture<'a, Result<f64, Error>> {
        Box::pin(std::future::ready(Ok(self.reserve_now(key, g, now))))
    }

    fn fill<'a>(&'a self, key: &'a str, g: &'a Gcra, now: f64) -> BoxFuture<'a, Result<(), Error>> {
        self.fill_now(key, g, now);
        Box::pin(std::future::ready(Ok(())))
    }

    fn level<'a>(
        &'a self,
        key: &'a str,
        g: &'a Gcra,
        now: f64,
    ) -> BoxFuture<'a, Result<f64, Error>> {
        Box::pin(std::future::ready(Ok(self.level_now(key, g, now))))
    }
}

/// Open the limiter's SQLite file in WAL mode with a short WAL, waiting out other processes.
///
/// Two processes that start at once on a new state dir both open the file; switching it to WAL
/// needs a moment's exclusive lock, and SQLite answers "database is locked" at once there
/// instead of calling the busy handler. So the whole set-up is retried until `timeout`.
///
/// Short-lived processes rarely close the store cleanly, so its WAL outlives them, and the
/// first connection of every new process rebuilds its index by reading all of it (up to 1,000
/// pages at SQLite's default checkpoint interval: ~450 reads per `b24 call` measured). The
/// tables are a row per key: checkpoint after a few pages instead.
pub(crate) fn open_sqlite(
    path: &Path,
    timeout: Duration,
    setup: &str,
) -> rusqlite::Result<rusqlite::Connection> {
    let deadline = std::time::Instant::now() + timeout;
    loop {
        let attempt = (|| {
            let conn = rusqlite::Connection::open(path)?;
            conn.busy_timeout(timeout)?;
            conn.pragma_update(None, "journal_mode", "WAL")?;
            conn.pragma_update(None, "synchronous", "NORMAL")?;
            conn.pragma_update(None, "wal_autocheckpoint", 8)?;
            conn.execute_batch(setup)?;
            Ok(conn)
        })();
        match attempt {
            Err(rusqlite::Error::SqliteFailure(e, _))
                if matches!(
                    e.code,
                    rusqlite::ErrorCode::DatabaseBusy | rusqlite::ErrorCode::DatabaseLocked
                ) && std::time::Instant::now() < deadline =>
            {
                std::thread::sleep(Duration::from_millis(10));
            }
            other => return other,
        }
    }
}

/// A SQLite file shared by every process on the host: one row per portal, updated inside
/// `BEGIN IMMEDIATE` so that two processes never read the same `tat`.
pub struct SqliteStore {
    conn: std::sync::Arc<Mutex<rusqlite::Connection>>,
}

impl SqliteStore {
    /// Open (or create) the store at `path`; every process that opens it shares one budget.
    pub fn open(path: &Path) -> Result<SqliteStore, Error> {
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir)
                .map_err(|e| Error::state(format!("{}: {e}", dir.display()), e))?;
        }
        let st =
            |e: rusqlite::Error| Error::state(format!("limiter store {}: {e}", path.display()), e);
        let conn = open_sqlite(
            path,
            Duration::from_secs(10),
            "CREATE TABLE IF NOT EXISTS b24_rate (portal TEXT PRIMARY KEY, tat REAL NOT NULL)",
        )
        .map_err(st)?;
        Ok(SqliteStore {
            conn: std::sync::Arc::new(Mutex::new(conn)),
        })
    }

    /// One `BEGIN IMMEDIATE` read-modify-write of `key`'s `tat`, on the blocking pool: with
    /// other processes on the same file it may wait for their lock (up to the busy timeout),
    /// and that wait must not hold a runtime thread.
    async fn update(
        &self,
        key: &str,
        f: impl FnOnce(f64) -> (f64, f64) + Send + 'static,
    ) -> Result<f64, Error> {
        let conn = self.conn.clone();
        let key = key.to_string();
        crate::auth::blocking("limiter store task", move || {
            Self::update_blocking(&conn, &key, f)
        })
        .await
    }

    fn update_blocking(
        conn: &Mutex<rusqlite::Connection>,
        key: &str,
        f: impl FnOnce(f64) -> (f64, f64),
    ) -> Result<f64, Error> {
        let st = |e: rusqlite::Error| Error::state(format!("limiter store: {e}"), e);
        let mut conn = conn.lock().unwrap_or_else(|p| p.into_inner());
        let tx = conn
            .transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)
            .map_err(st)?;
        let tat: f64 = tx
            .query_row("SELECT tat FROM b24_rate WHERE portal = ?1", [key], |r| {
                r.get(0)
            })
            .or_else(|e| {
                if matches!(e, rusqlite::Error::QueryReturnedNoRows) {
                    Ok(0.0)
                } else {
                    Err(e)
                }
            })
            .map_err(st)?;
        let (new_tat, out) = f(tat);
        tx.execute(
            "INSERT INTO b24_rate (portal, tat) VALUES (?1, ?2) ON CONFLICT(portal) DO UPDATE SET tat = excluded.tat",
            rusqlite::params![key, new_tat],
        )
        .map_err(st)?;
        tx.commit().map_err(st)?;
        Ok(out)
    }
}

impl SqliteStore {
    fn tat(&self, key: &str) -> Result<Option<f64>, Error> {
        let conn = self.conn.lock().unwrap_or_else(|p| p.into_inner());
        match conn.query_row("SELECT tat FROM b24_rate WHERE portal = ?1", [key], |r| {
            r.get(0)
        }) {
            Ok(v) => Ok(Some(v)),
            Err(rusqlite::Error::QueryReturnedNoRows) => Ok(None),
            Err(e) => Err(Error::state(format!("limiter store: {e}"), e)),
        }
    }
}

/// One short local transaction per call, run on the blocking pool (see `update`).
impl RateStore for SqliteStore {
    fn reserve<'a>(
        &'a self,
        key: &'a str,
        g: &'a Gcra,
        now: f64,
    ) -> BoxFuture<'a, Result<f64, Error>> {
        let g = *g;
        Box::pin(self.update(key, move |tat| g.reserve(tat, now)))
    }

    fn fill<'a>(&'a self, key: &'a str, g: &'a Gcra, now: f64) -> BoxFuture<'a, Result<(), Error>> {
        let g = *g;
        Box::pin(async move {
            self.update(key, move |tat| (g.fill(tat, now), 0.0))
                .await
                .map(|_| ())
        })
    }

    fn level<'a>(
        &'a self,
        key: &'a str,
        g: &'a Gcra,
        now: f64,
    ) -> BoxFuture<'a, Result<f64, Error>> {
        let r = self
            .tat(key)
            .map(|t| t.map(|t| g.level(t, now)).unwrap_or(0.0));
        Box::pin(std::future::ready(r))
    }
}

/// A store's answer as a sleep: never negative, never past a full bucket plus the longest
/// believable queue, and never a panic on NaN or infinity from a foreign store.
fn wait_duration(wait: f64, g: &Gcra) -> Duration {
    let most = g.capacity * g.t + MAX_QUEUE_SECS;
    let secs = if wait.is_nan() {
        most
    } else {
        wait.clamp(0.0, most)
    };
    Duration::try_from_secs_f64(secs).unwrap_or(Duration::from_secs(MAX_QUEUE_SECS as u64))
}

/// The limiter a client uses: a store, the bucket's shape and a clock.
pub struct Limiter {
    store: Box<dyn RateStore>,
    gcra: Gcra,
    clock: Box<dyn Clock>,
}

impl Limiter {
    /// A limiter for `limits` over `store`, reading time from `clock`.
    pub fn new(store: Box<dyn RateStore>, limits: RateLimits, clock: Box<dyn Clock>) -> Limiter {
        Limiter {
            store,
            gcra: Gcra::new(limits),
            clock,
        }
    }

    /// Wait for a slot for `key`. Returns how long we waited.
    pub async fn acquire(&self, key: &str) -> Result<Duration, Error> {
        let d = self.reserve_only(key).await?;
        if !d.is_zero() {
            tokio::time::sleep(d).await;
        }
        Ok(d)
    }

    /// Reserve a slot for `key` and return how long to wait before using it, without
    /// sleeping (for callers that schedule their own sends).
    pub async fn reserve_only(&self, key: &str) -> Result<Duration, Error> {
        let wait = self
            .store
            .reserve(key, &self.gcra, self.clock.now())
            .await?;
        Ok(wait_duration(wait, &self.gcra))
    }

    /// The portal answered 503 `QUERY_LIMIT_EXCEEDED`: treat its bucket as full.
    pub async fn fill(&self, key: &str) -> Result<(), Error> {
        self.store.fill(key, &self.gcra, self.clock.now()).await
    }

    /// The modelled level of `key`'s bucket now, in requests.
    pub async fn level(&self, key: &str) -> Result<f64, Error> {
        self.store.level(key, &self.gcra, self.clock.now()).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;

    /// Reference simulation of the portal's counter: +1 per request, drains at `rate`,
    /// refuses a request that would take it above `cap`.
    fn simulate(times: &[f64], cap: f64, rate: f64) -> f64 {
        let mut level: f64 = 0.0;
        let mut last = 0.0;
        let mut max: f64 = 0.0;
        for &t in times {
            level = (level - (t - last) * rate).max(0.0);
            last = t;
            level += 1.0;
            assert!(
                level <= cap + 1e-6,
                "request at {t:.3}s took the bucket to {level:.3} > {cap}"
            );
            max = max.max(level);
        }
        max
    }

    #[tokio::test(start_paused = true)]
    async fn burst_of_250_is_spread_within_capacity() {
        let clock = TokioClock::new();
        let origin = clock.now();
        let limiter = Arc::new(Limiter::new(
            Box::new(MemoryStore::default()),
            RateLimits::STANDARD,
            Box::new(clock),
        ));
        let mut tasks = Vec::new();
        for _ in 0..250 {
            let l = limiter.clone();
            tasks.push(tokio::spawn(async move {
                l.acquire("p").await.unwrap();
                TokioClock {
                    origin: clock.origin,
                    origin_unix: clock.origin_unix,
                }
                .now()
            }));
        }
        let mut times = Vec::new();
        for t in tasks {
            times.push(t.await.unwrap() - origin);
        }
        times.sort_by(|a, b| a.partial_cmp(b).unwrap());
        let max = simulate(&times, 50.0, 2.0);
        assert!(max > 49.0, "the burst should be used: max level {max}");
        // 50 immediately, then 2/s: the 250th goes out at (250-50)/2 = 100 s.
        assert_eq!(times.iter().filter(|t| **t < 1e-9).count(), 50);
        let last = *times.last().unwrap();
        assert!((last - 100.0).abs() < 0.01, "last admitted at {last}");
    }

    #[tokio::test(start_paused = true)]
    async fn a_503_fills_the_model() {
        let limiter = Limiter::new(
            Box::new(MemoryStore::default()),
            RateLimits::STANDARD,
            Box::new(TokioClock::new()),
        );
        limiter.acquire("p").await.unwrap();
        limiter.fill("p").await.unwrap();
        assert!((limiter.level("p").await.unwrap() - 50.0).abs() < 1e-6);
        let waited = limiter.acquire("p").await.unwrap();
        assert!(
            (waited.as_secs_f64() - 0.5).abs() < 1e-3,
            "waited {waited:?}"
        );
    }

    #[tokio::test]
    async fn sqlite_store_is_shared_between_instances() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("l.db");
        let a = SqliteStore::open(&path).unwrap();
        let b = SqliteStore::open(&path).unwrap();
        let g = Gcra::new(RateLimits::STANDARD);
        let now = 1000.0;
        let mut waits = Vec::new();
        for i in 0..60 {
            let s: &dyn RateStore = if i % 2 == 0 { &a } else { &b };
            waits.push(s.reserve("p", &g, now).await.unwrap());
        }
        assert!(waits[..50].iter().all(|w| *w == 0.0));
        assert!(
            (waits[50] - 0.5).abs() < 1e-9 && (waits[59] - 5.0).abs() < 1e-9,
            "{:?}",
            &waits[50..]
        );
        assert_eq!(a.tat("p").unwrap(), b.tat("p").unwrap());
        assert!((a.level("p", &g, now).await.unwrap() - 60.0).abs() < 1e-9);
    }
}
