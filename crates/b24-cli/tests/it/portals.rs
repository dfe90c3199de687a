//! `--portal DOMAIN|MEMBER_ID` and `b24 portals list` against several sandbox portals in one
//! process, with installs recorded by the real receiver (`b24 events serve`). Which portal a
//! command reached is read from each portal's own request log.

use crate::support::*;

/// The REST methods each portal answered (its request log, in order).
fn methods_by_portal(ps: &b24_sandbox::Portals) -> Vec<Vec<String>> {
    ps.iter()
        .map(|p| p.request_log().into_iter().map(|r| r.method).collect())
        .collect()
}

/// `--portal` works after the subcommand as it does before it; an unknown or ambiguous portal
/// is refused before anything is sent.
#[tokio::test(flavor = "multi_thread")]
async fn portal_flag_after_the_subcommand_reaches_that_portal_only() {
    let ps = b24_sandbox::start_many(SandboxConfig::default(), 3)
        .await
        .unwrap();
    let (env, _rx) = app_on(&ps, 2).await;
    let (i0, i1, i2) = (
        ps.get(0).unwrap().info().clone(),
        ps.get(1).unwrap().info().clone(),
        ps.get(2).unwrap().info().clone(),
    );
    for p in ps.iter() {
        p.reset_stats();
    }
    let before = methods_by_portal(&ps);

    // After the subcommand, by domain: portal 1 alone gets the call.
    let o = env
        .run(&["call", "--portal", &i1.domain, "crm.lead.list"])
        .await;
    assert_eq!(code(&o), 0, "{}", stderr(&o));
    let after = methods_by_portal(&ps);
    let new = |k: usize, a: &Vec<Vec<String>>, b: &Vec<Vec<String>>| a[k][b[k].len()..].to_vec();
    assert_eq!(new(1, &after, &before), ["crm.lead.list"], "{after:?}");
    assert!(new(0, &after, &before).is_empty(), "{after:?}");
    assert!(new(2, &after, &before).is_empty(), "{after:?}");
    assert!(
        ps.get(1)
            .unwrap()
            .request_log()
            .iter()
            .all(|r| r.auth == "oauth"),
        "with the installation's OAuth pair"
    );

    // After the method and its params, by member id: portal 0 alone.
    let before = after;
    let o = env
        .run(&["call", "server.time", "--portal", &i0.member_id])
        .await;
    assert_eq!(code(&o), 0, "{}", stderr(&o));
    let after = methods_by_portal(&ps);
    assert_eq!(new(0, &after, &before), ["server.time"], "{after:?}");
    assert!(new(1, &after, &before).is_empty(), "{after:?}");

    // The same portal before and after the subcommand is one portal.
    let before = after;
    let o = env
        .run(&[
            "--portal",
            &i0.domain,
            "call",
            "--portal",
            &i0.domain,
            "server.time",
        ])
        .await;
    assert_eq!(code(&o), 0, "{}", stderr(&o));
    let after = methods_by_portal(&ps);
    assert_eq!(new(0, &after, &before), ["server.time"], "{after:?}");

    // Refused, nothing sent anywhere: an unknown portal, a portal without the app, two
    // different portals, an empty value.
    let before = after;
    for (args, want) in [
        (
            vec!["call", "--portal", "nowhere.example", "server.time"],
            2,
        ),
        (
            vec!["call", "--portal", i2.domain.as_str(), "server.time"],
            2,
        ),
        (
            vec![
                "--portal",
                i0.domain.as_str(),
                "call",
                "--portal",
                i1.domain.as_str(),
                "server.time",
            ],
            2,
        ),
        (
            vec!["list", "crm.lead.list", "--portal", "nowhere.example"],
            2,
        ),
    ] {
        let o = env.run(&args).await;
        assert_eq!(code(&o), want, "{args:?}: {}", stderr(&o));
        assert!(o.stdout.is_empty(), "{args:?}: {}", stdout(&o));
    }
    assert_eq!(methods_by_portal(&ps), before, "nothing was sent");

    // Under `auth`, `--portal` keeps its own meaning (the host to log in to), not an
    // installation: no "no installation" refusal.
    let o = env.run(&["auth", "status", "--portal", &i2.domain]).await;
    assert!(
        !stderr(&o).contains("no installation"),
        "auth --portal is the login host: {}",
        stderr(&o)
    );
    ps.shutdown().await;
}

/// `b24 portals list` shows each installation's bucket level: calls on one portal raise its
/// level and leave the other's where it was.
#[tokio::test(flavor = "multi_thread")]
async fn portals_list_bucket_level_follows_the_portal_called() {
    let ps = b24_sandbox::start_many(SandboxConfig::default(), 2)
        .await
        .unwrap();
    let (mut env, _rx) = app_on(&ps, 2).await;
    // A bucket that barely drains (0.001 requests/s): the levels read by `portals list` are
    // the calls made, whatever the time between the processes.
    env.set("B24_RATE_PER_SEC", "0.001");
    let (i0, i1) = (
        ps.get(0).unwrap().info().clone(),
        ps.get(1).unwrap().info().clone(),
    );
    let levels = |o: &std::process::Output| -> (f64, f64) {
        assert_eq!(code(o), 0, "{}", stderr(o));
        let rows: Vec<serde_json::Value> = stdout(o)
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect();
        assert_eq!(rows.len(), 2, "{rows:?}");
        let of = |m: &str| {
            let r = rows.iter().find(|r| r["member_id"] == m).unwrap();
            // No call yet: no bucket recorded (null) reads as empty.
            r["bucket_level"].as_f64().unwrap_or(0.0)
        };
        (of(&i0.member_id), of(&i1.member_id))
    };
    // One call on portal 1 first, so that its level is recorded and must stay put.
    let o = env
        .run(&["--portal", &i1.domain, "call", "server.time"])
        .await;
    assert_eq!(code(&o), 0, "{}", stderr(&o));
    let (a0, a1) = levels(&env.run(&["portals", "list"]).await);
    assert!(a1 >= 0.9, "portal 1 made one call: level {a1}");
    let before = ps.get(0).unwrap().stats().requests;
    for k in 0..4 {
        let o = if k % 2 == 0 {
            env.run(&["--portal", &i0.member_id, "call", "server.time"])
                .await
        } else {
            env.run(&["call", "server.time", "--portal", &i0.domain])
                .await
        };
        assert_eq!(code(&o), 0, "{}", stderr(&o));
    }
    let sent = ps.get(0).unwrap().stats().requests - before;
    assert!(sent >= 4, "{sent} requests reached portal 0");
    let (b0, b1) = levels(&env.run(&["portals", "list"]).await);
    assert!(
        b0 - a0 >= 3.9 && b0 - a0 <= sent as f64 + 0.1,
        "portal 0's level follows its {sent} requests: {a0} -> {b0}"
    );
    assert!(
        (b1 - a1).abs() < 0.05,
        "portal 1 was not called: {a1} -> {b1}"
    );
    // `portals show` reads the same level.
    let o = env.run(&["portals", "show", &i0.domain]).await;
    assert_eq!(code(&o), 0, "{}", stderr(&o));
    let shown = json(&o)["bucket_level"].as_f64().unwrap();
    assert!((shown - b0).abs() < 0.05, "show {shown}, list {b0}");
    ps.shutdown().await;
}

/// `b24 --portal INSTALLATION auth …`: under `auth`, `--portal` names the host to log in to,
/// so an installation given before the subcommand cannot be honoured. It must be refused,
/// not ignored: ignored, `auth logout` deleted the tokens of `B24_DOMAIN`'s portal and
/// `auth status` reported on it, while the operator named another portal.
#[tokio::test(flavor = "multi_thread")]
async fn installation_portal_before_auth_is_refused_not_ignored() {
    let ps = b24_sandbox::start_many(SandboxConfig::default(), 2)
        .await
        .unwrap();
    let (mut env, _rx) = app_on(&ps, 2).await;
    let (i0, i1) = (
        ps.get(0).unwrap().info().clone(),
        ps.get(1).unwrap().info().clone(),
    );
    // The operator's usual portal is portal 1, with a stored pair.
    env.set("B24_DOMAIN", &i1.base_url);
    for sub in ["status", "logout"] {
        let o = env.run(&["--portal", &i0.domain, "auth", sub]).await;
        assert_eq!(code(&o), 2, "auth {sub}: {}{}", stdout(&o), stderr(&o));
        assert!(o.stdout.is_empty(), "auth {sub}: {}", stdout(&o));
        assert!(
            stderr(&o).contains("auth"),
            "auth {sub} says why: {}",
            stderr(&o)
        );
    }
    ps.shutdown().await;
}

/// A long-running `b24 mcp --portal X` keeps its client (and the access token in it) for the
/// whole session. Once the operator forgets the portal (`b24 portals remove X`: its tokens
/// deleted here), no further tool call may reach that portal — not even with the access
/// token the server still holds in memory.
#[tokio::test(flavor = "multi_thread")]
async fn a_running_mcp_server_stops_acting_for_a_portal_removed_under_it() {
    use rmcp::ServiceExt;
    let ps = b24_sandbox::start_many(SandboxConfig::default(), 1)
        .await
        .unwrap();
    let (env, _rx) = app_on(&ps, 1).await;
    let i0 = ps.get(0).unwrap().info().clone();
    let cmd = tokio::process::Command::from(env.cmd(&["mcp", "--portal", &i0.domain]));
    let transport = rmcp::transport::TokioChildProcess::new(cmd).expect("spawn b24 mcp");
    let client = tokio::time::timeout(std::time::Duration::from_secs(30), ().serve(transport))
        .await
        .expect("initialize in time")
        .expect("initialize");
    let read = || async {
        let serde_json::Value::Object(args) = serde_json::json!({"method": "server.time"}) else {
            unreachable!()
        };
        let p = rmcp::model::CallToolRequestParams::new("b24_read").with_arguments(args);
        tokio::time::timeout(std::time::Duration::from_secs(60), client.call_tool(p))
            .await
            .expect("answer in time")
            .expect("no protocol error")
    };
    let r = read().await;
    assert_ne!(r.is_error, Some(true), "{r:?}");
    let sent = ps.get(0).unwrap().request_log().len();
    assert!(sent >= 1);

    let o = env.run(&["portals", "remove", &i0.domain]).await;
    assert_eq!(code(&o), 0, "{}", stderr(&o));

    let r = read().await;
    assert_eq!(
        r.is_error,
        Some(true),
        "the removed portal was called: {r:?}"
    );
    assert_eq!(
        ps.get(0).unwrap().request_log().len(),
        sent,
        "nothing reaches a portal removed here"
    );
    let _ = client.cancel().await;
    ps.shutdown().await;
}

/// `b24 worker --portal X` pulls X's offline events with the client it built at start. Once
/// the operator forgets X (`b24 portals remove X`), the worker stops (authentication error)
/// and no further pull reaches X.
#[tokio::test(flavor = "multi_thread")]
async fn a_worker_for_one_portal_stops_pulling_once_it_is_removed() {
    let ps = b24_sandbox::start_many(SandboxConfig::default(), 1)
        .await
        .unwrap();
    let (env, _rx) = app_on(&ps, 1).await;
    let i0 = ps.get(0).unwrap().info().clone();
    let mut child = env
        .cmd(&[
            "worker",
            "--portal",
            &i0.domain,
            "--exec",
            "true",
            "--poll-interval",
            "0.1",
            "--poll-max",
            "0.2",
        ])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let pulls = || {
        ps.get(0)
            .unwrap()
            .request_log()
            .iter()
            .filter(|r| r.method.starts_with("event.offline"))
            .count()
    };
    let t0 = std::time::Instant::now();
    while pulls() == 0 && t0.elapsed() < std::time::Duration::from_secs(20) {
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    assert!(pulls() > 0, "the worker pulls the portal's offline events");

    let o = env.run(&["portals", "remove", &i0.domain]).await;
    assert_eq!(code(&o), 0, "{}", stderr(&o));
    // A pull already under way may finish; after a second nothing more is sent.
    tokio::time::sleep(std::time::Duration::from_secs(1)).await;
    let after = pulls();
    tokio::time::sleep(std::time::Duration::from_millis(1500)).await;
    let still = pulls();
    let exited = child.try_wait().unwrap();
    if exited.is_none() {
        let _ = child.kill();
    }
    let status = child.wait().unwrap();
    let mut err = String::new();
    {
        use std::io::Read;
        let _ = child.stderr.take().unwrap().read_to_string(&mut err);
    }
    assert_eq!(
        still, after,
        "pulls went on after the removal; stderr: {err}"
    );
    assert!(exited.is_some(), "the worker keeps running: {err}");
    assert_eq!(status.code(), Some(5), "{err}");
    ps.shutdown().await;
}

/// Two installations recorded under one domain (a portal that moved to a new address while
/// another kept or took the old one) make `--portal DOMAIN` ambiguous: refused with nothing
/// sent, instead of acting with whichever row the store returned first (the member id still
/// names one exactly).
#[tokio::test(flavor = "multi_thread")]
async fn a_domain_two_installations_share_is_refused_as_ambiguous() {
    let ps = b24_sandbox::start_many(SandboxConfig::default(), 2)
        .await
        .unwrap();
    let (env, _rx) = app_on(&ps, 2).await;
    let (i0, i1) = (
        ps.get(0).unwrap().info().clone(),
        ps.get(1).unwrap().info().clone(),
    );
    let db = rusqlite::Connection::open(env.state_dir().join("queue.db")).unwrap();
    db.execute(
        "UPDATE b24_installations SET domain = ?1 WHERE member_id = ?2",
        [i0.domain.to_uppercase(), i1.member_id.clone()],
    )
    .unwrap();
    drop(db);
    let before = methods_by_portal(&ps);
    let o = env
        .run(&["call", "--portal", &i0.domain, "server.time"])
        .await;
    assert_eq!(code(&o), 2, "{}{}", stdout(&o), stderr(&o));
    assert!(stderr(&o).contains(&i0.member_id), "{}", stderr(&o));
    assert!(stderr(&o).contains(&i1.member_id), "{}", stderr(&o));
    assert_eq!(methods_by_portal(&ps), before, "nothing was sent");
    // By member id it is one installation.
    let o = env
        .run(&["call", "--portal", &i0.member_id, "server.time"])
        .await;
    assert_eq!(code(&o), 0, "{}", stderr(&o));
    ps.shutdown().await;
}
