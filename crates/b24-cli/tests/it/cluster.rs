//! Several `b24` processes that share nothing but a PostgreSQL store (separate state dirs, as
//! separate hosts would have) share one portal budget and one OAuth pair.

use crate::support::*;

/// One "host": its own temp dirs, the shared store, and `limiter`.
fn host(sb: &Sandbox, oauth: bool, store: Option<&str>, limiter: &str) -> Env {
    let mut e = if oauth {
        Env::oauth(sb)
    } else {
        Env::webhook(sb)
    };
    if let Some(url) = store {
        e.set("B24_STORE_URL", url);
    }
    e.set("B24_RATE_LIMITER", limiter);
    e
}

/// Four hosts, each exporting every lead and then making 15 list calls, one process per call.
async fn four_hosts_load(sb: &Sandbox, store: Option<&str>, limiter: &str) {
    let mut threads = Vec::new();
    for _ in 0..4 {
        let env = host(sb, false, store, limiter);
        threads.push(std::thread::spawn(move || {
            let o = env
                .cmd(&["export", "crm.lead.list", "--select", "ID", "--quiet"])
                .output()
                .unwrap();
            assert_eq!(code(&o), 0, "{}", stderr(&o));
            assert_eq!(stdout(&o).lines().count(), 6_000);
            for i in 0..15 {
                let params = format!(r#"{{"filter":{{">ID":{}}},"start":-1}}"#, i * 100);
                let o = env
                    .cmd(&["call", "crm.lead.list", "--params", &params])
                    .output()
                    .unwrap();
                assert_eq!(code(&o), 0, "{}", stderr(&o));
            }
            drop(env);
        }));
    }
    for t in threads {
        tokio::task::spawn_blocking(move || t.join().unwrap())
            .await
            .unwrap();
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn four_hosts_share_one_budget_through_postgres() {
    let Some(url) = pg_test_url("budget").await else {
        return;
    };
    let shared = sandbox_with_leads(6_000).await;
    let control = sandbox_with_leads(6_000).await;
    // The control runs at the same time: the same load with per-process limiters.
    tokio::join!(
        four_hosts_load(&shared, Some(&url), "postgres"),
        four_hosts_load(&control, None, "memory"),
    );
    let s = shared.stats();
    assert!(s.requests > 60, "the load must exceed the burst: {s:?}");
    assert_eq!(s.count_503, 0, "one budget in PostgreSQL: {s:?}");
    assert!(s.max_bucket_level <= s.bucket_capacity, "{s:?}");
    let c = control.stats();
    eprintln!(
        "shared budget: {} requests, {} x 503, peak level {:.1}/{}; per-process control: {} requests, {} x 503",
        s.requests, s.count_503, s.max_bucket_level, s.bucket_capacity, c.requests, c.count_503
    );
    assert!(
        c.count_503 > 0,
        "without the shared store the same load overruns the bucket: {c:?}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn eight_hosts_expire_at_once_and_refresh_once() {
    let Some(url) = pg_test_url("refresh").await else {
        return;
    };
    let sb = sandbox(SandboxConfig::default()).await;
    let envs: Vec<Env> = (0..8)
        .map(|_| host(&sb, true, Some(&url), "memory"))
        .collect();
    let o = envs[0].run(&["call", "profile"]).await;
    assert_eq!(code(&o), 0, "{}", stderr(&o));
    sb.expire_access_tokens();
    let handles: Vec<_> = envs
        .iter()
        .map(|e| {
            let mut c = e.cmd(&["call", "profile"]);
            std::thread::spawn(move || c.output().unwrap())
        })
        .collect();
    for h in handles {
        let o = h.join().unwrap();
        assert_eq!(code(&o), 0, "{}", stderr(&o));
    }
    assert_eq!(sb.stats().refreshes, 1, "{:?}", sb.stats());
    // The pair is in the database, not in any host's state dir.
    for e in &envs {
        assert!(
            !files_under(&e.state_dir())
                .iter()
                .any(|p| p.to_string_lossy().contains("tokens-")),
            "a token file was written although the store is PostgreSQL"
        );
    }
    // `auth status` reads it from there, without printing a token.
    let o = envs[3].run(&["auth", "status"]).await;
    assert_eq!(code(&o), 0, "{}", stderr(&o));
    let st = json(&o);
    assert_eq!(st["logged_in"], serde_json::json!(true), "{st}");
    assert!(st["token_store"].as_str().unwrap().contains("PostgreSQL"));
    let secrets = [
        sb.info().access_token.clone(),
        sb.info().refresh_token.clone(),
    ];
    assert_no_secrets("auth status", &o.stdout, &secrets);
}

/// One app on several portals: the receiver records verified installs, `b24 portals` lists
/// them, and `--portal` addresses each with its own tokens, bucket and refresh.
#[tokio::test(flavor = "multi_thread")]
async fn portals_installed_through_the_receiver_are_addressed_with_portal() {
    let ps = b24_sandbox::start_many(SandboxConfig::default(), 3)
        .await
        .unwrap();
    let (p0, p1) = (ps.get(0).unwrap(), ps.get(1).unwrap());
    let i0 = p0.info().clone();
    let i1 = p1.info().clone();
    let (env, rx) = app_on(&ps, 2).await;

    let o = env.run(&["portals", "list"]).await;
    assert_eq!(code(&o), 0, "{}", stderr(&o));
    let rows: Vec<serde_json::Value> = stdout(&o)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(rows.len(), 2, "{rows:?}");
    for r in &rows {
        assert_eq!(r["state"], "installed");
        assert_eq!(r["token_state"], "valid");
        assert_eq!(r["queue_depth"], 1, "its install event: {r}");
    }
    assert_no_secrets(
        "portals list",
        &o.stdout,
        std::slice::from_ref(&i0.client_secret),
    );

    // --portal by domain and by member id: each call reaches its own portal only.
    let o = env
        .run(&["--portal", &i1.domain, "call", "server.time"])
        .await;
    assert_eq!(code(&o), 0, "{}", stderr(&o));
    assert_eq!(calls_of(p1, "server.time"), 1);
    assert_eq!(calls_of(p0, "server.time"), 0);
    let o = env
        .run(&["--portal", &i0.member_id, "call", "app.info"])
        .await;
    assert_eq!(code(&o), 0, "{}", stderr(&o));
    assert_eq!(
        json(&o)["CODE"],
        serde_json::json!(i0.client_id),
        "{}",
        stdout(&o)
    );

    // An expired token is refreshed for that portal alone, and the rotated pair is kept.
    p1.expire_access_tokens();
    let o = env
        .run(&["--portal", &i1.domain, "call", "server.time"])
        .await;
    assert_eq!(code(&o), 0, "{}", stderr(&o));
    assert_eq!(p1.stats().refreshes, 1);
    assert_eq!(p0.stats().refreshes, 0);
    let o = env
        .run(&["--portal", &i1.domain, "call", "server.time"])
        .await;
    assert_eq!(code(&o), 0, "{}", stderr(&o));
    assert_eq!(p1.stats().refreshes, 1, "the rotated pair was stored");

    // Uninstalled: its tokens are gone, nothing acts for it.
    assert_eq!(p1.uninstall_app(&rx.url).await.status, 200);
    let o = env
        .run(&["--portal", &i1.member_id, "call", "server.time"])
        .await;
    assert_eq!(code(&o), 5, "{}", stderr(&o));
    let o = env.run(&["portals", "show", &i1.domain]).await;
    assert_eq!(json(&o)["state"], "uninstalled");
    assert_eq!(json(&o)["token_state"], "none");
    // Removed here by the operator.
    let o = env.run(&["portals", "remove", &i0.domain]).await;
    assert_eq!(code(&o), 0, "{}", stderr(&o));
    let o = env
        .run(&["--portal", &i0.domain, "call", "server.time"])
        .await;
    assert_eq!(code(&o), 5, "{}", stderr(&o));
    let o = env
        .run(&["--portal", "nowhere.example", "call", "server.time"])
        .await;
    assert_eq!(code(&o), 2, "{}", stderr(&o));
    drop(rx);
    ps.shutdown().await;
}

/// An idempotent handler: one marker file per event key (the effect), plus a log of runs.
fn effect_handler(dir: &std::path::Path) -> String {
    let script = dir.join("handler.sh");
    std::fs::create_dir_all(dir.join("effects")).unwrap();
    std::fs::write(
        &script,
        format!(
            "#!/bin/sh\ncat > /dev/null\necho \"$B24_EVENT_KEY\" >> '{runs}'\n[ -e \"{eff}/$B24_EVENT_KEY\" ] || : > \"{eff}/$B24_EVENT_KEY\"\n",
            runs = dir.join("runs.log").display(),
            eff = dir.join("effects").display()
        ),
    )
    .unwrap();
    format!("sh {}", script.display())
}

fn effect_count(dir: &std::path::Path) -> usize {
    std::fs::read_dir(dir.join("effects"))
        .map(|d| d.count())
        .unwrap_or(0)
}

/// `b24 worker --all-portals` killed with SIGKILL again and again while it pulls four portals
/// (one with most of the events): every event's effect happens exactly once and every
/// portal's offline queue ends empty.
#[tokio::test(flavor = "multi_thread")]
async fn all_portals_worker_survives_sigkills_and_handles_each_event_once() {
    let ps = b24_sandbox::start_many(
        SandboxConfig {
            limits: false,
            ..Default::default()
        },
        4,
    )
    .await
    .unwrap();
    let (env, rx) = app_on(&ps, 4).await;
    let http = reqwest::Client::new();
    let mut total = 0;
    for (k, p) in ps.iter().enumerate() {
        let r = http
            .post(format!("{}/rest/event.bind", p.base_url()))
            .json(&serde_json::json!({"auth": p.info().access_token, "event": "ONCRMLEADADD", "event_type": "offline"}))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200);
        let n = if k == 0 { 600 } else { 100 };
        assert_eq!(p.emit_lead_adds(n), n);
        total += n;
    }
    let h = effect_handler(env.dir.path());
    let args = [
        "worker",
        "--all-portals",
        "--exec",
        h.as_str(),
        "--concurrency",
        "4",
        "--lease",
        "5",
        "--poll-interval",
        "0.1",
        "--poll-max",
        "1",
        "--per-portal-cap",
        "50",
    ];
    let mut seed: u64 = 0x5eed;
    for _ in 0..12 {
        let mut child = env
            .cmd(&args)
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .unwrap();
        seed = seed
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        tokio::time::sleep(std::time::Duration::from_millis(50 + (seed >> 33) % 300)).await;
        child.kill().unwrap(); // SIGKILL
        child.wait().unwrap();
    }
    // Expired leases come back after their 5 s; a last worker drains everything.
    tokio::time::sleep(std::time::Duration::from_secs(5)).await;
    let mut last = env
        .cmd(&args)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(90);
    // The four ONAPPINSTALL events are handled too (their effects count with the rest).
    let total_effects = total + 4;
    while (effect_count(env.dir.path()) < total_effects
        || ps.iter().any(|p| p.stats().offline_queue_depth > 0))
        && std::time::Instant::now() < deadline
    {
        tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    }
    tokio::time::sleep(std::time::Duration::from_millis(500)).await;
    let _ = last.kill();
    let _ = last.wait();
    drop(rx);
    assert_eq!(
        effect_count(env.dir.path()),
        total_effects,
        "each effect exactly once"
    );
    let runs = std::fs::read_to_string(env.dir.path().join("runs.log")).unwrap();
    let mut keys: Vec<&str> = runs.lines().filter(|k| k.starts_with("offline:")).collect();
    keys.sort();
    keys.dedup();
    assert_eq!(keys.len(), total, "{total} distinct offline events handled");
    for p in ps.iter() {
        assert_eq!(
            p.stats().offline_queue_depth,
            0,
            "{} drained",
            p.info().domain
        );
    }
    ps.shutdown().await;
}

/// `B24_PG_POOL_SIZE` (the process's PostgreSQL connection budget) out of range or not a
/// number is refused at start by every command that opens the stores, naming the variable,
/// before anything is opened.
#[tokio::test(flavor = "multi_thread")]
async fn pg_pool_size_bad_values_are_refused() {
    for bad in ["0", "abc", "5", "100000", "-8"] {
        for args in [
            &["worker", "--exec", "/bin/true"][..],
            &["events", "serve"][..],
            &["mcp"][..],
        ] {
            let mut env = Env::bare();
            env.set("B24_PG_POOL_SIZE", bad);
            let o = env.run(args).await;
            assert_eq!(code(&o), 2, "{args:?} {bad}: {}", stderr(&o));
            assert!(stderr(&o).contains("B24_PG_POOL_SIZE"), "{}", stderr(&o));
        }
    }
}

/// `B24_PG_POOL_SIZE` set but empty, blank or not UTF-8 is refused like a bad number, naming
/// the variable; it was read as unset (the default budget) before.
#[tokio::test(flavor = "multi_thread")]
async fn pg_pool_size_empty_or_not_utf8_is_refused() {
    use std::ffi::OsString;
    #[cfg(unix)]
    let not_utf8 = {
        use std::os::unix::ffi::OsStringExt;
        Some(OsString::from_vec(b"1\xff6".to_vec()))
    };
    #[cfg(not(unix))]
    let not_utf8: Option<OsString> = None;
    let values = [
        Some(OsString::from("")),
        Some(OsString::from("  ")),
        not_utf8,
    ];
    for bad in values.into_iter().flatten() {
        for args in [
            // Commands that end by themselves when the value is taken (a served
            // `events serve` would not): the check runs before any command.
            &["worker", "--exec", "/bin/true", "--no-pull", "--once"][..],
            &["mcp"][..],
        ] {
            let env = Env::bare();
            let mut c = env.cmd(args);
            c.env("B24_PG_POOL_SIZE", &bad);
            let o = tokio::task::spawn_blocking(move || c.output().unwrap())
                .await
                .unwrap();
            assert_eq!(code(&o), 2, "{args:?} {bad:?}: {}", stderr(&o));
            assert!(stderr(&o).contains("B24_PG_POOL_SIZE"), "{}", stderr(&o));
        }
    }
}

/// A valid budget is taken (here `b24 db migrate` on PostgreSQL with the smallest one).
#[tokio::test(flavor = "multi_thread")]
async fn pg_pool_size_is_accepted() {
    let Some(url) = pg_test_url("poolsize").await else {
        return;
    };
    let mut env = Env::bare();
    env.set("B24_PG_POOL_SIZE", "6");
    let o = env.run(&["db", "migrate", "--store", &url]).await;
    assert_eq!(code(&o), 0, "{}", stderr(&o));
}
