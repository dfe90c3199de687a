//! Guarded execution of one REST call: the single path every command (call, apply, batch,
//! MCP tools) goes through, so that policy, confirmations, dry-run, idempotency and audit
//! can never be skipped by one front end.
//!
//! CONTRACT (other modules rely on it): `execute(g, spec) -> anyhow::Result<ExecOutcome>`.
//! Refusals are `crate::exit::Exit` errors with code `exit::POLICY` (4) and a message that
//! names the exact flag or plan that would allow the call.

#![allow(dead_code)] // parts are used only by some front ends (MCP)

use std::time::Instant;

use b24_guard::audit::AuditLog;
use b24_guard::policy::{CallCheck, Policy, PolicyFile};
use b24_guard::store::{GuardStore, KeyState, call_hash};
use b24_guard::{Catalog, Refusal, Risk};
use serde_json::{Map, Value, json};

use crate::exit::{self, Exit};
use crate::globals::Globals;

/// Which REST API a call goes to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Serialize)]
pub enum Api {
    #[default]
    V2,
    V3,
}

impl Api {
    pub fn as_str(self) -> &'static str {
        match self {
            Api::V2 => "v2",
            Api::V3 => "v3",
        }
    }
}

/// Who asked for the call (recorded in the audit log).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Serialize)]
pub enum Origin {
    #[default]
    Cli,
    Mcp,
}

impl Origin {
    fn as_str(self) -> &'static str {
        match self {
            Origin::Cli => "cli",
            Origin::Mcp => "mcp",
        }
    }
}

/// One call as requested by a front end.
#[derive(Debug, Clone, Default)]
pub struct CallSpec {
    pub method: String,
    pub params: Value,
    pub api: Api,
    pub confirm_write: bool,
    pub confirm_destructive: bool,
    pub dry_run: bool,
    /// `--idempotency-key K`.
    pub idempotency_key: Option<String>,
    /// `--idempotent`: derive the key from method + params.
    pub idempotent: bool,
    /// Set by `b24 apply`: the plan being applied (the store already claimed it).
    pub plan_id: Option<String>,
    pub origin: Origin,
}

/// What happened.
#[derive(Debug, Clone)]
#[allow(clippy::large_enum_variant)] // one per command, consumed at once
pub enum ExecOutcome {
    /// The call was sent (or answered from the idempotency store when `replayed` is true).
    Done {
        response: b24::Response,
        replayed: bool,
    },
    /// `--dry-run`: what would have been sent (method, risk, endpoint without secrets, params).
    DryRun(Value),
}

/// Policy, stores and audit for this process.
pub struct Guard {
    pub policy: Policy,
    pub catalog: &'static Catalog,
    pub audit: AuditLog,
    state_dir: std::path::PathBuf,
    secrets: Vec<String>,
    portal: String,
}

impl Guard {
    pub fn from_globals(g: &Globals) -> anyhow::Result<Guard> {
        let op_path = g.config_dir().join("policy.toml");
        let operator =
            PolicyFile::load(&op_path).map_err(|e| Exit::new(exit::USAGE, e.to_string()))?;
        let policy = Policy::new(
            operator,
            Some(op_path.display().to_string()),
            g.policy.agent(),
        );
        let state_dir = g.state_dir();
        let audit_path = std::env::var("B24_AUDIT_FILE")
            .map(std::path::PathBuf::from)
            .unwrap_or_else(|_| state_dir.join("audit.jsonl"));
        let cfg = g.config().ok();
        Ok(Guard {
            policy,
            catalog: Catalog::builtin(),
            audit: AuditLog::new(audit_path),
            state_dir,
            secrets: cfg.as_ref().map(|c| c.secrets()).unwrap_or_default(),
            portal: cfg.map(|c| c.portal).unwrap_or_default(),
        })
    }

    pub fn store(&self) -> anyhow::Result<GuardStore> {
        b24::auth::ensure_private_dir(&self.state_dir)
            .map_err(|e| Exit::new(exit::USAGE, e.to_string()))?;
        GuardStore::open(&self.state_dir).map_err(|e| Exit::new(exit::USAGE, e.to_string()))
    }

    pub fn redact(&self, v: &Value) -> Value {
        b24_guard::redact::redact(v, &self.secrets)
    }

    pub fn redact_text(&self, s: &str) -> String {
        b24_guard::redact::redact_text(s, &self.secrets)
    }

    /// Append an audit record; the common fields are filled in here.
    pub fn record(&self, origin: Origin, method: &str, fields: Vec<(&str, Value)>) {
        let mut m = Map::new();
        m.insert(
            "request_id".into(),
            json!(uuid::Uuid::now_v7().simple().to_string()),
        );
        m.insert("portal".into(), json!(self.portal));
        m.insert("origin".into(), json!(origin.as_str()));
        m.insert("method".into(), json!(method));
        for (k, v) in fields {
            m.insert(k.to_string(), v);
        }
        if let Err(e) = self.audit.append(m) {
            // Never fail a call because the audit log is unwritable, but say so loudly.
            eprintln!("b24: warning: could not write the audit log: {e}");
        }
    }

    /// Turn a refusal into an audit record and an exit-4 error.
    pub fn refuse(
        &self,
        origin: Origin,
        r: &Refusal,
        params: &Value,
        extra: Vec<(&str, Value)>,
    ) -> anyhow::Error {
        let mut f = vec![
            ("risk", json!(r.risk.map(|x| x.as_str()))),
            ("decision", json!("deny")),
            ("reason", json!(r.reason)),
            ("fix", json!(r.fix)),
            ("operator_locked", json!(r.operator_locked)),
            ("params", self.redact(params)),
        ];
        f.extend(extra);
        self.record(origin, &r.method, f);
        Exit::new(exit::POLICY, format!("{r}"))
    }
}

/// The methods of a batch's commands (`method?query` strings or `{method, params}` objects).
pub fn batch_methods(params: &Value) -> Vec<(String, Value)> {
    let cmd = params.get("cmd").or_else(|| params.get("CMD"));
    let items: Vec<&Value> = match cmd {
        Some(Value::Object(o)) => o.values().collect(),
        Some(Value::Array(a)) => a.iter().collect(),
        _ => vec![],
    };
    items
        .into_iter()
        .map(|v| match v {
            Value::String(s) => {
                let (m, q) = s.split_once('?').unwrap_or((s.as_str(), ""));
                let clear = q
                    .split('&')
                    .find_map(|kv| kv.strip_prefix("clear="))
                    .map(|c| json!(c));
                let p = clear.map(|c| json!({"clear": c})).unwrap_or(json!({}));
                (m.trim().to_ascii_lowercase(), p)
            }
            Value::Object(o) => (
                o.get("method")
                    .and_then(|m| m.as_str())
                    .unwrap_or("")
                    .to_ascii_lowercase(),
                o.get("params").cloned().unwrap_or(json!({})),
            ),
            _ => (String::new(), json!({})),
        })
        .collect()
}

fn endpoint(g: &Globals, method: &str, api: Api) -> String {
    match g.config() {
        Ok(c) => {
            let prefix = if api == Api::V3 { "rest/api" } else { "rest" };
            match c.auth {
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

/// Check a call against the policy; for `batch`, every command one by one.
fn check(guard: &Guard, spec: &CallSpec) -> Result<Risk, Refusal> {
    let m = spec.method.trim().to_ascii_lowercase();
    // Refusal messages quote the params: give the policy the redacted copy.
    let shown = guard.redact(&spec.params);
    let base = CallCheck {
        method: &m,
        params: Some(&shown),
        confirm_write: spec.confirm_write,
        confirm_destructive: spec.confirm_destructive,
        via_plan: spec.plan_id.is_some(),
        no_send: spec.dry_run,
    };
    if m != "batch" {
        return guard.policy.check(guard.catalog, &base);
    }
    let mut worst = Risk::Read;
    for (sub, p) in batch_methods(&shown) {
        if sub == "batch" {
            return Err(Refusal {
                method: m.clone(),
                risk: None,
                reason: "a batch may not contain a batch".into(),
                fix: "flatten the commands".into(),
                operator_locked: false,
            });
        }
        let r = guard
            .policy
            .check(
                guard.catalog,
                &CallCheck {
                    method: &sub,
                    params: Some(&p),
                    ..base.clone()
                },
            )
            .map_err(|mut r| {
                r.reason = format!("batch command {}: {}", r.method, r.reason);
                r.method = m.clone();
                r
            })?;
        worst = worst.max(r);
    }
    Ok(worst)
}

/// Credentials never travel in params: b24 adds them itself, and plans, idempotency records
/// and the audit log must never hold them. Top-level credential keys are dropped (with a note).
pub fn strip_credentials(params: &mut Value) {
    if let Some(o) = params.as_object_mut() {
        let before = o.len();
        o.retain(|k, _| {
            !matches!(
                k.to_ascii_lowercase().as_str(),
                "auth"
                    | "access_token"
                    | "refresh_token"
                    | "client_secret"
                    | "auth_id"
                    | "refresh_id"
            )
        });
        if o.len() != before {
            eprintln!(
                "b24: note: credential parameters were removed from params; b24 authenticates calls itself"
            );
        }
    }
}

/// Run one call through the gates.
pub async fn execute(g: &Globals, mut spec: CallSpec) -> anyhow::Result<ExecOutcome> {
    strip_credentials(&mut spec.params);
    let guard = Guard::from_globals(g)?;
    let method = spec.method.trim().to_string();
    let plan_field = ("plan_id", json!(spec.plan_id));
    let risk = match check(&guard, &spec) {
        Ok(r) => r,
        Err(r) => return Err(guard.refuse(spec.origin, &r, &spec.params, vec![plan_field])),
    };
    if spec.dry_run {
        let needs = match risk {
            Risk::Read => None,
            Risk::Destructive => Some("--confirm-destructive"),
            _ => Some("--confirm-write"),
        };
        let plan = json!({
            "dry_run": true,
            "method": method,
            "risk": risk,
            "api": spec.api.as_str(),
            "endpoint": endpoint(g, &method, spec.api),
            "params": guard.redact(&spec.params),
            "needs": needs,
            "sent": false,
        });
        guard.record(
            spec.origin,
            &method,
            vec![
                ("risk", json!(risk)),
                ("decision", json!("dry_run")),
                ("params", guard.redact(&spec.params)),
            ],
        );
        return Ok(ExecOutcome::DryRun(plan));
    }
    let is_write = risk != Risk::Read;
    let store = if is_write { Some(guard.store()?) } else { None };
    if let (Some(store), Some(max)) = (&store, guard.policy.max_writes_per_hour())
        && store
            .writes_last_hour()
            .map_err(|e| Exit::new(exit::USAGE, e.to_string()))?
            >= max as u64
    {
        let r = Refusal {
            method: method.clone(),
            risk: Some(risk),
            reason: format!("the write budget of {max} per hour is used up"),
            fix: "wait for the hour to roll over, or ask the operator to raise max_writes_per_hour"
                .into(),
            operator_locked: guard.policy.operator.max_writes_per_hour.is_some(),
        };
        return Err(guard.refuse(spec.origin, &r, &spec.params, vec![]));
    }
    let key = match (&spec.idempotency_key, spec.idempotent) {
        (Some(k), _) => Some(k.clone()),
        (None, true) => Some(format!("auto-{}", &call_hash(&method, &spec.params)[..32])),
        _ => None,
    };
    let key = key.filter(|_| is_write);
    if let (Some(k), Some(store)) = (&key, &store) {
        match store
            .begin_key(k, &method, &spec.params)
            .map_err(|e| Exit::new(exit::USAGE, e.to_string()))?
        {
            KeyState::New => {}
            KeyState::Done(raw) => {
                guard.record(
                    spec.origin,
                    &method,
                    vec![
                        ("risk", json!(risk)),
                        ("decision", json!("replayed")),
                        ("idempotency_key", json!(k)),
                        ("outcome", json!("ok")),
                    ],
                );
                let response = b24::Response {
                    result: raw.get("result").cloned().unwrap_or(Value::Null),
                    next: raw.get("next").and_then(|v| v.as_u64()),
                    total: raw.get("total").and_then(|v| v.as_u64()),
                    time: None,
                    raw,
                    replayed: true,
                };
                return Ok(ExecOutcome::Done {
                    response,
                    replayed: true,
                });
            }
            KeyState::InFlight | KeyState::Unknown => {
                let r = Refusal {
                    method: method.clone(),
                    risk: Some(risk),
                    reason: format!("idempotency key `{k}` belongs to a call whose outcome is not known (still running, or it failed ambiguously)"),
                    fix: "check the portal for the effect (e.g. list by ORIGIN_ID / title); if it did not happen, use a new --idempotency-key".into(),
                    operator_locked: false,
                };
                return Err(guard.refuse(
                    spec.origin,
                    &r,
                    &spec.params,
                    vec![("idempotency_key", json!(k))],
                ));
            }
            KeyState::Mismatch { method: other } => {
                let r = Refusal {
                    method: method.clone(),
                    risk: Some(risk),
                    reason: format!(
                        "idempotency key `{k}` was already used for a different call ({other})"
                    ),
                    fix: "use a new --idempotency-key for a different call".into(),
                    operator_locked: false,
                };
                return Err(guard.refuse(
                    spec.origin,
                    &r,
                    &spec.params,
                    vec![("idempotency_key", json!(k))],
                ));
            }
        }
    }
    if let Some(store) = &store {
        let _ = store.count_write();
    }
    let client = g.client().await?;
    let before = client.stats();
    let opts = b24::CallOptions {
        is_write: Some(is_write),
        idempotency_key: key.clone(),
        timeout: None,
    };
    let started = Instant::now();
    let res = match spec.api {
        Api::V2 => client.call_with(&method, spec.params.clone(), opts).await,
        Api::V3 => client.call_v3(&method, spec.params.clone(), opts).await,
    };
    let retries = client.stats().retries.saturating_sub(before.retries);
    let common = |outcome: &str, code: Option<String>| {
        vec![
            ("risk", json!(risk)),
            ("decision", json!("allow")),
            ("api", json!(spec.api.as_str())),
            ("params", guard.redact(&spec.params)),
            ("outcome", json!(outcome)),
            ("error_code", json!(code)),
            ("duration_ms", json!(started.elapsed().as_millis() as u64)),
            ("retries", json!(retries)),
            ("idempotency_key", json!(key)),
            ("plan_id", json!(spec.plan_id)),
        ]
    };
    match res {
        Ok(response) => {
            if let (Some(k), Some(store)) = (&key, &store) {
                let _ = store.key_done(k, &response.raw);
            }
            guard.record(spec.origin, &method, common("ok", None));
            Ok(ExecOutcome::Done {
                response,
                replayed: false,
            })
        }
        Err(e) => {
            let unknown = matches!(e, b24::Error::OutcomeUnknown { .. });
            if let (Some(k), Some(store)) = (&key, &store) {
                let _ = if unknown {
                    store.key_unknown(k)
                } else {
                    store.key_failed(k)
                };
            }
            let code = match &e {
                b24::Error::Api(a) => Some(a.code.clone()),
                _ => None,
            };
            guard.record(
                spec.origin,
                &method,
                common(if unknown { "unknown" } else { "error" }, code),
            );
            Err(e.into())
        }
    }
}

/// A batch as requested by a front end: every command is checked one by one, so that a batch
/// cannot smuggle a write or a destructive call past the gates.
#[derive(Debug, Clone, Default)]
pub struct BatchSpec {
    /// (key, method, params) of each command.
    pub commands: Vec<(String, String, Value)>,
    pub confirm_write: bool,
    pub confirm_destructive: bool,
    pub dry_run: bool,
    pub origin: Origin,
}

/// Counts a batch's per-command outcomes and renders each one, the same way for the CLI and
/// the MCP server.
#[derive(Debug, Default)]
pub struct BatchTally {
    pub ok: usize,
    pub failed: usize,
    pub skipped: usize,
    pub unknown: usize,
}

impl BatchTally {
    /// Count `o`; return its output line and its (result-free) audit record.
    pub fn add(&mut self, key: &str, o: &b24::batch::Outcome) -> (Value, Value) {
        use b24::batch::Outcome;
        let line = match o {
            Outcome::Ok {
                result,
                total,
                next,
            } => {
                self.ok += 1;
                let mut l = json!({"key": key, "status": "ok", "result": result});
                if let Some(t) = total {
                    l["total"] = json!(t);
                }
                if let Some(n) = next {
                    l["next"] = json!(n);
                }
                l
            }
            Outcome::Error { code, description } => {
                self.failed += 1;
                json!({"key": key, "status": "error", "error": {"code": code, "description": description}})
            }
            Outcome::NotExecuted { reason } => {
                self.skipped += 1;
                json!({"key": key, "status": "not_executed", "reason": reason})
            }
            Outcome::Unknown { reason } => {
                self.unknown += 1;
                json!({"key": key, "status": "unknown", "reason": reason})
            }
            #[allow(unreachable_patterns)]
            other => json!({"key": key, "status": other.status()}),
        };
        let audit = match o {
            Outcome::Error { code, .. } => json!({"key": key, "status": "error", "code": code}),
            other => json!({"key": key, "status": other.status()}),
        };
        (line, audit)
    }
}

/// Permission to run a batch; `finish` records the outcome in the audit log.
pub struct BatchPermit {
    guard: Guard,
    origin: Origin,
    risk: Risk,
    started: Instant,
}

impl std::fmt::Debug for BatchPermit {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("BatchPermit")
            .field("risk", &self.risk)
            .finish()
    }
}

impl BatchPermit {
    /// The highest risk among the commands.
    pub fn risk(&self) -> Risk {
        self.risk
    }

    /// Record the per-command outcomes (`ok` / `error CODE` / `not executed`) in the audit log.
    pub fn finish(self, outcomes: &Value) -> anyhow::Result<()> {
        self.guard.record(
            self.origin,
            "batch",
            vec![
                ("risk", json!(self.risk)),
                ("decision", json!("allow")),
                ("outcome", self.guard.redact(outcomes)),
                (
                    "duration_ms",
                    json!(self.started.elapsed().as_millis() as u64),
                ),
            ],
        );
        Ok(())
    }
}

/// Check every command of a batch against the policy before anything is sent.
pub async fn authorize_batch(g: &Globals, spec: &BatchSpec) -> anyhow::Result<BatchPermit> {
    let guard = Guard::from_globals(g)?;
    let mut worst = Risk::Read;
    for (key, method, params) in &spec.commands {
        let c = CallCheck {
            method,
            params: Some(params),
            confirm_write: spec.confirm_write,
            confirm_destructive: spec.confirm_destructive,
            via_plan: false,
            no_send: spec.dry_run,
        };
        match guard.policy.check(guard.catalog, &c) {
            Ok(r) => worst = worst.max(r),
            Err(mut r) => {
                r.reason = format!("batch command `{key}` ({}): {}", r.method, r.reason);
                let cmds: Vec<Value> = spec
                    .commands
                    .iter()
                    .map(|(k, m, _)| json!({"key": k, "method": m}))
                    .collect();
                return Err(guard.refuse(spec.origin, &r, &json!({"commands": cmds}), vec![]));
            }
        }
    }
    if worst != Risk::Read && !spec.dry_run {
        let store = guard.store()?;
        if let Some(max) = guard.policy.max_writes_per_hour()
            && store
                .writes_last_hour()
                .map_err(|e| Exit::new(exit::USAGE, e.to_string()))?
                >= max as u64
        {
            let r = Refusal {
                method: "batch".into(),
                risk: Some(worst),
                reason: format!("the write budget of {max} per hour is used up"),
                fix: "wait for the hour to roll over".into(),
                operator_locked: false,
            };
            return Err(guard.refuse(spec.origin, &r, &json!({}), vec![]));
        }
        let _ = store.count_write();
    }
    Ok(BatchPermit {
        guard,
        origin: spec.origin,
        risk: worst,
        started: Instant::now(),
    })
}

/// Check a call that will be recorded as a plan (nothing is sent now, so confirmations are
/// not needed yet; deny rules, packs, read-only and the operator's file still apply).
pub fn check_plan(guard: &Guard, method: &str, params: &Value) -> anyhow::Result<Risk> {
    let spec = CallSpec {
        method: method.to_string(),
        params: params.clone(),
        dry_run: true,
        ..Default::default()
    };
    check(guard, &spec)
        .map_err(|r| guard.refuse(Origin::Cli, &r, params, vec![("stage", json!("plan"))]))
}
