//! [`ClientBuilder`]: a client from values in code, beside [`Config::from_lookup`] which reads
//! the `B24_*` variables.
//!
//! ```no_run
//! # async fn demo() -> Result<(), b24::Error> {
//! let client = b24::ClientBuilder::webhook("https://example.bitrix24.com/rest/1/abc123/")?
//!     .plan(b24::config::RateLimits::ENTERPRISE)
//!     .build()
//!     .await?;
//! let me: serde_json::Value = client.call("user.current", serde_json::json!({})).await?.json()?;
//! # Ok(()) }
//! ```
//!
//! Defaults suit a library: the rate limiter lives in memory (no file is written), and OAuth
//! tokens rotated by a refresh are kept in memory unless a token store is given.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures::future::BoxFuture;

use crate::auth::{TokenPair, TokenStore};
use crate::config::{LimiterBackend, RateLimits};
use crate::retry::RetryPolicy;
use crate::{Client, Config, Error};

/// Builds a [`Client`] from values rather than environment variables.
#[must_use]
pub struct ClientBuilder {
    config: Config,
    token_store: Option<Arc<dyn TokenStore>>,
}

impl std::fmt::Debug for ClientBuilder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // `Config`'s Debug redacts every secret.
        f.debug_struct("ClientBuilder")
            .field("config", &self.config)
            .finish_non_exhaustive()
    }
}

impl ClientBuilder {
    /// An incoming webhook, `https://<portal>/rest/<user_id>/<code>/` (plain http only to
    /// loopback addresses).
    pub fn webhook(url: &str) -> Result<ClientBuilder, Error> {
        Self::from_pairs(&[("B24_WEBHOOK_URL", url)], None)
    }

    /// An OAuth application on `portal` (a host such as `example.bitrix24.com`, or a URL),
    /// with its current token pair. Refreshed pairs are kept in memory unless
    /// [`ClientBuilder::token_store`] names a durable store.
    pub fn oauth(
        portal: &str,
        client_id: &str,
        client_secret: &str,
        access_token: &str,
        refresh_token: &str,
    ) -> Result<ClientBuilder, Error> {
        Self::from_pairs(
            &[
                ("B24_AUTH_MODE", "oauth"),
                ("B24_DOMAIN", portal),
                ("B24_CLIENT_ID", client_id),
                ("B24_CLIENT_SECRET", client_secret),
                ("B24_ACCESS_TOKEN", access_token),
                ("B24_REFRESH_TOKEN", refresh_token),
            ],
            Some(Arc::new(MemoryTokenStore::default())),
        )
    }

    /// Start from a complete configuration (for example one read with
    /// [`Config::from_lookup`]) to adjust it in code.
    pub fn from_config(config: Config) -> ClientBuilder {
        ClientBuilder {
            config,
            token_store: None,
        }
    }

    fn from_pairs(
        pairs: &[(&str, &str)],
        token_store: Option<Arc<dyn TokenStore>>,
    ) -> Result<ClientBuilder, Error> {
        let mut m: HashMap<&str, &str> = pairs.iter().copied().collect();
        m.insert("B24_RATE_LIMITER", "memory");
        let state_dir = std::env::temp_dir().join("b24");
        let config = Config::from_lookup(&|k| m.get(k).map(|v| v.to_string()), state_dir)?;
        Ok(ClientBuilder {
            config,
            token_store,
        })
    }

    /// The OAuth server that refreshes tokens (default: Bitrix24's own). Refused like the
    /// portal address when it is plain http to anything but loopback; ignored for webhooks.
    pub fn token_url(mut self, url: &str) -> Result<ClientBuilder, Error> {
        crate::config::check_scheme(url)?;
        if let crate::config::Auth::OAuth { token_url, .. } = &mut self.config.auth {
            *token_url = url.to_string();
        }
        Ok(self)
    }

    /// The portal's rate limits (its plan): [`RateLimits::STANDARD`] by default.
    pub fn plan(mut self, limits: RateLimits) -> ClientBuilder {
        self.config.limits = limits;
        self
    }

    /// Where the limiter keeps its state: memory by default; a SQLite file to share one budget
    /// between the processes of a host.
    pub fn limiter(mut self, backend: LimiterBackend) -> ClientBuilder {
        self.config.limiter = backend;
        self
    }

    /// Where OAuth token pairs are loaded from and saved to after a refresh.
    pub fn token_store(mut self, store: Arc<dyn TokenStore>) -> ClientBuilder {
        self.token_store = Some(store);
        self
    }

    /// The per-request timeout (60 s by default, as the portal's own limit).
    pub fn timeout(mut self, timeout: Duration) -> ClientBuilder {
        self.config.timeout = timeout.max(Duration::from_millis(1));
        self
    }

    /// How often and for how long a call is retried.
    pub fn retry(mut self, policy: RetryPolicy) -> ClientBuilder {
        self.config.retry = policy;
        self
    }

    /// An extra trusted CA certificate (PEM), e.g. a corporate proxy's.
    pub fn ca_file(mut self, path: impl Into<PathBuf>) -> ClientBuilder {
        self.config.ca_file = Some(path.into());
        self
    }

    /// The directory for a SQLite limiter or token file named relative to it.
    pub fn state_dir(mut self, dir: impl Into<PathBuf>) -> ClientBuilder {
        self.config.state_dir = dir.into();
        self
    }

    /// Connect the stores and build the client.
    pub async fn build(self) -> Result<Client, Error> {
        Client::with_token_store(self.config, self.token_store).await
    }
}

/// Token pairs kept in this process only (lost on exit).
#[derive(Debug, Default)]
pub struct MemoryTokenStore {
    pair: Mutex<Option<TokenPair>>,
    lock: Arc<tokio::sync::Mutex<()>>,
}

impl TokenStore for MemoryTokenStore {
    fn load(&self) -> BoxFuture<'_, Result<Option<TokenPair>, Error>> {
        let p = self.pair.lock().unwrap_or_else(|p| p.into_inner()).clone();
        Box::pin(std::future::ready(Ok(p)))
    }

    fn save<'a>(&'a self, pair: &'a TokenPair) -> BoxFuture<'a, Result<(), Error>> {
        *self.pair.lock().unwrap_or_else(|p| p.into_inner()) = Some(pair.clone());
        Box::pin(std::future::ready(Ok(())))
    }

    fn lock(&self) -> BoxFuture<'_, Result<Box<dyn Send>, Error>> {
        let lock = self.lock.clone();
        Box::pin(async move { Ok(Box::new(lock.lock_owned().await) as Box<dyn Send>) })
    }

    fn clear(&self) -> BoxFuture<'_, Result<(), Error>> {
        *self.pair.lock().unwrap_or_else(|p| p.into_inner()) = None;
        Box::pin(std::future::ready(Ok(())))
    }

    fn describe(&self) -> String {
        "memory".into()
    }
}
