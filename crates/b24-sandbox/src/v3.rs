//! REST 3.0 task methods (`/rest/api/tasks.task.*`) and the body hash behind
//! `Idempotency-Key` reuse checks.

use serde_json::{Map, Value, json};
use sha2::Digest;

use crate::methods::{PErr, perr};
use crate::params::{int, text};
use crate::state::{State, iso};

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
