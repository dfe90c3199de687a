//! Failures as MCP tool errors: `isError: true`, a text the model can act on (the Bitrix24
//! code, its description and the fix), and the same facts as `structuredContent`.
//!
//! Why tool errors and not JSON-RPC errors: the spec reserves protocol errors for requests the
//! server cannot route (unknown tool, arguments that do not match the schema). A refusal or a
//! portal error is a result the model must read to correct itself; clients usually show
//! protocol errors opaquely.

use rmcp::model::CallToolResult;
use serde_json::{Value, json};

use crate::exit::{self, Exit};

/// How to fix a Bitrix24 error code (docs/protocol.md §8.3), in MCP terms.
pub fn fix_for_code(code: &str, method: &str) -> String {
    match code.to_ascii_uppercase().as_str() {
        "QUERY_LIMIT_EXCEEDED" => "the portal's rate limit was hit even after b24's retries: wait a few seconds and call again; fetch more per call with b24_batch or b24_export".into(),
        "OPERATION_TIME_LIMIT" => format!("{method} used up its 10-minute operating budget: wait until the reset, and request fewer fields/pages"),
        "OVERLOAD_LIMIT" => "the portal blocked REST calls for everyone: stop and tell a person; retrying will not help".into(),
        "EXPIRED_TOKEN" | "INVALID_TOKEN" => "the OAuth token could not be refreshed: re-authorize with `b24 auth login`".into(),
        "NO_AUTH_FOUND" | "INVALID_CREDENTIALS" | "INVALID_GRANT" | "INVALID_CLIENT" => "check the webhook URL or the OAuth credentials (`b24 doctor`)".into(),
        "INSUFFICIENT_SCOPE" => format!("grant the scope {method} needs to the webhook or app (see b24_describe for its scope)"),
        "ACCESS_DENIED" => "the webhook's user lacks the rights for this call: use an administrator's webhook or ask the portal admin".into(),
        "ERROR_METHOD_NOT_FOUND" | "METHOD_NOT_FOUND" => "the method does not exist on this portal: check the name with b24_search_methods".into(),
        "WRONG_AUTH_TYPE" => "this method needs an application (OAuth) context; a webhook cannot call it".into(),
        "PAYMENT_REQUIRED" => "the portal's plan does not include REST access for this".into(),
        "PORTAL_DELETED" => "the portal no longer exists".into(),
        "ERROR_ARGUMENT" | "INVALID_ARGUMENT" | "ERROR_CORE" | "" => format!("check the params against b24_describe {method} and the method's documentation"),
        _ => format!("check the params against b24_describe {method}; retrying the same call will not help"),
    }
}

/// `b24 plan M --params 'P'` (as the library's fixes spell it) → the b24_plan arguments.
fn rewrite_plan_command(text: &str) -> String {
    const START: &str = "`b24 plan ";
    let Some(i) = text.find(START) else {
        return text.to_string();
    };
    let rest = &text[i + START.len()..];
    let Some(end) = rest.find('`') else {
        return text.to_string();
    };
    let cmd = &rest[..end];
    let (method, params) = match cmd.split_once(" --params '") {
        Some((m, p)) => (m.trim(), p.trim_end_matches('\'')),
        None => (cmd.trim(), "{}"),
    };
    let params: Value = serde_json::from_str(params).unwrap_or(json!({}));
    let call = json!({"method": method, "params": params});
    format!("{}b24_plan {call}{}", &text[..i], &rest[end + 1..])
}

/// A refusal that comes from an HTTP client's own policy file (its layer is named
/// `MCP client NAME (PATH)`): the CLI's fix ("add --allow ...", "remove the pattern there")
/// would send the model after flags it does not have, so it says who can change it instead.
fn client_layer_fix(text: &str) -> Option<String> {
    const MARK: &str = "(MCP client ";
    let start = text.find(MARK)?;
    let end = start + text[start..].find("))")? + 2;
    let fix_at = end + text[end..].strip_prefix(". ").map(|_| 2)?;
    let source = &text[start + 1..end - 1];
    Some(format!(
        "{}{source} does not allow this call: that file is the operator's, and no tool argument changes it; ask the operator, or do only what it allows",
        &text[..fix_at]
    ))
}

/// Rewrite the CLI's flags in a refusal's fix into this server's tool arguments.
pub fn mcp_fix(text: &str) -> String {
    if let Some(s) = client_layer_fix(text) {
        return s;
    }
    let mut s = rewrite_plan_command(text);
    for (cli, mcp) in [
        (
            "`b24 apply <plan id> --confirm-destructive`",
            "b24_apply {\"plan_id\": …, \"confirm_destructive\": true}",
        ),
        (
            "`b24 apply <plan id> --confirm-write`",
            "b24_apply {\"plan_id\": …}",
        ),
    ] {
        s = s.replace(cli, mcp);
    }
    for (cli, mcp) in [
        (
            "re-run the apply with --confirm-destructive",
            "call b24_apply again with confirm_destructive: true",
        ),
        (
            "re-run the apply with --confirm-write",
            "call b24_apply again with confirm: true",
        ),
        (
            "re-run with --confirm-destructive",
            "call again with confirm_destructive: true",
        ),
        (
            "re-run with --confirm-write",
            "call again with confirm: true",
        ),
        ("--confirm-destructive", "confirm_destructive: true"),
        ("--confirm-write", "confirm: true"),
        ("`b24 apply <plan id>", "`b24_apply {plan_id}"),
        ("`b24 plan ", "`b24_plan "),
        ("--idempotency-key", "idempotency_key"),
        ("`b24 methods --search`", "b24_search_methods"),
    ] {
        s = s.replace(cli, mcp);
    }
    s
}

/// A tool error from a JSON description (`message` is the text shown).
pub fn tool_error_value(v: Value) -> CallToolResult {
    let text = v["message"].as_str().unwrap_or("error").to_string();
    let mut r = CallToolResult::structured_error(v);
    r.content = vec![rmcp::model::ContentBlock::text(text)];
    r
}

/// Describe an error: kind, Bitrix24 code, description, fix, and a one-paragraph message.
pub fn error_value(err: &anyhow::Error) -> Value {
    for cause in err.chain() {
        if let Some(e) = cause.downcast_ref::<Exit>() {
            let kind = match e.code {
                exit::POLICY => "refused",
                exit::USAGE => "usage",
                exit::AUTH => "auth",
                exit::API => "api",
                _ => "error",
            };
            let text = mcp_fix(&e.message);
            let message = if kind == "refused" {
                format!(
                    "{text}\nNothing was sent to the portal. The reviewed path: b24_plan records the exact call and returns a plan_id; after a person agrees, b24_apply {{plan_id}} runs it once."
                )
            } else {
                text.clone()
            };
            return json!({"error": kind, "exit_code": e.code, "message": message, "detail": text});
        }
        if let Some(e) = cause.downcast_ref::<b24::Error>() {
            return b24_error_value(e);
        }
    }
    json!({"error": "error", "message": format!("{err:#}")})
}

fn b24_error_value(e: &b24::Error) -> Value {
    match e {
        b24::Error::Api(a) => {
            let code = if a.code.is_empty() {
                ""
            } else {
                a.code.as_str()
            };
            // The library's table (shared with the CLI), in this server's tool names.
            let f = b24_guard::fixes::portal_error(code, &a.description, &a.method);
            let fix = f
                .fix
                .replace("`b24 describe ", "b24_describe `")
                .replace("`b24 methods --search`", "b24_search_methods");
            json!({
                "error": "api",
                "code": code,
                "description": a.description,
                "http_status": a.http_status,
                "method": a.method,
                "meaning": f.meaning,
                "fix": fix,
                "message": format!(
                    "Bitrix24 error {}on {} (HTTP {}): {}. {}. Fix: {fix}",
                    if code.is_empty() { String::new() } else { format!("{code} ") },
                    a.method, a.http_status, a.description, f.meaning
                ),
            })
        }
        b24::Error::OutcomeUnknown {
            method,
            reason,
            idempotency_key,
            ..
        } => {
            let fix = match idempotency_key {
                Some(k) => format!(
                    "check the portal for the effect (list/get the record) before anything else; the idempotency key `{k}` stays blocked until you know, and b24 will refuse to resend it"
                ),
                None => "check the portal for the effect (list/get the record) before anything else; do NOT repeat the call blindly, and give writes an idempotency_key next time".into(),
            };
            json!({
                "error": "outcome_unknown",
                "method": method,
                "reason": reason,
                "fix": fix,
                "message": format!("{method}: the outcome is unknown, the write may or may not have happened ({reason}); it was not resent. Fix: {fix}"),
            })
        }
        b24::Error::Transient {
            method,
            reason,
            attempts,
            ..
        } => json!({
            "error": "transient",
            "method": method,
            "fix": "the portal or network kept failing: try again later",
            "message": format!("{method}: {reason} (after {attempts} attempts). Try again later."),
        }),
        other => json!({
            "error": match other.class() {
                b24::ErrorClass::Reauthorize => "auth",
                b24::ErrorClass::Usage => "config",
                _ => "error",
            },
            "message": format!("{other}. Check the configuration with `b24 doctor`."),
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_client_layers_refusal_names_the_file_not_flags() {
        let t = "refused crm.deal.add: not in the allowlist (MCP client bot (/etc/b24/bot.toml)). add --allow 'crm.deal.add'";
        let f = mcp_fix(t);
        assert!(f.starts_with("refused crm.deal.add: not in the allowlist (MCP client bot (/etc/b24/bot.toml)). MCP client bot (/etc/b24/bot.toml) does not allow"), "{f}");
        assert!(!f.contains("--allow"), "{f}");
        let ro = "refused crm.lead.add: a write call in read-only mode (MCP client r (/p.toml)). read-only comes from MCP client r (/p.toml) (--read-only / B24_READ_ONLY)";
        assert!(!mcp_fix(ro).contains("--read-only"), "{}", mcp_fix(ro));
        // Other refusals are untouched by it.
        let other = "refused crm.lead.add: not in the allowlist (flags and environment). add --allow 'crm.lead.add'";
        assert_eq!(mcp_fix(other), other);
    }

    #[test]
    fn cli_flags_become_tool_arguments() {
        let t = mcp_fix(
            "refused crm.lead.add: not confirmed. re-run with --confirm-write, or record a plan: `b24 plan crm.lead.add --params '{}'` then `b24 apply <plan id> --confirm-write`",
        );
        assert!(t.contains("call again with confirm: true"), "{t}");
        assert!(
            t.contains(r#"b24_plan {"method":"crm.lead.add","params":{}}"#),
            "{t}"
        );
        assert!(t.contains(r#"b24_apply {"plan_id": …}"#), "{t}");
        assert!(!t.contains("--confirm"), "{t}");
    }

    #[test]
    fn api_errors_carry_code_description_and_fix() {
        let e = anyhow::Error::new(b24::Error::Api(b24::ApiError::new(
            "crm.deal.list",
            "insufficient_scope",
            "The request requires higher privileges",
            403,
        )));
        let v = error_value(&e);
        assert_eq!(v["error"], "api");
        assert_eq!(v["code"], "insufficient_scope");
        let m = v["message"].as_str().unwrap();
        assert!(
            m.contains("insufficient_scope")
                && m.contains("higher privileges")
                && m.contains("lacks the `crm` scope")
                && m.contains("Fix: webhook: add `crm`"),
            "{m}"
        );
        let r = Exit::new(
            exit::POLICY,
            "refused x: no. re-run with --confirm-destructive",
        );
        let v = error_value(&r);
        assert_eq!(v["error"], "refused");
        assert!(
            v["message"]
                .as_str()
                .unwrap()
                .contains("confirm_destructive: true")
        );
        let u = anyhow::Error::new(b24::Error::OutcomeUnknown {
            method: "crm.lead.add".into(),
            reason: "timeout".into(),
            idempotency_key: None,
            source: None,
        });
        assert_eq!(error_value(&u)["error"], "outcome_unknown");
        assert!(
            error_value(&u)["fix"]
                .as_str()
                .unwrap()
                .contains("do NOT repeat")
        );
    }
}
