//! [`Gate::batch`]: many commands, each checked on its own, sent 50 to a request.

use std::time::Instant;

use b24::batch::{Batch, Outcome};
use serde_json::{Value, json};

use super::call::{Checked, strip_credentials};
use super::confirm::{Confirmed, Person};
use super::{Gate, GateError};
use crate::batch_cmds::query_params;
use crate::catalog::Risk;
use crate::method::{MethodName, normalise};

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
            let added = match &query {
                Some(q) if q.is_empty() => b.add_text(key, method.as_str()),
                Some(q) => b.add_text(key, &format!("{method}?{q}")),
                None => b.add(key, method.as_str(), params.clone()),
            };
            added.map_err(|e| GateError::Invalid(e.to_string()))?;
            b.set_write(key, self.catalog.is_write(method.as_str(), &params));
            listing.push(json!({"key": key, "method": method}));
            parts.push((method, params));
        }
        if parts.is_empty() {
            return Err(GateError::Invalid("no commands given".into()));
        }
        let order = b.order().map_err(|e| GateError::Invalid(e.to_string()))?;
        self.check_spellings(&parts, &json!({"commands": listing}))?;
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
        if writes > 0 {
            let store = self.store()?;
            let n = u32::try_from(writes).unwrap_or(u32::MAX);
            self.take_write(&store, "batch", risk, &shown, n).await?;
        }
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
                ("confirmed_by_person", json!(conf.by_person)),
            ],
        )?;
        let before = client.stats();
        let started = Instant::now();
        let results = b.run(&client).await;
        let after = client.stats();
        let mut tally = BatchTally::default();
        let lines: Vec<Value> = results.iter().map(|(k, o)| tally.add(k, o).1).collect();
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
