//! The process-wide redactor knows OAuth tokens obtained after start-up: a refresh rotates
//! both tokens, and the new ones must be redacted in a log line or an error like the
//! configured ones, without any front end telling the redactor about them.

use std::collections::HashMap;

use serde_json::{Value, json};

#[tokio::test]
async fn tokens_from_a_refresh_are_redacted() {
    let sb = b24_sandbox::start(b24_sandbox::SandboxConfig::default())
        .await
        .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let i = sb.info();
    let vars: HashMap<String, String> = [
        ("B24_AUTH_MODE", "oauth"),
        ("B24_DOMAIN", &i.base_url),
        ("B24_CLIENT_ID", &i.client_id),
        ("B24_CLIENT_SECRET", &i.client_secret),
        ("B24_ACCESS_TOKEN", &i.access_token),
        ("B24_REFRESH_TOKEN", &i.refresh_token),
        ("B24_OAUTH_TOKEN_URL", &i.oauth_token_url),
        ("B24_RATE_LIMITER", "memory"),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_string(), v.to_string()))
    .collect();
    let cfg = b24::Config::from_lookup(&|k| vars.get(k).cloned(), dir.path().to_path_buf())
        .expect("config");
    // What the CLI does when it resolves its configuration.
    b24_guard::redact::remember(cfg.secrets());
    let c = b24::Client::new(cfg).await.unwrap();
    c.call("profile", json!({})).await.unwrap();
    sb.expire_access_tokens();
    c.call("profile", json!({})).await.unwrap();
    assert_eq!(sb.stats().refreshes, 1);
    let stored: Value =
        serde_json::from_slice(&std::fs::read(c.config().token_file()).unwrap()).unwrap();
    let new: Vec<String> = ["access_token", "refresh_token"]
        .iter()
        .map(|k| stored[k].as_str().unwrap().to_string())
        .collect();
    assert_ne!(new[0], i.access_token, "the access token rotated");
    assert_ne!(new[1], i.refresh_token, "the refresh token rotated");
    for t in &new {
        let line = format!("WARN portal refused the call made with {t}; retry later");
        let r = b24_guard::redact::text(&line);
        assert!(!r.contains(t.as_str()), "{r}");
        assert!(r.contains("made with [redacted]; retry"), "{r}");
        let v = b24_guard::redact::value(&json!({"error": line}));
        assert!(!v.to_string().contains(t.as_str()), "{v}");
    }
}
