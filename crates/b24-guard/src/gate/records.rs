//! The gate's records: the audit log, the store of plans and idempotency records, and the
//! write budget. Kept in one place so the rules about them are in one place: a call whose
//! record cannot be written is not sent, and the budget is taken in the same step it is checked.

use serde_json::{Map, Value, json};

use super::{Gate, GateError};
use crate::catalog::Risk;
use crate::policy::AuditParams;
use crate::store::GuardStore;

impl Gate {
    /// Open the guard store in the guard dir (created 0700).
    pub(super) fn store(&self) -> Result<GuardStore, GateError> {
        self.store_for(self.portal.portal())
    }

    /// Whose plans these are: the portal, and for an MCP client the client too — so one
    /// client cannot apply (or be shown) a plan another client recorded.
    pub(super) fn plan_owner(&self) -> String {
        match &self.client {
            Some(c) => format!("{}#mcp:{c}", self.portal.portal()),
            None => self.portal.portal().to_string(),
        }
    }

    /// The guard store as the plans of [`Gate::plan_owner`] see it.
    pub(super) fn plan_store(&self) -> Result<GuardStore, GateError> {
        self.store_for(&self.plan_owner())
    }

    fn store_for(&self, owner: &str) -> Result<GuardStore, GateError> {
        b24::auth::ensure_private_dir(&self.guard_dir).map_err(|e| {
            GateError::Store(crate::GuardError::Io {
                path: self.guard_dir.display().to_string(),
                reason: e.to_string(),
            })
        })?;
        // Bound to the portal: plans and idempotency records of another portal are refused.
        GuardStore::open_for_portal(&self.guard_dir, owner).map_err(GateError::Store)
    }

    /// Whether the audit log can take a record now (its directory and file open for
    /// appending); checked before a read is sent.
    pub(super) fn audit_ready(&self) -> Result<(), GateError> {
        let io = |e: std::io::Error| {
            GateError::Audit(crate::GuardError::Io {
                path: self.audit.path().display().to_string(),
                reason: e.to_string(),
            })
        };
        b24::auth::ensure_private_dir(&self.guard_dir).map_err(|e| {
            GateError::Audit(crate::GuardError::Io {
                path: self.guard_dir.display().to_string(),
                reason: e.to_string(),
            })
        })?;
        let f = std::fs::OpenOptions::new()
            .append(true)
            .create(true)
            .open(self.audit.path())
            .map_err(io)?;
        if !f.metadata().map_err(io)?.is_file() {
            return Err(io(std::io::Error::other("not a regular file")));
        }
        Ok(())
    }

    /// Append an audit record (the common fields are filled in here). An error means the
    /// record is not on disk: the caller must not send.
    pub(super) fn record(&self, method: &str, fields: Vec<(&str, Value)>) -> Result<(), GateError> {
        if let Err(e) = b24::auth::ensure_private_dir(&self.guard_dir) {
            return Err(GateError::Audit(crate::GuardError::Io {
                path: self.guard_dir.display().to_string(),
                reason: e.to_string(),
            }));
        }
        let mut m = Map::new();
        m.insert(
            "request_id".into(),
            json!(uuid::Uuid::now_v7().simple().to_string()),
        );
        m.insert("portal".into(), json!(self.portal.portal()));
        m.insert("origin".into(), json!(self.origin.as_str()));
        if let Some(c) = &self.client {
            m.insert("client".into(), json!(c));
        }
        m.insert("method".into(), json!(method));
        let full = self.policy.audit_params() == AuditParams::Full;
        for (k, v) in fields {
            // A refusal's fix quotes the call (`b24 plan M --params '…'`): the params stay out
            // of the log unless the operator asked for them.
            let v = match (&v, full) {
                (Value::String(s), false) if k == "fix" || k == "reason" => json!(mask_params(s)),
                _ => v,
            };
            m.insert(k.to_string(), v);
        }
        // Whatever a field holds, secrets never reach the log.
        let Value::Object(m) = self.redact(&Value::Object(m)) else {
            // Cannot happen (redaction keeps the shape); if it did, nothing would be recorded,
            // so the call must not go on.
            return Err(GateError::Audit(crate::GuardError::Store(
                "the audit record lost its shape in redaction".into(),
            )));
        };
        self.audit.append(m).map(|_| ()).map_err(GateError::Audit)
    }

    /// The params as the audit log keeps them: names and digests of the values by default,
    /// the (redacted) params themselves when the operator asks for them.
    pub(super) fn audit_params(&self, params: &Value) -> Value {
        let mode = match self.policy.audit_params() {
            AuditParams::Full => crate::audit::ParamsMode::Full,
            AuditParams::Keys => crate::audit::ParamsMode::KeysAndDigests,
        };
        // Keyed digests (the guard key), so values cannot be guessed back from the log; if
        // the key cannot be read, only the names are kept.
        self.audit
            .params_entry(params, mode, &self.secrets)
            .unwrap_or_else(|_| keys_only(params))
    }

    /// Take `n` writes from the hourly budget, or refuse. Check and count are one transaction
    /// in the store, so parallel writers cannot all pass a check that only one should.
    pub(super) async fn take_write(
        &self,
        store: &GuardStore,
        method: &str,
        risk: Risk,
        params: &Value,
        n: u32,
    ) -> Result<(), GateError> {
        let Some(max) = self.policy.max_writes_per_hour() else {
            return Ok(());
        };
        // A cluster (B24_STORE_URL=postgres://…) shares one budget per portal in the database;
        // one host counts in its guard store. An MCP client's writes have a budget of their own;
        // every write also counts in a total that the operator's budget caps, so that the CLI
        // and N clients together cannot write more than the operator allows.
        let budget = self
            .client
            .as_deref()
            .map(|c| format!("mcp:{c}"))
            .unwrap_or_default();
        let total = self.policy.operator_max_writes_per_hour();
        let taken = match self.portal.pg().await? {
            Some(pg) => {
                let portal = self.portal.portal().to_string();
                let key = if budget.is_empty() {
                    portal.clone()
                } else {
                    format!("{portal}#{budget}")
                };
                // Two keys are two statements: a write the total refuses has still been
                // counted in the client's own budget (it errs towards fewer writes).
                pg.try_take_writes(&key, n, max)
                    .await
                    .map_err(GateError::Client)?
                    && match total {
                        Some(t) => pg
                            .try_take_writes(&format!("{portal}#total"), n, t)
                            .await
                            .map_err(GateError::Client)?,
                        None => true,
                    }
            }
            None => {
                let mut budgets = vec![(budget.as_str(), max)];
                if let Some(t) = total {
                    budgets.push(("total", t));
                }
                store
                    .try_take_writes_in(&budgets, n)
                    .map_err(GateError::Store)?
            }
        };
        if taken {
            return Ok(());
        }
        let r = self.refusal(
            method,
            Some(risk),
            format!("the write budget of {max} per hour does not cover {n} more write(s)"),
            "wait for the hour to roll over, or ask the operator to raise max_writes_per_hour",
            self.policy.max_writes_locked(),
        );
        Err(self.refuse(r, params, vec![]))
    }
}

/// Parameter names only (when no keyed digest can be made).
pub fn keys_only(params: &Value) -> Value {
    match params {
        Value::Object(o) => json!({"keys": o.keys().collect::<Vec<_>>()}),
        _ => json!({"keys": []}),
    }
}

/// Replace the params quoted in a fix (`--params '…'` up to the closing `'` and backtick) by
/// `…`.
pub fn mask_params(s: &str) -> String {
    const OPEN: &str = "--params '";
    let mut out = String::with_capacity(s.len());
    let mut rest = s;
    while let Some(i) = rest.find(OPEN) {
        let (head, tail) = rest.split_at(i + OPEN.len());
        out.push_str(head);
        out.push('…');
        rest = match tail.find("'`") {
            Some(j) => &tail[j..],
            None => "",
        };
    }
    out.push_str(rest);
    out
}
