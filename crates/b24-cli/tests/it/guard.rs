//! Guardrails end to end: every gate is checked against what actually reached the sandbox.

use crate::support::*;

const ADD: &str = r#"{"fields":{"TITLE":"Guarded"}}"#;

#[tokio::test(flavor = "multi_thread")]
async fn writes_and_deletes_need_confirmation_and_nothing_is_sent() {
    let sb = sandbox_with_leads(3).await;
    let env = Env::webhook(&sb);
    let o = env.run(&["call", "crm.lead.add", "--params", ADD]).await;
    assert_eq!(code(&o), 4, "{}", stderr(&o));
    assert!(
        stderr(&o).contains("--confirm-write") && stderr(&o).contains("b24 plan crm.lead.add"),
        "{}",
        stderr(&o)
    );
    let o = env
        .run(&[
            "call",
            "crm.lead.delete",
            "--params",
            r#"{"id":1}"#,
            "--confirm-write",
        ])
        .await;
    assert_eq!(code(&o), 4);
    assert!(stderr(&o).contains("--confirm-destructive"));
    // A destructive command cannot hide inside a batch.
    let batch = r#"{"cmd":{"a":"crm.lead.list","b":"crm.lead.delete?id=2"}}"#;
    let o = env
        .run(&["call", "batch", "--params", batch, "--confirm-write"])
        .await;
    assert_eq!(code(&o), 4, "{}", stderr(&o));
    assert!(stderr(&o).contains("crm.lead.delete"));
    // --dry-run shows what would be sent and sends nothing.
    let o = env
        .run(&["call", "crm.lead.add", "--params", ADD, "--dry-run"])
        .await;
    assert_eq!(code(&o), 0);
    let v = json(&o);
    assert_eq!(
        (v["risk"].as_str(), v["sent"].as_bool()),
        (Some("write"), Some(false))
    );
    assert!(
        !v["endpoint"]
            .as_str()
            .unwrap()
            .contains(&sb.info().webhook_code)
    );
    assert_eq!(
        sb.stats().requests,
        0,
        "nothing reached the portal: {:?}",
        sb.request_log()
    );
    // Confirmed, they go through.
    let o = env
        .run(&[
            "call",
            "crm.lead.delete",
            "--params",
            r#"{"id":1}"#,
            "--confirm-destructive",
        ])
        .await;
    assert_eq!(code(&o), 0, "{}", stderr(&o));
    assert_eq!(calls_of(&sb, "crm.lead.delete"), 1);
}

#[tokio::test(flavor = "multi_thread")]
async fn plans_apply_once_and_refuse_tampering() {
    let sb = sandbox_with_leads(0).await;
    let env = Env::webhook(&sb);
    let plan = json(&env.run(&["plan", "crm.lead.add", "--params", ADD]).await);
    let id = plan["id"].as_str().unwrap().to_string();
    assert_eq!(plan["risk"], "write");
    assert_eq!(sb.stats().requests, 0, "planning sends nothing");
    let o = env.run(&["apply", &id]).await;
    assert_eq!(code(&o), 4, "apply still needs the confirmation");
    let o = env.run(&["apply", &id, "--confirm-write"]).await;
    assert_eq!(code(&o), 0, "{}", stderr(&o));
    assert_eq!(json(&o), serde_json::json!(1));
    let o = env.run(&["apply", &id, "--confirm-write"]).await;
    assert_eq!(code(&o), 4);
    assert!(stderr(&o).contains("already applied"));
    assert_eq!(calls_of(&sb, "crm.lead.add"), 1);
    // Altered after recording: the stored params no longer match the hash.
    let plan = json(&env.run(&["plan", "crm.lead.add", "--params", ADD]).await);
    let id2 = plan["id"].as_str().unwrap().to_string();
    let db = rusqlite::Connection::open(env.state_dir().join("guard.db")).unwrap();
    db.execute(
        "UPDATE plans SET params = ?1 WHERE id = ?2",
        (r#"{"fields":{"TITLE":"Evil"}}"#, &id2),
    )
    .unwrap();
    let o = env.run(&["apply", &id2, "--confirm-write"]).await;
    assert_eq!(code(&o), 4);
    assert!(stderr(&o).contains("altered"), "{}", stderr(&o));
    // Expired.
    let plan = json(
        &env.run(&["plan", "crm.lead.add", "--params", ADD, "--ttl", "0"])
            .await,
    );
    std::thread::sleep(std::time::Duration::from_millis(20));
    let o = env
        .run(&["apply", plan["id"].as_str().unwrap(), "--confirm-write"])
        .await;
    assert_eq!(code(&o), 4);
    assert!(stderr(&o).contains("expired"));
    assert_eq!(calls_of(&sb, "crm.lead.add"), 1);

    // plan list: the three plans, newest first, with their state; `list` is no method to plan.
    let o = env.run(&["plan", "list"]).await;
    assert_eq!(code(&o), 0, "{}", stderr(&o));
    let rows: Vec<serde_json::Value> = stdout(&o)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(rows.len(), 3, "{}", stdout(&o));
    assert_eq!(rows[0]["id"], plan["id"]);
    assert_eq!(rows[0]["expired"], true);
    assert_eq!(rows[2]["id"], serde_json::json!(id));
    assert_eq!(rows[2]["state"], "applied");
    assert!(rows.iter().all(|r| r["method"] == "crm.lead.add"));
    let o = env
        .run(&["plan", "list", "--limit", "1", "-o", "csv"])
        .await;
    assert_eq!(stdout(&o).lines().count(), 2, "{}", stdout(&o));
    assert!(
        stdout(&o).starts_with("id,method,risk,state"),
        "{}",
        stdout(&o)
    );
    let o = env.run(&["plan", "show", &id]).await;
    assert_eq!(json(&o)["state"], "applied");
    let db = rusqlite::Connection::open(env.state_dir().join("guard.db")).unwrap();
    let n: i64 = db
        .query_row("SELECT count(*) FROM plans", [], |r| r.get(0))
        .unwrap();
    assert_eq!(n, 3, "listing recorded no plan");
}

#[tokio::test(flavor = "multi_thread")]
async fn the_same_idempotency_key_writes_once() {
    let sb = sandbox_with_leads(0).await;
    let env = Env::webhook(&sb);
    for _ in 0..3 {
        let o = env
            .run(&[
                "call",
                "crm.lead.add",
                "--params",
                ADD,
                "--confirm-write",
                "--idempotency-key",
                "import-42",
            ])
            .await;
        assert_eq!(code(&o), 0, "{}", stderr(&o));
        assert_eq!(json(&o), serde_json::json!(1));
    }
    assert_eq!(calls_of(&sb, "crm.lead.add"), 1);
    let o = env
        .run(&[
            "call",
            "crm.lead.add",
            "--params",
            r#"{"fields":{"TITLE":"Other"}}"#,
            "--confirm-write",
            "--idempotency-key",
            "import-42",
        ])
        .await;
    assert_eq!(code(&o), 4, "same key, different call");
    // --idempotent derives the key from method + params; without a key, writes repeat.
    for _ in 0..2 {
        env.run(&[
            "call",
            "crm.lead.add",
            "--params",
            r#"{"fields":{"TITLE":"D"}}"#,
            "--confirm-write",
            "--idempotent",
        ])
        .await;
    }
    assert_eq!(calls_of(&sb, "crm.lead.add"), 2);
    for _ in 0..2 {
        env.run(&["call", "crm.lead.add", "--params", ADD, "--confirm-write"])
            .await;
    }
    assert_eq!(calls_of(&sb, "crm.lead.add"), 4);
    // --idempotent with a natural key (the original skill's ORIGIN_ID / EXTERNAL_ID): the same
    // external record is written once; the same key with other params is refused, not replayed.
    let first = env
        .run(&[
            "call",
            "crm.lead.add",
            "-p",
            r#"{"fields":{"TITLE":"E","ORIGIN_ID":"shop-77"}}"#,
            "--confirm-write",
            "--idempotent",
        ])
        .await;
    assert_eq!(code(&first), 0, "{}", stderr(&first));
    let again = env
        .run(&[
            "call",
            "crm.lead.add",
            "-p",
            r#"{"fields":{"TITLE":"E","ORIGIN_ID":"shop-77"}}"#,
            "--confirm-write",
            "--idempotent",
        ])
        .await;
    assert_eq!(code(&again), 0, "{}", stderr(&again));
    assert_eq!(json(&again), json(&first), "replayed");
    let changed = env
        .run(&[
            "call",
            "crm.lead.add",
            "-p",
            r#"{"fields":{"TITLE":"E2","ORIGIN_ID":"shop-77"}}"#,
            "--confirm-write",
            "--idempotent",
        ])
        .await;
    assert_eq!(code(&changed), 4, "{}", stderr(&changed));
    assert_eq!(calls_of(&sb, "crm.lead.add"), 5);
}

#[tokio::test(flavor = "multi_thread")]
async fn operator_policy_cannot_be_loosened_by_the_agent() {
    let sb = sandbox_with_leads(3).await;
    let mut env = Env::webhook(&sb);
    std::fs::write(
        env.config_dir().join("policy.toml"),
        "deny_destructive = true\nrequire_plan_for_writes = true\nforbid_allow_unlisted = true\ndeny = [\"crm.deal.*\"]\n",
    )
    .unwrap();
    env.set("B24_REQUIRE_PLAN", "0");
    let o = env
        .run(&[
            "call",
            "crm.lead.delete",
            "--params",
            r#"{"id":1}"#,
            "--confirm-destructive",
            "--confirm-write",
        ])
        .await;
    assert_eq!(code(&o), 4);
    assert!(
        stderr(&o).contains("no flag can allow it"),
        "{}",
        stderr(&o)
    );
    let o = env
        .run(&["call", "crm.lead.add", "--params", ADD, "--confirm-write"])
        .await;
    assert_eq!(code(&o), 4);
    assert!(stderr(&o).contains("b24 plan"), "{}", stderr(&o));
    let o = env
        .run(&[
            "call",
            "made.up.method",
            "--allow-unlisted",
            "--confirm-destructive",
        ])
        .await;
    assert_eq!(code(&o), 4);
    let o = env.run(&["call", "crm.deal.list"]).await;
    assert_eq!(code(&o), 4);
    // The plan path works for writes…
    let plan = json(&env.run(&["plan", "crm.lead.add", "--params", ADD]).await);
    let o = env
        .run(&["apply", plan["id"].as_str().unwrap(), "--confirm-write"])
        .await;
    assert_eq!(code(&o), 0, "{}", stderr(&o));
    // …but not for destructive calls.
    let o = env
        .run(&["plan", "crm.lead.delete", "--params", r#"{"id":1}"#])
        .await;
    assert_eq!(code(&o), 4);
    let s = sb.stats();
    assert_eq!(
        (
            s.methods.get("crm.lead.delete"),
            s.methods.get("crm.lead.add")
        ),
        (None, Some(&1))
    );
    // Reads are fine.
    assert_eq!(code(&env.run(&["call", "crm.lead.list"]).await), 0);
}

#[tokio::test(flavor = "multi_thread")]
async fn audit_log_verifies_and_detects_tampering() {
    let sb = sandbox_with_leads(2).await;
    let env = Env::webhook(&sb);
    env.run(&["call", "crm.lead.list"]).await;
    env.run(&["call", "crm.lead.add", "--params", ADD]).await; // refused
    env.run(&["call", "crm.lead.add", "--params", ADD, "--confirm-write"])
        .await;
    let plan = json(
        &env.run(&[
            "plan",
            "crm.lead.update",
            "--params",
            r#"{"id":1,"fields":{"TITLE":"u"}}"#,
        ])
        .await,
    );
    env.run(&["apply", plan["id"].as_str().unwrap(), "--confirm-write"])
        .await;
    let o = env.run(&["audit", "verify"]).await;
    assert_eq!(code(&o), 0, "{}", stderr(&o));
    // A write leaves two records: its intent (before anything is sent) and its outcome.
    assert_eq!(json(&o)["records"], 7);
    let tail = stdout(&env.run(&["audit", "tail", "-n", "7"]).await);
    let decisions: Vec<String> = tail
        .lines()
        .map(|l| {
            serde_json::from_str::<serde_json::Value>(l).unwrap()["decision"]
                .as_str()
                .unwrap()
                .to_string()
        })
        .collect();
    assert_eq!(
        decisions,
        ["allow", "deny", "allow", "allow", "plan", "allow", "allow"]
    );
    let path = env.state_dir().join("audit.jsonl");
    let original = std::fs::read_to_string(&path).unwrap();
    std::fs::write(
        &path,
        original.replacen("\"decision\":\"deny\"", "\"decision\":\"allow\"", 1),
    )
    .unwrap();
    let o = env.run(&["audit", "verify"]).await;
    assert_ne!(code(&o), 0);
    assert!(stderr(&o).contains("line 2"), "{}", stderr(&o));
    let lines: Vec<&str> = original.lines().collect();
    std::fs::write(&path, format!("{}\n{}\n", lines[0], lines[2..].join("\n"))).unwrap();
    let o = env.run(&["audit", "verify"]).await;
    assert_ne!(code(&o), 0);
    assert!(stderr(&o).contains("line 2"), "{}", stderr(&o));
}

#[tokio::test(flavor = "multi_thread")]
async fn no_secret_reaches_the_audit_log_or_state() {
    let sb = sandbox_with_leads(2).await;
    let i = sb.info().clone();
    let secrets = vec![
        i.webhook_code.clone(),
        i.access_token.clone(),
        i.refresh_token.clone(),
        i.client_secret.clone(),
    ];
    for env in [Env::webhook(&sb), Env::oauth(&sb)] {
        let with_secret = format!(
            r#"{{"fields":{{"TITLE":"t"}},"auth":"{}","client_secret":"{}"}}"#,
            i.access_token, i.client_secret
        );
        for args in [
            vec!["call", "crm.lead.list"],
            vec!["call", "crm.lead.add", "--params", &with_secret],
            vec![
                "call",
                "crm.lead.add",
                "--params",
                &with_secret,
                "--dry-run",
            ],
            vec![
                "call",
                "crm.lead.add",
                "--params",
                ADD,
                "--confirm-write",
                "--idempotent",
            ],
            vec!["plan", "crm.lead.add", "--params", &with_secret],
            vec![
                "call",
                "batch",
                "--params",
                r#"{"cmd":{"a":"crm.lead.delete?id=1"}}"#,
            ],
            vec!["call", "no.such.method", "--confirm-destructive"],
            vec!["audit", "tail"],
            vec!["methods", "--search", "lead.add"],
            vec!["describe", "crm.lead.add"],
        ] {
            let o = env.run(&args).await;
            assert_no_secrets(&format!("stdout of {args:?}"), &o.stdout, &secrets);
            assert_no_secrets(&format!("stderr of {args:?}"), &o.stderr, &secrets);
        }
        let audit = std::fs::read(env.state_dir().join("audit.jsonl")).unwrap();
        assert_no_secrets("audit log", &audit, &secrets);
        for f in files_under(&env.state_dir()) {
            if f.file_name()
                .unwrap()
                .to_string_lossy()
                .starts_with("tokens-")
            {
                continue;
            }
            assert_no_secrets(
                &f.display().to_string(),
                &std::fs::read(&f).unwrap(),
                &secrets,
            );
        }
    }
}

/// The original Python skill's settings are never silently ignored and never move the guard's
/// records: each gets a warning saying what to do; the old JSON limiter file is ignored (was a
/// hard error), `B24_RATE_LIMITER=noop` means off.
#[tokio::test(flavor = "multi_thread")]
async fn settings_of_the_original_skill_warn_and_never_move_the_audit_log() {
    let sb = sandbox_with_leads(1).await;
    let mut env = Env::webhook(&sb);
    let elsewhere = env.dir.path().join("elsewhere");
    std::fs::create_dir_all(&elsewhere).unwrap();
    let audit = elsewhere.join("audit.jsonl");
    let limiter = elsewhere.join("bitrix24_rate_limiter.json");
    let limiter_text = r#"{"tokens": 3.5, "updated_at": 1700000000}"#;
    std::fs::write(&limiter, limiter_text).unwrap();
    env.set("B24_AUDIT_FILE", audit.to_str().unwrap());
    env.set(
        "B24_PLAN_FILE",
        elsewhere.join("plans.json").to_str().unwrap(),
    );
    env.set(
        "B24_IDEMPOTENCY_FILE",
        elsewhere.join("idem.json").to_str().unwrap(),
    );
    env.set("B24_IDEMPOTENCY_TTL_SEC", "86400");
    env.set("B24_RATE_LIMITER_FILE", limiter.to_str().unwrap());
    let o = env
        .run(&["call", "crm.lead.add", "-p", ADD, "--confirm-write"])
        .await;
    assert_eq!(code(&o), 0, "{}", stderr(&o));
    let e = stderr(&o);
    for var in [
        "B24_AUDIT_FILE",
        "B24_PLAN_FILE",
        "B24_IDEMPOTENCY_FILE",
        "B24_IDEMPOTENCY_TTL_SEC",
        "B24_RATE_LIMITER_FILE",
    ] {
        assert!(e.contains(&format!("warning: {var}")), "{var}: {e}");
    }
    assert!(e.contains("b24 audit path"), "{e}");
    // Nothing was written where the old variables point; the write is in the real audit log.
    assert!(!audit.exists(), "the audit log was moved");
    assert!(!elsewhere.join("plans.json").exists());
    assert_eq!(std::fs::read_to_string(&limiter).unwrap(), limiter_text);
    let tail = env.run(&["audit", "tail", "-n", "5"]).await;
    assert!(stdout(&tail).contains("crm.lead.add"), "{}", stdout(&tail));
    assert!(env.state_dir().join("limiter.db").exists());
    // The original's `noop` limiter is read as off, with a warning, not refused.
    env.set("B24_RATE_LIMITER", "noop");
    let o = env.run(&["call", "user.current"]).await;
    assert_eq!(code(&o), 0, "{}", stderr(&o));
    assert!(stderr(&o).contains("noop"), "{}", stderr(&o));
}

mod params;
