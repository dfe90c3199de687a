//! Bitrix24's form-encoded event bodies: PHP bracket keys (`data[FIELDS][ID]=7`) into JSON.
//!
//! The body comes from anyone who can reach the receiver, so parsing is split in two and
//! everything is bounded and iterative (no recursion on attacker input anywhere):
//!
//! - [`scan`] runs *before* authentication. It checks the size, the number of fields and the
//!   length of every key, decodes the keys, and picks out only the few values needed to
//!   authenticate (`event`, `auth[member_id]`, `auth[application_token]`, …). Its cost is one
//!   linear pass; it never builds a tree.
//! - [`build`] runs only for an authenticated sender and turns the body into JSON, refusing
//!   nesting deeper than [`Limits::max_depth`] (well under serde_json's own limit of 128, so
//!   whatever it builds can be stored and read back unchanged).

use serde_json::{Map, Value};

/// Bounds on a form body. Exceeding any of them is the sender's fault (HTTP 400/413).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Limits {
    /// Largest body, bytes.
    pub max_body: usize,
    /// Most `key=value` pairs.
    pub max_fields: usize,
    /// Longest key after percent-decoding, bytes (`data[FIELDS][ID]` is 16).
    pub max_key_len: usize,
    /// Deepest bracket path (`data[FIELDS][ID]` is 3 levels).
    pub max_depth: usize,
}

impl Default for Limits {
    /// Generous for Bitrix24's events (a CRM event has about 15 fields, 4 levels deep).
    fn default() -> Self {
        Limits {
            max_body: 256 * 1024,
            max_fields: 1000,
            max_key_len: 256,
            max_depth: 32,
        }
    }
}

/// Why a body was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum FormError {
    #[error("body over {0} bytes")]
    TooLarge(usize),
    #[error("more than {0} fields")]
    TooManyFields(usize),
    #[error("a key is longer than {0} bytes")]
    KeyTooLong(usize),
    #[error("a key is nested deeper than {0} levels")]
    TooDeep(usize),
    #[error("bad percent-encoding or not UTF-8")]
    BadEncoding,
    #[error("malformed bracket key")]
    BadKey,
}

/// What [`scan`] finds: the fields that authenticate a delivery (empty when absent).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Envelope {
    pub event: String,
    pub member_id: String,
    pub application_token: String,
    pub access_token: String,
    pub domain: String,
    pub client_endpoint: String,
}

/// The pre-authentication pass: bounds, decoded keys, and the authentication fields.
/// Values other than those few are not decoded (they may be malformed; [`build`] decides).
pub fn scan(body: &[u8], lim: &Limits) -> Result<Envelope, FormError> {
    if body.len() > lim.max_body {
        return Err(FormError::TooLarge(lim.max_body));
    }
    let mut env = Envelope::default();
    let mut key = Vec::new();
    for (n, (k, v)) in pairs(body).enumerate() {
        if n >= lim.max_fields {
            return Err(FormError::TooManyFields(lim.max_fields));
        }
        // An encoded key is at most 3 bytes per decoded byte: refuse before decoding.
        if k.len() > lim.max_key_len.saturating_mul(3) {
            return Err(FormError::KeyTooLong(lim.max_key_len));
        }
        decode_into(k, &mut key)?;
        if key.len() > lim.max_key_len {
            return Err(FormError::KeyTooLong(lim.max_key_len));
        }
        let slot = match key.as_slice() {
            b"event" => &mut env.event,
            b"auth[member_id]" => &mut env.member_id,
            b"auth[application_token]" => &mut env.application_token,
            b"auth[access_token]" => &mut env.access_token,
            b"auth[domain]" => &mut env.domain,
            b"auth[client_endpoint]" => &mut env.client_endpoint,
            _ => continue,
        };
        *slot = decode(v)?;
    }
    Ok(env)
}

/// The post-authentication pass: the whole body as JSON. Errors here mean an authenticated
/// sender's payload cannot be represented (the receiver dead-letters it with the raw body).
pub fn build(body: &[u8], lim: &Limits) -> Result<Value, FormError> {
    if body.len() > lim.max_body {
        return Err(FormError::TooLarge(lim.max_body));
    }
    let mut root = Map::new();
    let mut path: Vec<String> = Vec::new();
    for (n, (k, v)) in pairs(body).enumerate() {
        if n >= lim.max_fields {
            return Err(FormError::TooManyFields(lim.max_fields));
        }
        let k = decode(k)?;
        if k.len() > lim.max_key_len {
            return Err(FormError::KeyTooLong(lim.max_key_len));
        }
        split_key(&k, lim.max_depth, &mut path)?;
        insert(&mut root, &path, Value::String(decode(v)?));
    }
    Ok(Value::Object(root))
}

/// Parse with the default [`Limits`]; `None` for anything [`build`] refuses.
pub fn parse(body: &[u8]) -> Option<Value> {
    build(body, &Limits::default()).ok()
}

/// Non-empty `key=value` pairs (a pair without `=` has an empty value).
fn pairs(body: &[u8]) -> impl Iterator<Item = (&[u8], &[u8])> {
    body.split(|&b| b == b'&')
        .filter(|p| !p.is_empty())
        .map(|p| match p.iter().position(|&b| b == b'=') {
            Some(i) => (&p[..i], &p[i + 1..]),
            None => (p, &[][..]),
        })
}

fn hex(b: u8) -> Option<u8> {
    match b {
        b'0'..=b'9' => Some(b - b'0'),
        b'a'..=b'f' => Some(b - b'a' + 10),
        b'A'..=b'F' => Some(b - b'A' + 10),
        _ => None,
    }
}

/// Percent- and `+`-decode into `out` (cleared first); bytes, not yet checked for UTF-8.
fn decode_into(s: &[u8], out: &mut Vec<u8>) -> Result<(), FormError> {
    out.clear();
    out.reserve(s.len());
    let mut i = 0;
    while i < s.len() {
        match s[i] {
            b'%' => {
                let (Some(h), Some(l)) = (
                    s.get(i + 1).copied().and_then(hex),
                    s.get(i + 2).copied().and_then(hex),
                ) else {
                    return Err(FormError::BadEncoding);
                };
                out.push(h << 4 | l);
                i += 3;
            }
            b'+' => {
                out.push(b' ');
                i += 1;
            }
            b => {
                out.push(b);
                i += 1;
            }
        }
    }
    Ok(())
}

fn decode(s: &[u8]) -> Result<String, FormError> {
    let mut out = Vec::new();
    decode_into(s, &mut out)?;
    String::from_utf8(out).map_err(|_| FormError::BadEncoding)
}

/// `a[b][]` → `["a", "b", ""]` into `path`; at most `max_depth` segments.
fn split_key(k: &str, max_depth: usize, path: &mut Vec<String>) -> Result<(), FormError> {
    path.clear();
    let (head, mut rest) = match k.find('[') {
        None => (k, ""),
        Some(i) => (&k[..i], &k[i..]),
    };
    if head.is_empty() {
        return Err(FormError::BadKey);
    }
    path.push(head.to_string());
    while let Some(s) = rest.strip_prefix('[') {
        let close = s.find(']').ok_or(FormError::BadKey)?;
        if path.len() >= max_depth {
            return Err(FormError::TooDeep(max_depth));
        }
        path.push(s[..close].to_string());
        rest = &s[close + 1..];
    }
    if rest.is_empty() {
        Ok(())
    } else {
        Err(FormError::BadKey)
    }
}

/// Set `path` to `v`, walking down iteratively. An empty segment (`a[]`) appends: its key is
/// the map's current length. A scalar in the way is replaced by an object (last write wins,
/// as in PHP).
fn insert(root: &mut Map<String, Value>, path: &[String], v: Value) {
    let Some((last, parents)) = path.split_last() else {
        return;
    };
    let mut cur = root;
    for seg in parents {
        let key = if seg.is_empty() {
            cur.len().to_string()
        } else {
            seg.clone()
        };
        let child = cur.entry(key).or_insert_with(|| Value::Object(Map::new()));
        if !child.is_object() {
            *child = Value::Object(Map::new());
        }
        cur = match child {
            Value::Object(m) => m,
            // Just made an object above.
            _ => return,
        };
    }
    let key = if last.is_empty() {
        cur.len().to_string()
    } else {
        last.clone()
    };
    cur.insert(key, v);
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
        assert_eq!(
            parse(b"a[]=x&a[]=y+z&b=%41").unwrap(),
            json!({"a":{"0":"x","1":"y z"},"b":"A"})
        );
        assert!(parse(b"a=%zz").is_none());
        assert!(parse(b"a=%4").is_none());
        assert!(parse(b"a[b=1").is_none());
        assert!(parse(b"a[b]c=1").is_none());
        assert!(parse(b"[a]=1").is_none());
        assert!(parse(&[0xff, 0xfe]).is_none());
    }

    #[test]
    fn limits_are_enforced() {
        let lim = Limits {
            max_body: 100,
            max_fields: 3,
            max_key_len: 10,
            max_depth: 3,
        };
        assert_eq!(
            build(b"a[b][c]=1", &lim).unwrap(),
            json!({"a":{"b":{"c":"1"}}})
        );
        assert_eq!(build(b"a[b][c][d]=1", &lim), Err(FormError::TooDeep(3)));
        assert_eq!(
            build(b"a=1&b=2&c=3&d=4", &lim),
            Err(FormError::TooManyFields(3))
        );
        assert_eq!(
            scan(b"a=1&b=2&c=3&d=4", &lim),
            Err(FormError::TooManyFields(3))
        );
        assert_eq!(scan(b"abcdefghijk=1", &lim), Err(FormError::KeyTooLong(10)));
        assert_eq!(scan(&[b'a'; 101], &lim), Err(FormError::TooLarge(100)));
    }

    #[test]
    fn scan_finds_the_envelope_without_building() {
        let env = scan(
            b"event=ONAPPINSTALL&data[x][y][z][w]=%zz&auth%5Bmember_id%5D=m&auth[application_token]=t&auth[domain]=p.example",
            &Limits::default(),
        )
        .unwrap();
        assert_eq!(env.event, "ONAPPINSTALL");
        assert_eq!(env.member_id, "m");
        assert_eq!(env.application_token, "t");
        assert_eq!(env.domain, "p.example");
        // The malformed value is not scan's business.
        assert!(parse(b"data[x][y][z][w]=%zz").is_none());
    }
}
