//! Reading the audit log for writes still open: an outcome-unknown record that no settlement
//! closes, or an intent whose process ended before any outcome was recorded.

use serde_json::Value;

use crate::catalog::SettleClass;

/// One outcome-unknown write found in the audit log.
pub(super) struct Open {
    pub(super) call_id: String,
    pub(super) command: Option<String>,
    pub(super) method: String,
    pub(super) key: String,
    pub(super) class: SettleClass,
    pub(super) stamp: Option<String>,
    /// When it was sent (Unix seconds, from the record).
    pub(super) at: f64,
    /// Its intent is recorded but no outcome: the process that sent it ended mid-call.
    pub(super) crashed: bool,
    /// The plan it applied, when the record names one: a resend is that reviewed call again,
    /// and the plan's state follows the settlement.
    pub(super) plan_id: Option<String>,
}

/// The outcome-unknown writes of this portal that no settlement record closes, oldest first.
pub(super) fn open_writes(
    records: &[serde_json::Map<String, Value>],
    want: Option<&str>,
    portal: &str,
) -> Vec<Open> {
    let s = |r: &serde_json::Map<String, Value>, k: &str| -> Option<String> {
        r.get(k).and_then(Value::as_str).map(str::to_string)
    };
    let mut closed = std::collections::HashSet::new();
    let mut intents = std::collections::HashMap::new();
    let mut finished = std::collections::HashSet::new();
    for r in records {
        if s(r, "outcome").as_deref() != Some("sending")
            && let Some(c) = s(r, "call_id")
        {
            finished.insert(c);
        }
        if s(r, "decision").as_deref() == Some("settle")
            && matches!(s(r, "outcome").as_deref(), Some("settled" | "failed"))
            && let Some(c) = s(r, "settles")
        {
            closed.insert((c, s(r, "command")));
        }
        if s(r, "outcome").as_deref() == Some("sending")
            && let Some(c) = s(r, "call_id")
        {
            intents.insert(c, r);
        }
    }
    let at = |r: &serde_json::Map<String, Value>| -> f64 {
        s(r, "ts")
            .and_then(|t| t.parse::<jiff::Timestamp>().ok())
            .map(|t| t.as_millisecond() as f64 / 1000.0)
            .unwrap_or(0.0)
    };
    let mut out = Vec::new();
    for r in records {
        if s(r, "decision").as_deref() != Some("allow")
            || s(r, "portal").as_deref().unwrap_or("") != portal
        {
            continue;
        }
        let Some(call_id) = s(r, "call_id") else {
            continue;
        };
        let named = |extra: &[String]| match want {
            None => true,
            Some(w) => {
                w == call_id
                    || s(r, "request_id").as_deref() == Some(w)
                    || r.get("seq").map(|v| v.to_string()).as_deref() == Some(w)
                    || extra.iter().any(|e| e == w)
            }
        };
        let intent = intents.get(&call_id);
        if s(r, "outcome").as_deref() == Some("sending") && !finished.contains(&call_id) {
            // No outcome was ever recorded: the process ended while the write was out.
            crashed(r, &call_id, &closed, &named, at(r), &mut out);
            continue;
        }
        match r.get("outcome") {
            // One call.
            Some(Value::String(o)) if o == "unknown" => {
                let (Some(key), Some(method)) = (s(r, "idempotency_key"), s(r, "method")) else {
                    continue;
                };
                if closed.contains(&(call_id.clone(), None)) || !named(&[]) {
                    continue;
                }
                let class = s(r, "settle")
                    .and_then(|c| SettleClass::parse(&c))
                    .unwrap_or(SettleClass::Unknown);
                out.push(Open {
                    at: intent.map(|i| at(i)).unwrap_or_else(|| at(r)),
                    call_id,
                    command: None,
                    method,
                    key,
                    class,
                    stamp: s(r, "stamp"),
                    crashed: false,
                    plan_id: s(r, "plan_id"),
                });
            }
            // A batch: each command whose status is unknown, with what its intent recorded.
            Some(Value::Array(lines)) => {
                let Some(intent) = intent else { continue };
                let plan: Vec<&Value> = intent
                    .get("settle")
                    .and_then(Value::as_array)
                    .map(|a| a.iter().collect())
                    .unwrap_or_default();
                for l in lines {
                    if l["status"].as_str() != Some("unknown") {
                        continue;
                    }
                    let Some(cmd) = l["key"].as_str() else {
                        continue;
                    };
                    let Some(p) = plan.iter().find(|p| p["cmd"].as_str() == Some(cmd)) else {
                        continue;
                    };
                    let (Some(key), Some(method)) =
                        (p["idempotency_key"].as_str(), p["method"].as_str())
                    else {
                        continue;
                    };
                    if closed.contains(&(call_id.clone(), Some(cmd.to_string())))
                        || !named(&[format!("{call_id}:{cmd}")])
                    {
                        continue;
                    }
                    out.push(Open {
                        call_id: call_id.clone(),
                        command: Some(cmd.to_string()),
                        method: method.to_string(),
                        key: key.to_string(),
                        class: p["class"]
                            .as_str()
                            .and_then(SettleClass::parse)
                            .unwrap_or(SettleClass::Unknown),
                        stamp: p["stamp"].as_str().map(str::to_string),
                        at: at(intent),
                        crashed: false,
                        plan_id: None,
                    });
                }
            }
            _ => {}
        }
    }
    out
}

/// The writes of an intent that has no outcome record: the call itself, or each writing
/// command of a batch.
fn crashed(
    r: &serde_json::Map<String, Value>,
    call_id: &str,
    closed: &std::collections::HashSet<(String, Option<String>)>,
    named: &dyn Fn(&[String]) -> bool,
    at: f64,
    out: &mut Vec<Open>,
) {
    let str_of = |v: &Value, k: &str| v.get(k).and_then(Value::as_str).map(str::to_string);
    let class_of = |v: &Value| {
        str_of(v, "settle")
            .or_else(|| str_of(v, "class"))
            .and_then(|c| SettleClass::parse(&c))
            .unwrap_or(SettleClass::Unknown)
    };
    let rv = Value::Object(r.clone());
    match r.get("settle") {
        Some(Value::Array(plan)) => {
            for p in plan {
                let (Some(cmd), Some(key), Some(method)) = (
                    str_of(p, "cmd"),
                    str_of(p, "idempotency_key"),
                    str_of(p, "method"),
                ) else {
                    continue;
                };
                if closed.contains(&(call_id.to_string(), Some(cmd.clone())))
                    || !named(&[format!("{call_id}:{cmd}")])
                {
                    continue;
                }
                out.push(Open {
                    call_id: call_id.to_string(),
                    command: Some(cmd),
                    method,
                    key,
                    class: class_of(p),
                    stamp: str_of(p, "stamp"),
                    at,
                    crashed: true,
                    plan_id: None,
                });
            }
        }
        _ => {
            let (Some(key), Some(method)) = (str_of(&rv, "idempotency_key"), str_of(&rv, "method"))
            else {
                return;
            };
            if closed.contains(&(call_id.to_string(), None)) || !named(&[]) {
                return;
            }
            out.push(Open {
                call_id: call_id.to_string(),
                command: None,
                method,
                key,
                class: class_of(&rv),
                stamp: str_of(&rv, "stamp"),
                at,
                crashed: true,
                plan_id: str_of(&rv, "plan_id"),
            });
        }
    }
}
