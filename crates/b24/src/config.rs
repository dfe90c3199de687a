//! Resolved configuration: portal, credentials, limits, state dir.
//!
//! Precedence is flags > env > `--env-file` > profile file > defaults; the CLI assembles the
//! lookup layers and hands this module one function that answers "what is the value of X".
//! Env names stay compatible with the original Python skill (`B24_DOMAIN`, `B24_AUTH_MODE`,
//! `B24_WEBHOOK_USER_ID`, `B24_WEBHOOK_CODE`, `B24_ACCESS_TOKEN`, …).

use std::path::PathBuf;
use std::time::Duration;

use secrecy::{ExposeSecret, SecretString};

use crate::Error;
use crate::retry::RetryPolicy;

mod parse;

pub(crate) use parse::check_scheme;
use parse::{
    MAX_RATE, MAX_RETRIES, MAX_RETRY_BUDGET_SECS, MAX_TIMEOUT_SECS, check_code, parse_base,
    parse_in, parse_webhook_url, sanitize,
};
pub use parse::{StoreKind, is_loopback_host, store_kind};

/// The default OAuth authorization server (docs/protocol.md §3.1).
pub const DEFAULT_TOKEN_URL: &str = "https://oauth.bitrix.info/oauth/token/";

/// How calls are authenticated.
///
/// Exhaustive on purpose: callers (the gate, `doctor`) decide per credential kind what is
/// sent and what is checked, so a new kind must be a compile error there, not a silent `_`.
#[derive(Clone)]
pub enum Auth {
    /// Incoming webhook: the secret lives in the URL path, so the URL is never logged.
    Webhook {
        /// The user the webhook was created by (the number in its URL).
        user_id: String,
        /// The secret code in the webhook's URL.
        code: SecretString,
    },
    /// OAuth 2.0 application tokens (`auth` parameter), refreshed on `expired_token`.
    OAuth {
        /// The current access token, if known.
        access_token: Option<SecretString>,
        /// The refresh token, if known.
        refresh_token: Option<SecretString>,
        /// The application's id.
        client_id: String,
        /// The application's secret.
        client_secret: SecretString,
        /// The OAuth server's token endpoint.
        token_url: String,
    },
}

impl std::fmt::Debug for Auth {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Auth::Webhook { user_id, .. } => {
                write!(f, "Webhook {{ user_id: {user_id}, code: [redacted] }}")
            }
            Auth::OAuth {
                client_id,
                token_url,
                ..
            } => write!(
                f,
                "OAuth {{ client_id: {client_id}, token_url: {token_url}, tokens: [redacted] }}"
            ),
        }
    }
}

impl Auth {
    /// Every secret this auth holds, for redaction.
    pub fn secrets(&self) -> Vec<String> {
        match self {
            Auth::Webhook { code, .. } => vec![code.expose_secret().to_string()],
            Auth::OAuth {
                access_token,
                refresh_token,
                client_secret,
                ..
            } => {
                let mut v = vec![client_secret.expose_secret().to_string()];
                v.extend(access_token.iter().map(|s| s.expose_secret().to_string()));
                v.extend(refresh_token.iter().map(|s| s.expose_secret().to_string()));
                v
            }
        }
    }
}

/// Share of the bucket kept in reserve when `B24_RATE_MARGIN` is not set.
pub const DEFAULT_MARGIN_SHARE: f64 = 0.04;

/// The portal's leaky bucket (docs/protocol.md §7.2): capacity X, drain Y per second.
#[derive(Debug, Clone, Copy, PartialEq)]
#[non_exhaustive]
pub struct RateLimits {
    /// Capacity of the bucket, in requests.
    pub burst: f64,
    /// Requests per second the bucket drains.
    pub per_sec: f64,
    /// Requests kept in reserve below the capacity, because other apps on the same
    /// address share the portal's counter.
    pub margin: f64,
}

impl RateLimits {
    /// A bucket of `burst` requests draining `per_sec` a second, `margin` of it kept in
    /// reserve.
    pub const fn new(burst: f64, per_sec: f64, margin: f64) -> RateLimits {
        RateLimits {
            burst,
            per_sec,
            margin,
        }
    }

    /// Standard plans: 50 requests, draining 2 per second.
    pub const STANDARD: RateLimits = RateLimits {
        burst: 50.0,
        per_sec: 2.0,
        margin: 0.0,
    };
    /// Enterprise plans: 250 requests, draining 5 per second.
    pub const ENTERPRISE: RateLimits = RateLimits {
        burst: 250.0,
        per_sec: 5.0,
        margin: 0.0,
    };
}

/// Where the limiter keeps its state.
#[derive(Debug, Clone, PartialEq)]
#[non_exhaustive]
pub enum LimiterBackend {
    /// This process only.
    Memory,
    /// A SQLite file: every process on the host that uses it shares one budget.
    Sqlite(PathBuf),
    /// No client-side limiting at all (the portal's 503s are still retried).
    Off,
    /// A row in the PostgreSQL database of `Config::store_url`: every host shares one budget.
    Postgres,
}

/// Where the OAuth pair lives.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum TokenBackend {
    /// A 0600 JSON file in the state dir, guarded by a lock file (one host).
    File,
    /// A row in the PostgreSQL database of `Config::store_url` (a cluster).
    Postgres,
}

/// A validated configuration.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct Config {
    /// Portal host (and port), e.g. `example.bitrix24.com` or `127.0.0.1:8080`; the limiter key.
    pub portal: String,
    /// `https://example.bitrix24.com` (or `http://127.0.0.1:8080` for loopback only).
    pub base_url: String,
    /// How calls are authenticated.
    pub auth: Auth,
    /// The portal's bucket, as this client models it.
    pub limits: RateLimits,
    /// Where the rate limiter keeps its state.
    pub limiter: LimiterBackend,
    /// Where the OAuth pair lives (file by default; PostgreSQL with a postgres:// store URL).
    pub token_backend: TokenBackend,
    /// `B24_STORE_URL` when it names PostgreSQL: the shared store of a cluster. It may hold a
    /// database password, so it is kept as a secret.
    pub store_url: Option<SecretString>,
    /// How often and for how long a call is retried.
    pub retry: RetryPolicy,
    /// Per-request timeout (the portal cuts requests off at 60 s).
    pub timeout: Duration,
    /// Seconds of execution per method per ten minutes the portal allows (docs/protocol.md §7.3).
    pub operating_limit_secs: f64,
    /// Directory for tokens, limiter state, plans, idempotency records and the audit log.
    pub state_dir: PathBuf,
    /// Extra PEM root certificate (e.g. the sandbox's `--tls` CA).
    pub ca_file: Option<PathBuf>,
}

impl Config {
    /// Every secret in this configuration, so that outputs can be checked and redacted.
    pub fn secrets(&self) -> Vec<String> {
        let mut v = self.auth.secrets();
        if let Some(pw) = self
            .store_url
            .as_ref()
            .and_then(|u| url::Url::parse(u.expose_secret()).ok())
            .and_then(|u| u.password().map(str::to_string))
        {
            v.push(pw);
        }
        v
    }

    /// The token file of this portal in the state dir (OAuth).
    pub fn token_file(&self) -> PathBuf {
        self.state_dir
            .join(format!("tokens-{}.json", sanitize(&self.portal)))
    }

    /// Build from a lookup function (`B24_*` name → value).
    pub fn from_lookup(
        get: &dyn Fn(&str) -> Option<String>,
        state_dir: PathBuf,
    ) -> Result<Config, Error> {
        let get = |k: &str| {
            get(k)
                .map(|v| v.trim().to_string())
                .filter(|v| !v.is_empty())
        };
        let mode = get("B24_AUTH_MODE").map(|m| m.to_ascii_lowercase());
        let has_oauth = get("B24_ACCESS_TOKEN").is_some() || get("B24_REFRESH_TOKEN").is_some();
        let oauth = match mode.as_deref() {
            Some("oauth") => true,
            Some("webhook") => false,
            Some(other) => {
                return Err(Error::Config(format!(
                    "B24_AUTH_MODE must be `webhook` or `oauth`, not `{other}`"
                )));
            }
            None => {
                has_oauth && get("B24_WEBHOOK_URL").is_none() && get("B24_WEBHOOK_CODE").is_none()
            }
        };

        let (base_url, portal, auth) = if oauth {
            let domain = get("B24_DOMAIN")
                .or_else(|| get("B24_PORTAL"))
                .ok_or_else(|| {
                    Error::Config(
                        "OAuth needs B24_DOMAIN (the portal host, e.g. example.bitrix24.com)"
                            .into(),
                    )
                })?;
            let (base, portal) = parse_base(&domain)?;
            let client_id = get("B24_CLIENT_ID")
                .ok_or_else(|| Error::Config("OAuth needs B24_CLIENT_ID".into()))?;
            let client_secret = get("B24_CLIENT_SECRET")
                .ok_or_else(|| Error::Config("OAuth needs B24_CLIENT_SECRET".into()))?;
            let token_url =
                get("B24_OAUTH_TOKEN_URL").unwrap_or_else(|| DEFAULT_TOKEN_URL.to_string());
            check_scheme(&token_url)?;
            (
                base,
                portal,
                Auth::OAuth {
                    access_token: get("B24_ACCESS_TOKEN").map(SecretString::from),
                    refresh_token: get("B24_REFRESH_TOKEN").map(SecretString::from),
                    client_id,
                    client_secret: SecretString::from(client_secret),
                    token_url,
                },
            )
        } else if let Some(url) = get("B24_WEBHOOK_URL") {
            parse_webhook_url(&url)?
        } else if let Some(domain) = get("B24_DOMAIN") {
            let (base, portal) = parse_base(&domain)?;
            let user_id = get("B24_WEBHOOK_USER_ID")
                .ok_or_else(|| Error::Config("webhook auth needs B24_WEBHOOK_USER_ID".into()))?;
            let code = get("B24_WEBHOOK_CODE")
                .ok_or_else(|| Error::Config("webhook auth needs B24_WEBHOOK_CODE".into()))?;
            let code = check_code(&user_id, &code)?;
            (
                base,
                portal,
                Auth::Webhook {
                    user_id,
                    code: SecretString::from(code),
                },
            )
        } else {
            return Err(Error::Config(
                "no portal configured: set B24_WEBHOOK_URL (https://<portal>/rest/<user>/<code>/), \
                 or B24_DOMAIN with B24_WEBHOOK_USER_ID and B24_WEBHOOK_CODE, or OAuth \
                 (B24_AUTH_MODE=oauth, B24_DOMAIN, B24_CLIENT_ID, B24_CLIENT_SECRET, B24_ACCESS_TOKEN, \
                 B24_REFRESH_TOKEN); try `b24 demo` or `b24 sandbox` to experiment locally"
                    .into(),
            ));
        };

        let mut limits = match get("B24_PLAN").map(|p| p.to_ascii_lowercase()).as_deref() {
            None | Some("standard") => RateLimits::STANDARD,
            Some("enterprise") => RateLimits::ENTERPRISE,
            Some(other) => {
                return Err(Error::Config(format!(
                    "B24_PLAN must be standard or enterprise, not `{other}`"
                )));
            }
        };
        if let Some(v) = get("B24_RATE_BURST").or_else(|| get("B24_RATE_LIMITER_BURST")) {
            limits.burst = parse_in(&v, "B24_RATE_BURST", 1.0, MAX_RATE)?;
        }
        if let Some(v) = get("B24_RATE_PER_SEC").or_else(|| get("B24_RATE_LIMITER_RATE")) {
            limits.per_sec = parse_in(&v, "B24_RATE_PER_SEC", 1e-3, MAX_RATE)?;
        }
        // Keep 4 % of the bucket in reserve by default (2 of 50, 10 of 250): a request reaches
        // the portal a little after its slot was reserved, and when several processes share
        // the budget those small delays can bunch arrivals together; the reserve absorbs that.
        limits.margin = match get("B24_RATE_MARGIN") {
            Some(v) => parse_in(&v, "B24_RATE_MARGIN", 0.0, MAX_RATE)?,
            None => limits.burst * DEFAULT_MARGIN_SHARE,
        };
        if limits.burst < 1.0
            || limits.per_sec <= 0.0
            || limits.margin < 0.0
            || limits.margin >= limits.burst
        {
            return Err(Error::Config(
                "rate limits must be burst ≥ 1, per_sec > 0, 0 ≤ margin < burst".into(),
            ));
        }
        // A misspelt scheme (`postgress://`) must not quietly fall back to local files.
        let store_url = match get("B24_STORE_URL") {
            Some(u) => match store_kind(&u)? {
                StoreKind::Postgres => Some(u),
                StoreKind::Sqlite => None,
            },
            None => None,
        };
        let limiter = match get("B24_RATE_LIMITER")
            .map(|v| v.to_ascii_lowercase())
            .as_deref()
        {
            None if store_url.is_some() => LimiterBackend::Postgres,
            Some("postgres") | Some("postgresql") | Some("pg") => {
                if store_url.is_none() {
                    return Err(Error::Config(
                        "B24_RATE_LIMITER=postgres needs B24_STORE_URL=postgres://…".into(),
                    ));
                }
                LimiterBackend::Postgres
            }
            None | Some("sqlite") | Some("file") => LimiterBackend::Sqlite(
                get("B24_RATE_LIMITER_FILE")
                    .map(PathBuf::from)
                    .unwrap_or_else(|| state_dir.join("limiter.db")),
            ),
            Some("memory") => LimiterBackend::Memory,
            Some("off") | Some("none") => LimiterBackend::Off,
            Some(other) => {
                return Err(Error::Config(format!(
                    "B24_RATE_LIMITER must be sqlite, memory, postgres or off, not `{other}`"
                )));
            }
        };
        let token_backend = match get("B24_TOKEN_STORE")
            .map(|v| v.to_ascii_lowercase())
            .as_deref()
        {
            None if store_url.is_some() => TokenBackend::Postgres,
            None | Some("file") => TokenBackend::File,
            Some("postgres") | Some("postgresql") | Some("pg") if store_url.is_some() => {
                TokenBackend::Postgres
            }
            Some(other) => {
                return Err(Error::Config(format!(
                    "B24_TOKEN_STORE must be file, or postgres with B24_STORE_URL=postgres://…, not `{other}`"
                )));
            }
        };
        let mut retry = RetryPolicy::default();
        if let Some(v) = get("B24_MAX_RETRIES") {
            let n = parse_in(&v, "B24_MAX_RETRIES", 0.0, MAX_RETRIES)?;
            if n.fract() != 0.0 {
                return Err(Error::Config(format!(
                    "B24_MAX_RETRIES must be a whole number, not `{v}`"
                )));
            }
            retry.max_attempts = n as u32 + 1;
        }
        if let Some(v) = get("B24_RETRY_BUDGET_SECS") {
            retry.max_total = Duration::from_secs_f64(parse_in(
                &v,
                "B24_RETRY_BUDGET_SECS",
                0.0,
                MAX_RETRY_BUDGET_SECS,
            )?);
        }
        let timeout = match get("B24_TIMEOUT_SECS") {
            Some(v) => {
                // At least a millisecond: a smaller value rounds to a zero timeout, under
                // which every request would fail.
                let secs = parse_in(&v, "B24_TIMEOUT_SECS", 0.001, MAX_TIMEOUT_SECS)?;
                Duration::from_secs_f64(secs)
            }
            None => Duration::from_secs(60),
        };
        let operating_limit_secs = match get("B24_OPERATING_LIMIT_SECS") {
            Some(v) => parse_in(&v, "B24_OPERATING_LIMIT_SECS", 0.0, 600.0)?,
            None => 480.0,
        };
        Ok(Config {
            portal,
            base_url,
            auth,
            limits,
            limiter,
            token_backend,
            store_url: store_url.map(SecretString::from),
            retry,
            timeout,
            operating_limit_secs,
            state_dir,
            ca_file: get("B24_CA_FILE").map(PathBuf::from),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    fn cfg(pairs: &[(&str, &str)]) -> Result<Config, Error> {
        let m: HashMap<String, String> = pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        Config::from_lookup(&|k| m.get(k).cloned(), PathBuf::from("/tmp/x"))
    }

    #[test]
    fn webhook_url_is_split_and_secret_hidden_from_debug() {
        let c = cfg(&[(
            "B24_WEBHOOK_URL",
            "https://ex.bitrix24.com/rest/7/abcdef123/",
        )])
        .unwrap();
        assert_eq!(c.base_url, "https://ex.bitrix24.com");
        assert_eq!(c.portal, "ex.bitrix24.com");
        assert!(matches!(&c.auth, Auth::Webhook { user_id, .. } if user_id == "7"));
        assert!(!format!("{c:?}").contains("abcdef123"));
    }

    #[test]
    fn plain_http_only_to_loopback() {
        assert!(cfg(&[("B24_WEBHOOK_URL", "http://127.0.0.1:9/rest/1/x/")]).is_ok());
        let err = cfg(&[(
            "B24_WEBHOOK_URL",
            "http://ex.bitrix24.com/rest/1/secretcode/",
        )])
        .unwrap_err();
        assert!(err.to_string().contains("plain http"), "{err}");
        assert!(!err.to_string().contains("secretcode"));
    }

    #[test]
    fn code_with_user_prefix_is_recognised() {
        let err = cfg(&[
            ("B24_DOMAIN", "ex.bitrix24.com"),
            ("B24_WEBHOOK_USER_ID", "1"),
            ("B24_WEBHOOK_CODE", "1/abc"),
        ])
        .unwrap_err();
        assert!(err.to_string().contains("user_id"), "{err}");
    }

    #[test]
    fn cut_short_url_is_recognised() {
        let err = cfg(&[("B24_WEBHOOK_URL", "https://ex.bitrix24.com/rest/1/")]).unwrap_err();
        assert!(err.to_string().contains("cut short"), "{err}");
    }

    #[test]
    fn oauth_from_original_skill_env_names() {
        let c = cfg(&[
            ("B24_AUTH_MODE", "oauth"),
            ("B24_DOMAIN", "ex.bitrix24.com"),
            ("B24_CLIENT_ID", "app.1"),
            ("B24_CLIENT_SECRET", "s3cr3t"),
            ("B24_ACCESS_TOKEN", "acc"),
            ("B24_REFRESH_TOKEN", "ref"),
            ("B24_PLAN", "enterprise"),
        ])
        .unwrap();
        assert!(matches!(c.auth, Auth::OAuth { .. }));
        assert_eq!(c.limits.burst, 250.0);
        assert_eq!(c.secrets().len(), 3);
    }
}
