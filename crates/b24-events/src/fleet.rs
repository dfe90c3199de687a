//! Pulling the offline events of every installed portal into one queue, fairly.
//!
//! One worker process (or several hosts on PostgreSQL) serves every portal the app is
//! installed on. The design:
//!
//! - **Who pulls a portal.** A pull round on a portal holds that portal's pull lock
//!   ([`Installations::try_lock_pull`]: a PostgreSQL session advisory lock, or a lock file on
//!   SQLite). A host that finds it taken skips the portal for now, so two hosts never pull the
//!   same portal's queue at once, and a host that dies releases its locks with its session.
//! - **When.** A portal is pulled when its portal said so (`ONOFFLINEEVENT`, recorded by the
//!   receiver as the installation's `wake_at`) or when its back-off ran out. A portal that had
//!   nothing waits twice as long next time, up to `poll_max`: an idle portal costs at most one
//!   `event.offline.get` per `poll_max`.
//! - **Fairness.** The flood stays on its portal. Before pulling, the host looks at how many of
//!   that portal's events are already queued or running here; a portal at `per_portal_cap` is
//!   not pulled until its handlers catch up. So the shared queue never holds more than
//!   `per_portal_cap` events of one portal, and an event of a quiet portal waits behind at most
//!   that many of a flooded one's — whatever the flood's size. The same cap bounds how many
//!   handlers one portal can occupy at once. (Online events cannot be held back — the portal
//!   never redelivers them — so this fairness is for the offline path.)
//! - **Uninstall.** Portals are re-read every `rescan`; one no longer installed is dropped, and
//!   its client (and tokens) with it.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::time::Duration;

use futures::future::BoxFuture;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::installs::{Installation, Installations};
use crate::queue::Store;
use crate::{Result, pull};

/// Builds the client of one installed portal (the front end knows the app's credentials).
pub type ClientFactory =
    Arc<dyn Fn(Installation) -> BoxFuture<'static, Result<b24::Client>> + Send + Sync>;

/// Settings of the many-portal puller.
#[derive(Clone, Debug)]
pub struct FleetConfig {
    /// Portals pulled at once by this host.
    pub concurrency: usize,
    /// Most events of one portal queued or running here before it is pulled again.
    pub per_portal_cap: i64,
    /// `limit` of each `event.offline.get`.
    pub batch: u32,
    /// Wait after a pull that found events (and while a portal is at its cap).
    pub poll_min: Duration,
    /// Longest wait of an idle portal (the wait doubles up to it).
    pub poll_max: Duration,
    /// How often installations (new ones, uninstalls, wake-ups) are re-read.
    pub rescan: Duration,
}

impl Default for FleetConfig {
    fn default() -> Self {
        FleetConfig {
            concurrency: 8,
            per_portal_cap: 200,
            batch: 50,
            poll_min: Duration::from_millis(500),
            poll_max: Duration::from_secs(60),
            rescan: Duration::from_millis(500),
        }
    }
}

/// Counters of one portal (labelled by member id in metrics).
#[derive(Debug, Default, Clone, serde::Serialize)]
pub struct PortalCounters {
    pub polls: u64,
    pub pulled: u64,
    pub errors: u64,
    /// Rounds skipped because another host held the portal's pull lock.
    pub locked_elsewhere: u64,
    /// Rounds skipped because the portal had `per_portal_cap` events queued here.
    pub at_cap: u64,
    pub wakeups: u64,
}

impl PortalCounters {
    /// Add `other`'s counts to these (portals summed under one label).
    pub(crate) fn add(&mut self, other: &PortalCounters) {
        self.polls += other.polls;
        self.pulled += other.pulled;
        self.errors += other.errors;
        self.locked_elsewhere += other.locked_elsewhere;
        self.at_cap += other.at_cap;
        self.wakeups += other.wakeups;
    }
}

/// Totals, and counters per portal. Per-portal label sets are bounded: at most
/// [`MAX_PORTAL_LABELS`] portals get their own; the rest are summed under `other`.
#[derive(Debug, Default)]
pub struct FleetStats {
    pub polls: AtomicU64,
    pub pulled: AtomicU64,
    pub errors: AtomicU64,
    pub portals: AtomicU64,
    per_portal: std::sync::Mutex<HashMap<String, PortalCounters>>,
}

/// The most per-portal label sets the metrics carry (one per installed portal up to this).
pub const MAX_PORTAL_LABELS: usize = 2000;

impl FleetStats {
    /// Count something for one portal (under `other` once [`MAX_PORTAL_LABELS`] portals have
    /// their own counters).
    pub fn bump(&self, member: &str, f: impl FnOnce(&mut PortalCounters)) {
        let mut m = self.per_portal.lock().unwrap_or_else(|p| p.into_inner());
        let key = if m.contains_key(member) || m.len() < MAX_PORTAL_LABELS {
            member.to_string()
        } else {
            "other".to_string()
        };
        f(m.entry(key).or_default());
    }

    /// One portal's counters.
    pub fn portal(&self, member: &str) -> Option<PortalCounters> {
        self.per_portal
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(member)
            .cloned()
    }

    /// Every portal's counters (those past the label bound summed under `other`).
    pub fn portal_counters(&self) -> Vec<(String, PortalCounters)> {
        self.per_portal
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .iter()
            .map(|(m, c)| (m.clone(), c.clone()))
            .collect()
    }

    /// Prometheus text: totals and `b24_portal_*{member_id="…"}` series (see
    /// [`mod@crate::worker::metrics`] for the bound on their number).
    pub fn prometheus(&self) -> String {
        crate::worker::metrics::fleet_metrics(self)
    }
}

struct Portal {
    inst: Installation,
    client: Option<b24::Client>,
    recovered: bool,
    next_at: Instant,
    backoff: Duration,
    wake_seen: f64,
    /// Woken by its ONOFFLINEEVENT and not pulled since: goes before portals that are only
    /// due by their back-off (a wake-up means an event is waiting on the portal).
    woken: bool,
    busy: bool,
}

enum Outcome {
    Pulled(usize),
    Locked,
    /// Another host polled it while this one waited for the lock and found nothing: not due
    /// again for this long.
    NotDue(Duration),
    Failed,
}

/// Pull every installed portal's offline events into `store` until `stop`.
pub async fn run(
    reg: Installations,
    store: Arc<Store>,
    cfg: FleetConfig,
    clients: ClientFactory,
    stats: Arc<FleetStats>,
    stop: CancellationToken,
) -> Result<()> {
    let mut portals: HashMap<String, Portal> = HashMap::new();
    let mut rounds = tokio::task::JoinSet::new();
    let mut last_scan: Option<Instant> = None;
    let mut depths: HashMap<String, i64> = HashMap::new();
    tracing::info!(
        pull_concurrency = cfg.concurrency,
        per_portal_cap = cfg.per_portal_cap,
        poll_min = ?cfg.poll_min,
        poll_max = ?cfg.poll_max,
        "pulling every installed portal"
    );
    loop {
        if stop.is_cancelled() {
            break;
        }
        let now = Instant::now();
        if last_scan.is_none_or(|t| now.duration_since(t) >= cfg.rescan) {
            let first = last_scan.is_none();
            last_scan = Some(now);
            // A failed read (the database away, no connection free) is logged and tried again
            // at the next rescan; the fleet keeps pulling the portals it knows meanwhile.
            let scanned = match rescan(&reg, &mut portals, &stats, now, first).await {
                Ok(()) => reg.queue_depths().await,
                Err(e) => Err(e),
            };
            match scanned {
                Ok(d) => depths = d,
                Err(e) => {
                    stats.errors.fetch_add(1, Relaxed);
                    tracing::warn!(error = %e, "reading the installed portals");
                }
            }
        }
        // Due portals: woken ones first, then the longest-waiting.
        let mut due: Vec<(bool, Instant, String)> = portals
            .iter()
            .filter(|(_, p)| !p.busy && p.next_at <= now)
            .map(|(m, p)| (!p.woken, p.next_at, m.clone()))
            .collect();
        due.sort();
        for (_, _, member) in due {
            if rounds.len() >= cfg.concurrency.max(1) {
                break;
            }
            let Some(p) = portals.get_mut(&member) else {
                continue;
            };
            let depth = depths.get(&member).copied().unwrap_or(0);
            if depth >= cfg.per_portal_cap {
                stats.bump(&member, |c| c.at_cap += 1);
                p.next_at = now + cfg.poll_min;
                continue;
            }
            let client = match &p.client {
                Some(c) => c.clone(),
                None => match clients(p.inst.clone()).await {
                    Ok(c) => {
                        p.client = Some(c.clone());
                        c
                    }
                    Err(e) => {
                        tracing::warn!(member_id = %member, error = %e, "no client for portal");
                        stats.bump(&member, |c| c.errors += 1);
                        p.next_at = now + cfg.poll_max;
                        continue;
                    }
                },
            };
            p.busy = true;
            let recover = !p.recovered;
            let room = (cfg.per_portal_cap - depth).max(1) as usize;
            let batches = room.div_ceil(cfg.batch.max(1) as usize).max(1);
            let (reg, store, batch) = (reg.clone(), store.clone(), cfg.batch.max(1));
            let member2 = member.clone();
            let idle = idle_backoff(p.backoff, &cfg);
            let backoff_poll = !p.woken;
            rounds.spawn(async move {
                let out = round(
                    &reg,
                    &store,
                    &client,
                    &member2,
                    recover,
                    backoff_poll,
                    batch,
                    batches,
                    (idle, idle),
                )
                .await;
                (member2, recover, out)
            });
        }
        let tick = tokio::time::sleep(cfg.poll_min.min(Duration::from_millis(100)));
        tokio::select! {
            _ = stop.cancelled() => break,
            Some(done) = rounds.join_next(), if !rounds.is_empty() => {
                if let Ok((member, recovered, out)) = done {
                    settle(&mut portals, &mut depths, &stats, &cfg, &member, recovered, out);
                }
            }
            _ = tick => {}
        }
    }
    // Let rounds in flight finish their commit-then-clear; nothing new starts.
    tracing::info!(
        in_flight = rounds.len(),
        "stopping the pulls: letting rounds in flight finish"
    );
    while let Some(done) = rounds.join_next().await {
        if let Ok((member, recovered, out)) = done {
            settle(
                &mut portals,
                &mut depths,
                &stats,
                &cfg,
                &member,
                recovered,
                out,
            );
        }
    }
    tracing::info!(
        polls = stats.polls.load(Relaxed),
        pulled = stats.pulled.load(Relaxed),
        errors = stats.errors.load(Relaxed),
        "stopped pulling"
    );
    Ok(())
}

async fn rescan(
    reg: &Installations,
    portals: &mut HashMap<String, Portal>,
    stats: &FleetStats,
    now: Instant,
    first: bool,
) -> Result<()> {
    let installed: Vec<Installation> = reg.installed_schedule().await?;
    let keep: std::collections::HashSet<&str> =
        installed.iter().map(|i| i.member_id.as_str()).collect();
    // Uninstalled or removed: its work stops here (a round in flight finishes its commit).
    portals.retain(|m, p| {
        let kept = keep.contains(m.as_str());
        if !kept {
            tracing::info!(member_id = %m, domain = %p.inst.domain, "portal no longer installed: not pulled any more");
        }
        kept
    });
    for inst in installed {
        let member = inst.member_id.clone();
        let wake = inst.wake_at;
        if !portals.contains_key(&member) {
            // Each new portal at info once the fleet runs; the ones found at start are one
            // line (below), each of them at debug.
            if first {
                tracing::debug!(member_id = %member, domain = %inst.domain, "serving portal");
            } else {
                tracing::info!(member_id = %member, domain = %inst.domain, "portal installed: now pulled");
            }
        }
        let p = portals.entry(member.clone()).or_insert_with(|| Portal {
            inst: inst.clone(),
            client: None,
            recovered: false,
            next_at: now,
            backoff: Duration::ZERO,
            wake_seen: wake,
            woken: false,
            busy: false,
        });
        if wake > p.wake_seen {
            p.wake_seen = wake;
            p.woken = true;
            p.next_at = now;
            p.backoff = Duration::ZERO;
            stats.bump(&member, |c| c.wakeups += 1);
        } else if inst.pull_after > inst.wake_at {
            // Another host (or this one) polled it and found nothing: wait as it decided.
            let wait = inst.pull_after - crate::now();
            if wait > 0.0 && !p.busy {
                p.next_at = p
                    .next_at
                    .max(now + Duration::from_secs_f64(wait.min(86_400.0)));
            }
            if inst.idle_backoff.is_finite() && inst.idle_backoff > 0.0 {
                p.backoff = p
                    .backoff
                    .max(Duration::from_secs_f64(inst.idle_backoff.min(86_400.0)));
            }
        }
        if p.inst.domain != inst.domain {
            p.client = None;
        }
        p.inst = inst;
    }
    if first {
        tracing::info!(portals = portals.len(), "serving installed portals");
    }
    stats.portals.store(portals.len() as u64, Relaxed);
    Ok(())
}

#[allow(clippy::too_many_arguments)]
async fn round(
    reg: &Installations,
    store: &Store,
    client: &b24::Client,
    member: &str,
    recover: bool,
    backoff_poll: bool,
    batch: u32,
    batches: usize,
    idle_next: (Duration, Duration),
) -> Outcome {
    let lock = match reg.try_lock_pull(member).await {
        Ok(Some(l)) => l,
        Ok(None) => return Outcome::Locked,
        Err(e) => {
            tracing::warn!(member_id = %member, error = %e, "pull lock");
            return Outcome::Failed;
        }
    };
    // Every host reads the same shared schedule, so they all come to an idle portal at once:
    // one takes the lock and the others retry a moment later, sooner than their next re-read
    // would show the first one's finding. Checked under the lock, that finding holds for
    // every host (one poll per back-off period in all); a wake-up since then still pulls.
    if backoff_poll
        && !recover
        && let Ok(Some(i)) = reg.find(member).await
    {
        let wait = i.pull_after - crate::now();
        if i.pull_after > i.wake_at && wait > 0.0 {
            lock.release().await;
            return Outcome::NotDue(Duration::from_secs_f64(wait.min(86_400.0)));
        }
    }
    let mut n = 0;
    let mut ok = true;
    if recover {
        match pull::recover_portal(client, store, member).await {
            Ok(p) => n += p.new,
            Err(e) => {
                tracing::warn!(member_id = %member, error = %e, "offline recovery");
                ok = false;
            }
        }
    }
    if ok {
        match pull::pull_portal(client, store, batch, batches, Some(member)).await {
            Ok(p) => n += p.fetched,
            Err(e) => {
                tracing::warn!(member_id = %member, error = %e, "offline pull");
                ok = false;
            }
        }
    }
    if ok && n > 0 {
        // It had events: the shared back-off starts over for every host.
        if let Err(e) = reg.schedule_pull(member, 0.0, 0.0).await {
            tracing::warn!(member_id = %member, error = %e, "sharing the pull schedule");
        }
    }
    if ok && n == 0 {
        // Nothing there: every host waits the (doubled) back-off before polling it again,
        // unless its ONOFFLINEEVENT wakes it first.
        let (wait, backoff) = idle_next;
        if let Err(e) = reg
            .schedule_pull(member, wait.as_secs_f64(), backoff.as_secs_f64())
            .await
        {
            tracing::warn!(member_id = %member, error = %e, "sharing the pull schedule");
        }
    }
    lock.release().await;
    if ok {
        Outcome::Pulled(n)
    } else {
        Outcome::Failed
    }
}

/// The back-off after an empty poll: `poll_min`, then doubling up to `poll_max`.
fn idle_backoff(current: Duration, cfg: &FleetConfig) -> Duration {
    if current.is_zero() {
        cfg.poll_min
    } else {
        (current * 2).min(cfg.poll_max)
    }
}

fn settle(
    portals: &mut HashMap<String, Portal>,
    depths: &mut HashMap<String, i64>,
    stats: &FleetStats,
    cfg: &FleetConfig,
    member: &str,
    recovered: bool,
    out: Outcome,
) {
    let now = Instant::now();
    let Some(p) = portals.get_mut(member) else {
        return;
    };
    p.busy = false;
    let backoff = p.backoff;
    match out {
        Outcome::Pulled(n) => {
            // A round that found events has likely left more behind (a flood is pulled a few
            // batches at a time): the portal keeps a woken portal's place in the order rather
            // than queueing behind every woken one, which starved a flood at 1,000 portals.
            p.woken = n > 0;
            if recovered {
                p.recovered = true;
            }
            stats.polls.fetch_add(1, Relaxed);
            stats.pulled.fetch_add(n as u64, Relaxed);
            stats.bump(member, |c| {
                c.polls += 1;
                c.pulled += n as u64;
            });
            *depths.entry(member.to_string()).or_default() += n as i64;
            p.backoff = if n > 0 {
                Duration::ZERO
            } else {
                idle_backoff(p.backoff, cfg)
            };
            p.next_at = now
                + p.backoff
                    .max(if n > 0 { cfg.poll_min } else { Duration::ZERO });
        }
        Outcome::Locked => {
            stats.bump(member, |c| c.locked_elsewhere += 1);
            p.next_at = now + cfg.poll_min;
        }
        Outcome::NotDue(wait) => {
            // Counted with the lock races: another host took this poll.
            stats.bump(member, |c| c.locked_elsewhere += 1);
            p.next_at = now + wait;
        }
        Outcome::Failed => {
            stats.errors.fetch_add(1, Relaxed);
            stats.bump(member, |c| c.errors += 1);
            p.backoff = (p.backoff * 2).clamp(cfg.poll_min, cfg.poll_max);
            p.next_at = now + p.backoff;
        }
    }
    if p.backoff != backoff {
        tracing::debug!(member_id = %member, backoff = ?p.backoff, "portal poll back-off changed");
    }
}
