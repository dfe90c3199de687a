//! REST v2 methods (and the REST 3.0 task methods). Each returns a result or a portal error
//! with the status, code and text the reference gives.

use serde_json::{Value, json};

use crate::crm::{self, Kind};
use crate::events::{Delivery, KNOWN_EVENTS};
use crate::params::{get_ci, int, text, truthy};
use crate::state::{OfflineRow, State, iso};

/// Who is calling.
#[derive(Debug, Clone)]
pub struct Caller {
    /// `webhook` or `oauth`.
    pub kind: &'static str,
    pub user_id: u64,
    /// Operating-limit key (webhook code or app id).
    pub cred: String,
    /// The call's `auth_connector` (empty if none): an app's own writes made with it are not
    /// queued into that connector's offline queue.
    pub connector: String,
}

/// A successful method result.
#[derive(Debug, Default)]
pub struct Out {
    pub result: Value,
    pub next: Option<u64>,
    pub total: Option<u64>,
    /// Simulated execution seconds.
    pub cost: f64,
}

/// A portal error.
#[derive(Debug, Clone)]
pub struct PErr {
    pub status: u16,
    pub code: String,
    pub desc: String,
}

pub fn perr(status: u16, code: &str, desc: &str) -> PErr {
    PErr {
        status,
        code: code.into(),
        desc: desc.into(),
    }
}

pub fn crm_err(desc: &str) -> PErr {
    perr(400, "", desc)
}

pub fn ok(result: Value) -> Result<Out, PErr> {
    Ok(Out {
        result,
        cost: 0.01,
        ..Default::default()
    })
}

/// Methods an incoming webhook may not call (application context required).
pub fn app_only(method: &str) -> bool {
    matches!(
        method,
        "event.bind" | "event.unbind" | "event.get" | "events" | "event.test" | "placement.bind"
    ) || method.starts_with("event.offline.")
}

/// The scope a method needs.
pub fn scope_of(method: &str) -> &'static str {
    if method.starts_with("crm.") {
        "crm"
    } else if method.starts_with("user.") {
        "user"
    } else if method.starts_with("tasks.") || method.starts_with("task.") {
        "task"
    } else {
        "basic"
    }
}

/// Every method the sandbox implements (for `methods`, `method.get` and unknown-method errors).
pub fn known(method: &str) -> bool {
    if crate::refdata::known(method) {
        return true;
    }
    if let Some(rest) = method.strip_prefix("crm.") {
        let mut parts = rest.split('.');
        let (Some(ent), Some(verb), None) = (parts.next(), parts.next(), parts.next()) else {
            return false;
        };
        return matches!(ent, "lead" | "deal" | "contact" | "company" | "item")
            && matches!(
                verb,
                "add" | "get" | "list" | "update" | "delete" | "fields"
            );
    }
    matches!(
        method,
        "batch"
            | "user.current"
            | "user.get"
            | "profile"
            | "scope"
            | "methods"
            | "method.get"
            | "server.time"
            | "app.info"
            | "feature.get"
            | "event.bind"
            | "event.unbind"
            | "event.get"
            | "events"
            | "event.offline.get"
            | "event.offline.clear"
            | "event.offline.error"
            | "event.offline.list"
    )
}

pub const ALL_SCOPES: &[&str] = &[
    "basic",
    "crm",
    "user",
    "task",
    "placement",
    "entity",
    "im",
    "bizproc",
    "disk",
    "department",
];

/// Run one v2 method.
pub fn call(
    st: &mut State,
    who: &Caller,
    method: &str,
    params: &Value,
    dl: &mut Vec<Delivery>,
) -> Result<Out, PErr> {
    if crate::refdata::known(method) {
        return crate::refdata::call(method, params);
    }
    if let Some(rest) = method.strip_prefix("crm.") {
        let (ent, verb) = rest.split_once('.').unwrap_or((rest, ""));
        if ent == "item" {
            return crate::crm_calls::crm_item(st, who, verb, params, dl);
        }
        if let Some(kind) = Kind::from_name(ent) {
            return crate::crm_calls::crm_v2(st, who, kind, verb, params, dl);
        }
    }
    match method {
        "server.time" => ok(Value::String(iso(st.now()))),
        "profile" => ok(json!({"ID": who.user_id.to_string(), "ADMIN": true, "NAME": "Sandbox", "LAST_NAME": "Admin", "PERSONAL_GENDER": "", "TIME_ZONE": ""})),
        "user.current" => ok(user(who.user_id)),
        "user.get" => {
            let id = get_ci(params, "ID").and_then(int).or_else(|| get_ci(params, "filter").and_then(|f| get_ci(f, "ID")).and_then(int));
            let users: Vec<Value> = [1u64, 2, 3].iter().filter(|u| id.map(|i| i as u64 == **u).unwrap_or(true)).map(|u| user(*u)).collect();
            let n = users.len() as u64;
            Ok(Out { result: Value::Array(users), total: Some(n), cost: 0.01, ..Default::default() })
        }
        "scope" => {
            if truthy(get_ci(params, "full")) {
                return ok(json!(ALL_SCOPES));
            }
            let scopes: Vec<String> = match crate::exec::granted_scopes(st, who) {
                Some(s) => s.to_vec(),
                None => ALL_SCOPES.iter().map(|s| s.to_string()).collect(),
            };
            ok(json!(scopes))
        }
        "methods" => {
            let mut list = vec!["batch", "scope", "methods", "method.get", "server.time", "profile", "app.info", "feature.get", "user.current", "user.get"];
            list.extend(["event.bind", "event.unbind", "event.get", "events", "event.offline.get", "event.offline.clear", "event.offline.error", "event.offline.list"]);
            let mut v: Vec<String> = list.iter().map(|s| s.to_string()).collect();
            for e in ["lead", "deal", "contact", "company", "item"] {
                for verb in ["add", "get", "list", "update", "delete", "fields"] {
                    v.push(format!("crm.{e}.{verb}"));
                }
            }
            v.extend(["crm.status.list", "crm.status.entity.items", "crm.category.list", "crm.dealcategory.stage.list"].map(String::from));
            ok(json!(v))
        }
        "method.get" => {
            let name = get_ci(params, "name").map(text).unwrap_or_default().to_ascii_lowercase();
            let exists = !name.is_empty() && known(&name);
            let available = exists && !(who.kind == "webhook" && app_only(&name));
            ok(json!({"isExisting": exists, "isAvailable": available}))
        }
        "app.info" => {
            if who.kind == "webhook" {
                return Err(perr(400, "ACCESS_DENIED", "Access denied! Application context required"));
            }
            let fam = if st.cfg.plan == crate::Plan::Enterprise { ("ent", "ent250") } else { ("std", "std") };
            ok(json!({"ID": 1, "CODE": st.client_id, "VERSION": 1, "STATUS": "L", "INSTALLED": true, "PAYMENT_EXPIRED": "N", "DAYS": null, "LANGUAGE_ID": "en", "LICENSE": format!("en_{}", fam.1), "LICENSE_TYPE": fam.1, "LICENSE_FAMILY": fam.0}))
        }
        "feature.get" => {
            let code = get_ci(params, "CODE").map(text).unwrap_or_default();
            if code.is_empty() {
                return Err(perr(400, "CODE_EMPTY", "Code is empty"));
            }
            ok(json!({"value": if code == "rest_offline_extended" || code == "rest_auth_connector" { "Y" } else { "N" }}))
        }
        "events" => ok(json!(KNOWN_EVENTS)),
        "event.bind" => {
            let event = get_ci(params, "event").map(text).unwrap_or_default().to_ascii_uppercase();
            if !KNOWN_EVENTS.contains(&event.as_str()) {
                return Err(perr(400, "ERROR_EVENT_NOT_FOUND", "Event not found"));
            }
            let offline = get_ci(params, "event_type").map(text).unwrap_or_default().eq_ignore_ascii_case("offline");
            let handler = get_ci(params, "handler").map(text).unwrap_or_default();
            if !offline && handler.is_empty() {
                return Err(perr(400, "ERROR_REQUIRED_PARAMETERS_MISSING", "Handler is not specified"));
            }
            let auth_type = get_ci(params, "auth_type").and_then(int).unwrap_or(0).max(0) as u64;
            let connector = get_ci(params, "auth_connector").map(text).unwrap_or_default();
            if st.bindings.iter().any(|b| b.event == event && b.handler == handler && b.auth_type == auth_type && b.offline == offline && b.connector == connector) {
                return Err(perr(400, "ERROR_HANDLER_ALREADY_EXIST", "Handler already binded"));
            }
            st.next_binding += 1;
            let id = st.next_binding;
            let min_timeout = get_ci(params, "options").and_then(|o| get_ci(o, "minTimeout")).map(|v| match v { Value::Number(n) => n.as_f64().unwrap_or(1.0), other => text(other).trim().parse().unwrap_or(1.0) }).unwrap_or(1.0).max(0.0);
            st.bindings.push(crate::state::Binding { id, event, handler: if offline { String::new() } else { handler }, auth_type, offline, connector, min_timeout });
            ok(Value::Bool(true))
        }
        "event.unbind" => {
            let event = get_ci(params, "event").map(text).unwrap_or_default().to_ascii_uppercase();
            let handler = get_ci(params, "handler").map(text).unwrap_or_default();
            let offline = get_ci(params, "event_type").map(text).unwrap_or_default().eq_ignore_ascii_case("offline");
            let before = st.bindings.len();
            st.bindings.retain(|b| !(b.event == event && b.offline == offline && (offline || b.handler == handler)));
            ok(json!({"count": before - st.bindings.len()}))
        }
        "event.get" => ok(Value::Array(
            st.bindings
                .iter()
                .map(|b| json!({"event": b.event, "handler": b.handler, "auth_type": b.auth_type.to_string(), "offline": if b.offline { 1 } else { 0 }}))
                .collect(),
        )),
        "event.offline.get" => offline_get(st, params),
        "event.offline.clear" | "event.offline.error" => {
            let pid = get_ci(params, "process_id").map(text).unwrap_or_default();
            if pid.is_empty() {
                return Err(perr(400, "ERROR_REQUIRED_PARAMETERS_MISSING", "process_id is required"));
            }
            let ids: Option<Vec<String>> = get_ci(params, "id").map(list_of);
            let mids: Option<Vec<String>> = get_ci(params, "message_id").map(list_of);
            let selected = |r: &OfflineRow| {
                r.process_id.as_deref() == Some(pid.as_str())
                    && match (&ids, &mids) {
                        (Some(ids), _) => ids.contains(&r.id.to_string()),
                        (None, Some(m)) => m.contains(&r.message_id),
                        (None, None) => true,
                    }
            };
            if method == "event.offline.clear" {
                st.offline.retain(|r| !selected(r));
            } else {
                for r in st.offline.iter_mut().filter(|r| selected(r)) {
                    r.error = true;
                    r.process_id = None;
                }
            }
            ok(Value::Bool(true))
        }
        "event.offline.list" => {
            let filter = crm::parse_filter(get_ci(params, "filter").unwrap_or(&Value::Null), false).map_err(|e| crm_err(&e))?;
            let start = get_ci(params, "start").and_then(int).unwrap_or(0).max(0) as usize;
            // Like event.offline.get: one connector's queue; without one, rows with no source.
            let connector = get_ci(params, "auth_connector").map(text).unwrap_or_default();
            let rows: Vec<Value> = st
                .offline
                .iter()
                .filter(|r| r.connector == connector)
                .map(|r| State::offline_row_json(r, true))
                .filter(|v| v.as_object().map(|o| filter.matches(o)).unwrap_or(false))
                .collect();
            let total = rows.len();
            let page: Vec<Value> = rows.into_iter().skip(start).take(50).collect();
            let next = (start + 50 < total).then_some((start + 50) as u64);
            Ok(Out { result: Value::Array(page), next, total: Some(total as u64), cost: 0.01 })
        }
        _ => Err(perr(404, "ERROR_METHOD_NOT_FOUND", "Method not found!")),
    }
}

fn list_of(v: &Value) -> Vec<String> {
    match v {
        Value::Array(a) => a.iter().map(text).collect(),
        Value::Object(o) => o.values().map(text).collect(),
        other => vec![text(other)],
    }
}

fn user(id: u64) -> Value {
    let names = ["", "Sandbox", "Olga", "Pavel"];
    json!({"ID": id.to_string(), "ACTIVE": true, "NAME": names.get(id as usize).copied().unwrap_or("User"), "LAST_NAME": "Admin", "EMAIL": format!("user{id}@sandbox.local"), "IS_ONLINE": "Y", "TIME_ZONE": "", "UF_DEPARTMENT": [1]})
}

fn offline_get(st: &mut State, params: &Value) -> Result<Out, PErr> {
    let clear = get_ci(params, "clear")
        .map(|v| truthy(Some(v)))
        .unwrap_or(true);
    let limit = get_ci(params, "limit")
        .and_then(int)
        .unwrap_or(50)
        .clamp(1, 1000) as usize;
    let with_errors = truthy(get_ci(params, "error"));
    let connector = get_ci(params, "auth_connector")
        .map(text)
        .unwrap_or_default();
    let process = get_ci(params, "process_id")
        .map(text)
        .filter(|p| !p.is_empty());
    let filter = crm::parse_filter(get_ci(params, "filter").unwrap_or(&Value::Null), false)
        .map_err(|e| crm_err(&e))?;
    let mut picked: Vec<usize> = st
        .offline
        .iter()
        .enumerate()
        .filter(|(_, r)| r.connector == connector)
        .filter(|(_, r)| match &process {
            Some(p) => r.process_id.as_deref() == Some(p.as_str()),
            None => r.process_id.is_none() && (with_errors || !r.error),
        })
        .filter(|(_, r)| {
            State::offline_row_json(r, false)
                .as_object()
                .map(|o| filter.matches(o))
                .unwrap_or(false)
        })
        .map(|(i, _)| i)
        .collect();
    picked.sort_by(|a, b| {
        let (ra, rb) = (&st.offline[*a], &st.offline[*b]);
        ra.ts
            .partial_cmp(&rb.ts)
            .unwrap_or(std::cmp::Ordering::Equal)
            .then(ra.id.cmp(&rb.id))
    });
    picked.truncate(limit);
    let events: Vec<Value> = picked
        .iter()
        .map(|i| State::offline_row_json(&st.offline[*i], false))
        .collect();
    let process_id = if clear {
        let set: std::collections::HashSet<usize> = picked.iter().copied().collect();
        let mut i = 0;
        st.offline.retain(|_| {
            let keep = !set.contains(&i);
            i += 1;
            keep
        });
        Value::Null
    } else if let Some(p) = process {
        Value::String(p)
    } else if picked.is_empty() {
        Value::Null
    } else {
        let pid = st.random_token(32);
        for i in &picked {
            st.offline[*i].process_id = Some(pid.clone());
        }
        Value::String(pid)
    };
    Ok(Out {
        result: json!({"process_id": process_id, "events": events}),
        cost: 0.01,
        ..Default::default()
    })
}
