//! When the worker next asks the portal for offline events.
//!
//! Every `event.offline.get` costs a request from the portal's shared bucket (standard plan:
//! 50, refilled at 2 per second) and some of the method's operating time, for every
//! integration on the portal. So an idle worker backs off: after each empty answer the wait
//! doubles, from `min` up to `max`; an answer with events brings it back to `min`, and an
//! `ONOFFLINEEVENT` notification (the portal saying "new rows") makes the next pull due at
//! once. With the defaults (1 s, 30 s) an idle worker settles at one request per 30 s: 0.033
//! requests per second, 1.7% of the standard plan's refill.

use std::time::Duration;

use tokio::time::Instant;

#[derive(Debug, Clone)]
pub struct PollSchedule {
    min: Duration,
    max: Duration,
    /// The wait after the next empty answer.
    delay: Duration,
    /// The wait before the pull now scheduled (to log changes only).
    wait: Duration,
    next: Instant,
}

impl PollSchedule {
    /// Due at once (the first pull); `max` below `min` is raised to `min`.
    pub fn new(min: Duration, max: Duration) -> PollSchedule {
        PollSchedule {
            min,
            max: max.max(min),
            delay: min,
            wait: min,
            next: Instant::now(),
        }
    }

    pub fn due(&self) -> bool {
        Instant::now() >= self.next
    }

    /// Time left until the next pull is due (zero when it is due).
    pub fn until_due(&self) -> Duration {
        self.next.saturating_duration_since(Instant::now())
    }

    /// A pull finished: with events, the next one comes after `min` and the backoff restarts;
    /// empty, it comes after the current delay, which then doubles (up to `max`).
    /// Back-off changes are logged at debug level (an idle worker's wait settling at `max`
    /// is one line, not one per poll).
    pub fn pulled(&mut self, found: bool) {
        let wait = if found {
            self.delay = self.min;
            self.min
        } else {
            let wait = self.delay;
            self.delay = (self.delay * 2).min(self.max);
            wait
        };
        if wait != self.wait {
            tracing::debug!(
                next_poll_in = ?wait,
                found,
                "offline poll back-off changed"
            );
            self.wait = wait;
        }
        self.next = Instant::now() + wait;
    }

    /// The portal said new rows are queued: pull now, and fast afterwards.
    pub fn wake(&mut self) {
        tracing::debug!("woken by ONOFFLINEEVENT: polling now");
        self.delay = self.min;
        self.next = Instant::now();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn backs_off_to_max_and_comes_back_on_events_or_a_wake_up() {
        let mut p = PollSchedule::new(Duration::from_secs(1), Duration::from_secs(30));
        assert!(p.due());
        let mut gaps = Vec::new();
        for _ in 0..8 {
            p.pulled(false);
            gaps.push(p.until_due().as_secs());
            tokio::time::advance(p.until_due()).await;
            assert!(p.due());
        }
        assert_eq!(gaps, [1, 2, 4, 8, 16, 30, 30, 30]);
        p.pulled(true);
        assert_eq!(p.until_due(), Duration::from_secs(1));
        p.pulled(false);
        p.pulled(false);
        assert_eq!(
            p.until_due(),
            Duration::from_secs(2),
            "the backoff restarted"
        );
        p.wake();
        assert!(p.due());
        p.pulled(false);
        assert_eq!(p.until_due(), Duration::from_secs(1));
    }
}
