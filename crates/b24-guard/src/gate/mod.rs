//! The gate: the one guarded path every call takes, whichever front end asked for it.
//!
//! ```text
//! normalise → find batch commands → classify → policy → confirm (person / flags) or plan
//!           → idempotency → write budget → audit (intent) → send → audit (outcome)
//!           → settle, when the answer was lost (see `settle.rs`)
//! ```
//!
//! There is one entry point per operation — [`Gate::call`], [`Gate::batch`], [`Gate::plan`],
//! [`Gate::apply`], [`Gate::export`] — and the CLI and the MCP server only parse arguments and
//! render what these return. A guard that lived in one front end could be missing from the
//! other; here it cannot. Every step fails closed: a name that does not normalise, a batch
//! whose commands cannot all be read, a policy that does not parse, an audit record that cannot
//! be written — each refuses the call before anything reaches the portal, and says why.

mod batch;
mod call;
mod confirm;
mod export;
mod params;
mod plan;
mod records;
mod send;
mod settle;

use std::path::PathBuf;
use std::sync::Arc;

use serde_json::{Value, json};
use tokio::sync::OnceCell;

pub use batch::BatchTally;
pub use batch::{BatchCommandSpec, BatchRequest, BatchRun};
pub use call::{Api, CallOutcome, CallRequest, strip_credentials};
pub use confirm::{Answer, NoPerson, Person};
pub use export::{ExportEnd, ExportRequest, ExportRun};
pub use plan::{ApplyRequest, PlanRequest, Planned};
pub use settle::SettleReport;

use crate::GuardError;
use crate::audit::AuditLog;
use crate::batch_cmds::UnreadableBatch;
use crate::catalog::{Catalog, Risk};
use crate::method::MalformedMethod;
use crate::policy::{Policy, Refusal};
use crate::sources::Resolved;

/// Which front end asked (recorded in the audit log; MCP can ask a person).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Origin {
    #[default]
    Cli,
    Mcp,
}

impl Origin {
    pub fn as_str(self) -> &'static str {
        match self {
            Origin::Cli => "cli",
            Origin::Mcp => "mcp",
        }
    }
}

/// Why the gate did not (or could not) complete a call.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum GateError {
    /// The policy (or a missing confirmation) refuses the call; nothing was sent.
    #[error("{0}")]
    Refused(Box<Refusal>),
    /// The method name is not a method name; nothing was sent.
    #[error(transparent)]
    Malformed(#[from] MalformedMethod),
    /// A batch whose commands could not all be read; nothing was sent.
    #[error(transparent)]
    Unreadable(#[from] UnreadableBatch),
    /// The request itself is wrong (bad batch references, bad arguments); nothing was sent.
    #[error("{0}")]
    Invalid(String),
    /// The policy could not be read; every call is refused until it is fixed.
    #[error("{0}")]
    Policy(#[source] GuardError),
    /// The audit record could not be written, so the call was not sent.
    #[error("the call was not sent because its audit record could not be written: {0}")]
    Audit(#[source] GuardError),
    /// The guard's own store (plans, idempotency records, write counter) failed.
    #[error("{0}")]
    Store(#[source] GuardError),
    /// No usable portal configuration.
    #[error("{0}")]
    Config(String),
    /// The portal call itself failed (after the gate let it through).
    #[error(transparent)]
    Client(#[from] b24::Error),
}

impl GateError {
    /// The refusal, when this is one.
    pub fn refusal(&self) -> Option<&Refusal> {
        match self {
            GateError::Refused(r) => Some(r),
            _ => None,
        }
    }
}

impl From<Refusal> for GateError {
    fn from(r: Refusal) -> GateError {
        GateError::Refused(Box::new(r))
    }
}

/// Asked before each use of the portal's client: `Err(why)` refuses the call with nothing
/// sent (see [`PortalSlot::with_still_allowed`]).
pub type StillAllowed =
    Arc<dyn Fn() -> futures::future::BoxFuture<'static, Result<(), String>> + Send + Sync>;

/// The portal side of a gate: its configuration and a lazily built client.
#[derive(Clone)]
pub struct PortalSlot {
    config: Result<b24::Config, String>,
    cell: Arc<OnceCell<b24::Client>>,
    /// The cluster store, when `B24_STORE_URL` names PostgreSQL (the write budget lives there).
    pg: Arc<OnceCell<b24::pg::PgStore>>,
    still_allowed: Option<StillAllowed>,
}

impl PortalSlot {
    /// `config` is the resolved portal configuration, or why there is none; `cell` lets a
    /// front end share one client (and its in-process limiter) with other commands.
    pub fn new(
        config: Result<b24::Config, String>,
        cell: Arc<OnceCell<b24::Client>>,
    ) -> PortalSlot {
        PortalSlot {
            config,
            cell,
            pg: Arc::new(OnceCell::new()),
            still_allowed: None,
        }
    }

    /// A check made before every use of the client. A shared client lives as long as its
    /// process and holds its access token in memory; a portal the operator forgot
    /// (`b24 portals remove`) or that removed the app must stop being called at once by a
    /// long-running server too, not when that token expires.
    pub fn with_still_allowed(mut self, check: StillAllowed) -> PortalSlot {
        self.still_allowed = Some(check);
        self
    }

    /// Share one cluster-store pool with other gates of the process (a long-running server
    /// builds a gate per request; connecting and migrating each time would be waste).
    pub fn with_pg_cell(mut self, cell: Arc<OnceCell<b24::pg::PgStore>>) -> PortalSlot {
        self.pg = cell;
        self
    }

    /// The PostgreSQL store shared by a cluster, if one is configured.
    pub(super) async fn pg(&self) -> Result<Option<b24::pg::PgStore>, GateError> {
        use secrecy::ExposeSecret;
        let Ok(cfg) = &self.config else {
            return Ok(None);
        };
        let Some(url) = &cfg.store_url else {
            return Ok(None);
        };
        let url = url.expose_secret();
        if b24::config::store_kind(url)? != b24::config::StoreKind::Postgres {
            return Ok(None);
        }
        self.pg
            .get_or_try_init(|| b24::pg::PgStore::shared(url))
            .await
            .cloned()
            .map(Some)
            .map_err(GateError::Client)
    }

    /// The portal identity the guard's records are bound to (empty when none is configured).
    pub fn portal(&self) -> &str {
        self.config
            .as_ref()
            .map(|c| c.portal.as_str())
            .unwrap_or("")
    }

    fn secrets(&self) -> Vec<String> {
        self.config
            .as_ref()
            .map(|c| c.secrets())
            .unwrap_or_default()
    }

    /// What a dry run shows as the endpoint (never a secret).
    fn endpoint(&self, method: &str, api: Api) -> String {
        match &self.config {
            Ok(c) => {
                let prefix = if api == Api::V3 { "rest/api" } else { "rest" };
                match &c.auth {
                    b24::config::Auth::Webhook { user_id, .. } => {
                        format!("{}/{prefix}/{user_id}/[webhook code]/{method}", c.base_url)
                    }
                    b24::config::Auth::OAuth { .. } => {
                        format!("{}/{prefix}/{method} (auth=[access token])", c.base_url)
                    }
                }
            }
            Err(_) => "(no portal configured)".into(),
        }
    }

    async fn client(&self) -> Result<b24::Client, GateError> {
        let cfg = self
            .config
            .as_ref()
            .map_err(|e| GateError::Config(e.clone()))?;
        if let Some(check) = &self.still_allowed {
            check()
                .await
                .map_err(|why| GateError::Client(b24::Error::auth(why)))?;
        }
        self.cell
            .get_or_try_init(|| async {
                b24::auth::ensure_private_dir(&cfg.state_dir)?;
                b24::Client::new(cfg.clone()).await
            })
            .await
            .cloned()
            .map_err(GateError::Client)
    }
}

/// Where the gate's audit log lives in a guard directory (`b24 audit` reads the same file).
pub fn audit_path(guard_dir: &std::path::Path) -> PathBuf {
    guard_dir.join("audit.jsonl")
}

/// Policy, catalog, records and the portal: everything a guarded call needs.
pub struct Gate {
    policy: Policy,
    catalog: &'static Catalog,
    guard_dir: PathBuf,
    audit: AuditLog,
    portal: PortalSlot,
    origin: Origin,
    secrets: Vec<String>,
    /// The authenticated MCP client (`b24 mcp --http`), if any: named in every audit record,
    /// and its writes counted in a budget of its own.
    client: Option<String>,
}

impl std::fmt::Debug for Gate {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Gate")
            .field("origin", &self.origin)
            .field("guard_dir", &self.guard_dir)
            .field("portal", &self.portal.portal())
            .finish_non_exhaustive()
    }
}

impl Gate {
    /// A gate over a resolved policy (see [`crate::sources::resolve`]).
    pub fn new(resolved: Resolved, portal: PortalSlot, origin: Origin) -> Gate {
        let secrets = portal.secrets();
        crate::redact::remember(secrets.iter().cloned());
        let audit = AuditLog::new(audit_path(&resolved.guard_dir));
        Gate {
            policy: resolved.policy,
            catalog: Catalog::builtin(),
            guard_dir: resolved.guard_dir,
            audit,
            portal,
            origin,
            secrets,
            client: None,
        }
    }

    /// The same gate acting for an authenticated MCP client (see [`crate::clients`]): the
    /// audit records name it and its writes are counted in its own hourly budget. The client's
    /// policy layer is added to the resolved policy before the gate is built.
    pub fn with_client(mut self, name: &str) -> Gate {
        self.client = Some(name.to_string());
        self
    }

    /// The MCP client this gate acts for.
    pub fn client_name(&self) -> Option<&str> {
        self.client.as_deref()
    }

    pub fn policy(&self) -> &Policy {
        &self.policy
    }

    pub fn catalog(&self) -> &'static Catalog {
        self.catalog
    }

    pub fn audit_log(&self) -> &AuditLog {
        &self.audit
    }

    /// Where plans, idempotency records and the write counter live.
    pub fn guard_dir(&self) -> &std::path::Path {
        &self.guard_dir
    }

    pub fn origin(&self) -> Origin {
        self.origin
    }

    /// The client, for front-end work that is not a guarded call (doctor, events tooling).
    pub async fn client(&self) -> Result<b24::Client, GateError> {
        self.portal.client().await
    }

    /// Redact a value with this gate's secrets (and the shapes of credentials).
    pub fn redact(&self, v: &Value) -> Value {
        crate::redact::redact(v, &self.secrets)
    }

    /// Redact a message.
    pub fn redact_text(&self, s: &str) -> String {
        crate::redact::redact_text(s, &self.secrets)
    }

    /// Unknown methods get a refusal that says so and suggests catalog names.
    fn explain_unknown(&self, mut r: Refusal) -> Refusal {
        if self.catalog.get(&r.method).is_none() && r.method != "batch" {
            let names = self.catalog.suggest(&r.method, 3);
            if !r.reason.contains("unknown") {
                r.reason = format!(
                    "{} is an unknown method (not in the catalog of documented methods), so it is treated as destructive; {}",
                    r.method, r.reason
                );
            }
            if !names.is_empty() {
                r.fix = format!("did you mean {}? {}", names.join(", "), r.fix);
            }
            r.fix = format!("{} (search: `b24 methods --search {}`)", r.fix, r.method);
        }
        r
    }

    /// Record a refusal and return it as an error. Refusals are recorded best-effort: the
    /// call is refused whether or not the record could be written.
    fn refuse(&self, r: Refusal, params: &Value, extra: Vec<(&str, Value)>) -> GateError {
        let r = self.explain_unknown(r);
        let mut f = vec![
            ("risk", json!(r.risk.map(|x| x.as_str()))),
            ("decision", json!("deny")),
            ("reason", json!(r.reason)),
            ("fix", json!(r.fix)),
            ("operator_locked", json!(r.operator_locked)),
            ("params", self.audit_params(params)),
        ];
        f.extend(extra);
        let _ = self.record(&r.method, f);
        GateError::Refused(Box::new(r))
    }

    fn refusal(
        &self,
        method: &str,
        risk: Option<Risk>,
        reason: impl Into<String>,
        fix: impl Into<String>,
        locked: bool,
    ) -> Refusal {
        Refusal {
            method: method.to_string(),
            risk,
            reason: reason.into(),
            fix: fix.into(),
            operator_locked: locked,
        }
    }
}
