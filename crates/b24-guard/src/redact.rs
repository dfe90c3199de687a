//! Secret redaction for anything that is written down (audit records, plans shown to people).

use serde_json::Value;

/// Parameter names that hold a secret (so do names ending in `_` and one of these, or in
/// `token` or `secret`: see [`is_secret_key`]). Public so that filters elsewhere (the
/// worker's handler environment) can be tested against the same list.
pub const SECRET_KEYS: &[&str] = &[
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
    redact_text_with(s, known.iter())
}

fn redact_text_with<'a>(s: &str, known: impl Iterator<Item = &'a String>) -> String {
    let mut out = s.to_string();
    let mut windows = Windows::of(s);
    for k in known.filter(|k| k.len() >= 4) {
        if windows.may_hold(&out, k) {
            out = redact_secret(&out, k);
            windows = Windows::of(&out);
        }
    }
    redact_shapes(&out)
}

/// Every 8-byte window of a text, in ASCII lower case: whether the text may hold a secret
/// of 8 or more characters is then two set lookups (its first and last 8), so a process
/// knowing thousands of tokens (a worker serving a fleet: 4 a portal) reads each line once
/// instead of once a token — a 16 KiB handler stderr tail took seconds with 4,000 tokens.
/// Shorter secrets (4 to 7 characters) keep the scan of [`may_hold`].
struct Windows {
    set: std::collections::HashSet<[u8; 8]>,
}

impl Windows {
    /// The windows of `text`, which [`Windows::may_hold`] is then asked about.
    fn of(text: &str) -> Self {
        let set = text
            .as_bytes()
            .windows(8)
            .map(|w| {
                let mut a = [0u8; 8];
                a.copy_from_slice(w);
                a.make_ascii_lowercase();
                a
            })
            .collect();
        Windows { set }
    }

    /// [`may_hold`] for the text these are the windows of.
    fn may_hold(&self, text: &str, secret: &str) -> bool {
        let s = secret.as_bytes();
        if s.len() < 8 {
            return may_hold(text, secret);
        }
        let key = |w: &[u8]| {
            let mut a = [0u8; 8];
            a.copy_from_slice(w);
            a.make_ascii_lowercase();
            a
        };
        self.set.contains(&key(&s[..8])) || self.set.contains(&key(&s[s.len() - 8..]))
    }
}

/// Whether `text` may hold a copy of `secret` that [`redact_secret`] replaces: every such copy
/// (whole, cut short or cut at its start) holds the secret's first or last 8 characters
/// (fewer for a shorter secret), in any ASCII case. A cheap test without allocating, so that
/// a process knowing thousands of tokens (a worker serving many portals) does not run the
/// full replacement for each of them on every line.
fn may_hold(text: &str, secret: &str) -> bool {
    let (t, s) = (text.as_bytes(), secret.as_bytes());
    let min = s.len().min(8);
    let has = |needle: &[u8]| {
        t.windows(needle.len())
            .any(|w| w.eq_ignore_ascii_case(needle))
    };
    has(&s[..min]) || has(&s[s.len() - min..])
}

fn is_code_char(c: char) -> bool {
    c.is_ascii_alphanumeric() || c == '_' || c == '-'
}

/// Replace copies of `secret` in `text`, ignoring ASCII case (error pages upper-case paths),
/// and also a copy cut short — the first 8 or more characters of the secret where the text
/// ends or the run of code characters ends (error snippets are truncated) — or cut at its
/// start: a whole word that is the last 8 or more characters of the secret.
fn redact_secret(text: &str, secret: &str) -> String {
    let lower = text.to_ascii_lowercase();
    let sec = secret.to_ascii_lowercase();
    let (tb, sb) = (lower.as_bytes(), sec.as_bytes());
    let min = sb.len().min(8);
    let mut out = String::with_capacity(text.len());
    let mut i = 0;
    while i < tb.len() {
        if text.is_char_boundary(i) {
            let n = tb[i..].iter().zip(sb).take_while(|(a, b)| a == b).count();
            let ends = i + n == tb.len() || !is_code_char(char::from(tb[i + n]));
            if n == sb.len() || (n >= min && ends) {
                out.push_str("[redacted]");
                i += n;
                continue;
            }
            // A copy cut at its start: a word that is the last 8 or more characters of the
            // secret (a handler's stderr is kept as its last 16 KiB, cut anywhere).
            // Only at a word's start, and reading at most the secret's length: linear time.
            if i == 0 || !is_code_char(char::from(tb[i - 1])) {
                let run = tb[i..]
                    .iter()
                    .take(sb.len())
                    .take_while(|b| is_code_char(char::from(**b)))
                    .count();
                let whole = i + run == tb.len() || !is_code_char(char::from(tb[i + run]));
                if whole && run >= min && run < sb.len() && sb.ends_with(&tb[i..i + run]) {
                    out.push_str("[redacted]");
                    i += run;
                    continue;
                }
            }
        }
        let ch_len = text[i..].chars().next().map_or(1, char::len_utf8);
        out.push_str(&text[i..i + ch_len]);
        i += ch_len;
    }
    out
}

/// The shape-based part of [`redact_text`]: the code after `/rest/<digits>/` (plain or
/// percent-encoded, any case), the values of credential fields and MCP client tokens.
fn redact_shapes(s: &str) -> String {
    redact_mcp_tokens(&redact_quoted_fields(&redact_rest_and_fields(s)))
}

/// The credential fields [`redact_quoted_fields`] looks for.
const QUOTED_FIELDS: &[&str] = &[
    "access_token",
    "refresh_token",
    "client_secret",
    "application_token",
];

/// Credential fields in the other spellings a log line carries them in: JSON
/// (`"access_token":"…"`, also escaped inside a quoted string, `\"access_token\":\"…\"`), a
/// debug-printed field (`access_token="…"`, `access_token: "…"`) and a percent-encoded form
/// field (`auth%5Baccess_token%5D=…`, as Bitrix24 posts events). `auth=`-style fields are
/// handled by [`redact_rest_and_fields`]; this only adds what sits between the name and the
/// value (closing quotes or brackets, spaces, `:` or `=` plain or encoded, an opening quote).
/// Fail-closed: whatever follows such a separator, up to the end of the run of token
/// characters, is replaced.
fn redact_quoted_fields(s: &str) -> String {
    let mut out = s.to_string();
    for key in QUOTED_FIELDS {
        let lower = out.to_ascii_lowercase();
        let mut res = String::with_capacity(out.len());
        let mut j = 0;
        while let Some(k) = lower[j..].find(key) {
            let pos = j + k;
            // After an opening bracket or quote, also a percent-encoded one (`auth%5B…`).
            let boundary = pos == 0
                || !lower[..pos].ends_with(|c: char| c.is_ascii_alphanumeric() || c == '_')
                || ["%5b", "%22", "%2c", "%26"]
                    .iter()
                    .any(|p| lower[..pos].ends_with(p));
            let mut at = pos + key.len();
            let start_sep = at;
            // Closing quote or bracket of the name, plain, escaped or percent-encoded.
            at += skip_any(&lower[at..], &["\\\"", "\\\\\"", "\"", "]", "%5d", "%22"]);
            at += skip_ws(&lower[at..]);
            let sep = ["=", ":", "%3d", "%3a"]
                .iter()
                .find(|p| lower[at..].starts_with(**p))
                .map_or(0, |p| p.len());
            if !boundary || sep == 0 || at == start_sep && lower[at..].starts_with('=') {
                // `access_token=` is redact_rest_and_fields' case (already done there).
                res.push_str(&out[j..pos + key.len()]);
                j = pos + key.len();
                continue;
            }
            at += sep;
            at += skip_ws(&lower[at..]);
            at += skip_any(&lower[at..], &["\\\"", "\\\\\"", "\"", "%22"]);
            let n = out[at..]
                .chars()
                .take_while(|c| is_code_char(*c) || *c == '.' || *c == '%')
                .count();
            res.push_str(&out[j..at]);
            if n > 0 && !out[at..].starts_with("[redacted]") {
                res.push_str("[redacted]");
            } else {
                res.push_str(&out[at..at + n]);
            }
            j = at + n;
        }
        res.push_str(&out[j..]);
        out = res;
    }
    out
}

/// The length of the longest run of `parts` (at most three) at the start of `s`.
fn skip_any(s: &str, parts: &[&str]) -> usize {
    let mut n = 0;
    for _ in 0..3 {
        match parts.iter().find(|p| s[n..].starts_with(**p)) {
            Some(p) => n += p.len(),
            None => break,
        }
    }
    n
}

fn skip_ws(s: &str) -> usize {
    s.len() - s.trim_start_matches([' ', '\t']).len()
}

/// An MCP client's bearer token (`b24mcp_` + hex, see [`crate::clients`]) wherever it appears:
/// the server keeps only their hashes, so their shape is all it can recognise — and a token
/// pasted into portal data must not reach another client (who could then act as its owner)
/// or the audit log.
fn redact_mcp_tokens(s: &str) -> String {
    const PREFIX: &str = "b24mcp_";
    let lower = s.to_ascii_lowercase();
    let mut out = String::with_capacity(s.len());
    let mut j = 0;
    while let Some(k) = lower[j..].find(PREFIX) {
        let start = j + k + PREFIX.len();
        out.push_str(&s[j..start]);
        let n = s[start..].bytes().take_while(u8::is_ascii_hexdigit).count();
        if n >= 8 {
            out.push_str("[redacted]");
        } else {
            out.push_str(&s[start..start + n]);
        }
        j = start + n;
    }
    out.push_str(&s[j..]);
    out
}

fn redact_rest_and_fields(s: &str) -> String {
    let lower = s.to_ascii_lowercase();
    let mut out = String::with_capacity(s.len());
    let mut i = 0;
    while i < s.len() {
        let at = &lower[i..];
        let sep_len = if at.starts_with("/rest/") {
            Some((6, 1))
        } else if at.starts_with("%2frest%2f") {
            Some((10, 3))
        } else {
            None
        };
        if let Some((head, sep)) = sep_len {
            let digits = at[head..].bytes().take_while(u8::is_ascii_digit).count();
            let after = &at[head + digits..];
            let sep_ok =
                (sep == 1 && after.starts_with('/')) || (sep == 3 && after.starts_with("%2f"));
            if digits > 0 && sep_ok {
                let code_len = after[sep..]
                    .chars()
                    .take_while(|c| is_code_char(*c))
                    .count();
                if code_len >= 4 {
                    let keep = head + digits + sep;
                    out.push_str(&s[i..i + keep]);
                    out.push_str("[redacted]");
                    i += keep + code_len;
                    continue;
                }
            }
        }
        let ch_len = s[i..].chars().next().map_or(1, char::len_utf8);
        out.push_str(&s[i..i + ch_len]);
        i += ch_len;
    }
    for key in [
        "auth=",
        "access_token=",
        "refresh_token=",
        "client_secret=",
        "application_token=",
    ] {
        let lower = out.to_ascii_lowercase();
        let mut res = String::with_capacity(out.len());
        let mut j = 0;
        while let Some(k) = lower[j..].find(key) {
            let pos = j + k;
            let boundary = pos == 0
                || !lower[..pos].ends_with(|c: char| c.is_ascii_alphanumeric() || c == '_');
            let start = pos + key.len();
            res.push_str(&out[j..start]);
            let n = out[start..]
                .chars()
                .take_while(|c| is_code_char(*c) || *c == '.' || *c == '%')
                .count();
            if boundary && n > 0 {
                res.push_str("[redacted]");
            } else {
                res.push_str(&out[start..start + n]);
            }
            j = start + n;
        }
        res.push_str(&out[j..]);
        out = res;
    }
    out
}

static GLOBAL: std::sync::RwLock<Vec<String>> = std::sync::RwLock::new(Vec::new());

/// Make secrets known to the process-wide redactor, which every message a front end prints
/// goes through ([`text`]). Called when the configuration is resolved. OAuth tokens obtained
/// later (a refresh, a login, a stored pair adopted) need no call: the auth layer keeps them
/// and [`text`] and [`value`] read them too (`b24::auth::live_secrets`).
pub fn remember(secrets: impl IntoIterator<Item = String>) {
    let mut g = GLOBAL.write().unwrap_or_else(|p| p.into_inner());
    for s in secrets {
        if s.len() >= 4 && !g.contains(&s) {
            g.push(s);
        }
    }
}

/// Redact a message with every secret the process knows of: those made known with
/// [`remember`] and the OAuth tokens the process holds now (`b24::auth::live_secrets`). A
/// poisoned lock still gives its list: a panic elsewhere must not turn redaction off.
pub fn text(s: &str) -> String {
    let live = b24::auth::live_secrets();
    let g = GLOBAL.read().unwrap_or_else(|p| p.into_inner());
    redact_text_with(s, g.iter().chain(live.iter()))
}

/// Redact a JSON value with every secret the process knows of (as [`text`]).
pub fn value(v: &Value) -> Value {
    let live = b24::auth::live_secrets();
    let g = GLOBAL.read().unwrap_or_else(|p| p.into_inner());
    let known: Vec<String> = g.iter().chain(live.iter()).cloned().collect();
    redact(v, &known)
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
    fn mcp_client_tokens_are_redacted_by_their_shape() {
        let t = format!("b24mcp_{}", "ab12".repeat(16));
        let r = redact_text(&format!("note: {t}, again {}", t.to_uppercase()), &[]);
        assert!(!r.to_ascii_lowercase().contains(&t[7..]), "{r}");
        assert!(r.contains("b24mcp_[redacted]"), "{r}");
        assert_eq!(
            redact_text("b24mcp_ and b24mcp_12", &[]),
            "b24mcp_ and b24mcp_12"
        );
        let v = redact(&json!({"fields": {"COMMENTS": t}}), &[]);
        assert_eq!(v, json!({"fields": {"COMMENTS": "b24mcp_[redacted]"}}));
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
        // upper-cased, percent-encoded and cut-short echoes of the path
        let code = "s3cr3tw3bh00kc0d3abcdef".to_string();
        for page in [
            "404 NOT FOUND: /REST/7/S3CR3TW3BH00KC0D3ABCDEF/USER.CURRENT.JSON",
            "not found: %2Frest%2F7%2Fs3cr3tw3bh00kc0d",
            "GET /x?next=%2FREST%2F7%2FS3CR3TW3BH00KC0D3ABCDEF%2Fuser.current",
            "code s3cr3tw3bh00",
        ] {
            let r = redact_text(page, std::slice::from_ref(&code));
            assert!(
                !r.to_ascii_lowercase().contains("s3cr3tw3"),
                "{page} -> {r}"
            );
        }
        assert_eq!(
            redact_text("Привет /rest/1/abcd1234/x", &[]),
            "Привет /rest/1/[redacted]/x"
        );
    }
}
