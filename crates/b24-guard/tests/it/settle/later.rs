//! A later `settle` (another process): a write whose process died mid-call, a delete by a
//! code that must not be resent, the policy holding for every request settling sends, a batch
//! its live process is still sending, and an applied plan under `require_plan_for_writes`.
//!
//! A module of `tests/it/settle.rs`, so it uses its helpers.

use super::*;

/// A process that ends while a write is out leaves its intent and no outcome. `settle` takes
/// such writes once they are old enough (an hour by default: until then they may still be on
/// their way), and settles them the same way.
#[tokio::test(flavor = "multi_thread")]
async fn a_write_whose_process_died_mid_call_is_settled_later() {
    let f = Fixture::new().await;
    f.sb.set_faults(FaultSpec {
        hold_after_write: 1,
        ..Default::default()
    });
    let gate = f.gate();
    let task = tokio::spawn(async move {
        gate.call(
            write("crm.lead.add", json!({"fields": {"TITLE": "died"}})),
            &NoPerson,
        )
        .await
    });
    // The portal ran the add and holds its answer; the process "dies" meanwhile.
    for _ in 0..200 {
        if f.requests("crm.lead.add") == 1 {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
    }
    assert_eq!(f.requests("crm.lead.add"), 1);
    task.abort();
    let _ = task.await;
    assert_eq!(f.leads_where(json!({"TITLE": "died"})).await.len(), 1);
    let g = f.gate();
    assert!(unknown_ids(&g).is_empty(), "no outcome was recorded");
    // Too recent for the default: it may still be on its way. Nothing is sent.
    assert!(g.settle(None).await.unwrap().is_empty());
    let lists = f.requests("crm.lead.list");
    let reports = g.settle_with(None, 0.0).await.unwrap();
    assert_eq!(reports.len(), 1, "{reports:?}");
    assert_eq!(reports[0].status, "settled", "{reports:?}");
    assert_eq!(reports[0].evidence["no_outcome_recorded"], true);
    assert_eq!(reports[0].evidence["adds_resent"], 0, "found by its stamp");
    assert_eq!(f.requests("crm.lead.list"), lists + 1, "one look-up");
    assert_eq!(f.requests("crm.lead.add"), 1, "not added again");
    assert_eq!(f.leads_where(json!({"TITLE": "died"})).await.len(), 1);
    assert!(
        g.settle_with(None, 0.0).await.unwrap().is_empty(),
        "settled once"
    );
}

/// Hostile: a delete by a code (`bizproc.robot.delete CODE`) whose process died mid-call,
/// settled later. Codes are given out again (the app registers its robot anew), so resending
/// it after the fact would delete whatever carries the code now; only deletes by a numeric ID
/// are resent. Asserted from the request log: the settle sends nothing; the control delete by
/// ID is resent and the lead is gone.
#[tokio::test(flavor = "multi_thread")]
async fn a_delete_by_code_is_not_resent_later() {
    let f = Fixture::new().await;
    f.sb.set_faults(FaultSpec {
        latency: Some((
            std::time::Duration::from_secs(3),
            std::time::Duration::from_secs(3),
        )),
        ..Default::default()
    });
    for (m, p) in [
        ("bizproc.robot.delete", json!({"CODE": "robot"})),
        ("crm.lead.delete", json!({"id": 5})),
    ] {
        let gate = f.gate();
        let task = tokio::spawn(async move { gate.call(write(m, p), &NoPerson).await });
        tokio::time::sleep(std::time::Duration::from_millis(400)).await;
        task.abort();
        let _ = task.await;
    }
    f.sb.set_faults(FaultSpec::default());
    tokio::time::sleep(std::time::Duration::from_secs(3)).await;
    let robots = f.requests("bizproc.robot.delete");
    let leads = f.requests("crm.lead.delete");
    let reports = f.gate().settle_with(None, 0.0).await.unwrap();
    assert_eq!(
        f.requests("bizproc.robot.delete"),
        robots,
        "a delete by code was resent: {reports:?}"
    );
    assert_eq!(f.requests("crm.lead.delete"), leads + 1, "{reports:?}");
    assert!(f.leads_where(json!({"ID": 5})).await.is_empty());
    let robot = f
        .gate()
        .settle_with(None, 0.0)
        .await
        .unwrap()
        .into_iter()
        .chain(reports)
        .find(|r| r.method == "bizproc.robot.delete");
    if let Some(r) = robot {
        assert_eq!(r.status, "unknown", "{r:?}");
    }
}

/// Hostile: settling under a policy that does not allow what settling sends. The stamp
/// look-up is a read of its own (`crm.lead.list`): a deny list naming it must hold for the
/// look-up as for any call; and a later `b24 settle` under a policy that now denies the write,
/// or is read-only, must resend nothing. Asserted from the sandbox's request log and data.
#[tokio::test(flavor = "multi_thread")]
async fn settling_obeys_the_policy_for_every_request_it_sends() {
    let f = Fixture::new().await;
    let deny = |d: &[&str]| AgentPolicy {
        allow: vec!["*".into()],
        allow_unlisted: true,
        deny: d.iter().map(|s| s.to_string()).collect(),
        ..Default::default()
    };
    f.lose(1);
    let r = f
        .gate_with(deny(&["crm.lead.list"]))
        .call(
            write("crm.lead.add", json!({"fields": {"TITLE": "no lookup"}})),
            &NoPerson,
        )
        .await;
    assert!(unknown(&r), "{r:?}");
    assert_eq!(
        f.requests("crm.lead.list"),
        0,
        "the denied look-up was sent"
    );
    assert_eq!(f.requests("crm.lead.add"), 1, "not added again");
    assert_eq!(f.leads_where(json!({"TITLE": "no lookup"})).await.len(), 1);

    // An update whose every answer is lost, settled later under a deny list / read-only.
    f.lose(3);
    let r = f
        .gate()
        .call(
            write(
                "crm.lead.update",
                json!({"id": 2, "fields": {"TITLE": "upd"}}),
            ),
            &NoPerson,
        )
        .await;
    assert!(unknown(&r), "{r:?}");
    f.lose(0);
    let sent = f.requests("crm.lead.update");
    assert_eq!(sent, 3);
    let denied = f
        .gate_with(deny(&["crm.lead.update"]))
        .settle(None)
        .await
        .unwrap();
    let ro = f
        .gate_with(AgentPolicy {
            read_only: true,
            ..deny(&[])
        })
        .settle(None)
        .await
        .unwrap();
    assert_eq!(f.requests("crm.lead.update"), sent, "{denied:?} {ro:?}");
    let upd: Vec<_> = denied
        .iter()
        .chain(&ro)
        .filter(|r| r.method == "crm.lead.update")
        .collect();
    assert_eq!(upd.len(), 2, "{denied:?} {ro:?}");
    assert!(upd.iter().all(|r| r.status == "unknown"), "{upd:?}");
    // The add, settled once its look-up is allowed: found by its stamp, not added again.
    assert_eq!(f.requests("crm.lead.add"), 1);
    assert_eq!(f.leads_where(json!({"TITLE": "no lookup"})).await.len(), 1);
}

/// Hostile: `b24 settle` while the process that sent a batch is alive and still waiting for
/// it. A long batch (many chunks paced by operating-time blocks) can be out longer than the
/// hour after which a write with an intent and no outcome counts as its process having died;
/// here the hour is 3 s and the portal holds the batch for 6 s. The settle must not take the
/// batch's keys from the live process — before, it looked the stamp up (nothing yet), added the
/// lead itself, and then the batch added it too: two leads with one stamp.
#[tokio::test(flavor = "multi_thread")]
async fn settle_does_not_take_a_batch_its_live_process_is_still_sending() {
    let f = Fixture::new().await;
    f.sb.set_faults(FaultSpec {
        latency: Some((
            std::time::Duration::from_secs(6),
            std::time::Duration::from_secs(6),
        )),
        ..Default::default()
    });
    let gate = f.gate();
    let batch = tokio::spawn(async move {
        // 50 reads fill the first chunk; the add goes in the second, sent when the first
        // one's answer is in.
        let mut commands: Vec<BatchCommandSpec> = (0..50)
            .map(|i| BatchCommandSpec::Params {
                key: format!("r{i}"),
                method: "crm.lead.get".into(),
                params: json!({"id": 1}),
            })
            .collect();
        commands.push(BatchCommandSpec::Params {
            key: "a".into(),
            method: "crm.lead.add".into(),
            params: json!({"fields": {"TITLE": "live batch"}}),
        });
        let req = BatchRequest {
            commands,
            confirm_write: true,
            confirm_destructive: true,
            ..Default::default()
        };
        gate.batch(req, &NoPerson).await
    });
    // The batch is at the portal (held); later requests are not delayed.
    tokio::time::sleep(std::time::Duration::from_millis(500)).await;
    f.sb.set_faults(FaultSpec::default());
    tokio::time::sleep(std::time::Duration::from_millis(3000)).await;
    let reports = f.gate().settle_with(None, 3.0).await.unwrap();
    let run = batch.await.unwrap().unwrap();
    assert!(matches!(run, BatchRun::Done { .. }));
    assert_eq!(
        f.leads_where(json!({"TITLE": "live batch"})).await.len(),
        1,
        "added twice: the settle took a live batch's key: {reports:?}"
    );
    assert_eq!(f.requests("crm.lead.add"), 0, "{reports:?}");
}

/// Under `require_plan_for_writes` a write goes out only through plan → apply. When an applied
/// plan's answer and both resends are lost, `b24 settle` must be able to settle it: the resend
/// is the reviewed plan's own call (the audit record names the plan). Before, the settle
/// checked it as a write sent without a plan, the policy refused, and nothing could settle it.
/// Asserted from the request log: one more update, the title set once.
#[tokio::test(flavor = "multi_thread")]
async fn an_applied_plan_left_unknown_settles_under_require_plan() {
    let f = Fixture::new().await;
    let policy = || AgentPolicy {
        allow: vec!["*".into()],
        allow_unlisted: true,
        require_plan: true,
        ..Default::default()
    };
    // A write without a plan is refused outright.
    let e = f
        .gate_with(policy())
        .call(
            write(
                "crm.lead.update",
                json!({"id": 3, "fields": {"TITLE": "no plan"}}),
            ),
            &NoPerson,
        )
        .await
        .unwrap_err();
    assert!(e.refusal().is_some(), "{e}");
    let g = f.gate_with(policy());
    let planned = g
        .plan(PlanRequest {
            method: "crm.lead.update".into(),
            params: json!({"id": 3, "fields": {"TITLE": "planned"}}),
            ttl_secs: 600,
            ..Default::default()
        })
        .await
        .unwrap();
    f.lose(3);
    let r = g
        .apply(
            ApplyRequest {
                plan_id: planned.plan.id.clone(),
                confirm_write: true,
                ..Default::default()
            },
            &NoPerson,
        )
        .await;
    assert!(
        matches!(
            &r,
            Err(GateError::Client(b24::Error::OutcomeUnknown { .. }))
        ),
        "{r:?}"
    );
    f.lose(0);
    assert_eq!(f.requests("crm.lead.update"), 3);
    let reports = f.gate_with(policy()).settle(None).await.unwrap();
    assert_eq!(reports.len(), 1, "{reports:?}");
    assert_eq!(reports[0].status, "settled", "{reports:?}");
    assert_eq!(f.requests("crm.lead.update"), 4);
    assert_eq!(f.leads_where(json!({"ID": 3})).await[0]["TITLE"], "planned");
    // A write left unknown without a plan is another matter: not resent under this policy.
    f.lose(3);
    let r = f
        .gate()
        .call(
            write(
                "crm.lead.update",
                json!({"id": 4, "fields": {"TITLE": "unplanned"}}),
            ),
            &NoPerson,
        )
        .await;
    assert!(unknown(&r), "{r:?}");
    f.lose(0);
    let sent = f.requests("crm.lead.update");
    let reports = f.gate_with(policy()).settle(None).await.unwrap();
    assert_eq!(reports.len(), 1, "{reports:?}");
    assert_eq!(reports[0].status, "unknown", "{reports:?}");
    assert_eq!(f.requests("crm.lead.update"), sent, "not resent");
}
