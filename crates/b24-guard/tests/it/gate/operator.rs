//! The operator's files: a deny holds for every spelling and front door (batch itself
//! included), caller inputs cannot skip or widen them, and a broken file refuses everything
//! with its file and line.
//!
//! A module of `tests/it/gate.rs`, so it uses its helpers.

use super::*;

#[tokio::test(flavor = "multi_thread")]
async fn operator_deny_holds_for_every_spelling_and_front_door() {
    let sb = sandbox().await;
    let w = World::new();
    w.system("deny = [\"crm.lead.delete\"]\n");
    let gate = w.gate(&sb, &CallerInputs::default(), "a", Origin::Mcp);
    let id = json!({"id": 1});
    let del = |k: &str| json!({ k: {"a": "crm.lead.delete?id=1"} });
    let attempts: Vec<(&str, Value)> = vec![
        ("CRM.LEAD.DELETE", id.clone()),
        ("crm.lead.delete.json", id.clone()),
        ("Crm.Lead.Delete.XML", id.clone()),
        (" crm.lead.delete\n", id.clone()),
        ("crm%2Elead%2Edelete", id.clone()),
        ("crm.lead.dеlete", id.clone()),
        ("crm.lead.delete\u{0}", id.clone()),
        ("crm.lead.delete\u{200b}", id.clone()),
        ("crm.lead.delete/", id.clone()),
        ("batch", del("cmd")),
        ("batch", del("cMd")),
        ("batch", del("Cmd")),
        ("BATCH.json", del("CMD")),
        (
            "batch",
            json!({"cmd": ["user.current", "CRM.LEAD.DELETE.xml?id=1"]}),
        ),
        (
            "batch",
            json!({"cmd": {"a": "user.current"}, "CMD": {"b": "crm.lead.delete?id=1"}}),
        ),
        (
            "batch",
            json!({"cmd": {"a": "user.current"}, "cmd[b]": "crm.lead.delete?id=1"}),
        ),
        ("batch", json!({"cmd": {"a": "crm.lead.delete%3Fid%3D1"}})),
        (
            "batch",
            json!({"cmd": {"a": "batch?cmd[b]=crm.lead.delete%3Fid%3D1"}}),
        ),
        (
            "batch",
            json!({"cmd": {"a": {"method": "crm.lead.delete"}}}),
        ),
        (
            "batch",
            json!({"cmd": {"secret_token": "crm.lead.delete?id=1"}}),
        ),
        ("batch", json!({"cmd": {"a": "user.current"}, "extra": 1})),
    ];
    let person = Says::new(Answer::Yes);
    for (m, p) in &attempts {
        let e = gate
            .call(confirmed(m, p.clone()), &person)
            .await
            .expect_err(&format!("{m:?} {p} must be refused"));
        assert!(is_refusal(&e), "{m:?} {p}: {e}");
    }
    // Plans of the same: refused when recorded.
    for (m, p) in &attempts {
        let req = PlanRequest {
            method: m.to_string(),
            params: p.clone(),
            ttl_secs: 60,
            ..Default::default()
        };
        let e = gate.plan(req).await.expect_err(&format!("plan {m:?} {p}"));
        assert!(is_refusal(&e), "plan {m:?} {p}: {e}");
    }
    // Gate::batch in both command forms.
    for spec in [
        BatchCommandSpec::Params {
            key: "x".into(),
            method: "CRM.Lead.Delete.json".into(),
            params: id.clone(),
        },
        BatchCommandSpec::Text {
            key: "x".into(),
            text: "crm.lead.delete.XML?id=1".into(),
        },
        BatchCommandSpec::Text {
            key: "x".into(),
            text: "batch?cmd[y]=crm.lead.delete".into(),
        },
        BatchCommandSpec::Text {
            key: "x".into(),
            text: "crm%2Elead%2Edelete?id=1".into(),
        },
    ] {
        let req = BatchRequest {
            commands: vec![
                BatchCommandSpec::Text {
                    key: "me".into(),
                    text: "user.current".into(),
                },
                spec.clone(),
            ],
            confirm_write: true,
            confirm_destructive: true,
            ..Default::default()
        };
        let e = gate
            .batch(req, &person)
            .await
            .expect_err(&format!("{spec:?}"));
        assert!(is_refusal(&e), "{spec:?}: {e}");
    }
    // The person is never bothered about a call the policy refuses anyway.
    assert_eq!(person.asked(), 0);
    // Exports: never a batch, never a write, never an unknown method; spellings normalised.
    for m in [
        "batch",
        "BATCH.json",
        "crm.lead.delete",
        "crm.lead.purge",
        "crm.lead.add",
    ] {
        let req = ExportRequest {
            opts: ExportOptions::new(m, json!({"cmd": {"a": "crm.lead.delete?id=1"}})),
        };
        let e = gate
            .export(req)
            .await
            .err()
            .unwrap_or_else(|| panic!("export {m}"));
        assert!(is_refusal(&e), "export {m}: {e}");
    }
    assert_eq!(sb.stats().requests, 0, "{:?}", sb.request_log());
    // A read-only call (b24_read) of a batch of reads is still refused: batches are not reads there.
    let req = CallRequest {
        method: "batch".into(),
        params: json!({"cmd": {"a": "crm.lead.list"}}),
        reads_only: true,
        ..Default::default()
    };
    assert!(gate.call(req, &NoPerson).await.is_err());
    // And a plain spelled read goes through, normalised.
    let ok = gate
        .call(
            CallRequest {
                method: "CRM.Lead.List.json".into(),
                ..Default::default()
            },
            &NoPerson,
        )
        .await
        .expect("a read");
    assert!(matches!(ok, CallOutcome::Done { .. }));
    assert_eq!(calls(&sb, "crm.lead.list"), 1);
    assert_eq!(calls(&sb, "crm.lead.delete"), 0);
    sb.shutdown().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn caller_inputs_cannot_skip_or_widen_the_operator_files() {
    let sb = sandbox().await;
    let w = World::new();
    w.user("read_only = true\n");
    // The caller points the config dir at a file that allows everything, lifts strict mode,
    // and brings layers of its own: nothing widens the operator's read-only.
    let wide = w.dir.path().join("elsewhere/policy.toml");
    World::write(&wide, "allow = [\"*\"]\n");
    let caller = CallerInputs {
        flags: AgentPolicy {
            allow: vec!["*".into()],
            allow_unlisted: true,
            ..Default::default()
        },
        extra: vec![],
        config_dir_policy: Some(wide),
    };
    for state in ["a", "b"] {
        let gate = w.gate(&sb, &caller, state, Origin::Cli);
        let e = gate
            .call(
                confirmed("crm.lead.add", json!({"fields": {"TITLE": "x"}})),
                &NoPerson,
            )
            .await
            .expect_err("read-only");
        let r = e.refusal().expect("a refusal");
        assert!(r.operator_locked, "{r}");
        // The records live in the account's state dir, whatever the caller's state dir is.
        assert_eq!(gate.guard_dir(), w.paths.user_state.as_deref().unwrap());
    }
    // The config-dir file *is* the operator's own file: read once, as the operator's.
    let same = CallerInputs {
        config_dir_policy: w.paths.user.clone(),
        ..Default::default()
    };
    let r = resolve(&w.paths, &same, &w.caller_state("c")).unwrap();
    assert_eq!(r.policy.layers.len(), 2, "operator + flags");
    assert_eq!(sb.stats().requests, 0);
    sb.shutdown().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_broken_operator_file_refuses_everything_with_file_and_line() {
    let w = World::new();
    for (text, line) in [
        ("read_only = false\ndeny = [\"crm.{lead\"]\n", 2),
        ("deny = [\"crm.lead.delete\"]\nreadonly = true\n", 2),
        ("max_writes_per_hour = \"ten\"\n", 1),
        ("require_person_confirmation = \"always\"\n", 1),
        ("allow = [\"\"]\n", 1),
    ] {
        w.system(text);
        let e = resolve(&w.paths, &CallerInputs::default(), &w.caller_state("a")).expect_err(text);
        let shown = format!("{e}");
        assert!(
            shown.contains(&format!("policy.toml:{line}")),
            "{text:?}: {shown}"
        );
    }
    // A policy path that cannot be read as a file (a directory) is an error too, not "absent".
    std::fs::remove_file(&w.paths.system).unwrap();
    std::fs::create_dir_all(&w.paths.system).unwrap();
    assert!(resolve(&w.paths, &CallerInputs::default(), &w.caller_state("a")).is_err());
    // Invalid UTF-8.
    std::fs::remove_dir(&w.paths.system).unwrap();
    std::fs::write(&w.paths.system, b"deny = [\"\xff\"]\n").unwrap();
    assert!(resolve(&w.paths, &CallerInputs::default(), &w.caller_state("a")).is_err());
    // A broken caller layer (config dir) refuses too.
    std::fs::remove_file(&w.paths.system).unwrap();
    let bad = w.dir.path().join("cfg/policy.toml");
    World::write(&bad, "deny = [\"[\"]\n");
    let caller = CallerInputs {
        config_dir_policy: Some(bad),
        ..Default::default()
    };
    let e = resolve(&w.paths, &caller, &w.caller_state("a")).unwrap_err();
    assert!(format!("{e}").contains("policy.toml:1"), "{e}");
}

#[tokio::test(flavor = "multi_thread")]
async fn an_operator_deny_of_batch_itself_holds() {
    let sb = sandbox().await;
    let w = World::new();
    w.system("deny = [\"batch\"]\n");
    let gate = w.gate(&sb, &CallerInputs::default(), "a", Origin::Cli);
    let raw = gate
        .call(
            confirmed("batch", json!({"cmd": {"a": "crm.lead.list"}})),
            &NoPerson,
        )
        .await;
    let req = BatchRequest {
        commands: vec![BatchCommandSpec::Text {
            key: "a".into(),
            text: "crm.lead.list".into(),
        }],
        ..Default::default()
    };
    let tool = gate.batch(req, &NoPerson).await;
    let sent = calls(&sb, "batch");
    assert!(
        raw.is_err() && tool.is_err() && sent == 0,
        "HOLE: `deny = [\"batch\"]` in the operator file does not stop batches: raw call ok {}, \
         Gate::batch ok {}, {sent} batch request(s) sent",
        raw.is_ok(),
        tool.is_ok()
    );
    sb.shutdown().await;
}
