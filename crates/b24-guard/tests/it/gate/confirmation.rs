//! Confirmation of risky calls: persons confirm when they can be asked (and the operator can
//! demand them), and a second spelling of a risk parameter does not lower the risk.
//!
//! A module of `tests/it/gate.rs`, so it uses its helpers.

use super::*;

#[tokio::test(flavor = "multi_thread")]
async fn persons_confirm_when_they_can_be_asked_and_the_operator_can_demand_them() {
    let sb = sandbox().await;
    let w = World::new();
    let del = |id: u64| confirmed("crm.lead.delete", json!({"id": id}));

    // No operator key, MCP with a person: the model's confirm_destructive is not enough.
    let gate = w.gate(&sb, &CallerInputs::default(), "a", Origin::Mcp);
    let no = Says::new(Answer::No("declined".into()));
    assert!(gate.call(del(1), &no).await.is_err());
    assert_eq!(no.asked(), 1);
    let cannot = Says::new(Answer::CannotAsk);
    assert!(gate.call(del(1), &cannot).await.is_err());
    assert_eq!(cannot.asked(), 1);
    assert_eq!(calls(&sb, "crm.lead.delete"), 0);
    let yes = Says::new(Answer::Yes);
    gate.call(del(1), &yes).await.expect("the person said yes");
    assert_eq!((yes.asked(), calls(&sb, "crm.lead.delete")), (1, 1));
    // A plain write is not put to the person (flags suffice) unless the operator asks.
    let add = confirmed("crm.lead.add", json!({"fields": {"TITLE": "p"}}));
    let spy = Says::new(Answer::No("no".into()));
    gate.call(add.clone(), &spy)
        .await
        .expect("a confirmed write");
    assert_eq!(spy.asked(), 0);
    // Where nobody can be asked, the flags are the confirmation.
    gate.call(del(2), &NoPerson)
        .await
        .expect("flags, no person");
    assert_eq!(calls(&sb, "crm.lead.delete"), 2);

    // The operator demands a person for destructive calls: refused where nobody can be asked,
    // in the CLI and in MCP, for a call, a batch and an apply.
    w.system("require_person_confirmation = \"destructive\"\n");
    for origin in [Origin::Cli, Origin::Mcp] {
        let gate = w.gate(&sb, &CallerInputs::default(), "a", origin);
        let e = gate.call(del(3), &NoPerson).await.expect_err("no person");
        assert!(e.refusal().is_some_and(|r| r.operator_locked), "{e}");
        let req = BatchRequest {
            commands: vec![BatchCommandSpec::Text {
                key: "d".into(),
                text: "crm.lead.delete?id=3".into(),
            }],
            confirm_write: true,
            confirm_destructive: true,
            ..Default::default()
        };
        assert!(gate.batch(req, &NoPerson).await.is_err());
        let raw = confirmed("batch", json!({"cMd": {"d": "crm.lead.delete?id=3"}}));
        assert!(gate.call(raw, &NoPerson).await.is_err());
        let plan = gate
            .plan(PlanRequest {
                method: "crm.lead.delete".into(),
                params: json!({"id": 3}),
                ttl_secs: 60,
                ..Default::default()
            })
            .await
            .expect("planning sends nothing");
        let apply = ApplyRequest {
            plan_id: plan.plan.id.clone(),
            confirm_write: true,
            confirm_destructive: true,
            expect: None,
        };
        assert!(gate.apply(apply.clone(), &NoPerson).await.is_err());
        let no = Says::new(Answer::No("no".into()));
        assert!(gate.apply(apply.clone(), &no).await.is_err());
        assert_eq!(no.asked(), 1);
        // Writes that are not destructive still go by the flags.
        gate.call(add.clone(), &NoPerson).await.expect("a write");
    }
    assert_eq!(calls(&sb, "crm.lead.delete"), 2);

    // The operator demands a person for every write.
    w.system("require_person_confirmation = \"writes\"\n");
    let gate = w.gate(&sb, &CallerInputs::default(), "a", Origin::Mcp);
    let adds = calls(&sb, "crm.lead.add");
    assert!(gate.call(add.clone(), &NoPerson).await.is_err());
    let no = Says::new(Answer::No("no".into()));
    assert!(gate.call(add.clone(), &no).await.is_err());
    let raw = confirmed("batch", json!({"cmd": ["crm.lead.add?fields[TITLE]=r"]}));
    assert!(gate.call(raw, &NoPerson).await.is_err());
    assert_eq!(calls(&sb, "crm.lead.add"), adds);
    let yes = Says::new(Answer::Yes);
    gate.call(add.clone(), &yes)
        .await
        .expect("the person said yes");
    assert_eq!(calls(&sb, "crm.lead.add"), adds + 1);
    // Reads are never put to the person.
    let spy = Says::new(Answer::No("no".into()));
    gate.call(
        CallRequest {
            method: "crm.lead.list".into(),
            ..Default::default()
        },
        &spy,
    )
    .await
    .expect("a read");
    assert_eq!(spy.asked(), 0);

    // require_plan_for_writes in MCP: the apply is confirmed by the person.
    w.system("require_plan_for_writes = true\n");
    let gate = w.gate(&sb, &CallerInputs::default(), "a", Origin::Mcp);
    assert!(
        gate.call(add.clone(), &Says::new(Answer::Yes))
            .await
            .is_err(),
        "a write outside a plan"
    );
    let plan = gate
        .plan(PlanRequest {
            method: "crm.lead.add".into(),
            params: json!({"fields": {"TITLE": "planned"}}),
            ttl_secs: 60,
            ..Default::default()
        })
        .await
        .unwrap();
    let apply = ApplyRequest {
        plan_id: plan.plan.id.clone(),
        confirm_write: true,
        ..Default::default()
    };
    let no = Says::new(Answer::No("no".into()));
    assert!(gate.apply(apply.clone(), &no).await.is_err());
    assert_eq!(no.asked(), 1);
    assert!(gate.apply(apply.clone(), &NoPerson).await.is_err());
    let before = calls(&sb, "crm.lead.add");
    let yes = Says::new(Answer::Yes);
    gate.apply(apply.clone(), &yes)
        .await
        .expect("the person applies");
    assert_eq!(calls(&sb, "crm.lead.add"), before + 1);
    assert!(gate.apply(apply, &yes).await.is_err(), "a plan runs once");
    assert_eq!(calls(&sb, "crm.lead.add"), before + 1);
    sb.shutdown().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_second_spelling_of_a_risk_parameter_does_not_lower_the_risk() {
    let sb = sandbox().await;
    let w = World::new();
    w.system("deny_destructive = true\n");
    let gate = w.gate(&sb, &CallerInputs::default(), "a", Origin::Cli);
    // event.offline.get clears the queue unless clear=0: a destructive call, denied here.
    let plain = CallRequest {
        method: "event.offline.get".into(),
        params: json!({"clear": 1}),
        confirm_write: true,
        ..Default::default()
    };
    assert!(gate.call(plain, &NoPerson).await.is_err());
    let mut failures = Vec::new();
    for (what, params, method) in [
        (
            "CLEAR=0 before clear=1",
            json!({"CLEAR": 0, "clear": 1}),
            "event.offline.get",
        ),
        (
            "clear=1 before Clear=0 (last wins in PHP)",
            json!({"clear": 1, "Clear": 0}),
            "event.offline.get",
        ),
        (
            "batch: CLEAR=0&clear=1",
            json!({"cmd": {"a": "event.offline.get?CLEAR=0&clear=1"}}),
            "batch",
        ),
    ] {
        let before = sb.stats().requests;
        let req = CallRequest {
            method: method.into(),
            params: params.clone(),
            confirm_write: true,
            ..Default::default()
        };
        let r = gate.call(req, &NoPerson).await;
        let sent = sb.stats().requests - before;
        if r.is_ok() || sent > 0 {
            failures.push(format!(
                "{what}: `{method}` with {params} under deny_destructive was sent ({sent} request(s)) with only confirm_write"
            ));
        }
    }
    // b24_read of imbot.v2.event.get is a read only at offset 0; OFFSET=5 beside offset=0.
    let req = CallRequest {
        method: "imbot.v2.event.get".into(),
        params: json!({"offset": 0, "OFFSET": 5}),
        reads_only: true,
        ..Default::default()
    };
    let before = sb.stats().requests;
    let r = gate.call(req, &NoPerson).await;
    if !matches!(r, Err(GateError::Refused(_))) || sb.stats().requests > before {
        failures.push(format!(
            "imbot.v2.event.get {{offset:0, OFFSET:5}} passed as a read (b24_read): sent {}",
            sb.stats().requests - before
        ));
    }
    assert!(failures.is_empty(), "HOLE(s):\n{}", failures.join("\n"));
    sb.shutdown().await;
}
