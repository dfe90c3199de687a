//! Request parameters: PHP bracket notation (`fields[PHONE][0][VALUE]=1`) into nested JSON,
//! as the portal parses query strings, form bodies and multipart fields (docs/protocol.md §1.3).

use serde_json::{Map, Value};

/// Parse an `a=1&b[c]=2` string into a JSON object. Values stay strings (form mode has no
/// other type); maps whose keys are exactly `0..n-1` become arrays.
pub fn parse_query(q: &str) -> Value {
    let mut pairs = Vec::new();
    for part in q.split('&').filter(|p| !p.is_empty()) {
        let (k, v) = part.split_once('=').unwrap_or((part, ""));
        pairs.push((decode(k), decode(v)));
    }
    from_pairs(pairs)
}

fn decode(s: &str) -> String {
    let s = s.replace('+', " ");
    percent_encoding::percent_decode_str(&s)
        .decode_utf8_lossy()
        .into_owned()
}

/// Build nested JSON from (bracket key, value) pairs.
pub fn from_pairs(pairs: Vec<(String, String)>) -> Value {
    let mut root = Value::Object(Map::new());
    for (key, val) in pairs {
        let path = split_key(&key);
        if path.is_empty() {
            continue;
        }
        insert(&mut root, &path, Value::String(val));
    }
    listify(root)
}

/// `a[b][c]` → ["a","b","c"]; `a[]` → ["a",""].
fn split_key(key: &str) -> Vec<String> {
    let Some(open) = key.find('[') else {
        return vec![key.to_string()];
    };
    let mut out = vec![key[..open].to_string()];
    let mut rest = &key[open..];
    while let Some(stripped) = rest.strip_prefix('[') {
        match stripped.find(']') {
            Some(close) => {
                out.push(stripped[..close].to_string());
                rest = &stripped[close + 1..];
            }
            None => break,
        }
    }
    out
}

fn insert(node: &mut Value, path: &[String], val: Value) {
    let Value::Object(map) = node else { return };
    let key = if path[0].is_empty() {
        map.len().to_string()
    } else {
        path[0].clone()
    };
    if path.len() == 1 {
        map.insert(key, val);
        return;
    }
    let child = map.entry(key).or_insert_with(|| Value::Object(Map::new()));
    if !child.is_object() {
        *child = Value::Object(Map::new());
    }
    insert(child, &path[1..], val);
}

/// Maps with keys exactly 0..n-1 become arrays (recursively).
pub fn listify(v: Value) -> Value {
    match v {
        Value::Object(m) => {
            let is_list = !m.is_empty()
                && m.keys()
                    .enumerate()
                    .all(|(i, k)| k.parse::<usize>().ok() == Some(i));
            let mapped: Map<String, Value> = m.into_iter().map(|(k, v)| (k, listify(v))).collect();
            if is_list {
                Value::Array(mapped.into_iter().map(|(_, v)| v).collect())
            } else {
                Value::Object(mapped)
            }
        }
        other => other,
    }
}

/// Case-insensitive lookup of a top-level parameter (`id`/`ID`, `fields`/`FIELDS`, …).
pub fn get_ci<'a>(params: &'a Value, name: &str) -> Option<&'a Value> {
    let o = params.as_object()?;
    o.get(name).or_else(|| {
        o.iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v)
    })
}

/// A value as text, the way PHP would see it.
pub fn text(v: &Value) -> String {
    match v {
        Value::String(s) => s.clone(),
        Value::Null => String::new(),
        Value::Bool(b) => {
            if *b {
                "1".into()
            } else {
                String::new()
            }
        }
        other => other.to_string(),
    }
}

/// A value as an integer (numbers may come as strings).
pub fn int(v: &Value) -> Option<i64> {
    match v {
        Value::Number(n) => n.as_i64().or_else(|| n.as_f64().map(|f| f as i64)),
        Value::String(s) => s
            .trim()
            .parse::<i64>()
            .ok()
            .or_else(|| s.trim().parse::<f64>().ok().map(|f| f as i64)),
        Value::Bool(b) => Some(*b as i64),
        _ => None,
    }
}

/// PHP-ish truthiness for flags like `halt`, `clear`, `full`.
pub fn truthy(v: Option<&Value>) -> bool {
    match v {
        None | Some(Value::Null) => false,
        Some(Value::Bool(b)) => *b,
        Some(Value::Number(n)) => n.as_f64().unwrap_or(0.0) != 0.0,
        Some(Value::String(s)) => !matches!(
            s.trim().to_ascii_lowercase().as_str(),
            "" | "0" | "n" | "false" | "no"
        ),
        Some(_) => true,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn brackets() {
        let v = parse_query(
            "fields[TITLE]=My%20co&fields[PHONE][0][VALUE]=1&fields[PHONE][1][VALUE]=2&select[]=ID&select[]=NAME&x=a%26b",
        );
        assert_eq!(
            v,
            json!({"fields":{"TITLE":"My co","PHONE":[{"VALUE":"1"},{"VALUE":"2"}]},"select":["ID","NAME"],"x":"a&b"})
        );
        assert_eq!(
            parse_query("0=123&1[POST_MESSAGE]=t"),
            json!([ "123", {"POST_MESSAGE":"t"}])
        );
    }
}
