//! Settling writes whose outcome is unknown, through the gate: right after the ambiguous
//! failure (a call, or each command of a batch), and later from the audit log
//! ([`Gate::settle`], `b24 settle`). What may be done is the catalog's settle class
//! ([`crate::catalog::settle`]); the portal-free pieces are in [`crate::settle`].
//!
//! Every settlement is a new record in the audit chain (`decision: "settle"`, naming the
//! `call_id` it settles and the evidence); records are never rewritten. Nothing is guessed: a
//! look-up that finds two records, a store row that fails its check, a log that fails
//! verification — each leaves the write outcome-unknown.

use serde_json::{Value, json};

use super::call::Api;
use super::{Gate, GateError};
use crate::catalog::{SettleClass, stamp_spec};
use crate::policy::CallCheck;
use crate::settle::{self as logic, Found, MAX_RESENDS};
use crate::store::GuardStore;

mod open;
use open::{Open, open_writes};

/// A write to settle: what was sent (params without the stamp) and how.
pub(super) struct Pending<'a> {
    pub method: &'a str,
    pub api: Api,
    pub params: &'a Value,
    pub key: &'a str,
    pub class: SettleClass,
    pub stamp: Option<&'a str>,
}

/// What settling found.
pub(super) enum Settled {
    /// The write's result, received on a resend or rebuilt from a look-up.
    Done {
        raw: Value,
        replayed: bool,
        evidence: Value,
    },
    /// The portal answered the resend with an error: that is the call's outcome.
    Failed { error: b24::Error, evidence: Value },
    /// Still not known.
    Unknown { evidence: Value },
}

impl Settled {
    fn outcome(&self) -> &'static str {
        match self {
            Settled::Done { .. } => "settled",
            Settled::Failed { .. } => "failed",
            Settled::Unknown { .. } => "unknown",
        }
    }

    /// The same, with one more fact in its evidence.
    fn noted(mut self, key: &str, v: Value) -> Settled {
        let (Settled::Done { evidence, .. }
        | Settled::Failed { evidence, .. }
        | Settled::Unknown { evidence }) = &mut self;
        if let Some(o) = evidence.as_object_mut() {
            o.insert(key.to_string(), v);
        }
        self
    }

    fn evidence(&self) -> &Value {
        match self {
            Settled::Done { evidence, .. }
            | Settled::Failed { evidence, .. }
            | Settled::Unknown { evidence } => evidence,
        }
    }
}

/// The meta kept with a key's params: how the gate means to settle the call.
pub(super) fn meta(api: Api, class: SettleClass, stamp: Option<&str>) -> Value {
    json!({"api": api.as_str(), "class": class, "stamp": stamp})
}

/// What `b24 settle` did about one write.
#[derive(Debug, Clone, serde::Serialize)]
pub struct SettleReport {
    /// The `call_id` of the write (of the batch, for a batch command).
    pub call_id: String,
    /// The batch command's key, for a command of a batch.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub command: Option<String>,
    pub method: String,
    /// `settled`, `failed` (the portal refused the resend: that is its outcome), `unknown`.
    pub status: String,
    pub class: SettleClass,
    pub evidence: Value,
}

impl SettleReport {
    pub fn is_known(&self) -> bool {
        self.status != "unknown"
    }
}

impl Gate {
    /// Resend, or look up, as `p.class` allows.
    pub(super) async fn settle_one(&self, client: &b24::Client, p: &Pending<'_>) -> Settled {
        match p.class {
            SettleClass::Replay | SettleClass::Resend | SettleClass::ResendDelete => {
                self.resend(client, p).await
            }
            SettleClass::Stamp => self.settle_stamped(client, p).await,
            SettleClass::Unknown => unsettleable(),
        }
    }

    async fn send_again(
        client: &b24::Client,
        p: &Pending<'_>,
        params: Value,
    ) -> Result<b24::Response, b24::Error> {
        let opts = b24::CallOptions::write(true).with_idempotency_key(p.key);
        match p.api {
            Api::V2 => client.call_with(p.method, params, opts).await,
            Api::V3 => client.call_v3(p.method, params, opts).await,
        }
    }

    async fn resend(&self, client: &b24::Client, p: &Pending<'_>) -> Settled {
        let how = p.class.as_str();
        let mut last = String::new();
        for n in 1..=MAX_RESENDS {
            match Self::send_again(client, p, p.params.clone()).await {
                Ok(r) => {
                    return Settled::Done {
                        evidence: json!({"how": how, "resends": n, "replayed": r.replayed}),
                        replayed: r.replayed,
                        raw: r.raw,
                    };
                }
                Err(b24::Error::OutcomeUnknown { reason, .. }) => last = reason,
                Err(b24::Error::Api(a))
                    if p.class == SettleClass::ResendDelete && logic::is_not_found(&a) =>
                {
                    return Settled::Done {
                        evidence: json!({"how": how, "resends": n, "not_found_on_resend": true,
                                          "portal_said": format!("{} {}", a.code, a.description).trim()}),
                        replayed: false,
                        raw: json!({"result": true}),
                    };
                }
                Err(e @ b24::Error::Api(_)) => {
                    return Settled::Failed {
                        evidence: json!({"how": how, "resends": n, "portal_refused_resend": e.to_string()}),
                        error: e,
                    };
                }
                Err(e) => {
                    return Settled::Unknown {
                        evidence: json!({"how": how, "resends": n, "resend_failed": e.to_string(),
                                          "why": format!("the resend failed: {e}")}),
                    };
                }
            }
        }
        Settled::Unknown {
            evidence: json!({"how": how, "resends": MAX_RESENDS, "every_resend_ambiguous": last,
                              "why": format!("the answers to {MAX_RESENDS} resends were lost too")}),
        }
    }

    async fn settle_stamped(&self, client: &b24::Client, p: &Pending<'_>) -> Settled {
        let (Some(spec), Some(stamp)) = (stamp_spec(p.method), p.stamp) else {
            return Settled::Unknown {
                evidence: json!({"how": "stamp", "why": "the add was not stamped"}),
            };
        };
        let sent = logic::stamped(spec, p.params, stamp);
        let (list, query) = logic::lookup(spec, p.params, stamp);
        // The look-up is a read of its own: the policy must allow it too (a deny list or
        // allow list that leaves out `crm.lead.list` is not bypassed by a settle).
        let check = CallCheck {
            method: &list,
            params: Some(&query),
            confirm_write: false,
            confirm_destructive: false,
            via_plan: false,
            no_send: false,
        };
        if let Err(r) = self.policy.check(self.catalog, &check) {
            return Settled::Unknown {
                evidence: json!({"how": "stamp", "lookup": list, "stamp": stamp,
                                  "why": format!("the policy refuses the look-up: {}", r.reason)}),
            };
        }
        let mut last = String::new();
        for round in 1..=MAX_RESENDS {
            let opts = b24::CallOptions::write(false);
            let looked = match client.call_with(&list, query.clone(), opts).await {
                Ok(r) => r,
                Err(e) => {
                    return Settled::Unknown {
                        evidence: json!({"how": "stamp", "lookup": list, "stamp": stamp, "lookup_failed": e.to_string(),
                                          "why": format!("the look-up failed: {e}")}),
                    };
                }
            };
            match logic::found(spec, &looked.result, stamp) {
                Found::One { id, answer } => {
                    return Settled::Done {
                        evidence: json!({"how": "stamp", "lookup": list, "stamp": stamp, "found": [id], "adds_resent": round - 1}),
                        replayed: false,
                        raw: answer,
                    };
                }
                Found::Many(ids) => {
                    return Settled::Unknown {
                        evidence: json!({"how": "stamp", "lookup": list, "stamp": stamp, "found": ids,
                                          "why": "more than one record carries the stamp; b24 does not guess which is this write's"}),
                    };
                }
                Found::Unreadable => {
                    return Settled::Unknown {
                        evidence: json!({"how": "stamp", "lookup": list, "stamp": stamp, "why": "the look-up's answer is not a list of records carrying the stamp (the portal may have ignored the filter)"}),
                    };
                }
                Found::None => {}
            }
            // Not there: the add did not happen. Send it once more, with the same stamp.
            match Self::send_again(client, p, sent.clone()).await {
                Ok(r) => {
                    return Settled::Done {
                        evidence: json!({"how": "stamp", "lookup": list, "stamp": stamp, "found": [], "adds_resent": round}),
                        replayed: false,
                        raw: r.raw,
                    };
                }
                Err(b24::Error::OutcomeUnknown { reason, .. }) => last = reason,
                Err(e @ b24::Error::Api(_)) => {
                    return Settled::Failed {
                        evidence: json!({"how": "stamp", "lookup": list, "stamp": stamp, "found": [], "portal_refused_resend": e.to_string()}),
                        error: e,
                    };
                }
                Err(e) => {
                    return Settled::Unknown {
                        evidence: json!({"how": "stamp", "lookup": list, "stamp": stamp, "found": [], "resend_failed": e.to_string(),
                                          "why": format!("the add sent again failed: {e}")}),
                    };
                }
            }
        }
        Settled::Unknown {
            evidence: json!({"how": "stamp", "lookup": list, "stamp": stamp, "every_resend_ambiguous": last,
                              "why": format!("the answers to {MAX_RESENDS} adds sent again were lost too")}),
        }
    }

    /// Record a settlement (a new record; the one it settles is left as it is) and move the
    /// key: done with the result, freed after a refusal, or kept blocked while unknown.
    #[allow(clippy::too_many_arguments)] // the record's fields, each named at the call
    pub(super) fn record_settlement(
        &self,
        store: &GuardStore,
        key: &str,
        method: &str,
        call_id: &str,
        command: Option<&str>,
        class: SettleClass,
        s: &Settled,
    ) {
        let _ = match s {
            Settled::Done { raw, .. } => store.key_done(key, raw),
            Settled::Failed { .. } => store.key_failed(key),
            Settled::Unknown { evidence } if evidence.get("busy").is_some() => Ok(()),
            Settled::Unknown { .. } => store.key_unknown(key),
        };
        let recorded = self.record(
            method,
            vec![
                ("decision", json!("settle")),
                ("settles", json!(call_id)),
                ("command", json!(command)),
                ("outcome", json!(s.outcome())),
                ("settle", json!(class)),
                ("idempotency_key", json!(key)),
                ("evidence", s.evidence().clone()),
            ],
        );
        if let Err(e) = recorded {
            tracing::error!("the settlement of {method} ({call_id}) could not be recorded: {e}");
        }
    }

    /// Settle what the audit log lists as outcome-unknown (all of it, or the one `record` names:
    /// its `call_id`, `request_id` or `seq`). Reads only records that check under the guard key,
    /// and only when the whole log verifies; appends a settlement record for each write tried.
    pub async fn settle(&self, record: Option<&str>) -> Result<Vec<SettleReport>, GateError> {
        self.settle_with(record, logic::CRASHED_AFTER_SECS).await
    }

    /// [`Gate::settle`], taking writes whose process ended mid-call (an intent, no outcome)
    /// once they are `crashed_after` seconds old (default [`logic::CRASHED_AFTER_SECS`]).
    pub async fn settle_with(
        &self,
        record: Option<&str>,
        crashed_after: f64,
    ) -> Result<Vec<SettleReport>, GateError> {
        // Without a record named, writes b24 has no way to settle (their class is `unknown`)
        // are left out: looking at them again changes nothing.
        let open: Vec<Open> = self
            .open_writes(record)?
            .into_iter()
            .filter(|o| !o.crashed || crate::store::now() - o.at >= crashed_after)
            .filter(|o| record.is_some() || o.class != SettleClass::Unknown)
            .collect();
        if open.is_empty() {
            if let Some(r) = record {
                return Err(GateError::Invalid(format!(
                    "no outcome-unknown write `{r}` in the audit log (give a call_id, request_id or seq of an `outcome: unknown` record not settled yet)"
                )));
            }
            return Ok(vec![]);
        }
        let store = self.store()?;
        let client = self.portal.client().await?;
        let mut out = Vec::new();
        for o in open {
            let (class, s) = self.settle_open(&store, &client, &o, crashed_after).await;
            let s = if o.crashed {
                s.noted("no_outcome_recorded", json!(true))
            } else {
                s
            };
            self.record_settlement(
                &store,
                &o.key,
                &o.method,
                &o.call_id,
                o.command.as_deref(),
                class,
                &s,
            );
            settle_plan(&store, &o, class, &s);
            out.push(SettleReport {
                call_id: o.call_id,
                command: o.command,
                method: o.method,
                status: s.outcome().into(),
                class,
                evidence: s.evidence().clone(),
            });
        }
        Ok(out)
    }

    /// The outcome-unknown writes in the log, when the whole log verifies.
    fn open_writes(&self, record: Option<&str>) -> Result<Vec<Open>, GateError> {
        let report = self.audit.verify_report().map_err(GateError::Audit)?;
        if let Some(p) = report.problem {
            return Err(GateError::Audit(crate::GuardError::Audit {
                path: self.audit.path().display().to_string(),
                reason: format!(
                    "the audit log fails verification ({p}); settle acts only on records it can trust"
                ),
            }));
        }
        let records = self.audit.keyed_records().map_err(GateError::Audit)?;
        Ok(open_writes(&records, record, self.portal.portal()))
    }

    /// A caller repeats a write under a key whose outcome is unknown: settle it now. `None`:
    /// still unknown (the caller's call is refused as before).
    pub(super) async fn settle_key(
        &self,
        store: &GuardStore,
        key: &str,
    ) -> Result<Option<super::CallOutcome>, GateError> {
        let Some(o) = self
            .open_writes(None)?
            .into_iter()
            .rfind(|o| o.key == key && !o.crashed)
        else {
            return Ok(None);
        };
        let client = self.portal.client().await?;
        let (class, s) = self
            .settle_open(store, &client, &o, logic::CRASHED_AFTER_SECS)
            .await;
        self.record_settlement(store, &o.key, &o.method, &o.call_id, None, class, &s);
        settle_plan(store, &o, class, &s);
        match s {
            Settled::Done {
                raw,
                replayed,
                evidence,
            } => {
                // Only a result taken from b24's own record counts as answered without sending.
                let local = evidence["how"] == "store";
                Ok(Some(super::CallOutcome::Done {
                    response: logic::response(raw, replayed || local),
                    replayed: local,
                }))
            }
            Settled::Failed { error, .. } => Err(GateError::Client(error)),
            Settled::Unknown { .. } => Ok(None),
        }
    }

    /// Check what the store kept against the log, then settle.
    async fn settle_open(
        &self,
        store: &GuardStore,
        client: &b24::Client,
        o: &Open,
        crashed_after: f64,
    ) -> (SettleClass, Settled) {
        let unknown = |why: String| Settled::Unknown {
            evidence: json!({"how": "none", "why": why}),
        };
        if o.class == SettleClass::Unknown {
            return (o.class, unsettleable());
        }
        let rec = match store.key_record(&o.key) {
            Ok(Some(Ok(r))) => r,
            Ok(Some(Err(why))) => return (o.class, unknown(why)),
            Ok(None) => {
                return (
                    o.class,
                    unknown(format!("the guard store has no record of key `{}`", o.key)),
                );
            }
            Err(e) => return (o.class, unknown(e.to_string())),
        };
        if rec.state != "done" {
            let stale = if o.crashed {
                crashed_after
            } else {
                logic::STALE_SETTLE_SECS
            };
            match store.claim_for_settling(&o.key, stale) {
                Ok(true) => {}
                Ok(false) => {
                    // Not ours: the key's state is left to whoever holds it.
                    return (
                        o.class,
                        Settled::Unknown {
                            evidence: json!({"how": "none", "busy": true,
                            "why": if o.crashed {
                                "no outcome is recorded, but its key was taken less than an hour ago: it may still be on its way"
                            } else {
                                "another b24 is settling this write (or sending it) right now"
                            }}),
                        },
                    );
                }
                Err(e) => return (o.class, unknown(e.to_string())),
            }
        }
        if rec.state == "done" {
            // Settled before (e.g. its settlement record could not be written): the result.
            return (
                o.class,
                Settled::Done {
                    raw: rec.result.unwrap_or(Value::Null),
                    replayed: true,
                    evidence: json!({"how": "store", "why": "the key's result is recorded"}),
                },
            );
        }
        let api = Api::parse(rec.meta["api"].as_str().unwrap_or("v2"));
        let class = self
            .catalog
            .settle_class(&rec.method, api == Api::V3, &rec.params);
        let kept_class = rec.meta["class"].as_str().and_then(SettleClass::parse);
        let kept_stamp = rec.meta["stamp"].as_str();
        let stamp = (class == SettleClass::Stamp)
            .then(|| logic::stamp_for(&o.key, &rec.method, &rec.params));
        if kept_class != Some(o.class)
            || class != o.class
            || !rec.method.eq_ignore_ascii_case(&o.method)
            || kept_stamp != stamp.as_deref()
            || o.stamp.as_deref() != stamp.as_deref()
        {
            return (
                o.class,
                unknown("the audit record, the guard store and the catalog do not agree on how this write was sent".into()),
            );
        }
        let age = crate::store::now() - o.at;
        match class {
            SettleClass::Replay if age > logic::REPLAY_WINDOW_SECS => {
                return (
                    class,
                    unknown(format!(
                        "sent {:.0} h ago: the portal keeps the first answer for 24 h, so a resend now could run it again",
                        age / 3600.0
                    )),
                );
            }
            SettleClass::Resend if age > logic::UPDATE_WINDOW_SECS => {
                return (
                    class,
                    unknown(format!(
                        "sent {:.0} min ago: resending an update now could overwrite changes made since",
                        age / 60.0
                    )),
                );
            }
            _ => {}
        }
        // A resend is a write: the policy as it stands now must still allow it.
        {
            let check = CallCheck {
                method: &rec.method,
                params: Some(&rec.params),
                confirm_write: true,
                confirm_destructive: true,
                via_plan: o.plan_id.is_some(),
                no_send: false,
            };
            if let Err(r) = self.policy.check(self.catalog, &check) {
                return (
                    class,
                    unknown(format!("the policy refuses to resend it now: {}", r.reason)),
                );
            }
        }
        let p = pending(o, &rec, api, class, stamp.as_deref());
        (class, self.settle_one(client, &p).await)
    }
}

/// When the write applied a plan, the plan's state follows what settling found (`applied`
/// when the write is known to have happened, `failed` when the portal refused it), and the
/// settlement is kept with the plan for `b24 plan show`. A plan is only moved from
/// `unknown`/`applying`; a failure to record it is logged (the audit record is what counts).
fn settle_plan(store: &GuardStore, o: &Open, class: SettleClass, s: &Settled) {
    let Some(id) = &o.plan_id else { return };
    let state = match s {
        Settled::Done { .. } => Some("applied"),
        Settled::Failed { .. } => Some("failed"),
        Settled::Unknown { .. } => None,
    };
    let settlement = json!({
        "outcome": s.outcome(),
        "at": jiff::Timestamp::now().to_string(),
        "call_id": o.call_id,
        "settle": class,
        "evidence": s.evidence(),
    });
    match store.settle_plan(id, state, &settlement) {
        Ok(true) => {}
        Ok(false) => tracing::warn!(
            "plan {id} (settled as {}) is not in the guard store",
            s.outcome()
        ),
        Err(e) => tracing::error!("the settlement of plan {id} could not be recorded: {e}"),
    }
}

/// A write no look-up or resend can settle.
fn unsettleable() -> Settled {
    Settled::Unknown {
        evidence: json!({"how": "none", "why": "no safe way to settle this write (not a REST 3.0 write, an update that sets values, a delete, nor a stamped add)"}),
    }
}

fn pending<'a>(
    o: &'a Open,
    rec: &'a crate::store::KeyRecord,
    api: Api,
    class: SettleClass,
    stamp: Option<&'a str>,
) -> Pending<'a> {
    Pending {
        method: &o.method,
        api,
        params: &rec.params,
        key: &o.key,
        class,
        stamp,
    }
}
