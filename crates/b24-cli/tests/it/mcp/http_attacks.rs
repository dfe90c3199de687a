//! Hostile clients of `b24 mcp --http`: a forger on the network without a valid token, and an
//! authenticated agent trying to act as another client or to get past the policy. Every
//! attempt is checked against the sandbox's request log (nothing reached the portal that should
//! not have), and the server must still serve a valid client afterwards.
//!
//! A module of `tests/it/mcp.rs`, so it uses its helpers.
//!
//! The helpers the attacks share are here; the attacks are in `http_attacks/`, by target.

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

mod forged;
mod identity;
mod listener;
mod policy_files;
