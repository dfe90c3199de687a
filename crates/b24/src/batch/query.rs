//! PHP bracket encoding of JSON parameters into a `method?query` batch command
//! (docs/protocol.md §1.3).
//!
//! `{"fields":{"TITLE":"a&b","PHONE":[{"VALUE":"1"}]}}` becomes
//! `fields[TITLE]=a%26b&fields[PHONE][0][VALUE]=1`. Values are percent-encoded (so `&`, `=`,
//! `%`, `+`, `#` and non-ASCII survive), except `$`, `[` and `]`: the portal substitutes
//! `$result[key][path]` references in the raw query text before it parses it, so a reference
//! must reach it verbatim.

use percent_encoding::{AsciiSet, NON_ALPHANUMERIC, utf8_percent_encode};
use serde_json::Value;

/// Bytes escaped in a key segment: everything but unreserved characters.
const KEY: &AsciiSet = &NON_ALPHANUMERIC
    .remove(b'-')
    .remove(b'_')
    .remove(b'.')
    .remove(b'~');
/// Bytes escaped in a value: as for keys, but `$[]` stay literal for `$result[...]` references.
const VALUE: &AsciiSet = &KEY.remove(b'$').remove(b'[').remove(b']');

/// Encode a JSON object (or positional array) as a PHP bracket query string. `null` encodes as
/// an empty value, booleans as `1`/`0` would be lossy for Y/N fields, so they are `true`/`false`
/// text as the JSON body would carry them; an empty array or object cannot be expressed in form
/// mode and is sent as an empty value of its key.
pub fn encode(params: &Value) -> String {
    let mut out = String::new();
    match params {
        Value::Object(o) => {
            for (k, v) in o {
                let key = utf8_percent_encode(k, KEY).to_string();
                push(&mut out, &key, v);
            }
        }
        Value::Array(a) => {
            for (i, v) in a.iter().enumerate() {
                push(&mut out, &i.to_string(), v);
            }
        }
        Value::Null => {}
        other => push(&mut out, "0", other),
    }
    out
}

fn push(out: &mut String, key: &str, v: &Value) {
    match v {
        Value::Object(o) if !o.is_empty() => {
            for (k, v) in o {
                let sub = format!("{key}[{}]", utf8_percent_encode(k, KEY));
                push(out, &sub, v);
            }
        }
        Value::Array(a) if !a.is_empty() => {
            for (i, v) in a.iter().enumerate() {
                push(out, &format!("{key}[{i}]"), v);
            }
        }
        _ => {
            if !out.is_empty() {
                out.push('&');
            }
            out.push_str(key);
            out.push('=');
            out.push_str(&utf8_percent_encode(&scalar(v), VALUE).to_string());
        }
    }
}

/// The text of a scalar as form mode carries it.
pub fn scalar(v: &Value) -> String {
    match v {
        Value::String(s) => s.clone(),
        Value::Null => String::new(),
        Value::Object(_) | Value::Array(_) => String::new(),
        other => other.to_string(),
    }
}

/// Percent-encode a substituted value for insertion into a query (client-side `$result`).
pub fn encode_value(s: &str) -> String {
    utf8_percent_encode(s, KEY).to_string()
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn nested_maps_arrays_and_escapes() {
        let q = encode(&json!({
            "fields": {"TITLE": "a&b=c%d+e#f", "NAME": "Иван ✓", "PHONE": [{"VALUE": "1", "VALUE_TYPE": "WORK"}]},
            "select": ["ID", "NAME"],
            "filter": {">ID": 5, "ACTIVE": true, "X": null},
            "ref": "$result[a][0][ID]"
        }));
        assert_eq!(
            q,
            "fields[TITLE]=a%26b%3Dc%25d%2Be%23f&fields[NAME]=%D0%98%D0%B2%D0%B0%D0%BD%20%E2%9C%93\
             &fields[PHONE][0][VALUE]=1&fields[PHONE][0][VALUE_TYPE]=WORK&select[0]=ID&select[1]=NAME\
             &filter[%3EID]=5&filter[ACTIVE]=true&filter[X]=&ref=$result[a][0][ID]"
        );
    }

    #[test]
    fn positional_and_empty() {
        assert_eq!(
            encode(&json!([123, {"POST_MESSAGE": "t"}])),
            "0=123&1[POST_MESSAGE]=t"
        );
        assert_eq!(encode(&json!({})), "");
        assert_eq!(encode(&json!({"a": []})), "a=");
    }
}
