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
