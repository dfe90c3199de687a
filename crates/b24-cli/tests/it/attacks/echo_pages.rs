//! Secrets in error messages: a portal that answers with a page echoing the request path (HTML,
//! upper case, cut plain text) or redirects to another origin; the webhook code is never printed
//! and the redirect never followed.
//!
//! A module of `tests/it/attacks.rs`, so it uses its helpers.

use std::io::{Read, Write};
use std::net::TcpListener;

use super::*;

pub(super) async fn secrets_in_error_pages(t: &mut Table) {
    // Secrets in error messages: a portal that answers with a page echoing the request path.
    for (name, page) in [
        ("secret: HTML 404 echoing the path", Page::HtmlTitle),
        (
            "secret: HTML 404 echoing it in upper case",
            Page::HtmlTitleUpper,
        ),
        ("secret: text 404, echo cut at 120 chars", Page::PlainCut),
        ("secret: redirect to another origin", Page::Redirect),
    ] {
        let srv = EchoServer::start(page);
        let code_s = "s3cr3tw3bh00kc0d3abcdef";
        let mut e = Env::bare();
        e.set(
            "B24_WEBHOOK_URL",
            &format!("http://127.0.0.1:{}/rest/7/{code_s}/", srv.port),
        );
        let mine = [
            code_s.to_string(),
            code_s[..10].to_string(),
            code_s.to_ascii_uppercase(),
        ];
        let (code, cli_out, all) = cli(&e, &["call", "user.current"], &[]).await;
        let m = connect(&e, &[]).await;
        let (err, mcp_out) = tool(&m, "b24_read", json!({"method": "user.current"})).await;
        m.cancel().await.ok();
        let leaked = |s: &str| mine.iter().any(|x| s.contains(x.as_str()));
        t.check(
            name,
            code != 0 && !leaked(&all),
            format!("exit {code}; the webhook code (or its first 10 chars) is printed: {all}"),
        );
        t.check(
            name,
            err && !leaked(&mcp_out),
            format!("MCP error {err}: {mcp_out}"),
        );
        let other = srv.redirect_hits.load(Ordering::SeqCst);
        t.check(
            name,
            other == 0,
            format!("{other} request(s) followed the redirect to another origin"),
        );
        t.push(Row {
            attempt: name.into(),
            cli: cli_out,
            mcp: mcp_out,
            reached: other as u64,
            allowed: 0,
        });
    }
}

#[derive(Clone, Copy, PartialEq)]
enum Page {
    HtmlTitle,
    /// The path echoed in upper case (some servers and WAFs do).
    HtmlTitleUpper,
    PlainCut,
    Redirect,
}

/// A tiny HTTP server on loopback that answers every request with a page echoing its path, or
/// a redirect to a second server (another origin) that counts what reaches it.
struct EchoServer {
    port: u16,
    redirect_hits: Arc<AtomicUsize>,
}

fn serve(l: TcpListener, answer: impl Fn(&str) -> String + Send + 'static, hits: Arc<AtomicUsize>) {
    std::thread::spawn(move || {
        for s in l.incoming() {
            let Ok(mut s) = s else { break };
            hits.fetch_add(1, Ordering::SeqCst);
            let _ = s.set_read_timeout(Some(Duration::from_secs(2)));
            let mut buf = Vec::new();
            let mut chunk = [0u8; 4096];
            while !buf.windows(4).any(|w| w == b"\r\n\r\n") {
                match s.read(&mut chunk) {
                    Ok(0) | Err(_) => break,
                    Ok(n) => buf.extend_from_slice(&chunk[..n]),
                }
            }
            let head = String::from_utf8_lossy(&buf).to_string();
            let path = head.split_whitespace().nth(1).unwrap_or("/").to_string();
            let _ = s.write_all(answer(&path).as_bytes());
        }
    });
}

impl EchoServer {
    fn start(page: Page) -> EchoServer {
        let other = TcpListener::bind("127.0.0.1:0").unwrap();
        let other_port = other.local_addr().unwrap().port();
        let redirect_hits = Arc::new(AtomicUsize::new(0));
        serve(
            other,
            |_| {
                "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: 13\r\nConnection: close\r\n\r\n{\"result\":{}}".into()
            },
            redirect_hits.clone(),
        );
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = l.local_addr().unwrap().port();
        serve(
            l,
            move |path| match page {
                Page::HtmlTitle => {
                    let body = format!(
                        "<!DOCTYPE html><html><head><title>404 Not Found: {path}</title></head><body><h1>Not Found</h1><p>The requested URL {path} was not found.</p></body></html>"
                    );
                    format!(
                        "HTTP/1.1 404 Not Found\r\nContent-Type: text/html\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                        body.len()
                    )
                }
                Page::HtmlTitleUpper => {
                    let up = path.to_ascii_uppercase();
                    let body =
                        format!("<html><head><title>404 NOT FOUND: {up}</title></head></html>");
                    format!(
                        "HTTP/1.1 404 Not Found\r\nContent-Type: text/html\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                        body.len()
                    )
                }
                Page::PlainCut => {
                    // The path percent-encoded (no `/rest/` shape left), placed so a 120-char
                    // snippet ends inside the webhook code.
                    let enc = path.replace('/', "%2F");
                    let pad = "x".repeat(120usize.saturating_sub(30 + "Not found: ".len()));
                    let body = format!("{pad}Not found: {enc}");
                    format!(
                        "HTTP/1.1 404 Not Found\r\nContent-Type: text/plain\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                        body.len()
                    )
                }
                Page::Redirect => format!(
                    "HTTP/1.1 302 Found\r\nLocation: http://127.0.0.1:{other_port}{path}\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
                ),
            },
            Arc::new(AtomicUsize::new(0)),
        );
        EchoServer {
            port,
            redirect_hits,
        }
    }
}
