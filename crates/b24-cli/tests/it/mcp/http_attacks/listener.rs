//! The listener itself: connections that never finish their headers are dropped, unsafe
//! listen addresses are refused before listening, and trace logs carry no token or portal
//! secret.
//!
//! A module of `tests/it/mcp/http_attacks.rs`, so it uses its helpers and those of
//! `tests/it/mcp.rs`.

use super::*;

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
