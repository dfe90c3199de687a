//! The portal's own field list, merged with the documented one.
//!
//! The documentation lists an entity's standard fields; a portal adds its own user fields
//! (`UF_CRM_…`, `ufCrm…`) and may lack some standard ones. A method with a `*.fields`
//! companion (`crm.deal.add` → `crm.deal.fields`) can ask the portal, and the merged list says
//! for each field whether the documentation has it, whether the portal has it, and whether it
//! is a custom field. The front ends fetch the companion through the gate (it is a read) and
//! render; the deciding is here.

use serde_json::{Map, Value};

use super::{MethodDoc, Param};
use crate::catalog::Catalog;

/// One field as the portal describes it (`crm.deal.fields` and similar).
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct LiveField {
    pub name: String,
    pub ty: String,
    pub required: bool,
    pub read_only: bool,
    pub multiple: bool,
    /// Values of a list field (`items[].VALUE` / `ID`), when the portal gives them.
    pub values: Vec<String>,
    /// The portal's label (an operator-chosen name for custom fields).
    pub label: String,
}

/// A field of the merged list.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct MergedField {
    pub name: String,
    #[serde(rename = "type")]
    pub ty: String,
    pub required: bool,
    pub read_only: bool,
    pub multiple: bool,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub values: Vec<String>,
    #[serde(skip_serializing_if = "String::is_empty")]
    pub label: String,
    /// In the documentation's list.
    pub documented: bool,
    /// In the portal's list.
    pub live: bool,
    /// A user field of this portal (`UF_*`, `ufCrm*`).
    pub custom: bool,
}

/// A user field's name.
pub fn is_custom(name: &str) -> bool {
    let l = name.to_ascii_lowercase();
    l.starts_with("uf_") || l.starts_with("ufcrm")
}

/// The `*.fields` companion of a method that takes a `fields` object (`crm.deal.add` →
/// `crm.deal.fields`), when the catalog has it and it is not the method itself.
pub fn companion(doc: &MethodDoc, catalog: &Catalog) -> Option<String> {
    doc.param("fields")?;
    let (prefix, verb) = doc.method.rsplit_once('.')?;
    if verb.eq_ignore_ascii_case("fields") {
        return None;
    }
    for cand in [format!("{prefix}.fields"), format!("{prefix}.getfields")] {
        if let Some(m) = catalog.get(&cand) {
            return Some(m.name.clone());
        }
    }
    None
}

fn text(v: Option<&Value>) -> String {
    match v {
        Some(Value::String(s)) => s.clone(),
        Some(Value::Number(n)) => n.to_string(),
        _ => String::new(),
    }
}

fn flag(v: Option<&Value>) -> bool {
    match v {
        Some(Value::Bool(b)) => *b,
        Some(Value::String(s)) => s.eq_ignore_ascii_case("y") || s == "1" || s == "true",
        Some(Value::Number(n)) => n.as_i64() == Some(1),
        _ => false,
    }
}

/// Read a companion's `result`: `{NAME: {type, isRequired, …}}`, or the same under `fields`
/// (`crm.item.fields`). Entries that are not objects are skipped.
pub fn live_fields(result: &Value) -> Vec<LiveField> {
    let map: Option<&Map<String, Value>> = match result.get("fields") {
        Some(Value::Object(f)) if f.values().all(Value::is_object) => Some(f),
        _ => result.as_object(),
    };
    let Some(map) = map else {
        return Vec::new();
    };
    map.iter()
        .filter_map(|(name, d)| {
            let d = d.as_object()?;
            let values = d
                .get("items")
                .and_then(Value::as_array)
                .map(|a| {
                    a.iter()
                        .filter_map(|i| {
                            let id = text(i.get("ID").or_else(|| i.get("id")));
                            (!id.is_empty()).then_some(id)
                        })
                        .take(100)
                        .collect()
                })
                .unwrap_or_default();
            let label = ["formLabel", "listLabel", "title"]
                .iter()
                .map(|k| text(d.get(*k)))
                .find(|s| !s.is_empty() && s != name)
                .unwrap_or_default();
            Some(LiveField {
                name: name.clone(),
                ty: text(d.get("type")),
                required: flag(d.get("isRequired")),
                read_only: flag(d.get("isReadOnly")),
                multiple: flag(d.get("isMultiple")),
                values,
                label,
            })
        })
        .collect()
}

/// Documented `fields` of the method merged with the portal's list: documented fields first
/// (in the documentation's order), then the portal's others (custom fields last).
pub fn merge_live(doc: &MethodDoc, live: &[LiveField]) -> Vec<MergedField> {
    let documented: &[Param] = doc
        .param("fields")
        .map(|p| p.fields.as_slice())
        .unwrap_or(&[]);
    let mut out: Vec<MergedField> = documented
        .iter()
        .map(|p| {
            let l = live.iter().find(|l| l.name.eq_ignore_ascii_case(&p.name));
            MergedField {
                name: p.name.clone(),
                ty: l
                    .map(|l| l.ty.clone())
                    .filter(|t| !t.is_empty())
                    .unwrap_or_else(|| p.ty.clone()),
                required: p.required || l.is_some_and(|l| l.required),
                read_only: l.is_some_and(|l| l.read_only),
                multiple: l.is_some_and(|l| l.multiple),
                values: if p.values.is_empty() {
                    l.map(|l| l.values.clone()).unwrap_or_default()
                } else {
                    p.values.clone()
                },
                label: String::new(),
                documented: true,
                live: l.is_some(),
                custom: is_custom(&p.name),
            }
        })
        .collect();
    let mut extra: Vec<MergedField> = live
        .iter()
        .filter(|l| {
            !documented
                .iter()
                .any(|p| p.name.eq_ignore_ascii_case(&l.name))
        })
        .map(|l| MergedField {
            name: l.name.clone(),
            ty: l.ty.clone(),
            required: l.required,
            read_only: l.read_only,
            multiple: l.multiple,
            values: l.values.clone(),
            label: if is_custom(&l.name) {
                l.label.clone()
            } else {
                String::new()
            },
            documented: false,
            live: true,
            custom: is_custom(&l.name),
        })
        .collect();
    extra.sort_by_key(|f| f.custom);
    out.extend(extra);
    out
}
