//! `b24 mcp --http` and its clients: bearer tokens, each client's own policy, audit identity
//! and write budget (shared by a cluster through PostgreSQL), revoked tokens, concurrent
//! sessions, and idempotency keys per client.
//!
//! A module of `tests/it/mcp.rs`, so it uses its helpers.

use super::*;

#[tokio::test(flavor = "multi_thread")]
async fn http_needs_a_valid_token_and_nothing_unauthenticated_reaches_the_portal() {
    let sb = sandbox_with_leads(2).await;
    let env = Env::webhook(&sb);
    let token = token_add(&env, "reader", "read_only = true\n").await;
    let server = HttpServer::start(&env, &[]).await;
    assert!(
        server.url.starts_with("http://127.0.0.1:"),
        "{}",
        server.url
    );

    // No token, a wrong token, a token of the wrong scheme, the token in the query string: 401,
    // whatever the request asks (initialize or a tool call straight away).
    let wrong = format!("{token}x");
    let cases: Vec<(Vec<(&str, String)>, bool)> = vec![
        (vec![], false),
        (vec![("authorization", format!("Bearer {wrong}"))], true),
        (vec![("authorization", "Bearer b24mcp_".to_string())], true),
        (vec![("authorization", format!("Basic {token}"))], true),
        (vec![("authorization", "Bearer".to_string())], true),
    ];
    for (headers, invalid) in &cases {
        let h: Vec<(&str, &str)> = headers.iter().map(|(k, v)| (*k, v.as_str())).collect();
        for body in [initialize_body(), tools_call_body("crm.lead.list")] {
            let (status, hdrs, text) = raw_post(&server.url, &h, body).await;
            assert_eq!(status, 401, "{headers:?}: {text}");
            let challenge = hdrs["www-authenticate"].to_str().unwrap();
            assert!(challenge.starts_with("Bearer "), "{challenge}");
            assert_eq!(challenge.contains("invalid_token"), *invalid, "{challenge}");
            assert!(!text.contains(&token), "the answer echoes the token");
        }
    }
    let (status, _, _) = raw_post(
        &format!("{}?access_token={token}", server.url),
        &[],
        tools_call_body("crm.lead.list"),
    )
    .await;
    assert_eq!(status, 401, "a token in the URL is not accepted");
    // The real client with a wrong token cannot even initialize.
    let Err(e) = http_client(&server.url, &wrong).await else {
        panic!("a client with a wrong token initialized")
    };
    assert!(
        e.contains("401") || e.to_lowercase().contains("auth"),
        "{e}"
    );
    assert!(
        sb.request_log().is_empty(),
        "unauthenticated requests reached the portal: {:?}",
        sb.request_log()
    );
    assert!(
        audit_records(&env).is_empty(),
        "unauthenticated requests reached the gate"
    );

    // A foreign browser Origin is refused (DNS rebinding), even with a valid token.
    let bearer = format!("Bearer {token}");
    let (status, _, _) = raw_post(
        &server.url,
        &[
            ("authorization", bearer.as_str()),
            ("origin", "http://evil.example"),
        ],
        initialize_body(),
    )
    .await;
    assert_eq!(status, 403);
    // So is a Host that is not this server's (a rebinding attacker's name for 127.0.0.1).
    let (status, _, _) = raw_post(
        &server.url,
        &[
            ("authorization", bearer.as_str()),
            ("host", "attacker.example"),
        ],
        initialize_body(),
    )
    .await;
    assert_eq!(status, 403);
    assert!(sb.request_log().is_empty());

    // With the token: the guarded path, with the client's name in the audit record.
    let client = http_client(&server.url, &token).await.expect("initialize");
    let r = call(&client, "b24_read", json!({"method": "crm.lead.list"})).await;
    assert!(!is_error(&r), "{}", text(&r));
    assert_eq!(structured(&r)["result"].as_array().map(Vec::len), Some(2));
    assert_eq!(calls_of(&sb, "crm.lead.list"), 1);
    let audit = audit_records(&env);
    assert!(
        audit.iter().any(|r| r["method"] == "crm.lead.list"
            && r["origin"] == "mcp"
            && r["client"] == "reader"),
        "{audit:#?}"
    );
    // The token never reaches the audit log, the guard store or stderr.
    let raw = std::fs::read(env.state_dir().join("audit.jsonl")).unwrap();
    assert_no_secrets("the audit log", &raw, std::slice::from_ref(&token));
    let db = std::fs::read(env.state_dir().join("guard.db")).unwrap();
    assert_no_secrets("the guard store", &db, &[token[7..].to_string()]);
    assert_no_secrets("the server's stderr", server.stderr().as_bytes(), &[token]);
    client.cancel().await.ok();
    sb.shutdown().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn http_tokens_have_their_own_policy_audit_identity_and_write_budget() {
    let sb = sandbox_with_leads(1).await;
    let env = Env::webhook(&sb);
    let reader = token_add(&env, "reader", "read_only = true\n").await;
    let leads = token_add(
        &env,
        "lead-writer",
        "allow = [\"crm.lead.*\"]\nmax_writes_per_hour = 1\n",
    )
    .await;
    let other = token_add(
        &env,
        "second-writer",
        "allow = [\"crm.lead.*\"]\nmax_writes_per_hour = 1\n",
    )
    .await;
    let server = HttpServer::start(&env, &[]).await;
    let (a, b, c) = tokio::join!(
        http_client(&server.url, &reader),
        http_client(&server.url, &leads),
        http_client(&server.url, &other)
    );
    let (a, b, c) = (a.unwrap(), b.unwrap(), c.unwrap());
    let add = |title: &str| json!({"method": "crm.lead.add", "params": {"fields": {"TITLE": title}}, "confirm": true});

    // Token A (read-only) is refused the write token B may do; nothing reaches the portal.
    let r = call(&a, "b24_write", add("from reader")).await;
    assert!(is_error(&r), "{}", text(&r));
    assert!(text(&r).contains("read-only"), "{}", text(&r));
    assert!(text(&r).contains("MCP client reader"), "{}", text(&r));
    // The fix names who can change it, not CLI flags the model does not have.
    assert!(
        !text(&r).contains("--read-only") && text(&r).contains("ask the operator"),
        "{}",
        text(&r)
    );
    assert_eq!(calls_of(&sb, "crm.lead.add"), 0);
    let r = call(&b, "b24_write", add("from lead-writer")).await;
    assert!(!is_error(&r), "{}", text(&r));
    assert_eq!(calls_of(&sb, "crm.lead.add"), 1);

    // B's file allows only leads: deals are refused for B and readable for A.
    let r = call(&b, "b24_read", json!({"method": "crm.deal.list"})).await;
    assert!(is_error(&r), "{}", text(&r));
    let r = call(&a, "b24_read", json!({"method": "crm.deal.list"})).await;
    assert!(!is_error(&r), "{}", text(&r));
    assert_eq!(calls_of(&sb, "crm.deal.list"), 1);

    // Budgets are per client: B has spent its one write, C still has its own.
    let r = call(&b, "b24_write", add("B again")).await;
    assert!(is_error(&r), "{}", text(&r));
    assert!(text(&r).contains("write budget"), "{}", text(&r));
    assert_eq!(calls_of(&sb, "crm.lead.add"), 1);
    let r = call(&c, "b24_write", add("from second-writer")).await;
    assert!(!is_error(&r), "{}", text(&r));
    assert_eq!(calls_of(&sb, "crm.lead.add"), 2);

    // The audit log names each client, never a token.
    let audit = audit_records(&env);
    let has = |client: &str, decision: &str| {
        audit.iter().any(|r| {
            r["client"] == client && r["method"] == "crm.lead.add" && r["decision"] == decision
        })
    };
    assert!(has("reader", "deny"), "{audit:#?}");
    assert!(has("lead-writer", "allow"), "{audit:#?}");
    assert!(has("lead-writer", "deny"), "{audit:#?}");
    assert!(has("second-writer", "allow"), "{audit:#?}");
    assert!(
        audit
            .iter()
            .filter(|r| r["origin"] == "mcp")
            .all(|r| r["client"].is_string()),
        "a record over HTTP without its client: {audit:#?}"
    );
    let raw = std::fs::read(env.state_dir().join("audit.jsonl")).unwrap();
    assert_no_secrets("the audit log", &raw, &[reader, leads, other]);

    // A client's policy file that goes missing refuses that client's calls (fail closed).
    std::fs::remove_file(env.dir.path().join("reader.policy.toml")).unwrap();
    let before = sb.request_log().len();
    let r = call(&a, "b24_read", json!({"method": "crm.lead.list"})).await;
    assert!(is_error(&r), "{}", text(&r));
    assert!(text(&r).contains("reader"), "{}", text(&r));
    assert_eq!(sb.request_log().len(), before);
    for cl in [a, b, c] {
        cl.cancel().await.ok();
    }
    sb.shutdown().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn http_revoked_token_is_refused_at_its_next_request() {
    let sb = sandbox_with_leads(1).await;
    let env = Env::webhook(&sb);
    let token = token_add(&env, "temp", "read_only = true\n").await;
    let keep = token_add(&env, "keep", "read_only = true\n").await;
    let server = HttpServer::start(&env, &[]).await;
    let client = http_client(&server.url, &token).await.expect("initialize");
    let kept = http_client(&server.url, &keep).await.expect("initialize");
    let r = call(&client, "b24_read", json!({"method": "crm.lead.list"})).await;
    assert!(!is_error(&r), "{}", text(&r));
    assert_eq!(calls_of(&sb, "crm.lead.list"), 1);

    let o = env.run(&["mcp", "token", "revoke", "temp"]).await;
    assert_eq!(code(&o), 0, "{}", stderr(&o));
    assert_eq!(json(&o)["revoked"], true);
    let o = env.run(&["mcp", "token", "list"]).await;
    let list = json(&o);
    assert_eq!(list[1]["name"], "temp");
    assert_eq!(list[1]["active"], false);
    assert!(!stdout(&o).contains("b24mcp_"), "list shows a token");

    // The open session of the revoked token gets nothing more.
    let p = CallToolRequestParams::new("b24_read").with_arguments(
        json!({"method": "crm.lead.list"})
            .as_object()
            .unwrap()
            .clone(),
    );
    let res = tokio::time::timeout(Duration::from_secs(60), client.call_tool(p)).await;
    assert!(
        matches!(res, Ok(Err(_)) | Err(_)),
        "a revoked token was served: {res:?}"
    );
    // A new connection with it is refused; the other client goes on.
    assert!(http_client(&server.url, &token).await.is_err());
    let (status, _, _) = raw_post(
        &server.url,
        &[("authorization", format!("Bearer {token}").as_str())],
        initialize_body(),
    )
    .await;
    assert_eq!(status, 401);
    assert_eq!(calls_of(&sb, "crm.lead.list"), 1);
    let r = call(&kept, "b24_read", json!({"method": "crm.lead.list"})).await;
    assert!(!is_error(&r), "{}", text(&r));
    assert_eq!(calls_of(&sb, "crm.lead.list"), 2);
    // A revoked name is not issued again (old audit records keep meaning one client).
    let f = env.dir.path().join("temp.policy.toml");
    let o = env
        .run(&[
            "mcp",
            "token",
            "add",
            "temp",
            "--policy",
            f.to_str().unwrap(),
        ])
        .await;
    assert_eq!(code(&o), 2, "{}", stderr(&o));
    kept.cancel().await.ok();
    drop(client);
    sb.shutdown().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn http_concurrent_sessions_stay_apart() {
    let sb = sandbox_with_leads(3).await;
    let env = Env::webhook(&sb);
    let a = token_add(&env, "agent-a", "read_only = true\n").await;
    let b = token_add(&env, "agent-b", "read_only = true\n").await;
    let server = HttpServer::start(&env, &[]).await;

    // Eight clients (four per token) calling at the same time: six with sessions (the
    // `initialize` era), two stateless (2026-07-28).
    let mut tasks = Vec::new();
    for i in 0..8 {
        let (url, tok) = (
            server.url.clone(),
            if i % 2 == 0 { a.clone() } else { b.clone() },
        );
        tasks.push(tokio::spawn(async move {
            let c = if i >= 6 {
                http_client_stateless(&url, &tok).await
            } else {
                http_client(&url, &tok).await.expect("initialize")
            };
            for _ in 0..3 {
                let r = call(&c, "b24_read", json!({"method": "crm.lead.list"})).await;
                assert!(!is_error(&r), "{}", text(&r));
                assert_eq!(structured(&r)["result"].as_array().map(Vec::len), Some(3));
            }
            c.cancel().await.ok();
        }));
    }
    for t in tasks {
        t.await.expect("session task");
    }
    assert_eq!(calls_of(&sb, "crm.lead.list"), 24);
    let audit = audit_records(&env);
    let count = |c: &str| {
        audit
            .iter()
            .filter(|r| r["client"] == c && r["method"] == "crm.lead.list")
            .count()
    };
    // Each read is recorded once (intent and outcome may be one or two records).
    assert!(
        count("agent-a") >= 12 && count("agent-a") == count("agent-b"),
        "{audit:#?}"
    );

    // A session belongs to the token that opened it: another valid token cannot use it.
    let (status, hdrs, _) = raw_post(
        &server.url,
        &[("authorization", format!("Bearer {a}").as_str())],
        initialize_body(),
    )
    .await;
    assert_eq!(status, 200);
    let sid = hdrs["mcp-session-id"].to_str().unwrap().to_string();
    let before = calls_of(&sb, "crm.lead.list");
    let (status, _, _) = raw_post(
        &server.url,
        &[
            ("authorization", format!("Bearer {b}").as_str()),
            ("mcp-session-id", sid.as_str()),
            ("mcp-protocol-version", "2025-06-18"),
        ],
        tools_call_body("crm.lead.list"),
    )
    .await;
    assert_eq!(status, 404);
    assert_eq!(calls_of(&sb, "crm.lead.list"), before);
    sb.shutdown().await;
}

/// With `B24_STORE_URL=postgres://…` a client's budget is shared by every host serving it: two
/// `b24 mcp --http` hosts (separate state dirs, one database) each issue a token named `agent`;
/// its one write per hour is spent on the first host and refused on the second, while another
/// client there still has its own.
#[tokio::test(flavor = "multi_thread")]
async fn http_client_budgets_are_shared_by_a_cluster_through_postgres() {
    let Some(url) = pg_test_url("mcp_client_budget").await else {
        return;
    };
    let sb = sandbox_with_leads(0).await;
    let policy = "allow = [\"crm.lead.*\"]\nmax_writes_per_hour = 1\n";
    let mut hosts = Vec::new();
    for _ in 0..2 {
        let mut env = Env::webhook(&sb);
        env.set("B24_STORE_URL", &url);
        hosts.push(env);
    }
    // The tokens live in PostgreSQL too: one issued on the first host serves the client on
    // both (and the name cannot be issued a second time on the other).
    let t1 = token_add(&hosts[0], "agent", policy).await;
    let t2 = t1.clone();
    let other = token_add(&hosts[1], "other", policy).await;
    let s1 = HttpServer::start(&hosts[0], &[]).await;
    let s2 = HttpServer::start(&hosts[1], &[]).await;
    let a1 = http_client(&s1.url, &t1).await.unwrap();
    let a2 = http_client(&s2.url, &t2).await.unwrap();
    let o2 = http_client(&s2.url, &other).await.unwrap();
    let add =
        json!({"method": "crm.lead.add", "params": {"fields": {"TITLE": "x"}}, "confirm": true});
    let r = call(&a1, "b24_write", add.clone()).await;
    assert!(!is_error(&r), "{}", text(&r));
    let r = call(&a2, "b24_write", add.clone()).await;
    assert!(
        is_error(&r) && text(&r).contains("write budget"),
        "{}",
        text(&r)
    );
    let r = call(&o2, "b24_write", add).await;
    assert!(!is_error(&r), "{}", text(&r));
    assert_eq!(calls_of(&sb, "crm.lead.add"), 2);
    for c in [a1, a2, o2] {
        c.cancel().await.ok();
    }
    sb.shutdown().await;
}

/// Idempotency keys belong to their client: the same key from another client is a new write
/// (not a replay of the first client's answer, nor a collision with it).
#[tokio::test(flavor = "multi_thread")]
async fn http_idempotency_keys_are_per_client() {
    let sb = sandbox_with_leads(0).await;
    let env = Env::webhook(&sb);
    let a = token_add(&env, "writer-a", "allow = [\"crm.lead.*\"]\n").await;
    let b = token_add(&env, "writer-b", "allow = [\"crm.lead.*\"]\n").await;
    let server = HttpServer::start(&env, &[]).await;
    let ca = http_client(&server.url, &a).await.unwrap();
    let cb = http_client(&server.url, &b).await.unwrap();
    let args = json!({"method": "crm.lead.add", "params": {"fields": {"TITLE": "Once"}},
                      "confirm": true, "idempotency_key": "retry-1"});
    let first = call(&ca, "b24_write", args.clone()).await;
    assert!(!is_error(&first), "{}", text(&first));
    let again = call(&ca, "b24_write", args.clone()).await;
    assert_eq!(structured(&again)["replayed"], true, "{}", text(&again));
    assert_eq!(calls_of(&sb, "crm.lead.add"), 1);
    let other = call(&cb, "b24_write", args).await;
    assert!(!is_error(&other), "{}", text(&other));
    assert_eq!(structured(&other)["replayed"], false, "{}", text(&other));
    assert_ne!(structured(&other)["result"], structured(&first)["result"]);
    assert_eq!(calls_of(&sb, "crm.lead.add"), 2);
    ca.cancel().await.ok();
    cb.cancel().await.ok();
    sb.shutdown().await;
}
