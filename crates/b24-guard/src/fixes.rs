//! What a portal error means and how to fix it, for every code docs/protocol.md knows
//! (system errors, token and OAuth-server errors, REST 3.0 exceptions, and the legacy CRM
//! answers with an empty code). One table for every front end: the CLI prints it under the
//! error, MCP puts it in the tool error the model reads, `b24 doctor` and `b24 describe` quote
//! it. A code not listed gets a fix that at least says whether retrying can help.

use crate::Catalog;

/// The meaning of a portal error and what to do about it.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Fix {
    /// What the error means here, in a sentence (never the bare code).
    pub meaning: String,
    /// What to do, concretely (a command, a setting, a place in the portal).
    pub fix: String,
}

fn fix(meaning: impl Into<String>, fix: impl Into<String>) -> Fix {
    Fix {
        meaning: meaning.into(),
        fix: fix.into(),
    }
}

/// Where a webhook is created and its permissions are set, in the portal.
const WEBHOOK_PLACE: &str = "Developer resources → Other → Inbound webhook";

/// The list method next to `method` (`crm.lead.get` → `crm.lead.list`), when the catalog has it.
fn list_method(method: &str) -> Option<String> {
    let (prefix, _) = method.rsplit_once('.')?;
    let list = format!("{prefix}.list");
    Catalog::builtin().get(&list).map(|m| m.name.clone())
}

/// The scope a method needs, from the catalog.
fn scope_of(method: &str) -> Option<String> {
    Catalog::builtin()
        .get(method)
        .map(|m| m.scope.clone())
        .filter(|s| !s.is_empty())
}

/// The meaning and fix for a portal error `code` (case-insensitive; may be empty) with its
/// `description`, from calling `method`.
pub fn portal_error(code: &str, description: &str, method: &str) -> Fix {
    let up = code.trim().to_ascii_uppercase();
    let d = description.to_ascii_lowercase();
    let m = if method.is_empty() {
        "this method"
    } else {
        method
    };
    let v3 = up.strip_prefix("BITRIX_REST_V3_EXCEPTION_");
    if let Some(x) = v3 {
        return v3_error(x, m, description);
    }
    match up.as_str() {
        "" | "NOT_FOUND" | "ERROR_NOT_FOUND" | "100"
            if d.contains("not found") || up == "NOT_FOUND" || up == "ERROR_NOT_FOUND" =>
        {
            let look = match list_method(m) {
                Some(l) => format!("find the current ids with `b24 list {l}`"),
                None => "check the id".to_string(),
            };
            fix(
                "the record does not exist: it was deleted, or the id is wrong",
                format!(
                    "{look}; a deleted record cannot be read or changed (retrying will not help)"
                ),
            )
        }
        "" if d.contains("access denied") => fix(
            "the user behind the webhook or token may not see or change this record",
            "give that user the CRM rights for it (CRM → Settings → Access permissions), or use a webhook of a user who has them",
        ),
        "" => fix(
            format!("{m} refused the request without an error code"),
            format!(
                "read the description and check the params against `b24 describe {m}`; retrying the same call will not help"
            ),
        ),
        "NO_AUTH_FOUND" => fix(
            "the portal does not accept these credentials: a webhook's code is wrong or the webhook was deleted (revoked), or an OAuth token is not valid",
            format!(
                "webhook: copy its URL again from {WEBHOOK_PLACE} into B24_WEBHOOK_URL (the code is the segment after /rest/<user id>/); OAuth: run `b24 auth login`; `b24 doctor` checks either"
            ),
        ),
        "WRONG_AUTH_TYPE" => fix(
            format!(
                "{m} cannot be called with this kind of authorisation: it needs an application's OAuth context (a webhook is not enough)"
            ),
            "create a local application (Developer resources → Other → Local application) with the scopes it needs, then set B24_AUTH_MODE=oauth, B24_CLIENT_ID, B24_CLIENT_SECRET and run `b24 auth login` (see the playbook's auth section)",
        ),
        "INSUFFICIENT_SCOPE" | "INVALID_SCOPE" => {
            let scope = scope_of(m);
            let what = match &scope {
                Some(s) => {
                    format!("the webhook or application lacks the `{s}` scope that {m} needs")
                }
                None => format!(
                    "the webhook or application lacks the scope {m} needs (`b24 describe {m}` names it)"
                ),
            };
            let s = scope.unwrap_or_else(|| "the needed".into());
            fix(
                what,
                format!(
                    "webhook: add `{s}` to its permissions in {WEBHOOK_PLACE} (the URL stays the same); application: add `{s}` to its scopes, reinstall it on the portal, then `b24 auth login`"
                ),
            )
        }
        "INVALID_CREDENTIALS" => fix(
            "the user behind the webhook or token is not allowed to use the REST API (inactive, extranet, or without rights)",
            "create the webhook as an active intranet user with the rights the task needs (an administrator for settings)",
        ),
        "ACCESS_DENIED" if d.contains("commercial") || d.contains("plan") => fix(
            "the REST API is available only on commercial plans and this portal is on the free plan",
            "upgrade the portal's plan, or develop against `b24 sandbox`",
        ),
        "ACCESS_DENIED" if d.contains("application context") => fix(
            format!("{m} needs an application's context; a webhook cannot call it"),
            "use OAuth: create a local application, set B24_AUTH_MODE=oauth, B24_CLIENT_ID, B24_CLIENT_SECRET and run `b24 auth login`",
        ),
        "ACCESS_DENIED" => fix(
            "the user behind the webhook or token lacks the rights for this call (some methods need an administrator)",
            "use a webhook of a user with those rights (an administrator for event.offline.*, settings and users), or grant them",
        ),
        "USER_ACCESS_ERROR" => fix(
            "the application is installed but restricted to certain users, and this user is not one of them",
            "in the portal, open the application's settings (Applications → the app → Access) and add this user, or use a user who has access",
        ),
        "EXPIRED_TOKEN" => fix(
            "the OAuth access token expired and could not be refreshed",
            "run `b24 auth login` (or provide B24_REFRESH_TOKEN); a refresh token lasts 28 days",
        ),
        "INVALID_TOKEN" => fix(
            "the OAuth token was refused (revoked, or the application was reinstalled)",
            "run `b24 auth login` for a new pair",
        ),
        "INVALID_GRANT" => fix(
            "the authorisation code or refresh token is wrong or expired",
            "run `b24 auth login` again (a refresh token expires after 28 days unused)",
        ),
        "INVALID_CLIENT" => fix(
            "the OAuth server does not know this client id and secret, or the application is not installed on the portal",
            "check B24_CLIENT_ID and B24_CLIENT_SECRET against the application's card, and install it on the portal",
        ),
        "INVALID_REQUEST" if d.contains("https") => fix(
            "the portal requires https",
            "use https:// in B24_WEBHOOK_URL / B24_DOMAIN",
        ),
        "INVALID_REQUEST" => fix(
            "the OAuth server refused a malformed request",
            "check B24_OAUTH_TOKEN_URL and the application's credentials; run `b24 auth login`",
        ),
        "PAYMENT_REQUIRED" => fix(
            "the application's trial or paid period is over: no tokens until it is paid",
            "pay for the application in the portal's Market, then `b24 auth login`",
        ),
        "METHOD_CONFIRM_WAITING" => fix(
            format!("{m} needs an administrator's confirmation, which is pending"),
            "ask a portal administrator to confirm the application's access to this method (a notification waits for them), then call again",
        ),
        "METHOD_CONFIRM_DENIED" => fix(
            format!("an administrator denied this application access to {m}"),
            "ask the administrator to allow it, or do without this method",
        ),
        "ERROR_OAUTH" => fix(
            "the application is not installed on this portal",
            "install the application on the portal, then `b24 auth login`",
        ),
        "ALLOWED_ONLY_INTRANET_USER" => fix(
            "extranet users cannot use this method",
            "use a webhook or token of an intranet (employee) user",
        ),
        "QUERY_LIMIT_EXCEEDED" => fix(
            "the portal's request-rate limit was hit even after b24's retries",
            "wait a few seconds; send fewer requests (b24 batch packs 50 calls into one, b24 export pages by ID); share one limiter between processes (the default sqlite limiter in the state dir)",
        ),
        "OPERATION_TIME_LIMIT" => fix(
            format!("{m} used up its operating-time budget (480 s of portal time per 10 minutes)"),
            "wait for the reset (b24 waits by itself when the call can), select fewer fields, and page with b24 export instead of deep offsets",
        ),
        "OVERLOAD_LIMIT" => fix(
            "the portal blocked REST calls for everyone (overload)",
            "stop and tell a person: retrying will not help until the block is lifted (Bitrix24 support)",
        ),
        "PORTAL_DELETED" => fix(
            "the portal was deleted or its public part is closed",
            "check the portal address; nothing can be called there",
        ),
        "INTERNAL_SERVER_ERROR" | "ERROR_UNEXPECTED_ANSWER" => fix(
            "the portal failed internally",
            "retry later; for a write, first read back whether it happened",
        ),
        "ERROR_METHOD_NOT_FOUND" | "METHOD_NOT_FOUND" => fix(
            format!(
                "the portal does not know {m}: the name is misspelt, its module is not installed, it is REST 3.0 only, or a webhook URL is cut short"
            ),
            "check the name with `b24 methods --search`; REST 3.0 methods need --v3; use the whole webhook URL https://<portal>/rest/<user id>/<code>/",
        ),
        "ERROR_BATCH_METHOD_NOT_ALLOWED" => fix(
            format!("{m} cannot run inside a batch (a nested batch, or a file up/download)"),
            "call it on its own with `b24 call`",
        ),
        "ERROR_BATCH_LENGTH_EXCEEDED" => fix(
            "more than 50 commands in one batch",
            "use `b24 batch`, which splits any number of commands into batches of 50",
        ),
        "ERROR_MANIFEST_IS_NOT_AVAILABLE" => fix(
            "the requested manifest is not available on this portal",
            "check the manifest code",
        ),
        "ERROR_EVENT_NOT_FOUND" => fix(
            "the portal does not know this event name",
            "check the event's name (upper case, e.g. ONCRMDEALADD) with `b24 call event.get` or the events reference",
        ),
        "ERROR_HANDLER_ALREADY_EXIST" => fix(
            "this handler is already bound",
            "nothing to do; `b24 events list` shows the bindings",
        ),
        "ERROR_WRONG_HANDLER_URL" | "ERROR_UNSUPPORTED_PROTOCOL" => fix(
            "the handler URL is not usable by the portal (no domain, localhost, or not http(s))",
            "use a public https URL the portal can reach",
        ),
        "ERROR_REQUIRED_PARAMETERS_MISSING" => fix(
            format!("{m} is missing a required parameter"),
            format!("see `b24 describe {m}` for the required params"),
        ),
        "CODE_EMPTY" => fix("the CODE parameter is empty", "pass CODE"),
        "ERROR_CORE"
        | "ERROR_ARGUMENT"
        | "INVALID_ARG_VALUE"
        | "CRM_FIELD_ERROR_VALUE_NOT_VALID" => fix(
            format!("{m} refused a parameter value"),
            format!(
                "check the params against `b24 describe {m}` (field names, types, allowed values); retrying the same call will not help"
            ),
        ),
        _ => fix(
            format!("{m} answered with an error b24 has no specific advice for"),
            format!(
                "read the description; check the params against `b24 describe {m}`; retrying the same call will not help"
            ),
        ),
    }
}

fn v3_error(x: &str, m: &str, description: &str) -> Fix {
    let _ = description;
    if x.starts_with("VALIDATION_")
        || x.starts_with("INVALID") && x != "INVALIDIDEMPOTENCYKEYEXCEPTION"
    {
        return fix(
            format!(
                "{m} refused the request's shape (a missing or mistyped field, a bad filter, select, order or page)"
            ),
            format!("the `validation` list names the field; check against `b24 describe {m}`"),
        );
    }
    match x {
        "UNKNOWNDTOPROPERTYEXCEPTION" | "UNKNOWNFILTEROPERATOREXCEPTION" => fix(
            "a field or filter operator that this entity does not have",
            format!("REST 3.0 fields are camelCase; list them with `b24 describe {m}`"),
        ),
        "ENTITYNOTFOUNDEXCEPTION" => fix(
            "the record does not exist: it was deleted, or the id is wrong",
            "check the id with a list call; a deleted record cannot be read or changed",
        ),
        "ACCESSDENIEDEXCEPTION" => portal_error("ACCESS_DENIED", "", m),
        "INSUFFICIENTSCOPEEXCEPTION" => portal_error("insufficient_scope", "", m),
        "METHODNOTFOUNDEXCEPTION" => portal_error("ERROR_METHOD_NOT_FOUND", "", m),
        "RATELIMITEXCEPTION" => portal_error("OPERATION_TIME_LIMIT", "", m),
        "IDEMPOTENCYKEYREUSEDEXCEPTION" => fix(
            "this idempotency key was already used with a different body",
            "use a new key for a different request (or resend the exact same body)",
        ),
        "INVALIDIDEMPOTENCYKEYEXCEPTION" => fix(
            "the idempotency key is not 1–255 printable ASCII characters",
            "use a shorter, plain key",
        ),
        _ => fix(
            format!("{m} answered with a REST 3.0 error b24 has no specific advice for"),
            format!(
                "check the params against `b24 describe {m}`; retrying the same call will not help"
            ),
        ),
    }
}

/// The one-line form for messages: `<meaning>. Fix: <fix>`.
pub fn line(code: &str, description: &str, method: &str) -> String {
    let f = portal_error(code, description, method);
    format!("{}. Fix: {}", f.meaning, f.fix)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_code_the_reference_lists_has_specific_advice() {
        let generic = portal_error("SOMETHING_NEW", "", "crm.lead.add");
        for code in [
            "INTERNAL_SERVER_ERROR",
            "ERROR_UNEXPECTED_ANSWER",
            "QUERY_LIMIT_EXCEEDED",
            "OPERATION_TIME_LIMIT",
            "ERROR_BATCH_METHOD_NOT_ALLOWED",
            "ERROR_BATCH_LENGTH_EXCEEDED",
            "NO_AUTH_FOUND",
            "INVALID_REQUEST",
            "OVERLOAD_LIMIT",
            "ACCESS_DENIED",
            "INVALID_CREDENTIALS",
            "ERROR_MANIFEST_IS_NOT_AVAILABLE",
            "insufficient_scope",
            "expired_token",
            "user_access_error",
            "PORTAL_DELETED",
            "ERROR_METHOD_NOT_FOUND",
            "WRONG_AUTH_TYPE",
            "invalid_token",
            "METHOD_CONFIRM_WAITING",
            "METHOD_CONFIRM_DENIED",
            "ERROR_EVENT_NOT_FOUND",
            "ERROR_HANDLER_ALREADY_EXIST",
            "ERROR_WRONG_HANDLER_URL",
            "ERROR_UNSUPPORTED_PROTOCOL",
            "ERROR_REQUIRED_PARAMETERS_MISSING",
            "ERROR_CORE",
            "ERROR_ARGUMENT",
            "INVALID_ARG_VALUE",
            "NOT_FOUND",
            "CRM_FIELD_ERROR_VALUE_NOT_VALID",
            "allowed_only_intranet_user",
            "CODE_EMPTY",
            "PAYMENT_REQUIRED",
            "invalid_grant",
            "invalid_client",
            "invalid_scope",
            "ERROR_OAUTH",
            "BITRIX_REST_V3_EXCEPTION_ENTITYNOTFOUNDEXCEPTION",
            "BITRIX_REST_V3_EXCEPTION_IDEMPOTENCYKEYREUSEDEXCEPTION",
            "BITRIX_REST_V3_EXCEPTION_VALIDATION_REQUESTVALIDATIONEXCEPTION",
        ] {
            let f = portal_error(code, "", "crm.lead.add");
            assert_ne!(f, generic, "{code} has only the generic advice");
            assert!(!f.fix.is_empty() && !f.meaning.is_empty());
        }
    }

    #[test]
    fn the_fixes_name_what_to_do() {
        let s = portal_error("insufficient_scope", "", "crm.lead.add");
        assert!(s.meaning.contains("`crm` scope"), "{s:?}");
        let w = portal_error("WRONG_AUTH_TYPE", "", "event.offline.get");
        assert!(w.fix.contains("b24 auth login") && w.fix.contains("B24_AUTH_MODE=oauth"));
        let n = portal_error("NO_AUTH_FOUND", "Wrong authorization data", "user.current");
        assert!(n.meaning.contains("revoked") && n.fix.contains("B24_WEBHOOK_URL"));
        let gone = portal_error("", "Not found", "crm.lead.get");
        assert!(gone.meaning.contains("deleted"), "{gone:?}");
        assert!(gone.fix.contains("b24 list crm.lead.list"), "{gone:?}");
    }
}
