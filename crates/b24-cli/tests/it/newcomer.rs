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

mod auth;
mod help;
