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
    member_id: String,
    seen: Option<f64>,
    last_check: Option<Instant>,
}

impl WakeWatch {
    /// Watch `member_id`'s row; a wake-up recorded before the first look does not count (the
    /// worker's first pull is due at start anyway).
    pub fn new(registry: Installations, member_id: impl Into<String>) -> WakeWatch {
        WakeWatch {
            registry,
            member_id: member_id.into(),
            seen: None,
            last_check: None,
        }
    }

    pub fn member_id(&self) -> &str {
        &self.member_id
    }

    /// `true` when the portal announced offline events since the last look. A failed read
    /// counts as no wake-up: the pull schedule still polls the portal on its own.
    pub async fn woken(&mut self) -> bool {
        if self.last_check.is_some_and(|t| t.elapsed() < CHECK_EVERY) {
            return false;
        }
        self.last_check = Some(Instant::now());
        let at = match self.registry.woken_at(&self.member_id).await {
            Ok(at) => at,
            Err(e) => {
                tracing::debug!(member_id = %self.member_id, error = %e, "reading the portal's wake-up");
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
}
