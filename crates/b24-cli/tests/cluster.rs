//! Several `b24` processes that share nothing but a PostgreSQL store (separate state dirs, as
//! separate hosts would have) share one portal budget and one OAuth pair.

mod support;

use support::*;

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
