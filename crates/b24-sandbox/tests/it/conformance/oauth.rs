//! The OAuth server: refresh tokens rotate.
//!
//! A module of `tests/it/conformance.rs`, so it shares its imports.

use super::*;

#[tokio::test]
async fn oauth_server_rotates_refresh_tokens() {
    let sb = start(SandboxConfig::default()).await;
    let i = sb.info().clone();
    let url = |rt: &str, secret: &str| {
        format!(
            "{}?grant_type=refresh_token&client_id={}&client_secret={secret}&refresh_token={rt}",
            i.oauth_token_url, i.client_id
        )
    };
    let r = http()
        .get(url(&i.refresh_token, &i.client_secret))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let pair: Value = r.json().await.unwrap();
    assert_ne!(pair["refresh_token"], json!(i.refresh_token));
    assert_eq!(pair["member_id"], json!(i.member_id));
    assert_eq!(pair["expires_in"], json!(3600));
    // The old refresh token was consumed.
    let r = http()
        .get(url(&i.refresh_token, &i.client_secret))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 400);
    assert_eq!(r.json::<Value>().await.unwrap()["error"], "invalid_grant");
    let r = http()
        .get(url(pair["refresh_token"].as_str().unwrap(), "bad"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 401);
    // The new access token works.
    let r = http()
        .post(format!("{}/rest/profile", i.base_url))
        .json(&json!({"auth": pair["access_token"]}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(sb.stats().refreshes, 1);
    // Authorization code flow: authorize → redirect with code → exchange.
    install_crypto_provider();
    let nr = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap();
    let r = nr
        .get(format!(
            "{}?client_id={}&state=s1&redirect_uri=http://127.0.0.1:9/cb",
            i.oauth_authorize_url, i.client_id
        ))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 302);
    let loc = r.headers()["location"].to_str().unwrap().to_string();
    assert!(loc.starts_with("http://127.0.0.1:9/cb?code=") && loc.contains("state=s1"));
    let code = loc
        .split("code=")
        .nth(1)
        .unwrap()
        .split('&')
        .next()
        .unwrap();
    let r = http()
        .get(format!(
            "{}?grant_type=authorization_code&client_id={}&client_secret={}&code={code}",
            i.oauth_token_url, i.client_id, i.client_secret
        ))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
}
