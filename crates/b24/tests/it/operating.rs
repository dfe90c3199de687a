//! Operating-time pacing (docs/protocol.md §7.3) against the sandbox with a short window: a long
//! export is paced under the method's budget and never blocked; a block caused by someone
//! else is waited out by long jobs and reported with its end by one-shot calls; errors inside
//! a batch say so; processes sharing a store share the pace.

use std::collections::BTreeMap;
use std::path::Path;
use std::time::{Duration, Instant};

use b24::export::{ExportOptions, Strategy, pages};
use b24::{Client, Config, Error};
use futures::StreamExt;
use serde_json::{Value, json};

struct Portal {
    sb: b24_sandbox::Sandbox,
}

async fn portal(leads: usize, limit: f64, window: f64, cost_scale: f64) -> Portal {
    let sb = b24_sandbox::start(b24_sandbox::SandboxConfig {
        seed_leads: leads,
        seed: 11,
        operating_limit_secs: limit,
        operating_window_secs: window,
        cost_scale,
        ..Default::default()
    })
    .await
    .unwrap();
    Portal { sb }
}

/// A webhook client of the portal with its own state directory (so its own limiter and
/// operating store, unless `extra` says otherwise).
async fn client(p: &Portal, state: &Path, extra: &[(&str, &str)]) -> Client {
    let hook = p.sb.info().webhook_url.clone();
    let extra: Vec<(String, String)> = extra
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    let get = move |k: &str| -> Option<String> {
        if k == "B24_WEBHOOK_URL" {
            return Some(hook.clone());
        }
        extra.iter().find(|(x, _)| x == k).map(|(_, v)| v.clone())
    };
    let cfg = Config::from_lookup(&get, state.to_path_buf()).unwrap();
    Client::new(cfg).await.unwrap()
}

fn id(v: &Value) -> u64 {
    v["ID"].as_str().and_then(|s| s.parse().ok()).unwrap()
}

async fn export_offset(c: &Client) -> BTreeMap<u64, u32> {
    let mut o = ExportOptions::new("crm.lead.list", json!({"select": ["ID"]}));
    o.strategy = Strategy::Offset;
    let mut seen = BTreeMap::new();
    let mut s = Box::pin(pages(c.clone(), o));
    while let Some(p) = s.next().await {
        for it in &p.unwrap().items {
            *seen.entry(id(it)).or_insert(0) += 1;
        }
    }
    seen
}

/// The acceptance test. 5,000 leads by offset cost about 2.07 s of operating time
/// here (100 counted pages at cost scale 0.1); the limit is 1.6 s per 20 s window, so the
/// export cannot fit in one window and, unpaced, is blocked after about 75 pages (as
/// `b24 export --strategy offset` was before pacing). Paced, it completes with every item
/// once, and the sandbox's own counters show it never answered `OPERATION_TIME_LIMIT` and
/// the method never went above the limit.
#[tokio::test]
async fn offset_export_is_paced_under_a_tiny_limit_and_never_blocked() {
    let p = portal(5_000, 1.6, 20.0, 0.1).await;
    let dir = tempfile::tempdir().unwrap();
    let c = client(&p, dir.path(), &[("B24_OPERATING_LIMIT_SECS", "1.6")]).await;
    let started = Instant::now();
    let seen = export_offset(&c).await;
    let took = started.elapsed().as_secs_f64();
    assert_eq!(seen.len(), 5_000);
    assert!(seen.values().all(|&n| n == 1), "an item came twice");
    let st = p.sb.stats();
    assert_eq!(st.operation_time_limit, 0, "the portal blocked the method");
    assert_eq!(st.count_429, 0);
    let peak = st.max_operating["crm.lead.list"];
    assert!(peak <= 1.6, "peak operating {peak:.3} s passed the limit");
    // The sandbox's request log: every request was a batch of list pages, all answered 200.
    let log = p.sb.request_log();
    assert!(log.iter().all(|r| r.status == 200), "a request was refused");
    let pages: usize = log.iter().map(|r| r.batch.len()).sum();
    assert_eq!(pages, 100, "each page sent exactly once");
    // It was paced, across more than one window, and the client learned the window (20 s)
    // from `operating_reset_at` alone.
    let cs = c.stats();
    assert!(cs.operating_waits > 0, "{cs:?}");
    assert_eq!(cs.operating_blocks, 0);
    let state = c.operating_state("crm.lead.list").await.unwrap().unwrap();
    // (Up to a second more: `operating_reset_at` is whole seconds, rounded up to be safe.)
    assert!(
        (19.5..=21.5).contains(&state.window),
        "learned window {}",
        state.window
    );
    assert!(
        took > 20.0,
        "finished in {took:.1} s: more than the budget of one window?"
    );
    eprintln!(
        "paced offset export: 5000 items, {} requests, peak {peak:.3}/1.6 s, {took:.1} s, {} waits",
        log.len(),
        cs.operating_waits
    );
}

/// Someone else (a client that does not share our store) uses the budget up: the portal
/// blocks the method. A one-shot call says when it is free; a long export waits the block
/// out and completes; an error inside a one-shot batch is reported as such, not as HTTP 200.
#[tokio::test]
async fn a_block_caused_by_another_client_is_waited_out_by_long_jobs() {
    let p = portal(500, 0.3, 4.0, 0.1).await;
    let (d1, d2) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    // The other client thinks the limit is far higher, so it runs into the block.
    let other = client(&p, d1.path(), &[("B24_RETRY_BUDGET_SECS", "1")]).await;
    let mut blocked = None;
    for _ in 0..200 {
        match other.call("crm.lead.list", json!({"select": ["ID"]})).await {
            Ok(_) => continue,
            Err(e) => {
                blocked = Some(e);
                break;
            }
        }
    }
    let e = blocked.expect("the portal never blocked the method");
    let text = e.to_string();
    assert!(
        matches!(&e, Error::Api(a) if a.code == "OPERATION_TIME_LIMIT"),
        "{text}"
    );
    assert!(text.contains("free again in"), "{text}");
    assert!(p.sb.stats().operation_time_limit >= 1);

    // Inside a one-shot batch the block is the command's own error, not "HTTP 200".
    let mut b = b24::batch::Batch::new();
    b.add("a", "crm.lead.list", json!({})).unwrap();
    b.add("t", "server.time", json!({})).unwrap();
    let ours = client(&p, d2.path(), &[]).await;
    let out = ours.clone();
    let r = b.run(&out).await;
    match &r[0].1 {
        b24::batch::Outcome::Error { code, .. } => assert_eq!(code, "OPERATION_TIME_LIMIT"),
        other => panic!("{other:?}"),
    }
    assert!(r[1].1.is_ok(), "other methods keep working: {:?}", r[1].1);

    // The export waits the block out and completes.
    let started = Instant::now();
    let seen = export_offset(&ours).await;
    assert_eq!(seen.len(), 500);
    assert!(seen.values().all(|&n| n == 1));
    assert!(ours.stats().operating_blocks >= 1);
    // The block lasts until the other client's usage leaves the 4 s window.
    assert!(started.elapsed() < Duration::from_secs(30));
}

/// An error of a command inside an export's batch names the method and its code and says it
/// came from inside a batch.
#[tokio::test]
async fn errors_inside_a_batch_are_reported_as_such() {
    let p = portal(10, 480.0, 600.0, 1.0).await;
    let dir = tempfile::tempdir().unwrap();
    let c = client(&p, dir.path(), &[]).await;
    let mut o = ExportOptions::new("crm.nothing.list", json!({}));
    o.strategy = Strategy::Offset;
    let mut s = Box::pin(pages(c.clone(), o));
    let e = loop {
        match s.next().await {
            Some(Err(e)) => break e,
            Some(Ok(_)) => continue,
            None => panic!("the export of an unknown method succeeded"),
        }
    };
    let t = e.to_string();
    assert!(
        t.starts_with("crm.nothing.list: ERROR_METHOD_NOT_FOUND"),
        "{t}"
    );
    assert!(
        t.contains("inside a batch") && !t.contains("HTTP 200"),
        "{t}"
    );
}

/// Two clients sharing one SQLite store (two processes on a host) share one pace: together
/// they stay under the limit, although each alone would spend it, and both read one state.
/// (Clients with stores of their own mostly manage too, because each adds the usage the
/// portal reports and no reservation explains; the shared ledger also covers requests in
/// flight, which the portal has not reported yet.)
#[tokio::test]
async fn two_clients_sharing_a_store_share_the_budget() {
    let p = portal(3_000, 1.0, 10.0, 0.1).await;
    let dir = tempfile::tempdir().unwrap();
    let env = [("B24_OPERATING_LIMIT_SECS", "1.0")];
    let a = client(&p, dir.path(), &env).await;
    let b = client(&p, dir.path(), &env).await;
    let (x, y) = tokio::join!(export_offset(&a), export_offset(&b));
    assert_eq!((x.len(), y.len()), (3_000, 3_000));
    let st = p.sb.stats();
    assert_eq!(st.operation_time_limit, 0);
    let peak = st.max_operating["crm.lead.list"];
    assert!(peak <= 1.0, "peak {peak}");
    let sa = a.operating_state("crm.lead.list").await.unwrap().unwrap();
    let sb = b.operating_state("crm.lead.list").await.unwrap().unwrap();
    assert_eq!(sa, sb);
}

/// Two hosts (separate state directories) sharing one PostgreSQL store share one pace: the
/// operating states live in `b24_operating`, read and written at the database's clock.
#[tokio::test]
async fn two_hosts_sharing_postgres_share_the_budget() {
    let Some(url) = b24_test_support::pg_url("b24op", "share").await else {
        return;
    };
    let p = portal(3_000, 1.0, 10.0, 0.1).await;
    let (d1, d2) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let env = [
        ("B24_OPERATING_LIMIT_SECS", "1.0"),
        ("B24_STORE_URL", url.as_str()),
    ];
    let a = client(&p, d1.path(), &env).await;
    let b = client(&p, d2.path(), &env).await;
    let (x, y) = tokio::join!(export_offset(&a), export_offset(&b));
    assert_eq!((x.len(), y.len()), (3_000, 3_000));
    let st = p.sb.stats();
    assert_eq!(st.operation_time_limit, 0);
    let peak = st.max_operating["crm.lead.list"];
    assert!(peak <= 1.0, "peak {peak}");
    // Both hosts wrote the same row.
    let sa = a.operating_state("crm.lead.list").await.unwrap().unwrap();
    let sb = b.operating_state("crm.lead.list").await.unwrap().unwrap();
    assert_eq!(sa, sb);
}
