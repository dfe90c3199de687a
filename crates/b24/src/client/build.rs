//! Building a [`Client`]: the HTTP client and its TLS, the stores the configuration names
//! (memory, SQLite, PostgreSQL — one pool per URL and process), and the OAuth session.

use std::sync::Arc;
use std::time::Duration;

use secrecy::{ExposeSecret, SecretString};

use super::{Client, Counters, Inner, pacing};
use crate::auth::{FileTokenStore, OAuthSession, TokenPair, TokenStore};
use crate::config::{Auth, LimiterBackend, TokenBackend};
use crate::limiter::operating::{MemoryOpStore, OperatingStore, SqliteOpStore};
use crate::limiter::{Limiter, MemoryStore, OperatingBudget, SqliteStore, SystemClock};
use crate::pg::PgStore;
use crate::{Config, Error};

/// The token store the configuration names: the 0600 file, or the PostgreSQL row of a cluster.
pub async fn token_store(config: &Config) -> Result<Arc<dyn TokenStore>, Error> {
    match config.token_backend {
        TokenBackend::File => Ok(Arc::new(FileTokenStore::new(config.token_file()))),
        TokenBackend::Postgres => Ok(Arc::new(
            pg_store(config).await?.token_store(&config.portal),
        )),
    }
}

/// Connect to `B24_STORE_URL` (and apply its migration) — once per URL and process
/// ([`PgStore::shared`]): a worker serving a thousand portals builds a client per portal, and a
/// pool each would be a thousand pools against one database.
async fn pg_store(config: &Config) -> Result<PgStore, Error> {
    let url = config
        .store_url
        .as_ref()
        .ok_or_else(|| Error::Config("the PostgreSQL store needs B24_STORE_URL".into()))?
        .expose_secret();
    PgStore::shared(url).await
}

impl Client {
    /// Build a client for `config` with the token store it names (file or PostgreSQL).
    pub async fn new(config: Config) -> Result<Client, Error> {
        Self::with_token_store(config, None).await
    }

    /// Build with a specific token store (default: a 0600 file in the state dir).
    pub async fn with_token_store(
        config: Config,
        store: Option<Arc<dyn TokenStore>>,
    ) -> Result<Client, Error> {
        // The TLS configuration is handed over ready (`tls::client_config`, ring), so this
        // client needs no process-wide provider.
        #[allow(clippy::disallowed_methods)]
        let mut b = reqwest::Client::builder()
            .user_agent(concat!("b24/", env!("CARGO_PKG_VERSION")))
            .redirect(reqwest::redirect::Policy::none())
            .connect_timeout(Duration::from_secs(10))
            .timeout(config.timeout);
        // Trust anchors only when some address is https; see `crate::tls` for why.
        let oauth_https = matches!(&config.auth, Auth::OAuth { token_url, .. } if token_url.starts_with("https:"));
        let roots = if config.base_url.starts_with("https:") || oauth_https {
            crate::tls::Roots::WebPki
        } else {
            crate::tls::Roots::None
        };
        b = b.tls_backend_preconfigured(crate::tls::client_config(
            roots,
            config.ca_file.as_deref(),
        )?);
        let http = b
            .build()
            .map_err(|e| Error::Config(format!("HTTP client: {e}")))?;
        // One pool for whatever lives in PostgreSQL: start-up connects (and migrates) once.
        let uses_pg = config.limiter == LimiterBackend::Postgres
            || (store.is_none()
                && matches!(config.auth, Auth::OAuth { .. })
                && config.token_backend == TokenBackend::Postgres);
        let pg = if uses_pg {
            Some(pg_store(&config).await?)
        } else {
            None
        };
        // Operating-time states live where the rate bucket lives (in memory when limiting is
        // off: a single process still paces itself).
        let op_store: Box<dyn OperatingStore> = match &config.limiter {
            LimiterBackend::Sqlite(path) => {
                let path = path.clone();
                Box::new(
                    tokio::task::spawn_blocking(move || {
                        SqliteOpStore::open(&path, Arc::new(SystemClock))
                    })
                    .await
                    .map_err(|e| Error::state("operating store task", e))??,
                )
            }
            LimiterBackend::Postgres => {
                Box::new(pg.as_ref().expect("connected above").operating_store())
            }
            LimiterBackend::Off | LimiterBackend::Memory => {
                Box::new(MemoryOpStore::new(Box::new(SystemClock)))
            }
        };
        let operating = OperatingBudget::new(
            op_store,
            &config.portal,
            &pacing::credential_id(&config.auth),
            config.operating_limit_secs,
        );
        let limiter = match &config.limiter {
            LimiterBackend::Off => None,
            LimiterBackend::Memory => Some(Limiter::new(
                Box::new(MemoryStore::default()),
                config.limits,
                Box::new(SystemClock),
            )),
            LimiterBackend::Sqlite(path) => {
                let path = path.clone();
                let store = tokio::task::spawn_blocking(move || SqliteStore::open(&path))
                    .await
                    .map_err(|e| Error::state("limiter store task", e))??;
                Some(Limiter::new(
                    Box::new(store),
                    config.limits,
                    Box::new(SystemClock),
                ))
            }
            LimiterBackend::Postgres => Some(Limiter::new(
                Box::new(pg.as_ref().expect("connected above").rate_store()),
                config.limits,
                Box::new(SystemClock),
            )),
        };
        let oauth = match &config.auth {
            Auth::Webhook { .. } => None,
            Auth::OAuth {
                access_token,
                refresh_token,
                client_id,
                client_secret,
                token_url,
            } => {
                let store: Arc<dyn TokenStore> = match (store, &pg) {
                    (Some(s), _) => s,
                    (None, Some(pg)) if config.token_backend == TokenBackend::Postgres => {
                        Arc::new(pg.token_store(&config.portal))
                    }
                    (None, _) => token_store(&config).await?,
                };
                let initial =
                    (access_token.is_some() || refresh_token.is_some()).then(|| TokenPair {
                        access_token: access_token
                            .as_ref()
                            .map(|s| s.expose_secret().to_string())
                            .unwrap_or_default(),
                        refresh_token: refresh_token
                            .as_ref()
                            .map(|s| s.expose_secret().to_string())
                            .unwrap_or_default(),
                        expires: None,
                        member_id: None,
                        scope: None,
                        client_endpoint: None,
                        user_id: None,
                        obtained_at: 0,
                    });
                Some(
                    OAuthSession::new(
                        client_id.clone(),
                        SecretString::from(client_secret.expose_secret().to_string()),
                        token_url.clone(),
                        store,
                        initial,
                        http.clone(),
                    )
                    .await?,
                )
            }
        };
        Ok(Client {
            inner: Arc::new(Inner {
                config,
                http,
                limiter,
                operating,
                waits: pacing::Waits::default(),
                oauth,
                counters: Counters::default(),
            }),
            patient: false,
        })
    }
}
