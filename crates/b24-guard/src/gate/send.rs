//! [`Gate::send`]: what every call does once the gate has decided it may go — the idempotency
//! record, the write budget, the audit intent, the request, settling an ambiguous failure and
//! the audit outcome.

use std::time::Instant;

use serde_json::{Value, json};

use super::call::{Api, CallOutcome};
use super::confirm::Confirmed;
use super::{Gate, GateError};
use crate::catalog::{Risk, SettleClass, stamp_spec};
use crate::method::MethodName;
use crate::store::KeyClaim;

impl Gate {
    /// The part after the decision: idempotency, budget, audit, send, audit.
    #[allow(clippy::too_many_arguments)]
    pub(super) async fn send(
        &self,
        method: &MethodName,
        risk: Risk,
        api: Api,
        params: Value,
        key: Option<String>,
        plan_id: Option<&str>,
        conf: Confirmed,
        writes: u32,
    ) -> Result<CallOutcome, GateError> {
        let is_write = self.catalog.is_write(method.as_str(), &params) || risk != Risk::Read;
        let m = method.as_str();
        // Every write carries a key, the caller's or one made here, recorded (with the params
        // and how to settle the call) before anything is sent: REST 3.0 sends it as
        // `Idempotency-Key`, stamped adds derive their stamp from it, `b24 settle` finds the
        // params by it.
        let class = if is_write {
            self.catalog.settle_class(m, api == Api::V3, &params)
        } else {
            SettleClass::Unknown
        };
        let key = match key.filter(|_| is_write) {
            Some(k) => Some(k),
            None if is_write => Some(format!("b24-{}", uuid::Uuid::now_v7().simple())),
            None => None,
        };
        let stamp = match (&key, class, stamp_spec(m)) {
            (Some(k), SettleClass::Stamp, Some(_)) => Some(crate::settle::stamp_for(k, m, &params)),
            _ => None,
        };
        let sent_params = match (&stamp, stamp_spec(m)) {
            (Some(s), Some(spec)) => crate::settle::stamped(spec, &params, s),
            _ => params.clone(),
        };
        let store = if is_write { Some(self.store()?) } else { None };
        if let (Some(k), Some(store)) = (&key, &store) {
            let meta = super::settle::meta(api, class, stamp.as_deref());
            match store
                .begin_with(k, m, &params, &meta)
                .map_err(GateError::Store)?
            {
                KeyClaim::New => {}
                KeyClaim::Done(raw) => {
                    self.record(
                        m,
                        vec![
                            ("risk", json!(risk)),
                            ("decision", json!("replayed")),
                            ("idempotency_key", json!(k)),
                            ("outcome", json!("ok")),
                        ],
                    )?;
                    let mut response = b24::Response::from_envelope(raw);
                    response.replayed = true;
                    return Ok(CallOutcome::Done {
                        response,
                        replayed: true,
                    });
                }
                KeyClaim::Unknown => {
                    // The caller repeats a write whose outcome is unknown: settle it now.
                    if let Some(done) = self.settle_key(store, k).await? {
                        return Ok(done);
                    }
                    let r = self.refusal(m, Some(risk),
                        format!("idempotency key `{k}` belongs to a call whose outcome is not known, and it could not be settled (see `b24 audit tail --decision settle`)"),
                        "check the portal for the effect (e.g. list by ORIGIN_ID / title); if it did not happen, use a new idempotency key", false);
                    return Err(self.refuse(r, &params, vec![("idempotency_key", json!(k))]));
                }
                KeyClaim::InFlight => {
                    let r = self.refusal(m, Some(risk),
                        format!("idempotency key `{k}` belongs to a call whose outcome is not known (still running, or it failed ambiguously)"),
                        "check the portal for the effect (e.g. list by ORIGIN_ID / title); if it did not happen, use a new idempotency key", false);
                    return Err(self.refuse(r, &params, vec![("idempotency_key", json!(k))]));
                }
                KeyClaim::Mismatch { method: other } => {
                    let r = self.refusal(
                        m,
                        Some(risk),
                        format!(
                            "idempotency key `{k}` was already used for a different call ({other})"
                        ),
                        "use a new idempotency key for a different call",
                        false,
                    );
                    return Err(self.refuse(r, &params, vec![("idempotency_key", json!(k))]));
                }
                KeyClaim::OtherPortal { portal } => {
                    let r = self.refusal(
                        m,
                        Some(risk),
                        format!("idempotency key `{k}` was used on another portal ({portal}); its result is not this portal's"),
                        "use a new idempotency key for this portal",
                        false,
                    );
                    return Err(self.refuse(r, &params, vec![("idempotency_key", json!(k))]));
                }
                KeyClaim::Altered => {
                    let r = self.refusal(
                        m,
                        Some(risk),
                        format!("the record of idempotency key `{k}` fails its integrity check (edited in the database, or written by an older b24)"),
                        "use a new idempotency key; tell the operator the guard store was changed",
                        false,
                    );
                    return Err(self.refuse(r, &params, vec![("idempotency_key", json!(k))]));
                }
                #[allow(unreachable_patterns)]
                _ => {
                    let r = self.refusal(
                        m,
                        Some(risk),
                        format!("idempotency key `{k}` cannot be used"),
                        "use a new idempotency key",
                        false,
                    );
                    return Err(self.refuse(r, &params, vec![("idempotency_key", json!(k))]));
                }
            }
        }
        if let Some(store) = &store
            && let Err(e) = self.take_write(store, m, risk, &params, writes).await
        {
            if let Some(k) = &key {
                let _ = store.key_failed(k);
            }
            return Err(e);
        }
        if !is_write
            && !self.policy.allow_unaudited_reads()
            && let Err(e) = self.audit_ready()
        {
            // Reads go only where they can be recorded, unless the operator allows otherwise.
            return Err(e);
        }
        let client = match self.portal.client().await {
            Ok(c) => c,
            Err(e) => {
                if let (Some(k), Some(store)) = (&key, &store) {
                    let _ = store.key_failed(k);
                }
                return Err(e);
            }
        };
        let request_id = uuid::Uuid::now_v7().simple().to_string();
        if is_write {
            // The intent is on disk before anything is sent, or nothing is sent.
            let intent = self.record(
                m,
                vec![
                    ("risk", json!(risk)),
                    ("decision", json!("allow")),
                    ("outcome", json!("sending")),
                    ("call_id", json!(request_id)),
                    ("api", json!(api.as_str())),
                    ("params", self.audit_params(&params)),
                    ("idempotency_key", json!(key)),
                    ("settle", json!(class)),
                    ("stamp", json!(stamp)),
                    ("plan_id", json!(plan_id)),
                    ("confirmed_by_person", json!(conf.by_person)),
                ],
            );
            if let Err(e) = intent {
                if let (Some(k), Some(store)) = (&key, &store) {
                    let _ = store.key_failed(k);
                }
                return Err(e);
            }
        }
        let before = client.stats();
        let mut opts = b24::CallOptions::write(is_write);
        opts.idempotency_key = key.clone();
        let started = Instant::now();
        let res = match api {
            Api::V2 => client.call_with(m, sent_params.clone(), opts).await,
            Api::V3 => client.call_v3(m, sent_params.clone(), opts).await,
        };
        let retries = client.stats().retries.saturating_sub(before.retries);
        let fields = |outcome: &str, code: Option<String>| {
            vec![
                ("risk", json!(risk)),
                ("decision", json!("allow")),
                ("api", json!(api.as_str())),
                ("params", self.audit_params(&params)),
                ("outcome", json!(outcome)),
                ("error_code", json!(code)),
                ("duration_ms", json!(started.elapsed().as_millis() as u64)),
                ("retries", json!(retries)),
                ("call_id", json!(request_id)),
                ("idempotency_key", json!(key)),
                ("settle", json!(class)),
                ("stamp", json!(stamp)),
                ("plan_id", json!(plan_id)),
            ]
        };
        match res {
            Ok(response) => {
                if let (Some(k), Some(store)) = (&key, &store) {
                    let _ = store.key_done(k, &response.raw);
                }
                let recorded = self.record(m, fields("ok", None));
                if let Err(e) = recorded {
                    if !is_write && !self.policy.allow_unaudited_reads() {
                        // A read's answer is not released without its record.
                        return Err(e);
                    }
                    // The write happened and its intent is on disk; failing now would invite
                    // a repeat. Say so in the logs and hand the result back.
                    tracing::error!("the outcome of {m} could not be added to the audit log: {e}");
                }
                Ok(CallOutcome::Done {
                    response,
                    replayed: false,
                })
            }
            Err(e) => {
                let unknown = matches!(e, b24::Error::OutcomeUnknown { .. });
                if let (true, Some(k), Some(store)) = (unknown, &key, &store)
                    && class != SettleClass::Unknown
                {
                    // The write may have happened: settle it now, as its class allows. The
                    // outcome is recorded after, so no `b24 settle` starts on it meanwhile.
                    let p = super::settle::Pending {
                        method: m,
                        api,
                        params: &params,
                        key: k,
                        class,
                        stamp: stamp.as_deref(),
                    };
                    let s = self.settle_one(&client, &p).await;
                    let _ = self.record(m, fields("unknown", None));
                    self.record_settlement(store, k, m, &request_id, None, class, &s);
                    return match s {
                        // Sent (and maybe replayed by the portal), not answered from b24's
                        // own idempotency record: `replayed` stays false.
                        super::settle::Settled::Done { raw, replayed, .. } => {
                            Ok(CallOutcome::Done {
                                response: crate::settle::response(raw, replayed),
                                replayed: false,
                            })
                        }
                        super::settle::Settled::Failed { error, .. } => {
                            Err(GateError::Client(error))
                        }
                        super::settle::Settled::Unknown { evidence } => {
                            Err(GateError::Client(still_unknown(e, &request_id, &evidence)))
                        }
                    };
                }
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
                let _ = self.record(m, fields(if unknown { "unknown" } else { "error" }, code));
                if unknown {
                    let e = still_unknown(
                        e,
                        &request_id,
                        &json!({"why": "no safe way to settle this write; read it back before any retry", "final": true}),
                    );
                    return Err(GateError::Client(e));
                }
                Err(GateError::Client(e))
            }
        }
    }
}

/// The original outcome-unknown error, saying what settling found and how to try again later.
fn still_unknown(e: b24::Error, call_id: &str, evidence: &Value) -> b24::Error {
    match e {
        b24::Error::OutcomeUnknown {
            method,
            reason,
            idempotency_key,
            source,
        } => {
            let why = evidence
                .get("why")
                .and_then(Value::as_str)
                .map(str::to_string)
                .unwrap_or_else(|| evidence.to_string());
            let later = if evidence.get("final").is_some() {
                String::new()
            } else {
                format!(" (`b24 settle {call_id}` looks again later)")
            };
            b24::Error::OutcomeUnknown {
                method,
                reason: format!("{reason}; not settled: {why}; call id {call_id}{later}"),
                idempotency_key,
                source,
            }
        }
        other => other,
    }
}
