//! A single-portal worker's view of its portal's wake-ups in the installations registry.
//!
//! The receiver records an installed portal's `ONOFFLINEEVENT` as the row's `wake_at` and no
//! longer queues it (a queued notification cost every worker a claim and a completion per
//! offline event). A `b24 worker` that pulls one installed portal therefore reads that row:
//! when `wake_at` moved on since it last looked, the next pull is due at once. It looks at
//! most every [`CHECK_EVERY`] — one indexed read — and only while it pulls.

use std::time::Duration;

use tokio::time::Instant;

use crate::installs::Installations;

/// The longest a recorded wake-up waits to be seen (the old queued notification was seen at
/// the next claim, a few hundred milliseconds at most on SQLite).
pub const CHECK_EVERY: Duration = Duration::from_millis(250);

/// The registry row a single-portal worker watches.
#[derive(Clone)]
pub struct WakeWatch {
    registry: Installations,
    /// The portal's member id, once known.
    member_id: Option<String>,
    /// The portal's address, to find its row by when the member id is not known yet.
    domain: Option<String>,
    seen: Option<f64>,
    last_check: Option<Instant>,
    last_find: Option<Instant>,
}

/// How often a worker whose portal has no installed row yet looks for one (the receiver may
/// record the install after the worker started).
pub const FIND_EVERY: Duration = Duration::from_secs(5);

impl WakeWatch {
    /// Watch `member_id`'s row; a wake-up recorded before the first look does not count (the
    /// worker's first pull is due at start anyway).
    pub fn new(registry: Installations, member_id: impl Into<String>) -> WakeWatch {
        WakeWatch {
            registry,
            member_id: Some(member_id.into()),
            domain: None,
            seen: None,
            last_check: None,
            last_find: None,
        }
    }

    /// Watch the installed row of the portal at `domain`, found now or later (every
    /// `FIND_EVERY`, 5 s, until it exists).
    pub fn by_domain(registry: Installations, domain: impl Into<String>) -> WakeWatch {
        WakeWatch {
            member_id: None,
            domain: Some(domain.into()),
            ..WakeWatch::new(registry, String::new())
        }
    }

    /// The member id of the watched portal, once its row was found.
    pub fn member_id(&self) -> Option<&str> {
        self.member_id.as_deref()
    }

    /// `true` when the portal announced offline events since the last look. A failed read
    /// counts as no wake-up: the pull schedule still polls the portal on its own.
    pub async fn woken(&mut self) -> bool {
        if self.member_id.is_none() && !self.find().await {
            return false;
        }
        let Some(member) = self.member_id.clone() else {
            return false;
        };
        if self.last_check.is_some_and(|t| t.elapsed() < CHECK_EVERY) {
            return false;
        }
        self.last_check = Some(Instant::now());
        let at = match self.registry.woken_at(&member).await {
            Ok(at) => at,
            Err(e) => {
                tracing::debug!(member_id = %member, error = %e, "reading the portal's wake-up");
                return false;
            }
        };
        let Some(at) = at else {
            return false;
        };
        let woken = self.seen.is_some_and(|s| at > s);
        self.seen = Some(self.seen.map_or(at, |s| s.max(at)));
        woken
    }

    /// Look for the installed row of `domain` (at most every [`FIND_EVERY`]).
    async fn find(&mut self) -> bool {
        let Some(domain) = self.domain.clone() else {
            return false;
        };
        if self.last_find.is_some_and(|t| t.elapsed() < FIND_EVERY) {
            return false;
        }
        self.last_find = Some(Instant::now());
        match self.registry.find(&domain).await {
            Ok(Some(i)) if i.is_installed() => {
                tracing::debug!(member_id = %i.member_id, "watching the portal's wake-ups");
                self.member_id = Some(i.member_id);
                true
            }
            Ok(_) => false,
            Err(e) => {
                tracing::debug!(error = %e, "looking for the portal's installation");
                false
            }
        }
    }
}
