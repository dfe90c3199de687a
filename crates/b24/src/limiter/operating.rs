//! Operating-time pacing (docs/protocol.md §7.3): the portal adds up the execution time of
//! each method per credential over a sliding window (ten one-minute baskets in ten minutes) and
//! blocks the method once it passes the limit (480 s on a cloud portal). Almost all heavy work
//! goes through `batch`, where every command reports its own `time.operating` in
//! `result_time`; this module turns those observations into a pace.
//!
//! Per (portal, credential, method) one [`OpState`] holds what was learned:
//!
//! - the **window**, taken from the answers: `operating_reset_at − finish` is how long the
//!   oldest basket has left, so its largest value seen is the window (the first call of a fresh
//!   window shows it whole). Never a constant: a sandbox with a 20 s window is paced for 20 s;
//! - the **cost per command** (its `processing` time, averaged);
//! - a **ledger** of (time, seconds) entries: reservations for requests about to be sent,
//!   corrected to their real cost when the answer arrives, plus usage the portal reports that
//!   no reservation explains (another process without this store, a restart). Entries drop out
//!   after one window, like the portal's baskets;
//! - a **pacer** (GCRA over seconds of operating time) at `limit × (1 − margin) / window`.
//!
//! A request of `n` commands waits until both allow it: the ledger so that the sum in any
//! window stays under `limit × (1 − margin)` — the hard promise — and the pacer so that a long
//! job runs at an even speed instead of spending the budget at once and then stopping for most
//! of a window. Methods are paced independently: a slow `crm.lead.list` leaves `crm.deal.list`
//! at full speed.
//!
//! The state lives in the same store as the rate bucket (memory, the SQLite file, or
//! PostgreSQL with `B24_STORE_URL`), one row per key, updated read-modify-write inside one
//! transaction, so processes and hosts that share the store share the pace.

use std::collections::HashMap;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures::future::BoxFuture;
use serde::{Deserialize, Serialize};

use crate::Error;

/// Share of the limit kept free: cost estimates are averages and other clients may appear.
pub const MARGIN: f64 = 0.1;
/// The pacer's burst, as a share of the usable budget.
const BURST: f64 = 0.25;
/// One request may carry at most this share of the usable budget (smaller requests pace
/// evenly; a request bigger than the whole budget would be blocked half-way).
pub const MAX_REQUEST_SHARE: f64 = 0.25;
/// Ledger entries closer together than this (seconds) are merged: the row stays small.
const MERGE_SECS: f64 = 0.5;
/// A ledger never holds more entries than this (older ones are merged).
const MAX_ENTRIES: usize = 400;

/// What is known about one method's operating time for one credential.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[non_exhaustive]
pub struct OpState {
    /// Window length learned from `operating_reset_at` (seconds; 0 = not seen yet).
    #[serde(default)]
    pub window: f64,
    /// A limit learned from a block, when it is lower than the configured one.
    #[serde(default)]
    pub learned_limit: Option<f64>,
    /// Average cost of one command, seconds (0 = not seen yet).
    #[serde(default)]
    pub cost: f64,
    /// (store time from which it counts, seconds), ordered by time.
    #[serde(default)]
    pub ledger: Vec<(f64, f64)>,
    /// The pacer's theoretical arrival time (store time).
    #[serde(default)]
    pub tat: f64,
    /// Nobody sends the method before this store time (the portal blocked it).
    #[serde(default)]
    pub blocked_until: f64,
    /// Last `operating` the portal reported.
    #[serde(default)]
    pub used: f64,
    /// When (store time) the oldest basket drops out, from the last report.
    #[serde(default)]
    pub reset_at: f64,
    /// The most the method had used before a command that the portal still ran (`operating`
    /// minus that command's cost): the limit is at least this. A block then teaches it.
    #[serde(default)]
    pub ran_at: f64,
}

/// One answer's report for a method: what it used and what the portal said.
#[derive(Debug, Clone, Default, PartialEq)]
#[non_exhaustive]
pub struct Observation {
    /// `operating` after the method's last command in the answer.
    pub used: Option<f64>,
    /// `operating_reset_at − finish`: seconds until the oldest basket drops out.
    pub reset_in: Option<f64>,
    /// Each command's own cost (`processing`, else `duration`).
    pub costs: Vec<f64>,
}

/// A reservation made before sending, to be settled with the answer.
#[derive(Debug, Clone, Copy, PartialEq)]
#[non_exhaustive]
pub struct Reservation {
    /// Store time the reservation counts from.
    pub at: f64,
    /// Seconds reserved.
    pub secs: f64,
    /// Seconds to wait before sending (0 = now).
    pub wait: f64,
    /// True when the wait is a block the portal imposed, not the pace.
    pub blocked: bool,
}

impl OpState {
    /// The usable budget: the limit (configured, or learned if lower) minus the margin.
    pub fn usable(&self, limit: f64) -> f64 {
        let l = match self.learned_limit {
            Some(x) if x < limit => x,
            _ => limit,
        };
        (l * (1.0 - MARGIN)).max(0.001)
    }

    /// How many commands one request should carry (at least 1, at most `want`).
    pub fn room(&self, limit: f64, want: usize) -> usize {
        if self.cost <= 0.0 || self.window <= 0.0 {
            return want.max(1);
        }
        let n = (self.usable(limit) * MAX_REQUEST_SHARE / self.cost).floor();
        if n.is_nan() {
            return 1;
        }
        (n as usize).clamp(1, want.max(1))
    }

    fn prune(&mut self, now: f64) {
        if self.window > 0.0 {
            let w = self.window;
            self.ledger.retain(|(t, _)| *t > now - w);
        }
        if self.ledger.len() > MAX_ENTRIES {
            // Merge the oldest pairs into the later entry (later = conservative).
            let extra = self.ledger.len() - MAX_ENTRIES;
            let mut merged: Vec<(f64, f64)> = Vec::with_capacity(MAX_ENTRIES);
            let mut carry = 0.0;
            for (i, (t, s)) in self.ledger.drain(..).enumerate() {
                if i < extra * 2 && i % 2 == 0 {
                    carry = s;
                    continue;
                }
                merged.push((t, s + carry));
                carry = 0.0;
            }
            self.ledger = merged;
        }
    }

    fn insert(&mut self, at: f64, secs: f64) {
        if let Some(last) = self.ledger.last_mut()
            && (at - last.0).abs() < MERGE_SECS
            && at >= last.0
        {
            // The merged entry takes the later time: it then counts a little longer than
            // its earlier part would, never shorter.
            last.0 = at;
            last.1 += secs;
            return;
        }
        let i = self.ledger.partition_point(|(t, _)| *t <= at);
        self.ledger.insert(i, (at, secs));
    }

    /// Seconds in the ledger that still count at `t`.
    pub fn in_window(&self, t: f64) -> f64 {
        if self.window <= 0.0 {
            return self.ledger.iter().map(|(_, s)| s).sum();
        }
        self.ledger
            .iter()
            .filter(|(at, _)| *at > t - self.window && *at <= t)
            .map(|(_, s)| s)
            .sum()
    }

    /// Reserve `n` commands at `now`; see the module documentation.
    pub fn reserve(&mut self, now: f64, n: usize, limit: f64) -> Reservation {
        if self.blocked_until > now {
            return Reservation {
                at: self.blocked_until,
                secs: 0.0,
                wait: self.blocked_until - now,
                blocked: true,
            };
        }
        self.prune(now);
        let k = self.cost * n as f64;
        if self.window <= 0.0 {
            // Nothing learned yet: the answer will teach us.
            return Reservation {
                at: now,
                secs: 0.0,
                wait: 0.0,
                blocked: false,
            };
        }
        let usable = self.usable(limit);
        let k = k.min(usable);
        // Ledger: the earliest time at which this request fits in the window.
        let mut t_ledger = now;
        let mut sum: f64 = self.ledger.iter().map(|(_, s)| s).sum();
        for (t, s) in &self.ledger {
            if sum + k <= usable + 1e-9 {
                break;
            }
            sum -= s;
            t_ledger = t + self.window;
        }
        // Pacer: GCRA over seconds of operating time.
        let rate = usable / self.window;
        let burst = (usable * BURST).max(k);
        let tat = self.tat.max(now - burst / rate);
        let t_pacer = (tat + (k - burst) / rate).max(now);
        let at = t_ledger.max(t_pacer);
        self.tat = tat.max(at - burst / rate) + k / rate;
        if k > 0.0 {
            self.insert(at, k);
        }
        Reservation {
            at,
            secs: k,
            wait: at - now,
            blocked: false,
        }
    }

    /// Settle a reservation with what the answer says.
    pub fn observe(&mut self, now: f64, r: Option<&Reservation>, o: &Observation) {
        if let Some(w) = o
            .reset_in
            .filter(|w| w.is_finite() && *w > 0.0 && *w <= 86_400.0)
            && w > self.window
        {
            self.window = w;
        }
        let actual: f64 = o.costs.iter().filter(|c| c.is_finite() && **c >= 0.0).sum();
        for c in o.costs.iter().filter(|c| c.is_finite() && **c >= 0.0) {
            self.cost = if self.cost <= 0.0 {
                *c
            } else {
                0.8 * self.cost + 0.2 * c
            };
        }
        // Replace the reservation by the real cost.
        match r {
            Some(r) if r.secs > 0.0 => {
                if let Some(e) = self
                    .ledger
                    .iter_mut()
                    .find(|(t, s)| (*t - r.at).abs() < MERGE_SECS && *s >= r.secs - 1e-9)
                {
                    e.1 = (e.1 - r.secs + actual).max(0.0);
                } else {
                    self.insert(now, actual);
                }
            }
            _ => self.insert(now, actual),
        }
        self.ledger.retain(|(_, s)| *s > 0.0);
        let (Some(used), Some(reset_in)) = (o.used, o.reset_in) else {
            return;
        };
        if !used.is_finite() || used < 0.0 {
            return;
        }
        self.used = used;
        self.reset_at = now + reset_in;
        let last = o.costs.last().copied().unwrap_or(self.cost);
        self.ran_at = self.ran_at.max(used - last);
        self.prune(now);
        // The portal is the truth: usage the ledger does not explain is added, counted as if
        // it dropped out with the oldest basket (the next answer corrects it again).
        let known = self.in_window(now);
        if used > known + 1e-6 {
            let at = (now + reset_in - self.window).min(now);
            self.insert(at, used - known);
        }
    }

    /// The portal blocked the method (`OPERATION_TIME_LIMIT`) at `now`, configured `limit`.
    /// Returns when it should be free.
    /// `portal_window` is the largest window any method of this portal has shown (the
    /// window is the portal's, so it stands in when this method has not reported one).
    pub fn blocked(&mut self, now: f64, limit: f64, portal_window: f64) -> f64 {
        // Every command that ran had found the usage at or under the limit, so the limit is at
        // least the highest such usage; a block below the configured limit says the portal
        // applies a lower one. (The latest report is no guide: a block can arrive from a
        // request sent before baskets dropped out, when usage was lower.)
        if self.ran_at > 0.0 && self.ran_at < limit {
            self.learned_limit = Some(self.ran_at);
        }
        if self.window <= 0.0 && portal_window > 0.0 {
            self.window = portal_window;
        }
        // Without any report yet: one basket of the cloud's ten-minute window.
        let basket = if self.window > 0.0 {
            self.window / 10.0
        } else {
            60.0
        };
        let until = if self.reset_at > now + 0.5 {
            self.reset_at
        } else {
            now + basket
        };
        // Whoever tries after `until` and is still blocked waits for the next basket.
        self.blocked_until = self.blocked_until.max(until);
        self.reset_at = 0.0;
        self.blocked_until
    }
}

/// A boxed read-modify-write of one key's state at the store's `now`.
pub type Update<R> = Box<dyn FnOnce(&mut OpState, f64) -> R + Send>;

/// Where operating states live. Implementations run the closure inside one transaction.
pub trait OperatingStore: Send + Sync {
    /// Run `f` on `key`'s state at the store's clock and persist the result.
    fn update<'a>(
        &'a self,
        key: &'a str,
        f: Update<Reservation>,
    ) -> BoxFuture<'a, Result<Reservation, Error>>;
    /// The state of `key` (for diagnostics and request sizing).
    fn get<'a>(&'a self, key: &'a str) -> BoxFuture<'a, Result<Option<OpState>, Error>>;
}

/// In-process store.
pub struct MemoryOpStore {
    states: Mutex<HashMap<String, OpState>>,
    clock: Box<dyn super::Clock>,
}

impl MemoryOpStore {
    /// An empty store reading time from `clock`.
    pub fn new(clock: Box<dyn super::Clock>) -> MemoryOpStore {
        MemoryOpStore {
            states: Mutex::new(HashMap::new()),
            clock,
        }
    }
}

impl OperatingStore for MemoryOpStore {
    fn update<'a>(
        &'a self,
        key: &'a str,
        f: Update<Reservation>,
    ) -> BoxFuture<'a, Result<Reservation, Error>> {
        let mut m = self.states.lock().unwrap_or_else(|p| p.into_inner());
        let st = m.entry(key.to_string()).or_default();
        let r = f(st, self.clock.now());
        Box::pin(std::future::ready(Ok(r)))
    }

    fn get<'a>(&'a self, key: &'a str) -> BoxFuture<'a, Result<Option<OpState>, Error>> {
        let m = self.states.lock().unwrap_or_else(|p| p.into_inner());
        Box::pin(std::future::ready(Ok(m.get(key).cloned())))
    }
}

/// The limiter's SQLite file, table `b24_operating`: one JSON row per key, updated inside
/// `BEGIN IMMEDIATE` on the blocking pool.
pub struct SqliteOpStore {
    conn: Arc<Mutex<rusqlite::Connection>>,
    clock: Arc<dyn super::Clock>,
}

impl SqliteOpStore {
    /// Open (or create) the table in the file at `path`.
    pub fn open(path: &Path, clock: Arc<dyn super::Clock>) -> Result<SqliteOpStore, Error> {
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir)
                .map_err(|e| Error::state(format!("{}: {e}", dir.display()), e))?;
        }
        let st = |e: rusqlite::Error| {
            Error::state(format!("operating store {}: {e}", path.display()), e)
        };
        // The same file as the rate store, opened the same way (see `open_sqlite`).
        let conn = super::open_sqlite(
            path,
            Duration::from_secs(10),
            "CREATE TABLE IF NOT EXISTS b24_operating (key TEXT PRIMARY KEY, state TEXT NOT NULL)",
        )
        .map_err(st)?;
        Ok(SqliteOpStore {
            conn: Arc::new(Mutex::new(conn)),
            clock,
        })
    }
}

/// A stored state that does not parse (an older version, a hand edit) starts afresh: the
/// next answer teaches it again, which is safer than refusing to call.
fn parse_state(s: &str) -> OpState {
    serde_json::from_str(s).unwrap_or_default()
}

impl OperatingStore for SqliteOpStore {
    fn update<'a>(
        &'a self,
        key: &'a str,
        f: Update<Reservation>,
    ) -> BoxFuture<'a, Result<Reservation, Error>> {
        let conn = self.conn.clone();
        let clock = self.clock.clone();
        let key = key.to_string();
        Box::pin(crate::auth::blocking("operating store task", move || {
            let st = |e: rusqlite::Error| Error::state(format!("operating store: {e}"), e);
            let mut conn = conn.lock().unwrap_or_else(|p| p.into_inner());
            let tx = conn
                .transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)
                .map_err(st)?;
            let cur: Option<String> = match tx.query_row(
                "SELECT state FROM b24_operating WHERE key = ?1",
                [&key],
                |r| r.get(0),
            ) {
                Ok(v) => Some(v),
                Err(rusqlite::Error::QueryReturnedNoRows) => None,
                Err(e) => return Err(st(e)),
            };
            let mut state = cur.as_deref().map(parse_state).unwrap_or_default();
            let out = f(&mut state, clock.now());
            let text = serde_json::to_string(&state)
                .map_err(|e| Error::state("operating store: encode", e))?;
            tx.execute(
                "INSERT INTO b24_operating (key, state) VALUES (?1, ?2) ON CONFLICT(key) DO UPDATE SET state = excluded.state",
                rusqlite::params![key, text],
            )
            .map_err(st)?;
            tx.commit().map_err(st)?;
            Ok(out)
        }))
    }

    fn get<'a>(&'a self, key: &'a str) -> BoxFuture<'a, Result<Option<OpState>, Error>> {
        let conn = self.conn.clone();
        let key = key.to_string();
        Box::pin(crate::auth::blocking("operating store task", move || {
            let conn = conn.lock().unwrap_or_else(|p| p.into_inner());
            match conn.query_row(
                "SELECT state FROM b24_operating WHERE key = ?1",
                [&key],
                |r| r.get::<_, String>(0),
            ) {
                Ok(v) => Ok(Some(parse_state(&v))),
                Err(rusqlite::Error::QueryReturnedNoRows) => Ok(None),
                Err(e) => Err(Error::state(format!("operating store: {e}"), e)),
            }
        }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A reference portal: baskets of window/10, blocks when the sum passes the limit.
    struct Portal {
        window: f64,
        limit: f64,
        baskets: Vec<(f64, f64)>,
    }

    impl Portal {
        fn used(&mut self, now: f64) -> (f64, f64) {
            let w = self.window;
            self.baskets.retain(|(s, _)| now - s < w);
            let used = self.baskets.iter().map(|(_, x)| x).sum();
            let reset = self.baskets.first().map(|(s, _)| s + w).unwrap_or(now + w);
            (used, reset)
        }
        fn run(&mut self, now: f64, cost: f64) -> Result<(f64, f64), ()> {
            if self.used(now).0 > self.limit {
                return Err(());
            }
            match self.baskets.last_mut() {
                Some((s, x)) if now - *s < self.window / 10.0 => *x += cost,
                _ => self.baskets.push((now, cost)),
            }
            Ok(self.used(now))
        }
    }

    /// A long job of 2,000 requests of 5 commands at 0.3 s against a 20 s window with a 6 s
    /// limit: never blocked, never above the limit, and about as fast as the budget allows.
    #[test]
    fn a_long_job_is_paced_under_the_limit() {
        let mut p = Portal {
            window: 20.0,
            limit: 6.0,
            baskets: vec![],
        };
        let mut s = OpState::default();
        let mut now = 1000.0;
        let start = now;
        let mut max_used: f64 = 0.0;
        let mut total = 0.0;
        for _ in 0..2000 {
            let n = s.room(6.0, 5);
            let r = s.reserve(now, n, 6.0);
            now += r.wait;
            let costs = vec![0.3; n];
            let mut obs = (0.0, 0.0);
            for _ in 0..n {
                obs = p.run(now, 0.3).expect("the portal blocked the method");
                total += 0.3;
            }
            max_used = max_used.max(obs.0);
            s.observe(
                now,
                Some(&r),
                &Observation {
                    used: Some(obs.0),
                    reset_in: Some(obs.1 - now),
                    costs,
                },
            );
            now += 0.05;
        }
        assert!(max_used <= 6.0, "peak {max_used}");
        let floor = total / (6.0 / 20.0);
        let took = now - start;
        assert!(
            took < floor * 1.35,
            "took {took:.0} s for a floor of {floor:.0} s"
        );
        assert!((s.window - 20.0).abs() < 0.5, "window {}", s.window);
    }

    #[test]
    fn a_block_is_waited_out_and_teaches_the_limit() {
        let mut s = OpState {
            window: 600.0,
            cost: 2.0,
            used: 21.0,
            ran_at: 19.0,
            reset_at: 1300.0,
            ..Default::default()
        };
        let until = s.blocked(1000.0, 480.0, 0.0);
        assert_eq!(until, 1300.0);
        assert_eq!(s.learned_limit, Some(19.0));
        let r = s.reserve(1100.0, 1, 480.0);
        assert!(r.blocked && (r.wait - 200.0).abs() < 1e-9);
        assert!(s.usable(480.0) < 19.0);
        // A later block reported after usage fell does not lower what was learned.
        s.used = 3.0;
        s.blocked(1400.0, 480.0, 0.0);
        assert_eq!(s.learned_limit, Some(19.0));
        // Other methods know nothing of it.
        let mut other = OpState::default();
        assert_eq!(other.reserve(1100.0, 1, 480.0).wait, 0.0);
    }

    #[test]
    fn foreign_usage_reported_by_the_portal_slows_us_down() {
        let mut s = OpState::default();
        s.observe(
            0.0,
            None,
            &Observation {
                used: Some(1.0),
                reset_in: Some(100.0),
                costs: vec![1.0],
            },
        );
        // Another client used 80 s we never reserved.
        s.observe(
            10.0,
            None,
            &Observation {
                used: Some(82.0),
                reset_in: Some(90.0),
                costs: vec![1.0],
            },
        );
        let r = s.reserve(10.0, 10, 90.0);
        assert!(r.wait > 0.0, "{r:?}");
        assert!(s.room(90.0, 50) < 50);
    }
}
