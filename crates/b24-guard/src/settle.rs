//! Settling writes whose outcome is unknown: the pieces that need no portal — the stamp an
//! add carries, the look-up that finds it, how a look-up's answer is read, what counts as
//! "not found" — so the gate ([`crate::gate`]) and `b24 settle` decide the same way.
//!
//! A stamp is derived from the idempotency key *and* the call (`b24-` + 32 hex of SHA-256 over
//! both), not the key alone: a caller's key reused elsewhere, or an `ORIGIN_ID` some other
//! system wrote, cannot match a stamp unless it is the same call with the same key. A look-up
//! that finds more than one record settles nothing: b24 does not guess which is its own.

use serde_json::{Value, json};
use sha2::Digest;

use crate::catalog::StampSpec;
use crate::store::call_hash;

/// Resends (or look-up rounds) after the first ambiguous failure, inline and in `b24 settle`.
pub const MAX_RESENDS: u32 = 2;

/// A REST 3.0 portal keeps the first answer for 24 h; resending later could run the write
/// again. b24 stops an hour short of that.
pub const REPLAY_WINDOW_SECS: f64 = 23.0 * 3600.0;

/// An update resent long after it was sent could overwrite what others changed since; after
/// this long it stays unknown.
pub const UPDATE_WINDOW_SECS: f64 = 600.0;

/// A settle that holds a key longer than this died; the key may be taken again.
pub const STALE_SETTLE_SECS: f64 = 900.0;

/// A write whose intent is recorded but no outcome (the process ended mid-call) is only
/// settled once its key has been in flight this long: until then it may still be on its way
/// (waiting for the rate limiter, or for its answer).
pub const CRASHED_AFTER_SECS: f64 = 3600.0;

/// While a batch is out (its chunks can take longer than [`CRASHED_AFTER_SECS`] when the
/// portal's operating-time budget holds them), its process refreshes its keys this often, so a
/// `b24 settle` elsewhere sees them taken by a live process, not left by a dead one.
pub const HEARTBEAT_SECS: f64 = 1.0;

/// The stamp of an add: the same (key, call) always gives the same stamp.
pub fn stamp_for(key: &str, method: &str, params: &Value) -> String {
    let h = sha2::Sha256::digest(
        format!(
            "b24 settle stamp\n{key}\n{}",
            call_hash(&method.to_ascii_lowercase(), params)
        )
        .as_bytes(),
    );
    format!("b24-{}", &hex::encode(h)[..32])
}

/// `params` with the stamp in `fields` (the caller's `fields` otherwise unchanged).
pub fn stamped(spec: &StampSpec, params: &Value, stamp: &str) -> Value {
    let mut p = params.clone();
    if let Some(o) = p.as_object_mut() {
        let key = o
            .keys()
            .find(|k| k.eq_ignore_ascii_case("fields"))
            .cloned()
            .unwrap_or_else(|| "fields".into());
        let fields = o.entry(key).or_insert_with(|| json!({}));
        if let Some(f) = fields.as_object_mut() {
            f.insert(spec.field.to_string(), json!(stamp));
        }
    }
    p
}

/// The list call that finds records carrying `stamp`: (method, params).
pub fn lookup(spec: &StampSpec, params: &Value, stamp: &str) -> (String, Value) {
    let mut filter = serde_json::Map::new();
    filter.insert(format!("={}", spec.field), json!(stamp));
    let p = if spec.item {
        let t = params
            .as_object()
            .and_then(|o| {
                o.iter()
                    .find(|(k, _)| k.eq_ignore_ascii_case("entityTypeId"))
            })
            .map(|(_, v)| v.clone())
            .unwrap_or(Value::Null);
        json!({"entityTypeId": t, "filter": filter, "select": ["*"]})
    } else {
        json!({"filter": filter, "select": ["ID", spec.field]})
    };
    (spec.list.to_string(), p)
}

/// What a look-up found.
#[derive(Debug, Clone, PartialEq)]
pub enum Found {
    None,
    /// Exactly one record: the add happened; its answer as the add would have given it.
    One {
        id: Value,
        answer: Value,
    },
    /// Several: b24 cannot tell which is its own.
    Many(Vec<Value>),
    /// The answer did not have the shape of a list answer.
    Unreadable,
}

/// Read a look-up's `result` (only records whose field really holds the stamp count: a
/// portal that ignored the filter must not make b24 adopt a stranger's record).
pub fn found(spec: &StampSpec, result: &Value, stamp: &str) -> Found {
    let rows = if spec.item {
        result.get("items").and_then(Value::as_array)
    } else {
        result.as_array()
    };
    let Some(rows) = rows else {
        return Found::Unreadable;
    };
    let mine: Vec<&Value> = rows
        .iter()
        .filter(|r| {
            r.as_object().is_some_and(|o| {
                o.iter()
                    .any(|(k, v)| k.eq_ignore_ascii_case(spec.field) && v.as_str() == Some(stamp))
            })
        })
        .collect();
    let id_of = |r: &Value| -> Value {
        r.as_object()
            .and_then(|o| o.iter().find(|(k, _)| k.eq_ignore_ascii_case("id")))
            .map(|(_, v)| v.clone())
            .unwrap_or(Value::Null)
    };
    match mine.as_slice() {
        // Rows came back, none of them with the stamp: the portal did not apply the filter,
        // so this page says nothing about the other records (the stamped one may be on the
        // next page). Absence is not proven; sending the add again could make a second one.
        [] if !rows.is_empty() => Found::Unreadable,
        [] => Found::None,
        [one] => {
            let id = id_of(one);
            if id.is_null() {
                return Found::Unreadable;
            }
            // The add's own answer: the new ID (v2), or `{item}` (crm.item.add).
            let answer = if spec.item {
                json!({"result": {"item": one}})
            } else {
                let n = id
                    .as_str()
                    .and_then(|s| s.parse::<u64>().ok())
                    .map(|n| json!(n))
                    .unwrap_or_else(|| id.clone());
                json!({"result": n})
            };
            Found::One { id, answer }
        }
        many => Found::Many(many.iter().map(|r| id_of(r)).collect()),
    }
}

/// Whether a portal error says the record is not there (for a resent delete: it is gone).
pub fn is_not_found(e: &b24::ApiError) -> bool {
    let code = e.code.to_ascii_uppercase().replace('_', "");
    code.contains("NOTFOUND") && !code.contains("METHOD")
        || (e.code.trim().is_empty() && e.description.trim().eq_ignore_ascii_case("not found"))
}

/// A response built from an envelope b24 settled rather than received.
pub fn response(raw: Value, replayed: bool) -> b24::Response {
    let mut r = b24::Response::from_envelope(raw);
    r.replayed = replayed;
    r
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::catalog::stamp_spec;

    #[test]
    fn stamps_depend_on_key_and_call() {
        let p = json!({"fields": {"TITLE": "a"}});
        let s = stamp_for("k1", "crm.lead.add", &p);
        assert_eq!(s, stamp_for("k1", "CRM.LEAD.ADD", &p));
        assert_ne!(s, stamp_for("k2", "crm.lead.add", &p));
        assert_ne!(
            s,
            stamp_for("k1", "crm.lead.add", &json!({"fields": {"TITLE": "b"}}))
        );
        assert!(s.starts_with("b24-") && s.len() == 36);
        let spec = stamp_spec("crm.lead.add").unwrap();
        let sp = stamped(spec, &p, &s);
        assert_eq!(sp["fields"]["ORIGIN_ID"], s);
        assert_eq!(sp["fields"]["TITLE"], "a");
    }

    #[test]
    fn lookups_adopt_exactly_one_record_carrying_the_stamp() {
        let spec = stamp_spec("crm.lead.add").unwrap();
        let s = "b24-x";
        assert_eq!(found(spec, &json!([]), s), Found::None);
        assert_eq!(
            found(spec, &json!([{"ID": "7", "ORIGIN_ID": s}]), s),
            Found::One {
                id: json!("7"),
                answer: json!({"result": 7})
            }
        );
        // A portal that ignored the filter: the stranger's record is not adopted, and its
        // page proves nothing about the stamp (it may be on the next page): not `None`.
        assert_eq!(
            found(spec, &json!([{"ID": "7", "ORIGIN_ID": "other"}]), s),
            Found::Unreadable
        );
        assert_eq!(
            found(
                spec,
                &json!([{"ID": "7", "ORIGIN_ID": s}, {"ID": "8", "ORIGIN_ID": s}]),
                s
            ),
            Found::Many(vec![json!("7"), json!("8")])
        );
        assert_eq!(found(spec, &json!({"x": 1}), s), Found::Unreadable);
        let item = stamp_spec("crm.item.add").unwrap();
        let one = json!({"items": [{"id": 3, "originId": s, "title": "t"}]});
        assert!(matches!(found(item, &one, s), Found::One { .. }));
    }

    #[test]
    fn not_found_is_read_from_the_code_or_the_v2_description() {
        let e = |code: &str, d: &str| b24::ApiError::new("m", code, d, 400);
        assert!(is_not_found(&e("", "Not found")));
        assert!(is_not_found(&e("NOT_FOUND", "Item not found")));
        assert!(is_not_found(&e(
            "BITRIX_REST_V3_EXCEPTION_ENTITYNOTFOUNDEXCEPTION",
            ""
        )));
        assert!(!is_not_found(&e("ERROR_METHOD_NOT_FOUND", "")));
        assert!(!is_not_found(&e("", "Access denied")));
    }
}
