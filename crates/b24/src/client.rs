//! [`Client`]: one call, end to end (limiter → auth → HTTP → envelope → retry).
//!
//! CONTRACT (other crates rely on these signatures; extend, do not break):
//! - `Client::new(Config) -> Result<Client, Error>` (async);
//! - `Client::call(&self, method, params: Value) -> Result<Response, Error>`: REST v2;
//! - `Client::call_with(&self, method, params, CallOptions) -> Result<Response, Error>`;
//! - `Client::call_v3(&self, method, params, CallOptions) -> Result<Response, Error>`: REST 3.0;
//! - `Client::stats(&self) -> ClientStats`; `Client::portal(&self) -> &str`.
//! `Client` is cheap to clone (an `Arc` inside) and safe to share across tasks.

use std::time::Duration;

use serde_json::Value;

use crate::{Config, Error, Response};

/// Per-call options.
#[derive(Debug, Clone, Default)]
pub struct CallOptions {
    /// True when resending the call after an ambiguous failure (timeout, reset, body-less 5xx)
    /// could duplicate an effect. Such calls are never resent; they end in
    /// [`Error::OutcomeUnknown`]. `None` = decide from the method name (reads are
    /// `*.get`, `*.list`, `*.fields`, …); the CLI passes the method catalog's verdict.
    pub is_write: Option<bool>,
    /// Idempotency key; sent as `Idempotency-Key` on REST v3 and reported in errors.
    pub idempotency_key: Option<String>,
    /// Overrides the per-request timeout.
    pub timeout: Option<Duration>,
}

/// Counters since the client was built.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize)]
pub struct ClientStats {
    pub requests: u64,
    pub retries: u64,
    pub status_503: u64,
    pub status_429: u64,
    pub refreshes: u64,
    pub limiter_waits: u64,
    pub limiter_wait_ms: u64,
}

/// A Bitrix24 REST client.
#[derive(Clone)]
pub struct Client {
    inner: std::sync::Arc<Inner>,
}

struct Inner {
    config: Config,
}

impl Client {
    pub async fn new(config: Config) -> Result<Client, Error> {
        Ok(Client {
            inner: std::sync::Arc::new(Inner { config }),
        })
    }

    pub fn portal(&self) -> &str {
        &self.inner.config.portal
    }

    pub async fn call(&self, method: &str, params: Value) -> Result<Response, Error> {
        self.call_with(method, params, CallOptions::default()).await
    }

    pub async fn call_with(
        &self,
        method: &str,
        _params: Value,
        _opts: CallOptions,
    ) -> Result<Response, Error> {
        Err(Error::Config(format!("{method}: transport not built yet")))
    }

    pub async fn call_v3(
        &self,
        method: &str,
        _params: Value,
        _opts: CallOptions,
    ) -> Result<Response, Error> {
        Err(Error::Config(format!("{method}: transport not built yet")))
    }

    pub fn stats(&self) -> ClientStats {
        ClientStats::default()
    }
}
