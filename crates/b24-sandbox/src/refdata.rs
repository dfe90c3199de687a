//! CRM reference data: the status directories (`crm.status.list`, `crm.status.entity.items`),
//! deal funnels (`crm.category.list`, `crm.dealcategory.stage.list`) and the stage check a
//! deal write meets. The directory mirrors a fresh English portal as the documentation's
//! examples show it: the default funnel's eight stages, plus one extra funnel (`C1:`) so
//! clients meet category-prefixed stage IDs.

use serde_json::{Map, Value, json};

use crate::crm;
use crate::methods::{Out, PErr, perr};
use crate::params::{get_ci, int, text};

/// (ENTITY_ID, STATUS_ID, NAME, SORT, semantics, color, CATEGORY_ID).
type Status = (
    &'static str,
    &'static str,
    &'static str,
    u32,
    &'static str,
    &'static str,
    Option<u32>,
);

const P: &str = "process";
const S: &str = "success";
const F: &str = "failure";

const STATUSES: &[Status] = &[
    ("STATUS", "NEW", "Unassigned", 10, P, "#39A8EF", None),
    (
        "STATUS",
        "IN_PROCESS",
        "In progress",
        20,
        P,
        "#2FC6F6",
        None,
    ),
    ("STATUS", "PROCESSED", "Processed", 30, P, "#55D0E0", None),
    ("STATUS", "CONVERTED", "Good lead", 40, S, "#7BD500", None),
    ("STATUS", "JUNK", "Junk lead", 50, F, "#FF5752", None),
    ("SOURCE", "CALL", "Call", 10, "", "", None),
    ("SOURCE", "EMAIL", "E-Mail", 20, "", "", None),
    ("SOURCE", "WEB", "Website", 30, "", "", None),
    ("SOURCE", "ADVERTISING", "Advertising", 40, "", "", None),
    ("SOURCE", "PARTNER", "Existing client", 50, "", "", None),
    (
        "SOURCE",
        "RECOMMENDATION",
        "By recommendation",
        60,
        "",
        "",
        None,
    ),
    ("SOURCE", "TRADE_SHOW", "Show/Exhibition", 70, "", "", None),
    ("SOURCE", "WEBFORM", "CRM form", 80, "", "", None),
    ("SOURCE", "OTHER", "Other", 90, "", "", None),
    ("DEAL_STAGE", "NEW", "New", 10, P, "#39A8EF", None),
    (
        "DEAL_STAGE",
        "PREPARATION",
        "Document preparation",
        20,
        P,
        "#2FC6F6",
        None,
    ),
    (
        "DEAL_STAGE",
        "PREPAYMENT_INVOICE",
        "Prepayment invoice",
        30,
        P,
        "#55D0E0",
        None,
    ),
    (
        "DEAL_STAGE",
        "EXECUTING",
        "In progress",
        40,
        P,
        "#47E4C2",
        None,
    ),
    (
        "DEAL_STAGE",
        "FINAL_INVOICE",
        "Final invoice",
        50,
        P,
        "#FFA900",
        None,
    ),
    (
        "DEAL_STAGE",
        "WON",
        "Deal successful",
        60,
        S,
        "#7BD500",
        None,
    ),
    ("DEAL_STAGE", "LOSE", "Deal failed", 70, F, "#FF5752", None),
    (
        "DEAL_STAGE",
        "APOLOGY",
        "Failure reason analysis",
        80,
        "apology",
        "#FF5752",
        None,
    ),
    ("DEAL_STAGE_1", "C1:NEW", "New", 10, P, "#39A8EF", Some(1)),
    (
        "DEAL_STAGE_1",
        "C1:PREPARATION",
        "Negotiation",
        20,
        P,
        "#2FC6F6",
        Some(1),
    ),
    (
        "DEAL_STAGE_1",
        "C1:WON",
        "Deal successful",
        30,
        S,
        "#7BD500",
        Some(1),
    ),
    (
        "DEAL_STAGE_1",
        "C1:LOSE",
        "Deal failed",
        40,
        F,
        "#FF5752",
        Some(1),
    ),
    ("DEAL_TYPE", "SALE", "Sales", 10, "", "", None),
    ("DEAL_TYPE", "COMPLEX", "Integrated sales", 20, "", "", None),
    ("DEAL_TYPE", "GOODS", "Merchandise sales", 30, "", "", None),
    ("DEAL_TYPE", "SERVICES", "Service sales", 40, "", "", None),
    (
        "DEAL_TYPE",
        "SERVICE",
        "After-sales service",
        50,
        "",
        "",
        None,
    ),
    ("CONTACT_TYPE", "CLIENT", "Clients", 10, "", "", None),
    ("CONTACT_TYPE", "SUPPLIER", "Suppliers", 20, "", "", None),
    ("CONTACT_TYPE", "PARTNER", "Partners", 30, "", "", None),
    ("CONTACT_TYPE", "OTHER", "Other", 40, "", "", None),
    ("COMPANY_TYPE", "CUSTOMER", "Client", 10, "", "", None),
    ("COMPANY_TYPE", "SUPPLIER", "Supplier", 20, "", "", None),
    ("COMPANY_TYPE", "COMPETITOR", "Competitor", 30, "", "", None),
    ("COMPANY_TYPE", "PARTNER", "Partner", 40, "", "", None),
    ("COMPANY_TYPE", "OTHER", "Other", 50, "", "", None),
];

/// Deal funnels: (id, name, sort, is default).
const DEAL_CATEGORIES: &[(u32, &str, u32, bool)] =
    &[(0, "General", 100, true), (1, "Partners", 200, false)];

fn stage_entity(category: u32) -> String {
    if category == 0 {
        "DEAL_STAGE".into()
    } else {
        format!("DEAL_STAGE_{category}")
    }
}

fn status_json(i: usize, s: &Status) -> Map<String, Value> {
    let (entity, id, name, sort, sem, color, cat) = *s;
    let short = match sem {
        "success" => json!("S"),
        "failure" | "apology" => json!("F"),
        _ => Value::Null,
    };
    let system = matches!(id, "NEW" | "WON" | "LOSE" | "CONVERTED" | "JUNK")
        || id.ends_with(":NEW")
        || id.ends_with(":WON")
        || id.ends_with(":LOSE");
    let mut o = Map::new();
    o.insert("ID".into(), json!((i + 1).to_string()));
    o.insert("ENTITY_ID".into(), json!(entity));
    o.insert("STATUS_ID".into(), json!(id));
    o.insert("NAME".into(), json!(name));
    o.insert("NAME_INIT".into(), json!(if system { name } else { "" }));
    o.insert("SORT".into(), json!(sort.to_string()));
    o.insert("SYSTEM".into(), json!(if system { "Y" } else { "N" }));
    o.insert("CATEGORY_ID".into(), json!(cat.map(|c| c.to_string())));
    o.insert("COLOR".into(), json!(color));
    o.insert("SEMANTICS".into(), short);
    if !sem.is_empty() {
        o.insert("EXTRA".into(), json!({"SEMANTICS": sem, "COLOR": color}));
    }
    o
}

fn crm_err(desc: &str) -> PErr {
    perr(400, "", desc)
}

fn out(result: Value, total: Option<u64>) -> Result<Out, PErr> {
    Ok(Out {
        result,
        total,
        cost: 0.01,
        ..Default::default()
    })
}

fn items_of(entity: &str) -> Vec<Value> {
    STATUSES
        .iter()
        .filter(|s| s.0 == entity)
        .map(|s| json!({"NAME": s.2, "SORT": s.3, "STATUS_ID": s.1}))
        .collect()
}

/// The reference-data methods this module answers.
pub fn known(method: &str) -> bool {
    matches!(
        method,
        "crm.status.list"
            | "crm.status.entity.items"
            | "crm.category.list"
            | "crm.dealcategory.stage.list"
    )
}

pub fn call(method: &str, params: &Value) -> Result<Out, PErr> {
    match method {
        "crm.status.list" => {
            let filter = crm::parse_filter(get_ci(params, "filter").unwrap_or(&Value::Null), false)
                .map_err(|_| crm_err("Invalid parameters."))?;
            let order = crm::parse_order(get_ci(params, "order"), false)
                .map_err(|_| crm_err("Invalid parameters."))?;
            let mut rows: Vec<Map<String, Value>> = STATUSES
                .iter()
                .enumerate()
                .map(|(i, s)| status_json(i, s))
                .filter(|r| filter.matches(r))
                .collect();
            for (field, asc) in order.iter().rev() {
                rows.sort_by(|a, b| {
                    let (x, y) = (
                        a.get(field).map(text).unwrap_or_default(),
                        b.get(field).map(text).unwrap_or_default(),
                    );
                    let o = match (x.parse::<f64>(), y.parse::<f64>()) {
                        (Ok(p), Ok(q)) => p.total_cmp(&q),
                        _ => x.cmp(&y),
                    };
                    if *asc { o } else { o.reverse() }
                });
            }
            let total = rows.len() as u64;
            out(
                Value::Array(rows.into_iter().take(50).map(Value::Object).collect()),
                Some(total),
            )
        }
        "crm.status.entity.items" => {
            let entity = get_ci(params, "entityId").map(text).unwrap_or_default();
            let items = items_of(&entity);
            if entity.is_empty() || items.is_empty() {
                return Err(crm_err("The parameter entityId is not defined or invalid."));
            }
            out(Value::Array(items), None)
        }
        "crm.dealcategory.stage.list" => {
            let id = get_ci(params, "id").and_then(int).unwrap_or(0);
            let known = DEAL_CATEGORIES.iter().any(|c| i64::from(c.0) == id);
            if !known {
                return Err(crm_err("Could not find deal category."));
            }
            out(Value::Array(items_of(&stage_entity(id as u32))), None)
        }
        "crm.category.list" => {
            let type_id = get_ci(params, "entityTypeId")
                .and_then(int)
                .ok_or_else(|| perr(400, "INVALID_ARG_VALUE", "entityTypeId is required"))?;
            let cats: Vec<Value> = match type_id {
                2 => DEAL_CATEGORIES
                    .iter()
                    .map(|(id, name, sort, default)| {
                        json!({"id": id, "name": name, "sort": sort, "entityTypeId": 2,
                               "isDefault": if *default { "Y" } else { "N" }})
                    })
                    .collect(),
                3 | 4 => vec![json!({"id": 0, "name": "General", "sort": 100,
                                     "entityTypeId": type_id, "isDefault": "Y"})],
                _ => {
                    return Err(perr(
                        400,
                        "NOT_FOUND",
                        "Entity type does not support categories",
                    ));
                }
            };
            let n = cats.len() as u64;
            out(json!({"categories": cats}), Some(n))
        }
        _ => Err(perr(404, "ERROR_METHOD_NOT_FOUND", "Method not found!")),
    }
}

/// Check a deal's `CATEGORY_ID`/`STAGE_ID` (upper-case field names) against the funnels.
/// `current` is the stored deal on an update. A stage from another funnel, or one that does
/// not exist, is refused instead of being stored.
pub fn check_deal_stage(
    fields: &Map<String, Value>,
    current: Option<&Map<String, Value>>,
) -> Result<(), String> {
    let cat_of = |m: &Map<String, Value>| m.get("CATEGORY_ID").and_then(int);
    let category = cat_of(fields)
        .or_else(|| current.and_then(cat_of))
        .unwrap_or(0);
    if !DEAL_CATEGORIES.iter().any(|c| i64::from(c.0) == category) {
        return Err(format!("Category with ID {category} is not found"));
    }
    let Some(stage) = fields.get("STAGE_ID").map(text) else {
        return Ok(());
    };
    let entity = stage_entity(category as u32);
    if STATUSES.iter().any(|s| s.0 == entity && s.1 == stage) {
        Ok(())
    } else {
        Err(format!(
            "Stage \"{stage}\" is not found in category {category}"
        ))
    }
}

/// The first stage of a funnel (a new deal's default).
pub fn first_stage(category: i64) -> &'static str {
    let entity = stage_entity(category.max(0) as u32);
    STATUSES
        .iter()
        .find(|s| s.0 == entity)
        .map(|s| s.1)
        .unwrap_or("NEW")
}
