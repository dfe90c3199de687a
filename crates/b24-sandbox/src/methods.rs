//! REST v2 methods (and the REST 3.0 task methods). Each returns a result or a portal error
//! with the status, code and text the reference gives.

use serde_json::{Map, Value, json};
use sha2::Digest;

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

fn crm_err(desc: &str) -> PErr {
    perr(400, "", desc)
}

fn ok(result: Value) -> Result<Out, PErr> {
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
            return crm_item(st, who, verb, params, dl);
        }
        if let Some(kind) = Kind::from_name(ent) {
            return crm_v2(st, who, kind, verb, params, dl);
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

fn crm_event(kind: Kind, verb: &str) -> String {
    format!("ONCRM{}{}", kind.upper(), verb.to_ascii_uppercase())
}

fn write_fields(
    st: &mut State,
    kind: Kind,
    row: &mut Map<String, Value>,
    fields: &Map<String, Value>,
    item_names: bool,
) {
    let mut multi = st.tables[&kind].next_multi_id;
    for (k, v) in fields {
        let key = if item_names {
            crm::upper(k)
        } else {
            k.to_ascii_uppercase()
        };
        let ro = kind.fields().iter().any(|f| f.0 == key && f.2);
        let known = kind.fields().iter().any(|f| f.0 == key)
            || crm::MULTI.contains(&key.as_str())
            || key.starts_with("UF_");
        if ro || !known {
            continue; // unknown fields are ignored, read-only ones too
        }
        if crm::MULTI.contains(&key.as_str()) && !item_names {
            let mut new = crm::v2_value(&key, v, &mut multi);
            if let (Some(Value::Array(old)), Value::Array(add)) = (row.get(&key), &mut new) {
                let mut merged = old.clone();
                merged.append(add);
                new = Value::Array(merged);
            }
            row.insert(key, new);
        } else {
            row.insert(key.clone(), crm::v2_value(&key, v, &mut multi));
        }
    }
    if let Some(t) = st.tables.get_mut(&kind) {
        t.next_multi_id = multi;
    }
    for (has, m) in [("HAS_PHONE", "PHONE"), ("HAS_EMAIL", "EMAIL")] {
        if kind.fields().iter().any(|f| f.0 == has) {
            let yes = row
                .get(m)
                .and_then(|v| v.as_array())
                .map(|a| !a.is_empty())
                .unwrap_or(false);
            row.insert(
                has.into(),
                Value::String(if yes { "Y" } else { "N" }.into()),
            );
        }
    }
}

fn add(
    st: &mut State,
    who: &Caller,
    kind: Kind,
    fields: &Map<String, Value>,
    item_names: bool,
    dl: &mut Vec<Delivery>,
) -> u64 {
    let now = iso(st.now());
    let id = st.tables.get_mut(&kind).map(|t| t.alloc_id()).unwrap_or(0);
    let mut row = Map::new();
    row.insert("ID".into(), Value::String(id.to_string()));
    let defaults: &[(&str, &str)] = match kind {
        Kind::Lead => &[
            ("STATUS_ID", "NEW"),
            ("OPENED", "Y"),
            ("CURRENCY_ID", "USD"),
            ("OPPORTUNITY", "0.00"),
        ],
        Kind::Deal => &[
            ("STAGE_ID", "NEW"),
            ("CATEGORY_ID", "0"),
            ("OPENED", "Y"),
            ("CLOSED", "N"),
            ("CURRENCY_ID", "USD"),
            ("OPPORTUNITY", "0.00"),
        ],
        Kind::Contact | Kind::Company => &[("OPENED", "Y")],
    };
    for (k, v) in defaults {
        row.insert(k.to_string(), Value::String(v.to_string()));
    }
    if matches!(kind, Kind::Deal | Kind::Company) {
        row.insert(
            "TITLE".into(),
            Value::String(format!(
                "{} #{id}",
                if kind == Kind::Deal {
                    "Deal"
                } else {
                    "Company"
                }
            )),
        );
    }
    row.insert(
        "ASSIGNED_BY_ID".into(),
        Value::String(who.user_id.to_string()),
    );
    write_fields(st, kind, &mut row, fields, item_names);
    if kind == Kind::Deal && !upper_fields(fields, item_names).contains_key("STAGE_ID") {
        let cat = row.get("CATEGORY_ID").and_then(int).unwrap_or(0);
        row.insert(
            "STAGE_ID".into(),
            Value::String(crate::refdata::first_stage(cat).into()),
        );
    }
    for k in ["DATE_CREATE", "DATE_MODIFY"] {
        row.insert(k.into(), Value::String(now.clone()));
    }
    for k in ["CREATED_BY_ID", "MODIFY_BY_ID"] {
        row.insert(k.into(), Value::String(who.user_id.to_string()));
    }
    if let Some(t) = st.tables.get_mut(&kind) {
        t.rows.insert(id, row);
    }
    st.emit(
        &crm_event(kind, "add"),
        json!({"FIELDS": {"ID": id.to_string()}}),
        who,
        dl,
    );
    id
}

/// Field names as stored (upper case), whichever naming the call used.
fn upper_fields(fields: &Map<String, Value>, item_names: bool) -> Map<String, Value> {
    fields
        .iter()
        .map(|(k, v)| {
            let key = if item_names {
                crm::upper(k)
            } else {
                k.to_ascii_uppercase()
            };
            (key, v.clone())
        })
        .collect()
}

/// A deal's funnel and stage must exist (reference data in `refdata`).
fn check_stage(
    kind: Kind,
    fields: &Map<String, Value>,
    current: Option<&Map<String, Value>>,
    item_names: bool,
) -> Result<(), PErr> {
    if kind != Kind::Deal {
        return Ok(());
    }
    crate::refdata::check_deal_stage(&upper_fields(fields, item_names), current).map_err(|m| {
        if item_names {
            perr(400, "INVALID_ARG_VALUE", &m)
        } else {
            crm_err(&m)
        }
    })
}

fn id_param(params: &Value) -> Result<u64, PErr> {
    get_ci(params, "id")
        .and_then(int)
        .filter(|i| *i > 0)
        .map(|i| i as u64)
        .ok_or_else(|| crm_err("ID is not defined or invalid."))
}

fn fields_param(params: &Value) -> Result<Map<String, Value>, PErr> {
    match get_ci(params, "fields") {
        Some(Value::Object(o)) => Ok(o.clone()),
        Some(Value::Array(a)) if a.is_empty() => Ok(Map::new()),
        _ => Err(crm_err("Parameter 'fields' must be array.")),
    }
}

fn select_param(params: &Value) -> Vec<String> {
    match get_ci(params, "select") {
        Some(Value::Array(a)) => a.iter().map(text).collect(),
        Some(Value::Object(o)) => o.values().map(text).collect(),
        Some(Value::String(s)) if !s.is_empty() => vec![s.clone()],
        _ => vec![],
    }
}

// The list cost model, calibrated to the one published measurement (reference §6,
// huge-data.md): on 2,387,743 leads a counted page took 49.9 s and a `start=-1` page 0.097 s.
// See FIDELITY.md for what is assumed beyond those two figures.

/// One page without counting (`start=-1`, keyset by ID): the published 0.097 s.
const PAGE_SECS: f64 = 0.097;
/// Counting `total`: (49.9 − 0.097) s / 2,387,743 rows.
const COUNT_SECS_PER_ROW: f64 = 49.803 / 2_387_743.0;
/// Skipping `start` rows of an offset page (assumed: a tenth of counting one).
const SKIP_SECS_PER_ROW: f64 = COUNT_SECS_PER_ROW / 10.0;
/// Sorting by anything but ID (assumed).
const SORT_SECS_PER_ROW: f64 = 0.000_001;

/// One page of a list: rows, `next`, `total`, and the call's cost in seconds.
type Page = (Vec<Map<String, Value>>, Option<u64>, Option<u64>, f64);

/// List rows with filter/order/paging. `start = -1` skips counting (no total, no next).
fn list_rows(st: &State, kind: Kind, params: &Value, item_names: bool) -> Result<Page, PErr> {
    let bad = |m: String| {
        if item_names {
            perr(400, "INVALID_ARG_VALUE", &m)
        } else {
            crm_err(&m)
        }
    };
    let filter = crm::parse_filter(get_ci(params, "filter").unwrap_or(&Value::Null), item_names)
        .map_err(bad)?;
    let order = crm::parse_order(get_ci(params, "order"), item_names).map_err(|m| {
        if item_names {
            perr(400, "INVALID_ARG_VALUE", &m)
        } else {
            crm_err("Parameter 'order' must be array.")
        }
    })?;
    let start_raw = get_ci(params, "start").and_then(int).unwrap_or(0);
    let no_count = start_raw == -1;
    let start = start_raw.max(0) as usize;
    let table = &st.tables[&kind];
    let by_id_only = order.iter().all(|(f, _)| f == "ID");
    let desc = order.first().map(|(_, asc)| !asc).unwrap_or(false);
    let lb = filter.id_lower_bound();
    if by_id_only {
        let iter: Box<dyn Iterator<Item = &Map<String, Value>>> = if desc {
            Box::new(table.rows.range(lb..).rev().map(|(_, r)| r))
        } else {
            Box::new(table.rows.range(lb..).map(|(_, r)| r))
        };
        let matching = iter.filter(|r| filter.matches(r));
        if no_count {
            let rows: Vec<_> = matching.take(50).cloned().collect();
            return Ok((rows, None, Some(0), PAGE_SECS));
        }
        let mut rows = Vec::new();
        let mut total = 0usize;
        for r in matching {
            if total >= start && rows.len() < 50 {
                rows.push(r.clone());
            }
            total += 1;
        }
        let next = (start + 50 < total).then_some((start + 50) as u64);
        let cost = PAGE_SECS + total as f64 * COUNT_SECS_PER_ROW + start as f64 * SKIP_SECS_PER_ROW;
        return Ok((rows, next, Some(total as u64), cost));
    }
    let mut all: Vec<&Map<String, Value>> = table
        .rows
        .range(lb..)
        .map(|(_, r)| r)
        .filter(|r| filter.matches(r))
        .collect();
    all.sort_by(|a, b| {
        for (f, asc) in &order {
            let (x, y) = (
                a.get(f).map(text).unwrap_or_default(),
                b.get(f).map(text).unwrap_or_default(),
            );
            let o = match (x.parse::<f64>(), y.parse::<f64>()) {
                (Ok(p), Ok(q)) => p.partial_cmp(&q).unwrap_or(std::cmp::Ordering::Equal),
                _ => x.cmp(&y),
            };
            let o = if *asc { o } else { o.reverse() };
            if o != std::cmp::Ordering::Equal {
                return o;
            }
        }
        std::cmp::Ordering::Equal
    });
    let total = all.len();
    let rows: Vec<_> = all.into_iter().skip(start).take(50).cloned().collect();
    let sort = total as f64 * SORT_SECS_PER_ROW;
    if no_count {
        return Ok((rows, None, Some(0), PAGE_SECS + sort));
    }
    let next = (start + 50 < total).then_some((start + 50) as u64);
    Ok((
        rows,
        next,
        Some(total as u64),
        PAGE_SECS + sort + total as f64 * COUNT_SECS_PER_ROW + start as f64 * SKIP_SECS_PER_ROW,
    ))
}

fn crm_v2(
    st: &mut State,
    who: &Caller,
    kind: Kind,
    verb: &str,
    params: &Value,
    dl: &mut Vec<Delivery>,
) -> Result<Out, PErr> {
    match verb {
        "fields" => ok(crm::describe_fields(kind)),
        "add" => {
            let fields = fields_param(params)?;
            if let Some(p) = get_ci(params, "params")
                && !p.is_object()
                && !p.as_array().map(|a| a.is_empty()).unwrap_or(false)
            {
                return Err(crm_err("Parameter 'params' must be array."));
            }
            if kind == Kind::Contact
                && let Some(Value::Array(emails)) = fields.get("EMAIL")
            {
                for e in emails {
                    let v = e.get("VALUE").map(text).unwrap_or_default();
                    if !v.is_empty() && !v.contains('@') {
                        return Err(perr(
                            400,
                            "ERROR_CORE",
                            &format!("E-mail address \"{v}\" is invalid."),
                        ));
                    }
                }
            }
            check_stage(kind, &fields, None, false)?;
            let id = add(st, who, kind, &fields, false, dl);
            Ok(Out {
                result: json!(id),
                cost: 0.05,
                ..Default::default()
            })
        }
        "get" => {
            let id = id_param(params)?;
            let row = st.tables[&kind]
                .rows
                .get(&id)
                .ok_or_else(|| crm_err("Not found"))?;
            ok(Value::Object(row.clone()))
        }
        "update" => {
            let id = id_param(params)?;
            let fields = fields_param(params)?;
            let mut row = st.tables[&kind]
                .rows
                .get(&id)
                .cloned()
                .ok_or_else(|| crm_err("Not found"))?;
            check_stage(kind, &fields, Some(&row), false)?;
            write_fields(st, kind, &mut row, &fields, false);
            row.insert("DATE_MODIFY".into(), Value::String(iso(st.now())));
            row.insert(
                "MODIFY_BY_ID".into(),
                Value::String(who.user_id.to_string()),
            );
            if let Some(t) = st.tables.get_mut(&kind) {
                t.rows.insert(id, row);
            }
            st.emit(
                &crm_event(kind, "update"),
                json!({"FIELDS": {"ID": id.to_string()}}),
                who,
                dl,
            );
            Ok(Out {
                result: Value::Bool(true),
                cost: 0.04,
                ..Default::default()
            })
        }
        "delete" => {
            let id = id_param(params)?;
            if st
                .tables
                .get_mut(&kind)
                .and_then(|t| t.rows.remove(&id))
                .is_none()
            {
                return Err(crm_err("Not found"));
            }
            st.emit(
                &crm_event(kind, "delete"),
                json!({"FIELDS": {"ID": id.to_string()}}),
                who,
                dl,
            );
            Ok(Out {
                result: Value::Bool(true),
                cost: 0.04,
                ..Default::default()
            })
        }
        "list" => {
            let select = select_param(params);
            let (rows, next, total, cost) = list_rows(st, kind, params, false)?;
            let result = Value::Array(rows.iter().map(|r| crm::select_v2(r, &select)).collect());
            Ok(Out {
                result,
                next,
                total,
                cost,
            })
        }
        _ => Err(perr(404, "ERROR_METHOD_NOT_FOUND", "Method not found!")),
    }
}

fn crm_item(
    st: &mut State,
    who: &Caller,
    verb: &str,
    params: &Value,
    dl: &mut Vec<Delivery>,
) -> Result<Out, PErr> {
    let type_id = get_ci(params, "entityTypeId")
        .and_then(int)
        .ok_or_else(|| perr(400, "INVALID_ARG_VALUE", "entityTypeId is required"))?;
    let kind = Kind::from_type_id(type_id)
        .ok_or_else(|| perr(400, "NOT_FOUND", "Smart process not found"))?;
    let item_of = |st: &State, id: u64| {
        st.tables[&kind]
            .rows
            .get(&id)
            .map(|r| crm::to_item(kind, r))
    };
    match verb {
        "fields" => {
            let mut o = Map::new();
            for (name, ty, ro) in kind.fields() {
                o.insert(crm::camel(name), json!({"type": ty, "isRequired": false, "isReadOnly": ro, "isImmutable": false, "isMultiple": false, "isDynamic": false, "title": name, "upperName": name}));
            }
            ok(json!({"fields": o}))
        }
        "add" => {
            let fields = match get_ci(params, "fields") {
                Some(Value::Object(o)) => o.clone(),
                _ => return Err(perr(400, "INVALID_ARG_VALUE", "fields is required")),
            };
            check_stage(kind, &fields, None, true)?;
            let id = add(st, who, kind, &fields, true, dl);
            Ok(Out {
                result: json!({"item": item_of(st, id)}),
                cost: 0.05,
                ..Default::default()
            })
        }
        "get" => {
            let id = get_ci(params, "id").and_then(int).unwrap_or(0).max(0) as u64;
            let item = item_of(st, id).ok_or_else(|| perr(400, "NOT_FOUND", "Item not found"))?;
            ok(json!({"item": item}))
        }
        "update" => {
            let id = get_ci(params, "id").and_then(int).unwrap_or(0).max(0) as u64;
            let fields = match get_ci(params, "fields") {
                Some(Value::Object(o)) => o.clone(),
                _ => return Err(perr(400, "INVALID_ARG_VALUE", "fields is required")),
            };
            let mut row = st.tables[&kind]
                .rows
                .get(&id)
                .cloned()
                .ok_or_else(|| perr(400, "NOT_FOUND", "Item not found"))?;
            check_stage(kind, &fields, Some(&row), true)?;
            write_fields(st, kind, &mut row, &fields, true);
            row.insert("DATE_MODIFY".into(), Value::String(iso(st.now())));
            if let Some(t) = st.tables.get_mut(&kind) {
                t.rows.insert(id, row);
            }
            st.emit(
                &crm_event(kind, "update"),
                json!({"FIELDS": {"ID": id.to_string()}}),
                who,
                dl,
            );
            Ok(Out {
                result: json!({"item": item_of(st, id)}),
                cost: 0.04,
                ..Default::default()
            })
        }
        "delete" => {
            let id = get_ci(params, "id").and_then(int).unwrap_or(0).max(0) as u64;
            if st
                .tables
                .get_mut(&kind)
                .and_then(|t| t.rows.remove(&id))
                .is_none()
            {
                return Err(perr(400, "NOT_FOUND", "Item not found"));
            }
            st.emit(
                &crm_event(kind, "delete"),
                json!({"FIELDS": {"ID": id.to_string()}}),
                who,
                dl,
            );
            Ok(Out {
                result: json!([]),
                cost: 0.04,
                ..Default::default()
            })
        }
        "list" => {
            if let Some(Value::Object(f)) = get_ci(params, "filter") {
                for k in f.keys() {
                    let name = k.trim_start_matches(|c: char| "!=<>@%".contains(c));
                    if name.chars().all(|c| c.is_ascii_digit()) {
                        continue;
                    }
                    let up = crm::upper(name);
                    if !kind.fields().iter().any(|x| x.0 == up)
                        && !crm::MULTI.contains(&up.as_str())
                        && !up.starts_with("UF_")
                    {
                        return Err(perr(
                            400,
                            "INVALID_ARG_VALUE",
                            &format!("Invalid filter: field '{name}' is not allowed in filter"),
                        ));
                    }
                }
            }
            let select: Vec<String> = select_param(params);
            let (rows, next, total, cost) = list_rows(st, kind, params, true)?;
            let items: Vec<Value> = rows
                .iter()
                .map(|r| {
                    let full = crm::to_item(kind, r);
                    if select.is_empty() || select.iter().any(|s| s == "*") {
                        return full;
                    }
                    let mut o = Map::new();
                    for s in select.iter().chain(std::iter::once(&"id".to_string())) {
                        if let Some(v) = full.get(s.as_str()) {
                            o.insert(s.clone(), v.clone());
                        }
                    }
                    Value::Object(o)
                })
                .collect();
            Ok(Out {
                result: json!({"items": items}),
                next,
                total,
                cost,
            })
        }
        _ => Err(perr(404, "ERROR_METHOD_NOT_FOUND", "Method not found!")),
    }
}

/// Hash of a v3 request body (for Idempotency-Key reuse checks).
pub fn body_hash(v: &Value) -> String {
    hex::encode(sha2::Sha256::digest(v.to_string().as_bytes()))
}

/// REST 3.0 task methods.
pub fn call_v3(st: &mut State, method: &str, params: &Value) -> Result<Value, PErr> {
    let v3 = |status: u16, code: &str, msg: &str| {
        perr(status, &format!("BITRIX_REST_V3_EXCEPTION_{code}"), msg)
    };
    let req_id = || -> Result<u64, PErr> {
        params
            .get("id")
            .and_then(int)
            .filter(|i| *i > 0)
            .map(|i| i as u64)
            .ok_or_else(|| {
                v3(
                    400,
                    "VALIDATION_REQUESTVALIDATIONEXCEPTION",
                    "Required field `id` is not specified",
                )
            })
    };
    let select = |t: &Map<String, Value>| -> Value {
        let sel: Vec<String> = params
            .get("select")
            .and_then(|s| s.as_array())
            .map(|a| a.iter().map(text).collect())
            .unwrap_or_default();
        if sel.is_empty() {
            return json!({"id": t.get("id")});
        }
        let mut o = Map::new();
        for s in sel {
            if let Some(v) = t.get(&s) {
                o.insert(s, v.clone());
            }
        }
        Value::Object(o)
    };
    match method {
        "tasks.task.add" => {
            let fields = params
                .get("fields")
                .and_then(|f| f.as_object())
                .cloned()
                .ok_or_else(|| {
                    v3(
                        400,
                        "VALIDATION_REQUESTVALIDATIONEXCEPTION",
                        "Required field `fields` is not specified",
                    )
                })?;
            if fields.get("title").map(text).unwrap_or_default().is_empty() {
                return Err(v3(
                    400,
                    "VALIDATION_DTOVALIDATIONEXCEPTION",
                    "Field `title` is required",
                ));
            }
            st.next_task += 1;
            let id = st.next_task;
            let mut t = Map::new();
            t.insert("id".into(), json!(id));
            t.insert(
                "title".into(),
                fields.get("title").cloned().unwrap_or_default(),
            );
            t.insert(
                "description".into(),
                fields.get("description").cloned().unwrap_or(json!("")),
            );
            t.insert(
                "responsibleId".into(),
                fields.get("responsibleId").cloned().unwrap_or(json!(1)),
            );
            t.insert("status".into(), json!(2));
            t.insert("createdDate".into(), json!(iso(st.now())));
            st.tasks.insert(id, t.clone());
            Ok(json!({"item": t}))
        }
        "tasks.task.get" => {
            let id = req_id()?;
            let t = st.tasks.get(&id).ok_or_else(|| {
                v3(
                    400,
                    "ENTITYNOTFOUNDEXCEPTION",
                    &format!("Record with ID = `{id}` not found"),
                )
            })?;
            Ok(json!({"item": select(t)}))
        }
        "tasks.task.update" => {
            let id = req_id()?;
            let fields = params
                .get("fields")
                .and_then(|f| f.as_object())
                .cloned()
                .unwrap_or_default();
            let t = st.tasks.get_mut(&id).ok_or_else(|| {
                v3(
                    400,
                    "ENTITYNOTFOUNDEXCEPTION",
                    &format!("Record with ID = `{id}` not found"),
                )
            })?;
            for (k, v) in fields {
                if k != "id" {
                    t.insert(k, v);
                }
            }
            Ok(json!({"result": true}))
        }
        "tasks.task.delete" => {
            let id = req_id()?;
            st.tasks.remove(&id).ok_or_else(|| {
                v3(
                    400,
                    "ENTITYNOTFOUNDEXCEPTION",
                    &format!("Record with ID = `{id}` not found"),
                )
            })?;
            Ok(json!({"result": true}))
        }
        "tasks.task.list" => {
            let limit = params
                .get("pagination")
                .and_then(|p| p.get("limit"))
                .map(|l| int(l).unwrap_or(0))
                .unwrap_or(50);
            if !(1..=1000).contains(&limit) {
                return Err(v3(400, "INVALIDPAGINATIONEXCEPTION", "Invalid pagination"));
            }
            let offset = params
                .get("pagination")
                .and_then(|p| p.get("offset"))
                .and_then(int)
                .unwrap_or(0)
                .max(0) as usize;
            let items: Vec<Value> = st
                .tasks
                .values()
                .skip(offset)
                .take(limit as usize)
                .map(select)
                .collect();
            Ok(json!({"items": items}))
        }
        _ => Err(perr(404, "ERROR_METHOD_NOT_FOUND", "Method not found!")),
    }
}

pub fn v3_write(method: &str) -> bool {
    matches!(
        method,
        "tasks.task.add" | "tasks.task.update" | "tasks.task.delete"
    )
}

pub fn is_v3(method: &str) -> bool {
    method.starts_with("tasks.task.")
}
