//! Hostile clients of `b24 mcp --http`: a forger on the network without a valid token, and an
//! authenticated agent trying to act as another client or to get past the policy. Every
//! attempt is checked against the sandbox's request log (nothing reached the portal that should
//! not have), and the server must still serve a valid client afterwards.
//!
//! A module of `tests/it/mcp.rs`, so it uses its helpers.

use super::*;

/// What an attempt is called, and the headers it sends.
type AuthCase<'a> = (&'a str, Vec<(&'a str, Vec<u8>)>);

/// Every method the sandbox has seen, in order.
fn portal_calls(sb: &Sandbox) -> Vec<String> {
    sb.request_log().into_iter().map(|r| r.method).collect()
}

/// One raw request: headers may repeat and may hold any bytes.
async fn send(
    url: &str,
    method: reqwest::Method,
    headers: &[(&str, &[u8])],
    body: Option<Vec<u8>>,
) -> (u16, String) {
    let mut rb = reqwest::Client::new()
        .request(method, url)
        .header("accept", "application/json, text/event-stream")
        .timeout(Duration::from_secs(20));
    for (k, v) in headers {
        let v = reqwest::header::HeaderValue::from_bytes(v).expect("header value");
        rb = rb.header(*k, v);
    }
    if !headers
        .iter()
        .any(|(k, _)| k.eq_ignore_ascii_case("content-type"))
    {
        rb = rb.header("content-type", "application/json");
    }
    if let Some(b) = body {
        rb = rb.body(b);
    }
    match rb.send().await {
        Ok(r) => {
            let s = r.status().as_u16();
            (s, r.text().await.unwrap_or_default())
        }
        Err(e) => (0, format!("transport: {e}")),
    }
}

/// Open a session (`initialize` + `initialized`) with raw requests; its id.
async fn open_session(url: &str, token: &str) -> String {
    let bearer = format!("Bearer {token}");
    let (status, hdrs, body) = raw_post(
        url,
        &[("authorization", bearer.as_str())],
        initialize_body(),
    )
    .await;
    assert_eq!(status, 200, "{body}");
    let sid = hdrs["mcp-session-id"].to_str().unwrap().to_string();
    let (status, _, _) = raw_post(
        url,
        &[
            ("authorization", bearer.as_str()),
            ("mcp-session-id", sid.as_str()),
            ("mcp-protocol-version", "2025-06-18"),
        ],
        json!({"jsonrpc": "2.0", "method": "notifications/initialized"}),
    )
    .await;
    assert_eq!(status, 202);
    sid
}

/// Bytes straight onto the server's socket; the first bytes of the answer (or why none came).
async fn raw_tcp(url: &str, request: Vec<u8>) -> String {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let addr = url
        .trim_start_matches("http://")
        .split('/')
        .next()
        .unwrap()
        .to_string();
    let mut s = tokio::net::TcpStream::connect(&addr)
        .await
        .expect("connect");
    // The server may answer (431) and close before everything is written.
    let _ = s.write_all(&request).await;
    let mut buf = vec![0u8; 256];
    match tokio::time::timeout(Duration::from_secs(20), s.read(&mut buf)).await {
        Ok(Ok(n)) => String::from_utf8_lossy(&buf[..n]).to_string(),
        Ok(Err(e)) => format!("read error: {e}"),
        Err(_) => "no answer in 20 s".to_string(),
    }
}

/// A valid client still gets a read through, and the portal sees exactly that one read.
async fn still_serves(server: &HttpServer, sb: &Sandbox, token: &str, attempt: &str) {
    let before = calls_of(sb, "crm.lead.list");
    let c = http_client(&server.url, token)
        .await
        .unwrap_or_else(|e| panic!("after {attempt}: the server no longer serves: {e}"));
    let r = call(&c, "b24_read", json!({"method": "crm.lead.list"})).await;
    assert!(!is_error(&r), "after {attempt}: {}", text(&r));
    assert_eq!(calls_of(sb, "crm.lead.list"), before + 1, "after {attempt}");
    c.cancel().await.ok();
}

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

#[tokio::test(flavor = "multi_thread")]
async fn http_a_clients_policy_file_cannot_widen_the_server_and_must_be_the_operators() {
    use std::os::unix::fs::PermissionsExt;
    let sb = sandbox_with_leads(2).await;
    let env = Env::webhook(&sb);
    // The server's own restrictions (a caller layer of the serving process): leads are never
    // deleted, one write an hour; and it lets unknown methods through (--allow-unlisted).
    std::fs::write(
        env.config_dir().join("policy.toml"),
        "deny = [\"crm.lead.delete\"]\nmax_writes_per_hour = 1\n",
    )
    .unwrap();
    let evil_dir = env.dir.path().join("evil-guard");
    let wide = format!(
        "allow = [\"*\"]\nstrict_params = false\nforbid_allow_unlisted = true\nguard_dir = \"{}\"\naudit_params = \"full\"\nallow_unaudited_reads = true\nrequire_person_confirmation = \"none\"\nmax_writes_per_hour = 1000\n",
        evil_dir.display()
    );
    let token = token_add(&env, "wide", &wide).await;
    let server = HttpServer::start(&env, &["--allow-unlisted"]).await;
    let c = http_client(&server.url, &token).await.expect("initialize");
    let mut attempts = 0;
    let refused = |r: &CallToolResult, what: &str| {
        assert!(is_error(r), "{what}: served: {}", text(r));
    };

    // Deleting a lead, in every spelling and through every tool.
    for m in [
        "crm.lead.delete",
        "CRM.LEAD.DELETE",
        "crm.lead.delete.json",
        "Crm.Lead.Delete.XML",
        " crm.lead.delete\n",
        "crm.lead.delete?id=1",
        "crm.lead.delete/",
        "crm%2Elead%2Edelete",
        "crm.lead..delete",
        "crm.lead.delete.json.json",
    ] {
        let args =
            json!({"method": m, "params": {"id": 1}, "confirm": true, "confirm_destructive": true});
        refused(&call(&c, "b24_write", args).await, m);
        refused(
            &call(&c, "b24_read", json!({"method": m, "params": {"id": 1}})).await,
            m,
        );
        let plan = call(&c, "b24_plan", json!({"method": m, "params": {"id": 1}})).await;
        refused(&plan, m);
        attempts += 3;
    }
    let batches = [
        json!({"commands": [{"method": "crm.lead.delete", "params": {"id": 1}}], "confirm": true, "confirm_destructive": true}),
        json!({"commands": [{"method": "crm.lead.list"}, {"method": "CRM.LEAD.DELETE.json", "params": {"id": 2}}], "confirm": true, "confirm_destructive": true}),
        json!({"commands": [{"method": "batch", "params": {"cmd": {"a": "crm.lead.delete?id=1"}}}], "confirm": true, "confirm_destructive": true}),
    ];
    for b in batches {
        refused(&call(&c, "b24_batch", b.clone()).await, &b.to_string());
        attempts += 1;
    }
    for (tool, args) in [
        (
            "b24_read",
            json!({"method": "batch", "params": {"cmd": {"a": "crm.lead.delete?id=1"}}}),
        ),
        (
            "b24_read",
            json!({"method": "batch", "params": {"cmd": {"a": "crm.lead.list", "b": "crm.lead.delete?id=1"}}}),
        ),
        (
            "b24_read",
            json!({"method": "batch", "params": {"cmd": {"a": "CRM.LEAD.DELETE.json?id=1"}}}),
        ),
        (
            "b24_read",
            json!({"method": "batch", "params": {"cmd": {"a": "crm.lead.%64elete?id=1"}}}),
        ),
        (
            "b24_write",
            json!({"method": "batch", "params": {"cmd": {"a": "crm.lead.delete?id=1"}}, "confirm": true, "confirm_destructive": true}),
        ),
        (
            "b24_write",
            json!({"method": "batch", "params": {"CMD": {"a": "crm.lead.delete?id=1"}, "cmd": {"a": "crm.lead.list"}}, "confirm": true, "confirm_destructive": true}),
        ),
        (
            "b24_export",
            json!({"method": "crm.lead.delete", "params": {"id": 1}}),
        ),
        (
            "b24_export",
            json!({"method": "batch", "params": {"cmd": {"a": "crm.lead.delete?id=1"}}}),
        ),
    ] {
        refused(
            &call(&c, tool, args.clone()).await,
            &format!("{tool} {args}"),
        );
        attempts += 1;
    }
    assert!(
        portal_calls(&sb).is_empty(),
        "a denied call reached the portal: {:?}",
        portal_calls(&sb)
    );

    // strict_params = false in the client's file does not turn MCP's check off.
    for params in [
        json!({"feilds": {"TITLE": "x"}}),
        json!({"filter": {}, "FILTER": {}}),
    ] {
        let r = call(
            &c,
            "b24_read",
            json!({"method": "crm.lead.list", "params": params}),
        )
        .await;
        refused(&r, &params.to_string());
        attempts += 1;
    }
    // forbid_allow_unlisted in the client's file holds against the server's --allow-unlisted.
    for m in ["made.up.method", "crm.lead.deletex"] {
        let r = call(
            &c,
            "b24_write",
            json!({"method": m, "confirm": true, "confirm_destructive": true}),
        )
        .await;
        refused(&r, m);
        assert!(portal_calls(&sb).is_empty(), "{m} reached the portal");
        assert!(text(&r).contains("unknown"), "{}", text(&r));
        attempts += 1;
    }
    assert!(
        portal_calls(&sb).is_empty(),
        "a call the client's file forbids reached the portal: {:?}",
        portal_calls(&sb)
    );

    // max_writes_per_hour = 1000 does not raise the server's 1; audit_params = "full" and
    // guard_dir are not the client's to set.
    let add = |t: &str| json!({"method": "crm.lead.add", "params": {"fields": {"TITLE": t}}, "confirm": true});
    let r = call(&c, "b24_write", add("SECRET-TITLE-ONE")).await;
    assert!(!is_error(&r), "{}", text(&r));
    let r = call(&c, "b24_write", add("SECRET-TITLE-TWO")).await;
    refused(&r, "a second write");
    assert!(text(&r).contains("write budget"), "{}", text(&r));
    attempts += 3;
    assert_eq!(calls_of(&sb, "crm.lead.add"), 1);
    let raw = std::fs::read_to_string(env.state_dir().join("audit.jsonl")).unwrap();
    assert!(
        !raw.contains("SECRET-TITLE"),
        "the client's audit_params = full was obeyed"
    );
    assert!(!evil_dir.exists(), "the client's guard_dir was used");

    // The file itself: writable by others, owned by another account, not a file, never ending.
    let file = env.dir.path().join("wide.policy.toml");
    let before = portal_calls(&sb).len();
    let read = json!({"method": "crm.lead.list"});
    std::fs::set_permissions(&file, std::fs::Permissions::from_mode(0o666)).unwrap();
    let r = call(&c, "b24_read", read.clone()).await;
    refused(&r, "a world-writable policy file");
    assert!(
        text(&r).contains("writable by group or others"),
        "{}",
        text(&r)
    );
    std::fs::set_permissions(&file, std::fs::Permissions::from_mode(0o644)).unwrap();
    attempts += 1;
    if nix_is_root() {
        let o = std::process::Command::new("chown")
            .args(["65534", file.to_str().unwrap()])
            .status()
            .unwrap();
        assert!(o.success());
        let r = call(&c, "b24_read", read.clone()).await;
        refused(&r, "a policy file owned by another account");
        assert!(text(&r).contains("owned by uid 65534"), "{}", text(&r));
        std::process::Command::new("chown")
            .args(["0", file.to_str().unwrap()])
            .status()
            .unwrap();
        attempts += 1;
    }
    let saved = std::fs::read(&file).unwrap();
    std::fs::remove_file(&file).unwrap();
    let fifo_made = std::process::Command::new("mkfifo")
        .arg(&file)
        .status()
        .is_ok_and(|s| s.success());
    if fifo_made {
        // Twice: a FIFO that blocked a worker thread would hang the second call, or the server.
        for _ in 0..3 {
            let r = call(&c, "b24_read", read.clone()).await;
            refused(&r, "a FIFO as the policy file");
            assert!(text(&r).contains("not a regular file"), "{}", text(&r));
        }
        std::fs::remove_file(&file).unwrap();
        attempts += 1;
    }
    std::os::unix::fs::symlink("/dev/zero", &file).unwrap();
    let r = call(&c, "b24_read", read.clone()).await;
    refused(&r, "/dev/zero as the policy file");
    std::fs::remove_file(&file).unwrap();
    std::fs::create_dir(&file).unwrap();
    let r = call(&c, "b24_read", read.clone()).await;
    refused(&r, "a directory as the policy file");
    std::fs::remove_dir(&file).unwrap();
    attempts += 2;
    assert_eq!(portal_calls(&sb).len(), before);
    // Put back (mode 0644, this account's): served again.
    std::fs::write(&file, saved).unwrap();
    let r = call(&c, "b24_read", read).await;
    assert!(!is_error(&r), "{}", text(&r));
    assert_eq!(portal_calls(&sb).len(), before + 1);
    assert!(
        audit_records(&env)
            .iter()
            .filter(|r| r["origin"] == "mcp")
            .all(|r| r["client"] == "wide"),
        "a record not naming the client"
    );
    eprintln!("a client's policy file: {attempts} attempts to widen it, none got through");
    c.cancel().await.ok();
    sb.shutdown().await;
}

/// Whether the tests run as root (then a file can be given to another account).
fn nix_is_root() -> bool {
    std::process::Command::new("id")
        .arg("-u")
        .output()
        .is_ok_and(|o| String::from_utf8_lossy(&o.stdout).trim() == "0")
}

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

/// Slowloris: connections that never finish their headers are dropped (they would otherwise
/// hold a file descriptor each, forever, without ever showing a token), and the server serves.
#[tokio::test(flavor = "multi_thread")]
async fn http_connections_that_never_finish_their_headers_are_dropped() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let sb = sandbox_with_leads(1).await;
    let env = Env::webhook(&sb);
    let token = token_add(&env, "reader", "read_only = true\n").await;
    let server = HttpServer::start(&env, &[]).await;
    let addr = server
        .url
        .trim_start_matches("http://")
        .split('/')
        .next()
        .unwrap()
        .to_string();
    let started = std::time::Instant::now();
    let mut slow = Vec::new();
    for _ in 0..20 {
        let mut s = tokio::net::TcpStream::connect(&addr).await.unwrap();
        s.write_all(b"POST /mcp HTTP/1.1\r\nHost: localhost\r\nX-Slow: ")
            .await
            .unwrap();
        slow.push(s);
    }
    // Meanwhile a real client is served.
    still_serves(&server, &sb, &token, "20 slow connections").await;
    for mut s in slow {
        let mut buf = [0u8; 64];
        let closed = tokio::time::timeout(Duration::from_secs(30), s.read(&mut buf)).await;
        assert!(
            matches!(closed, Ok(Ok(_)) | Ok(Err(_))),
            "a connection without complete headers is still open after {:?}",
            started.elapsed()
        );
    }
    assert!(started.elapsed() < Duration::from_secs(30));
    assert_eq!(calls_of(&sb, "crm.lead.list"), 1);
    sb.shutdown().await;
}

/// Addresses that would put bearer tokens on a network in clear text, or accept any Host, are
/// refused before anything listens.
#[tokio::test(flavor = "multi_thread")]
async fn http_unsafe_listen_addresses_are_refused_before_listening() {
    let sb = sandbox_with_leads(0).await;
    let env = Env::webhook(&sb);
    for (args, says) in [
        (vec!["--http", "[::]:0"], "--tls-cert"),
        (vec!["--http", "0.0.0.0:0"], "--tls-cert"),
        (vec!["--http", "192.0.2.10:0"], "--tls-cert"),
        // IPv4-mapped loopback is not taken for loopback (fail closed).
        (vec!["--http", "[::ffff:127.0.0.1]:0"], "--tls-cert"),
        (
            vec!["--http", "[::]:0", "--behind-tls-proxy"],
            "--allowed-host",
        ),
        (
            vec!["--http", "0.0.0.0:0", "--behind-tls-proxy"],
            "--allowed-host",
        ),
        (
            vec!["--http", "127.0.0.1:0", "--tls-cert", "/nonexistent.pem"],
            "tls-key",
        ),
        (vec!["--allowed-host", "x.example"], "--http"),
        (vec!["--behind-tls-proxy"], "--http"),
    ] {
        let mut a = vec!["mcp"];
        a.extend(args.iter().copied());
        let o = env.run(&a).await;
        assert_eq!(code(&o), 2, "{args:?}: {}", stderr(&o));
        assert!(stderr(&o).contains(says), "{args:?}: {}", stderr(&o));
        assert!(!stderr(&o).contains("serving"), "{args:?} listened");
    }
    assert!(sb.request_log().is_empty());
    sb.shutdown().await;
}

/// Even with every log on, the server's stderr carries no token and no portal secret.
#[tokio::test(flavor = "multi_thread")]
async fn http_trace_logs_carry_no_token_and_no_portal_secret() {
    let sb = sandbox_with_leads(1).await;
    let mut env = Env::webhook(&sb);
    let token = token_add(&env, "reader", "read_only = true\n").await;
    env.set("RUST_LOG", "trace");
    let server = HttpServer::start(&env, &[]).await;
    let c = http_client(&server.url, &token).await.unwrap();
    let r = call(&c, "b24_read", json!({"method": "crm.lead.list"})).await;
    assert!(!is_error(&r), "{}", text(&r));
    // A refused token, a token in the body, a token in a header the server does not read.
    let wrong = format!("{token}0");
    let (status, _, _) = raw_post(
        &server.url,
        &[
            ("authorization", format!("Bearer {wrong}").as_str()),
            ("x-token", token.as_str()),
        ],
        json!({"jsonrpc": "2.0", "id": 3, "method": "tools/call", "params": {"name": "b24_read",
               "arguments": {"method": "crm.lead.list", "params": {"filter": {"TITLE": token}}}}}),
    )
    .await;
    assert_eq!(status, 401);
    c.cancel().await.ok();
    tokio::time::sleep(Duration::from_millis(300)).await;
    let err = server.stderr();
    assert!(
        err.contains("TRACE"),
        "trace logging is not on: {}",
        &err[..err.len().min(500)]
    );
    let hook = sb.info().webhook_code.clone();
    assert_no_secrets(
        "the server's trace log",
        err.as_bytes(),
        &[token.clone(), token[7..].to_string(), wrong, hook],
    );
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

/// Keys a client's file sets to their loosest value change nothing the server's layers say.
#[tokio::test(flavor = "multi_thread")]
async fn http_a_clients_file_saying_false_or_none_does_not_lift_the_servers_rules() {
    let sb = sandbox_with_leads(1).await;
    let env = Env::webhook(&sb);
    let loose = "read_only = false\ndeny_destructive = false\nrequire_plan_for_writes = false\nrequire_person_confirmation = \"none\"\nstrict = false\npacks = [\"core\", \"comms\", \"automation\", \"collab\", \"content\", \"boards\", \"commerce\", \"other\"]\n";
    let token = token_add(&env, "loose", loose).await;
    let add = json!({"method": "crm.lead.add", "params": {"fields": {"TITLE": "x"}}, "confirm": true, "confirm_destructive": true});
    let del = json!({"method": "crm.lead.delete", "params": {"id": 1}, "confirm": true, "confirm_destructive": true});
    for (server_rules, call_args, says) in [
        ("read_only = true\n", add.clone(), "read-only"),
        ("require_plan_for_writes = true\n", add.clone(), "plan"),
        ("deny_destructive = true\n", del.clone(), "destructive"),
        (
            "require_person_confirmation = \"destructive\"\n",
            del.clone(),
            "person",
        ),
        (
            "require_person_confirmation = \"writes\"\n",
            add.clone(),
            "person",
        ),
        (
            "packs = [\"comms\"]\n",
            json!({"method": "crm.lead.list"}),
            "pack",
        ),
    ] {
        std::fs::write(env.config_dir().join("policy.toml"), server_rules).unwrap();
        let server = HttpServer::start(&env, &[]).await;
        let c = http_client(&server.url, &token).await.unwrap();
        let tool = if call_args["method"] == "crm.lead.list" {
            "b24_read"
        } else {
            "b24_write"
        };
        let r = call(&c, tool, call_args.clone()).await;
        assert!(is_error(&r), "{server_rules}: served: {}", text(&r));
        assert!(
            text(&r).to_lowercase().contains(says),
            "{server_rules}: {}",
            text(&r)
        );
        c.cancel().await.ok();
        drop(server);
    }
    assert!(sb.request_log().is_empty(), "{:?}", sb.request_log());
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
