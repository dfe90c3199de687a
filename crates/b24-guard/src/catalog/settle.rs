//! Settle classes: what b24 may do about a write whose answer was lost (timeout, reset after
//! sending, a 5xx without an error body), so that the call ends with its real result instead
//! of "outcome unknown" — and never with a guess.
//!
//! - REST 3.0 writes carry an `Idempotency-Key`; resent with the same key, the portal replays
//!   the first answer for 24 hours instead of running the write again ([`SettleClass::Replay`]).
//! - REST v2 has no duplicate protection, so it goes by what the write is:
//!   - `*.update` / `*.set` set fields to values: doing it twice is doing it once
//!     ([`SettleClass::Resend`]) — unless it appends multi-field values (a CRM `PHONE` entry
//!     without an `ID` adds a number each time), which stays unknown;
//!   - `*.delete` of one record: resent; "not found" on the resend means it is gone
//!     ([`SettleClass::ResendDelete`]);
//!   - adds of entities with an external-id field ([`STAMPABLE`]) are stamped with a value
//!     derived from the idempotency key and looked up by it ([`SettleClass::Stamp`]);
//!   - anything else stays outcome-unknown ([`SettleClass::Unknown`]).
//!
//! The rules read the verb; [`NOT_RESENDABLE`] pins the reviewed exceptions, and the review
//! test in this file pins both over the whole catalog.

use serde_json::Value;

use super::rules::verb_of;
use super::{Catalog, Risk, param};
use crate::settle::UPDATE_WINDOW_SECS;

/// How a write whose outcome is unknown can be settled.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, serde::Serialize, serde::Deserialize,
)]
#[serde(rename_all = "snake_case")]
pub enum SettleClass {
    /// REST 3.0: resend with the same `Idempotency-Key` (the portal replays for 24 h).
    Replay,
    /// Sets fields to values: resending has the same effect as sending once.
    Resend,
    /// Deletes one record: resend; "not found" then means done.
    ResendDelete,
    /// An add stamped with the key in an external-id field: look the stamp up, then either
    /// return the record found or send the add once more.
    Stamp,
    /// Nothing safe to do: the outcome stays unknown.
    Unknown,
}

impl SettleClass {
    pub fn as_str(self) -> &'static str {
        match self {
            SettleClass::Replay => "replay",
            SettleClass::Resend => "resend",
            SettleClass::ResendDelete => "resend_delete",
            SettleClass::Stamp => "stamp",
            SettleClass::Unknown => "unknown",
        }
    }

    pub fn parse(s: &str) -> Option<SettleClass> {
        Some(match s {
            "replay" => SettleClass::Replay,
            "resend" => SettleClass::Resend,
            "resend_delete" => SettleClass::ResendDelete,
            "stamp" => SettleClass::Stamp,
            "unknown" => SettleClass::Unknown,
            _ => return None,
        })
    }
}

impl std::fmt::Display for SettleClass {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// An add whose entity has an external-id field b24 can stamp and look up.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StampSpec {
    /// The add method (lower case).
    pub add: &'static str,
    /// The field inside `fields` that takes the stamp.
    pub field: &'static str,
    /// The list method that finds records by that field.
    pub list: &'static str,
    /// `crm.item.*`: camelCase names, `entityTypeId` passed on, answers `{item: {...}}`.
    pub item: bool,
}

/// The stampable adds. CRM leads, deals, contacts and companies carry `ORIGIN_ID` (the record's
/// id in an external system; the portal does not enforce uniqueness, which is why a lookup
/// that finds two records settles nothing). `crm.item.add` only for those four types
/// (entityTypeId 1, 2, 3, 4): smart processes do not all have the field.
pub const STAMPABLE: &[StampSpec] = &[
    StampSpec {
        add: "crm.lead.add",
        field: "ORIGIN_ID",
        list: "crm.lead.list",
        item: false,
    },
    StampSpec {
        add: "crm.deal.add",
        field: "ORIGIN_ID",
        list: "crm.deal.list",
        item: false,
    },
    StampSpec {
        add: "crm.contact.add",
        field: "ORIGIN_ID",
        list: "crm.contact.list",
        item: false,
    },
    StampSpec {
        add: "crm.company.add",
        field: "ORIGIN_ID",
        list: "crm.company.list",
        item: false,
    },
    StampSpec {
        add: "crm.item.add",
        field: "originId",
        list: "crm.item.list",
        item: true,
    },
];

/// `update`/`set`/`delete` methods kept out of automatic resends, with why. Fail closed: a
/// method listed here stays outcome-unknown until someone reviews it.
pub const NOT_RESENDABLE: &[(&str, &str)] = &[
    (
        "task.item.update",
        "deprecated task API (tasks.task.update replaces it): not reviewed for resends",
    ),
    (
        "im.message.update",
        "a chat message: each edit is delivered to the chat members again",
    ),
    (
        "imbot.message.update",
        "a bot's chat message: each edit is delivered to the chat members again",
    ),
    (
        "imbot.v2.chat.message.update",
        "a bot's chat message: each edit is delivered to the chat members again",
    ),
];

/// CRM multi-fields: an entry without `ID` is appended by an update, not set.
const MULTI_FIELDS: &[&str] = &["phone", "email", "web", "im", "link", "fm"];

impl Catalog {
    /// The settle class of a write (`v3`: sent to `/rest/api/`). Reads and unknown methods are
    /// [`SettleClass::Unknown`]: reads need no settling, and nothing is known about the rest.
    pub fn settle_class(&self, name: &str, v3: bool, params: &Value) -> SettleClass {
        let n = name.trim().to_ascii_lowercase();
        let Some(info) = self.get(&n) else {
            return SettleClass::Unknown;
        };
        if n == "batch" || self.effective_risk(&n, params) == Some(Risk::Read) {
            return SettleClass::Unknown;
        }
        if v3 {
            return SettleClass::Replay;
        }
        if NOT_RESENDABLE.iter().any(|(m, _)| *m == n) {
            return SettleClass::Unknown;
        }
        if let Some(spec) = stamp_spec(&n) {
            return if stampable(spec, params) {
                SettleClass::Stamp
            } else {
                SettleClass::Unknown
            };
        }
        let verb = verb_of(&n);
        match (verb.as_str(), info.risk) {
            ("delete", Risk::Destructive) if deletes_by_id(params) => SettleClass::ResendDelete,
            ("update" | "set", Risk::Write | Risk::Admin) if !appends_multi(params) => {
                SettleClass::Resend
            }
            _ => SettleClass::Unknown,
        }
    }
}

/// The stamp spec of an add method, if it is stampable at all.
pub fn stamp_spec(method: &str) -> Option<&'static StampSpec> {
    let n = method.trim().to_ascii_lowercase();
    STAMPABLE.iter().find(|s| s.add == n)
}

/// Whether these params can take a stamp: `fields` is an object that does not set the field
/// itself (the caller's own external id is theirs; b24 does not overwrite it nor trust it to
/// be unique), and for `crm.item.add` the type is one that has the field.
fn stampable(spec: &StampSpec, params: &Value) -> bool {
    let Some(fields) = param(params, "fields").and_then(Value::as_object) else {
        return false;
    };
    // In either naming (`ORIGIN_ID`, `originId`, `origin_id`): `crm.item.*` converts names
    // between the two, so a caller's `ORIGIN_ID` beside b24's `originId` could be the one kept.
    let bare = |k: &str| k.trim().replace('_', "").to_ascii_lowercase();
    if fields.keys().any(|k| bare(k) == bare(spec.field)) {
        return false;
    }
    if spec.item {
        let t = param(params, "entityTypeId").and_then(|v| match v {
            Value::Number(n) => n.as_i64(),
            Value::String(s) => s.trim().parse().ok(),
            _ => None,
        });
        return matches!(t, Some(1..=4));
    }
    true
}

/// A delete names its record by one numeric ID (`id`, `taskId`, `ELEMENT_ID`…, plus at most
/// `entityTypeId`): IDs are never given out again, so a resend can only find the same record
/// or nothing. A delete by a code or a name (`bizproc.robot.delete CODE`, `entity.delete
/// ENTITY`, `userfieldtype.delete USER_TYPE_ID`) or of a link (`crm.deal.contact.delete` with
/// `fields`, `im.chat.user.delete` CHAT_ID + USER_ID) would remove whatever was created or
/// linked under that name since — `b24 settle` may run days later — so it is not resent.
fn deletes_by_id(params: &Value) -> bool {
    let Some(o) = params.as_object() else {
        return false;
    };
    let numeric = |v: &Value| match v {
        Value::Number(n) => n.as_u64().is_some(),
        Value::String(s) => !s.trim().is_empty() && s.trim().bytes().all(|b| b.is_ascii_digit()),
        _ => false,
    };
    let mut ids = 0;
    for (k, v) in o {
        let k = k.trim().to_ascii_lowercase();
        if k == "entitytypeid" && numeric(v) {
            continue;
        }
        if (k == "id" || k.ends_with("id")) && numeric(v) {
            ids += 1;
            continue;
        }
        return false;
    }
    ids == 1
}

/// An update that gives a multi-field entry without `ID` appends a value each time it runs.
fn appends_multi(params: &Value) -> bool {
    let Some(fields) = param(params, "fields").and_then(Value::as_object) else {
        return false;
    };
    fields.iter().any(|(k, v)| {
        MULTI_FIELDS.contains(&k.to_ascii_lowercase().as_str())
            && match v {
                Value::Array(items) => items.iter().any(|i| match i.as_object() {
                    Some(o) => !o.keys().any(|k| k.eq_ignore_ascii_case("id")),
                    None => true,
                }),
                Value::Object(o) => !o.keys().any(|k| k.eq_ignore_ascii_case("id")),
                Value::Null => false,
                _ => true,
            }
    })
}

/// How an ambiguous write of one method is settled when it is called the ordinary way (for
/// `b24 describe`): the class depends on the params too, so `how` says when it does not hold.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct SettleOutline {
    /// The class of a REST v2 call with ordinary params.
    pub class: SettleClass,
    /// The class of a REST 3.0 call, when the method has one.
    pub v3: Option<SettleClass>,
    /// What b24 does about a lost answer, and what changes it.
    pub how: String,
}

impl Catalog {
    /// The settle class of `name` with ordinary params (an add with `fields`, an update of one
    /// record by `id`, a delete by `id`), and when it differs; `None` for an unknown method.
    pub fn settle_outline(&self, name: &str) -> Option<SettleOutline> {
        let info = self.get(name)?;
        let n = info.name.to_ascii_lowercase();
        let spec = stamp_spec(&n);
        let params = match (spec, verb_of(&n).as_str()) {
            (Some(s), _) if s.item => serde_json::json!({"entityTypeId": 2, "fields": {}}),
            (Some(_), _) => serde_json::json!({"fields": {}}),
            (None, "delete") => serde_json::json!({"id": 1}),
            _ => serde_json::json!({"id": 1, "fields": {}}),
        };
        let v2 = info.api.split(',').any(|a| a.trim() == "v2");
        let class = self.settle_class(&n, !v2, &params);
        let write = class != SettleClass::Unknown
            || (n != "batch" && self.effective_risk(&n, &params) != Some(Risk::Read));
        let v3 = (write && info.api.split(',').any(|a| a.trim() == "v3"))
            .then(|| self.settle_class(&n, true, &params));
        let how = match class {
            SettleClass::Replay => "REST 3.0: resent under the same Idempotency-Key, which the portal answers with the first answer for 24 h".to_string(),
            SettleClass::Resend => format!(
                "resent (it sets values: twice is once); not when it appends a CRM multi-field entry (PHONE, EMAIL… without ID), nor once {} min have passed",
                (UPDATE_WINDOW_SECS / 60.0) as u64
            ),
            SettleClass::ResendDelete => "resent when it deletes one record by numeric id; `not found` on the resend means it is gone".into(),
            SettleClass::Stamp => {
                let field = spec.map(|s| s.field).unwrap_or("ORIGIN_ID");
                let types = if spec.is_some_and(|s| s.item) { " (crm.item.add: entityTypeId 1–4 only)" } else { "" };
                format!("stamped with {field} from the idempotency key; the stamp is looked up, and the add sent once more only when no record carries it; not when the call sets {field} itself{types}")
            }
            SettleClass::Unknown => match NOT_RESENDABLE.iter().find(|(m, _)| *m == n) {
                Some((_, why)) => format!("stays outcome-unknown: {why}; read it back before any retry"),
                None if n == "batch" => "each writing command of a batch is settled by its own method's class".into(),
                None if !write => "a read: nothing to settle (it is simply asked again)".into(),
                None => "no safe way to settle it: a lost answer stays outcome-unknown; read it back before any retry".into(),
            },
        };
        let how = match v3 {
            Some(SettleClass::Replay) if v2 => format!(
                "{how}; over REST 3.0 (--v3) resent under the same Idempotency-Key, which the portal answers with the first answer for 24 h"
            ),
            _ => how,
        };
        Some(SettleOutline { class, v3, how })
    }
}

#[cfg(test)]
mod review {
    use serde_json::json;

    use super::*;

    /// Every settle class over the whole catalog follows the rules: replays only on v3, resends
    /// only for update/set writes, resend-deletes only for destructive `delete`s, stamps only
    /// for the listed adds — so a regenerated catalog cannot quietly make an add resendable.
    #[test]
    fn settle_classes_over_the_catalog() {
        let c = Catalog::builtin();
        let mut counts = std::collections::BTreeMap::new();
        for name in c.names() {
            let info = c.get(name).unwrap();
            let p = json!({"id": 1, "fields": {"TITLE": "x"}, "entityTypeId": 1});
            let p = if verb_of(name) == "delete" {
                json!({"id": 1})
            } else {
                p
            };
            let class = c.settle_class(name, false, &p);
            *counts.entry(class).or_insert(0) += 1;
            let verb = verb_of(name);
            match class {
                SettleClass::Resend => {
                    assert!(matches!(verb.as_str(), "update" | "set"), "{name}");
                    assert!(matches!(info.risk, Risk::Write | Risk::Admin), "{name}");
                }
                SettleClass::ResendDelete => {
                    assert_eq!(verb, "delete", "{name}");
                    assert_eq!(info.risk, Risk::Destructive, "{name}");
                }
                SettleClass::Stamp => assert!(stamp_spec(name).is_some(), "{name}"),
                SettleClass::Replay => panic!("{name}: replay is for v3 only"),
                SettleClass::Unknown => {}
            }
            if verb == "add" {
                assert!(
                    matches!(class, SettleClass::Stamp | SettleClass::Unknown),
                    "{name}: an add is never resent blindly"
                );
            }
            if info.risk == Risk::Read {
                assert_eq!(
                    class,
                    SettleClass::Unknown,
                    "{name}: reads need no settling"
                );
            }
        }
        // Plenty of each, so the rules are not quietly switched off.
        assert!(counts[&SettleClass::Resend] > 150, "{counts:?}");
        assert!(counts[&SettleClass::ResendDelete] > 150, "{counts:?}");
        assert_eq!(counts[&SettleClass::Stamp], STAMPABLE.len(), "{counts:?}");
        for s in STAMPABLE {
            assert!(c.get(s.add).is_some(), "{} is in the catalog", s.add);
            assert!(c.get(s.list).is_some(), "{} is in the catalog", s.list);
            assert_eq!(c.get(s.list).unwrap().risk, Risk::Read, "{}", s.list);
        }
        for (m, why) in NOT_RESENDABLE {
            assert!(!why.is_empty());
            assert_eq!(
                c.settle_class(m, false, &p_update()),
                SettleClass::Unknown,
                "{m}"
            );
        }
    }

    fn p_update() -> Value {
        json!({"id": 1, "fields": {"TITLE": "x"}})
    }

    #[test]
    fn pinned_classes() {
        let c = Catalog::builtin();
        let cases: &[(&str, bool, Value, SettleClass)] = &[
            (
                "tasks.task.add",
                true,
                json!({"fields": {"title": "t"}}),
                SettleClass::Replay,
            ),
            (
                "tasks.task.delete",
                true,
                json!({"id": 1}),
                SettleClass::Replay,
            ),
            ("crm.lead.update", false, p_update(), SettleClass::Resend),
            ("crm.item.update", false, p_update(), SettleClass::Resend),
            ("user.option.set", false, json!({}), SettleClass::Resend),
            (
                "crm.lead.delete",
                false,
                json!({"id": 5}),
                SettleClass::ResendDelete,
            ),
            (
                "crm.lead.add",
                false,
                json!({"fields": {"TITLE": "a"}}),
                SettleClass::Stamp,
            ),
            (
                "crm.item.add",
                false,
                json!({"entityTypeId": 2, "fields": {"title": "a"}}),
                SettleClass::Stamp,
            ),
            // A smart process: no external-id field to trust.
            (
                "crm.item.add",
                false,
                json!({"entityTypeId": 1032, "fields": {"title": "a"}}),
                SettleClass::Unknown,
            ),
            // The caller's own ORIGIN_ID is theirs: not stamped, not trusted to be unique.
            (
                "crm.lead.add",
                false,
                json!({"fields": {"TITLE": "a", "origin_id": "x"}}),
                SettleClass::Unknown,
            ),
            // …in the other naming too.
            (
                "crm.item.add",
                false,
                json!({"entityTypeId": 2, "fields": {"title": "a", "ORIGIN_ID": "x"}}),
                SettleClass::Unknown,
            ),
            (
                "crm.deal.add",
                false,
                json!({"fields": {"TITLE": "a", "originId": "x"}}),
                SettleClass::Unknown,
            ),
            // An add without an external-id field.
            (
                "crm.activity.add",
                false,
                json!({"fields": {"SUBJECT": "a"}}),
                SettleClass::Unknown,
            ),
            ("im.message.add", false, json!({}), SettleClass::Unknown),
            // A phone without ID is appended by every update.
            (
                "crm.contact.update",
                false,
                json!({"id": 1, "fields": {"PHONE": [{"VALUE": "+1", "VALUE_TYPE": "WORK"}]}}),
                SettleClass::Unknown,
            ),
            // …with its ID it is set.
            (
                "crm.contact.update",
                false,
                json!({"id": 1, "fields": {"PHONE": [{"ID": "7", "VALUE": "+1"}]}}),
                SettleClass::Resend,
            ),
            // Deletes by a code, a name or a link: whatever took the name since would go.
            (
                "bizproc.robot.delete",
                false,
                json!({"CODE": "robot"}),
                SettleClass::Unknown,
            ),
            (
                "crm.deal.contact.delete",
                false,
                json!({"id": 1, "fields": {"CONTACT_ID": 2}}),
                SettleClass::Unknown,
            ),
            (
                "im.chat.user.delete",
                false,
                json!({"CHAT_ID": 1, "USER_ID": 2}),
                SettleClass::Unknown,
            ),
            (
                "crm.item.delete",
                false,
                json!({"entityTypeId": 2, "id": "9"}),
                SettleClass::ResendDelete,
            ),
            (
                "tasks.task.delete",
                false,
                json!({"taskId": 3}),
                SettleClass::ResendDelete,
            ),
            ("crm.lead.list", false, json!({}), SettleClass::Unknown),
            ("batch", false, json!({}), SettleClass::Unknown),
            ("no.such.method", false, json!({}), SettleClass::Unknown),
        ];
        for (m, v3, p, want) in cases {
            assert_eq!(c.settle_class(m, *v3, p), *want, "{m} {p}");
        }
    }
}
