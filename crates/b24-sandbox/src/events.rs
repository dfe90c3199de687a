//! Event bindings, online delivery and the offline queue (docs/protocol.md §9).

use serde_json::{Value, json};

use crate::methods::Caller;
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
    /// A change happened: queue offline rows and prepare online deliveries.
    ///
    /// Offline rows follow the portal's table: `MESSAGE_ID` is
    /// `md5(EVENT_NAME|json(EVENT_DATA))`, and a repeat of the same message for the same
    /// connector merges into the row not yet reserved (new timestamp and data; an error mark
    /// stays). An app's own write made with `auth_connector=C` is not queued for connector C.
    pub fn emit(
        &mut self,
        event: &str,
        data: Value,
        origin: &Caller,
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
                let own_change = origin.kind == "oauth"
                    && !origin.connector.is_empty()
                    && origin.connector == b.connector;
                if own_change {
                    continue;
                }
                self.queue_offline(event, &data, &b.connector, now);
            } else {
                let payload = self.online_payload(event, b.id, b.auth_type, &data, now);
                let mut form = Vec::new();
                flatten("", &payload, &mut form);
                deliveries.push(Delivery {
                    url: b.handler.clone(),
                    form,
                });
            }
        }
    }

    fn queue_offline(&mut self, event: &str, data: &Value, connector: &str, now: f64) {
        let message_id =
            crate::md5::hex(format!("{event}|{}", crate::md5::php_json(data)).as_bytes());
        self.offline_touched = true;
        if let Some(row) = self.offline.iter_mut().find(|r| {
            r.message_id == message_id && r.connector == connector && r.process_id.is_none()
        }) {
            // The queue keeps the latest state per message, not a history.
            row.ts = now;
            row.data = data.clone();
            return;
        }
        self.next_offline += 1;
        self.offline.push(OfflineRow {
            id: self.next_offline,
            ts: now,
            event: event.to_string(),
            data: data.clone(),
            message_id,
            process_id: None,
            error: false,
            connector: connector.to_string(),
        });
    }

    /// The form payload of an online event (docs/protocol.md §9.2), with fresh tokens for the user.
    fn online_payload(
        &mut self,
        event: &str,
        handler_id: u64,
        auth_type: u64,
        data: &Value,
        now: f64,
    ) -> Value {
        let (access, refresh) = self.issue_pair(if auth_type == 0 { 1 } else { auth_type });
        let ttl = self.cfg.access_token_ttl.as_secs();
        let scope = match &self.cfg.app_scopes {
            Some(s) => s.join(","),
            None => "crm".to_string(),
        };
        json!({
            "event": event,
            "event_handler_id": handler_id.to_string(),
            "data": data,
            "ts": (now as u64).to_string(),
            "auth": {
                "access_token": access,
                "refresh_token": refresh,
                "expires_in": ttl.to_string(),
                "scope": scope,
                "domain": self.domain,
                "server_endpoint": format!("{}/rest/", self.base_url),
                "status": "L",
                "client_endpoint": format!("{}/rest/", self.base_url),
                "member_id": self.member_id,
                "application_token": self.application_token,
            }
        })
    }

    /// After a request: if it queued offline rows, notify the `ONOFFLINEEVENT` handlers
    /// (docs/protocol.md §9.7): `data` empty, full `auth` with a refresh token, at most one per
    /// handler per `minTimeout` seconds (0 = one per request).
    pub fn notify_offline(&mut self, deliveries: &mut Vec<Delivery>) {
        if !std::mem::take(&mut self.offline_touched) {
            return;
        }
        let now = self.now();
        let handlers: Vec<Binding> = self
            .bindings
            .iter()
            .filter(|b| b.event == "ONOFFLINEEVENT" && !b.offline)
            .cloned()
            .collect();
        for b in handlers {
            if b.min_timeout > 0.0
                && let Some(last) = self.offline_notified.get(&b.id)
                && now - last < b.min_timeout
            {
                continue;
            }
            self.offline_notified.insert(b.id, now);
            let payload = self.online_payload("ONOFFLINEEVENT", b.id, b.auth_type, &json!([]), now);
            let mut form = Vec::new();
            flatten("", &payload, &mut form);
            deliveries.push(Delivery {
                url: b.handler.clone(),
                form,
            });
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
