//! How `b24 mcp --http` serves: no cleartext off loopback, TLS, a clean stop on SIGTERM, a
//! person asked on the request's stream, and a dropped stream resumed with `Last-Event-ID`.
//!
//! A module of `tests/it/mcp.rs`, so it uses its helpers.

use super::*;

#[tokio::test(flavor = "multi_thread")]
async fn http_refuses_cleartext_off_loopback_serves_tls_and_stops_on_sigterm() {
    let sb = sandbox_with_leads(1).await;
    let env = Env::webhook(&sb);
    // A non-loopback address without TLS is refused before anything listens.
    let o = env
        .run(&[
            "mcp",
            "--http",
            "0.0.0.0:0",
            "--allowed-host",
            "mcp.example.com",
        ])
        .await;
    assert_eq!(code(&o), 2, "{}", stderr(&o));
    assert!(stderr(&o).contains("--tls-cert"), "{}", stderr(&o));
    // A wildcard address must name its host names (DNS rebinding).
    let o = env
        .run(&["mcp", "--http", "0.0.0.0:0", "--behind-tls-proxy"])
        .await;
    assert_eq!(code(&o), 2, "{}", stderr(&o));
    assert!(stderr(&o).contains("--allowed-host"), "{}", stderr(&o));

    // HTTPS with the operator's certificate.
    let ck = rcgen::generate_simple_self_signed(vec!["localhost".to_string()]).unwrap();
    let (cert, key) = (
        env.dir.path().join("cert.pem"),
        env.dir.path().join("key.pem"),
    );
    std::fs::write(&cert, ck.cert.pem()).unwrap();
    std::fs::write(&key, ck.signing_key.serialize_pem()).unwrap();
    let token = token_add(&env, "tls", "read_only = true\n").await;
    let mut server = HttpServer::start(
        &env,
        &[
            "--tls-cert",
            cert.to_str().unwrap(),
            "--tls-key",
            key.to_str().unwrap(),
        ],
    )
    .await;
    assert!(server.url.starts_with("https://"), "{}", server.url);
    let url = server.url.replace("127.0.0.1", "localhost");
    let http = reqwest::Client::builder()
        .add_root_certificate(reqwest::Certificate::from_pem(ck.cert.pem().as_bytes()).unwrap())
        .build()
        .unwrap();
    let cfg = StreamableHttpClientTransportConfig::with_uri(url).auth_header(token);
    let client =
        ().serve(StreamableHttpClientTransport::with_client(http, cfg))
            .await
            .expect("initialize over https");
    let r = call(&client, "b24_read", json!({"method": "crm.lead.list"})).await;
    assert!(!is_error(&r), "{}", text(&r));
    assert_eq!(calls_of(&sb, "crm.lead.list"), 1);

    // SIGTERM with a session open: the server ends its sessions and exits 0.
    let pid = server.child.id().expect("pid") as i32;
    // SAFETY-free: libc::kill on the child we started.
    assert_eq!(unsafe_free_kill(pid), 0);
    let status = tokio::time::timeout(Duration::from_secs(20), server.child.wait())
        .await
        .expect("the server stops within the grace period")
        .unwrap();
    assert!(status.success(), "{status:?}: {}", server.stderr());
    // The task draining stderr may not have read the last line yet when the process ends:
    // wait for it to reach the end of the pipe.
    let err = server.stderr_at_exit().await;
    assert!(err.contains("stopped"), "{err}");
    drop(client);
    sb.shutdown().await;
}

/// SIGTERM to `pid` through the `kill` command (the workspace forbids unsafe code).
fn unsafe_free_kill(pid: i32) -> i32 {
    std::process::Command::new("kill")
        .args(["-TERM", &pid.to_string()])
        .status()
        .map(|s| s.code().unwrap_or(-1))
        .unwrap_or(-1)
}

/// Over HTTP the person behind a client is asked too (elicitation on the request's stream), and
/// the confirmation is recorded under the client's name.
#[tokio::test(flavor = "multi_thread")]
async fn http_a_person_confirms_a_destructive_call_through_the_client() {
    let sb = sandbox_with_leads(3).await;
    let env = Env::webhook(&sb);
    let token = token_add(&env, "cleaner", "allow = [\"crm.lead.*\"]\n").await;
    let server = HttpServer::start(&env, &[]).await;
    for accept in [false, true] {
        let cfg = StreamableHttpClientTransportConfig::with_uri(server.url.clone())
            .auth_header(token.clone());
        let client = Person { accept }
            .serve(StreamableHttpClientTransport::from_config(cfg))
            .await
            .expect("initialize");
        let r = call(
            &client,
            "b24_write",
            json!({"method": "crm.lead.delete", "params": {"id": 1}, "confirm": true}),
        )
        .await;
        if accept {
            assert!(!is_error(&r), "{}", text(&r));
            assert_eq!(calls_of(&sb, "crm.lead.delete"), 1);
        } else {
            assert!(
                is_error(&r) && text(&r).contains("declined"),
                "{}",
                text(&r)
            );
            assert_eq!(calls_of(&sb, "crm.lead.delete"), 0);
        }
        client.cancel().await.ok();
    }
    let audit = audit_records(&env);
    assert!(
        audit.iter().any(|r| r["decision"] == "confirmed_by_person"
            && r["via"] == "elicitation"
            && r["client"] == "cleaner"),
        "{audit:#?}"
    );
    sb.shutdown().await;
}

/// A client whose connection drops while a tool runs resumes the stream with `Last-Event-ID`
/// and gets the answer without the call being sent twice.
#[tokio::test(flavor = "multi_thread")]
async fn http_a_dropped_stream_resumes_with_last_event_id() {
    let sb = sandbox(SandboxConfig {
        seed_leads: 2,
        faults: "latency=1500ms".parse().unwrap(),
        ..Default::default()
    })
    .await;
    let env = Env::webhook(&sb);
    let token = token_add(&env, "resumer", "read_only = true\n").await;
    let server = HttpServer::start(&env, &[]).await;
    let bearer = format!("Bearer {token}");
    let (status, hdrs, _) = raw_post(
        &server.url,
        &[("authorization", bearer.as_str())],
        initialize_body(),
    )
    .await;
    assert_eq!(status, 200);
    let sid = hdrs["mcp-session-id"].to_str().unwrap().to_string();
    let session = [
        ("authorization", bearer.as_str()),
        ("mcp-session-id", sid.as_str()),
        ("mcp-protocol-version", "2025-06-18"),
    ];
    let (status, _, _) = raw_post(
        &server.url,
        &session,
        json!({"jsonrpc": "2.0", "method": "notifications/initialized"}),
    )
    .await;
    assert_eq!(status, 202);

    // The call starts; the client reads the priming event and then loses the connection.
    let mut rb = reqwest::Client::new()
        .post(&server.url)
        .header("content-type", "application/json")
        .header("accept", "application/json, text/event-stream");
    for (k, v) in session {
        rb = rb.header(k, v);
    }
    let mut resp = rb
        .body(tools_call_body("crm.lead.list").to_string())
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    let mut seen = String::new();
    let last_id = loop {
        let chunk = tokio::time::timeout(Duration::from_secs(10), resp.chunk())
            .await
            .expect("the priming event in time")
            .unwrap()
            .expect("stream open");
        seen.push_str(&String::from_utf8_lossy(&chunk));
        if let Some(id) = seen
            .lines()
            .find_map(|l| l.strip_prefix("id: ").map(str::to_string))
        {
            break id;
        }
    };
    assert!(!seen.contains("\"result\""), "answered too early: {seen}");
    drop(resp);

    // Reconnect with Last-Event-ID: the answer arrives, and the portal saw one call.
    let mut rb = reqwest::Client::new()
        .get(&server.url)
        .header("accept", "text/event-stream")
        .header("last-event-id", last_id.as_str());
    for (k, v) in session {
        rb = rb.header(k, v);
    }
    let mut resp = rb.send().await.unwrap();
    assert_eq!(resp.status(), 200);
    let mut body = String::new();
    while !body.contains("\"result\"") {
        let chunk = tokio::time::timeout(Duration::from_secs(10), resp.chunk())
            .await
            .unwrap_or_else(|_| panic!("no answer after resuming: {body}"))
            .unwrap();
        match chunk {
            Some(c) => body.push_str(&String::from_utf8_lossy(&c)),
            None => panic!("the resumed stream ended without the answer: {body}"),
        }
    }
    assert!(body.contains("\"id\":2"), "{body}");
    assert!(body.contains("crm.lead.list"), "{body}");
    assert_eq!(calls_of(&sb, "crm.lead.list"), 1);
    sb.shutdown().await;
}
