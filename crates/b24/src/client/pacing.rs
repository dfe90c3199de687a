//! The client's side of operating-time pacing (see [`crate::limiter::operating`]): waiting
//! before a call or a batch until its methods fit their budget, reading every command's
//! `result_time` in a batch answer, and telling the caller what it is waiting for.

use std::collections::HashMap;
use std::sync::Mutex;
use std::sync::atomic::Ordering::Relaxed;
use std::time::Duration;

use secrecy::ExposeSecret;
use serde_json::{Map, Value, json};
use sha2::Digest;

use crate::config::Auth;
use crate::envelope::{Time, parse_time};
use crate::error::ApiError;
use crate::limiter::Clock;
use crate::limiter::operating::{Observation, Reservation};
use crate::{CallOptions, Client, Error, Response};

/// Something the client is waiting for right now (shown on progress bars).
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
#[non_exhaustive]
pub struct Waiting {
    /// The method held back.
    pub method: String,
    /// Seconds left to wait.
    pub secs_left: f64,
    /// True when the portal blocked the method (`OPERATION_TIME_LIMIT`); false when the
    /// client is pacing it to stay under its budget.
    pub blocked: bool,
}

/// The waits in progress, by method.
#[derive(Default)]
pub(crate) struct Waits {
    by_method: Mutex<HashMap<String, (tokio::time::Instant, bool, u32)>>,
}

/// Removes its wait from the registry when the wait ends (or the future is dropped).
pub(crate) struct WaitGuard<'a> {
    waits: &'a Waits,
    method: String,
}

impl Drop for WaitGuard<'_> {
    fn drop(&mut self) {
        let mut m = self
            .waits
            .by_method
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        if let Some(e) = m.get_mut(&self.method) {
            e.2 = e.2.saturating_sub(1);
            if e.2 == 0 {
                m.remove(&self.method);
            }
        }
    }
}

impl Waits {
    fn enter(&self, method: &str, wait: Duration, blocked: bool) -> WaitGuard<'_> {
        let until = tokio::time::Instant::now() + wait;
        let mut m = self.by_method.lock().unwrap_or_else(|p| p.into_inner());
        let e = m.entry(method.to_string()).or_insert((until, blocked, 0));
        if until > e.0 {
            e.0 = until;
            e.1 = blocked;
        }
        e.2 += 1;
        WaitGuard {
            waits: self,
            method: method.to_string(),
        }
    }

    fn list(&self) -> Vec<Waiting> {
        let now = tokio::time::Instant::now();
        let m = self.by_method.lock().unwrap_or_else(|p| p.into_inner());
        let mut v: Vec<Waiting> = m
            .iter()
            .map(|(k, (until, blocked, _))| Waiting {
                method: k.clone(),
                secs_left: until.saturating_duration_since(now).as_secs_f64(),
                blocked: *blocked,
            })
            .collect();
        v.sort_by(|a, b| a.method.cmp(&b.method));
        v
    }
}

/// The credential's identity for the budget key: the portal counts per application or
/// webhook. A webhook is named by its user and a digest of its code, never the code itself.
pub(crate) fn credential_id(auth: &Auth) -> String {
    match auth {
        Auth::Webhook { user_id, code } => {
            let mut h = sha2::Sha256::new();
            h.update(code.expose_secret().as_bytes());
            format!("hook:{user_id}:{}", &hex::encode(h.finalize())[..16])
        }
        Auth::OAuth { client_id, .. } => format!("app:{client_id}"),
    }
}

/// Unix seconds as `HH:MM:SS UTC` (enough to say when a method is free again).
fn clock_text(unix: f64) -> String {
    let s = unix.max(0.0) as u64 % 86_400;
    format!("{:02}:{:02}:{:02} UTC", s / 3600, s / 60 % 60, s % 60)
}

/// A method's report in one `time` block: used seconds, seconds until the oldest basket
/// drops out (measured on the portal's clock, so clock skew does not matter), its own cost.
pub(crate) fn observation(t: &Time, fallback_finish: Option<f64>) -> (Observation, Option<i64>) {
    let finish = t
        .finish
        .or_else(|| t.start.zip(t.duration).map(|(s, d)| s + d))
        .or(fallback_finish);
    // `operating_reset_at` is whole seconds (rounded down, as the sandbox does and the
    // portal's integer suggests): the basket may live up to a second longer. Counting that
    // second errs on the safe side (a window believed shorter than it is would let usage
    // drop out of the ledger before it drops out on the portal).
    let reset_in = t
        .operating_reset_at
        .zip(finish)
        .map(|(r, f)| r as f64 + 1.0 - f);
    let cost = t.processing.or(t.duration);
    (
        Observation {
            used: t.operating,
            reset_in,
            costs: cost.into_iter().collect(),
        },
        t.operating_reset_at,
    )
}

/// The method of a `method?query` command.
pub(crate) fn command_method(text: &str) -> String {
    let m = text.split_once('?').map(|(m, _)| m).unwrap_or(text);
    m.trim().trim_end_matches(".json").to_ascii_lowercase()
}

/// A batch answer's per-command map (`result_time`, `result_error`): an object, `[]` when
/// empty, or an array when the keys were `0..n-1`.
fn entry<'a>(result: &'a Value, map: &str, key: &str) -> Option<&'a Value> {
    match result.get(map)? {
        Value::Object(o) => o.get(key),
        Value::Array(a) => key.parse::<usize>().ok().and_then(|i| a.get(i)),
        _ => None,
    }
}

impl Client {
    /// Wait until `n` commands of `method` fit its operating-time budget. With a `deadline`
    /// (one-shot calls), a wait beyond it is refused with `OPERATION_TIME_LIMIT` saying when
    /// the method is free; without one (long jobs) every wait is waited out.
    pub(crate) async fn pace(
        &self,
        method: &str,
        n: usize,
        deadline: Option<tokio::time::Instant>,
    ) -> Result<Option<Reservation>, Error> {
        let inner = &self.inner;
        loop {
            let r = inner.operating.reserve(method, n).await?;
            if r.wait <= 0.0 {
                return Ok(Some(r));
            }
            let wait = crate::retry::clamp_secs(r.wait);
            if let Some(d) = deadline
                && tokio::time::Instant::now() + wait > d
            {
                inner.operating.cancel(method, r).await;
                let free = crate::limiter::SystemClock.now() + wait.as_secs_f64();
                return Err(Error::Api(ApiError {
                    code: "OPERATION_TIME_LIMIT".into(),
                    description: format!(
                        "{method} {}; it is free again in {:.0} s (at {}), beyond this call's retry budget; the call was not sent",
                        if r.blocked {
                            "is blocked by the portal: its operating-time budget is used up"
                        } else {
                            "is near its operating-time budget"
                        },
                        wait.as_secs_f64().ceil(),
                        clock_text(free)
                    ),
                    http_status: 429,
                    method: method.into(),
                }));
            }
            tracing::info!(
                method,
                wait_secs = wait.as_secs_f64(),
                blocked = r.blocked,
                "waiting for the method's operating-time budget"
            );
            inner.counters.op_waits.fetch_add(1, Relaxed);
            inner
                .counters
                .op_wait_ms
                .fetch_add(wait.as_millis() as u64, Relaxed);
            {
                let _g = inner.waits.enter(method, wait, r.blocked);
                tokio::time::sleep(wait).await;
            }
            if !r.blocked {
                return Ok(Some(r));
            }
        }
    }

    /// Whether this client waits out operating-time blocks (see [`Client::patient`]).
    pub fn is_patient(&self) -> bool {
        self.patient
    }

    /// What the client is waiting for right now (operating-time pacing and blocks).
    pub fn waiting(&self) -> Vec<Waiting> {
        self.inner.waits.list()
    }

    /// How many commands of `method` one batch request should carry (at most `want`), so that
    /// no single request exceeds a share of the method's operating-time budget.
    pub async fn operating_room(&self, method: &str, want: usize) -> usize {
        self.inner.operating.room(method, want).await
    }

    /// The stored operating-time state of `method` for this client's credential.
    pub async fn operating_state(
        &self,
        method: &str,
    ) -> Result<Option<crate::limiter::operating::OpState>, Error> {
        self.inner.operating.state(method).await
    }

    /// Send one `batch` request, paced per method of its commands, and learn from every
    /// command's `result_time`. `patient`: wait out any pace or block (long jobs); otherwise
    /// the call's retry budget bounds the waits.
    pub(crate) async fn send_batch_paced(
        &self,
        cmd: Map<String, Value>,
        halt: bool,
        is_write: bool,
        patient: bool,
    ) -> Result<Response, Error> {
        let deadline =
            (!patient).then(|| tokio::time::Instant::now() + self.inner.config.retry.max_total);
        let mut methods: Vec<(String, usize)> = Vec::new();
        let mut key_method: Vec<(String, String)> = Vec::with_capacity(cmd.len());
        for (k, v) in &cmd {
            let m = command_method(v.as_str().unwrap_or(""));
            match methods.iter_mut().find(|(x, _)| *x == m) {
                Some((_, n)) => *n += 1,
                None => methods.push((m.clone(), 1)),
            }
            key_method.push((k.clone(), m));
        }
        let mut reservations: Vec<(String, Option<Reservation>)> = Vec::new();
        for (m, n) in &methods {
            match self.pace(m, *n, deadline).await {
                Ok(r) => reservations.push((m.clone(), r)),
                Err(e) => {
                    for (m, r) in reservations {
                        if let Some(r) = r {
                            self.inner.operating.cancel(&m, r).await;
                        }
                    }
                    return Err(e);
                }
            }
        }
        let params = json!({"halt": if halt { 1 } else { 0 }, "cmd": cmd});
        let opts = CallOptions {
            is_write: Some(is_write),
            ..Default::default()
        };
        let resp = self.run("batch", params, opts, false, patient).await?;
        self.observe_batch(&resp, &key_method, reservations).await;
        Ok(resp)
    }

    /// Learn from a batch answer: per method, the commands' costs and the last `operating`;
    /// an `OPERATION_TIME_LIMIT` in `result_error` marks the method blocked.
    async fn observe_batch(
        &self,
        resp: &Response,
        key_method: &[(String, String)],
        reservations: Vec<(String, Option<Reservation>)>,
    ) {
        let fallback = resp.time.as_ref().and_then(|t| t.finish);
        let mut per: HashMap<&str, (Observation, Option<i64>, bool)> = HashMap::new();
        for (k, m) in key_method {
            let e = per
                .entry(m.as_str())
                .or_insert_with(|| (Observation::default(), None, false));
            if let Some(err) = entry(&resp.result, "result_error", k) {
                let code = match err {
                    Value::Object(o) => o.get("error").and_then(Value::as_str).unwrap_or(""),
                    Value::String(s) => s.as_str(),
                    _ => "",
                };
                if code.eq_ignore_ascii_case("OPERATION_TIME_LIMIT") {
                    e.2 = true;
                }
                continue;
            }
            let Some(t) = entry(&resp.result, "result_time", k).and_then(parse_time) else {
                continue;
            };
            let (o, reset) = observation(&t, fallback);
            e.0.costs.extend(o.costs);
            // Operating grows through the batch: the largest report is the latest.
            if o.used.is_some() && o.used >= e.0.used {
                e.0.used = o.used;
                e.0.reset_in = o.reset_in;
                e.1 = reset;
            }
        }
        // Every report first (a block falls back on the window other methods showed), then
        // the blocks.
        let mut blocked_methods = Vec::new();
        for (m, r) in reservations {
            let Some((o, reset, blocked)) = per.remove(m.as_str()) else {
                continue;
            };
            self.inner.operating.observe(&m, r, o, reset).await;
            if blocked {
                blocked_methods.push(m);
            }
        }
        for m in blocked_methods {
            self.inner.counters.op_blocks.fetch_add(1, Relaxed);
            match self.inner.operating.blocked(&m).await {
                Ok(secs) => tracing::warn!(
                    method = m.as_str(),
                    free_in_secs = secs,
                    "the portal blocked a method inside a batch (OPERATION_TIME_LIMIT)"
                ),
                Err(e) => tracing::warn!(error = %e, "operating-time store: block not recorded"),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn batch_maps_in_every_shape() {
        let r = json!({"result_time": [{"operating": 1.0}], "result_error": {"b": {"error": "X"}}});
        assert!(entry(&r, "result_time", "0").is_some());
        assert!(entry(&r, "result_time", "a").is_none());
        assert!(entry(&r, "result_error", "b").is_some());
        assert!(entry(&json!({"result_time": []}), "result_time", "0").is_none());
        assert_eq!(
            command_method("CRM.Lead.List.json?start=50"),
            "crm.lead.list"
        );
    }

    #[test]
    fn reset_is_measured_on_the_portals_clock() {
        let t = Time {
            start: Some(5000.0),
            duration: Some(2.0),
            processing: Some(1.5),
            operating: Some(30.0),
            operating_reset_at: Some(5600),
            ..Default::default()
        };
        let (o, reset) = observation(&t, None);
        assert_eq!(o.reset_in, Some(599.0));
        assert_eq!(o.costs, vec![1.5]);
        assert_eq!(reset, Some(5600));
        assert_eq!(clock_text(3661.0), "01:01:01 UTC");
    }
}
