//! CRM records: the legacy v2 entities (`crm.lead.*`, …: UPPER keys, values as strings) and
//! the universal `crm.item.*` view of the same records (camelCase, typed) — docs/protocol.md §10.

use std::collections::BTreeMap;

use serde_json::{Map, Value, json};

use crate::params::{int, text};

/// The four classic entity kinds.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Kind {
    Lead,
    Deal,
    Contact,
    Company,
}

impl Kind {
    pub fn from_name(s: &str) -> Option<Kind> {
        match s {
            "lead" => Some(Kind::Lead),
            "deal" => Some(Kind::Deal),
            "contact" => Some(Kind::Contact),
            "company" => Some(Kind::Company),
            _ => None,
        }
    }

    pub fn from_type_id(id: i64) -> Option<Kind> {
        match id {
            1 => Some(Kind::Lead),
            2 => Some(Kind::Deal),
            3 => Some(Kind::Contact),
            4 => Some(Kind::Company),
            _ => None,
        }
    }

    pub fn upper(self) -> &'static str {
        match self {
            Kind::Lead => "LEAD",
            Kind::Deal => "DEAL",
            Kind::Contact => "CONTACT",
            Kind::Company => "COMPANY",
        }
    }

    pub fn type_id(self) -> i64 {
        match self {
            Kind::Lead => 1,
            Kind::Deal => 2,
            Kind::Contact => 3,
            Kind::Company => 4,
        }
    }

    /// Standard (non-multiple) fields, with their type and read-only flag.
    pub fn fields(self) -> &'static [(&'static str, &'static str, bool)] {
        const COMMON: &[(&str, &str, bool)] = &[
            ("ID", "integer", true),
            ("DATE_CREATE", "datetime", true),
            ("DATE_MODIFY", "datetime", true),
            ("CREATED_BY_ID", "user", true),
            ("MODIFY_BY_ID", "user", true),
            ("ASSIGNED_BY_ID", "user", false),
            ("OPENED", "char", false),
            ("COMMENTS", "string", false),
            ("SOURCE_ID", "crm_status", false),
            ("ORIGINATOR_ID", "string", false),
            ("ORIGIN_ID", "string", false),
        ];
        match self {
            Kind::Lead => &[
                ("ID", "integer", true),
                ("TITLE", "string", false),
                ("NAME", "string", false),
                ("SECOND_NAME", "string", false),
                ("LAST_NAME", "string", false),
                ("STATUS_ID", "crm_status", false),
                ("STATUS_SEMANTIC_ID", "string", true),
                ("SOURCE_ID", "crm_status", false),
                ("OPPORTUNITY", "double", false),
                ("CURRENCY_ID", "crm_currency", false),
                ("ASSIGNED_BY_ID", "user", false),
                ("COMPANY_ID", "crm_company", false),
                ("CONTACT_ID", "crm_contact", false),
                ("OPENED", "char", false),
                ("COMMENTS", "string", false),
                ("DATE_CREATE", "datetime", true),
                ("DATE_MODIFY", "datetime", true),
                ("CREATED_BY_ID", "user", true),
                ("MODIFY_BY_ID", "user", true),
                ("HAS_PHONE", "char", true),
                ("HAS_EMAIL", "char", true),
                ("ORIGINATOR_ID", "string", false),
                ("ORIGIN_ID", "string", false),
            ],
            Kind::Deal => &[
                ("ID", "integer", true),
                ("TITLE", "string", false),
                ("TYPE_ID", "crm_status", false),
                ("CATEGORY_ID", "crm_category", false),
                ("STAGE_ID", "crm_status", false),
                ("STAGE_SEMANTIC_ID", "string", true),
                ("PROBABILITY", "integer", false),
                ("CURRENCY_ID", "crm_currency", false),
                ("OPPORTUNITY", "double", false),
                ("COMPANY_ID", "crm_company", false),
                ("CONTACT_ID", "crm_contact", false),
                ("BEGINDATE", "date", false),
                ("CLOSEDATE", "date", false),
                ("OPENED", "char", false),
                ("CLOSED", "char", false),
                ("COMMENTS", "string", false),
                ("ASSIGNED_BY_ID", "user", false),
                ("CREATED_BY_ID", "user", true),
                ("MODIFY_BY_ID", "user", true),
                ("DATE_CREATE", "datetime", true),
                ("DATE_MODIFY", "datetime", true),
                ("SOURCE_ID", "crm_status", false),
                ("LEAD_ID", "crm_lead", false),
                ("ORIGINATOR_ID", "string", false),
                ("ORIGIN_ID", "string", false),
            ],
            Kind::Contact => &[
                ("ID", "integer", true),
                ("HONORIFIC", "crm_status", false),
                ("NAME", "string", false),
                ("SECOND_NAME", "string", false),
                ("LAST_NAME", "string", false),
                ("BIRTHDATE", "date", false),
                ("TYPE_ID", "crm_status", false),
                ("POST", "string", false),
                ("COMPANY_ID", "crm_company", false),
                ("EXPORT", "char", false),
                ("HAS_PHONE", "char", true),
                ("HAS_EMAIL", "char", true),
                ("ASSIGNED_BY_ID", "user", false),
                ("OPENED", "char", false),
                ("COMMENTS", "string", false),
                ("SOURCE_ID", "crm_status", false),
                ("DATE_CREATE", "datetime", true),
                ("DATE_MODIFY", "datetime", true),
                ("CREATED_BY_ID", "user", true),
                ("MODIFY_BY_ID", "user", true),
                ("ORIGINATOR_ID", "string", false),
                ("ORIGIN_ID", "string", false),
            ],
            Kind::Company => {
                let _ = COMMON;
                &[
                    ("ID", "integer", true),
                    ("TITLE", "string", false),
                    ("COMPANY_TYPE", "crm_status", false),
                    ("INDUSTRY", "crm_status", false),
                    ("REVENUE", "double", false),
                    ("CURRENCY_ID", "crm_currency", false),
                    ("EMPLOYEES", "crm_status", false),
                    ("HAS_PHONE", "char", true),
                    ("HAS_EMAIL", "char", true),
                    ("ASSIGNED_BY_ID", "user", false),
                    ("OPENED", "char", false),
                    ("COMMENTS", "string", false),
                    ("DATE_CREATE", "datetime", true),
                    ("DATE_MODIFY", "datetime", true),
                    ("CREATED_BY_ID", "user", true),
                    ("MODIFY_BY_ID", "user", true),
                    ("ORIGINATOR_ID", "string", false),
                    ("ORIGIN_ID", "string", false),
                ]
            }
        }
    }
}

/// Multi-fields (`crm_multifield`), returned only when named in `select`.
pub const MULTI: &[&str] = &["PHONE", "EMAIL", "WEB", "IM", "LINK"];

/// All records of one kind, ordered by ID.
#[derive(Debug, Default)]
pub struct Table {
    pub rows: BTreeMap<u64, Map<String, Value>>,
    pub next_id: u64,
    pub next_multi_id: u64,
}

impl Table {
    pub fn alloc_id(&mut self) -> u64 {
        self.next_id += 1;
        self.next_id
    }
}

/// Store a v2 value the way the portal returns it: scalars as strings.
pub fn v2_value(key: &str, v: &Value, multi_id: &mut u64) -> Value {
    if MULTI.contains(&key) {
        let items: Vec<Value> = match v {
            Value::Array(a) => a.clone(),
            Value::Object(o) => o.values().cloned().collect(),
            _ => vec![],
        };
        return Value::Array(
            items
                .into_iter()
                .filter_map(|it| {
                    let o = it.as_object()?;
                    *multi_id += 1;
                    Some(json!({
                        "ID": multi_id.to_string(),
                        "VALUE_TYPE": o.get("VALUE_TYPE").map(text).unwrap_or_else(|| "WORK".into()),
                        "VALUE": o.get("VALUE").map(text).unwrap_or_default(),
                        "TYPE_ID": key,
                    }))
                })
                .collect(),
        );
    }
    match v {
        Value::Null => Value::Null,
        Value::Bool(b) => Value::String(if *b { "Y" } else { "N" }.into()),
        Value::Number(_) => Value::String(text(v)),
        Value::String(_) => v.clone(),
        Value::Array(_) | Value::Object(_) => v.clone(),
    }
}

/// `ASSIGNED_BY_ID` → `assignedById`.
pub fn camel(upper: &str) -> String {
    if let Some(rest) = upper.strip_prefix("UF_CRM_") {
        return format!("ufCrm_{rest}");
    }
    let mut out = String::new();
    for (i, part) in upper.split('_').filter(|p| !p.is_empty()).enumerate() {
        let lower = part.to_ascii_lowercase();
        if i == 0 {
            out.push_str(&lower);
        } else {
            let mut c = lower.chars();
            if let Some(f) = c.next() {
                out.push(f.to_ascii_uppercase());
                out.extend(c);
            }
        }
    }
    match out.as_str() {
        "createdById" => "createdBy".into(),
        "modifyById" => "updatedBy".into(),
        "dateCreate" => "createdTime".into(),
        "dateModify" => "updatedTime".into(),
        "contactId" => "contactId".into(),
        _ => out,
    }
}

/// `assignedById` → `ASSIGNED_BY_ID` (inverse of [`camel`]).
pub fn upper(camel_name: &str) -> String {
    match camel_name {
        "createdBy" => return "CREATED_BY_ID".into(),
        "updatedBy" => return "MODIFY_BY_ID".into(),
        "createdTime" => return "DATE_CREATE".into(),
        "updatedTime" => return "DATE_MODIFY".into(),
        _ => {}
    }
    if let Some(rest) = camel_name.strip_prefix("ufCrm_") {
        return format!("UF_CRM_{rest}");
    }
    let mut out = String::new();
    for c in camel_name.chars() {
        if c.is_ascii_uppercase() && !out.is_empty() {
            out.push('_');
        }
        out.push(c.to_ascii_uppercase());
    }
    out
}

/// The typed camelCase item of `crm.item.*`.
pub fn to_item(kind: Kind, row: &Map<String, Value>) -> Value {
    let mut o = Map::new();
    for (k, v) in row {
        if MULTI.contains(&k.as_str()) {
            continue;
        }
        let ty = kind
            .fields()
            .iter()
            .find(|f| f.0 == k)
            .map(|f| f.1)
            .unwrap_or("string");
        let typed = match (ty, v) {
            (
                "integer" | "user" | "crm_company" | "crm_contact" | "crm_lead" | "crm_category",
                Value::String(s),
            ) => s.parse::<i64>().map(Value::from).unwrap_or(Value::Null),
            ("double", Value::String(s)) => {
                s.parse::<f64>().map(Value::from).unwrap_or(Value::Null)
            }
            _ => v.clone(),
        };
        o.insert(camel(k), typed);
    }
    o.insert("entityTypeId".into(), json!(kind.type_id()));
    Value::Object(o)
}

/// One parsed filter condition.
#[derive(Debug, Clone)]
pub struct Cond {
    pub op: &'static str,
    pub field: String,
    pub value: Value,
}

/// A filter: ANDed conditions, plus nested OR groups (crm.item.list).
#[derive(Debug, Clone, Default)]
pub struct Filter {
    pub all: Vec<Cond>,
    pub any_groups: Vec<Vec<Filter>>,
}

const OPS: &[&str] = &[
    "!=%", "!%=", "!@", "!%", ">=", "<=", "!=", "=%", "%=", "@", "%", ">", "<", "!", "=",
];

/// Parse `{"<op><FIELD>": value}`; `to_upper` converts camelCase names (crm.item).
pub fn parse_filter(v: &Value, to_upper: bool) -> Result<Filter, String> {
    let mut f = Filter::default();
    let Some(o) = v.as_object() else {
        return match v {
            Value::Null => Ok(f),
            Value::Array(a) if a.is_empty() => Ok(f),
            _ => Err("Parameter 'filter' must be array.".into()),
        };
    };
    for (k, val) in o {
        if let Some(group) = val
            .as_object()
            .filter(|g| g.get("logic").is_some() || g.get("LOGIC").is_some())
        {
            let logic = group
                .get("logic")
                .or_else(|| group.get("LOGIC"))
                .map(text)
                .unwrap_or_default();
            let mut subs = Vec::new();
            for (gk, gv) in group {
                if gk.eq_ignore_ascii_case("logic") {
                    continue;
                }
                subs.push(parse_filter(gv, to_upper)?);
            }
            if logic.eq_ignore_ascii_case("or") {
                f.any_groups.push(subs);
            } else {
                for s in subs {
                    f.all.extend(s.all);
                    f.any_groups.extend(s.any_groups);
                }
            }
            continue;
        }
        let op = OPS
            .iter()
            .find(|op| k.starts_with(**op))
            .copied()
            .unwrap_or("");
        let name = &k[op.len()..];
        let field = if to_upper {
            upper(name)
        } else {
            name.to_ascii_uppercase()
        };
        f.all.push(Cond {
            op: if op.is_empty() { "=" } else { op },
            field,
            value: val.clone(),
        });
    }
    Ok(f)
}

impl Filter {
    pub fn matches(&self, row: &Map<String, Value>) -> bool {
        self.all.iter().all(|c| c.matches(row))
            && self
                .any_groups
                .iter()
                .all(|g| g.iter().any(|sub| sub.matches(row)))
    }

    /// A lower bound on ID implied by `>ID` / `>=ID` (lets keyset pages skip straight there).
    pub fn id_lower_bound(&self) -> u64 {
        let mut lb = 0;
        for c in &self.all {
            if c.field == "ID"
                && let Some(n) = int(&c.value)
            {
                match c.op {
                    ">" => lb = lb.max((n.max(0) as u64) + 1),
                    ">=" => lb = lb.max(n.max(0) as u64),
                    _ => {}
                }
            }
        }
        lb
    }
}

fn values_of(row: &Map<String, Value>, field: &str) -> Vec<String> {
    match row.get(field) {
        None | Some(Value::Null) => vec![String::new()],
        Some(Value::Array(items)) => items
            .iter()
            .map(|i| i.get("VALUE").map(text).unwrap_or_else(|| text(i)))
            .collect(),
        Some(v) => vec![text(v)],
    }
}

fn cmp(a: &str, b: &str) -> std::cmp::Ordering {
    match (a.trim().parse::<f64>(), b.trim().parse::<f64>()) {
        (Ok(x), Ok(y)) => x.partial_cmp(&y).unwrap_or(std::cmp::Ordering::Equal),
        _ => a.to_lowercase().cmp(&b.to_lowercase()),
    }
}

fn like(hay: &str, pattern: &str) -> bool {
    // `%` wildcards, case-insensitive.
    let hay = hay.to_lowercase();
    let parts: Vec<String> = pattern
        .to_lowercase()
        .split('%')
        .map(str::to_string)
        .collect();
    if parts.len() == 1 {
        return hay == parts[0];
    }
    let mut pos = 0;
    for (i, p) in parts.iter().enumerate() {
        if p.is_empty() {
            continue;
        }
        if i == 0 {
            if !hay.starts_with(p.as_str()) {
                return false;
            }
            pos = p.len();
        } else if i == parts.len() - 1 {
            return hay[pos..].ends_with(p.as_str());
        } else {
            match hay[pos..].find(p.as_str()) {
                Some(at) => pos += at + p.len(),
                None => return false,
            }
        }
    }
    true
}

impl Cond {
    fn matches(&self, row: &Map<String, Value>) -> bool {
        let vals = values_of(row, &self.field);
        let targets: Vec<String> = match &self.value {
            Value::Array(a) => a.iter().map(text).collect(),
            v => vec![text(v)],
        };
        let any =
            |f: &dyn Fn(&str, &str) -> bool| vals.iter().any(|v| targets.iter().any(|t| f(v, t)));
        use std::cmp::Ordering::*;
        match self.op {
            "=" | "@" => any(&|v, t| cmp(v, t) == Equal),
            "!" | "!=" | "!@" => !any(&|v, t| cmp(v, t) == Equal),
            ">" => any(&|v, t| !v.is_empty() && cmp(v, t) == Greater),
            ">=" => any(&|v, t| !v.is_empty() && cmp(v, t) != Less),
            "<" => any(&|v, t| !v.is_empty() && cmp(v, t) == Less),
            "<=" => any(&|v, t| !v.is_empty() && cmp(v, t) != Greater),
            "%" => any(&|v, t| v.to_lowercase().contains(&t.to_lowercase())),
            "!%" => !any(&|v, t| v.to_lowercase().contains(&t.to_lowercase())),
            "=%" | "%=" => any(&|v, t| like(v, t)),
            "!=%" | "!%=" => !any(&|v, t| like(v, t)),
            _ => false,
        }
    }
}

/// Parse `order`: `{FIELD: ASC|DESC}`.
pub fn parse_order(v: Option<&Value>, to_upper: bool) -> Result<Vec<(String, bool)>, String> {
    let Some(v) = v else { return Ok(vec![]) };
    match v {
        Value::Null => Ok(vec![]),
        Value::Array(a) if a.is_empty() => Ok(vec![]),
        Value::Object(o) => o
            .iter()
            .map(|(k, d)| {
                let dir = text(d).to_ascii_uppercase();
                let field = if to_upper {
                    upper(k)
                } else {
                    k.to_ascii_uppercase()
                };
                match dir.as_str() {
                    "ASC" | "" => Ok((field, true)),
                    "DESC" => Ok((field, false)),
                    _ => Err(format!(
                        "Invalid order: allowed sort directions are ASC, DESC; got `{dir}`"
                    )),
                }
            })
            .collect(),
        _ => Err("Parameter 'order' must be array.".into()),
    }
}

/// Apply `select` to a v2 row: `*` = standard non-multiple fields, `UF_*` = user fields,
/// named fields (multi-fields only when named). No select = every field except multi-fields.
pub fn select_v2(row: &Map<String, Value>, select: &[String]) -> Value {
    let mut out = Map::new();
    let all = select.is_empty() || select.iter().any(|s| s == "*");
    let uf = select.is_empty() || select.iter().any(|s| s == "UF_*");
    for (k, v) in row {
        let is_multi = MULTI.contains(&k.as_str());
        let is_uf = k.starts_with("UF_");
        let named = select.iter().any(|s| s.eq_ignore_ascii_case(k));
        if named || (all && !is_multi && !is_uf) || (uf && is_uf) {
            out.insert(k.clone(), v.clone());
        }
    }
    if !out.contains_key("ID")
        && let Some(id) = row.get("ID")
    {
        out.insert("ID".into(), id.clone());
    }
    Value::Object(out)
}

/// `crm.X.fields`: field descriptions.
pub fn describe_fields(kind: Kind) -> Value {
    let mut o = Map::new();
    for (name, ty, ro) in kind.fields() {
        o.insert(
            name.to_string(),
            json!({"type": ty, "isRequired": false, "isReadOnly": ro, "isImmutable": false, "isMultiple": false, "isDynamic": false, "title": name}),
        );
    }
    for m in MULTI {
        o.insert(
            m.to_string(),
            json!({"type": "crm_multifield", "isRequired": false, "isReadOnly": false, "isImmutable": false, "isMultiple": true, "isDynamic": false, "title": m}),
        );
    }
    Value::Object(o)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_round_trip() {
        for u in [
            "ASSIGNED_BY_ID",
            "TITLE",
            "STATUS_ID",
            "CREATED_BY_ID",
            "DATE_CREATE",
            "OPPORTUNITY",
        ] {
            assert_eq!(upper(&camel(u)), u);
        }
    }

    #[test]
    fn filters() {
        let row: Map<String, Value> = serde_json::from_value(json!({"ID":"7","TITLE":"Acme deal","OPPORTUNITY":"150.00","PHONE":[{"VALUE":"555888"}]})).unwrap();
        let t = |f: Value| parse_filter(&f, false).unwrap().matches(&row);
        assert!(t(json!({">ID": 6, "<=ID": "7"})));
        assert!(!t(json!({">ID": 7})));
        assert!(t(json!({"%TITLE": "acme"})));
        assert!(t(json!({"=%TITLE": "Acme%"})));
        assert!(!t(json!({"!%TITLE": "acme"})));
        assert!(t(json!({"@ID": [1, 7]})));
        assert!(t(json!({"!@ID": [1, 2]})));
        assert!(t(json!({"PHONE": "555888"})));
        assert!(t(json!({">=OPPORTUNITY": 150})));
        assert!(t(json!({"0": {"logic":"OR","0":{"=ID":1},"1":{"=ID":7}}})));
        assert!(!t(json!({"0": {"logic":"OR","0":{"=ID":1},"1":{"=ID":2}}})));
    }
}
