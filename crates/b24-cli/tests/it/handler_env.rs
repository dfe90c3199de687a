//! What an `--exec` handler's environment holds: the event's variables and the worker's
//! ordinary ones, never b24's credentials or anything that looks like a secret, unless the
//! operator passes a variable on by name (`--handler-env NAME`).

use crate::support::*;

#[tokio::test(flavor = "multi_thread")]
async fn exec_handlers_get_no_credentials_from_the_worker_environment() {
    let sb = sandbox(SandboxConfig::default()).await;
    let mut env = Env::oauth(&sb);
    let o = env
        .run(&["events", "bind", "ONCRMLEADADD", "--offline"])
        .await;
    assert_eq!(code(&o), 0, "{}", stderr(&o));
    assert_eq!(sb.emit_lead_adds(1), 1);
    let i = sb.info();
    // b24's own credentials (set by Env::oauth) and other services' ones.
    let others = [
        ("GITHUB_TOKEN", "ghp-0123456789-handler-leak"),
        ("PGPASSWORD", "pg-password-handler-leak"),
        ("AWS_SECRET_ACCESS_KEY", "aws-secret-handler-leak"),
        ("DATABASE_URL", "postgres://app:db-pass-handler-leak@db/app"),
        ("B24_SOMETHING", "b24-something-handler-leak"),
        ("PASSED_TOKEN", "passed-token-value-by-name"),
        ("HANDLER_PLAIN", "plain-value-visible"),
    ];
    for (k, v) in others {
        env.set(k, v);
    }
    let dump = env.dir.path().join("handler-env.txt");
    let cmd = format!("cat > /dev/null; env > '{}'", dump.display());
    let o = env
        .run(&[
            "worker",
            "--once",
            "--exec",
            &cmd,
            "--handler-env",
            "PASSED_TOKEN",
        ])
        .await;
    assert_eq!(code(&o), 0, "{}", stderr(&o));
    let seen = std::fs::read_to_string(&dump).expect("the handler ran");
    let secrets: Vec<String> = [
        i.access_token.clone(),
        i.refresh_token.clone(),
        i.client_secret.clone(),
    ]
    .into_iter()
    .chain(others[..5].iter().map(|(_, v)| v.to_string()))
    .collect();
    assert_no_secrets("the handler's environment", seen.as_bytes(), &secrets);
    let names: Vec<&str> = seen.lines().filter_map(|l| l.split('=').next()).collect();
    for gone in [
        "B24_CLIENT_SECRET",
        "B24_ACCESS_TOKEN",
        "B24_REFRESH_TOKEN",
        "B24_CLIENT_ID",
        "B24_STATE_DIR",
        "GITHUB_TOKEN",
        "DATABASE_URL",
    ] {
        assert!(
            !names.contains(&gone),
            "{gone} reached the handler: {names:?}"
        );
    }
    for kept in [
        "B24_EVENT_KEY",
        "B24_EVENT_NAME",
        "B24_EVENT_ID",
        "HANDLER_PLAIN",
        "PATH",
    ] {
        assert!(names.contains(&kept), "{kept} is missing: {names:?}");
    }
    assert!(
        seen.contains("PASSED_TOKEN=passed-token-value-by-name"),
        "--handler-env passes a variable on by name: {seen}"
    );
    assert!(seen.contains("B24_EVENT_NAME=ONCRMLEADADD"), "{seen}");
}

/// `--handler-env NAME=VALUE` is refused without echoing the value (it may be the secret).
#[tokio::test(flavor = "multi_thread")]
async fn handler_env_takes_names_only() {
    let env = Env::bare();
    let o = env
        .run(&[
            "worker",
            "--exec",
            "true",
            "--no-pull",
            "--handler-env",
            "X_TOKEN=s3cr3t-value-typed",
        ])
        .await;
    assert_eq!(code(&o), 2, "{}", stderr(&o));
    assert!(!stderr(&o).contains("s3cr3t-value-typed"), "{}", stderr(&o));
    assert!(stderr(&o).contains("--handler-env"), "{}", stderr(&o));
}

/// b24's own variables are not passed on by name, in any case: `--handler-env
/// B24_WEBHOOK_URL` would hand the portal's credential to every handler.
#[tokio::test(flavor = "multi_thread")]
async fn handler_env_refuses_b24s_own_variables() {
    let mut env = Env::bare();
    env.set(
        "B24_WEBHOOK_URL",
        "https://p.example/rest/1/handler-env-webhook-code/",
    );
    for name in ["B24_WEBHOOK_URL", "b24_client_secret", "B24_EVENT_KEY"] {
        let o = env
            .run(&[
                "worker",
                "--exec",
                "true",
                "--no-pull",
                "--once",
                "--handler-env",
                name,
            ])
            .await;
        assert_eq!(code(&o), 2, "{name}: {}", stderr(&o));
        assert!(stderr(&o).contains("B24_*"), "{name}: {}", stderr(&o));
        assert!(
            !stderr(&o).contains("handler-env-webhook-code"),
            "{}",
            stderr(&o)
        );
    }
}
