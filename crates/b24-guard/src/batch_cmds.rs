//! Reading the commands out of a raw `batch` call, the way the portal would.
//!
//! `b24 call batch --params …` (and a plan of a batch) hands the gate the params exactly as
//! they will be sent. The portal finds the commands under `cmd` whatever its case, in an object
//! or an array, each a `method?query` string. If the gate read them any less generously than
//! the portal — only `cmd` and `CMD`, only objects — a command spelled another way would run
//! unchecked. So this parser accepts every spelling the portal runs and refuses everything it
//! cannot read for certain: an unknown top-level key, two `cmd` keys, a command that is not a
//! string, a method that does not normalise, a nested batch. Refusing is always safe; guessing
//! is not.

use serde_json::{Map, Value};

use crate::method::{MethodName, normalise};

/// At most this many commands in one raw batch call (the portal runs 50; the rest of a longer
/// batch is answered with an error per command, so nothing beyond this is ever useful).
pub const MAX_RAW_COMMANDS: usize = 1000;

/// One command of a raw batch.
#[derive(Debug, Clone, PartialEq)]
pub struct RawCommand {
    pub key: String,
    pub method: MethodName,
    /// The decoded query as a flat JSON object (`fields[TITLE]` stays one key): enough for the
    /// parameter-dependent risks (`event.offline.get` with `clear=0`).
    pub params: Value,
}

/// A batch call whose commands could be read.
#[derive(Debug, Clone, PartialEq)]
pub struct RawBatch {
    pub halt: bool,
    pub commands: Vec<RawCommand>,
}

/// Why the commands of a batch could not be read (the call is refused, nothing is sent).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("cannot read the batch: {0}")]
pub struct UnreadableBatch(pub String);

fn bad(msg: impl Into<String>) -> UnreadableBatch {
    UnreadableBatch(msg.into())
}

/// Parse the params of a `batch` call.
pub fn parse(params: &Value) -> Result<RawBatch, UnreadableBatch> {
    let Value::Object(top) = params else {
        return Err(bad("batch params must be a JSON object with `cmd`"));
    };
    let mut cmd: Option<&Value> = None;
    let mut halt = false;
    for (k, v) in top {
        let key = k.trim().to_ascii_lowercase();
        match key.as_str() {
            "cmd" => {
                if cmd.is_some() {
                    return Err(bad("more than one `cmd` key (in different cases)"));
                }
                cmd = Some(v);
            }
            "halt" => halt = truthy(v),
            _ => {
                return Err(bad(format!(
                    "unexpected parameter {k:?} (a batch takes only `cmd` and `halt`)"
                )));
            }
        }
    }
    let Some(cmd) = cmd else {
        return Err(bad("no `cmd` with the commands"));
    };
    let entries: Vec<(String, &Value)> = match cmd {
        Value::Object(o) => o.iter().map(|(k, v)| (k.clone(), v)).collect(),
        Value::Array(a) => a
            .iter()
            .enumerate()
            .map(|(i, v)| (i.to_string(), v))
            .collect(),
        _ => return Err(bad("`cmd` must be an object or an array of commands")),
    };
    if entries.is_empty() {
        return Err(bad("`cmd` has no commands"));
    }
    if entries.len() > MAX_RAW_COMMANDS {
        return Err(bad(format!(
            "{} commands (at most {MAX_RAW_COMMANDS}; use `b24 batch`, which splits them)",
            entries.len()
        )));
    }
    let mut commands = Vec::with_capacity(entries.len());
    for (key, v) in entries {
        let Value::String(text) = v else {
            return Err(bad(format!(
                "command {key:?} is not a \"method?query\" string (use `b24 batch` for {{method, params}} commands)"
            )));
        };
        let (m, query) = text.split_once('?').unwrap_or((text.as_str(), ""));
        let method = normalise(m).map_err(|e| bad(format!("command {key:?}: {e}")))?;
        if method.is_batch() {
            return Err(bad(format!("command {key:?} is itself a batch")));
        }
        commands.push(RawCommand {
            key,
            method,
            params: query_params(query),
        });
    }
    Ok(RawBatch { halt, commands })
}

/// Decode a command's query string into a flat object. Repeated keys keep the last value,
/// as PHP's parser does for scalar keys.
pub fn query_params(query: &str) -> Value {
    let mut m = Map::new();
    for (k, v) in url::form_urlencoded::parse(query.as_bytes()) {
        m.insert(k.into_owned(), Value::String(v.into_owned()));
    }
    Value::Object(m)
}

fn truthy(v: &Value) -> bool {
    match v {
        Value::Bool(b) => *b,
        Value::Number(n) => n.as_f64().is_some_and(|x| x != 0.0),
        Value::String(s) => !matches!(s.trim(), "" | "0" | "false" | "N" | "n"),
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn methods(v: Value) -> Vec<String> {
        parse(&v)
            .unwrap()
            .commands
            .into_iter()
            .map(|c| c.method.to_string())
            .collect()
    }

    #[test]
    fn every_spelling_of_cmd_is_found() {
        for key in ["cmd", "CMD", "cMd", "Cmd", " cmd "] {
            let v = json!({ key: {"a": "crm.lead.delete?id=1"} });
            assert_eq!(methods(v), ["crm.lead.delete"], "{key}");
        }
        assert_eq!(
            methods(json!({"cmd": ["CRM.Lead.Delete.json?id=1", "user.current"]})),
            ["crm.lead.delete", "user.current"]
        );
        let b = parse(&json!({"halt": 1, "cmd": {"x": "event.offline.get?clear=0&x%5By%5D=1"}}))
            .unwrap();
        assert!(b.halt);
        assert_eq!(b.commands[0].params, json!({"clear": "0", "x[y]": "1"}));
    }

    #[test]
    fn unreadable_batches_are_refused() {
        for v in [
            json!({}),
            json!([]),
            json!({"cmd": {}}),
            json!({"cmd": "crm.lead.delete?id=1"}),
            json!({"cmd": {"a": "x.get"}, "CMD": {"b": "crm.lead.delete"}}),
            json!({"cmd": {"a": {"method": "crm.lead.delete"}}}),
            json!({"cmd": {"a": "crm.lead.delete%3Fid%3D1"}}),
            json!({"cmd": {"a": "crm%2Elead%2Edelete?id=1"}}),
            json!({"cmd": {"a": "batch?cmd[b]=crm.lead.delete"}}),
            json!({"cmd": {"a": "BATCH.json?x=1"}}),
            json!({"cmd": {"a": 5}}),
            json!({"cmd": {"a": "x.get"}, "cmd[b]": "crm.lead.delete?id=1"}),
            json!({"cmd": {"a": "x.get"}, "extra": 1}),
        ] {
            assert!(parse(&v).is_err(), "{v} should be refused");
        }
    }
}
