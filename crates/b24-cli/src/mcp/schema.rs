//! The tools' schemas as clients receive them: input schemas derived from [`super::args`] and
//! made portable, and the output schemas of [`super::outputs`].
//!
//! Why a portable subset: schemars writes valid draft 2020-12, but several MCP clients map a
//! tool schema onto a narrower dialect (one `type` string per schema, no `$ref`, no formats
//! beyond JSON Schema's own; the MCP Inspector's strict mode flags each). So every schema this
//! server lists has no type arrays, no `$ref`/`$defs`, no `format`, no `anyOf`/`oneOf` and no
//! boolean property schemas; an optional field is optional by being absent, never by `null`.
//! The MCP tests check every listed schema against the meta-schema and this subset.

use std::sync::Arc;

use rmcp::handler::server::router::tool::ToolRouter;
use rmcp::model::JsonObject;
use serde_json::{Map, Value};

/// Make a schema portable (see the module docs): inline `$ref`s to `$defs`, drop `null` from
/// type arrays and `anyOf`/`oneOf` branches, drop `format`, `nullable` and `default: null`.
pub fn portable(schema: &JsonObject) -> JsonObject {
    let defs = schema
        .get("$defs")
        .and_then(Value::as_object)
        .cloned()
        .unwrap_or_default();
    let mut out = clean(&Value::Object(schema.clone()), &defs, 0);
    if let Value::Object(o) = &mut out {
        o.remove("$defs");
        return std::mem::take(o);
    }
    JsonObject::new()
}

/// Deep enough for any type in [`super::args`]; a cycle stops here instead of recursing forever.
const MAX_DEPTH: usize = 16;

fn clean(v: &Value, defs: &Map<String, Value>, depth: usize) -> Value {
    let Value::Object(o) = v else {
        // `true` as a schema: anything goes, spelled as an empty schema.
        return match v {
            Value::Bool(true) => Value::Object(Map::new()),
            other => other.clone(),
        };
    };
    let mut o = o.clone();
    if depth < MAX_DEPTH
        && let Some(Value::String(r)) = o.remove("$ref")
        && let Some(Value::Object(target)) = r.strip_prefix("#/$defs/").and_then(|n| defs.get(n))
    {
        // Sibling keywords (a field's description) win over the definition's.
        let mut merged = target.clone();
        merged.remove("title");
        for (k, v) in o {
            merged.insert(k, v);
        }
        return clean(&Value::Object(merged), defs, depth + 1);
    }
    for key in ["anyOf", "oneOf"] {
        if let Some(Value::Array(branches)) = o.remove(key) {
            let kept: Vec<Value> = branches
                .into_iter()
                .filter(|b| b.get("type").and_then(Value::as_str) != Some("null"))
                .collect();
            if kept.len() == 1 {
                if let Value::Object(b) = clean(&kept[0], defs, depth + 1) {
                    for (k, v) in b {
                        o.entry(k).or_insert(v);
                    }
                }
            } else {
                o.insert(key.into(), Value::Array(kept));
            }
        }
    }
    if let Some(Value::Array(types)) = o.get("type") {
        let kept: Vec<Value> = types.iter().filter(|t| *t != "null").cloned().collect();
        let t = match kept.as_slice() {
            [one] => one.clone(),
            _ => Value::Array(kept),
        };
        o.insert("type".into(), t);
    }
    o.remove("format");
    o.remove("nullable");
    if o.get("default") == Some(&Value::Null) {
        o.remove("default");
    }
    if let Some(Value::Object(props)) = o.get_mut("properties") {
        for p in props.values_mut() {
            *p = clean(p, defs, depth + 1);
        }
    }
    if let Some(items) = o.get_mut("items") {
        *items = clean(items, defs, depth + 1);
    }
    if let Some(extra @ Value::Object(_)) = o.get_mut("additionalProperties") {
        *extra = clean(extra, defs, depth + 1);
    }
    Value::Object(o)
}

/// Give every tool its portable input schema and its output schema.
pub fn finish<S>(router: &mut ToolRouter<S>) {
    for route in router.map.values_mut() {
        let tool = &mut route.attr;
        tool.input_schema = Arc::new(portable(&tool.input_schema));
        if let Some(Value::Object(out)) = super::outputs::for_tool(&tool.name) {
            tool.output_schema = Some(Arc::new(out));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn refs_nulls_and_formats_are_made_portable() {
        let s = json!({
            "type": "object",
            "properties": {
                "risk": {"description": "Only this risk.", "$ref": "#/$defs/Risk"},
                "n": {"type": ["integer", "null"], "format": "uint32", "minimum": 0, "default": null},
                "m": {"anyOf": [{"type": "object", "additionalProperties": true}, {"type": "null"}]},
                "any": true,
                "list": {"type": "array", "items": {"$ref": "#/$defs/Risk"}},
            },
            "$defs": {"Risk": {"title": "Risk", "type": "string", "enum": ["read", "write"]}},
        });
        let Value::Object(s) = s else { unreachable!() };
        let p = Value::Object(portable(&s));
        assert_eq!(
            p["properties"]["risk"],
            json!({"type": "string", "enum": ["read", "write"], "description": "Only this risk."})
        );
        assert_eq!(
            p["properties"]["n"],
            json!({"type": "integer", "minimum": 0})
        );
        assert_eq!(
            p["properties"]["m"],
            json!({"type": "object", "additionalProperties": true})
        );
        assert_eq!(p["properties"]["any"], json!({}));
        assert_eq!(p["properties"]["list"]["items"]["type"], "string");
        assert!(p.get("$defs").is_none());
    }
}
