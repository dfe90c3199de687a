//! The newcomer's path: `b24 demo` on a fresh machine, `b24 doctor` recognising the common
//! mistakes, and the OAuth `b24 auth login → status → call → logout` cycle against the sandbox's
//! OAuth server (the browser is simulated by GETting the printed authorize URL with reqwest).

use std::io::{BufRead, BufReader};
use std::process::Stdio;
use std::time::Duration;

use crate::support::*;
use serde_json::Value;

fn code(o: &std::process::Output) -> i32 {
    o.status.code().unwrap_or(-1)
}

fn check<'a>(report: &'a Value, name: &str) -> &'a Value {
    report["checks"]
        .as_array()
        .expect("checks array")
        .iter()
        .find(|c| c["name"] == name)
        .unwrap_or_else(|| panic!("no check `{name}` in {report:#}"))
}

fn assert_no_secrets(sb: &Sandbox, o: &std::process::Output) {
    let i = sb.info();
    let all = format!("{}{}", stdout(o), stderr(o));
    for s in [
        &i.webhook_code,
        &i.client_secret,
        &i.access_token,
        &i.refresh_token,
    ] {
        assert!(
            !all.contains(s.as_str()),
            "a secret leaked into the output: {all}"
        );
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn demo_runs_to_the_end_with_no_configuration() {
    let mut env = Env::bare();
    let tmp = env.dir.path().join("tmp");
    std::fs::create_dir_all(&tmp).unwrap();
    env.set("TMPDIR", tmp.to_str().unwrap());
    let t = std::time::Instant::now();
    let o = env.run(&["demo"]).await;
    assert_eq!(code(&o), 0, "stderr: {}", stderr(&o));
    assert!(
        t.elapsed() < Duration::from_secs(60),
        "the demo takes under a minute"
    );
    let v = json(&o);
    assert_eq!(v["ok"], true);
    let steps: Vec<&str> = v["steps"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["step"].as_str().unwrap())
        .collect();
    assert_eq!(
        steps,
        [
            "read_probe",
            "planned_write",
            "guarded_delete",
            "batch",
            "export",
            "event_worker"
        ]
    );
    let step = |n: &str| {
        v["steps"]
            .as_array()
            .unwrap()
            .iter()
            .find(|s| s["step"] == n)
            .unwrap()
            .clone()
    };
    assert_eq!(
        step("guarded_delete")["exit"],
        4,
        "the delete is refused by policy"
    );
    assert_eq!(
        step("planned_write")["reapply_exit"],
        4,
        "a plan applies once"
    );
    assert!(step("export")["items"].as_u64().unwrap() >= 3000);
    assert_eq!(step("event_worker")["handled"], 1);
    let err = stderr(&o);
    for n in 1..=6 {
        assert!(
            err.contains(&format!("[{n}/6]")),
            "step {n} is narrated: {err}"
        );
    }
    assert!(
        err.contains("refused crm.lead.delete"),
        "the refusal is shown: {err}"
    );
    // The audit log of the run is in the state dir and verifies.
    let o = env.run(&["audit", "verify"]).await;
    assert_eq!(code(&o), 0, "{}", stderr(&o));
}

#[tokio::test(flavor = "multi_thread")]
async fn doctor_passes_on_a_healthy_sandbox_config() {
    let sb = sandbox_with_leads(3).await;
    let env = Env::webhook(&sb);
    let o = env.run(&["doctor"]).await;
    assert_eq!(code(&o), 0, "{}", stderr(&o));
    let r = json(&o);
    assert_eq!(r["ok"], true);
    for c in r["checks"].as_array().unwrap() {
        assert_eq!(c["status"], "ok", "{c}");
    }
    for n in [
        "config",
        "reachability",
        "auth",
        "scopes",
        "clock",
        "limiter",
        "state_dir",
    ] {
        check(&r, n);
    }
    assert!(stderr(&o).contains("all checks passed"));
    assert_no_secrets(&sb, &o);
}

#[tokio::test(flavor = "multi_thread")]
async fn doctor_catches_a_webhook_code_with_its_user_id_prefix() {
    let sb = sandbox_with_leads(0).await;
    let i = sb.info();
    let mut env = Env::bare();
    env.set("B24_DOMAIN", &i.base_url);
    env.set("B24_WEBHOOK_USER_ID", "1");
    env.set("B24_WEBHOOK_CODE", &format!("1/{}", i.webhook_code));
    let o = env.run(&["doctor"]).await;
    assert_eq!(code(&o), 2);
    let r = json(&o);
    assert_eq!(r["ok"], false);
    let c = check(&r, "webhook_code");
    assert_eq!(c["status"], "fail");
    assert!(c["fix"].as_str().unwrap().contains("B24_WEBHOOK_USER_ID"));
    assert!(stderr(&o).contains("fix:"));
    assert_no_secrets(&sb, &o);
}

#[tokio::test(flavor = "multi_thread")]
async fn doctor_explains_a_wrong_webhook_code() {
    let sb = sandbox_with_leads(0).await;
    let mut env = Env::bare();
    env.set(
        "B24_WEBHOOK_URL",
        &format!("{}/rest/1/notthecode123/", sb.base_url()),
    );
    let o = env.run(&["doctor"]).await;
    assert_eq!(code(&o), 2);
    let r = json(&o);
    let c = check(&r, "auth");
    assert_eq!(c["status"], "fail");
    assert_eq!(c["code"], "NO_AUTH_FOUND");
    assert!(c["fix"].as_str().unwrap().contains("webhook URL"));
    assert_eq!(check(&r, "reachability")["status"], "ok");
    assert!(
        !stdout(&o).contains("notthecode123"),
        "the (wrong) code is a secret too"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn doctor_catches_a_webhook_url_cut_short() {
    let sb = sandbox_with_leads(0).await;
    let mut env = Env::bare();
    env.set("B24_WEBHOOK_URL", &format!("{}/rest/1/", sb.base_url()));
    let o = env.run(&["doctor"]).await;
    assert_eq!(code(&o), 2);
    let r = json(&o);
    let c = check(&r, "webhook_url");
    assert_eq!(c["status"], "fail");
    assert!(c["detail"].as_str().unwrap().contains("cut short"));
    assert_eq!(
        sb.stats().requests,
        0,
        "no request is sent with a broken URL"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn doctor_explains_method_errors_and_insecure_transport() {
    let sb = sandbox_with_leads(0).await;
    let env = Env::webhook(&sb);
    let o = env
        .run(&[
            "doctor",
            "--method",
            "event.offline.list",
            "--method",
            "sale.order.list",
            "--method",
            "event.offline.get",
            "--method",
            "crm.no.such.method",
        ])
        .await;
    assert_eq!(code(&o), 2);
    let r = json(&o);
    let c = check(&r, "method event.offline.list");
    assert_eq!(c["code"], "WRONG_AUTH_TYPE");
    assert!(c["fix"].as_str().unwrap().contains("OAuth"));
    let c = check(&r, "method sale.order.list");
    assert_eq!(c["code"], "ERROR_METHOD_NOT_FOUND");
    assert!(c["detail"].as_str().unwrap().contains("cut short"));
    // doctor tries reads only, through the gate: these never reach the portal
    for m in ["event.offline.get", "crm.no.such.method"] {
        let c = check(&r, &format!("method {m}"));
        assert_eq!(c["status"], "fail");
        assert!(c["detail"].as_str().unwrap().contains("refused"), "{c}");
        assert!(
            !sb.stats().methods.contains_key(m),
            "{m} reached the portal"
        );
    }
    assert_eq!(check(&r, "auth")["status"], "ok");
    assert_no_secrets(&sb, &o);

    let mut env = Env::bare();
    env.set(
        "B24_WEBHOOK_URL",
        "http://portal.example.com/rest/1/abcdef123/",
    );
    let o = env.run(&["doctor"]).await;
    assert_eq!(code(&o), 2);
    let r = json(&o);
    assert_eq!(check(&r, "transport")["status"], "fail");
    assert!(!format!("{}{}", stdout(&o), stderr(&o)).contains("abcdef123"));
}

#[tokio::test(flavor = "multi_thread")]
async fn doctor_explains_a_free_plan_portal_and_missing_scopes() {
    let sb = sandbox(SandboxConfig {
        free_plan: true,
        ..Default::default()
    })
    .await;
    let o = Env::webhook(&sb).run(&["doctor"]).await;
    assert_eq!(code(&o), 2);
    let r = json(&o);
    let c = check(&r, "auth");
    assert_eq!(c["code"], "ACCESS_DENIED");
    assert!(c["detail"].as_str().unwrap().contains("commercial plans"));
    assert!(c["fix"].as_str().unwrap().contains("plan"));

    let sb = sandbox(SandboxConfig {
        webhook_scopes: Some(vec!["user".into()]),
        ..Default::default()
    })
    .await;
    let o = Env::webhook(&sb)
        .run(&["doctor", "--method", "crm.lead.list"])
        .await;
    assert_eq!(code(&o), 2);
    let r = json(&o);
    assert_eq!(check(&r, "scopes")["status"], "warn", "{r:#}");
    let c = check(&r, "method crm.lead.list");
    assert_eq!(c["code"], "insufficient_scope");
    assert!(c["fix"].as_str().unwrap().contains("scope"));
    assert_no_secrets(&sb, &o);
}

#[tokio::test(flavor = "multi_thread")]
async fn doctor_without_any_configuration_points_to_the_fix() {
    let o = Env::bare().run(&["doctor"]).await;
    assert_eq!(code(&o), 2);
    let r = json(&o);
    let c = check(&r, "config");
    assert_eq!(c["status"], "fail");
    assert!(c["fix"].as_str().unwrap().contains("B24_WEBHOOK_URL"));
    assert!(stderr(&o).contains("b24 demo"), "{}", stderr(&o));
}

/// Env for OAuth with the app's credentials but no tokens: they must come from `auth login`.
fn oauth_app_env(sb: &Sandbox) -> Env {
    let i = sb.info();
    let mut e = Env::bare();
    e.set("B24_AUTH_MODE", "oauth");
    e.set("B24_DOMAIN", &i.base_url);
    e.set("B24_CLIENT_ID", &i.client_id);
    e.set("B24_CLIENT_SECRET", &i.client_secret);
    e.set("B24_OAUTH_TOKEN_URL", &i.oauth_token_url);
    e
}

#[tokio::test(flavor = "multi_thread")]
async fn auth_login_status_call_logout_against_the_sandbox_oauth_server() {
    let sb = sandbox_with_leads(2).await;
    let env = oauth_app_env(&sb);
    // Before login, a call has no token.
    let o = env.run(&["call", "user.current"]).await;
    assert_eq!(code(&o), 5, "{}", stderr(&o));

    // Login: read the authorize URL from stderr and play the browser (follow the redirect).
    let mut child = env
        .cmd(&["auth", "login", "--no-browser", "--timeout", "30"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let stderr_pipe = child.stderr.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel::<String>();
    let reader = std::thread::spawn(move || {
        let mut all = String::new();
        for line in BufReader::new(stderr_pipe).lines() {
            let line = line.unwrap();
            if let Some(u) = line
                .split_whitespace()
                .find(|w| w.contains("/oauth/authorize/"))
            {
                let _ = tx.send(u.to_string());
            }
            all.push_str(&line);
            all.push('\n');
        }
        all
    });
    let url = tokio::task::spawn_blocking(move || {
        rx.recv_timeout(Duration::from_secs(20))
            .expect("authorize URL on stderr")
    })
    .await
    .unwrap();
    assert!(url.starts_with(sb.base_url()), "{url}");
    assert!(
        url.contains("state=") && url.contains("redirect_uri="),
        "{url}"
    );
    // A callback with a forged state is ignored (answered 400, login keeps waiting).
    let parsed = url::Url::parse(&url).unwrap();
    let redirect = parsed
        .query_pairs()
        .find(|(k, _)| k == "redirect_uri")
        .unwrap()
        .1
        .to_string();
    let forged = reqwest::get(format!("{redirect}?code=forged&state=nope"))
        .await
        .unwrap();
    assert_eq!(forged.status().as_u16(), 400);
    let page = reqwest::get(&url).await.unwrap();
    assert_eq!(page.status().as_u16(), 200);
    assert!(page.text().await.unwrap().contains("authorized"));
    let out = tokio::task::spawn_blocking(move || child.wait_with_output().unwrap())
        .await
        .unwrap();
    let err = reader.join().unwrap();
    assert_eq!(out.status.code(), Some(0), "{err}");
    let v: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["logged_in"], true);
    assert_eq!(v["member_id"], sb.info().member_id.as_str());
    let token_file = std::path::PathBuf::from(v["token_file"].as_str().unwrap());
    assert!(token_file.starts_with(env.state_dir()));
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(&token_file).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
    }
    let stored: Value = serde_json::from_slice(&std::fs::read(&token_file).unwrap()).unwrap();
    let (access, refresh) = (
        stored["access_token"].as_str().unwrap().to_string(),
        stored["refresh_token"].as_str().unwrap().to_string(),
    );
    assert!(!access.is_empty() && !refresh.is_empty());
    let everything = format!("{}{err}", String::from_utf8_lossy(&out.stdout));
    for s in [&access, &refresh, &sb.info().client_secret] {
        assert!(!everything.contains(s.as_str()), "login printed a secret");
    }
    assert_eq!(sb.stats().code_exchanges, 1);

    // Status: portal, member id, scopes, expiry, path — never the tokens.
    let o = env.run(&["auth", "status"]).await;
    assert_eq!(code(&o), 0, "{}", stderr(&o));
    let st = json(&o);
    assert_eq!(st["logged_in"], true);
    assert!(st["scopes"].as_array().unwrap().iter().any(|s| s == "crm"));
    assert!(st["expires_in_secs"].as_i64().unwrap() > 0);
    let all = format!("{}{}", stdout(&o), stderr(&o));
    assert!(
        !all.contains(&access) && !all.contains(&refresh),
        "status never prints a token"
    );

    // Without a portal named, status lists every stored pair (still no tokens).
    let mut anywhere = Env::bare();
    anywhere.set("B24_STATE_DIR", env.state_dir().to_str().unwrap());
    let o = anywhere.run(&["auth", "status"]).await;
    assert_eq!(code(&o), 0, "{}", stderr(&o));
    let line: Value = serde_json::from_str(stdout(&o).lines().next().unwrap()).unwrap();
    assert_eq!(line["member_id"], sb.info().member_id.as_str());
    assert!(!stdout(&o).contains(&access) && !stdout(&o).contains(&refresh));

    // A call works with the stored token (no token in the environment).
    let o = env.run(&["call", "user.current"]).await;
    assert_eq!(code(&o), 0, "{}", stderr(&o));
    assert_eq!(json(&o)["ID"], "1");

    // Logout deletes the pair; status and calls then say so.
    let o = env.run(&["auth", "logout"]).await;
    assert_eq!(code(&o), 0, "{}", stderr(&o));
    assert_eq!(json(&o)["removed"], true);
    assert!(!token_file.exists());
    let o = env.run(&["auth", "status"]).await;
    assert_eq!(code(&o), 5);
    assert_eq!(json(&o)["logged_in"], false);
    let o = env.run(&["call", "user.current"]).await;
    assert_eq!(code(&o), 5, "{}", stderr(&o));
}

#[tokio::test(flavor = "multi_thread")]
async fn auth_login_with_a_pasted_code_and_clear_failures() {
    let sb = sandbox_with_leads(0).await;
    let env = oauth_app_env(&sb);
    // No browser here: the user opened the authorize URL elsewhere and got a code.
    let body: Value = reqwest::get(format!(
        "{}?client_id={}&state=x",
        sb.info().oauth_authorize_url,
        sb.info().client_id
    ))
    .await
    .unwrap()
    .json()
    .await
    .unwrap();
    let pasted = body["code"].as_str().unwrap().to_string();
    let o = env.run(&["auth", "login", "--code", &pasted]).await;
    assert_eq!(code(&o), 0, "{}", stderr(&o));
    assert_eq!(json(&o)["logged_in"], true);
    assert_no_secrets(&sb, &o);
    let o = env.run(&["call", "crm.lead.list"]).await;
    assert_eq!(code(&o), 0, "{}", stderr(&o));

    // The same code again: refused, with the reason and the fix.
    let o = env.run(&["auth", "login", "--code", &pasted]).await;
    assert_eq!(code(&o), 5);
    assert!(stderr(&o).contains("invalid_grant"), "{}", stderr(&o));

    // No --code and nobody opens the URL: fails after --timeout, never prompts.
    let o = env
        .run(&["auth", "login", "--no-browser", "--timeout", "1"])
        .await;
    assert_eq!(code(&o), 5);
    assert!(stderr(&o).contains("--code"), "{}", stderr(&o));

    // No app secret: a usage error that names the variable.
    let mut bare = Env::bare();
    bare.set("B24_DOMAIN", sb.base_url());
    bare.set("B24_CLIENT_ID", &sb.info().client_id);
    let o = bare.run(&["auth", "login", "--code", "x"]).await;
    assert_eq!(code(&o), 2);
    assert!(stderr(&o).contains("B24_CLIENT_SECRET"));
}

/// Every command and subcommand's `--help` ends with at least one example.
#[test]
fn every_help_has_an_example() {
    fn subcommands(help: &str) -> Vec<String> {
        let mut out = Vec::new();
        let mut in_cmds = false;
        for line in help.lines() {
            if line.trim_end() == "Commands:" {
                in_cmds = true;
                continue;
            }
            if in_cmds {
                if line.trim().is_empty() || !line.starts_with("  ") {
                    break;
                }
                if line.starts_with("   ") {
                    continue; // a wrapped description, not a command name
                }
                if let Some(name) = line.split_whitespace().next()
                    && name != "help"
                {
                    out.push(name.to_string());
                }
            }
        }
        out
    }
    let env = Env::bare();
    let mut stack: Vec<Vec<String>> = vec![vec![]];
    let mut checked = 0;
    while let Some(path) = stack.pop() {
        let mut args: Vec<&str> = path.iter().map(String::as_str).collect();
        args.push("--help");
        let o = env.cmd(&args).output().unwrap();
        assert_eq!(code(&o), 0, "b24 {}: {}", path.join(" "), stderr(&o));
        let help = stdout(&o);
        let subs = subcommands(&help);
        if !path.is_empty() {
            assert!(
                help.contains("Example"),
                "`b24 {} --help` has no example",
                path.join(" ")
            );
            checked += 1;
        }
        for s in subs {
            let mut p = path.clone();
            p.push(s);
            stack.push(p);
        }
    }
    assert!(checked > 30, "only {checked} commands found");
}

#[test]
fn a_reader_that_goes_away_never_makes_b24_panic() {
    let env = Env::bare();
    for args in [
        vec!["methods"],
        vec!["methods", "-o", "csv"],
        vec!["methods", "-o", "table"],
        vec!["methods", "-o", "json", "--pretty"],
        vec!["describe", "crm.lead.list"],
        vec!["completions", "bash"],
        vec!["audit", "path"],
    ] {
        let mut child = env
            .cmd(&args)
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        // Close the reading end before b24 writes: every write after this gets EPIPE.
        drop(child.stdout.take());
        let o = child.wait_with_output().unwrap();
        let err = String::from_utf8_lossy(&o.stderr);
        assert!(!err.contains("panicked"), "b24 {}: {err}", args.join(" "));
        assert_eq!(o.status.code(), Some(0), "b24 {}: {err}", args.join(" "));
    }
}

/// Global flags are described once (`b24 --help`), not repeated under every subcommand; they
/// still work after a subcommand. Every command has a man page with an ENVIRONMENT section, and
/// the completion scripts offer method names from the catalog.
#[test]
fn global_flags_once_man_pages_for_every_command_method_completions() {
    let env = Env::bare();
    let top = stdout(&env.cmd(&["--help"]).output().unwrap());
    for flag in [
        "--read-only",
        "--allow",
        "--state-dir",
        "--max-writes-per-hour",
    ] {
        assert!(top.contains(flag), "b24 --help lacks {flag}");
    }
    for sub in [
        vec!["completions"],
        vec!["sandbox"],
        vec!["call"],
        vec!["export"],
        vec!["audit", "verify"],
        vec!["plan", "list"],
    ] {
        let mut args = sub.clone();
        args.push("--help");
        let o = env.cmd(&args).output().unwrap();
        assert_eq!(code(&o), 0, "{}", stderr(&o));
        let h = stdout(&o);
        for flag in [
            "Refuse everything but reads",
            "--max-writes-per-hour <N>",
            "--env-file <FILE>",
        ] {
            assert!(
                !h.contains(flag),
                "b24 {} --help repeats {flag}",
                sub.join(" ")
            );
        }
        assert!(h.contains("b24 --help"), "points to the global options");
    }
    // Still accepted after the subcommand: refused by --read-only before anything else.
    let o = env
        .cmd(&[
            "call",
            "crm.lead.delete",
            "-p",
            r#"{"id":1}"#,
            "--confirm-destructive",
            "--read-only",
            "--dry-run",
        ])
        .output()
        .unwrap();
    assert_eq!(code(&o), 4, "{}", stderr(&o));

    let dir = env.dir.path().join("man");
    let o = env
        .cmd(&["completions", "man", "--dir", dir.to_str().unwrap()])
        .output()
        .unwrap();
    assert_eq!(code(&o), 0, "{}", stderr(&o));
    let pages: Vec<_> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    assert!(pages.len() >= 40, "{} pages", pages.len());
    for p in &pages {
        let t = std::fs::read_to_string(p).unwrap();
        assert!(t.contains(".SH ENVIRONMENT"), "{}", p.display());
        assert!(t.contains("B24_WEBHOOK_URL"), "{}", p.display());
    }
    let export = std::fs::read_to_string(dir.join("b24-export.1")).unwrap();
    assert!(export.contains(".TH b24-export"), "{export}");
    assert!(export.contains("checkpoint") && export.contains("GLOBAL OPTIONS"));
    let verify = env
        .cmd(&["completions", "man", "audit", "verify"])
        .output()
        .unwrap();
    assert!(stdout(&verify).contains(".TH b24-audit-verify"));
    assert_eq!(
        code(&env.cmd(&["completions", "man", "nosuch"]).output().unwrap()),
        2
    );

    for shell in ["bash", "zsh", "fish"] {
        let o = env.cmd(&["completions", shell]).output().unwrap();
        let s = stdout(&o);
        assert!(
            s.contains("crm.deal.add") && s.contains("tasks.task.list"),
            "{shell}: method names from the catalog"
        );
    }
    // Completion candidates do not restrict what is accepted.
    let o = env.cmd(&["describe", "not.in.catalog"]).output().unwrap();
    assert!(!stderr(&o).contains("invalid value"), "{}", stderr(&o));
}
