//! Request bodies as the portal reads them: JSON, urlencoded forms (PHP bracket syntax) and
//! multipart, under a size cap, merged with the query string.

use axum::body::Body;
use axum::http::{HeaderMap, header};
use serde_json::{Map, Value};

use crate::methods::{PErr, perr};
use crate::params::parse_query;

/// Read the body with a cap; parse JSON, form or multipart into parameters.
pub async fn read_params(
    headers: &HeaderMap,
    body: Body,
    max: usize,
    v3: bool,
) -> Result<Value, PErr> {
    let bytes = axum::body::to_bytes(body, max).await.map_err(|_| {
        perr(
            413,
            "REQUEST_ENTITY_TOO_LARGE",
            &format!("Request body is larger than {max} bytes"),
        )
    })?;
    if bytes.is_empty() {
        return Ok(Value::Object(Map::new()));
    }
    let ct = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .to_ascii_lowercase();
    let bad_json = |m: String| {
        if v3 {
            perr(400, "BITRIX_REST_V3_EXCEPTION_INVALIDJSONEXCEPTION", &m)
        } else {
            perr(400, "INVALID_REQUEST", &m)
        }
    };
    if ct.starts_with("application/json") || (v3 && ct.is_empty()) {
        return serde_json::from_slice(&bytes)
            .map_err(|e| bad_json(format!("Invalid JSON in request body: {e}")));
    }
    if v3 {
        return Err(bad_json(
            "Request body must be JSON (Content-Type: application/json)".into(),
        ));
    }
    if ct.starts_with("application/x-www-form-urlencoded") || ct.is_empty() {
        return Ok(parse_query(&String::from_utf8_lossy(&bytes)));
    }
    if ct.starts_with("multipart/form-data") {
        let boundary = ct
            .split("boundary=")
            .nth(1)
            .map(|b| b.trim_matches('"').to_string());
        let raw_ct = headers
            .get(header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("");
        let boundary = raw_ct
            .split("boundary=")
            .nth(1)
            .map(|b| b.trim_matches('"').to_string())
            .or(boundary);
        let Some(b) = boundary else {
            return Err(perr(
                400,
                "INVALID_REQUEST",
                "multipart body without a boundary",
            ));
        };
        return Ok(parse_multipart(&bytes, &b));
    }
    Err(perr(
        400,
        "INVALID_REQUEST",
        &format!("Unsupported Content-Type `{ct}`: send JSON, form-urlencoded or multipart"),
    ))
}

fn parse_multipart(body: &[u8], boundary: &str) -> Value {
    let text = String::from_utf8_lossy(body);
    let delim = format!("--{boundary}");
    let mut pairs = Vec::new();
    for part in text.split(&delim) {
        let part = part.trim_start_matches("\r\n");
        if part.starts_with("--") || part.trim().is_empty() {
            continue;
        }
        let Some((head, content)) = part.split_once("\r\n\r\n") else {
            continue;
        };
        let name = head.split(';').find_map(|p| {
            p.trim()
                .strip_prefix("name=")
                .map(|n| n.trim_matches('"').to_string())
        });
        if let Some(name) = name {
            pairs.push((name, content.trim_end_matches("\r\n").to_string()));
        }
    }
    crate::params::from_pairs(pairs)
}

pub fn merge(query: Value, body: Value) -> Value {
    match (query, body) {
        (Value::Object(mut q), Value::Object(b)) => {
            q.extend(b);
            Value::Object(q)
        }
        (Value::Object(q), Value::Null) => Value::Object(q),
        (Value::Object(q), other) if q.is_empty() => other,
        (_, b) => b,
    }
}
