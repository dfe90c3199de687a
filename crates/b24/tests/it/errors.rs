//! Errors keep their causes: the transport, JSON or portal error behind an `Error` is
//! reachable through `source()`, and no level of that chain carries a credential (a webhook's
//! URL holds its secret; a token request's query holds the client secret and refresh token).

use std::collections::HashMap;
use std::error::Error as _;

use b24::{Client, Config, Error};
use serde_json::json;

const SECRET: &str = "s3cr3tW3bh00kC0de";
const CLIENT_SECRET: &str = "cl13ntS3cr3tV4lue";
const REFRESH: &str = "r3fr3shT0k3nV4lue";

fn config(vars: &[(&str, &str)], state: &std::path::Path) -> Config {
    let m: HashMap<String, String> = vars
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    Config::from_lookup(&|k| m.get(k).cloned(), state.to_path_buf()).expect("config")
}

/// A local port that refuses connections (bound, then closed).
fn refused_port() -> u16 {
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    l.local_addr().unwrap().port()
}

/// Every level of the chain, as `(Display, Debug)`, the error itself first.
fn chain(e: &Error) -> Vec<(String, String)> {
    let mut out = vec![(e.to_string(), format!("{e:?}"))];
    let mut cur = e.source();
    while let Some(c) = cur {
        out.push((c.to_string(), format!("{c:?}")));
        cur = c.source();
    }
    out
}

fn assert_no_secret(e: &Error, secrets: &[&str]) {
    let levels = chain(e);
    assert!(levels.len() > 1, "no source kept: {e:?}");
    for (i, (display, debug)) in levels.iter().enumerate() {
        for s in secrets {
            assert!(!display.contains(s), "level {i} shows a secret: {display}");
            assert!(!debug.contains(s), "level {i} shows a secret: {debug}");
        }
    }
}

fn reaches_io(e: &Error, kind: std::io::ErrorKind) -> bool {
    let mut cur = e.source();
    while let Some(c) = cur {
        if c.downcast_ref::<std::io::Error>().map(|io| io.kind()) == Some(kind) {
            return true;
        }
        cur = c.source();
    }
    false
}

async fn webhook_client(port: u16, state: &std::path::Path) -> Client {
    let url = format!("http://127.0.0.1:{port}/rest/1/{SECRET}/");
    Client::new(config(
        &[
            ("B24_WEBHOOK_URL", url.as_str()),
            ("B24_RATE_LIMITER", "memory"),
            ("B24_MAX_RETRIES", "0"),
        ],
        state,
    ))
    .await
    .unwrap()
}

#[tokio::test]
async fn a_refused_connection_keeps_the_io_error_and_no_secret() {
    let dir = tempfile::tempdir().unwrap();
    let c = webhook_client(refused_port(), dir.path()).await;
    let e = c.call("crm.lead.list", json!({})).await.unwrap_err();
    assert!(matches!(e, Error::Transient { .. }), "{e}");
    assert!(
        reaches_io(&e, std::io::ErrorKind::ConnectionRefused),
        "the chain does not reach the refused io::Error: {:?}",
        chain(&e)
    );
    assert_no_secret(&e, &[SECRET]);
    // The message still names the cause on its own.
    assert!(e.to_string().contains("cannot connect"), "{e}");
}

#[tokio::test]
async fn a_write_cut_off_keeps_its_transport_error_and_no_secret() {
    // Accepts, reads a little, and closes without answering: the write may have arrived.
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let server = tokio::spawn(async move {
        loop {
            let Ok((mut s, _)) = listener.accept().await else {
                return;
            };
            let mut buf = [0u8; 512];
            let _ = tokio::io::AsyncReadExt::read(&mut s, &mut buf).await;
            drop(s);
        }
    });
    let dir = tempfile::tempdir().unwrap();
    let c = webhook_client(port, dir.path()).await;
    let e = c
        .call("crm.lead.add", json!({"fields": {"TITLE": "x"}}))
        .await
        .unwrap_err();
    server.abort();
    assert!(matches!(e, Error::OutcomeUnknown { .. }), "{e}");
    assert!(
        chain(&e)
            .iter()
            .skip(1)
            .any(|(_, d)| d.contains("reqwest::Error") || d.contains("kind: Request")),
        "the transport error is not the source: {:?}",
        chain(&e)
    );
    assert_no_secret(&e, &[SECRET]);
}

#[tokio::test]
async fn a_failed_token_refresh_keeps_its_cause_and_no_credential() {
    let port = refused_port();
    let token_url = format!("http://127.0.0.1:{port}/oauth/token/");
    let domain = format!("http://127.0.0.1:{port}");
    let dir = tempfile::tempdir().unwrap();
    let c = Client::new(config(
        &[
            ("B24_AUTH_MODE", "oauth"),
            ("B24_DOMAIN", domain.as_str()),
            ("B24_CLIENT_ID", "app.1"),
            ("B24_CLIENT_SECRET", CLIENT_SECRET),
            ("B24_REFRESH_TOKEN", REFRESH),
            ("B24_OAUTH_TOKEN_URL", token_url.as_str()),
            ("B24_RATE_LIMITER", "memory"),
        ],
        dir.path(),
    ))
    .await
    .unwrap();
    // No access token: the call refreshes first, and the token endpoint refuses.
    let e = c.call("crm.lead.list", json!({})).await.unwrap_err();
    assert!(matches!(e, Error::Auth { .. }), "{e}");
    assert!(
        reaches_io(&e, std::io::ErrorKind::ConnectionRefused),
        "{:?}",
        chain(&e)
    );
    assert_no_secret(&e, &[CLIENT_SECRET, REFRESH]);
}

#[test]
fn a_decode_error_keeps_the_json_error() {
    let r = b24::envelope::Response::from_result(json!([{"ID": {"nested": true}}]));
    #[derive(Debug, serde::Deserialize)]
    #[allow(dead_code)] // only decoded
    struct Lead {
        #[serde(rename = "ID")]
        id: String,
    }
    let e = r.json::<Vec<Lead>>().unwrap_err();
    assert!(
        matches!(&e, Error::Decode { reason, .. } if reason.contains("[0].ID")),
        "{e}"
    );
    let src = e.source().expect("a source");
    assert!(src.downcast_ref::<serde_json::Error>().is_some(), "{src:?}");
}
