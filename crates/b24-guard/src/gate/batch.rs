//! [`Gate::batch`]: many commands, each checked on its own, sent 50 to a request.

use std::time::Instant;

use b24::batch::{Batch, Outcome};
use serde_json::{Value, json};

use super::call::{Api, Checked, strip_credentials};
use super::confirm::{Confirmed, Person};
use super::settle::{Pending, Settled};
use super::{Gate, GateError};
use crate::batch_cmds::query_params;
use crate::catalog::{Risk, SettleClass, stamp_spec};
use crate::method::{MethodName, normalise};
use crate::store::GuardStore;

/// One command as a front end received it.
#[derive(Debug, Clone, PartialEq)]
pub enum BatchCommandSpec {
    /// `{key, method, params}`.
    Params {
        key: String,
        method: String,
        params: Value,
    },
    /// `method?query`, already encoded.
    Text { key: String, text: String },
}

/// A batch as a front end asks for it.
#[derive(Debug, Clone, Default)]
pub struct BatchRequest {
    pub commands: Vec<BatchCommandSpec>,
    pub halt: bool,
    pub confirm_write: bool,
    pub confirm_destructive: bool,
    pub dry_run: bool,
}

/// What a batch came to.
#[derive(Debug)]
pub enum BatchRun {
    /// The commands as they would be sent, in execution order.
    DryRun(Vec<Value>),
    /// Every command's outcome, in input order.
    Done {
        results: Vec<(String, Outcome)>,
        risk: Risk,
        requests: u64,
        retries: u64,
    },
}

/// Counts a batch's per-command outcomes and renders each one, the same way for every front
/// end (and the result-free form the audit log keeps).
#[derive(Debug, Default, Clone, Copy)]
pub struct BatchTally {
    pub ok: usize,
    pub failed: usize,
    pub skipped: usize,
    pub unknown: usize,
}

impl BatchTally {
    /// Count `o`; return its output line and its (result-free) audit record.
    pub fn add(&mut self, key: &str, o: &Outcome) -> (Value, Value) {
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

impl Gate {
    /// Check every command, then run the batch.
    pub async fn batch(
        &self,
        req: BatchRequest,
        person: &dyn Person,
    ) -> Result<BatchRun, GateError> {
        let mut b = Batch::new();
        b.halt(req.halt);
        let mut parts = Vec::with_capacity(req.commands.len());
        let mut settles: Vec<CommandSettle> = Vec::new();
        let mut listing = Vec::with_capacity(req.commands.len());
        for c in &req.commands {
            let (key, raw_method, params, query) = match c {
                BatchCommandSpec::Params {
                    key,
                    method,
                    params,
                } => {
                    let mut p = params.clone();
                    strip_credentials(&mut p);
                    (key, method.as_str(), p, None)
                }
                BatchCommandSpec::Text { key, text } => {
                    let (m, q) = text.split_once('?').unwrap_or((text.as_str(), ""));
                    let mut p = query_params(q);
                    if strip_credentials(&mut p) {
                        return Err(GateError::Invalid(format!(
                            "command `{key}`: credentials in the query; b24 authenticates calls itself"
                        )));
                    }
                    (key, m, p, Some(q.to_string()))
                }
            };
            let method = match normalise(raw_method) {
                Ok(m) => m,
                Err(e) => {
                    let _ = self.record(
                        "batch",
                        vec![
                            ("decision", json!("malformed")),
                            ("reason", json!(format!("command `{key}`: {e}"))),
                        ],
                    );
                    return Err(e.into());
                }
            };
            if method.is_batch() {
                let r = self.refusal(
                    "batch",
                    None,
                    format!("command `{key}` is itself a batch"),
                    "flatten the commands",
                    false,
                );
                return Err(self.refuse(r, &json!({}), vec![]));
            }
            let is_write = self.catalog.is_write(method.as_str(), &params);
            let cmd = is_write.then(|| self.command_settle(key, &method, &params, query.is_some()));
            let sent = match &cmd {
                Some(c) => c.sent_params(&params),
                None => params.clone(),
            };
            let added = match &query {
                Some(q) if q.is_empty() => b.add_text(key, method.as_str()),
                Some(q) => b.add_text(key, &format!("{method}?{q}")),
                None => b.add(key, method.as_str(), sent),
            };
            added.map_err(|e| GateError::Invalid(e.to_string()))?;
            b.set_write(key, is_write);
            settles.extend(cmd);
            listing.push(json!({"key": key, "method": method}));
            parts.push((method, params));
        }
        if parts.is_empty() {
            return Err(GateError::Invalid("no commands given".into()));
        }
        let order = b.order().map_err(|e| GateError::Invalid(e.to_string()))?;
        self.check_spellings(&parts, &json!({"commands": listing}))?;
        self.check_params(&parts, &json!({"commands": listing}))?;
        let checked = Checked {
            method: MethodName::batch(),
            parts,
        };
        let shown = json!({"commands": listing});
        let flags = Confirmed {
            write: req.confirm_write,
            destructive: req.confirm_destructive,
            by_person: false,
        };
        let conf = if req.dry_run {
            flags
        } else {
            let names: Vec<String> = listing
                .iter()
                .map(|c| {
                    format!(
                        "{}: {}",
                        c["key"].as_str().unwrap_or(""),
                        c["method"].as_str().unwrap_or("")
                    )
                })
                .collect();
            self.settle_confirmation(
                &Self::checks(&checked, false),
                flags,
                person,
                || format!("Run a batch with these commands? {}", names.join(", ")),
                "batch",
            )
            .await?
        };
        let risk = self.decide(&checked, conf, false, req.dry_run, &shown)?;
        if req.dry_run {
            self.record(
                "batch",
                vec![
                    ("risk", json!(risk)),
                    ("decision", json!("dry_run")),
                    ("params", shown),
                ],
            )?;
            let cmds = b.commands();
            let lines = order
                .iter()
                .enumerate()
                .map(|(n, &i)| {
                    let c = &cmds[i];
                    json!({"key": c.key, "method": c.method, "command": c.text(), "write": c.is_write,
                           "position": n, "request_at_least": n / b24::batch::MAX_COMMANDS + 1})
                })
                .collect();
            return Ok(BatchRun::DryRun(lines));
        }
        let writes = b.commands().iter().filter(|c| c.is_write).count();
        let store = if writes > 0 {
            let store = self.store()?;
            let n = u32::try_from(writes).unwrap_or(u32::MAX);
            self.take_write(&store, "batch", risk, &shown, n).await?;
            // Each write's key, params and settle class are recorded before anything is sent
            // (one transaction for the whole batch).
            let metas: Vec<Value> = settles
                .iter()
                .map(|c| super::settle::meta(Api::V2, c.class, c.stamp.as_deref()))
                .collect();
            let rows: Vec<(&str, &str, &Value, &Value)> = settles
                .iter()
                .zip(&metas)
                .map(|(c, m)| (c.idempotency_key.as_str(), c.method.as_str(), &c.params, m))
                .collect();
            store.begin_many(&rows).map_err(GateError::Store)?;
            Some(store)
        } else {
            None
        };
        let plan: Vec<Value> = settles.iter().map(CommandSettle::to_json).collect();
        let client = self.portal.client().await?;
        let call_id = uuid::Uuid::now_v7().simple().to_string();
        self.record(
            "batch",
            vec![
                ("risk", json!(risk)),
                ("decision", json!("allow")),
                ("outcome", json!("sending")),
                ("call_id", json!(call_id)),
                ("params", shown),
                ("settle", Value::Array(plan)),
                ("confirmed_by_person", json!(conf.by_person)),
            ],
        )?;
        let before = client.stats();
        let started = Instant::now();
        // The keys are refreshed while the batch is out and while its unknown commands are
        // settled: a `b24 settle` elsewhere must not take a live batch's writes for a dead
        // one's and send them a second time.
        let _beat = match &store {
            Some(_) => Some(Heartbeat::start(
                self.store()?,
                settles.iter().map(|c| c.idempotency_key.clone()).collect(),
            )),
            None => None,
        };
        let mut results = b.run(&client).await;
        let mut settled = std::collections::HashSet::new();
        if let Some(store) = &store {
            // Known outcomes first, in one transaction; then each unknown one is settled.
            let wrapped: Vec<(String, Value)> = results
                .iter()
                .filter_map(|(k, o)| match o {
                    Outcome::Ok { result, .. } => Some((k.clone(), json!({"result": result}))),
                    _ => None,
                })
                .collect();
            let finished: Vec<(&str, Option<&Value>)> = results
                .iter()
                .filter(|(_, o)| !matches!(o, Outcome::Unknown { .. }))
                .filter_map(|(k, _)| {
                    let c = settles.iter().find(|c| c.cmd == *k)?;
                    let r = wrapped.iter().find(|(w, _)| w == k).map(|(_, v)| v);
                    Some((c.idempotency_key.as_str(), r))
                })
                .collect();
            if let Err(e) = store.finish_many(&finished) {
                tracing::error!("the batch's idempotency records could not be finished: {e}");
            }
            for (k, o) in results.iter_mut() {
                let Some(c) = settles.iter().find(|c| c.cmd == *k) else {
                    continue;
                };
                if matches!(o, Outcome::Unknown { .. })
                    && self.settle_command(store, &client, &call_id, c, o).await
                {
                    settled.insert(k.clone());
                }
            }
        }
        let after = client.stats();
        let mut tally = BatchTally::default();
        let lines: Vec<Value> = results
            .iter()
            .map(|(k, o)| {
                let mut l = tally.add(k, o).1;
                if settled.contains(k) {
                    l["settled"] = json!(true);
                }
                l
            })
            .collect();
        if let Err(e) = self.record(
            "batch",
            vec![
                ("risk", json!(risk)),
                ("decision", json!("allow")),
                ("outcome", Value::Array(lines)),
                ("call_id", json!(call_id)),
                ("duration_ms", json!(started.elapsed().as_millis() as u64)),
            ],
        ) {
            tracing::error!("the outcome of a batch could not be added to the audit log: {e}");
        }
        Ok(BatchRun::Done {
            results,
            risk,
            requests: after.requests.saturating_sub(before.requests),
            retries: after.retries.saturating_sub(before.retries),
        })
    }
}

/// Refreshes a running batch's in-flight keys every [`crate::settle::HEARTBEAT_SECS`] until
/// dropped.
struct Heartbeat(tokio::task::JoinHandle<()>);

impl Heartbeat {
    fn start(store: GuardStore, keys: Vec<String>) -> Heartbeat {
        Heartbeat(tokio::spawn(async move {
            let mut beat = tokio::time::interval(std::time::Duration::from_secs_f64(
                crate::settle::HEARTBEAT_SECS,
            ));
            beat.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                beat.tick().await;
                if let Err(e) = store.touch_in_flight(&keys) {
                    tracing::warn!("could not refresh the batch's keys: {e}");
                }
            }
        }))
    }
}

impl Drop for Heartbeat {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// How one writing command of a batch is to be settled if its request ends ambiguously.
struct CommandSettle {
    cmd: String,
    method: MethodName,
    /// As the caller gave them (without the stamp).
    params: Value,
    class: SettleClass,
    idempotency_key: String,
    stamp: Option<String>,
}

impl CommandSettle {
    fn sent_params(&self, params: &Value) -> Value {
        match (&self.stamp, stamp_spec(self.method.as_str())) {
            (Some(s), Some(spec)) => crate::settle::stamped(spec, params, s),
            _ => params.clone(),
        }
    }

    fn to_json(&self) -> Value {
        json!({"cmd": self.cmd, "method": self.method, "class": self.class,
               "idempotency_key": self.idempotency_key, "stamp": self.stamp})
    }
}

impl Gate {
    /// A writing command's key and settle class. A command that refers to another's result
    /// (`$result[…]`) cannot be resent on its own, and a `method?query` command cannot be
    /// stamped: both stay unknown if their request ends ambiguously. Nor can a `method?query`
    /// command in PHP bracket form (`fields[TITLE]=…`): the portal read it as nested params,
    /// but a resend goes as JSON, where `fields[TITLE]` is a literal key — another call (and
    /// the flat keys hide a `fields[PHONE][0]` append from the settle class).
    fn command_settle(
        &self,
        cmd: &str,
        method: &MethodName,
        params: &Value,
        text: bool,
    ) -> CommandSettle {
        let key = format!("b24-{}", uuid::Uuid::now_v7().simple());
        let mut class = self.catalog.settle_class(method.as_str(), false, params);
        let bracketed = text
            && params
                .as_object()
                .is_some_and(|o| o.keys().any(|k| k.contains('[') || k.contains(']')));
        if params.to_string().contains("$result[")
            || (text && class == SettleClass::Stamp)
            || bracketed
        {
            class = SettleClass::Unknown;
        }
        let stamp = (class == SettleClass::Stamp)
            .then(|| crate::settle::stamp_for(&key, method.as_str(), params));
        CommandSettle {
            cmd: cmd.to_string(),
            method: method.clone(),
            params: params.clone(),
            class,
            idempotency_key: key,
            stamp,
        }
    }

    /// Settle a command whose outcome is unknown. Whether it was settled (its outcome is then
    /// the settled one).
    async fn settle_command(
        &self,
        store: &GuardStore,
        client: &b24::Client,
        call_id: &str,
        c: &CommandSettle,
        o: &mut Outcome,
    ) -> bool {
        let k = &c.idempotency_key;
        if c.class == SettleClass::Unknown {
            let _ = store.key_unknown(k);
            return false;
        }
        // The key stays in flight while it is settled, so no `b24 settle` takes it meanwhile.
        let p = Pending {
            method: c.method.as_str(),
            api: Api::V2,
            params: &c.params,
            key: k,
            class: c.class,
            stamp: c.stamp.as_deref(),
        };
        let s = self.settle_one(client, &p).await;
        self.record_settlement(
            store,
            k,
            c.method.as_str(),
            call_id,
            Some(&c.cmd),
            c.class,
            &s,
        );
        match s {
            Settled::Done { raw, .. } => {
                *o = Outcome::Ok {
                    result: raw.get("result").cloned().unwrap_or(Value::Null),
                    total: None,
                    next: None,
                };
                true
            }
            Settled::Failed { error, .. } => {
                let (code, description) = match &error {
                    b24::Error::Api(a) => (a.code.clone(), a.description.clone()),
                    other => ("ERROR".to_string(), other.to_string()),
                };
                *o = Outcome::Error { code, description };
                true
            }
            Settled::Unknown { evidence } => {
                if let Outcome::Unknown { reason } = o {
                    let why = evidence
                        .get("why")
                        .and_then(Value::as_str)
                        .map(str::to_string)
                        .unwrap_or_else(|| evidence.to_string());
                    *reason = format!(
                        "{reason}; not settled: {why}; `b24 settle {call_id}:{}` looks again later",
                        c.cmd
                    );
                }
                false
            }
        }
    }
}
