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

/// What the portal said about a method's fields, merged (or why it could not be asked).
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct LiveReport {
    /// The companion asked (`crm.deal.fields`).
    pub from: String,
    pub fields: Vec<MergedField>,
    pub custom: usize,
    pub undocumented: usize,
}

/// Ask the portal for the method's fields through the gate (a read: the policy, the audit log
/// and every other step apply) and merge them with the documented ones. `Ok(None)` when the
/// method has no companion or the companion needs parameters that were not given (`extra`
/// supplies them, e.g. `{"entityTypeId": 2}` for `crm.item.fields`).
pub async fn fetch_live(
    gate: &crate::gate::Gate,
    doc: &MethodDoc,
    extra: serde_json::Value,
) -> Result<Option<LiveReport>, crate::gate::GateError> {
    let Some(from) = companion(doc, gate.catalog()) else {
        return Ok(None);
    };
    if let Some(c) = super::Knowledge::builtin().get(&from) {
        let missing = c.params.iter().filter(|p| p.required).any(|p| {
            !extra
                .as_object()
                .is_some_and(|o| o.keys().any(|k| k.eq_ignore_ascii_case(&p.name)))
        });
        if missing {
            return Ok(None);
        }
    }
    let req = crate::gate::CallRequest {
        method: from.clone(),
        params: if extra.is_object() {
            extra
        } else {
            serde_json::json!({})
        },
        reads_only: true,
        ..Default::default()
    };
    let out = gate.call(req, &crate::gate::NoPerson).await?;
    let crate::gate::CallOutcome::Done { response, .. } = out else {
        return Ok(None);
    };
    let live = live_fields(&response.result);
    let fields = merge_live(doc, &live);
    Ok(Some(LiveReport {
        custom: fields.iter().filter(|f| f.custom).count(),
        undocumented: fields.iter().filter(|f| !f.documented).count(),
        from,
        fields,
    }))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn merges_documented_live_and_custom_fields() {
        let doc = crate::knowledge::Knowledge::builtin()
            .get("crm.deal.add")
            .expect("crm.deal.add is documented");
        let live = live_fields(&json!({
            "TITLE": {"type": "string", "isRequired": false, "isReadOnly": false, "isMultiple": false, "title": "Name"},
            "ID": {"type": "integer", "isRequired": false, "isReadOnly": true, "isMultiple": false, "title": "ID"},
            "UF_CRM_1721244482250": {"type": "enumeration", "isRequired": true, "isReadOnly": false, "isMultiple": true,
                "formLabel": "Region", "items": [{"ID": "41", "VALUE": "North"}, {"ID": "42", "VALUE": "South"}]},
            "broken": "not an object"
        }));
        assert_eq!(live.len(), 3);
        let merged = merge_live(&doc, &live);
        let title = merged.iter().find(|f| f.name == "TITLE").unwrap();
        assert!(title.documented && title.live && !title.custom);
        let probability = merged.iter().find(|f| f.name == "PROBABILITY").unwrap();
        assert!(
            probability.documented && !probability.live,
            "documented, not on this portal"
        );
        let id = merged.iter().find(|f| f.name == "ID").unwrap();
        assert!(!id.documented && id.live && id.read_only);
        let uf = merged.last().unwrap();
        assert_eq!(uf.name, "UF_CRM_1721244482250");
        assert!(uf.custom && uf.live && !uf.documented && uf.required && uf.multiple);
        assert_eq!(uf.values, ["41", "42"]);
        assert_eq!(uf.label, "Region");
    }

    #[test]
    fn item_fields_are_read_under_fields() {
        let live = live_fields(
            &json!({"fields": {"title": {"type": "string", "isRequired": true}, "ufCrm5_123": {"type": "string"}}}),
        );
        assert_eq!(live.len(), 2);
        assert!(
            live.iter()
                .any(|f| f.name == "ufCrm5_123" && is_custom(&f.name))
        );
    }

    #[test]
    fn companions() {
        let k = crate::knowledge::Knowledge::builtin();
        let cat = Catalog::builtin();
        assert_eq!(
            companion(&k.get("crm.deal.add").unwrap(), cat).as_deref(),
            Some("crm.deal.fields")
        );
        assert_eq!(
            companion(&k.get("crm.deal.update").unwrap(), cat).as_deref(),
            Some("crm.deal.fields")
        );
        assert_eq!(companion(&k.get("crm.deal.fields").unwrap(), cat), None);
        assert_eq!(companion(&k.get("user.current").unwrap(), cat), None);
    }
}
