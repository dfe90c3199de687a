//! An authenticated client acting as another: client names, revocation and identity cannot
//! be confused, and plans, idempotency records and tokens in portal data stay with their client.
//!
//! A module of `tests/it/mcp/http_attacks.rs`, so it uses its helpers and those of
//! `tests/it/mcp.rs`.

use super::*;

#[tokio::test(flavor = "multi_thread")]
async fn http_client_names_revocation_and_identity_cannot_be_confused() {
    let sb = sandbox(SandboxConfig {
        seed_leads: 2,
        faults: "latency=400ms".parse().unwrap(),
        ..Default::default()
    })
    .await;
    let env = Env::webhook(&sb);
    let policy = env.dir.path().join("ro.toml");
    std::fs::write(&policy, "read_only = true\n").unwrap();
    let mut attempts = 0;
    // Names that are paths, SQL, other cases, blanks or non-ASCII are refused at issue time.
    for bad in [
        "../../etc/passwd",
        "a/b",
        "reader'; DROP TABLE mcp_tokens; --",
        "x' OR '1'='1",
        "Reader",
        "READER",
        "read er",
        "reader\n",
        " reader",
        "rеader", // Cyrillic е
        "ä",
        "-reader",
        "",
        &"a".repeat(65),
    ] {
        let o = env
            .run(&[
                "mcp",
                "token",
                "add",
                bad,
                "--policy",
                policy.to_str().unwrap(),
            ])
            .await;
        attempts += 1;
        assert_eq!(code(&o), 2, "{bad:?}: {}", stderr(&o));
        assert!(!stdout(&o).contains("b24mcp_"), "{bad:?} got a token");
    }
    let token = token_add(&env, "reader", "read_only = true\n").await;
    let other = token_add(&env, "other", "read_only = true\n").await;
    let list = json(&env.run(&["mcp", "token", "list"]).await);
    assert_eq!(list.as_array().map(Vec::len), Some(2), "{list}");

    let server = HttpServer::start(&env, &[]).await;
    let c = http_client(&server.url, &token).await.unwrap();
    let o2 = http_client(&server.url, &other).await.unwrap();
    // A read in flight when the token is revoked finishes; nothing after it is served.
    let in_flight = {
        let url = server.url.clone();
        let t = token.clone();
        tokio::spawn(async move {
            raw_post(
                &url,
                &[("authorization", format!("Bearer {t}").as_str())],
                json!({"jsonrpc": "2.0", "id": 1, "method": "tools/call", "params": {"name": "b24_read",
                       "arguments": {"method": "crm.lead.list"}, "_meta": {"io.modelcontextprotocol/protocolVersion": "2026-07-28"}}}),
            )
            .await
        })
    };
    let r = call(&c, "b24_read", json!({"method": "crm.lead.list"})).await;
    assert!(!is_error(&r), "{}", text(&r));
    // Revoked by another spelling of its name: the same client.
    let o = env.run(&["mcp", "token", "revoke", "READER"]).await;
    attempts += 1;
    assert_eq!(code(&o), 0, "{}", stderr(&o));
    let _ = in_flight.await;
    let seen = calls_of(&sb, "crm.lead.list");
    let p = CallToolRequestParams::new("b24_read").with_arguments(
        json!({"method": "crm.lead.list"})
            .as_object()
            .unwrap()
            .clone(),
    );
    let res = tokio::time::timeout(Duration::from_secs(60), c.call_tool(p)).await;
    assert!(
        matches!(res, Ok(Err(_)) | Err(_)),
        "a revoked token was served: {res:?}"
    );
    for t in [token.clone(), format!(" {token}"), format!("{token} ")] {
        let (status, _, _) = raw_post(
            &server.url,
            &[("authorization", format!("Bearer {t}").as_str())],
            tools_call_body("crm.lead.list"),
        )
        .await;
        attempts += 1;
        assert_eq!(status, 401);
    }
    assert_eq!(calls_of(&sb, "crm.lead.list"), seen);
    // The other client goes on, under its own name.
    let r = call(&o2, "b24_read", json!({"method": "crm.lead.list"})).await;
    assert!(!is_error(&r), "{}", text(&r));
    let audit = audit_records(&env);
    let named = |n: &str| audit.iter().filter(|r| r["client"] == n).count();
    assert!(named("reader") >= 1 && named("other") >= 1, "{audit:#?}");
    assert!(
        audit
            .iter()
            .all(|r| r["client"] == "reader" || r["client"] == "other"),
        "{audit:#?}"
    );
    // Revoking a name that never existed says so (exit 2) and changes nothing.
    let o = env.run(&["mcp", "token", "revoke", "nobody"]).await;
    assert_eq!(code(&o), 2, "{}", stderr(&o));
    eprintln!("client names and revocation: {attempts} attempts");
    o2.cancel().await.ok();
    drop(c);
    sb.shutdown().await;
}

/// A plan is a reviewed write; its id is not a capability another client may use.
#[tokio::test(flavor = "multi_thread")]
async fn http_a_plan_belongs_to_the_client_that_recorded_it() {
    let sb = sandbox_with_leads(1).await;
    let env = Env::webhook(&sb);
    let a = token_add(&env, "planner-a", "allow = [\"crm.lead.*\"]\n").await;
    let b = token_add(&env, "planner-b", "allow = [\"crm.lead.*\"]\n").await;
    let server = HttpServer::start(&env, &[]).await;
    let ca = http_client(&server.url, &a).await.unwrap();
    let cb = http_client(&server.url, &b).await.unwrap();
    let add = json!({"method": "crm.lead.add", "params": {"fields": {"TITLE": "Reviewed for A"}}});
    let planned = call(&ca, "b24_plan", add.clone()).await;
    assert!(!is_error(&planned), "{}", text(&planned));
    let id = structured(&planned)["plan_id"]
        .as_str()
        .unwrap()
        .to_string();

    // B cannot apply A's plan by any route, and is not told whose it is.
    let mut w = add.clone();
    w["plan_id"] = json!(id);
    for (tool, args) in [
        ("b24_apply", json!({"plan_id": id})),
        ("b24_apply", json!({"plan_id": format!(" {id} ")})),
        ("b24_write", w.clone()),
    ] {
        let r = call(&cb, tool, args).await;
        assert!(is_error(&r), "{tool}: B applied A's plan: {}", text(&r));
        assert!(text(&r).contains("another client"), "{}", text(&r));
        assert!(!text(&r).contains("planner-a"), "{}", text(&r));
    }
    // Nor can the CLI (outside MCP) apply it.
    let o = env.run(&["apply", &id, "--confirm-write"]).await;
    assert_ne!(code(&o), 0, "{}", stdout(&o));
    assert_eq!(calls_of(&sb, "crm.lead.add"), 0);
    // A plan recorded outside MCP is not an MCP client's either.
    let cli_plan = json(
        &env.run(&[
            "plan",
            "crm.lead.add",
            "--params",
            r#"{"fields":{"TITLE":"CLI"}}"#,
        ])
        .await,
    );
    let cli_id = cli_plan["id"].as_str().unwrap().to_string();
    let r = call(&ca, "b24_apply", json!({"plan_id": cli_id})).await;
    assert!(is_error(&r), "{}", text(&r));
    assert_eq!(calls_of(&sb, "crm.lead.add"), 0);

    // A applies its own plan, once, under its own name.
    let r = call(&ca, "b24_apply", json!({"plan_id": id})).await;
    assert!(!is_error(&r), "{}", text(&r));
    assert_eq!(calls_of(&sb, "crm.lead.add"), 1);
    let audit = audit_records(&env);
    assert!(
        audit.iter().any(|r| r["client"] == "planner-a"
            && r["plan_id"] == json!(id)
            && r["decision"] == "allow"),
        "{audit:#?}"
    );
    assert!(
        !audit
            .iter()
            .any(|r| r["client"] == "planner-b" && r["decision"] == "allow"),
        "{audit:#?}"
    );
    ca.cancel().await.ok();
    cb.cancel().await.ok();
    sb.shutdown().await;
}

/// An HTTP client's idempotency keys are stored as `mcp:NAME:KEY`; a caller outside HTTP MCP
/// cannot give such a key to take over (or pre-empt) that client's record.
#[tokio::test(flavor = "multi_thread")]
async fn http_a_clients_idempotency_record_cannot_be_taken_from_outside() {
    let sb = sandbox_with_leads(0).await;
    let env = Env::webhook(&sb);
    let w = token_add(&env, "writer", "allow = [\"crm.lead.*\"]\n").await;
    let server = HttpServer::start(&env, &[]).await;
    let c = http_client(&server.url, &w).await.unwrap();
    let params = r#"{"fields":{"TITLE":"Keyed"}}"#;
    // From the CLI (and stdio MCP): the key is refused before anything is sent.
    for key in ["mcp:writer:k1", "mcp:writer:k2", "mcp:"] {
        let o = env
            .run(&[
                "call",
                "crm.lead.add",
                "--params",
                params,
                "--confirm-write",
                "--idempotency-key",
                key,
            ])
            .await;
        assert_eq!(code(&o), 2, "{key}: {}", stderr(&o));
        assert!(stderr(&o).contains("reserved"), "{}", stderr(&o));
    }
    let stdio = connect(&env).await;
    let r = call(
        &stdio,
        "b24_write",
        json!({"method": "crm.lead.add", "params": {"fields": {"TITLE": "Keyed"}}, "confirm": true,
               "idempotency_key": "mcp:writer:k2"}),
    )
    .await;
    assert!(is_error(&r), "{}", text(&r));
    stdio.cancel().await.ok();
    assert_eq!(calls_of(&sb, "crm.lead.add"), 0);
    // The client's own writes under those keys are its own, written once each.
    for key in ["k1", "k2", "k1"] {
        let r = call(
            &c,
            "b24_write",
            json!({"method": "crm.lead.add", "params": {"fields": {"TITLE": "Keyed"}}, "confirm": true,
                   "idempotency_key": key}),
        )
        .await;
        assert!(!is_error(&r), "{}", text(&r));
    }
    assert_eq!(calls_of(&sb, "crm.lead.add"), 2);
    c.cancel().await.ok();
    sb.shutdown().await;
}

/// A token pasted into portal data does not reach another client through a tool's answer (it
/// could act as the token's owner then), nor the audit log.
#[tokio::test(flavor = "multi_thread")]
async fn http_a_token_in_portal_data_reaches_no_other_client() {
    let sb = sandbox_with_leads(0).await;
    let env = Env::webhook(&sb);
    let writer = token_add(&env, "writer", "allow = [\"crm.lead.*\"]\n").await;
    let reader = token_add(&env, "reader", "read_only = true\n").await;
    let server = HttpServer::start(&env, &[]).await;
    let w = http_client(&server.url, &writer).await.unwrap();
    let r = http_client(&server.url, &reader).await.unwrap();
    let title = format!("call me with {writer}");
    let added = call(
        &w,
        "b24_write",
        json!({"method": "crm.lead.add", "params": {"fields": {"TITLE": title}}, "confirm": true}),
    )
    .await;
    assert!(!is_error(&added), "{}", text(&added));
    assert_eq!(calls_of(&sb, "crm.lead.add"), 1);
    for (tool, args) in [
        (
            "b24_read",
            json!({"method": "crm.lead.list", "params": {"select": ["ID", "TITLE"]}}),
        ),
        (
            "b24_export",
            json!({"method": "crm.lead.list", "params": {"select": ["ID", "TITLE"]}}),
        ),
    ] {
        let got = call(&r, tool, args).await;
        assert!(!is_error(&got), "{}", text(&got));
        let all = format!("{} {}", text(&got), structured(&got));
        assert!(
            all.contains("call me with b24mcp_[redacted]"),
            "{tool}: {all}"
        );
        assert_no_secrets(tool, all.as_bytes(), std::slice::from_ref(&writer));
    }
    let raw = std::fs::read(env.state_dir().join("audit.jsonl")).unwrap();
    assert_no_secrets("the audit log", &raw, &[writer, reader]);
    w.cancel().await.ok();
    r.cancel().await.ok();
    sb.shutdown().await;
}
