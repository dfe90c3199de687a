//! Hostile round on this session's changes, as seen from the `b24` binary.

use crate::support::*;
use crate::worker_logs::run_logged;

/// A failing `--exec` handler's stderr is logged (its tail is the failure's reason). A
/// handler that echoes what it was working on (a traceback, `set -x`, a forwarded Bitrix24
/// event body) shows credentials the redactor was never told of — an event's
/// `application_token`, a token the portal rotated — in JSON, debug-printed or
/// percent-encoded form. None of them may reach stderr, and nothing reaches stdout.
#[tokio::test(flavor = "multi_thread")]
async fn handler_stderr_with_unknown_credentials_is_redacted_in_worker_logs() {
    let sb = sandbox(SandboxConfig::default()).await;
    let env = Env::oauth(&sb);
    let o = env
        .run(&["events", "bind", "ONCRMLEADADD", "--offline"])
        .await;
    assert_eq!(code(&o), 0, "{}", stderr(&o));
    assert_eq!(sb.emit_lead_adds(1), 1);
    let unknown = [
        "evAccess0123456789abcdef".to_string(),
        "evAppTok0123456789abcdef".to_string(),
        "evRefres0123456789abcdef".to_string(),
    ];
    let script = format!(
        "cat > /dev/null; \
         echo '{{\"auth\":{{\"access_token\":\"{a}\",\"application_token\":\"{b}\"}}}}' >&2; \
         echo 'TokenPair {{ refresh_token: \"{c}\" }}' >&2; \
         echo 'event=ONCRMLEADADD&auth%5Bapplication_token%5D={b}' >&2; exit 3",
        a = unknown[0],
        b = unknown[1],
        c = unknown[2],
    );
    let o = run_logged(
        &env,
        "info",
        &["worker", "--once", "--exec", &script, "--max-attempts", "1"],
    )
    .await;
    let err = stderr(&o);
    assert!(
        err.contains("handler failed"),
        "the failure is logged:\n{err}"
    );
    assert!(
        o.stdout.is_empty(),
        "logs never go to stdout: {}",
        stdout(&o)
    );
    assert_no_secrets("worker logs of a failing handler", &o.stderr, &unknown);
    let i = sb.info();
    assert_no_secrets(
        "worker logs of a failing handler",
        &o.stderr,
        &[
            i.access_token.clone(),
            i.refresh_token.clone(),
            i.client_secret.clone(),
        ],
    );
}

/// The handler's stderr is kept as its last 16 KiB, cut at any byte: a secret the handler
/// printed (it inherits the worker's environment) just before 16 KiB of other output is
/// logged cut at its start. Its remaining characters must not reach stderr either.
#[tokio::test(flavor = "multi_thread")]
async fn a_secret_cut_by_the_stderr_tail_is_redacted_in_worker_logs() {
    let sb = sandbox(SandboxConfig::default()).await;
    let env = Env::oauth(&sb);
    let o = env
        .run(&["events", "bind", "ONCRMLEADADD", "--offline"])
        .await;
    assert_eq!(code(&o), 0, "{}", stderr(&o));
    assert_eq!(sb.emit_lead_adds(1), 1);
    let token = sb.info().access_token.clone();
    assert!(token.len() > 12, "{}", token.len());
    // The last 16384 bytes: 10 characters of the token, a newline, 16373 dots.
    let script = format!(
        "cat > /dev/null; {{ printf '%s\\n' '{token}'; head -c 16373 /dev/zero | tr '\\0' '.'; }} >&2; exit 3"
    );
    let o = run_logged(
        &env,
        "info",
        &["worker", "--once", "--exec", &script, "--max-attempts", "1"],
    )
    .await;
    let err = stderr(&o);
    assert!(err.contains("handler failed"), "the failure is logged");
    let tail = &token[token.len() - 10..];
    assert!(
        !err.contains(tail),
        "the last 10 characters of the access token appear in the worker's logs"
    );
    assert_no_secrets("worker logs", &o.stderr, std::slice::from_ref(&token));
}

/// A store the server refuses (here: a database that is not there) is reported with the
/// server's words, once: "db error" alone would not tell an operator to wait (too many
/// clients) or to fix the URL.
#[tokio::test(flavor = "multi_thread")]
async fn a_refused_store_connection_says_why_once() {
    let Ok(base) = std::env::var("B24_TEST_PG_URL") else {
        return;
    };
    let Some((head, _)) = base.rsplit_once('/') else {
        return;
    };
    let url = format!("{head}/b24_no_such_db_{}", std::process::id());
    let sb = sandbox(SandboxConfig::default()).await;
    let env = Env::oauth(&sb);
    let o = env.run(&["db", "migrate", "--store", &url]).await;
    let err = stderr(&o);
    assert_ne!(code(&o), 0, "{err}");
    assert_eq!(err.matches("does not exist").count(), 1, "{err}");
    assert!(o.stdout.is_empty(), "{}", stdout(&o));
}
