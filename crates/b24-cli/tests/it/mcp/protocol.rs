//! The protocol over stdio: malformed JSON-RPC gets protocol errors and the server keeps
//! serving, and both protocol eras are served.
//!
//! A module of `tests/it/mcp.rs`, so it uses its helpers.

use super::*;

/// Raw JSON-RPC lines on stdin: bad input gets protocol errors and the server keeps serving.
#[tokio::test(flavor = "multi_thread")]
async fn bad_messages_get_protocol_errors_and_the_server_keeps_serving() {
    use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
    let env = Env::bare();
    let mut cmd = tokio::process::Command::from(env.cmd(&["mcp"]));
    cmd.stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .kill_on_drop(true);
    let mut child = cmd.spawn().expect("spawn b24 mcp");
    let mut stdin = child.stdin.take().unwrap();
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    let mut send = async |v: &str| {
        stdin.write_all(v.as_bytes()).await.unwrap();
        stdin.write_all(b"\n").await.unwrap();
        stdin.flush().await.unwrap();
    };
    async fn next(lines: &mut tokio::io::Lines<BufReader<tokio::process::ChildStdout>>) -> Value {
        let l = tokio::time::timeout(Duration::from_secs(30), lines.next_line())
            .await
            .expect("a reply in time")
            .unwrap()
            .expect("a line");
        serde_json::from_str(&l).unwrap_or_else(|e| panic!("stdout line is not JSON ({e}): {l}"))
    }
    let list = r#"{"jsonrpc":"2.0","id":"list","method":"tools/list"}"#;
    send(r#"{"jsonrpc":"2.0","id":1,"method":"initialize","params":{"protocolVersion":"2025-11-25","capabilities":{},"clientInfo":{"name":"raw","version":"1"}}}"#).await;
    let init = next(&mut lines).await;
    assert_eq!(init["result"]["serverInfo"]["name"], "b24", "{init}");
    send(r#"{"jsonrpc":"2.0","method":"notifications/initialized"}"#).await;

    // Not JSON at all: -32700 with id null.
    send(r#"{"jsonrpc":"2.0","id":2,"method":"tools/li"#).await;
    let e = next(&mut lines).await;
    assert_eq!(e["error"]["code"], -32700, "{e}");
    assert!(e["id"].is_null());
    send(list).await;
    let ok = next(&mut lines).await;
    assert_eq!(ok["id"], "list");
    assert!(ok["result"]["tools"].as_array().unwrap().len() >= 9);

    // An unknown tool: a protocol error for that id.
    send(r#"{"jsonrpc":"2.0","id":3,"method":"tools/call","params":{"name":"b24_drop_database","arguments":{}}}"#).await;
    let e = next(&mut lines).await;
    assert_eq!(
        (e["id"].clone(), e["error"]["code"].clone()),
        (json!(3), json!(-32602)),
        "{e}"
    );
    send(list).await;
    assert_eq!(next(&mut lines).await["id"], "list");

    // Arguments that do not match the schema: a tool result with isError naming the problem,
    // so the model sees the message and can fix its call.
    for (id, args) in [
        (4, r#"{"methd":"crm.lead.list"}"#),
        (5, r#"{"method":42}"#),
        (6, r#"{}"#),
        (7, r#"{"method":"crm.lead%2Elist"}"#),
    ] {
        send(&format!(
            r#"{{"jsonrpc":"2.0","id":{id},"method":"tools/call","params":{{"name":"b24_read","arguments":{args}}}}}"#
        ))
        .await;
        let e = next(&mut lines).await;
        assert_eq!(e["id"], id, "{e}");
        assert_eq!(e["result"]["isError"], true, "{e}");
        let text = e["result"]["content"][0]["text"].as_str().unwrap_or("");
        assert!(
            text.contains("b24_read") || text.contains("malformed"),
            "{e}"
        );
    }
    // Valid JSON that is not a JSON-RPC message: an Invalid Request error.
    send(r#"{"hello":"world"}"#).await;
    let e = next(&mut lines).await;
    assert_eq!(e["error"]["code"], -32600, "{e}");
    send(list).await;
    assert_eq!(next(&mut lines).await["id"], "list");

    // Closing stdin ends the server cleanly.
    #[allow(clippy::drop_non_drop)]
    drop(send);
    drop(stdin);
    let status = tokio::time::timeout(Duration::from_secs(30), child.wait())
        .await
        .expect("exits on stdin EOF")
        .unwrap();
    assert!(status.success(), "{status:?}");
}

/// The protocol versions current clients speak: the stateless 2026-07-28 (`server/discover`,
/// no handshake) and the `initialize` era (2025-06-18 here); the same tools in both.
#[tokio::test(flavor = "multi_thread")]
async fn both_protocol_eras_are_served() {
    use rmcp::ClientServiceExt;
    use rmcp::model::ProtocolVersion;
    use rmcp::service::ClientLifecycleMode;
    let sb = sandbox_with_leads(2).await;
    let env = Env::webhook(&sb);

    let cmd = tokio::process::Command::from(env.cmd(&["mcp"]));
    let modern = ()
        .serve_with_lifecycle(
            TokioChildProcess::new(cmd).unwrap(),
            ClientLifecycleMode::Discover {
                preferred_versions: vec![ProtocolVersion::V_2026_07_28],
            },
        )
        .await
        .expect("server/discover");
    let info = modern.peer_info().expect("discover result");
    assert_eq!(info.protocol_version, ProtocolVersion::V_2026_07_28);
    assert_eq!(modern.list_all_tools().await.unwrap().len(), 9);
    let r = call(&modern, "b24_read", json!({"method": "crm.lead.list"})).await;
    assert!(!is_error(&r), "{}", text(&r));
    // No elicitation on the stateless protocol: a destructive call is refused with the fix.
    let r = call(
        &modern,
        "b24_write",
        json!({"method": "crm.lead.delete", "params": {"id": 1}, "confirm": true}),
    )
    .await;
    assert!(is_error(&r) && text(&r).contains("confirm_destructive"));
    modern.cancel().await.ok();

    #[derive(Clone)]
    struct Old;
    impl ClientHandler for Old {
        fn get_info(&self) -> ClientConfig {
            let mut c = ClientConfig::new(
                ClientCapabilities::default(),
                Implementation::new("old-client", "1.0"),
            );
            c.protocol_version = ProtocolVersion::V_2025_06_18;
            c
        }
    }
    let cmd = tokio::process::Command::from(env.cmd(&["mcp"]));
    let old = Old
        .serve(TokioChildProcess::new(cmd).unwrap())
        .await
        .expect("initialize");
    assert_eq!(
        old.peer_info().unwrap().protocol_version,
        ProtocolVersion::V_2025_06_18
    );
    let r = call(&old, "b24_read", json!({"method": "user.current"})).await;
    assert!(!is_error(&r), "{}", text(&r));
    old.cancel().await.ok();
    assert_eq!(calls_of(&sb, "crm.lead.delete"), 0);
    sb.shutdown().await;
}
