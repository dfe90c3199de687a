//! Strict parameters: positions read as PHP reads them, and an unknown parameter refused on
//! every front door before anything is sent.
//!
//! A module of `tests/it/gate.rs`, so it uses its helpers.

use super::*;

/// Hostile: keys that look positional to a digit test but are names to PHP (`02`, `+1`):
/// PHP turns only canonical decimal keys into indexes, so `{"02": …}` is an unknown parameter
/// the portal ignores, and the strict check must refuse it like any other. Nothing is sent.
#[tokio::test(flavor = "multi_thread")]
async fn strict_params_read_positions_as_php_does() {
    let sb = sandbox().await;
    let w = World::new();
    let mcp = w.gate(&sb, &CallerInputs::default(), "a", Origin::Mcp);
    for p in [
        json!({"id": 1, "02": {"TITLE": "x"}}),
        json!({"id": 1, "+1": {"TITLE": "x"}}),
        json!({"id": 1, "fields": {"TITLE": "x"}, "params": {"00": "Y"}}),
        json!({"id": 1, "params[01]": "Y"}),
    ] {
        let e = mcp
            .call(confirmed("crm.deal.update", p.clone()), &NoPerson)
            .await
            .expect_err(&format!("{p}"));
        let r = e.refusal().unwrap_or_else(|| panic!("{p}: {e}"));
        assert!(r.reason.contains("does not take"), "{p}: {r}");
    }
    assert!(sb.request_log().is_empty(), "{:?}", sb.request_log());
}

/// Strict parameters: on by default for MCP, off for the CLI, forced by an operator file; a
/// parameter the method does not take is refused on every front door (call, raw batch, batch
/// commands, plan) and nothing reaches the portal.
#[tokio::test(flavor = "multi_thread")]
async fn strict_params_refuse_before_anything_is_sent() {
    let sb = sandbox().await;
    let w = World::new();
    let mcp = w.gate(&sb, &CallerInputs::default(), "a", Origin::Mcp);
    assert!(mcp.strict_params());
    let attacks = [
        (
            "crm.deal.update",
            json!({"id": 1, "feilds": {"TITLE": "x"}}),
        ),
        (
            "crm.deal.update",
            json!({"ID": 1, "FEILDS": {"TITLE": "x"}}),
        ),
        (
            "CRM.Deal.Update",
            json!({"id": 1, "fields": {}, "params": {"evil": "Y"}}),
        ),
        ("crm.deal.update", json!({"id": 1, "params[evil]": "Y"})),
        ("user.current", json!({"x": 1})),
        (
            "batch",
            json!({"cmd": {"a": "crm.deal.get?id=1&select[]=ID&Sneaky=1"}}),
        ),
        (
            "batch",
            json!({"Cmd": ["crm.deal.update?id=1&PARAMS[evil]=1"]}),
        ),
    ];
    for (m, p) in &attacks {
        let e = mcp
            .call(confirmed(m, p.clone()), &NoPerson)
            .await
            .expect_err(&format!("{m} {p}"));
        let r = e.refusal().unwrap_or_else(|| panic!("{m} {p}: {e}"));
        assert!(r.reason.contains("does not take"), "{m} {p}: {r}");
        let plan = PlanRequest {
            method: m.to_string(),
            params: p.clone(),
            ttl_secs: 60,
            ..Default::default()
        };
        assert!(mcp.plan(plan).await.is_err(), "plan {m} {p}");
    }
    let batch = BatchRequest {
        commands: vec![
            BatchCommandSpec::Params {
                key: "ok".into(),
                method: "crm.lead.list".into(),
                params: json!({"select": ["ID"]}),
            },
            BatchCommandSpec::Text {
                key: "bad".into(),
                text: "crm.lead.get?id=1&EVIL[x]=1".into(),
            },
        ],
        ..Default::default()
    };
    let e = mcp.batch(batch, &NoPerson).await.expect_err("batch");
    assert!(
        e.refusal().is_some_and(|r| r.reason.contains("EVIL")),
        "{e}"
    );
    assert!(sb.request_log().is_empty(), "{:?}", sb.request_log());

    // The CLI does not check unless asked; the caller can turn MCP's default off.
    let cli = w.gate(&sb, &CallerInputs::default(), "b", Origin::Cli);
    assert!(!cli.strict_params());
    cli.call(confirmed("user.current", json!({"x": 1})), &NoPerson)
        .await
        .expect("sent");
    let off = CallerInputs {
        flags: AgentPolicy {
            strict_params: Some(false),
            ..Default::default()
        },
        ..Default::default()
    };
    let lax = w.gate(&sb, &off, "c", Origin::Mcp);
    assert!(!lax.strict_params());
    assert_eq!(calls(&sb, "user.current"), 1);

    // An operator file forces it: the caller's `false` does not lift it, and the refusal says so.
    w.user("strict_params = true\n");
    let forced = w.gate(&sb, &off, "d", Origin::Cli);
    assert!(forced.strict_params());
    let e = forced
        .call(confirmed("user.current", json!({"X": 1})), &NoPerson)
        .await
        .expect_err("forced");
    let r = e.refusal().expect("a refusal");
    assert!(r.operator_locked && r.fix.contains("no flag"), "{r}");
    assert_eq!(
        calls(&sb, "user.current"),
        1,
        "the refused call was not sent"
    );
}
