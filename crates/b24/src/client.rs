//! [`Client`]: one call, end to end (limiter → auth → HTTP → envelope → retry).
//!
//! CONTRACT (other crates rely on these signatures; extend, do not break):
//! - `Client::new(Config) -> Result<Client, Error>` (async);
//! - `Client::call(&self, method, params: Value) -> Result<Response, Error>`: REST v2;
//! - `Client::call_with(&self, method, params, CallOptions) -> Result<Response, Error>`;
//! - `Client::call_v3(&self, method, params, CallOptions) -> Result<Response, Error>`: REST 3.0;
//! - `Client::stats(&self) -> ClientStats`; `Client::portal(&self) -> &str`.
//!
//! `Client` is cheap to clone (an `Arc` inside) and safe to share across tasks.
//!
//! The retry rules are the heart of it. Before sending, nothing has happened, so connection
//! failures are always retried. `QUERY_LIMIT_EXCEEDED` is refused before execution, so it is
//! retried for writes too (and fills the limiter's model). Once a request has been sent, a
//! timeout, a reset or a 5xx without a Bitrix24 error body means the portal may have executed
//! it: a read is retried, a write is not — it ends in [`Error::OutcomeUnknown`].

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::time::Duration;

use secrecy::ExposeSecret;
use serde_json::Value;

use crate::auth::{OAuthSession, TokenPair, now_unix};
use crate::config::Auth;
use crate::error::BoxError;
use crate::limiter::operating::Reservation;
use crate::limiter::{Limiter, OperatingBudget, SystemClock};
use crate::retry::Backoff;
use crate::{Config, Error, Response};

mod attempt;
mod build;
mod pacing;

pub use build::token_store;

pub use pacing::Waiting;

/// Per-call options: start from [`CallOptions::default`] or [`CallOptions::write`].
#[derive(Debug, Clone, Default)]
#[non_exhaustive]
pub struct CallOptions {
    /// True when resending the call after an ambiguous failure (timeout, reset, body-less 5xx)
    /// could duplicate an effect. Such calls are never resent; they end in
    /// [`Error::OutcomeUnknown`]. `None` = decide from the method name (see [`is_read_name`]);
    /// the CLI passes the method catalog's verdict.
    pub is_write: Option<bool>,
    /// Idempotency key; sent as `Idempotency-Key` on REST v3 and reported in errors.
    pub idempotency_key: Option<String>,
    /// Overrides the per-request timeout.
    pub timeout: Option<Duration>,
}

impl CallOptions {
    /// Options with the caller's verdict on whether the call is a write (never resent after
    /// an ambiguous failure) or a read.
    pub fn write(is_write: bool) -> CallOptions {
        CallOptions {
            is_write: Some(is_write),
            ..CallOptions::default()
        }
    }

    /// With an idempotency key (sent on REST 3.0 writes, reported in errors).
    pub fn with_idempotency_key(mut self, key: impl Into<String>) -> CallOptions {
        self.idempotency_key = Some(key.into());
        self
    }

    /// With a per-request timeout instead of the configured one.
    pub fn with_timeout(mut self, timeout: Duration) -> CallOptions {
        self.timeout = Some(timeout);
        self
    }
}

/// Counters since the client was built.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize)]
#[non_exhaustive]
pub struct ClientStats {
    /// HTTP requests sent (each retry and each redirect hop counts).
    pub requests: u64,
    /// Retries after a failure or a refusal.
    pub retries: u64,
    /// Answers with HTTP 503 (`QUERY_LIMIT_EXCEEDED`).
    pub status_503: u64,
    /// Answers with HTTP 429 (`OPERATION_TIME_LIMIT`).
    pub status_429: u64,
    /// OAuth refreshes this process performed.
    pub refreshes: u64,
    /// Times the rate limiter made a call wait.
    pub limiter_waits: u64,
    /// Milliseconds spent waiting for the rate limiter in total.
    pub limiter_wait_ms: u64,
    /// Times a method waited for its operating-time budget (pace or block).
    pub operating_waits: u64,
    /// Milliseconds spent waiting for operating-time budgets in total.
    pub operating_wait_ms: u64,
    /// `OPERATION_TIME_LIMIT` answers seen (whole calls and commands inside batches).
    pub operating_blocks: u64,
}

/// Whether a method name is clearly a read (used when the caller gives no verdict).
/// Unknown verbs count as writes: the safe side is not to resend.
pub fn is_read_name(method: &str) -> bool {
    let m = method.to_ascii_lowercase();
    // `event.offline.get` deletes what it returns unless `clear=0`: never a read.
    if m == "event.offline.get" {
        return false;
    }
    if matches!(
        m.as_str(),
        "server.time"
            | "scope"
            | "methods"
            | "method.get"
            | "profile"
            | "app.info"
            | "user.current"
            | "events"
            | "event.get"
            | "feature.get"
            | "access.name"
            | "user.access"
            | "event.offline.list"
    ) {
        return true;
    }
    let last = m.rsplit('.').next().unwrap_or("");
    matches!(
        last,
        "get" | "list" | "fields" | "current" | "search" | "count" | "getlist" | "tail" | "openapi"
    ) || last.starts_with("get")
        || last.starts_with("list")
}

#[derive(Default)]
struct Counters {
    requests: AtomicU64,
    retries: AtomicU64,
    s503: AtomicU64,
    s429: AtomicU64,
    waits: AtomicU64,
    wait_ms: AtomicU64,
    op_waits: AtomicU64,
    op_wait_ms: AtomicU64,
    op_blocks: AtomicU64,
}

/// A Bitrix24 REST client.
#[derive(Clone)]
pub struct Client {
    inner: Arc<Inner>,
    /// Wait out operating-time pacing and blocks however long they last (see
    /// [`Client::patient`]).
    patient: bool,
}

struct Inner {
    config: Config,
    http: reqwest::Client,
    limiter: Option<Limiter>,
    operating: OperatingBudget,
    waits: pacing::Waits,
    oauth: Option<OAuthSession>,
    counters: Counters,
}

#[allow(clippy::large_enum_variant)] // built once per attempt; boxing buys nothing
enum Attempt {
    Done(Response),
    /// Retry after this delay (None = use backoff).
    Retry {
        reason: String,
        delay: Option<Duration>,
        /// The transport or decoding error behind it, kept for the final error's `source`.
        source: Option<BoxError>,
    },
    Refresh(u64),
    /// The portal blocked the method (`OPERATION_TIME_LIMIT`); the budget knows until when.
    Blocked,
    Fail(Error),
}

impl Client {
    /// The same client (same limiter, budget, tokens and counters) for a long-running job: its
    /// calls wait out operating-time pacing and `OPERATION_TIME_LIMIT` blocks however long they
    /// last — the block lifts when the method's oldest basket drops out — instead of giving up
    /// within the retry budget. A blocked call did not run, so waiting never duplicates a write.
    /// Used by the worker; exports and many-chunk batches are patient on their own.
    pub fn patient(&self) -> Client {
        Client {
            inner: self.inner.clone(),
            patient: true,
        }
    }

    /// The portal's host (and port): the rate limiter's key.
    pub fn portal(&self) -> &str {
        &self.inner.config.portal
    }

    /// The configuration the client was built from.
    pub fn config(&self) -> &Config {
        &self.inner.config
    }

    /// The OAuth session, when the client uses OAuth.
    pub fn oauth(&self) -> Option<&OAuthSession> {
        self.inner.oauth.as_ref()
    }

    /// The limiter's modelled bucket level for this portal (requests), if limiting is on.
    pub async fn limiter_level(&self) -> Option<f64> {
        match &self.inner.limiter {
            Some(l) => l.level(&self.inner.config.portal).await.ok(),
            None => None,
        }
    }

    /// Operating-time seen per method: (method, seconds, reset_at).
    pub fn operating_snapshot(&self) -> Vec<(String, f64, Option<i64>)> {
        self.inner.operating.snapshot()
    }

    /// Call a REST v2 method; reads and writes are told apart by the method's name.
    pub async fn call(&self, method: &str, params: Value) -> Result<Response, Error> {
        self.call_with(method, params, CallOptions::default()).await
    }

    /// Call a REST v2 method with per-call options (write verdict, idempotency key, timeout).
    pub async fn call_with(
        &self,
        method: &str,
        params: Value,
        opts: CallOptions,
    ) -> Result<Response, Error> {
        self.run(method, params, opts, false, self.patient).await
    }

    /// Call a REST 3.0 method (`/rest/api/…`); an idempotency key is sent for writes.
    pub async fn call_v3(
        &self,
        method: &str,
        params: Value,
        opts: CallOptions,
    ) -> Result<Response, Error> {
        self.run(method, params, opts, true, self.patient).await
    }

    /// Counters since the client was built.
    pub fn stats(&self) -> ClientStats {
        let c = &self.inner.counters;
        ClientStats {
            requests: c.requests.load(Relaxed),
            retries: c.retries.load(Relaxed),
            status_503: c.s503.load(Relaxed),
            status_429: c.s429.load(Relaxed),
            refreshes: self
                .inner
                .oauth
                .as_ref()
                .map(|o| o.refresh_count())
                .unwrap_or(0),
            limiter_waits: c.waits.load(Relaxed),
            limiter_wait_ms: c.wait_ms.load(Relaxed),
            operating_waits: c.op_waits.load(Relaxed),
            operating_wait_ms: c.op_wait_ms.load(Relaxed),
            operating_blocks: c.op_blocks.load(Relaxed),
        }
    }

    /// One call with its retries. `patient` (long jobs: export, many-chunk batches) waits out
    /// operating-time pacing and blocks however long they last; otherwise the retry budget
    /// bounds every wait and a longer one is reported with the time the method is free.
    async fn run(
        &self,
        method: &str,
        params: Value,
        opts: CallOptions,
        v3: bool,
        patient: bool,
    ) -> Result<Response, Error> {
        let method = method.trim();
        if method.is_empty()
            || !method
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-'))
        {
            return Err(Error::Config(format!(
                "`{method}` is not a valid method name"
            )));
        }
        if !params.is_object() && !params.is_array() && !params.is_null() {
            return Err(Error::Config(
                "params must be a JSON object (or array for positional methods)".into(),
            ));
        }
        let inner = &self.inner;
        let is_write = opts.is_write.unwrap_or_else(|| !is_read_name(method));
        let policy = &inner.config.retry;
        let mut backoff = Backoff::new(policy);
        let started = tokio::time::Instant::now();
        let base = inner.config.base_url.clone();
        let mut attempt: u32 = 0;
        let mut refreshes: u32 = 0;
        let deadline = (!patient).then(|| started + policy.max_total);
        let mut reservation: Option<Reservation> = None;
        let mut paced = false;
        let mut blocks: u32 = 0;
        loop {
            attempt += 1;
            // Operating time: once per call, and again after the portal blocked the method.
            if !paced {
                reservation = self.pace(method, 1, deadline).await?;
                paced = true;
            }
            if let Some(l) = &inner.limiter {
                let waited = l.reserve_only(&inner.config.portal).await?;
                // Never sleep past the call's budget: a queue that long is reported instead.
                if started.elapsed() + waited > policy.max_total {
                    return Err(Error::Transient {
                        method: method.into(),
                        reason: format!(
                            "the rate limiter's queue is {:.1} s long, beyond this call's retry budget",
                            waited.as_secs_f64()
                        ),
                        attempts: attempt - 1,
                        source: None,
                    });
                }
                if !waited.is_zero() {
                    tokio::time::sleep(waited).await;
                    inner.counters.waits.fetch_add(1, Relaxed);
                    inner
                        .counters
                        .wait_ms
                        .fetch_add(waited.as_millis() as u64, Relaxed);
                }
            }
            let outcome = self
                .attempt(&base, method, &params, &opts, v3, is_write, reservation)
                .await;
            let (reason, delay, source) = match outcome {
                Attempt::Done(r) => return Ok(r),
                Attempt::Blocked => {
                    // Waited out by `pace` on the next turn (or refused there, saying when
                    // the method is free, if that is beyond a one-shot call's budget).
                    blocks += 1;
                    if blocks > MAX_BLOCKS_PER_CALL {
                        return Err(Error::Transient {
                            method: method.into(),
                            reason: format!(
                                "OPERATION_TIME_LIMIT: still blocked after {MAX_BLOCKS_PER_CALL} waits for the budget to reset"
                            ),
                            attempts: attempt,
                            source: None,
                        });
                    }
                    attempt -= 1;
                    paced = false;
                    continue;
                }
                Attempt::Fail(e) => return Err(e),
                Attempt::Refresh(seen) => {
                    let oauth = inner
                        .oauth
                        .as_ref()
                        .ok_or_else(|| Error::auth("expired token"))?;
                    // A portal that refuses every fresh token would otherwise be refreshed
                    // for ever (and burn refresh tokens): give up after a couple of tries.
                    refreshes += 1;
                    if refreshes > MAX_REFRESHES_PER_CALL {
                        return Err(Error::auth(format!(
                            "{method}: the portal still refuses the access token after \
                             {MAX_REFRESHES_PER_CALL} successful refreshes; check the application's \
                             installation and scopes, or run `b24 auth login`"
                        )));
                    }
                    oauth.refresh(seen).await?;
                    attempt -= 1; // a refresh is not a failed attempt
                    continue;
                }
                Attempt::Retry {
                    reason,
                    delay,
                    source,
                } => (reason, delay, source),
            };
            let delay = delay.unwrap_or_else(|| backoff.delay(attempt));
            if attempt >= policy.max_attempts || started.elapsed() + delay > policy.max_total {
                return Err(Error::Transient {
                    method: method.into(),
                    reason: format!("{reason}; gave up within the retry budget"),
                    attempts: attempt,
                    source,
                });
            }
            inner.counters.retries.fetch_add(1, Relaxed);
            tracing::warn!(method, attempt, delay_ms = delay.as_millis() as u64, %reason, "retrying");
            tokio::time::sleep(delay).await;
        }
    }

    /// Exchange an authorization code for a token pair at the configured token endpoint and
    /// store it (used by `b24 auth login`).
    pub async fn exchange_code(&self, code: &str) -> Result<TokenPair, Error> {
        let Auth::OAuth {
            client_id,
            client_secret,
            token_url,
            ..
        } = &self.inner.config.auth
        else {
            return Err(Error::Config(
                "`auth login` needs OAuth configuration (B24_CLIENT_ID, B24_CLIENT_SECRET)".into(),
            ));
        };
        let resp = self
            .inner
            .http
            .get(token_url)
            .query(&[
                ("grant_type", "authorization_code"),
                ("client_id", client_id.as_str()),
                ("client_secret", client_secret.expose_secret()),
                ("code", code),
            ])
            .send()
            .await
            .map_err(|e| crate::auth::transport("code exchange failed", e))?;
        let status = resp.status().as_u16();
        let body = resp
            .bytes()
            .await
            .map_err(|e| crate::auth::transport("code exchange failed", e))?;
        let mut pair = TokenPair::from_token_response(status, &body)?;
        pair.obtained_at = now_unix();
        if let Some(o) = &self.inner.oauth {
            o.adopt(pair.clone()).await?;
        }
        Ok(pair)
    }
}

/// Token refreshes one call may trigger before it reports an authentication error.
const MAX_REFRESHES_PER_CALL: u32 = 2;

/// `OPERATION_TIME_LIMIT` answers one call waits out before it gives up (each wait lasts until
/// the budget's next reset, so this is hours for a patient call, never a busy loop).
const MAX_BLOCKS_PER_CALL: u32 = 30;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn read_names() {
        for m in [
            "crm.lead.list",
            "crm.deal.get",
            "crm.lead.fields",
            "user.current",
            "server.time",
            "tasks.task.getlist",
        ] {
            assert!(is_read_name(m), "{m}");
        }
        for m in [
            "crm.lead.add",
            "crm.lead.delete",
            "event.offline.get",
            "batch",
            "bizproc.workflow.kill",
        ] {
            assert!(!is_read_name(m), "{m}");
        }
    }
}
