//! `batch` (docs/protocol.md §5) as the portal's rest module runs it:
//!
//! - each command is `method?query`; the query is URL-decoded into parameters **first**, and
//!   references are substituted into the decoded values afterwards, so a reference the SDKs send
//!   encoded (`%24result%5Ba%5D%5BID%5D`) works like a plain one;
//! - references name one of the five result maps: `$result[...]`, `$next[...]`, `$total[...]`,
//!   `$time[...]`, `$error[...]`;
//! - the first 50 commands run; every later one is answered with `ERROR_BATCH_LENGTH_EXCEEDED`
//!   in `result_error` (the batch itself still answers 200);
//! - a nested `batch` (and `upload`/`download`) is refused for that command only, with
//!   `ERROR_BATCH_METHOD_NOT_ALLOWED`.
//!
//! See `crates/b24-sandbox/FIDELITY.md` for where the documentation disagrees.

use serde_json::{Map, Value, json};

use crate::events::Delivery;
use crate::exec::{Ran, access_check, run_one, time_block};
use crate::methods::{Caller, Out, PErr, perr};
use crate::params::{get_ci, parse_query, text, truthy};
use crate::state::State;

/// Commands a batch runs; later ones get `ERROR_BATCH_LENGTH_EXCEEDED`.
pub const MAX_COMMANDS: usize = 50;

/// What earlier commands produced, by the names references use.
#[derive(Default)]
struct Results {
    result: Map<String, Value>,
    next: Map<String, Value>,
    total: Map<String, Value>,
    time: Map<String, Value>,
    error: Map<String, Value>,
}

impl Results {
    /// The map a reference names. Lookup is exact: `$RESULT[...]` matches the pattern (which
    /// is case-insensitive on the portal) but names no map, so it resolves to nothing.
    fn map(&self, name: &str) -> Option<&Map<String, Value>> {
        match name {
            "result" => Some(&self.result),
            "next" => Some(&self.next),
            "total" => Some(&self.total),
            "time" => Some(&self.time),
            "error" => Some(&self.error),
            _ => None,
        }
    }
}

/// Split `method?query` and parse the query (URL-decoding it) into parameters.
pub fn parse_cmd(cmd: &str) -> (String, Value) {
    let (m, q) = cmd.split_once('?').unwrap_or((cmd, ""));
    (
        m.trim().trim_end_matches(".json").to_ascii_lowercase(),
        parse_query(q),
    )
}

const REF_NAMES: [&str; 5] = ["result", "next", "total", "time", "error"];

/// Find the next reference at or after `from`: `$name` followed by every non-whitespace
/// character (the portal's pattern is `\$(result|next|total|time|error)([^\s]*)`, greedy).
/// Returns (start, end, name as written, tail after the name).
fn next_ref(s: &str, from: usize) -> Option<(usize, usize, &str, &str)> {
    let mut at = from;
    while let Some(rel) = s[at..].find('$') {
        let dollar = at + rel;
        let after = &s[dollar + 1..];
        for name in REF_NAMES {
            if after.len() >= name.len()
                && after.is_char_boundary(name.len())
                && after[..name.len()].eq_ignore_ascii_case(name)
            {
                let tail_start = dollar + 1 + name.len();
                let tail_len = s[tail_start..]
                    .find(char::is_whitespace)
                    .unwrap_or(s.len() - tail_start);
                let end = tail_start + tail_len;
                return Some((dollar, end, &s[dollar + 1..tail_start], &s[tail_start..end]));
            }
        }
        at = dollar + 1;
    }
    None
}

/// The `[...]` segments of a reference tail (empty brackets are not segments).
fn segments(tail: &str) -> Vec<&str> {
    let mut out = Vec::new();
    let mut rest = tail;
    while let Some(open) = rest.find('[') {
        let inner = &rest[open + 1..];
        match inner.find(']') {
            Some(0) => rest = &inner[1..],
            Some(close) => {
                out.push(&inner[..close]);
                rest = &inner[close + 1..];
            }
            None => break,
        }
    }
    out
}

/// Walk a path into the named map. As on the portal, the walk stops at the first missing key
/// and keeps what it reached so far (so `$result[missing]` yields the whole result map).
fn resolve(res: &Results, name: &str, path: &[&str]) -> Value {
    let Some(map) = res.map(name) else {
        return Value::Null;
    };
    let mut cur: Value = Value::Object(map.clone());
    for key in path {
        let next = match &cur {
            Value::Object(o) => o.get(*key).filter(|v| !v.is_null()).cloned(),
            Value::Array(a) => key
                .parse::<usize>()
                .ok()
                .and_then(|i| a.get(i))
                .filter(|v| !v.is_null())
                .cloned(),
            _ => None,
        };
        match next {
            Some(v) => cur = v,
            None => break,
        }
    }
    cur
}

/// Substitute references in one decoded parameter value. A value that is exactly one
/// reference takes the referenced value whole (an array stays an array); inside longer text
/// only numbers and strings are substituted, anything else is left as written.
fn substitute_value(value: &str, res: &Results) -> Value {
    let mut cur = value.to_string();
    let mut from = 0;
    while let Some((start, end, name, tail)) = next_ref(&cur, from) {
        let path = segments(tail);
        if path.is_empty() {
            from = end;
            continue;
        }
        let whole = cur[start..end].to_string();
        let found = resolve(res, name, &path);
        if whole == cur {
            return found;
        }
        let replacement = match &found {
            Value::String(s) => Some(s.clone()),
            Value::Number(n) => Some(n.to_string()),
            _ => None,
        };
        match replacement {
            Some(r) => {
                cur = cur.replace(&whole, &r);
                from = (start + r.len()).min(cur.len());
                while !cur.is_char_boundary(from) {
                    from += 1;
                }
            }
            None => from = end,
        }
    }
    Value::String(cur)
}

fn substitute_all(v: Value, res: &Results) -> Value {
    match v {
        Value::String(s) => substitute_value(&s, res),
        Value::Object(o) => Value::Object(
            o.into_iter()
                .map(|(k, v)| (k, substitute_all(v, res)))
                .collect(),
        ),
        Value::Array(a) => Value::Array(a.into_iter().map(|v| substitute_all(v, res)).collect()),
        other => other,
    }
}

fn error_entry(e: &PErr) -> Value {
    json!({"error": e.code, "error_description": e.desc})
}

/// Run a batch. Returns the batch's output (its cost is the sum of its commands) and the
/// methods of the commands that ran.
pub fn run_batch(
    st: &mut State,
    who: &Caller,
    params: &Value,
    dl: &mut Vec<Delivery>,
) -> (Result<Ran, PErr>, Vec<String>) {
    let halt = truthy(get_ci(params, "halt"));
    let (cmds, as_array): (Vec<(String, String)>, bool) = match get_ci(params, "cmd") {
        Some(Value::Object(o)) if !o.is_empty() => {
            (o.iter().map(|(k, v)| (k.clone(), text(v))).collect(), false)
        }
        Some(Value::Array(a)) if !a.is_empty() => (
            a.iter()
                .enumerate()
                .map(|(i, v)| (i.to_string(), text(v)))
                .collect(),
            true,
        ),
        _ => {
            return (
                Err(perr(400, "ERROR_BATCH_EMPTY", "Batch is empty")),
                vec![],
            );
        }
    };
    let mut res = Results::default();
    let mut subs = Vec::new();
    let mut cost = 0.0;
    for (n, (key, cmd)) in cmds.into_iter().enumerate() {
        let outcome = if n >= MAX_COMMANDS {
            Err(perr(
                400,
                "ERROR_BATCH_LENGTH_EXCEEDED",
                "Max batch length exceeded",
            ))
        } else {
            let (m, raw) = parse_cmd(&cmd);
            let p = substitute_all(raw, &res);
            if matches!(m.as_str(), "batch" | "upload" | "download") {
                Err(perr(
                    405,
                    "ERROR_BATCH_METHOD_NOT_ALLOWED",
                    "Method is not allowed for batch usage",
                ))
            } else {
                subs.push(m.clone());
                // Under realistic timing a command starts when the ones before it finished,
                // and its `time` block says so (its `operating_reset_at` is relative to that).
                let start = st.now()
                    + if st.cfg.timing == crate::Timing::Realistic {
                        cost
                    } else {
                        0.0
                    };
                access_check(st, who, &m)
                    .and_then(|_| run_one(st, who, &m, &p, dl, cost))
                    .map(|r| (r, start))
            }
        };
        match outcome {
            Ok(((out, op), start)) => {
                cost += out.cost;
                if let Some(t) = out.total {
                    res.total.insert(key.clone(), json!(t));
                }
                if let Some(nx) = out.next {
                    res.next.insert(key.clone(), json!(nx));
                }
                res.time
                    .insert(key.clone(), time_block(start, out.cost, op));
                res.result.insert(key, out.result);
            }
            Err(e) => {
                res.error.insert(key, error_entry(&e));
                if halt {
                    break;
                }
            }
        }
    }
    let shape = |m: Map<String, Value>| -> Value {
        if m.is_empty() {
            return json!([]);
        }
        if as_array {
            // A PHP list only when every index is present; otherwise it prints an object.
            if m.keys().enumerate().all(|(i, k)| k.parse() == Ok(i)) {
                return Value::Array(m.into_iter().map(|(_, v)| v).collect());
            }
        }
        Value::Object(m)
    };
    let result = json!({
        "result": shape(res.result),
        "result_error": shape(res.error),
        "result_total": shape(res.total),
        "result_next": shape(res.next),
        "result_time": shape(res.time),
    });
    (
        Ok((
            Out {
                result,
                next: None,
                total: None,
                cost: cost.max(0.001),
            },
            None,
        )),
        subs,
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn results() -> Results {
        let mut r = Results::default();
        r.result
            .insert("a".into(), json!([{"ID": "7", "T": "x y"}]));
        r.result.insert("n".into(), json!(42));
        r.result.insert("ok".into(), json!(true));
        r.next.insert("a".into(), json!(50));
        r.total.insert("a".into(), json!(120));
        r.error.insert(
            "bad".into(),
            json!({"error": "E1", "error_description": ""}),
        );
        r
    }

    #[test]
    fn whole_value_references_keep_their_type() {
        let r = results();
        assert_eq!(substitute_value("$result[a][0][ID]", &r), json!("7"));
        assert_eq!(
            substitute_value("$result[a][0]", &r),
            json!({"ID": "7", "T": "x y"})
        );
        assert_eq!(substitute_value("$next[a]", &r), json!(50));
        assert_eq!(substitute_value("$total[a]", &r), json!(120));
        assert_eq!(substitute_value("$error[bad][error]", &r), json!("E1"));
        // The walk stops at the first missing key and keeps what it reached.
        assert_eq!(substitute_value("$result[n][x]", &r), json!(42));
    }

    #[test]
    fn embedded_references_take_only_scalars() {
        let r = results();
        assert_eq!(substitute_value("id-$result[n]", &r), json!("id-42"));
        assert_eq!(
            substitute_value("x $result[a][0][T] z", &r),
            json!("x x y z")
        );
        // Not a string or number: left as written.
        assert_eq!(
            substitute_value("v=$result[ok]", &r),
            json!("v=$result[ok]")
        );
        // No path: not a reference.
        assert_eq!(substitute_value("$result", &r), json!("$result"));
        // Upper case matches the pattern but names no map.
        assert_eq!(substitute_value("$RESULT[n]", &r), Value::Null);
    }

    #[test]
    fn encoded_references_are_decoded_before_substitution() {
        let r = results();
        let (m, p) = parse_cmd("crm.lead.get?id=%24result%5Ba%5D%5B0%5D%5BID%5D");
        assert_eq!(m, "crm.lead.get");
        assert_eq!(substitute_all(p, &r), json!({"id": "7"}));
    }
}
