//! `b24 call` end to end against the sandbox: output, exit codes, the shared limiter, secrets.

use crate::support::*;

#[tokio::test(flavor = "multi_thread")]
async fn call_prints_result_and_raw_envelope() {
    let sb = sandbox_with_leads(60).await;
    let env = Env::webhook(&sb);
    let o = env
        .run(&["call", "crm.lead.list", "--params", r#"{"select":["ID"]}"#])
        .await;
    assert_eq!(code(&o), 0, "{}", stderr(&o));
    assert_eq!(json(&o).as_array().unwrap().len(), 50);
    let o = env.run(&["call", "crm.lead.list", "--raw"]).await;
    let v = json(&o);
    assert_eq!(
        (v["next"].as_u64(), v["total"].as_u64()),
        (Some(50), Some(60))
    );
    assert!(v["time"]["operating"].is_number());
    // params from stdin and from a file
    let o = env
        .run_stdin(&["call", "crm.lead.get", "--params", "-"], r#"{"id": 7}"#)
        .await;
    assert_eq!(json(&o)["ID"], "7");
    let f = env.dir.path().join("p.json");
    std::fs::write(&f, r#"{"ID": 8}"#).unwrap();
    let o = env
        .run(&[
            "call",
            "crm.lead.get",
            "--params",
            &format!("@{}", f.display()),
        ])
        .await;
    assert_eq!(json(&o)["ID"], "8");
}

/// Logs on stderr are plain text when stderr is not a terminal (an agent host or a log file
/// reads them): no colour codes.
#[tokio::test(flavor = "multi_thread")]
async fn logs_in_a_pipe_carry_no_colour_codes() {
    let sb = sandbox_with_leads(3).await;
    let env = Env::webhook(&sb);
    let o = env.run(&["-vvv", "call", "crm.lead.list"]).await;
    assert_eq!(code(&o), 0, "{}", stderr(&o));
    let err = stderr(&o);
    assert!(!err.trim().is_empty(), "-vvv logs something");
    assert!(!err.contains('\u{1b}'), "colour codes in a pipe: {err:?}");
}

#[tokio::test(flavor = "multi_thread")]
async fn errors_map_to_exit_codes() {
    let sb = sandbox_with_leads(1).await;
    let env = Env::webhook(&sb);
    // Unknown methods count as destructive until proven otherwise.
    let o = env.run(&["call", "no.such.method"]).await;
    assert_eq!(code(&o), 4);
    let o = env
        .run(&["call", "no.such.method", "--confirm-destructive"])
        .await;
    assert_eq!(code(&o), 3);
    assert!(
        stderr(&o).contains("ERROR_METHOD_NOT_FOUND"),
        "{}",
        stderr(&o)
    );
    assert!(o.stdout.is_empty(), "errors never go to stdout");
    let o = env
        .run(&["call", "crm.lead.get", "--params", "{not json"])
        .await;
    assert_eq!(code(&o), 2);
    let mut bad = Env::webhook(&sb);
    bad.set(
        "B24_WEBHOOK_URL",
        &sb.info()
            .webhook_url
            .replace(&sb.info().webhook_code, "wrongcode1234567"),
    );
    let o = bad.run(&["call", "user.current"]).await;
    assert_eq!(code(&o), 5, "{}", stderr(&o));
    assert!(stderr(&o).contains("NO_AUTH_FOUND"));
    let o = Env::bare().run(&["call", "user.current"]).await;
    assert_eq!(code(&o), 2);
    assert!(stderr(&o).contains("B24_WEBHOOK_URL"));
    let mut insecure = Env::bare();
    insecure.set(
        "B24_WEBHOOK_URL",
        "http://portal.example.com/rest/1/abcdefabcdef/",
    );
    let o = insecure.run(&["call", "user.current"]).await;
    assert_eq!(code(&o), 2);
    assert!(stderr(&o).contains("plain http"), "{}", stderr(&o));
}

#[tokio::test(flavor = "multi_thread")]
async fn write_timeout_exits_7_without_resending() {
    let sb = sandbox(SandboxConfig {
        limits: false,
        ..Default::default()
    })
    .await;
    sb.set_faults("timeout=1".parse().unwrap());
    let mut env = Env::webhook(&sb);
    env.set("B24_TIMEOUT_SECS", "0.5");
    let o = env
        .run(&[
            "call",
            "crm.lead.add",
            "--params",
            r#"{"fields":{"TITLE":"t"}}"#,
            "--confirm-write",
            "--idempotency-key",
            "order-77",
        ])
        .await;
    assert_eq!(code(&o), 7, "{}", stderr(&o));
    let err = stderr(&o);
    assert!(
        err.contains("outcome unknown") && err.contains("not resent"),
        "{err}"
    );
    assert_eq!(calls_of(&sb, "crm.lead.add"), 1);
}

#[tokio::test(flavor = "multi_thread")]
async fn oauth_call_refreshes_once_across_processes() {
    let sb = sandbox(SandboxConfig::default()).await;
    let env = Env::oauth(&sb);
    sb.expire_access_tokens();
    // Eight processes hit expired_token at once; the file lock lets exactly one refresh.
    let mut handles = Vec::new();
    for _ in 0..8 {
        let mut c = env.cmd(&["call", "profile"]);
        handles.push(std::thread::spawn(move || c.output().unwrap()));
    }
    for h in handles {
        let o = h.join().unwrap();
        assert_eq!(code(&o), 0, "{}", stderr(&o));
    }
    assert_eq!(sb.stats().refreshes, 1);
}

/// Two processes sharing the SQLite limiter never push the portal's bucket over capacity;
/// with per-process limiters the same load draws 503s (so the test can tell the difference).
#[tokio::test(flavor = "multi_thread")]
async fn two_processes_share_one_bucket() {
    async fn load(limiter: &str) -> b24_sandbox::Stats {
        let sb = sandbox(SandboxConfig::default()).await;
        let mut env = Env::webhook(&sb);
        env.set("B24_RATE_LIMITER", limiter);
        let mut threads = Vec::new();
        for _ in 0..2 {
            let cmds: Vec<_> = (0..36).map(|_| env.cmd(&["call", "server.time"])).collect();
            threads.push(std::thread::spawn(move || {
                for mut c in cmds {
                    let o = c.output().unwrap();
                    assert_eq!(
                        o.status.code(),
                        Some(0),
                        "{}",
                        String::from_utf8_lossy(&o.stderr)
                    );
                }
            }));
        }
        for t in threads {
            tokio::task::spawn_blocking(move || t.join().unwrap())
                .await
                .unwrap();
        }
        sb.stats()
    }
    let shared = load("sqlite").await;
    assert_eq!(shared.count_503, 0, "shared limiter: {shared:?}");
    assert!(shared.max_bucket_level <= 50.0);
    assert_eq!(shared.methods["server.time"], 72);
    // Control: processes that each keep their own bucket overrun the portal.
    let separate = load("memory").await;
    assert!(
        separate.count_503 > 0,
        "per-process limiters should have drawn 503s: {separate:?}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn secrets_never_leave_the_process() {
    let sb = sandbox_with_leads(5).await;
    let i = sb.info().clone();
    let secrets = vec![
        i.webhook_code.clone(),
        i.access_token.clone(),
        i.refresh_token.clone(),
        i.client_secret.clone(),
    ];
    let mut outputs = Vec::new();
    let wh = Env::webhook(&sb);
    let oa = Env::oauth(&sb);
    for args in [
        vec!["call", "crm.lead.list", "--raw"],
        vec!["-vvv", "call", "user.current"],
        vec!["call", "no.such.method"],
        vec![
            "call",
            "crm.lead.add",
            "--params",
            r#"{"fields":{"TITLE":"x"}}"#,
            "--dry-run",
        ],
        vec![
            "call",
            "crm.lead.add",
            "--params",
            r#"{"fields":{"TITLE":"x"}}"#,
            "--confirm-write",
        ],
    ] {
        outputs.push(wh.run(&args).await);
        outputs.push(oa.run(&args).await);
    }
    sb.expire_access_tokens();
    outputs.push(oa.run(&["-vvv", "call", "profile"]).await);
    for o in &outputs {
        assert_no_secrets("stdout", &o.stdout, &secrets);
        assert_no_secrets("stderr", &o.stderr, &secrets);
    }
    for env in [&wh, &oa] {
        for f in files_under(&env.state_dir()) {
            let name = f.file_name().unwrap().to_string_lossy().to_string();
            if name.starts_with("tokens-") {
                continue; // the token store holds tokens by design (0600)
            }
            assert_no_secrets(
                &f.display().to_string(),
                &std::fs::read(&f).unwrap(),
                &secrets,
            );
        }
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn portal_errors_carry_their_fix() {
    let sb = sandbox(SandboxConfig {
        seed_leads: 3,
        webhook_scopes: Some(vec!["crm".into(), "user".into()]),
        ..Default::default()
    })
    .await;
    let env = Env::webhook(&sb);
    // A deleted record: no "<empty code>", the meaning and where to look.
    let o = env
        .run(&["call", "crm.lead.get", "-p", r#"{"id": 999}"#])
        .await;
    assert_eq!(code(&o), 3, "{}", stderr(&o));
    let e = stderr(&o);
    assert!(!e.contains("<empty code>"), "{e}");
    assert!(
        e.contains("does not exist") && e.contains("b24 list crm.lead.list"),
        "{e}"
    );
    // A scope the webhook lacks: which one, and where to add it.
    let narrow = sandbox(SandboxConfig {
        seed_leads: 1,
        webhook_scopes: Some(vec!["user".into()]),
        ..Default::default()
    })
    .await;
    let o = Env::webhook(&narrow).run(&["call", "crm.lead.list"]).await;
    let e = stderr(&o);
    assert!(e.contains("insufficient_scope"), "{e}");
    assert!(e.contains("lacks the `crm` scope"), "{e}");
    assert!(e.contains("Inbound webhook"), "{e}");
    // An application-only method from a webhook: OAuth, and how.
    let o = env.run(&["call", "event.get"]).await;
    let e = stderr(&o);
    assert!(e.contains("WRONG_AUTH_TYPE"), "{e}");
    assert!(
        e.contains("B24_AUTH_MODE=oauth") && e.contains("b24 auth login"),
        "{e}"
    );
    // A wrong (or revoked) webhook code.
    let mut bad = Env::webhook(&sb);
    bad.set(
        "B24_WEBHOOK_URL",
        &sb.info()
            .webhook_url
            .replace(&sb.info().webhook_code, "wrongcode1234567"),
    );
    let o = bad.run(&["call", "user.current"]).await;
    let e = stderr(&o);
    assert!(e.contains("NO_AUTH_FOUND") && e.contains("revoked"), "{e}");
    assert!(e.contains("copy its URL again"), "{e}");
    // In a batch, the failed command's line carries the fix too.
    let o = env
        .run_stdin(&["batch", "-"], "\"crm.lead.get?id=999\"\n")
        .await;
    let line: serde_json::Value = serde_json::from_str(stdout(&o).trim()).unwrap();
    assert!(
        line["error"]["fix"]
            .as_str()
            .unwrap()
            .contains("b24 list crm.lead.list"),
        "{line}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn unreachable_portals_fail_fast_with_the_likely_cause() {
    let sb = sandbox_with_leads(1).await;
    // A port where nothing listens.
    let port = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap().port()
    };
    // https spoken to the sandbox's plain-http port: the TLS handshake fails.
    let http_port = url::Url::parse(sb.base_url()).unwrap().port().unwrap();
    for (url, cause) in [
        (
            "https://no-such-portal.invalid/rest/1/abcdefabcdef/".to_string(),
            "DNS",
        ),
        (
            format!("http://127.0.0.1:{port}/rest/1/abcdefabcdef/"),
            "refused",
        ),
        (
            format!("https://127.0.0.1:{http_port}/rest/1/abcdefabcdef/"),
            "TLS",
        ),
    ] {
        let mut env = Env::bare();
        env.set("B24_WEBHOOK_URL", &url);
        let t = std::time::Instant::now();
        let o = env.run(&["call", "user.current"]).await;
        let took = t.elapsed();
        assert_eq!(code(&o), 6, "{url}: {}", stderr(&o));
        assert!(stderr(&o).contains(cause), "{url}: {}", stderr(&o));
        assert!(stderr(&o).contains("not retried"), "{url}: {}", stderr(&o));
        assert!(took.as_secs_f64() < 3.0, "{url}: took {took:?}");
    }
}

mod formats;
mod settle;
