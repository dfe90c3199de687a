//! The event pipeline end to end: offline events survive SIGKILLs, poison events reach the
//! DLQ and replay, the receiver holds up under load, and workers share a PostgreSQL queue.

use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::support::*;
use serde_json::json;

/// An idempotent handler: one marker file per event key (the effect), plus a log of every run.
fn handler(dir: &Path) -> String {
    let script = dir.join("handler.sh");
    std::fs::create_dir_all(dir.join("effects")).unwrap();
    std::fs::write(
        &script,
        format!(
            "#!/bin/sh\ncat > /dev/null\nif [ -e '{fail}' ] && [ \"$B24_EVENT_NAME\" = ONCRMDEALADD ]; then echo poison >&2; exit 3; fi\n\
             echo \"$B24_EVENT_KEY\" >> '{runs}'\n[ -e \"{eff}/$B24_EVENT_KEY\" ] || : > \"{eff}/$B24_EVENT_KEY\"\n",
            fail = dir.join("fail-deals").display(),
            runs = dir.join("runs.log").display(),
            eff = dir.join("effects").display()
        ),
    )
    .unwrap();
    format!("sh {}", script.display())
}

fn effects(dir: &Path) -> usize {
    std::fs::read_dir(dir.join("effects"))
        .map(|d| d.count())
        .unwrap_or(0)
}

async fn app_call(sb: &Sandbox, method: &str, params: serde_json::Value) -> serde_json::Value {
    let mut p = params;
    p["auth"] = json!(sb.info().access_token);
    reqwest::Client::new()
        .post(format!("{}/rest/{method}", sb.base_url()))
        .json(&p)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap()
}

async fn hook_batch(sb: &Sandbox, cmds: Vec<String>) {
    for chunk in cmds.chunks(50) {
        let r: serde_json::Value = reqwest::Client::new()
            .post(format!("{}batch", sb.info().webhook_url))
            .json(&json!({"cmd": chunk}))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        assert_eq!(r["result"]["result_error"], json!([]), "{r}");
    }
}

/// Bind ONCRMLEADADD as an offline event, then add `n` leads: `n` offline records.
async fn offline_lead_adds(sb: &Sandbox, env: &Env, n: usize) {
    let o = env
        .run(&["events", "bind", "ONCRMLEADADD", "--offline"])
        .await;
    assert_eq!(code(&o), 0, "{}", stderr(&o));
    hook_batch(
        sb,
        (0..n)
            .map(|i| format!("crm.lead.add?fields[TITLE]=L{i}"))
            .collect(),
    )
    .await;
}

fn spawn(env: &Env, args: &[&str]) -> Child {
    env.cmd(args)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap()
}

#[tokio::test(flavor = "multi_thread")]
async fn offline_events_survive_sigkills_and_are_handled_once() {
    let sb = sandbox(SandboxConfig {
        limits: false,
        ..Default::default()
    })
    .await;
    let env = Env::oauth(&sb);
    // 2,000 changes: 2,000 new leads, one offline record each.
    offline_lead_adds(&sb, &env, 2000).await;
    let queued = app_call(&sb, "event.offline.list", json!({})).await;
    assert_eq!(queued["total"], json!(2000));
    let h = handler(env.dir.path());
    let args = [
        "worker",
        "--exec",
        h.as_str(),
        "--concurrency",
        "4",
        "--lease",
        "5",
    ];
    // Kill the worker with SIGKILL at 20 moments drawn from a fixed seed, restarting each time.
    let mut seed: u64 = 0x5eed;
    for _ in 0..20 {
        let mut child = spawn(&env, &args);
        seed = seed
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        let wait = 30 + (seed >> 33) % 250;
        tokio::time::sleep(Duration::from_millis(wait)).await;
        child.kill().unwrap(); // SIGKILL
        child.wait().unwrap();
    }
    // Expired leases come back after their 5 s; a final run drains everything.
    tokio::time::sleep(Duration::from_secs(5)).await;
    let o = env
        .run(&["worker", "--exec", &h, "--once", "--concurrency", "8"])
        .await;
    assert_eq!(code(&o), 0, "{}", stderr(&o));
    assert_eq!(
        effects(env.dir.path()),
        2000,
        "every event's effect exactly once"
    );
    let runs = std::fs::read_to_string(env.dir.path().join("runs.log")).unwrap();
    let mut keys: Vec<&str> = runs.lines().collect();
    assert!(keys.len() >= 2000);
    keys.sort();
    keys.dedup();
    assert_eq!(keys.len(), 2000, "2,000 distinct events were handled");
    let left = app_call(&sb, "event.offline.list", json!({})).await;
    assert_eq!(
        left["total"],
        json!(0),
        "the portal's offline queue is empty"
    );
    let st = json(&env.run(&["db", "status"]).await);
    assert_eq!(
        (
            st["queue"]["ready"].as_i64(),
            st["queue"]["running"].as_i64(),
            st["queue"]["processed"].as_i64()
        ),
        (Some(0), Some(0), Some(2000))
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn poison_events_go_to_the_dlq_and_replay_once_fixed() {
    let sb = sandbox(SandboxConfig {
        limits: false,
        ..Default::default()
    })
    .await;
    let env = Env::oauth(&sb);
    for ev in ["ONCRMLEADADD", "ONCRMDEALADD"] {
        assert_eq!(
            code(&env.run(&["events", "bind", ev, "--offline"]).await),
            0
        );
    }
    hook_batch(
        &sb,
        vec![
            "crm.lead.add?fields[TITLE]=a".into(),
            "crm.deal.add?fields[TITLE]=poison".into(),
            "crm.lead.add?fields[TITLE]=b".into(),
        ],
    )
    .await;
    std::fs::write(env.dir.path().join("fail-deals"), "").unwrap();
    let h = handler(env.dir.path());
    let o = env
        .run(&[
            "worker",
            "--exec",
            &h,
            "--once",
            "--max-attempts",
            "3",
            "--retry-base",
            "0",
        ])
        .await;
    assert_eq!(
        code(&o),
        1,
        "--once exits 1 when an event was dead-lettered: {}",
        stderr(&o)
    );
    assert_eq!(effects(env.dir.path()), 2);
    let dl = stdout(&env.run(&["dlq", "list"]).await);
    let rows: Vec<serde_json::Value> = dl
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(rows.len(), 1);
    assert_eq!(
        (rows[0]["event"].as_str(), rows[0]["attempts"].as_i64()),
        (Some("ONCRMDEALADD"), Some(3))
    );
    assert!(rows[0]["last_error"].as_str().unwrap().contains("poison"));
    let shown = json(&env.run(&["dlq", "show", &rows[0]["id"].to_string()]).await);
    assert_eq!(shown["payload"]["EVENT_NAME"], "ONCRMDEALADD");
    std::fs::remove_file(env.dir.path().join("fail-deals")).unwrap();
    assert_eq!(
        json(&env.run(&["dlq", "replay", "--all"]).await)["replayed"],
        1
    );
    let o = env
        .run(&["worker", "--exec", &h, "--once", "--no-pull"])
        .await;
    assert_eq!(code(&o), 0);
    assert_eq!(effects(env.dir.path()), 3);
    assert_eq!(stdout(&env.run(&["dlq", "list"]).await), "");
    // No handler, no worker.
    let o = env.run(&["worker", "--once"]).await;
    assert_eq!(code(&o), 2);
    // A poll schedule that cannot back off is refused.
    let o = env
        .run(&[
            "worker",
            "--exec",
            &h,
            "--once",
            "--poll-interval",
            "10",
            "--poll-max",
            "5",
        ])
        .await;
    assert_eq!(code(&o), 2, "{}", stderr(&o));
}

#[tokio::test(flavor = "multi_thread")]
async fn receiver_takes_10000_events_from_50_clients() {
    let env = Env::bare();
    let mut child = env
        .cmd(&[
            "events",
            "serve",
            "--listen",
            "127.0.0.1:0",
            "--application-token",
            "good",
        ])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut line = String::new();
    {
        use std::io::BufRead;
        let out = child.stdout.as_mut().unwrap();
        std::io::BufReader::new(out).read_line(&mut line).unwrap();
    }
    let url = serde_json::from_str::<serde_json::Value>(&line).unwrap()["listening"]
        .as_str()
        .unwrap()
        .to_string();
    let client = reqwest::Client::new();
    let post = move |body: String| {
        let (client, url) = (client.clone(), url.clone());
        async move {
            client
                .post(&url)
                .header("content-type", "application/x-www-form-urlencoded")
                .body(body)
                .send()
                .await
                .unwrap()
                .status()
                .as_u16()
        }
    };
    let ev = |event: &str, token: &str, id: usize| {
        format!(
            "event={event}&data%5BFIELDS%5D%5BID%5D={id}&ts=1700000000&auth%5Bmember_id%5D=abc&auth%5Bapplication_token%5D={token}"
        )
    };
    assert_eq!(post(ev("ONAPPINSTALL", "good", 0)).await, 200);
    let started = Instant::now();
    let mut tasks = Vec::new();
    for c in 0..50 {
        let post = post.clone();
        tasks.push(tokio::spawn(async move {
            let mut bad = 0;
            for i in 0..200 {
                let id = c * 200 + i + 1;
                assert_eq!(post(ev("ONCRMLEADUPDATE", "good", id)).await, 200);
                if i % 20 == 0 {
                    bad +=
                        (post(ev("ONCRMLEADUPDATE", "forged", id + 100_000)).await == 401) as usize;
                    bad +=
                        (post(format!("event=ONCRMLEADUPDATE&data%5B{id}")).await == 400) as usize;
                    bad += (post(ev("ONCRMLEADUPDATE", "good", id)).await == 200) as usize; // duplicate
                }
            }
            bad
        }));
    }
    let mut refused = 0;
    for t in tasks {
        refused += t.await.unwrap();
    }
    eprintln!(
        "receiver: 10,000 events from 50 clients in {:?}",
        started.elapsed()
    );
    assert_eq!(refused, 50 * 10 * 3);
    child.kill().unwrap();
    child.wait().unwrap();
    let st = json(&env.run(&["db", "status"]).await);
    assert_eq!(
        st["queue"]["ready"],
        json!(10_001),
        "every event once, the install included; nothing forged or malformed"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn four_workers_share_a_postgres_queue_through_sigkills() {
    let Some(url) = pg_test_url("workers").await else {
        return;
    };
    let store = b24_events::Store::open(&url).await.unwrap();
    const N: usize = 20_000;
    let events: Vec<b24_events::NewEvent> = (0..N)
        .map(|i| b24_events::NewEvent {
            key: format!("pg-{i}"),
            source: "offline".into(),
            name: "ONCRMDEALUPDATE".into(),
            payload: json!({"ID": i}),
        })
        .collect();
    for c in events.chunks(2000) {
        store.enqueue(c).await.unwrap();
    }
    let mut env = Env::bare();
    env.set("B24_STORE_URL", &url);
    let h = handler(env.dir.path());
    let args = [
        "worker",
        "--exec",
        h.as_str(),
        "--no-pull",
        "--concurrency",
        "4",
        "--lease",
        "3",
    ];
    let mut workers: Vec<Child> = (0..4).map(|_| spawn(&env, &args)).collect();
    let started = Instant::now();
    let mut kills = 0;
    let mut seed: u64 = 42;
    loop {
        tokio::time::sleep(Duration::from_millis(700)).await;
        let s = store.stats().await.unwrap();
        if s.processed as usize == N {
            break;
        }
        assert!(started.elapsed() < Duration::from_secs(600), "stuck: {s:?}");
        if kills < 6 {
            seed = seed.wrapping_mul(6364136223846793005).wrapping_add(1);
            let w = (seed >> 33) as usize % 4;
            workers[w].kill().unwrap(); // SIGKILL
            workers[w].wait().unwrap();
            workers[w] = spawn(&env, &args);
            kills += 1;
        }
    }
    for w in &mut workers {
        let _ = Command::new("kill")
            .arg("-TERM")
            .arg(w.id().to_string())
            .status();
        w.wait().unwrap();
    }
    assert_eq!(
        effects(env.dir.path()),
        N,
        "every event handled, its effect once"
    );
    let s = store.stats().await.unwrap();
    assert_eq!(
        (s.ready, s.running, s.dead, s.processed),
        (0, 0, 0, N as i64)
    );
    eprintln!(
        "postgres: {N} events by 4 workers with {kills} SIGKILLs in {:?}",
        started.elapsed()
    );
}

/// `--metrics-listen` serves Prometheus text: queue depth, DLQ, HTTP counters and the
/// operating time the portal reported per method.
#[tokio::test(flavor = "multi_thread")]
async fn worker_serves_prometheus_metrics() {
    let sb = sandbox(SandboxConfig::default()).await;
    let env = Env::oauth(&sb);
    offline_lead_adds(&sb, &env, 5).await;
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let addr = format!("127.0.0.1:{port}");
    let h = handler(env.dir.path());
    let mut child = spawn(&env, &["worker", "--exec", &h, "--metrics-listen", &addr]);
    // Wait until the worker has pulled and handled the five events, then read the metrics.
    let deadline = Instant::now() + Duration::from_secs(30);
    let text = loop {
        let body = match reqwest::get(format!("http://{addr}/metrics")).await {
            Ok(r) => r.text().await.unwrap_or_default(),
            Err(_) => String::new(),
        };
        if body.contains("b24_events_processed_total 5") {
            break body;
        }
        assert!(
            Instant::now() < deadline,
            "metrics never showed 5 processed:\n{body}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    child.kill().unwrap();
    child.wait().unwrap();
    for line in [
        "# TYPE b24_queue_ready gauge",
        "# TYPE b24_worker_handled_total counter",
    ] {
        assert!(
            text.lines().any(|l| l == line),
            "missing `{line}` in:\n{text}"
        );
    }
    // Values compared as numbers: the exposition format allows `0` and `0.0` alike.
    for (name, want) in [
        ("b24_queue_ready", 0.0),
        ("b24_dlq_size", 0.0),
        ("b24_worker_handled_total", 5.0),
        ("b24_worker_pulled_total", 5.0),
        ("b24_http_503_total", 0.0),
        ("b24_http_429_total", 0.0),
    ] {
        let got: Option<f64> = text
            .lines()
            .find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.parse().ok());
        assert_eq!(got, Some(want), "{name} in:\n{text}");
    }
    let requests: f64 = text
        .lines()
        .find_map(|l| l.strip_prefix("b24_http_requests_total "))
        .and_then(|v| v.parse().ok())
        .expect("b24_http_requests_total");
    assert!(requests >= 2.0, "{text}");
    assert!(
        text.lines()
            .any(|l| l.starts_with("b24_operating_seconds{method=\"event.offline.get\"} ")),
        "the portal's operating time per method is exported:\n{text}"
    );
    assert_eq!(effects(env.dir.path()), 5);
}

/// `--auth-connector` binds the connector's own queue (and reading it needs the connector);
/// `--min-timeout` belongs to `ONOFFLINEEVENT` alone and is refused before anything is sent.
#[tokio::test(flavor = "multi_thread")]
async fn bind_passes_the_connector_and_checks_min_timeout() {
    let sb = sandbox(SandboxConfig {
        limits: false,
        ..Default::default()
    })
    .await;
    let env = Env::oauth(&sb);
    let o = env
        .run(&[
            "events",
            "bind",
            "ONCRMLEADADD",
            "--offline",
            "--auth-connector",
            "sync1",
        ])
        .await;
    assert_eq!(code(&o), 0, "{}", stderr(&o));
    hook_batch(&sb, vec!["crm.lead.add?fields[TITLE]=A".into()]).await;
    let plain = app_call(&sb, "event.offline.list", json!({})).await;
    assert_eq!(plain["total"], json!(0), "{plain}");
    let own = app_call(
        &sb,
        "event.offline.list",
        json!({"auth_connector": "sync1"}),
    )
    .await;
    assert_eq!(own["total"], json!(1), "{own}");

    let before = sb.request_log().len();
    let o = env
        .run(&[
            "events",
            "bind",
            "ONCRMLEADADD",
            "--offline",
            "--min-timeout",
            "5",
        ])
        .await;
    assert_eq!(code(&o), 2, "{}", stderr(&o));
    assert!(stderr(&o).contains("ONOFFLINEEVENT"), "{}", stderr(&o));
    assert_eq!(
        sb.request_log().len(),
        before,
        "nothing may reach the portal"
    );
    let o = env
        .run(&[
            "events",
            "bind",
            "ONOFFLINEEVENT",
            "--handler",
            "https://example.invalid/hook",
            "--min-timeout",
            "0",
        ])
        .await;
    assert_eq!(code(&o), 0, "{}", stderr(&o));
}
