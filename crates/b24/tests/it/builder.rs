//! `ClientBuilder`: a client from values, without environment variables or files.

use std::time::Duration;

use b24::config::{LimiterBackend, RateLimits};
use b24::{ClientBuilder, Error};
use serde_json::json;

#[tokio::test]
async fn webhook_and_oauth_clients_from_values() {
    let sb = b24_sandbox::start(Default::default()).await.unwrap();
    let i = sb.info();
    let c = ClientBuilder::webhook(&i.webhook_url)
        .unwrap()
        .plan(RateLimits::ENTERPRISE)
        .timeout(Duration::from_secs(5))
        .build()
        .await
        .unwrap();
    assert_eq!(c.config().limits.burst, 250.0);
    assert_eq!(c.config().limiter, LimiterBackend::Memory);
    let t: String = c
        .call("server.time", json!({}))
        .await
        .unwrap()
        .json()
        .unwrap();
    assert!(t.starts_with("20"), "{t}");

    // OAuth with the sandbox's token endpoint; a refreshed pair lives in memory only.
    let dir = tempfile::tempdir().unwrap();
    let o = ClientBuilder::oauth(
        &i.base_url,
        &i.client_id,
        &i.client_secret,
        &i.access_token,
        &i.refresh_token,
    )
    .unwrap()
    .token_url(&i.oauth_token_url)
    .unwrap()
    .state_dir(dir.path())
    .build()
    .await
    .unwrap();
    sb.expire_access_tokens();
    let r = o.call("app.info", json!({})).await.unwrap();
    assert_eq!(r.result["INSTALLED"], json!(true));
    assert_eq!(o.stats().refreshes, 1);
    assert!(
        std::fs::read_dir(dir.path()).unwrap().next().is_none(),
        "nothing written to disk"
    );

    // Bad input is a configuration error, as from the environment.
    assert!(matches!(
        ClientBuilder::webhook("http://example.com/rest/1/x/"),
        Err(Error::Config(_))
    ));
}
