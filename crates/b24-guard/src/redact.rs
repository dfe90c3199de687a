//! Secret redaction for anything that is written down (audit records, plans shown to people).

use serde_json::Value;

const SECRET_KEYS: &[&str] = &[
    "auth",
    "password",
    "passwd",
    "token",
    "secret",
    "client_secret",
    "access_token",
    "refresh_token",
    "application_token",
    "webhook",
    "webhook_code",
    "api_key",
    "apikey",
    "authorization",
    "auth_id",
    "refresh_id",
];

/// Whether a parameter name holds a secret.
pub fn is_secret_key(k: &str) -> bool {
    let k = k.to_ascii_lowercase();
    SECRET_KEYS.iter().any(|s| {
        k == *s || k.ends_with(&format!("_{s}")) || k.ends_with("token") || k.ends_with("secret")
    })
}

/// A copy of `v` with secret-named fields and any known secret value replaced by `[redacted]`.
pub fn redact(v: &Value, known: &[String]) -> Value {
    match v {
        Value::Object(o) => Value::Object(
            o.iter()
                .map(|(k, x)| {
                    let val = if is_secret_key(k) {
                        Value::String("[redacted]".into())
                    } else {
                        redact(x, known)
                    };
                    (k.clone(), val)
                })
                .collect(),
        ),
        Value::Array(a) => Value::Array(a.iter().map(|x| redact(x, known)).collect()),
        Value::String(s) => Value::String(redact_text(s, known)),
        other => other.clone(),
    }
}

/// Replace every occurrence of a known secret in free text.
pub fn redact_text(s: &str, known: &[String]) -> String {
    let mut out = s.to_string();
    for k in known.iter().filter(|k| k.len() >= 4) {
        if out.contains(k.as_str()) {
            out = out.replace(k.as_str(), "[redacted]");
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn redacts_keys_and_values() {
        let v = json!({"fields": {"TITLE": "hello s3cr3tcode"}, "auth": "abc", "nested": [{"access_token": "x", "refresh_token": "y"}], "CODE": "ok"});
        let r = redact(&v, &["s3cr3tcode".into()]);
        assert_eq!(
            r,
            json!({"fields": {"TITLE": "hello [redacted]"}, "auth": "[redacted]", "nested": [{"access_token": "[redacted]", "refresh_token": "[redacted]"}], "CODE": "ok"})
        );
    }
}
