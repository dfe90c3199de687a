//! Helpers shared by the conformance tests: a plain HTTP client, never the b24 client.

use std::time::Duration;

use b24_sandbox::{Sandbox, SandboxConfig};
use serde_json::{Value, json};

pub async fn start(cfg: SandboxConfig) -> Sandbox {
    b24_sandbox::start(cfg).await.unwrap()
}

/// ring as the process-default rustls provider: reqwest is built without one of its own and
/// panics when a client is built with none installed.
pub fn install_crypto_provider() {
    let _ = rustls::crypto::ring::default_provider().install_default();
}

pub fn http() -> reqwest::Client {
    install_crypto_provider();
    reqwest::Client::builder()
        .timeout(Duration::from_secs(10))
        .build()
        .unwrap()
}

/// POST JSON to a webhook method; returns (status, body).
pub async fn hook(sb: &Sandbox, method: &str, params: Value) -> (u16, Value) {
    let r = http()
        .post(format!("{}{method}.json", sb.info().webhook_url))
        .json(&params)
        .send()
        .await
        .unwrap();
    (r.status().as_u16(), r.json().await.unwrap_or(Value::Null))
}

/// POST JSON with the OAuth token in the body.
pub async fn app(sb: &Sandbox, method: &str, mut params: Value) -> (u16, Value) {
    params["auth"] = json!(sb.info().access_token);
    let r = http()
        .post(format!("{}/rest/{method}", sb.base_url()))
        .json(&params)
        .send()
        .await
        .unwrap();
    (r.status().as_u16(), r.json().await.unwrap_or(Value::Null))
}

pub fn err(b: &Value) -> (&str, &str) {
    (
        b["error"].as_str().unwrap_or("?"),
        b["error_description"].as_str().unwrap_or("?"),
    )
}
