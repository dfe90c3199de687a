//! The environment an `--exec` handler gets: the worker's, minus its credentials.
//!
//! A worker runs with the portal's credentials in its environment (`B24_WEBHOOK_URL`,
//! `B24_CLIENT_SECRET`, `B24_ACCESS_TOKEN`/`B24_REFRESH_TOKEN`, `B24_STORE_URL` with a
//! database password, …) and often with other services' ones too. A handler is a script
//! that logs, shells out and ships its environment to error trackers: what it inherits leaks
//! with it. So the handler's environment is built fail-closed, by name and by value:
//!
//! - every inherited `B24_*` variable (any case) is dropped: they are b24's configuration,
//!   and any of them may carry a credential. The worker then sets `B24_EVENT_KEY`,
//!   `B24_EVENT_NAME` and `B24_EVENT_ID` itself — the only `B24_*` a handler sees;
//! - every variable whose name looks secret ([`is_secret_env_name`]) is dropped: the
//!   redactor's rule for field names (`b24_guard::redact::is_secret_key`), widened for the
//!   way environment variables are spelled (`PGPASSWORD`, `AWS_SECRET_ACCESS_KEY`,
//!   `SSH_AUTH_SOCK`, `SENTRY_DSN`, `*_KEY`);
//! - every variable whose value is a URL carrying a password (`scheme://user:password@…`)
//!   is dropped, whatever its name (`DATABASE_URL`, `HTTPS_PROXY`), and so is every value
//!   holding an incoming webhook's code (`…/rest/1/<code>/`) or a credential field
//!   (`password=…` of a libpq connection string, `access_token=…`);
//! - every value holding a secret the worker has — the value of a variable dropped for its
//!   name, or an OAuth token the process holds — is dropped under any name (`CS` set to
//!   `$B24_CLIENT_SECRET`);
//! - a name that is not UTF-8 is dropped (it cannot be judged).
//!
//! Everything else (`PATH`, `HOME`, `LANG`, `TZ`, the handler's own settings) passes. A
//! handler that truly needs one of the dropped variables gets it only when the worker is
//! told so by name (`b24 worker --handler-env NAME`, [`super::Handler::pass_env`]).

use std::ffi::OsString;

/// Words a secret-looking name contains anywhere (lower case): `PGPASSWORD`, `GITHUB_TOKEN`,
/// `AWS_SECRET_ACCESS_KEY`, `NPM_APIKEY`, `B24_WEBHOOK_CODE`.
const SECRET_PARTS: &[&str] = &[
    "secret",
    "passw",
    "passphrase",
    "token",
    "credential",
    "private",
    "apikey",
    "api_key",
    "access_key",
    "webhook",
    "refresh_id",
    "cookie",
];

/// Whether an environment variable's name looks like it holds a secret. A superset of the
/// redactor's field rule (`b24_guard::redact::is_secret_key`: `auth`, `password`, `token`,
/// `secret`, `webhook`, `api_key`, … as the name or its `_`-suffix, or any name ending in
/// `token`/`secret`), widened for environment spellings: one of `SECRET_PARTS` anywhere in
/// the name, a `_`-separated word starting with `auth` (`AUTH`, `SSH_AUTH_SOCK`,
/// `AUTHORIZATION`), a name ending in `_KEY`, `_PWD`, `_PASS` or `_DSN`. Case is ignored.
/// It errs towards dropping: a variable dropped by mistake is passed back with
/// `--handler-env NAME`; a secret passed by mistake cannot be taken back.
pub fn is_secret_env_name(name: &str) -> bool {
    let n = name.to_ascii_lowercase();
    SECRET_PARTS.iter().any(|p| n.contains(p))
        || n.split(['_', '-', '.']).any(|w| w.starts_with("auth"))
        || ["_key", "_pwd", "_pass", "_dsn"]
            .iter()
            .any(|s| n.ends_with(s))
        || n == "key"
        || n == "dsn"
}

/// Whether a value holds a URL with a password in its user part (`postgres://u:pw@h/db`).
fn has_url_password(value: &str) -> bool {
    let mut rest = value;
    while let Some(i) = rest.find("://") {
        let after = &rest[i + 3..];
        let authority = after.split(['/', '?', '#', ' ']).next().unwrap_or("");
        if let Some(at) = authority.rfind('@')
            && authority[..at].contains(':')
        {
            return true;
        }
        rest = after;
    }
    false
}

/// Whether a value holds an incoming webhook's code (`…/rest/<user id>/<code>…`, the shape
/// the redactor replaces): a copy of `B24_WEBHOOK_URL` under an innocent name (`PORTAL`)
/// is the portal's credential all the same, with no password in its user part.
fn has_webhook_code(value: &str) -> bool {
    let v = value.to_ascii_lowercase();
    v.match_indices("/rest/").any(|(i, m)| {
        let rest = &v[i + m.len()..];
        let user = rest.bytes().take_while(u8::is_ascii_digit).count();
        user > 0
            && rest[user..].starts_with('/')
            && rest[user + 1..]
                .bytes()
                .take_while(|b| b.is_ascii_alphanumeric())
                .count()
                >= 8
    })
}

/// Whether a value holds a credential field (`password=…` of a libpq connection string,
/// `access_token=…` of a URL's query), whatever the variable is named.
fn has_credential_field(value: &str) -> bool {
    let v = value.to_ascii_lowercase();
    [
        "password=",
        "passwd=",
        "access_token=",
        "refresh_token=",
        "client_secret=",
        "auth=",
    ]
    .iter()
    .any(|f| {
        v.match_indices(f).any(|(i, _)| {
            let word_start = v[..i]
                .chars()
                .next_back()
                .is_none_or(|c| !c.is_ascii_alphanumeric() && c != '_');
            let filled = v[i + f.len()..]
                .chars()
                .next()
                .is_some_and(|c| !c.is_whitespace() && c != '&' && c != ';');
            word_start && filled
        })
    })
}

/// Whether a variable of the worker's environment may reach a handler (see the module doc).
/// `pass` lists the names the operator passes on explicitly; they always reach it.
pub fn passes(name: &str, value: &std::ffi::OsStr, pass: &[String]) -> bool {
    if pass.iter().any(|p| p == name) {
        return true;
    }
    if name.to_ascii_uppercase().starts_with("B24_") || is_secret_env_name(name) {
        return false;
    }
    let v = value.to_string_lossy();
    !has_url_password(&v) && !has_webhook_code(&v) && !has_credential_field(&v)
}

/// The handler's environment out of `vars` (the worker's): see the module doc. A variable
/// that passes by name and shape is still dropped when its value holds a secret the worker
/// has: the value of a variable dropped for its name (`CS=$B24_CLIENT_SECRET` copied under
/// an innocent name) or an OAuth token the process holds (`b24::auth::live_secrets`).
pub fn handler_env(
    vars: impl IntoIterator<Item = (OsString, OsString)>,
    pass: &[String],
) -> Vec<(OsString, OsString)> {
    let vars: Vec<(OsString, OsString)> = vars.into_iter().collect();
    let mut secrets: Vec<String> = b24::auth::live_secrets().as_ref().clone();
    secrets.extend(vars.iter().filter_map(|(k, v)| {
        let (k, v) = (k.to_str()?, v.to_str()?);
        is_secret_env_name(k).then(|| v.to_string())
    }));
    secrets.retain(|s| s.len() >= 8);
    vars.into_iter()
        .filter(|(k, v)| {
            k.to_str().is_some_and(|name| {
                passes(name, v, pass)
                    && (pass.iter().any(|p| p == name) || {
                        let v = v.to_string_lossy();
                        !secrets.iter().any(|s| v.contains(s.as_str()))
                    })
            })
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env(pairs: &[(&str, &str)], pass: &[&str]) -> Vec<String> {
        let pass: Vec<String> = pass.iter().map(|s| s.to_string()).collect();
        handler_env(
            pairs
                .iter()
                .map(|(k, v)| (OsString::from(k), OsString::from(v))),
            &pass,
        )
        .into_iter()
        .map(|(k, _)| k.into_string().unwrap())
        .collect()
    }

    #[test]
    fn b24_variables_and_secret_looking_ones_are_dropped() {
        let kept = env(
            &[
                ("PATH", "/usr/bin"),
                ("HOME", "/home/w"),
                ("LANG", "C.UTF-8"),
                ("PWD", "/srv"),
                ("MY_HANDLER_MODE", "fast"),
                ("B24_WEBHOOK_URL", "https://p/rest/1/code/"),
                ("B24_CLIENT_SECRET", "s"),
                ("B24_ACCESS_TOKEN", "a"),
                ("b24_refresh_token", "r"),
                ("B24_STORE_URL", "postgres://b24:pw@db/b24"),
                ("B24_DOMAIN", "p.bitrix24.com"),
                ("B24_EVENT_KEY", "from the outer env"),
                ("GITHUB_TOKEN", "t"),
                ("PGPASSWORD", "p"),
                ("MYSQL_PWD", "p"),
                ("AWS_SECRET_ACCESS_KEY", "k"),
                ("AWS_ACCESS_KEY_ID", "k"),
                ("STRIPE_KEY", "k"),
                ("SSH_AUTH_SOCK", "/tmp/agent"),
                ("SENTRY_DSN", "https://k@o.ingest/1"),
                ("DATABASE_URL", "postgres://app:hunter2@db/app"),
                ("HTTPS_PROXY", "http://u:p@proxy:3128"),
                ("PLAIN_URL", "https://example.com/a:b@c"),
            ],
            &[],
        );
        assert_eq!(
            kept,
            [
                "PATH",
                "HOME",
                "LANG",
                "PWD",
                "MY_HANDLER_MODE",
                "PLAIN_URL"
            ]
        );
    }

    #[test]
    fn a_variable_named_by_the_operator_passes() {
        let kept = env(
            &[
                ("B24_DOMAIN", "p"),
                ("GITHUB_TOKEN", "t"),
                ("PGPASSWORD", "p"),
            ],
            &["B24_DOMAIN", "GITHUB_TOKEN"],
        );
        assert_eq!(kept, ["B24_DOMAIN", "GITHUB_TOKEN"]);
    }

    #[cfg(unix)]
    #[test]
    fn a_name_that_is_not_utf8_is_dropped() {
        use std::os::unix::ffi::OsStringExt;
        let v = handler_env(
            [(OsString::from_vec(b"X\xff".to_vec()), OsString::from("v"))],
            &[],
        );
        assert!(v.is_empty());
    }
}
