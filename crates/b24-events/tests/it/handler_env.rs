//! An `--exec` handler's environment against a careless operator: credentials copied under
//! innocent names (`PORTAL` holding the webhook URL, `CS` the client secret, `PG` a libpq
//! connection string with its password) must not reach the handler either.

use std::ffi::OsString;

use b24_events::handler::env::handler_env;

fn kept(pairs: &[(&str, &str)], pass: &[&str]) -> Vec<String> {
    let pass: Vec<String> = pass.iter().map(|s| s.to_string()).collect();
    handler_env(
        pairs
            .iter()
            .map(|(k, v)| (OsString::from(k), OsString::from(v))),
        &pass,
    )
    .into_iter()
    .map(|(k, _)| k.into_string().unwrap())
    .collect()
}

#[test]
fn credentials_under_innocent_names_are_dropped() {
    let got = kept(
        &[
            ("PATH", "/usr/bin"),
            (
                "B24_WEBHOOK_URL",
                "https://p.bitrix24.com/rest/1/q8w7e6r5t4y3u2i1/",
            ),
            ("B24_CLIENT_SECRET", "cs-0123456789abcdef"),
            ("PORTAL", "https://p.bitrix24.com/rest/1/q8w7e6r5t4y3u2i1/"),
            (
                "PORTAL2",
                "https://other.bitrix24.com/REST/17/ZXCVBNMASDFG/crm.lead.add",
            ),
            ("CS", "cs-0123456789abcdef"),
            ("DATABASE", "host=db user=app password=hunter2 dbname=app"),
            ("CALLBACK", "https://h/cb?user=1&access_token=abc123"),
            ("HANDLER_MODE", "fast"),
            (
                "DOCS",
                "https://apidocs.bitrix24.com/api-reference/rest/index.html",
            ),
            ("EMPTY_FIELD", "password= user=x"),
        ],
        &[],
    );
    assert_eq!(got, ["PATH", "HANDLER_MODE", "DOCS", "EMPTY_FIELD"]);
}

#[test]
fn a_copy_passed_by_name_still_passes() {
    let got = kept(
        &[
            ("B24_CLIENT_SECRET", "cs-0123456789abcdef"),
            ("CS", "cs-0123456789abcdef"),
        ],
        &["CS"],
    );
    assert_eq!(got, ["CS"]);
}

/// A handler that prints an OAuth token this worker holds (here, a portal's pair adopted by
/// its client) fails with the token replaced: the failure's text is kept in the queue and
/// shown by `b24 dlq` in a process that does not know the worker's refreshed tokens.
#[tokio::test(flavor = "multi_thread")]
async fn a_failure_that_quotes_a_held_token_is_kept_without_it() {
    use b24_events::handler::Handler;
    use b24_events::installs::Installations;
    use b24_events::listen::ServeLimits;
    use b24_sandbox::{SandboxConfig, start_many};

    let ps = start_many(SandboxConfig::default(), 1).await.unwrap();
    let p = ps.get(0).unwrap();
    let rx = crate::receiver::serve(&["127.0.0.1:*"], None, ServeLimits::default()).await;
    assert_eq!(p.install_app(&rx.url).await.status, 200);
    let reg = Installations::open(&rx.db).await.unwrap();
    let member = p.info().member_id.clone();
    let _client = crate::portals::client_for(&reg, p, &member).await;
    let token = reg
        .find(&member)
        .await
        .unwrap()
        .unwrap()
        .pair
        .unwrap()
        .access_token;
    assert!(
        b24::auth::live_secrets().contains(&token),
        "the client holds it"
    );
    let job = b24_events::queue::Job {
        id: 1,
        key: "k".into(),
        name: "ONCRMLEADADD".into(),
        payload: serde_json::json!({}),
        attempts: 1,
    };
    let h = Handler::exec(
        format!("echo \"got {token} here\" >&2; exit 3"),
        std::time::Duration::from_secs(10),
    );
    let why = h.run(&job).await.unwrap_err();
    assert!(!why.contains(&token), "{why}");
    assert!(why.contains("got [redacted] here"), "{why}");
    ps.shutdown().await;
}
