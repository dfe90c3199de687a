//! Benchmark: simple calls per second the sandbox serves on loopback with its limits off.
//!
//! `cargo run --release -p b24-sandbox --example throughput -- [SECONDS] [CONCURRENCY]`
//! It uses a plain HTTP client (not b24) with keep-alive connections and prints calls/s and
//! latency percentiles.

// Tests and benches build their own reqwest clients; their set-up installs the TLS provider
// (the workspace clippy.toml forbids that in library code only).
#![allow(clippy::disallowed_methods)]

use std::time::{Duration, Instant};

#[tokio::main]
async fn main() {
    let args: Vec<String> = std::env::args().collect();
    let secs: f64 = args.get(1).and_then(|s| s.parse().ok()).unwrap_or(5.0);
    let conc: usize = args.get(2).and_then(|s| s.parse().ok()).unwrap_or(32);
    let sb = b24_sandbox::start(b24_sandbox::SandboxConfig {
        limits: false,
        seed_leads: 1000,
        ..Default::default()
    })
    .await
    .expect("sandbox");
    let url = format!("{}server.time.json", sb.info().webhook_url);
    let list = format!("{}crm.lead.get.json", sb.info().webhook_url);
    // reqwest has no provider of its own in this workspace: ring, as the sandbox uses.
    let _ = rustls::crypto::ring::default_provider().install_default();
    let client = reqwest::Client::new();
    let deadline = Instant::now() + Duration::from_secs_f64(secs);
    let mut tasks = Vec::new();
    for w in 0..conc {
        let (client, url, list) = (client.clone(), url.clone(), list.clone());
        tasks.push(tokio::spawn(async move {
            let mut lat = Vec::new();
            let mut i = 0u64;
            while Instant::now() < deadline {
                let t = Instant::now();
                let r = if (i + w as u64).is_multiple_of(2) {
                    client.post(&url).json(&serde_json::json!({})).send().await
                } else {
                    client
                        .post(&list)
                        .json(&serde_json::json!({"id": 1 + (i % 1000)}))
                        .send()
                        .await
                };
                let ok = match r {
                    Ok(r) => r.status().is_success() && r.bytes().await.is_ok(),
                    Err(_) => false,
                };
                assert!(ok, "request failed");
                lat.push(t.elapsed());
                i += 1;
            }
            lat
        }));
    }
    let mut all = Vec::new();
    for t in tasks {
        all.extend(t.await.unwrap());
    }
    all.sort();
    let n = all.len();
    let pct = |p: f64| all[((n as f64 * p) as usize).min(n - 1)].as_secs_f64() * 1000.0;
    println!(
        "sandbox throughput: {n} calls in {secs:.1} s = {:.0} calls/s (concurrency {conc}); latency p50 {:.2} ms, p99 {:.2} ms",
        n as f64 / secs,
        pct(0.50),
        pct(0.99)
    );
    sb.shutdown().await;
}
