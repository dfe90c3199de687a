//! Event bindings, online delivery and the offline queue (reference §9).

use serde_json::{Value, json};

use crate::params::text;
use crate::state::{Binding, OfflineRow, State, iso};

/// Event names the sandbox knows (what `events` lists and `event.bind` accepts).
pub const KNOWN_EVENTS: &[&str] = &[
    "ONAPPINSTALL",
    "ONAPPUNINSTALL",
    "ONAPPUPDATE",
    "ONAPPPAYMENT",
    "ONAPPTEST",
    "ONAPPMETHODCONFIRM",
    "ONOFFLINEEVENT",
    "ONUSERADD",
    "ONCRMLEADADD",
    "ONCRMLEADUPDATE",
    "ONCRMLEADDELETE",
    "ONCRMDEALADD",
    "ONCRMDEALUPDATE",
    "ONCRMDEALDELETE",
    "ONCRMDEALMOVETOCATEGORY",
    "ONCRMCONTACTADD",
    "ONCRMCONTACTUPDATE",
    "ONCRMCONTACTDELETE",
    "ONCRMCOMPANYADD",
    "ONCRMCOMPANYUPDATE",
    "ONCRMCOMPANYDELETE",
    "ONTASKADD",
    "ONTASKUPDATE",
    "ONTASKDELETE",
];

/// An online delivery to perform once the state lock is released.
#[derive(Debug, Clone)]
pub struct Delivery {
    pub url: String,
    pub form: Vec<(String, String)>,
}

/// Flatten JSON into PHP bracket form pairs (`data[FIELDS][ID]=7`).
pub fn flatten(prefix: &str, v: &Value, out: &mut Vec<(String, String)>) {
    match v {
        Value::Object(o) => {
            for (k, x) in o {
                let key = if prefix.is_empty() {
                    k.clone()
                } else {
                    format!("{prefix}[{k}]")
                };
                flatten(&key, x, out);
            }
        }
        Value::Array(a) => {
            for (i, x) in a.iter().enumerate() {
                flatten(&format!("{prefix}[{i}]"), x, out);
            }
        }
        other => out.push((prefix.to_string(), text(other))),
    }
}

impl State {
    /// A CRM change happened: queue offline rows (coalesced per event and object) and prepare
    /// online deliveries.
    pub fn emit(
        &mut self,
        event: &str,
        object_id: &str,
        data: Value,
        deliveries: &mut Vec<Delivery>,
    ) {
        let now = self.now();
        let bindings: Vec<Binding> = self
            .bindings
            .iter()
            .filter(|b| b.event == event)
            .cloned()
            .collect();
        let mut queued_connectors: Vec<String> = Vec::new();
        for b in bindings {
            if b.offline {
                if queued_connectors.contains(&b.connector) {
                    continue;
                }
                queued_connectors.push(b.connector.clone());
                self.next_message += 1;
                let message_id = format!("{:x}", 0x1000_0000u64 + self.next_message);
                if let Some(row) = self.offline.iter_mut().find(|r| {
                    r.event == event
                        && r.object_id == object_id
                        && r.process_id.is_none()
                        && !r.error
                        && r.connector == b.connector
                }) {
                    // The queue keeps the latest state per object, not a history.
                    row.ts = now;
                    row.data = data.clone();
                    row.message_id = message_id;
                } else {
                    self.next_offline += 1;
                    self.offline.push(OfflineRow {
                        id: self.next_offline,
                        ts: now,
                        event: event.to_string(),
                        object_id: object_id.to_string(),
                        data: data.clone(),
                        message_id,
                        process_id: None,
                        error: false,
                        connector: b.connector.clone(),
                    });
                }
            } else {
                let (access, refresh) =
                    self.issue_pair(if b.auth_type == 0 { 1 } else { b.auth_type });
                let ttl = self.cfg.access_token_ttl.as_secs();
                let payload = json!({
                    "event": event,
                    "event_handler_id": b.id.to_string(),
                    "data": data,
                    "ts": (now as u64).to_string(),
                    "auth": {
                        "access_token": access,
                        "refresh_token": refresh,
                        "expires_in": ttl.to_string(),
                        "scope": "crm",
                        "domain": self.domain,
                        "server_endpoint": format!("{}/rest/", self.base_url),
                        "status": "L",
                        "client_endpoint": format!("{}/rest/", self.base_url),
                        "member_id": self.member_id,
                        "application_token": self.application_token,
                    }
                });
                let mut form = Vec::new();
                flatten("", &payload, &mut form);
                deliveries.push(Delivery {
                    url: b.handler.clone(),
                    form,
                });
            }
        }
    }

    /// A row as `event.offline.get` shows it.
    pub fn offline_row_json(r: &OfflineRow, with_list_fields: bool) -> Value {
        let data = if r.data.is_null() {
            Value::Bool(false)
        } else {
            r.data.clone()
        };
        let mut v = json!({
            "ID": r.id.to_string(),
            "TIMESTAMP_X": iso(r.ts),
            "EVENT_NAME": r.event,
            "EVENT_DATA": data,
            "EVENT_ADDITIONAL": false,
            "MESSAGE_ID": r.message_id,
        });
        if with_list_fields {
            v["PROCESS_ID"] = Value::String(r.process_id.clone().unwrap_or_default());
            v["ERROR"] = Value::String(if r.error { "1" } else { "0" }.into());
        }
        v
    }
}
