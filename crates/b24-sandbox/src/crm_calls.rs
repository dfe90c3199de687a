//! The CRM entity methods (`crm.lead.*`, `crm.deal.*`, `crm.contact.*`, `crm.company.*`,
//! `crm.item.*`): field writes, the events they emit, the stage check, and the list cost model.

use serde_json::{Map, Value, json};

use crate::crm::{self, Kind};
use crate::events::Delivery;
use crate::methods::{Caller, Out, PErr, crm_err, ok, perr};
use crate::params::{get_ci, int, text};
use crate::state::{State, iso};

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

/// Update row `id` of `kind` as both APIs do: the stage check first, then the fields, the
/// modification stamp (when and by whom) and the `update` event. `missing` is the error the
/// API answers for an unknown id (the two APIs word it differently).
#[allow(clippy::too_many_arguments)]
fn update(
    st: &mut State,
    who: &Caller,
    kind: Kind,
    id: u64,
    fields: &Map<String, Value>,
    item_names: bool,
    dl: &mut Vec<Delivery>,
    missing: impl FnOnce() -> PErr,
) -> Result<(), PErr> {
    let mut row = st.tables[&kind]
        .rows
        .get(&id)
        .cloned()
        .ok_or_else(missing)?;
    check_stage(kind, fields, Some(&row), item_names)?;
    write_fields(st, kind, &mut row, fields, item_names);
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
    Ok(())
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

// The list cost model, calibrated to the one published measurement (docs/protocol.md §6,
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

pub fn crm_v2(
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
            update(st, who, kind, id, &fields, false, dl, || {
                crm_err("Not found")
            })?;
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

pub fn crm_item(
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
            update(st, who, kind, id, &fields, true, dl, || {
                perr(400, "NOT_FOUND", "Item not found")
            })?;
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
