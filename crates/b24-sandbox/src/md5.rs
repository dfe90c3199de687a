//! `MESSAGE_ID`s of offline events, derived the way the portal does:
//! `md5(EVENT_NAME . '|' . json(EVENT_DATA))`, with PHP's JSON spelling. MD5 is not used for
//! anything that needs security.

/// Lower-case hex MD5 of `data`.
pub fn hex(data: &[u8]) -> String {
    use md5::Digest;
    ::hex::encode(md5::Md5::digest(data))
}

/// JSON as PHP's `json_encode` with default flags prints it: `/` escaped as `\/` and
/// non-ASCII as `\uXXXX` (UTF-16), so hashes match the portal's for the same data.
pub fn php_json(v: &serde_json::Value) -> String {
    use serde_json::Value;
    fn string(s: &str, out: &mut String) {
        out.push('"');
        for c in s.chars() {
            match c {
                '"' => out.push_str("\\\""),
                '\\' => out.push_str("\\\\"),
                '/' => out.push_str("\\/"),
                '\n' => out.push_str("\\n"),
                '\r' => out.push_str("\\r"),
                '\t' => out.push_str("\\t"),
                '\u{8}' => out.push_str("\\b"),
                '\u{c}' => out.push_str("\\f"),
                c if (c as u32) < 0x20 || (c as u32) >= 0x80 => {
                    let mut buf = [0u16; 2];
                    for unit in c.encode_utf16(&mut buf) {
                        out.push_str(&format!("\\u{unit:04x}"));
                    }
                }
                c => out.push(c),
            }
        }
        out.push('"');
    }
    fn walk(v: &Value, out: &mut String) {
        match v {
            Value::Object(o) => {
                out.push('{');
                for (i, (k, x)) in o.iter().enumerate() {
                    if i > 0 {
                        out.push(',');
                    }
                    string(k, out);
                    out.push(':');
                    walk(x, out);
                }
                out.push('}');
            }
            Value::Array(a) => {
                out.push('[');
                for (i, x) in a.iter().enumerate() {
                    if i > 0 {
                        out.push(',');
                    }
                    walk(x, out);
                }
                out.push(']');
            }
            Value::String(s) => string(s, out),
            other => out.push_str(&other.to_string()),
        }
    }
    let mut out = String::new();
    walk(v, &mut out);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rfc1321_vectors() {
        assert_eq!(hex(b""), "d41d8cd98f00b204e9800998ecf8427e");
        assert_eq!(hex(b"abc"), "900150983cd24fb0d6963f7d28e17f72");
        assert_eq!(
            hex(
                b"12345678901234567890123456789012345678901234567890123456789012345678901234567890"
            ),
            "57edf4a22be3c955ac49da2e2107b67a"
        );
    }

    #[test]
    fn php_json_escapes() {
        let v = serde_json::json!({"a/b": ["é", 1, null, true]});
        assert_eq!(php_json(&v), r#"{"a\/b":["\u00e9",1,null,true]}"#);
    }
}
