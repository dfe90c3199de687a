//! The REST response envelope (v2 `result/next/total/time`, v3 `result` + nested error).

use serde_json::Value;

/// The `time` block that follows every successful response (docs/protocol.md §2.2).
/// Every field is optional: its composition varies by method and environment.
#[derive(Debug, Clone, Default, PartialEq, serde::Serialize, serde::Deserialize)]
#[non_exhaustive]
pub struct Time {
    /// Unix time the portal started the request.
    pub start: Option<f64>,
    /// Unix time the portal finished it.
    pub finish: Option<f64>,
    /// Seconds from start to finish.
    pub duration: Option<f64>,
    /// Seconds spent executing the method.
    pub processing: Option<f64>,
    /// `start` as an ISO 8601 date.
    pub date_start: Option<String>,
    /// `finish` as an ISO 8601 date.
    pub date_finish: Option<String>,
    /// Seconds this method has used for this credential over the last ten minutes.
    pub operating: Option<f64>,
    /// Unix time when the oldest one-minute basket drops out of `operating`.
    pub operating_reset_at: Option<i64>,
}

/// A successful response. Built by the client from the portal's answer; elsewhere (a test
/// double of [`crate::batch::Transport`], a stored result) with [`Response::from_result`].
#[derive(Debug, Clone, PartialEq)]
#[non_exhaustive]
pub struct Response {
    /// The `result` member, whatever its shape.
    pub result: Value,
    /// `next` of list methods: the `start` to send for the next page.
    pub next: Option<u64>,
    /// `total` of list methods.
    pub total: Option<u64>,
    /// The `time` block, when the portal sent one.
    pub time: Option<Time>,
    /// The whole envelope as received (for `--raw`).
    pub raw: Value,
    /// True when a v3 server answered from its idempotency store (`Idempotent-Replayed: true`).
    pub replayed: bool,
}

impl Response {
    /// A response carrying `result` alone, as a v2 envelope without paging or timing would:
    /// `raw` is `{"result": …}`, nothing else is set.
    pub fn from_result(result: Value) -> Response {
        Response::from_envelope(serde_json::json!({ "result": result }))
    }

    /// A response from an envelope kept earlier (an idempotency store's answer, a settled
    /// write): `result`, `next` and `total` are read from it as the client reads an answer.
    /// `time` stays `None`: an old envelope's timing says nothing about this call.
    pub fn from_envelope(raw: Value) -> Response {
        Response {
            result: raw.get("result").cloned().unwrap_or(Value::Null),
            next: raw.get("next").and_then(lenient_u64),
            total: raw.get("total").and_then(lenient_u64),
            time: None,
            raw,
            replayed: false,
        }
    }

    /// Decode `result` into a type of the caller's, e.g. a struct with the fields of a
    /// `crm.lead.get` answer. On a mismatch the error names the JSON path that failed
    /// (`[3].ID: invalid type …`), which a bare `serde_json` error does not.
    pub fn json<T: serde::de::DeserializeOwned>(&self) -> Result<T, crate::Error> {
        decode(&self.result, "result")
    }
}

/// Decode `value` into `T`, naming the failing path; `what` says what was decoded.
pub(crate) fn decode<T: serde::de::DeserializeOwned>(
    value: &Value,
    what: &str,
) -> Result<T, crate::Error> {
    serde_path_to_error::deserialize(value).map_err(|e| {
        let path = e.path().to_string();
        let inner = e.into_inner();
        crate::Error::Decode {
            method: what.to_string(),
            reason: format!("at `{path}`: {inner}"),
            source: Some(Box::new(inner)),
        }
    })
}

/// What a response body turned out to be.
#[derive(Debug)]
#[allow(clippy::large_enum_variant)] // short-lived, returned once per response
pub(crate) enum Parsed {
    Ok(Response),
    /// A Bitrix24 error envelope (v2 flat or v3 nested).
    Error {
        code: String,
        description: String,
    },
    /// Not a Bitrix24 envelope at all (HTML error page, truncated JSON, empty body): what it
    /// was, and the JSON error when the body did not parse.
    Garbage(String, Option<serde_json::Error>),
}

/// Parse a body whatever it holds; never panics.
pub(crate) fn parse(body: &[u8]) -> Parsed {
    let v: Value = match serde_json::from_slice(body) {
        Ok(v) => v,
        Err(e) => return Parsed::Garbage(describe_garbage(body, &e.to_string()), Some(e)),
    };
    let Some(obj) = v.as_object() else {
        return Parsed::Garbage(format!("expected a JSON object, got {}", kind(&v)), None);
    };
    if let Some(err) = obj.get("error").filter(|e| !e.is_null()) {
        return match err {
            // v3: {"error":{"code":..,"message":..,"validation":[..]}}
            Value::Object(e) => {
                let code = e.get("code").map(scalar_text).unwrap_or_default();
                let mut description = e.get("message").map(scalar_text).unwrap_or_default();
                if let Some(Value::Array(items)) = e.get("validation") {
                    let parts: Vec<String> = items
                        .iter()
                        .map(|i| {
                            let f = i.get("field").map(scalar_text).unwrap_or_default();
                            let m = i.get("message").map(scalar_text).unwrap_or_default();
                            if f.is_empty() { m } else { format!("{f}: {m}") }
                        })
                        .collect();
                    if !parts.is_empty() {
                        description = format!("{description} ({})", parts.join("; "));
                    }
                }
                Parsed::Error { code, description }
            }
            // v2 and the OAuth server: {"error":"CODE","error_description":"text"}
            other => Parsed::Error {
                code: scalar_text(other),
                description: obj
                    .get("error_description")
                    .map(scalar_text)
                    .unwrap_or_default(),
            },
        };
    }
    if !obj.contains_key("result") {
        return Parsed::Garbage(
            "the JSON object has neither `result` nor `error`".into(),
            None,
        );
    }
    let time = obj.get("time").and_then(parse_time);
    Parsed::Ok(Response {
        result: obj.get("result").cloned().unwrap_or(Value::Null),
        next: obj.get("next").and_then(lenient_u64),
        total: obj.get("total").and_then(lenient_u64),
        time,
        raw: v,
        replayed: false,
    })
}

/// A number that may arrive as a string (`"50"`), a float or an int.
pub fn lenient_u64(v: &Value) -> Option<u64> {
    match v {
        Value::Number(n) => n
            .as_u64()
            .or_else(|| n.as_f64().filter(|f| *f >= 0.0).map(|f| f as u64)),
        Value::String(s) => s
            .trim()
            .parse::<u64>()
            .ok()
            .or_else(|| s.trim().parse::<f64>().ok().map(|f| f as u64)),
        _ => None,
    }
}

/// A float that may arrive as a string.
pub fn lenient_f64(v: &Value) -> Option<f64> {
    match v {
        Value::Number(n) => n.as_f64(),
        Value::String(s) => s.trim().parse::<f64>().ok(),
        _ => None,
    }
}

pub(crate) fn parse_time(v: &Value) -> Option<Time> {
    let o = v.as_object()?;
    let f = |k: &str| o.get(k).and_then(lenient_f64);
    let s = |k: &str| o.get(k).and_then(|x| x.as_str()).map(str::to_string);
    Some(Time {
        start: f("start"),
        finish: f("finish"),
        duration: f("duration"),
        processing: f("processing"),
        date_start: s("date_start"),
        date_finish: s("date_finish"),
        operating: f("operating"),
        operating_reset_at: f("operating_reset_at").map(|x| x as i64),
    })
}

fn scalar_text(v: &Value) -> String {
    match v {
        Value::String(s) => s.clone(),
        Value::Null => String::new(),
        other => other.to_string(),
    }
}

fn kind(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

fn describe_garbage(body: &[u8], err: &str) -> String {
    if body.is_empty() {
        return "empty response body".into();
    }
    let text = String::from_utf8_lossy(&body[..body.len().min(4096)]);
    let lower = text.to_ascii_lowercase();
    if lower.contains("<html") || lower.contains("<!doctype") {
        let title = lower
            .find("<title>")
            .and_then(|i| {
                text.get(i + 7..)
                    .and_then(|rest| rest.split('<').next())
                    .map(str::trim)
                    .map(str::to_string)
            })
            .unwrap_or_default();
        return format!(
            "an HTML page instead of JSON{}",
            if title.is_empty() {
                String::new()
            } else {
                format!(" (\"{title}\")")
            }
        );
    }
    let snippet: String = text.chars().take(120).filter(|c| !c.is_control()).collect();
    format!("invalid JSON ({err}); body starts with: {snippet}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quirks_are_tolerated() {
        let Parsed::Ok(r) = parse(br#"{"result":[{"ID":"1"}],"next":"50","total":"120","time":{"start":1.5,"operating":"3.2","operating_reset_at":1700000000}}"#) else { panic!() };
        assert_eq!((r.next, r.total), (Some(50), Some(120)));
        assert_eq!(r.time.unwrap().operating, Some(3.2));
        let Parsed::Error { code, description } =
            parse(br#"{"error":"","error_description":"Not found"}"#)
        else {
            panic!()
        };
        assert_eq!((code.as_str(), description.as_str()), ("", "Not found"));
        let Parsed::Error { code, .. } = parse(br#"{"error":100,"error_description":"x"}"#) else {
            panic!()
        };
        assert_eq!(code, "100");
        let Parsed::Error { code, description } = parse(br#"{"error":{"code":"BITRIX_REST_V3_EXCEPTION_VALIDATION_REQUESTVALIDATIONEXCEPTION","message":"Error validating","validation":[{"field":"id","message":"Required"}]}}"#) else { panic!() };
        assert!(
            code.ends_with("REQUESTVALIDATIONEXCEPTION") && description.contains("id: Required")
        );
        assert!(
            matches!(parse(b"<html><title>502 Bad Gateway</title></html>"), Parsed::Garbage(m, _) if m.contains("502 Bad Gateway"))
        );
        assert!(matches!(
            parse(br#"{"result":[{"ID":"1"#),
            Parsed::Garbage(..)
        ));
        assert!(matches!(parse(b""), Parsed::Garbage(..)));
        assert!(matches!(parse(b"[1,2]"), Parsed::Garbage(..)));
    }
}
