//! Rate and operating limits: the leaky bucket's capacity and drain, the operating limit
//! per method and its reset, and a configurable operating window.
//!
//! A module of `tests/it/conformance.rs`, so it shares its imports.

use super::*;

#[tokio::test]
async fn leaky_bucket_capacity_and_drain() {
    let sb = start(SandboxConfig {
        manual_clock: true,
        ..Default::default()
    })
    .await; // standard: 50, 2/s
    for i in 0..50 {
        let (s, _) = hook(&sb, "server.time", json!({})).await;
        assert_eq!(s, 200, "request {i} within the burst");
    }
    let (s, b) = hook(&sb, "server.time", json!({})).await;
    assert_eq!(
        (s, err(&b)),
        (503, ("QUERY_LIMIT_EXCEEDED", "Too many requests"))
    );
    sb.advance_clock(Duration::from_secs(1)); // drains two
    assert_eq!(hook(&sb, "server.time", json!({})).await.0, 200);
    assert_eq!(hook(&sb, "server.time", json!({})).await.0, 200);
    assert_eq!(hook(&sb, "server.time", json!({})).await.0, 503);
    let st = sb.stats();
    assert_eq!((st.count_503, st.max_bucket_level.round()), (2, 50.0));
    let ent = start(SandboxConfig {
        plan: b24_sandbox::Plan::Enterprise,
        manual_clock: true,
        ..Default::default()
    })
    .await;
    for _ in 0..250 {
        assert_eq!(hook(&ent, "server.time", json!({})).await.0, 200);
    }
    assert_eq!(hook(&ent, "server.time", json!({})).await.0, 503);
}

#[tokio::test]
async fn operating_limit_blocks_one_method_and_resets() {
    let sb = start(SandboxConfig {
        seed_leads: 10,
        operating_limit_secs: 0.1,
        cost_scale: 10.0,
        manual_clock: true,
        ..Default::default()
    })
    .await;
    let (s, b) = hook(&sb, "crm.lead.list", json!({})).await;
    assert_eq!(s, 200);
    let t = &b["time"];
    assert!(t["operating"].as_f64().unwrap() > 0.1);
    let reset = t["operating_reset_at"].as_i64().unwrap();
    let (s, b) = hook(&sb, "crm.lead.list", json!({})).await;
    assert_eq!((s, err(&b).0), (429, "OPERATION_TIME_LIMIT"));
    // Other methods keep working.
    assert_eq!(hook(&sb, "crm.deal.list", json!({})).await.0, 200);
    sb.advance_clock(Duration::from_secs(601));
    let (s, b) = hook(&sb, "crm.lead.list", json!({})).await;
    assert_eq!(s, 200, "unblocked after the baskets expired");
    assert!(b["time"]["operating_reset_at"].as_i64().unwrap() > reset);
}

/// `--operating-window`: the window and its ten baskets shrink with it, `operating_reset_at`
/// follows (a client learns the window from it), and commands inside a batch are counted as
/// blocks in the stats.
#[tokio::test]
async fn operating_window_is_configurable_and_blocks_in_batches_are_counted() {
    let sb = start(SandboxConfig {
        seed_leads: 10,
        operating_limit_secs: 0.1,
        operating_window_secs: 20.0,
        cost_scale: 10.0,
        manual_clock: true,
        ..Default::default()
    })
    .await;
    let (s, b) = hook(&sb, "crm.lead.list", json!({})).await;
    assert_eq!(s, 200);
    let t = &b["time"];
    let reset_in = t["operating_reset_at"].as_f64().unwrap() - t["finish"].as_f64().unwrap();
    // (`operating_reset_at` is whole seconds, and `finish` is after the call's own cost.)
    assert!((17.5..=20.0).contains(&reset_in), "reset in {reset_in}");
    let (s, b) = hook(
        &sb,
        "batch",
        json!({"cmd": {"a": "crm.lead.list", "t": "server.time"}}),
    )
    .await;
    assert_eq!(s, 200);
    assert_eq!(
        b["result"]["result_error"]["a"]["error"],
        "OPERATION_TIME_LIMIT"
    );
    let st = sb.stats();
    assert_eq!(st.operation_time_limit, 1);
    assert!(st.max_operating["crm.lead.list"] > 0.1);
    assert!(st.operating_billed["crm.lead.list"] > 0.1);
    // A basket is two seconds: after 19 s the first is still in, after 20 s it is out.
    sb.advance_clock(Duration::from_secs(19));
    assert_eq!(hook(&sb, "crm.lead.list", json!({})).await.0, 429);
    sb.advance_clock(Duration::from_secs(2));
    assert_eq!(hook(&sb, "crm.lead.list", json!({})).await.0, 200);
}
