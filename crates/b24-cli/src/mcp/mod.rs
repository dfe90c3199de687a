//! `b24 mcp`: b24's capabilities as an MCP server over stdio (the default) or Streamable HTTP,
//! with the same guardrails as the CLI. Every tool that touches the portal goes through [`crate::exec`] (policy, confirmations,
//! idempotency, audit records with origin `mcp`); nothing here talks to the portal directly.
//!
//! - [`server`]: the server's state, the catalog tools and the handler; [`tools`] the portal
//!   tools; [`args`] their input types (the schemas derive from them); [`person`] elicitation.
//! - [`http`]: Streamable HTTP with bearer tokens per client (`b24 mcp --http ADDR`).
//! - [`errors`]: refusals and Bitrix24 errors as tool errors (`isError: true`) with the fix.
//! - [`paging`]: bounded page sets for `b24_export` with a resume cursor.
//! - [`schema`]: portable input schemas, and [`outputs`] the output schemas.
//! - [`resources`]: the skill's references as resources; [`prompts`]: prompts for common tasks.
//! - this module: the stdio plumbing.
//!
//! Why our own stdio plumbing around rmcp's transport: rmcp silently drops lines that are not
//! JSON, but JSON-RPC 2.0 requires a `-32700 Parse error` response (with `id: null`), and a
//! client that sent garbage should hear about it rather than wait for a reply that never comes.
//! So stdin is read here line by line: unparsable lines are answered with a parse error, every
//! other line is handed to rmcp. Every line that leaves for stdout goes through one writer task,
//! so a parse error can never interleave with an rmcp message. Nothing else in `b24 mcp` writes
//! to stdout (logs, notes and warnings go to stderr).

pub mod args;
pub mod errors;
pub mod http;
mod outputs;
pub mod paging;
pub mod person;
mod prompts;
mod resources;
mod schema;
pub mod server;
mod tools;

use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};

use crate::globals::Globals;

/// The longest JSON-RPC line accepted (the same cap rmcp uses).
const MAX_LINE: usize = 16 * 1024 * 1024;

/// The JSON-RPC 2.0 parse-error response (the id cannot be known).
fn parse_error_line(detail: &str) -> String {
    serde_json::json!({
        "jsonrpc": "2.0",
        "id": null,
        "error": {"code": -32700, "message": "Parse error", "data": {"detail": detail}},
    })
    .to_string()
}

/// Serve MCP on stdin/stdout until stdin closes.
pub async fn serve(g: &Globals, elicit: bool) -> anyhow::Result<()> {
    serve_on(g, elicit, tokio::io::stdin(), tokio::io::stdout()).await
}

/// Serve MCP on any line-oriented byte streams (stdio in production).
pub async fn serve_on<R, W>(g: &Globals, elicit: bool, input: R, output: W) -> anyhow::Result<()>
where
    R: tokio::io::AsyncRead + Unpin + Send + 'static,
    W: tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    use rmcp::ServiceExt;

    let (rmcp_in, mut feed) = tokio::io::duplex(1 << 20);
    let (drain, rmcp_out) = tokio::io::duplex(1 << 20);
    let (tx, mut rx) = tokio::sync::mpsc::channel::<String>(64);

    // The single writer of stdout: one whole line at a time, flushed.
    let writer = tokio::spawn(async move {
        let mut out = output;
        while let Some(line) = rx.recv().await {
            if out.write_all(line.as_bytes()).await.is_err()
                || out.write_all(b"\n").await.is_err()
                || out.flush().await.is_err()
            {
                break;
            }
        }
    });

    // rmcp's output, line by line, to the writer.
    let tx_out = tx.clone();
    let pump_out = tokio::spawn(async move {
        let mut lines = BufReader::new(drain).lines();
        while let Ok(Some(line)) = lines.next_line().await {
            if tx_out.send(line).await.is_err() {
                break;
            }
        }
    });

    // stdin, line by line: JSON goes to rmcp, anything else gets a parse error.
    let tx_in = tx.clone();
    let pump_in = tokio::spawn(async move {
        let mut reader = BufReader::new(input);
        let mut buf = Vec::new();
        loop {
            buf.clear();
            match reader.read_until(b'\n', &mut buf).await {
                Ok(0) | Err(_) => break,
                Ok(_) => {}
            }
            let line = trim_line(&buf);
            if line.is_empty() {
                continue;
            }
            if line.len() > MAX_LINE {
                let _ = tx_in
                    .send(parse_error_line("the message exceeds 16 MiB"))
                    .await;
                continue;
            }
            if let Err(e) = serde_json::from_slice::<serde_json::Value>(line) {
                tracing::debug!("mcp: unparsable line: {e}");
                if tx_in
                    .send(parse_error_line(&format!("not valid JSON: {e}")))
                    .await
                    .is_err()
                {
                    break;
                }
                continue;
            }
            if feed.write_all(line).await.is_err()
                || feed.write_all(b"\n").await.is_err()
                || feed.flush().await.is_err()
            {
                break;
            }
        }
        // Dropping `feed` closes rmcp's input: the service ends after in-flight requests.
    });
    drop(tx);

    let server = server::B24Mcp::new(g.clone(), elicit);
    let result = match server.serve((rmcp_in, rmcp_out)).await {
        Ok(running) => running
            .waiting()
            .await
            .map(|_| ())
            .map_err(|e| anyhow::anyhow!("mcp service: {e}")),
        // The client went away before (or while) initializing: nothing to serve.
        Err(e) => {
            tracing::info!("mcp: session ended during initialization: {e}");
            Ok(())
        }
    };
    // The service has dropped its transport: flush what it wrote, then stop the writer.
    let _ = pump_out.await;
    pump_in.abort();
    let _ = writer.await;
    result
}

fn trim_line(buf: &[u8]) -> &[u8] {
    let mut line = buf.strip_suffix(b"\n").unwrap_or(buf);
    line = line.strip_suffix(b"\r").unwrap_or(line);
    line.strip_prefix(b"\xEF\xBB\xBF".as_slice())
        .unwrap_or(line)
}
