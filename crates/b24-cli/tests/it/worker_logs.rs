//! What `b24 worker` logs: start-up, dead-lettering and shutdown on stderr under `RUST_LOG`,
//! nothing on stdout, and no secret in either (the log writer passes every line through the
//! redactor).

use crate::support::*;

/// Every credential the sandbox handed out: none of them may appear in a log.
fn secrets_of(sb: &Sandbox) -> Vec<String> {
    let i = sb.info();
    vec![
        i.access_token.clone(),
        i.refresh_token.clone(),
        i.client_secret.clone(),
        i.application_token.clone(),
        i.webhook_code.clone(),
    ]
}

/// Run `b24` with `RUST_LOG` set (the fixture removes the caller's).
pub(crate) async fn run_logged(env: &Env, rust_log: &str, args: &[&str]) -> std::process::Output {
    let mut c = env.cmd(args);
    c.env("RUST_LOG", rust_log);
    tokio::task::spawn_blocking(move || c.output().expect("b24 runs"))
        .await
        .unwrap()
}

#[tokio::test(flavor = "multi_thread")]
async fn worker_logs_start_dead_letters_and_stop_on_stderr_without_secrets() {
    let sb = sandbox(SandboxConfig::default()).await;
    let env = Env::oauth(&sb);
    let o = env
        .run(&["events", "bind", "ONCRMLEADADD", "--offline"])
        .await;
    assert_eq!(code(&o), 0, "{}", stderr(&o));
    assert_eq!(sb.emit_lead_adds(2), 2);
    // A handler that always fails, one attempt: both events are dead-lettered.
    let o = run_logged(
        &env,
        "info",
        &[
            "worker",
            "--once",
            "--exec",
            "cat > /dev/null; exit 3",
            "--max-attempts",
            "1",
            "--concurrency",
            "2",
        ],
    )
    .await;
    let err = stderr(&o);
    assert_eq!(code(&o), 1, "partial: events were dead-lettered\n{err}");
    assert!(
        o.stdout.is_empty(),
        "logs never go to stdout: {}",
        stdout(&o)
    );
    let start = err
        .lines()
        .find(|l| l.contains("worker started"))
        .unwrap_or_else(|| panic!("a start-up line: {err}"));
    assert!(start.contains("INFO"), "{start}");
    assert!(start.contains("concurrency=2"), "{start}");
    // The portal by its host only.
    let host = sb.info().base_url.trim_start_matches("http://").to_string();
    assert!(start.contains(&host), "which portal it pulls: {start}");
    let dead: Vec<&str> = err
        .lines()
        .filter(|l| l.contains("dead-lettered"))
        .collect();
    assert_eq!(dead.len(), 2, "{err}");
    assert!(dead.iter().all(|l| l.contains("WARN")), "{err}");
    assert!(err.contains("worker stopped"), "a shutdown line: {err}");
    assert_no_secrets("worker logs", &o.stderr, &secrets_of(&sb));

    // At the default level (warn) the start-up is not shown; the dead letters would be.
    let o = run_logged(
        &env,
        "warn",
        &["worker", "--once", "--exec", "cat > /dev/null"],
    )
    .await;
    assert_eq!(code(&o), 0, "{}", stderr(&o));
    assert!(!stderr(&o).contains("worker started"), "{}", stderr(&o));
}

/// A webhook's address carries its code: with every crate's events at trace level, neither
/// the code nor a token reaches stderr (the pull is refused: offline events need OAuth).
#[tokio::test(flavor = "multi_thread")]
async fn worker_trace_logs_never_show_the_webhook_code() {
    let sb = sandbox(SandboxConfig::default()).await;
    let env = Env::webhook(&sb);
    let o = run_logged(
        &env,
        "trace",
        &["worker", "--once", "--exec", "cat > /dev/null"],
    )
    .await;
    let err = stderr(&o);
    assert_ne!(code(&o), 0, "{err}");
    assert!(err.contains("worker started"), "{err}");
    assert!(err.lines().count() > 3, "trace shows the HTTP work: {err}");
    assert!(o.stdout.is_empty(), "{}", stdout(&o));
    assert_no_secrets("worker trace logs", &o.stderr, &secrets_of(&sb));
}

/// `--all-portals` under `RUST_LOG=debug`, stopped by SIGTERM: the puller's start-up (with how
/// many portals it serves), each portal's back-off at debug level, and its shutdown; no
/// portal's token, application token or the app's secret.
#[tokio::test(flavor = "multi_thread")]
async fn all_portals_worker_logs_its_portals_back_off_and_shutdown() {
    let ps = b24_sandbox::start_many(SandboxConfig::default(), 2)
        .await
        .unwrap();
    let (env, _rx) = app_on(&ps, 2).await;
    let mut c = env.cmd(&[
        "worker",
        "--all-portals",
        "--exec",
        "cat > /dev/null",
        "--poll-interval",
        "0.1",
        "--poll-max",
        "0.4",
    ]);
    c.env("RUST_LOG", "debug")
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped());
    let child = c.spawn().unwrap();
    tokio::time::sleep(std::time::Duration::from_secs(2)).await;
    let killed = std::process::Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(killed.success());
    let o = tokio::task::spawn_blocking(move || child.wait_with_output().unwrap())
        .await
        .unwrap();
    let err = stderr(&o);
    assert!(o.stdout.is_empty(), "{}", stdout(&o));
    for want in [
        "worker started",
        "pulling every installed portal",
        "serving installed portals portals=2",
        "portal poll back-off changed",
        "stopped pulling",
        "worker stopped",
    ] {
        assert!(err.contains(want), "{want:?} in:\n{err}");
    }
    let mut secrets = Vec::new();
    for p in ps.iter() {
        secrets.extend(secrets_of(p));
    }
    assert_no_secrets("--all-portals logs", &o.stderr, &secrets);
    ps.shutdown().await;
}

/// A handler that echoes a credential from its environment and fails: the dead letter keeps
/// its stderr, and neither `b24 dlq list` nor `b24 dlq show` prints the credential back.
#[tokio::test(flavor = "multi_thread")]
async fn dead_letters_never_print_a_credential_a_handler_echoed() {
    let sb = sandbox(SandboxConfig::default()).await;
    let env = Env::oauth(&sb);
    let o = env
        .run(&["events", "bind", "ONCRMLEADADD", "--offline"])
        .await;
    assert_eq!(code(&o), 0, "{}", stderr(&o));
    assert_eq!(sb.emit_lead_adds(1), 1);
    let o = env
        .run(&[
            "worker",
            "--once",
            "--exec",
            "cat > /dev/null; echo \"refresh failed: $B24_CLIENT_SECRET $B24_REFRESH_TOKEN\" >&2; exit 3",
            "--max-attempts",
            "1",
        ])
        .await;
    assert_eq!(code(&o), 1, "{}", stderr(&o));
    let list = env.run(&["dlq", "list"]).await;
    assert_eq!(code(&list), 0, "{}", stderr(&list));
    let out = stdout(&list);
    assert!(out.contains("refresh failed"), "the error is kept: {out}");
    let id = serde_json::from_str::<serde_json::Value>(out.lines().next().unwrap_or("{}"))
        .ok()
        .and_then(|v| v["id"].as_i64())
        .unwrap_or_else(|| panic!("a dead letter with an id: {out}"));
    let show = env.run(&["dlq", "show", &id.to_string()]).await;
    assert_eq!(code(&show), 0, "{}", stderr(&show));
    for (what, o) in [("dlq list", &list), ("dlq show", &show)] {
        assert_no_secrets(what, &o.stdout, &secrets_of(&sb));
        assert_no_secrets(what, &o.stderr, &secrets_of(&sb));
    }
}
