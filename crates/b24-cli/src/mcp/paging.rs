//! `b24_export`: a bounded set of pages of a list method, with a cursor to resume.
//!
//! Why not `b24::export` here: that exporter sends 50 list commands per request (2,500 items)
//! and streams whole requests, so it cannot stop at an exact item count and hand back a cursor
//! that resumes exactly after the last item returned. An MCP answer must be small and exactly
//! resumable, so this pages one list call at a time (each through `exec`, so policy and audit
//! apply) and stops at `max_items`:
//!
//! - keyset (CRM list methods): `filter {">ID": after}`, `order {ID: ASC}`, `start: -1`; the
//!   cursor is the last ID returned (`k:<id>`), so records added or deleted meanwhile never
//!   shift or repeat anything;
//! - offset (every other list method): `start = N`; the cursor is the next offset (`o:<n>`).

use serde_json::{Map, Value, json};

/// Where to continue a listing.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Cursor {
    /// Items with an ID greater than this.
    After(u64),
    /// Items from this offset on.
    Start(u64),
}

impl Cursor {
    pub fn parse(s: &str) -> Option<Cursor> {
        let (kind, n) = s.trim().split_once(':')?;
        let n: u64 = n.parse().ok()?;
        match kind {
            "k" => Some(Cursor::After(n)),
            "o" => Some(Cursor::Start(n)),
            _ => None,
        }
    }

    pub fn render(self) -> String {
        match self {
            Cursor::After(n) => format!("k:{n}"),
            Cursor::Start(n) => format!("o:{n}"),
        }
    }
}

/// The ID field a method's items carry, when the method can be paged by ID.
pub fn keyset_field(method: &str) -> Option<&'static str> {
    let m = method.trim().to_ascii_lowercase();
    if !m.starts_with("crm.") || !m.ends_with(".list") {
        return None;
    }
    // Lists that are not keyed by a numeric ID.
    if m.contains(".fields") || m.contains(".userfield") || m.starts_with("crm.status.") {
        return None;
    }
    // Keyset paging adds `filter` and `order`: a list documented without them (such as
    // `crm.currency.list`) pages by offset, or the strict parameter check (on by default in
    // MCP) would refuse the parameters b24 added itself.
    let docs = b24_guard::knowledge::Knowledge::builtin();
    if docs.takes(&m, "filter") == Some(false) || docs.takes(&m, "order") == Some(false) {
        return None;
    }
    Some(if m.starts_with("crm.item.") {
        "id"
    } else {
        "ID"
    })
}

/// The params of the next page call.
pub fn page_params(
    params: &Map<String, Value>,
    field: Option<&str>,
    cursor: Option<Cursor>,
) -> Value {
    let mut p = params.clone();
    match (field, cursor) {
        (Some(f), c) => {
            let after = match c {
                Some(Cursor::After(n)) => n,
                _ => 0,
            };
            let mut filter = match p.remove("filter") {
                Some(Value::Object(o)) => o,
                _ => Map::new(),
            };
            filter.insert(format!(">{f}"), json!(after));
            p.insert("filter".into(), Value::Object(filter));
            p.insert("order".into(), json!({ f: "ASC" }));
            p.insert("start".into(), json!(-1));
        }
        (None, c) => {
            let start = match c {
                Some(Cursor::Start(n)) => n,
                _ => 0,
            };
            p.insert("start".into(), json!(start));
        }
    }
    Value::Object(p)
}

/// The numeric ID of an item (`"42"` or `42`).
pub fn item_id(item: &Value, field: &str) -> Option<u64> {
    match item.get(field)? {
        Value::Number(n) => n.as_u64(),
        Value::String(s) => s.parse().ok(),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cursors_round_trip_and_reject_junk() {
        for c in [Cursor::After(42), Cursor::Start(100)] {
            assert_eq!(Cursor::parse(&c.render()), Some(c));
        }
        assert_eq!(Cursor::parse("x:1"), None);
        assert_eq!(Cursor::parse("k:-1"), None);
        assert_eq!(Cursor::parse("k"), None);
    }

    #[test]
    fn keyset_params_keep_the_callers_filter() {
        let mut p = Map::new();
        p.insert("filter".into(), json!({"STATUS_ID": "NEW"}));
        let v = page_params(&p, keyset_field("crm.lead.list"), Some(Cursor::After(7)));
        assert_eq!(v["filter"], json!({"STATUS_ID": "NEW", ">ID": 7}));
        assert_eq!(v["order"], json!({"ID": "ASC"}));
        assert_eq!(v["start"], json!(-1));
        let v = page_params(
            &Map::new(),
            keyset_field("user.get"),
            Some(Cursor::Start(50)),
        );
        assert_eq!(v, json!({"start": 50}));
        assert_eq!(keyset_field("crm.item.list"), Some("id"));
        assert_eq!(keyset_field("crm.lead.add"), None);
        // Documented without `filter`: paged by offset.
        assert_eq!(keyset_field("crm.currency.list"), None);
        assert_eq!(keyset_field("crm.category.list"), None);
    }
}
