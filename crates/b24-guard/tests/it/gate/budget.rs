//! The write budget: the operator's survives a fresh state dir, a raw batch counts every
//! write, a batch sends nothing it cannot afford, MCP clients and the CLI share the operator's
//! total, and parallel writers cannot all pass the check.
//!
//! A module of `tests/it/gate.rs`, so it uses its helpers.

use super::*;

#[tokio::test(flavor = "multi_thread")]
async fn the_operator_budget_survives_a_fresh_state_dir() {
    let sb = sandbox().await;
    let w = World::new();
    w.user("max_writes_per_hour = 2\n");
    let add = || confirmed("crm.lead.add", json!({"fields": {"TITLE": "budget"}}));
    for state in ["one", "two"] {
        let gate = w.gate(&sb, &CallerInputs::default(), state, Origin::Cli);
        gate.call(add(), &NoPerson)
            .await
            .expect("within the budget");
    }
    let gate = w.gate(&sb, &CallerInputs::default(), "fresh", Origin::Cli);
    let e = gate
        .call(add(), &NoPerson)
        .await
        .expect_err("budget used up");
    assert!(e.refusal().is_some_and(|r| r.operator_locked), "{e}");
    assert_eq!(calls(&sb, "crm.lead.add"), 2);
    sb.shutdown().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_raw_batch_counts_every_write_against_the_budget() {
    let sb = sandbox().await;
    let w = World::new();
    w.user("max_writes_per_hour = 2\n");
    let gate = w.gate(&sb, &CallerInputs::default(), "a", Origin::Cli);
    let cmd: serde_json::Map<String, Value> = (0..5)
        .map(|i| {
            (
                format!("c{i}"),
                json!(format!("crm.lead.add?fields[TITLE]=b{i}")),
            )
        })
        .collect();
    let res = gate
        .call(confirmed("batch", json!({"cmd": cmd})), &NoPerson)
        .await;
    let sent = calls(&sb, "crm.lead.add");
    // Gate::batch refuses the same five writes (each counts); the raw `batch` call must too.
    assert!(
        sent <= 2,
        "HOLE: a raw `batch` call of 5 crm.lead.add took one write from a budget of 2 per hour and \
         sent {sent} writes (result ok: {})",
        res.is_ok()
    );
    sb.shutdown().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn gate_batch_under_a_budget_sends_nothing_it_cannot_afford() {
    let sb = sandbox().await;
    let w = World::new();
    w.system("max_writes_per_hour = 2\n");
    let gate = w.gate(&sb, &CallerInputs::default(), "a", Origin::Cli);
    let commands = (0..5)
        .map(|i| BatchCommandSpec::Params {
            key: format!("c{i}"),
            method: "crm.lead.add".into(),
            params: json!({"fields": {"TITLE": format!("b{i}")}}),
        })
        .collect();
    let req = BatchRequest {
        commands,
        confirm_write: true,
        ..Default::default()
    };
    let e = gate.batch(req, &NoPerson).await.expect_err("over budget");
    assert!(e.refusal().is_some(), "{e}");
    assert_eq!(sb.stats().requests, 0);
    sb.shutdown().await;
}

/// The operator's budget is a total for the portal: MCP clients have budgets of their own,
/// but two clients and the CLI together still write no more than the operator allows.
#[tokio::test(flavor = "multi_thread")]
async fn mcp_clients_and_the_cli_share_the_operators_total_budget() {
    let sb = sandbox().await;
    let w = World::new();
    w.system("max_writes_per_hour = 3\n");
    let add = |t: &str| confirmed("crm.lead.add", json!({"fields": {"TITLE": t}}));
    let a = w
        .gate(&sb, &CallerInputs::default(), "a", Origin::Mcp)
        .with_client("alpha");
    let b = w
        .gate(&sb, &CallerInputs::default(), "b", Origin::Mcp)
        .with_client("beta");
    let cli = w.gate(&sb, &CallerInputs::default(), "c", Origin::Cli);
    a.call(add("a1"), &NoPerson).await.expect("alpha 1");
    a.call(add("a2"), &NoPerson).await.expect("alpha 2");
    b.call(add("b1"), &NoPerson).await.expect("beta 1");
    let e = b
        .call(add("b2"), &NoPerson)
        .await
        .expect_err("a fourth write over the operator's 3");
    assert!(e.refusal().is_some(), "{e}");
    let e = cli
        .call(add("c1"), &NoPerson)
        .await
        .expect_err("the CLI counts in the same total");
    assert!(e.refusal().is_some(), "{e}");
    assert_eq!(calls(&sb, "crm.lead.add"), 3);
    sb.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn parallel_writers_cannot_all_pass_the_budget_check() {
    let sb = sandbox().await;
    let w = Arc::new(World::new());
    w.system("max_writes_per_hour = 1\n");
    let barrier = Arc::new(tokio::sync::Barrier::new(24));
    let sb = Arc::new(sb);
    let mut tasks = Vec::new();
    for i in 0..24 {
        let (w, b, sb) = (w.clone(), barrier.clone(), sb.clone());
        tasks.push(tokio::spawn(async move {
            // One gate (one store connection) per writer, as separate processes would have.
            let gate = w.gate(&sb, &CallerInputs::default(), &format!("p{i}"), Origin::Cli);
            let req = confirmed(
                "crm.lead.add",
                json!({"fields": {"TITLE": format!("race{i}")}}),
            );
            b.wait().await;
            gate.call(req, &NoPerson).await.is_ok()
        }));
    }
    let mut ok = 0;
    for t in tasks {
        ok += usize::from(t.await.unwrap());
    }
    let sent = calls(&sb, "crm.lead.add");
    assert!(
        sent <= 1 && ok <= 1,
        "HOLE: {sent} writes sent ({ok} allowed) by 24 parallel writers under max_writes_per_hour = 1 \
         (take_write checks writes_last_hour() and then count_write() in two steps)"
    );
}
