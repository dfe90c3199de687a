//! What the audit log keeps of a call's params. Params are CRM data — names, phones, e-mails —
//! so by default only their shape (key paths) and a keyed digest of the values are kept: enough
//! to tell calls apart and to check a suspected call against the log (with the key), not
//! enough to read personal data out of the log or to brute-force short values without the key.

use serde_json::{Value, json};

use crate::keys::{GuardKey, Purpose};
use crate::redact::{is_secret_key, redact, redact_text};
use crate::store::canonical;

/// How much of the params goes into an audit record; the operator's policy chooses.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ParamsMode {
    /// Key paths (`fields.TITLE`) and `hmac-sha256:<hex>` of the redacted values.
    #[default]
    KeysAndDigests,
    /// The params themselves, secrets redacted.
    Full,
}

/// At most this many key paths are listed (a batch of thousands of commands stays small).
const MAX_KEYS: usize = 256;
/// Key paths go this deep (`fields.UF_CRM_X.0` is not useful; `fields.UF_CRM_X` is).
const MAX_DEPTH: usize = 3;

pub(crate) fn entry(params: &Value, mode: ParamsMode, secrets: &[String], key: &GuardKey) -> Value {
    let redacted = redact(params, secrets);
    match mode {
        ParamsMode::Full => redacted,
        ParamsMode::KeysAndDigests => {
            let mut keys = Vec::new();
            let mut truncated = false;
            collect(&redacted, "", 1, secrets, &mut keys, &mut truncated);
            let digest = key.tag(Purpose::ParamDigest, &[canonical(&redacted).as_bytes()]);
            let mut v = json!({"keys": keys, "digest": format!("hmac-sha256:{digest}")});
            if truncated {
                v["keys_truncated"] = json!(true);
            }
            v
        }
    }
}

fn collect(
    v: &Value,
    prefix: &str,
    depth: usize,
    secrets: &[String],
    out: &mut Vec<String>,
    truncated: &mut bool,
) {
    let Value::Object(o) = v else { return };
    for (k, x) in o {
        if out.len() >= MAX_KEYS {
            *truncated = true;
            return;
        }
        // A key name is not a value, but a secret may be pasted where a key belongs.
        let name = if k.len() > 64 || k.chars().any(char::is_control) {
            "[long or odd key]".to_string()
        } else {
            redact_text(k, secrets)
        };
        let path = if prefix.is_empty() {
            name
        } else {
            format!("{prefix}.{name}")
        };
        out.push(path.clone());
        if depth < MAX_DEPTH && !is_secret_key(k) {
            collect(x, &path, depth + 1, secrets, out, truncated);
        }
    }
}
