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

/// Replace every occurrence of a known secret in free text, and whatever has the shape of a
/// credential even when it is not known here: the code of an incoming-webhook URL
/// (`/rest/<user id>/<code>/`) and the value of `auth=`, `access_token=`, `refresh_token=`,
/// `client_secret=` query or form fields. Portal error pages echo the request path, so a
/// message may carry a webhook code nobody told the redactor about.
pub fn redact_text(s: &str, known: &[String]) -> String {
    let mut out = s.to_string();
    for k in known.iter().filter(|k| k.len() >= 4) {
        if out.contains(k.as_str()) {
            out = out.replace(k.as_str(), "[redacted]");
        }
    }
    redact_shapes(&out)
}

fn is_code_char(c: char) -> bool {
    c.is_ascii_alphanumeric() || c == '_' || c == '-'
}

/// The shape-based part of [`redact_text`].
fn redact_shapes(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    let mut rest = s;
    // `/rest/<digits>/<code>` — the code is the webhook's password.
    while let Some(i) = rest.find("/rest/") {
        let (head, tail) = rest.split_at(i + "/rest/".len());
        out.push_str(head);
        let digits = tail.chars().take_while(|c| c.is_ascii_digit()).count();
        let after = &tail[digits..];
        if digits > 0 && after.starts_with('/') {
            let code_len = after[1..].chars().take_while(|c| is_code_char(*c)).count();
            if code_len >= 4 {
                out.push_str(&tail[..digits + 1]);
                out.push_str("[redacted]");
                rest = &after[1 + code_len..];
                continue;
            }
        }
        rest = tail;
    }
    out.push_str(rest);
    for key in [
        "auth=",
        "access_token=",
        "refresh_token=",
        "client_secret=",
        "application_token=",
    ] {
        let mut res = String::with_capacity(out.len());
        let mut rest = out.as_str();
        while let Some(i) = rest.find(key) {
            let boundary =
                i == 0 || !rest[..i].ends_with(|c: char| c.is_ascii_alphanumeric() || c == '_');
            let (head, tail) = rest.split_at(i + key.len());
            res.push_str(head);
            let n = tail
                .chars()
                .take_while(|c| is_code_char(*c) || *c == '.' || *c == '%')
                .count();
            if boundary && n > 0 {
                res.push_str("[redacted]");
                rest = &tail[n..];
            } else {
                rest = tail;
            }
        }
        res.push_str(rest);
        out = res;
    }
    out
}

static GLOBAL: std::sync::RwLock<Vec<String>> = std::sync::RwLock::new(Vec::new());

/// Make secrets known to the process-wide redactor, which every message a front end prints
/// goes through ([`text`]). Called when the configuration is resolved.
pub fn remember(secrets: impl IntoIterator<Item = String>) {
    if let Ok(mut g) = GLOBAL.write() {
        for s in secrets {
            if s.len() >= 4 && !g.contains(&s) {
                g.push(s);
            }
        }
    }
}

/// Redact a message with every secret the process knows of (see [`remember`]).
pub fn text(s: &str) -> String {
    match GLOBAL.read() {
        Ok(g) => redact_text(s, &g),
        Err(_) => redact_shapes(s),
    }
}

/// Redact a JSON value with every secret the process knows of.
pub fn value(v: &Value) -> Value {
    match GLOBAL.read() {
        Ok(g) => redact(v, &g),
        Err(_) => redact(v, &[]),
    }
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

    #[test]
    fn credential_shapes_are_redacted_even_when_unknown() {
        let page = "<h1>404</h1> GET https://p.bitrix24.com/rest/1/abcdef0123456789/crm.lead.get?id=1&auth=tok.EN-123 failed";
        let r = redact_text(page, &[]);
        assert!(
            !r.contains("abcdef0123456789") && !r.contains("tok.EN-123"),
            "{r}"
        );
        assert!(
            r.contains("/rest/1/[redacted]/crm.lead.get") && r.contains("auth=[redacted]"),
            "{r}"
        );
        assert_eq!(
            redact_text("see /rest/api/tasks.task.get", &[]),
            "see /rest/api/tasks.task.get"
        );
        assert_eq!(redact_text("oauth=x author=y", &[]), "oauth=x author=y");
        assert_eq!(
            redact_text("refresh_token=abc&x=1", &[]),
            "refresh_token=[redacted]&x=1"
        );
    }
}
