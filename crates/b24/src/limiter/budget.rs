//! A client's view of the operating-time states: its portal and credential, the configured
//! limit, and the window shared by the portal's methods.

use std::collections::HashMap;
use std::sync::Mutex;

use super::operating;
use crate::Error;

/// Per-method operating-time budget (docs/protocol.md §7.3) of one client: the shared
/// [`operating`] states of its portal and credential, and the configured limit.
pub struct OperatingBudget {
    store: Box<dyn operating::OperatingStore>,
    prefix: String,
    limit: f64,
    /// Last report per method (method → operating seconds, reset-at Unix time), for
    /// `operating_snapshot` (metrics) without a store round trip.
    seen: Mutex<HashMap<String, (f64, Option<i64>)>>,
    /// The largest window any method has shown in this process (seconds).
    portal_window: Mutex<f64>,
}

impl OperatingBudget {
    /// A budget over `store` for `portal` and the credential `cred` (an identifier, never the
    /// secret), with the configured `limit` in seconds per window.
    pub fn new(
        store: Box<dyn operating::OperatingStore>,
        portal: &str,
        cred: &str,
        limit: f64,
    ) -> OperatingBudget {
        OperatingBudget {
            store,
            prefix: format!("{portal}|{cred}|"),
            limit,
            seen: Mutex::new(HashMap::new()),
            portal_window: Mutex::new(0.0),
        }
    }

    fn key(&self, method: &str) -> String {
        format!("{}{}", self.prefix, method.trim().to_ascii_lowercase())
    }

    /// Reserve `n` commands of `method`: how long to wait before sending (see
    /// [`operating::OpState::reserve`]).
    pub async fn reserve(&self, method: &str, n: usize) -> Result<operating::Reservation, Error> {
        let limit = self.limit;
        self.store
            .update(
                &self.key(method),
                Box::new(move |s, now| s.reserve(now, n, limit)),
            )
            .await
    }

    /// How many commands of `method` one request should carry, at most `want`.
    pub async fn room(&self, method: &str, want: usize) -> usize {
        match self.store.get(&self.key(method)).await {
            Ok(Some(s)) => s.room(self.limit, want),
            _ => want.max(1),
        }
    }

    /// Settle a reservation with an answer's report. A store failure is logged, not returned:
    /// the call itself succeeded and must be reported as such.
    pub async fn observe(
        &self,
        method: &str,
        r: Option<operating::Reservation>,
        o: operating::Observation,
        reset_at_unix: Option<i64>,
    ) {
        if let Some(w) = o
            .reset_in
            .filter(|w| w.is_finite() && *w > 0.0 && *w <= 86_400.0)
        {
            let mut pw = self.portal_window.lock().unwrap_or_else(|p| p.into_inner());
            *pw = pw.max(w);
        }
        if let Some(used) = o.used {
            self.seen
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .insert(method.to_ascii_lowercase(), (used, reset_at_unix));
        }
        let res = self
            .store
            .update(
                &self.key(method),
                Box::new(move |s, now| {
                    s.observe(now, r.as_ref(), &o);
                    operating::Reservation {
                        at: now,
                        secs: 0.0,
                        wait: 0.0,
                        blocked: false,
                    }
                }),
            )
            .await;
        if let Err(e) = res {
            tracing::warn!(method, error = %e, "operating-time store: observation lost");
        }
    }

    /// Give back a reservation that was not used (the call was refused before sending).
    pub async fn cancel(&self, method: &str, r: operating::Reservation) {
        if r.secs > 0.0 {
            self.observe(method, Some(r), operating::Observation::default(), None)
                .await;
        }
    }

    /// The portal blocked `method`: seconds until it should be free.
    pub async fn blocked(&self, method: &str) -> Result<f64, Error> {
        let limit = self.limit;
        let window = *self.portal_window.lock().unwrap_or_else(|p| p.into_inner());
        let r = self
            .store
            .update(
                &self.key(method),
                Box::new(move |s, now| {
                    let until = s.blocked(now, limit, window);
                    operating::Reservation {
                        at: until,
                        secs: 0.0,
                        wait: until - now,
                        blocked: true,
                    }
                }),
            )
            .await?;
        Ok(r.wait.max(0.0))
    }

    /// The stored state of `method` (diagnostics, tests).
    pub async fn state(&self, method: &str) -> Result<Option<operating::OpState>, Error> {
        self.store.get(&self.key(method)).await
    }

    /// Snapshot for diagnostics: method → (operating seconds, reset_at).
    pub fn snapshot(&self) -> Vec<(String, f64, Option<i64>)> {
        let m = self.seen.lock().unwrap_or_else(|p| p.into_inner());
        let mut v: Vec<_> = m.iter().map(|(k, (o, r))| (k.clone(), *o, *r)).collect();
        v.sort_by(|a, b| a.0.cmp(&b.0));
        v
    }
}
