//! # b24-sandbox — a local emulated Bitrix24 portal
//!
//! An independent implementation of the *server* side of the Bitrix24 REST protocol
//! (see `reference/bitrix24-protocol.md`): webhook and OAuth auth with an OAuth server, the
//! leaky bucket (503 `QUERY_LIMIT_EXCEEDED`), the per-method operating-time limit (429
//! `OPERATION_TIME_LIMIT`), batch with `$result[...]`, paging with `start=-1`, CRM entities,
//! events (online delivery and the offline queue), a few REST 3.0 methods with
//! `Idempotency-Key`, and seeded fault injection.
//!
//! It deliberately shares no code with the `b24` client crate: a misunderstanding of the
//! protocol written once and used on both sides would pass every test.
// Unused dependencies are a compile error (issue 16): rustc sees every crate this target
// links, so the check costs nothing beyond the build CI already does. Test builds see the
// dev-dependencies too, hence the `not(test)`.
#![cfg_attr(not(test), deny(unused_crate_dependencies))]

mod batch;
mod crm;
mod crm_calls;
mod events;
mod exec;
mod faults;
mod md5;
mod methods;
mod oauth;
mod params;
mod portals;
mod refdata;
mod request;
mod server;
mod state;
mod v3;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// Make ring the process-default rustls crypto provider, unless one is installed already.
///
/// The workspace builds reqwest and axum-server without a provider of their own (ring is the
/// only one compiled), and reqwest panics when a client is built with no default provider;
/// so does a rustls server configured from PEM. The sandbox calls this before building either
/// (its event deliveries, the `--tls` listener). Its own copy of `b24::tls`'s: this crate
/// shares no code with the client.
pub(crate) fn install_crypto_provider() {
    // Err means a default exists already, which is all that is needed.
    let _ = rustls::crypto::ring::default_provider().install_default();
}

pub use faults::FaultSpec;
pub use portals::{LifecycleOutcome, Portals, start_many};
pub use state::{LoggedRequest, Stats};

/// The portal's plan: it sets the leaky bucket (docs/protocol.md §7.2).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Plan {
    #[default]
    Standard,
    Enterprise,
}

impl Plan {
    /// (capacity X, drain Y per second).
    pub fn bucket(self) -> (f64, f64) {
        match self {
            Plan::Standard => (50.0, 2.0),
            Plan::Enterprise => (250.0, 5.0),
        }
    }
}

impl std::str::FromStr for Plan {
    type Err = String;
    fn from_str(s: &str) -> Result<Plan, String> {
        match s.to_ascii_lowercase().as_str() {
            "standard" => Ok(Plan::Standard),
            "enterprise" => Ok(Plan::Enterprise),
            other => Err(format!("unknown plan `{other}` (standard or enterprise)")),
        }
    }
}

/// When the portal answers.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Timing {
    /// At once: the modelled cost is billed and reported in `time`, but nobody waits for it
    /// (raw-throughput runs).
    #[default]
    Instant,
    /// Each call answers after its modelled `time.duration` (a batch after the sum of its
    /// commands), as a portal does; calls in flight at once are served concurrently.
    Realistic,
}

impl std::str::FromStr for Timing {
    type Err = String;
    fn from_str(s: &str) -> Result<Timing, String> {
        match s.to_ascii_lowercase().as_str() {
            "instant" => Ok(Timing::Instant),
            "realistic" => Ok(Timing::Realistic),
            other => Err(format!("unknown timing `{other}` (instant or realistic)")),
        }
    }
}

/// How to run the sandbox.
#[derive(Debug, Clone)]
pub struct SandboxConfig {
    /// Where to listen; port 0 picks a free one. Loopback by default.
    pub listen: SocketAddr,
    pub plan: Plan,
    /// Seed for generated data, tokens and faults: the same seed gives the same run.
    pub seed: u64,
    pub faults: FaultSpec,
    /// Leads to create at start.
    pub seed_leads: usize,
    /// Serve HTTPS with a generated certificate (plain http then answers "Https required").
    pub tls: bool,
    /// The leaky bucket and the operating-time limit (off for raw-throughput benchmarks).
    pub limits: bool,
    /// Lifetime of OAuth access tokens.
    pub access_token_ttl: Duration,
    /// JSON file with records to load: `{"leads":[{...}], "deals":[...], ...}`.
    pub data_file: Option<PathBuf>,
    /// Operating-time budget per method and credential over the window (seconds).
    pub operating_limit_secs: f64,
    /// The operating-time window in seconds (600 on a portal). Ten baskets of a tenth of it
    /// each; `operating_reset_at` follows it, so a client that learns the window from the
    /// answers works unchanged with a 20 s window in a test.
    pub operating_window_secs: f64,
    /// Simulated execution cost multiplier (1.0 = defaults; raise it to reach the limit fast).
    pub cost_scale: f64,
    /// Scopes granted to the incoming webhook (`None` = all). A method outside them answers
    /// 403 `insufficient_scope`.
    pub webhook_scopes: Option<Vec<String>>,
    /// Scopes granted to the OAuth application (`None` = all); printed in token responses.
    pub app_scopes: Option<Vec<String>>,
    /// Whether answers wait for each call's modelled duration.
    pub timing: Timing,
    /// Answer every method with 403 ACCESS_DENIED "REST API is available only on commercial plans".
    pub free_plan: bool,
    /// Maximum request body size in bytes.
    pub max_body: usize,
    /// Freeze the clock: time moves only with [`Sandbox::advance_clock`] (exact limit tests).
    pub manual_clock: bool,
}

impl Default for SandboxConfig {
    fn default() -> Self {
        SandboxConfig {
            listen: SocketAddr::from(([127, 0, 0, 1], 0)),
            plan: Plan::Standard,
            seed: 1,
            faults: FaultSpec::default(),
            seed_leads: 0,
            tls: false,
            limits: true,
            access_token_ttl: Duration::from_secs(3600),
            data_file: None,
            operating_limit_secs: 480.0,
            operating_window_secs: 600.0,
            cost_scale: 1.0,
            webhook_scopes: None,
            app_scopes: None,
            timing: Timing::Instant,
            free_plan: false,
            max_body: 10 * 1024 * 1024,
            manual_clock: false,
        }
    }
}

/// What a user needs to connect (printed at start; `--json` prints it as one line).
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub struct StartInfo {
    pub base_url: String,
    pub webhook_url: String,
    pub user_id: u64,
    pub webhook_code: String,
    pub client_id: String,
    pub client_secret: String,
    pub access_token: String,
    pub refresh_token: String,
    pub member_id: String,
    pub application_token: String,
    pub domain: String,
    pub oauth_token_url: String,
    pub oauth_authorize_url: String,
    pub plan: Plan,
    /// With `--tls`: the CA certificate (PEM) clients must trust.
    pub ca_file: Option<PathBuf>,
    /// With `--tls`: the plain-http address that answers "Https required".
    pub http_url: Option<String>,
}

/// Errors starting the sandbox.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum SandboxError {
    #[error("cannot listen on {addr}: {source}")]
    Listen {
        addr: SocketAddr,
        source: std::io::Error,
    },
    #[error("data file {path}: {reason}")]
    Data { path: PathBuf, reason: String },
    #[error("TLS setup: {0}")]
    Tls(String),
}

/// A running sandbox portal.
pub struct Sandbox {
    info: StartInfo,
    state: Arc<Mutex<state::State>>,
    shutdown: tokio_util::sync::CancellationToken,
    tasks: Vec<tokio::task::JoinHandle<()>>,
    _tmp: Option<tempfile_dir::TempDir>,
}

mod tempfile_dir {
    /// A directory removed on drop (for the TLS CA file).
    #[derive(Debug)]
    pub struct TempDir(pub std::path::PathBuf);
    impl Drop for TempDir {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }
}

/// Start a sandbox portal in the current tokio runtime.
pub async fn start(cfg: SandboxConfig) -> Result<Sandbox, SandboxError> {
    server::start(cfg).await
}

impl Sandbox {
    pub fn info(&self) -> &StartInfo {
        &self.info
    }

    pub fn base_url(&self) -> &str {
        &self.info.base_url
    }

    pub fn stats(&self) -> Stats {
        self.state.lock().unwrap_or_else(|p| p.into_inner()).stats()
    }

    pub fn request_log(&self) -> Vec<LoggedRequest> {
        self.state
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .log
            .clone()
    }

    /// Make every access token issued so far expired.
    pub fn expire_access_tokens(&self) {
        self.state
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .expire_tokens();
    }

    /// Revoke every token issued so far: calls answer 401 `invalid_token`, refreshes fail.
    pub fn revoke_access_tokens(&self) {
        self.state
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .revoke_tokens();
    }

    /// Move the sandbox's clock forward (operating-limit baskets, token expiry).
    pub fn advance_clock(&self, by: Duration) {
        self.state
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clock_offset += by.as_secs_f64();
    }

    /// Replace the fault spec.
    pub fn set_faults(&self, spec: FaultSpec) {
        self.state
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .set_faults(spec);
    }

    /// Zero the counters and the request log.
    pub fn reset_stats(&self) {
        self.state
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .reset_stats();
    }

    /// Stop serving and wait for the listeners to finish.
    pub async fn shutdown(self) {
        self.shutdown.cancel();
        for t in self.tasks {
            let _ = t.await;
        }
    }

    /// Wait until the token is cancelled from outside (Ctrl-C in `b24 sandbox`).
    pub fn shutdown_token(&self) -> tokio_util::sync::CancellationToken {
        self.shutdown.clone()
    }
}
