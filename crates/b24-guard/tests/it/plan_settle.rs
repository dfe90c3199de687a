//! A plan applied with an unknown outcome, settled later by `b24 settle`: the plan's state
//! follows the settlement (`applied` when the write is known to have happened, `failed` when
//! the portal refused the resend) and the settlement is kept with the plan for `b24 plan show`.
//! A settle that finds nothing new records its attempt and leaves the state `unknown`.
//! Asserted against the sandbox's data and request log as well as the plan store.

use b24_guard::gate::{ApplyRequest, Gate, GateError, NoPerson, PlanRequest};
use b24_guard::policy::AgentPolicy;
use serde_json::{Value, json};

use crate::settle::Fixture;

/// Plan `params` for crm.lead.update and apply it with every answer lost (the send and both
/// resends): the apply ends outcome-unknown. Returns the plan id.
async fn apply_unknown(f: &Fixture, g: &Gate, params: Value) -> String {
    let planned = g
        .plan(PlanRequest {
            method: "crm.lead.update".into(),
            params,
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
    f.lose(0);
    assert!(
        matches!(
            &r,
            Err(GateError::Client(b24::Error::OutcomeUnknown { .. }))
        ),
        "{r:?}"
    );
    let plan = g.show_plan(&planned.plan.id).unwrap().unwrap();
    assert_eq!(plan.state, "unknown");
    assert!(plan.settlement.is_none());
    planned.plan.id
}

fn deny(d: &[&str]) -> AgentPolicy {
    AgentPolicy {
        allow: vec!["*".into()],
        allow_unlisted: true,
        deny: d.iter().map(|s| s.to_string()).collect(),
        ..Default::default()
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn settling_an_applied_plan_updates_its_state_and_keeps_the_settlement() {
    let f = Fixture::new().await;
    let id = apply_unknown(
        &f,
        &f.gate(),
        json!({"id": 3, "fields": {"TITLE": "planned"}}),
    )
    .await;
    assert_eq!(f.requests("crm.lead.update"), 3);

    // A settle that may not resend (the policy now denies the update): still unknown, and
    // the plan says a settle looked at it.
    let reports = f
        .gate_with(deny(&["crm.lead.update"]))
        .settle(None)
        .await
        .unwrap();
    assert_eq!(reports.len(), 1, "{reports:?}");
    assert_eq!(reports[0].status, "unknown");
    let plan = f.gate().show_plan(&id).unwrap().unwrap();
    assert_eq!(plan.state, "unknown");
    let s = plan.settlement.expect("the attempt is kept");
    assert_eq!(s["outcome"], "unknown");
    assert_eq!(s["call_id"], reports[0].call_id.as_str());
    assert_eq!(f.requests("crm.lead.update"), 3, "nothing resent");

    // Allowed again: the resend settles it; the plan is applied, with how it was settled.
    let reports = f.gate().settle(None).await.unwrap();
    assert_eq!(reports.len(), 1, "{reports:?}");
    assert_eq!(reports[0].status, "settled", "{reports:?}");
    assert_eq!(f.requests("crm.lead.update"), 4);
    assert_eq!(f.leads_where(json!({"ID": 3})).await[0]["TITLE"], "planned");
    let plan = f.gate().show_plan(&id).unwrap().unwrap();
    assert_eq!(plan.state, "applied");
    let s = plan.settlement.expect("settlement kept");
    assert_eq!(s["outcome"], "settled");
    assert_eq!(s["settle"], "resend");
    assert_eq!(s["call_id"], reports[0].call_id.as_str());
    assert_eq!(s["evidence"]["how"], "resend");
    assert!(
        s["at"]
            .as_str()
            .is_some_and(|t| t.parse::<jiff::Timestamp>().is_ok())
    );
    // Applied means applied: it is not claimed again.
    let again = f
        .gate()
        .apply(
            ApplyRequest {
                plan_id: id.clone(),
                confirm_write: true,
                ..Default::default()
            },
            &NoPerson,
        )
        .await
        .unwrap_err();
    assert!(again.refusal().is_some(), "{again}");
    assert_eq!(f.requests("crm.lead.update"), 4);
}

/// The portal refuses the resend (the lead was deleted meanwhile): the plan is `failed`. The
/// plan here is an MCP client's (recorded as `PORTAL#mcp:NAME`); `b24 settle` runs for the
/// portal and still finds it.
#[tokio::test(flavor = "multi_thread")]
async fn a_plan_whose_resend_the_portal_refuses_is_failed() {
    let f = Fixture::new().await;
    let client = f.gate().with_client("agent");
    let id = apply_unknown(&f, &client, json!({"id": 4, "fields": {"TITLE": "gone"}})).await;
    let c = f.gate().client().await.unwrap();
    c.call_with("crm.lead.delete", json!({"id": 4}), Default::default())
        .await
        .expect("delete");
    let reports = f.gate().settle(None).await.unwrap();
    assert_eq!(reports.len(), 1, "{reports:?}");
    assert_eq!(reports[0].status, "failed", "{reports:?}");
    let plan = client.show_plan(&id).unwrap().unwrap();
    assert_eq!(plan.state, "failed");
    assert!(plan.portal.ends_with("#mcp:agent"), "{}", plan.portal);
    assert_eq!(plan.settlement.expect("kept")["outcome"], "failed");
}
