//! What an API error means for `b24 doctor`: the doctor's own sentences for the users' common
//! mistakes, and the finding an error becomes in the report.

use super::{Report, Status};

/// The fix for a known API error code (docs/protocol.md §8; the users' common mistakes).
/// Codes without a doctor-specific sentence take the library's table (the same text the CLI
/// prints under an error and MCP gives the model).
pub fn diagnose(code: &str, description: &str, webhook: bool, method: &str) -> (String, String) {
    let d = description.to_ascii_lowercase();
    let (what, fix) = match code {
        "NO_AUTH_FOUND" => (
            "the portal does not recognise the credentials (wrong webhook code or token)",
            if webhook {
                "copy the webhook URL again from the portal (Developer resources → Other → Inbound webhook); \
                 the code is the last path segment, after /rest/<user_id>/"
            } else {
                "run `b24 auth login` again, or check B24_ACCESS_TOKEN"
            },
        ),
        "ERROR_METHOD_NOT_FOUND" => (
            "method not found — with a webhook this usually means the URL is cut short or the \
             method name is misspelled",
            "use the full webhook URL https://<portal>/rest/<user_id>/<code>/ and check the method \
             name with `b24 methods --search`",
        ),
        "WRONG_AUTH_TYPE" => (
            "this method is for applications only and cannot be called with a webhook",
            "use OAuth (an app with a client id/secret: `b24 auth login`) for app-only methods \
             (event.offline.*, app.*, placement.*)",
        ),
        "insufficient_scope" => (
            "the webhook or app lacks the scope this method needs",
            "add the scope in the webhook/app settings in the portal (then re-authorize an app), \
             see `b24 describe METHOD` for the scope",
        ),
        "ACCESS_DENIED" if d.contains("commercial") || d.contains("plan") => (
            "the REST API is available only on commercial plans; this portal is on the free plan",
            "upgrade the portal's plan (or use `b24 sandbox` to develop)",
        ),
        "ACCESS_DENIED" => (
            "the user behind the webhook/token lacks rights for this",
            "use a webhook created by a user with the needed CRM rights, or grant them",
        ),
        "expired_token" => (
            "the access token has expired and could not be refreshed",
            "run `b24 auth login` (or provide B24_REFRESH_TOKEN)",
        ),
        "invalid_token" | "invalid_grant" => (
            "the token was refused",
            "run `b24 auth login` to get a new pair",
        ),
        "INVALID_CREDENTIALS" => (
            "the user behind the credentials is not allowed to use the REST API",
            "check the user is active and has access; create the webhook as an administrator",
        ),
        "QUERY_LIMIT_EXCEEDED" => (
            "the portal's rate limit was hit",
            "lower concurrency; b24's limiter (B24_RATE_*) paces calls — share it across processes \
             with the default sqlite limiter",
        ),
        "PORTAL_DELETED" => ("the portal was deleted", "check the portal address"),
        _ => {
            let f = b24_guard::fixes::portal_error(code, description, method);
            return (f.meaning, f.fix);
        }
    };
    (what.to_string(), fix.to_string())
}

pub(super) fn api_finding(r: &mut Report, name: &str, e: &b24::Error, webhook: bool) {
    match e {
        b24::Error::Api(a) => {
            let (what, fix) = diagnose(&a.code, &a.description, webhook, &a.method);
            r.add_coded(
                name,
                Status::Fail,
                format!("{} — {}: {what}", a.code, a.description),
                Some(fix),
                Some(a.code.clone()),
            );
        }
        b24::Error::Transient { .. } => r.add(
            name,
            Status::Fail,
            format!("the portal is unreachable or overloaded: {e}"),
            Some(
                "check the portal address, network, proxy and TLS (B24_CA_FILE for a private CA)"
                    .into(),
            ),
        ),
        other => r.add(name, Status::Fail, other.to_string(), None),
    }
}
