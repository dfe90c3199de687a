//! [`Gate::call`]: one REST call (a raw `batch` call included) through every gate.

use serde_json::{Value, json};

use super::confirm::{Confirmed, Person};
use super::{Gate, GateError};
use crate::batch_cmds;
use crate::catalog::Risk;
use crate::method::{MethodName, normalise};
use crate::policy::CallCheck;
use crate::store::call_hash;

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

    pub fn parse(s: &str) -> Api {
        if s.eq_ignore_ascii_case("v3") {
            Api::V3
        } else {
            Api::V2
        }
    }
}

/// One call as a front end asks for it (the method exactly as the caller spelled it).
#[derive(Debug, Clone, Default)]
pub struct CallRequest {
    pub method: String,
    pub params: Value,
    pub api: Api,
    pub confirm_write: bool,
    pub confirm_destructive: bool,
    pub dry_run: bool,
    /// Record this write under a key: repeating it returns the recorded result.
    pub idempotency_key: Option<String>,
    /// Derive the idempotency key from method + params.
    pub idempotent: bool,
    /// Refuse anything but a read (read-only tools).
    pub reads_only: bool,
}

/// What a call came to.
#[derive(Debug, Clone)]
#[allow(clippy::large_enum_variant)] // one per call, consumed at once
pub enum CallOutcome {
    /// Sent (or answered from the idempotency store when `replayed`).
    Done {
        response: b24::Response,
        replayed: bool,
    },
    /// `dry_run`: what would have been sent (method, risk, endpoint without secrets, params).
    DryRun(Value),
}

/// Credentials never travel in params: b24 adds them itself, and plans, idempotency records and
/// the audit log must never hold them. Returns whether any were removed.
pub fn strip_credentials(params: &mut Value) -> bool {
    let Some(o) = params.as_object_mut() else {
        return false;
    };
    let before = o.len();
    o.retain(|k, _| {
        !matches!(
            k.trim().to_ascii_lowercase().as_str(),
            "auth" | "access_token" | "refresh_token" | "client_secret" | "auth_id" | "refresh_id"
        )
    });
    o.len() != before
}

/// A call after normalisation: the checks it must pass.
pub(super) struct Checked {
    pub method: MethodName,
    /// (method, params) of each thing the policy decides on: the call, or each batch command.
    pub parts: Vec<(MethodName, Value)>,
}

impl Gate {
    /// Normalise the method and find what the policy must decide on. A malformed name or an
    /// unreadable batch is recorded and refused.
    pub(super) fn prepare(&self, raw: &str, params: &Value) -> Result<Checked, GateError> {
        let method = match normalise(raw) {
            Ok(m) => m,
            Err(e) => {
                let shown = self.redact_text(&format!("{raw:?}"));
                let _ = self.record(
                    &shown,
                    vec![
                        ("decision", json!("malformed")),
                        ("reason", json!(e.to_string())),
                    ],
                );
                return Err(e.into());
            }
        };
        let parts = if method.is_batch() {
            match batch_cmds::parse(params) {
                Ok(b) => b
                    .commands
                    .into_iter()
                    .map(|c| (c.method, c.params))
                    .collect(),
                Err(e) => {
                    let _ = self.record(
                        "batch",
                        vec![
                            ("decision", json!("unreadable")),
                            ("reason", json!(e.to_string())),
                            ("params", self.audit_params(params)),
                        ],
                    );
                    return Err(e.into());
                }
            }
        } else {
            vec![(method.clone(), params.clone())]
        };
        self.check_spellings(&parts, params)?;
        self.check_params(&parts, params)?;
        Ok(Checked { method, parts })
    }

    /// Run the policy over every part with the given confirmations; the highest risk.
    pub(super) fn decide(
        &self,
        c: &Checked,
        conf: Confirmed,
        via_plan: bool,
        no_send: bool,
        params: &Value,
    ) -> Result<Risk, GateError> {
        if c.method.is_batch()
            && let Err(r) = self.policy.check_deny("batch")
        {
            return Err(self.refuse(r, params, vec![]));
        }
        let mut worst = Risk::Read;
        for (m, p) in &c.parts {
            let check = CallCheck {
                method: m.as_str(),
                params: Some(p),
                confirm_write: conf.write,
                confirm_destructive: conf.destructive,
                via_plan,
                no_send,
            };
            match self.policy.check(self.catalog, &check) {
                Ok(r) => worst = worst.max(r),
                Err(r) => {
                    let r = if c.method.is_batch() {
                        let mut r = self.explain_unknown(r);
                        r.reason = format!("batch command {}: {}", r.method, r.reason);
                        r.method = "batch".into();
                        r
                    } else {
                        r
                    };
                    return Err(self.refuse(r, params, vec![]));
                }
            }
        }
        Ok(worst)
    }

    /// The checks of `c` as the confirmation step wants them.
    pub(super) fn checks<'a>(c: &'a Checked, via_plan: bool) -> Vec<CallCheck<'a>> {
        c.parts
            .iter()
            .map(|(m, p)| CallCheck {
                method: m.as_str(),
                params: Some(p),
                via_plan,
                ..Default::default()
            })
            .collect()
    }

    /// Run one call through every gate.
    pub async fn call(
        &self,
        mut req: CallRequest,
        person: &dyn Person,
    ) -> Result<CallOutcome, GateError> {
        strip_credentials(&mut req.params);
        let checked = self.prepare(&req.method, &req.params)?;
        if req.reads_only {
            self.require_reads(&checked, &req.params)?;
        }
        let flags = Confirmed {
            write: req.confirm_write,
            destructive: req.confirm_destructive,
            by_person: false,
        };
        let conf = if req.dry_run {
            flags
        } else {
            let shown = self.redact(&req.params);
            let m = checked.method.to_string();
            self.settle_confirmation(
                &Self::checks(&checked, false),
                flags,
                person,
                || format!("Run {m} with params {shown}?"),
                checked.method.as_str(),
            )
            .await?
        };
        let risk = self.decide(&checked, conf, false, req.dry_run, &req.params)?;
        if req.dry_run {
            // Would the same call, sent, pass the policy with the confirmations given?
            let passes = checked.parts.iter().all(|(m, p)| {
                let c = CallCheck {
                    method: m.as_str(),
                    params: Some(p),
                    confirm_write: conf.write,
                    confirm_destructive: conf.destructive,
                    via_plan: false,
                    no_send: false,
                };
                self.policy.check(self.catalog, &c).is_ok()
            });
            let mut out = self.dry_run(&checked.method, risk, req.api, &req.params)?;
            if let CallOutcome::DryRun(v) = &mut out {
                v["would_pass"] = json!(passes);
            }
            return Ok(out);
        }
        let key = match (&req.idempotency_key, req.idempotent) {
            (Some(k), _) => {
                let k = k.trim();
                // Plans are applied under `plan-ID` keys (see `Gate::plan_key`): a caller's key
                // spelled so could pre-empt a plan (its apply refused) or be replayed as the
                // plan's result without anything being sent.
                if k.starts_with("plan-") {
                    return Err(GateError::Invalid(format!(
                        "idempotency key {k:?}: keys starting with `plan-` are reserved for applying plans; choose another key"
                    )));
                }
                // Keys b24 makes for keyless writes (`b24-` + a UUIDv7) are pruned a week after
                // they are done (`store::idempotency`); a caller's key of that shape would be
                // pruned too, and a later retry sent again. Any case: a prefix read either way
                // by another tool must not be half-reserved.
                if k.get(..4).is_some_and(|p| p.eq_ignore_ascii_case("b24-")) {
                    return Err(GateError::Invalid(format!(
                        "idempotency key {k:?}: keys starting with `b24-` are reserved for keys b24 makes itself; choose another key"
                    )));
                }
                Some(k.to_string()).filter(|k| !k.is_empty())
            }
            (None, true) => Some(format!(
                "auto-{}",
                &call_hash(checked.method.as_str(), &req.params)[..32]
            )),
            _ => None,
        };
        // An MCP client's keys are its own: another client choosing the same key neither
        // replays this client's answer nor collides with it.
        let key = match (&self.client, key) {
            (Some(c), Some(k)) => Some(format!("mcp:{c}:{k}")),
            // Those are an MCP client's keys as stored: a caller outside HTTP MCP (the CLI,
            // stdio MCP) giving `mcp:reader:retry-1` would take reader's record — its answer
            // replayed as the caller's, or its write pre-empted and replayed to reader.
            (None, Some(k)) if k.starts_with("mcp:") => {
                return Err(GateError::Invalid(format!(
                    "idempotency key {k:?}: keys starting with `mcp:` are reserved for MCP clients over HTTP; choose another key"
                )));
            }
            (_, k) => k,
        };
        let writes = self.write_count(&checked);
        self.send(
            &checked.method,
            risk,
            req.api,
            req.params,
            key,
            None,
            conf,
            writes,
        )
        .await
    }

    /// A parameter spelled two ways (`clear` and `CLEAR`) could be read one way by the gate and
    /// the other way by the portal — and some decide the risk. Refuse the ambiguity.
    pub(super) fn check_spellings(
        &self,
        parts: &[(MethodName, Value)],
        params: &Value,
    ) -> Result<(), GateError> {
        for (m, p) in parts {
            if let Some((a, b)) = twice_spelled(p) {
                let r = self.refusal(
                    m.as_str(),
                    None,
                    format!("the parameter `{a}` is given twice, also as `{b}`; the portal might read either"),
                    "give each parameter once, in one spelling",
                    false,
                );
                return Err(self.refuse(r, params, vec![]));
            }
        }
        Ok(())
    }

    /// How many writes a call takes from the hourly budget: each writing command of a batch.
    pub(super) fn write_count(&self, c: &Checked) -> u32 {
        let n = c
            .parts
            .iter()
            .filter(|(m, p)| self.catalog.is_write(m.as_str(), p))
            .count();
        u32::try_from(n).unwrap_or(u32::MAX).max(1)
    }

    /// Refuse anything that is not a plain read (read-only tools, exports).
    pub(super) fn require_reads(&self, c: &Checked, params: &Value) -> Result<(), GateError> {
        if c.method.is_batch() {
            let r = self.refusal(
                "batch",
                None,
                "a batch is not a read-only method here",
                "send batches through the batch command or tool, where every command is checked",
                false,
            );
            return Err(self.refuse(r, params, vec![]));
        }
        let risk = self.catalog.effective_risk(c.method.as_str(), params);
        if risk != Some(Risk::Read) {
            let reason = match risk {
                None => format!(
                    "{} is an unknown method, so it cannot be known to be read-only",
                    c.method
                ),
                Some(r) => format!(
                    "{} is a {r} method and only reads are accepted here",
                    c.method
                ),
            };
            let conf = if risk == Some(Risk::Read)
                || risk == Some(Risk::Write)
                || risk == Some(Risk::Admin)
            {
                "--confirm-write"
            } else {
                "--confirm-destructive"
            };
            let fix = format!(
                "record it with `b24 plan {} --params '{params}'` then `b24 apply <plan id> {conf}`, or send it as a write (`b24 call` / b24_write) with {conf}",
                c.method
            );
            let r = self.refusal(c.method.as_str(), risk, reason, fix, false);
            return Err(self.refuse(r, params, vec![]));
        }
        Ok(())
    }

    fn dry_run(
        &self,
        method: &MethodName,
        risk: Risk,
        api: Api,
        params: &Value,
    ) -> Result<CallOutcome, GateError> {
        let needs = match risk {
            Risk::Read => None,
            Risk::Destructive => Some("--confirm-destructive"),
            _ => Some("--confirm-write"),
        };
        self.record(
            method.as_str(),
            vec![
                ("risk", json!(risk)),
                ("decision", json!("dry_run")),
                ("params", self.audit_params(params)),
            ],
        )?;
        Ok(CallOutcome::DryRun(json!({
            "dry_run": true,
            "method": method,
            "risk": risk,
            "api": api.as_str(),
            "endpoint": self.portal.endpoint(method.as_str(), api),
            "params": self.redact(params),
            "needs": needs,
            "sent": false,
        })))
    }
}

impl Gate {
    /// Authorise the calls a long-running service (the offline worker) will make on its own
    /// for as long as it runs. Starting the service is the operator's confirmation, so
    /// confirmations count as given — but deny rules, packs, read-only and every other
    /// restriction apply, and the decision is recorded. A read-only policy therefore keeps the
    /// worker from draining the portal's offline queue.
    pub fn authorize_standing(
        &self,
        service: &str,
        calls: &[(&str, Value)],
    ) -> Result<Risk, GateError> {
        let mut worst = Risk::Read;
        for (m, params) in calls {
            let method = normalise(m)?;
            let check = CallCheck {
                method: method.as_str(),
                params: Some(params),
                confirm_write: true,
                confirm_destructive: true,
                via_plan: false,
                no_send: false,
            };
            match self.policy.check(self.catalog, &check) {
                Ok(r) => worst = worst.max(r),
                Err(mut r) => {
                    r.reason = format!("{service} needs {}: {}", r.method, r.reason);
                    return Err(self.refuse(r, params, vec![("service", json!(service))]));
                }
            }
        }
        self.record(
            service,
            vec![
                ("risk", json!(worst)),
                ("decision", json!("allow")),
                ("outcome", json!("service started")),
            ],
        )?;
        Ok(worst)
    }
}

/// Two top-level keys of `params` that differ only in case (or surrounding blanks).
fn twice_spelled(params: &Value) -> Option<(String, String)> {
    let o = params.as_object()?;
    let mut seen: std::collections::HashMap<String, &str> = std::collections::HashMap::new();
    for k in o.keys() {
        let norm = k.trim().to_ascii_lowercase();
        if let Some(first) = seen.insert(norm, k) {
            return Some((first.to_string(), k.clone()));
        }
    }
    None
}
