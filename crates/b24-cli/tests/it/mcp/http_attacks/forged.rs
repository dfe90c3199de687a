//! A forger on the network without a valid token, and malformed requests of every kind:
//! nothing reaches the portal and the server keeps serving.
//!
//! A module of `tests/it/mcp/http_attacks.rs`, so it uses its helpers and those of
//! `tests/it/mcp.rs`.

use super::*;

#[tokio::test(flavor = "multi_thread")]
async fn http_forged_and_malformed_requests_reach_nothing_and_the_server_keeps_serving() {
    let sb = sandbox_with_leads(2).await;
    let env = Env::webhook(&sb);
    let reader = token_add(&env, "reader", "read_only = true\n").await;
    let writer = token_add(&env, "writer", "allow = [\"crm.lead.*\"]\n").await;
    let server = HttpServer::start(&env, &[]).await;
    let url = server.url.clone();
    let port = url.split(':').nth(2).unwrap().split('/').next().unwrap();
    let call_body = serde_json::to_vec(&tools_call_body("crm.lead.list")).unwrap();
    let init = serde_json::to_vec(&initialize_body()).unwrap();
    let mut attempts = 0;

    // 1. The token anywhere but one `Authorization: Bearer` header, or not quite the token.
    let upper = reader.to_uppercase();
    let bare = reader.trim_start_matches("b24mcp_").to_string();
    let cases: Vec<AuthCase> = vec![
        (
            "cookie",
            vec![(
                "cookie",
                format!("token={reader}; access_token={reader}").into_bytes(),
            )],
        ),
        (
            "x-api-key",
            vec![("x-api-key", reader.clone().into_bytes())],
        ),
        (
            "proxy-authorization",
            vec![(
                "proxy-authorization",
                format!("Bearer {reader}").into_bytes(),
            )],
        ),
        (
            "x-authorization",
            vec![("x-authorization", format!("Bearer {reader}").into_bytes())],
        ),
        (
            "tab after the scheme",
            vec![("authorization", format!("Bearer\t{reader}").into_bytes())],
        ),
        (
            "no blank after the scheme",
            vec![("authorization", format!("Bearer{reader}").into_bytes())],
        ),
        (
            "junk after the token",
            vec![("authorization", format!("Bearer {reader} x").into_bytes())],
        ),
        (
            "the token in upper case",
            vec![("authorization", format!("Bearer {upper}").into_bytes())],
        ),
        (
            "the token without its prefix",
            vec![("authorization", format!("Bearer {bare}").into_bytes())],
        ),
        (
            "a NBSP after the token",
            vec![(
                "authorization",
                [format!("Bearer {reader}").as_bytes(), "\u{a0}".as_bytes()].concat(),
            )],
        ),
        (
            "a fullwidth scheme",
            vec![("authorization", format!("Ｂearer {reader}").into_bytes())],
        ),
        (
            "Basic with the token",
            vec![("authorization", format!("Basic {reader}").into_bytes())],
        ),
        (
            "the token as the scheme",
            vec![("authorization", reader.clone().into_bytes())],
        ),
        (
            "a 60 KB token",
            vec![(
                "authorization",
                format!("Bearer {}", "A".repeat(60_000)).into_bytes(),
            )],
        ),
        // Authorization is a singleton: two copies are refused whichever is valid, so a proxy
        // reading the other copy cannot be played against this server.
        (
            "valid, then junk",
            vec![
                ("authorization", format!("Bearer {reader}").into_bytes()),
                ("authorization", b"Bearer junk".to_vec()),
            ],
        ),
        (
            "junk, then valid",
            vec![
                ("authorization", b"Bearer junk".to_vec()),
                ("authorization", format!("Bearer {reader}").into_bytes()),
            ],
        ),
        (
            "two clients' tokens",
            vec![
                ("authorization", format!("Bearer {reader}").into_bytes()),
                ("authorization", format!("Bearer {writer}").into_bytes()),
            ],
        ),
    ];
    for (what, headers) in &cases {
        for body in [&init, &call_body] {
            let h: Vec<(&str, &[u8])> = headers.iter().map(|(k, v)| (*k, v.as_slice())).collect();
            let (status, text) = send(&url, reqwest::Method::POST, &h, Some(body.clone())).await;
            attempts += 1;
            assert_eq!(status, 401, "{what}: {text}");
            assert!(
                !text.contains(&reader) && !text.contains(&writer),
                "{what}: echoes a token"
            );
        }
    }
    for q in ["access_token", "token", "authorization", "bearer"] {
        let (status, _) = send(
            &format!("{url}?{q}={reader}"),
            reqwest::Method::POST,
            &[],
            Some(call_body.clone()),
        )
        .await;
        attempts += 1;
        assert_eq!(status, 401, "the token in ?{q}=");
    }
    // The scheme is case-insensitive (RFC 9110), and the client is still the right one.
    let (status, _) = send(
        &url,
        reqwest::Method::POST,
        &[("authorization", format!("bEARER {reader}").as_bytes())],
        Some(init.clone()),
    )
    .await;
    attempts += 1;
    assert_eq!(status, 200);
    assert!(portal_calls(&sb).is_empty(), "{:?}", portal_calls(&sb));
    assert!(
        audit_records(&env).is_empty(),
        "unauthenticated requests reached the gate"
    );

    // 2. Hosts and Origins a DNS-rebinding page (or a confused proxy) could present, with a
    //    valid token: never served.
    let bearer = format!("Bearer {reader}");
    let foreign_hosts = [
        "localhost.evil.example".to_string(),
        "localhost.".to_string(),
        format!("localhost.:{port}"),
        "127.0.0.1.evil.example".to_string(),
        "127.0.0.2".to_string(),
        "[::ffff:127.0.0.1]".to_string(),
        "127.1".to_string(),
        "2130706433".to_string(),
        "0.0.0.0".to_string(),
        "evil.example".to_string(),
        format!("evil.example:{port}@localhost"),
        "localhost@evil.example".to_string(),
        "localhost, evil.example".to_string(),
    ];
    for h in &foreign_hosts {
        let (status, text) = send(
            &url,
            reqwest::Method::POST,
            &[("authorization", bearer.as_bytes()), ("host", h.as_bytes())],
            Some(init.clone()),
        )
        .await;
        attempts += 1;
        assert!(
            status == 403 || status == 400,
            "Host {h:?}: {status} {text}"
        );
    }
    for o in [
        "null",
        "http://localhost",
        "http://127.0.0.1",
        "http://[::1]",
        "http://localhost.evil.example",
        "HTTP://EVIL.EXAMPLE",
        "file://",
    ] {
        let (status, text) = send(
            &url,
            reqwest::Method::POST,
            &[
                ("authorization", bearer.as_bytes()),
                ("origin", o.as_bytes()),
            ],
            Some(init.clone()),
        )
        .await;
        attempts += 1;
        assert_eq!(status, 403, "Origin {o:?}: {text}");
    }
    // Two Host headers, the loopback one first (RFC 9112: 400), straight onto the socket.
    for hosts in [
        format!("Host: localhost:{port}\r\nHost: evil.example\r\n"),
        format!("Host: evil.example\r\nHost: localhost:{port}\r\n"),
    ] {
        let body = String::from_utf8(init.clone()).unwrap();
        let req = format!(
            "POST /mcp HTTP/1.1\r\n{hosts}Authorization: {bearer}\r\nContent-Type: application/json\r\nAccept: application/json, text/event-stream\r\nContent-Length: {}\r\n\r\n{body}",
            body.len()
        );
        let answer = raw_tcp(&url, req.into_bytes()).await;
        attempts += 1;
        assert!(
            answer.starts_with("HTTP/1.1 400") || answer.starts_with("HTTP/1.1 403"),
            "{hosts:?}: {answer}"
        );
    }
    // Loopback names in any case, and IPv6 loopback, are this server.
    for h in ["LOCALHOST".to_string(), format!("[::1]:{port}")] {
        let (status, text) = send(
            &url,
            reqwest::Method::POST,
            &[("authorization", bearer.as_bytes()), ("host", h.as_bytes())],
            Some(init.clone()),
        )
        .await;
        assert_eq!(status, 200, "Host {h:?}: {text}");
    }
    assert!(portal_calls(&sb).is_empty(), "{:?}", portal_calls(&sb));

    // 3. Bodies that are not one JSON-RPC message, in a valid session: never a tool call.
    let sid = open_session(&url, &reader).await;
    let session: Vec<(&str, &[u8])> = vec![
        ("authorization", bearer.as_bytes()),
        ("mcp-session-id", sid.as_bytes()),
        ("mcp-protocol-version", b"2025-06-18"),
    ];
    let one = tools_call_body("crm.lead.list");
    let mut deep = "[".repeat(100_000);
    deep.push_str(&"]".repeat(100_000));
    let mut deep_args = json!({});
    for _ in 0..200 {
        deep_args = json!({ "f": deep_args });
    }
    let bodies: Vec<(&str, Vec<u8>, Option<&str>)> = vec![
        ("a JSON-RPC batch array", serde_json::to_vec(&json!([one, one])).unwrap(), None),
        ("malformed JSON", br#"{"jsonrpc":"2.0","id":1,"method":"#.to_vec(), None),
        ("100,000 nested arrays", deep.into_bytes(), None),
        ("200 nested objects in the arguments", serde_json::to_vec(&json!({"jsonrpc": "2.0", "id": 5, "method": "tools/call",
            "params": {"name": "b24_read", "arguments": {"method": "crm.lead.list", "params": {"filter": deep_args}}}})).unwrap(), None),
        ("a 5 MiB body", serde_json::to_vec(&json!({"jsonrpc": "2.0", "id": 6, "method": "tools/call",
            "params": {"name": "b24_read", "arguments": {"method": "crm.lead.list", "params": {"filter": {"TITLE": "x".repeat(5 << 20)}}}}})).unwrap(), None),
        ("an empty body", Vec::new(), None),
        ("NUL bytes", vec![0u8; 4096], None),
        ("text/plain", serde_json::to_vec(&one).unwrap(), Some("text/plain")),
        ("a response to nothing", serde_json::to_vec(&json!({"jsonrpc": "2.0", "id": 99, "result": {"action": "accept"}})).unwrap(), None),
        ("params that are a string", serde_json::to_vec(&json!({"jsonrpc": "2.0", "id": 7, "method": "tools/call", "params": "b24_read"})).unwrap(), None),
        ("arguments that are an array", serde_json::to_vec(&json!({"jsonrpc": "2.0", "id": 8, "method": "tools/call", "params": {"name": "b24_read", "arguments": ["crm.lead.list"]}})).unwrap(), None),
        ("the method as an array", serde_json::to_vec(&json!({"jsonrpc": "2.0", "id": 9, "method": "tools/call", "params": {"name": "b24_read", "arguments": {"method": ["crm.lead.list"]}}})).unwrap(), None),
        ("a tool that does not exist", serde_json::to_vec(&json!({"jsonrpc": "2.0", "id": 10, "method": "tools/call", "params": {"name": "b24_call", "arguments": {"method": "crm.lead.list"}}})).unwrap(), None),
    ];
    for (what, body, ctype) in bodies {
        let mut h = session.clone();
        if let Some(c) = ctype {
            h.push(("content-type", c.as_bytes()));
        }
        let (status, text) = send(&url, reqwest::Method::POST, &h, Some(body)).await;
        attempts += 1;
        assert_ne!(
            status, 0,
            "{what}: the server dropped the connection: {text}"
        );
        assert!(
            !text.contains("\"result\":[{"),
            "{what}: served a list: {status} {text}"
        );
        assert!(
            portal_calls(&sb).is_empty(),
            "{what}: {:?}",
            portal_calls(&sb)
        );
    }
    still_serves(&server, &sb, &reader, "hostile bodies").await;

    // 4. Another client's session: neither usable, nor resumable, nor closable.
    let wb = format!("Bearer {writer}");
    let foreign: Vec<(&str, &[u8])> = vec![
        ("authorization", wb.as_bytes()),
        ("mcp-session-id", sid.as_bytes()),
        ("mcp-protocol-version", b"2025-06-18"),
    ];
    let before = portal_calls(&sb).len();
    let (status, _) = send(
        &url,
        reqwest::Method::POST,
        &foreign,
        Some(call_body.clone()),
    )
    .await;
    assert_eq!(status, 404);
    let mut resume = foreign.clone();
    resume.push(("last-event-id", b"0/0"));
    let (status, _) = send(&url, reqwest::Method::GET, &resume, None).await;
    assert_eq!(status, 404);
    let (status, _) = send(&url, reqwest::Method::DELETE, &foreign, None).await;
    assert_eq!(status, 404);
    // A session id nobody opened, and a stateless request carrying another's session.
    let mut madeup = session.clone();
    madeup[1] = ("mcp-session-id", b"00000000-0000-4000-8000-000000000000");
    let (status, _) = send(
        &url,
        reqwest::Method::POST,
        &madeup,
        Some(call_body.clone()),
    )
    .await;
    assert_eq!(status, 404);
    let mut stateless = foreign.clone();
    stateless[2] = ("mcp-protocol-version", b"2026-07-28");
    let (status, _) = send(
        &url,
        reqwest::Method::POST,
        &stateless,
        Some(call_body.clone()),
    )
    .await;
    assert_eq!(status, 404);
    attempts += 5;
    assert_eq!(portal_calls(&sb).len(), before);
    // The owner's session is untouched.
    let (status, text) = send(
        &url,
        reqwest::Method::POST,
        &session,
        Some(call_body.clone()),
    )
    .await;
    assert_eq!(status, 200, "{text}");
    assert!(text.contains("crm.lead.list"), "{text}");
    assert_eq!(portal_calls(&sb).len(), before + 1);

    // 5. Oversized header sections straight onto the socket.
    let host = format!("Host: localhost:{port}\r\n");
    let huge = [
        format!(
            "POST /mcp HTTP/1.1\r\n{host}Authorization: Bearer {}\r\nContent-Length: 2\r\n\r\n{{}}",
            "A".repeat(500_000)
        ),
        format!(
            "POST /mcp HTTP/1.1\r\n{host}{}Content-Length: 2\r\n\r\n{{}}",
            (0..5000)
                .map(|i| format!("X-{i}: a\r\n"))
                .collect::<String>()
        ),
        format!(
            "POST /mcp HTTP/1.1\r\n{host}{}Content-Length: 2\r\n\r\n{{}}",
            (0..90)
                .map(|i| format!("Authorization: Bearer {reader}{i}\r\n"))
                .collect::<String>()
        ),
        format!(
            "POST /mcp HTTP/1.1\r\n{host}Authorization: Bearer {reader}\r\nContent-Length: 99999999999\r\n\r\n{{}}"
        ),
    ];
    for req in huge {
        let answer = raw_tcp(&url, req.into_bytes()).await;
        attempts += 1;
        assert!(
            !answer.starts_with("HTTP/1.1 200") && !answer.starts_with("HTTP/1.1 202"),
            "{answer}"
        );
    }
    still_serves(&server, &sb, &reader, "oversized headers").await;

    // Only the legitimate reads reached the portal, each recorded under its client; no token
    // in the audit log or on stderr.
    assert!(
        portal_calls(&sb).iter().all(|m| m == "crm.lead.list"),
        "{:?}",
        portal_calls(&sb)
    );
    let audit = audit_records(&env);
    assert!(audit.iter().all(|r| r["client"] == "reader"), "{audit:#?}");
    let raw = std::fs::read(env.state_dir().join("audit.jsonl")).unwrap();
    assert_no_secrets("the audit log", &raw, &[reader.clone(), writer.clone()]);
    assert_no_secrets(
        "the server's stderr",
        server.stderr().as_bytes(),
        &[reader, writer],
    );
    eprintln!("hostile HTTP requests: {attempts} attempts, none reached the portal");
    sb.shutdown().await;
}
