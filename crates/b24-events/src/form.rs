//! Bitrix24's form-encoded event bodies: PHP bracket keys (`data[FIELDS][ID]=7`) into JSON.

use serde_json::{Map, Value};

/// Parse `application/x-www-form-urlencoded` with bracket keys. `None` if it is not valid
/// form encoding (bad percent escapes or not UTF-8).
pub fn parse(body: &[u8]) -> Option<Value> {
    let text = std::str::from_utf8(body).ok()?;
    let mut root = Map::new();
    for part in text.split('&').filter(|p| !p.is_empty()) {
        let (k, v) = part.split_once('=').unwrap_or((part, ""));
        let k = decode(k)?;
        let v = decode(v)?;
        let mut path: Vec<String> = Vec::new();
        match k.find('[') {
            None => path.push(k.clone()),
            Some(i) => {
                path.push(k[..i].to_string());
                let mut rest = &k[i..];
                while let Some(s) = rest.strip_prefix('[') {
                    let close = s.find(']')?;
                    path.push(s[..close].to_string());
                    rest = &s[close + 1..];
                }
                if !rest.is_empty() {
                    return None;
                }
            }
        }
        if path[0].is_empty() {
            return None;
        }
        insert(&mut root, &path, Value::String(v));
    }
    Some(Value::Object(root))
}

fn decode(s: &str) -> Option<String> {
    let s = s.replace('+', " ");
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' {
            let h = std::str::from_utf8(bytes.get(i + 1..i + 3)?).ok()?;
            out.push(u8::from_str_radix(h, 16).ok()?);
            i += 3;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    String::from_utf8(out).ok()
}

fn insert(map: &mut Map<String, Value>, path: &[String], v: Value) {
    let key = if path[0].is_empty() {
        map.len().to_string()
    } else {
        path[0].clone()
    };
    if path.len() == 1 {
        map.insert(key, v);
        return;
    }
    let child = map.entry(key).or_insert_with(|| Value::Object(Map::new()));
    if !child.is_object() {
        *child = Value::Object(Map::new());
    }
    if let Value::Object(m) = child {
        insert(m, &path[1..], v);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn bracket_bodies() {
        let v = parse(b"event=ONCRMDEALADD&data%5BFIELDS%5D%5BID%5D=7405&ts=1&auth%5Bmember_id%5D=m&auth%5Bapplication_token%5D=t").unwrap();
        assert_eq!(
            v,
            json!({"event":"ONCRMDEALADD","data":{"FIELDS":{"ID":"7405"}},"ts":"1","auth":{"member_id":"m","application_token":"t"}})
        );
        assert!(parse(b"a=%zz").is_none());
        assert!(parse(b"a[b=1").is_none());
        assert!(parse(&[0xff, 0xfe]).is_none());
    }
}
