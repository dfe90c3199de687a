//! Resending a write whose answer was lost: replayed under its key (REST 3.0), resent when
//! that is safe (v2 update and delete), found by its stamp instead of added twice, left unknown
//! when nothing may be guessed — one write, one batch command at a time — and never resent as
//! another call.
//!
//! A module of `tests/it/settle.rs`, so it uses its helpers.

use super::*;

#[tokio::test(flavor = "multi_thread")]
async fn v3_add_is_replayed_under_the_recorded_key_and_exists_once() {
    let f = Fixture::new().await;
    let before = f.tasks().await.len();
    f.lose(1);
    let r = f
        .gate()
        .call(
            v3("tasks.task.add", json!({"fields": {"title": "settle v3"}})),
            &NoPerson,
        )
        .await;
    // Sent (the portal replayed it), not answered from b24's own record.
    assert!(
        matches!(&r, Ok(CallOutcome::Done { replayed: false, response }) if response.replayed),
        "{r:?}"
    );
    let got = result(r);
    let tasks = f.tasks().await;
    assert_eq!(tasks.len(), before + 1, "exactly one task: {tasks:?}");
    assert_eq!(got["item"]["id"], tasks.last().unwrap()["id"]);
    // Sent twice: the lost first answer, then the portal's replay (it did not run again).
    assert_eq!(f.requests("tasks.task.add"), 2);
    // The key was recorded before sending and is in the intent record.
    let g = f.gate();
    let recs = g.audit_log().records(&Filter::default(), 100).unwrap();
    let intent = recs.iter().find(|r| r["outcome"] == "sending").unwrap();
    assert!(
        intent["idempotency_key"]
            .as_str()
            .unwrap()
            .starts_with("b24-")
    );
    assert_eq!(intent["settle"], "replay");
    let s = recs.iter().find(|r| r["decision"] == "settle").unwrap();
    assert_eq!(s["outcome"], "settled");
    assert_eq!(s["evidence"]["replayed"], true, "{s}");
}

#[tokio::test(flavor = "multi_thread")]
async fn v2_update_and_delete_are_resent_and_take_effect_once() {
    let f = Fixture::new().await;
    f.lose(1);
    let r = f
        .gate()
        .call(
            write(
                "crm.lead.update",
                json!({"id": 2, "fields": {"TITLE": "settled title"}}),
            ),
            &NoPerson,
        )
        .await;
    assert_eq!(result(r), json!(true));
    assert_eq!(
        f.leads_where(json!({"ID": 2})).await[0]["TITLE"],
        "settled title"
    );
    assert_eq!(f.requests("crm.lead.update"), 2, "sent, then resent once");

    f.lose(1);
    let r = f
        .gate()
        .call(write("crm.lead.delete", json!({"id": 3})), &NoPerson)
        .await;
    assert_eq!(result(r), json!(true));
    assert!(f.leads_where(json!({"ID": 3})).await.is_empty(), "gone");
    let log = f.sb.request_log();
    let deletes: Vec<u16> = log
        .iter()
        .filter(|l| l.method == "crm.lead.delete")
        .map(|l| l.status)
        .collect();
    // The first ran (its answer lost); the resend found nothing left to delete.
    assert_eq!(deletes, vec![200, 400]);
    assert_eq!(f.leads_where(json!({})).await.len(), 4, "one lead fewer");
}

#[tokio::test(flavor = "multi_thread")]
async fn stamped_add_is_found_by_its_stamp_and_not_added_twice() {
    let f = Fixture::new().await;
    f.lose(1);
    let r = f
        .gate()
        .call(
            write("crm.lead.add", json!({"fields": {"TITLE": "stamped"}})),
            &NoPerson,
        )
        .await;
    let id = result(r);
    let found = f.leads_where(json!({"TITLE": "stamped"})).await;
    assert_eq!(found.len(), 1, "exactly one lead: {found:?}");
    assert_eq!(found[0]["ID"].as_str().unwrap(), id.to_string());
    assert!(found[0]["ORIGIN_ID"].as_str().unwrap().starts_with("b24-"));
    assert_eq!(f.requests("crm.lead.add"), 1, "never resent");
    assert_eq!(
        f.requests("crm.lead.list"),
        2,
        "the look-up (and our check)"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn unstampable_add_stays_unknown_and_is_not_resent() {
    let f = Fixture::new().await;
    f.lose(1);
    // The caller's own ORIGIN_ID: b24 does not stamp it nor trust it to be unique.
    let r = f
        .gate()
        .call(
            write(
                "crm.lead.add",
                json!({"fields": {"TITLE": "mine", "ORIGIN_ID": "ext-1"}}),
            ),
            &NoPerson,
        )
        .await;
    assert!(unknown(&r), "{r:?}");
    assert_eq!(f.requests("crm.lead.add"), 1, "not resent");
    assert_eq!(f.leads_where(json!({"TITLE": "mine"})).await.len(), 1);
    // Recorded with what b24 knows; `settle` cannot do more and leaves it unknown.
    let g = f.gate();
    let ids = unknown_ids(&g);
    assert_eq!(ids.len(), 1);
    // Left out of a general run (nothing b24 can do about it); examined when named.
    assert!(g.settle(None).await.unwrap().is_empty());
    let reports = g.settle(Some(&ids[0])).await.unwrap();
    assert_eq!(reports.len(), 1);
    assert_eq!(reports[0].status, "unknown");
    assert_eq!(f.requests("crm.lead.add"), 1, "still not resent");
}

#[tokio::test(flavor = "multi_thread")]
async fn settle_later_resolves_a_record_an_earlier_run_left_unknown() {
    let f = Fixture::new().await;
    let before = f.tasks().await.len();
    // The first answer and both resends are lost: the run ends outcome-unknown.
    f.lose(3);
    let r = f
        .gate()
        .call(
            v3("tasks.task.add", json!({"fields": {"title": "later"}})),
            &NoPerson,
        )
        .await;
    assert!(unknown(&r), "{r:?}");
    let Err(GateError::Client(e)) = &r else {
        unreachable!()
    };
    let g = f.gate();
    let ids = unknown_ids(&g);
    assert!(e.to_string().contains(&ids[0]), "names its call id: {e}");
    assert_eq!(f.tasks().await.len(), before + 1, "it did run, once");
    // Later, a new process settles it from the audit log.
    let reports = f.gate().settle(Some(&ids[0])).await.unwrap();
    assert_eq!(reports.len(), 1, "{reports:?}");
    assert_eq!(reports[0].status, "settled", "{reports:?}");
    assert_eq!(reports[0].evidence["replayed"], true);
    assert_eq!(f.tasks().await.len(), before + 1, "still exactly one");
    assert_eq!(f.requests("tasks.task.add"), 4);
    // Settled means settled: nothing is left to do, and nothing more is sent.
    assert!(f.gate().settle(None).await.unwrap().is_empty());
    assert_eq!(f.requests("tasks.task.add"), 4);
    let v = f.gate().audit_log().verify().unwrap();
    assert!(v.is_ok(), "the chain holds the settlement records: {v:?}");
}

#[tokio::test(flavor = "multi_thread")]
async fn batch_commands_settle_one_by_one() {
    let f = Fixture::new().await;
    f.lose(1);
    let cmd = |key: &str, method: &str, params: Value| BatchCommandSpec::Params {
        key: key.into(),
        method: method.into(),
        params,
    };
    let req = BatchRequest {
        commands: vec![
            cmd(
                "a",
                "crm.lead.add",
                json!({"fields": {"TITLE": "batch add"}}),
            ),
            cmd(
                "u",
                "crm.lead.update",
                json!({"id": 1, "fields": {"TITLE": "batch upd"}}),
            ),
            cmd("d", "crm.lead.delete", json!({"id": 4})),
            cmd(
                "x",
                "crm.lead.add",
                json!({"fields": {"TITLE": "batch own", "ORIGIN_ID": "e"}}),
            ),
        ],
        confirm_write: true,
        confirm_destructive: true,
        ..Default::default()
    };
    let run = f.gate().batch(req, &NoPerson).await.unwrap();
    let BatchRun::Done { results, .. } = run else {
        panic!("not run")
    };
    let status: Vec<(&str, &str)> = results
        .iter()
        .map(|(k, o)| (k.as_str(), o.status()))
        .collect();
    assert_eq!(
        status,
        vec![("a", "ok"), ("u", "ok"), ("d", "ok"), ("x", "unknown")]
    );
    // From the portal's data: each command took effect once.
    assert_eq!(f.leads_where(json!({"TITLE": "batch add"})).await.len(), 1);
    assert_eq!(f.leads_where(json!({"TITLE": "batch own"})).await.len(), 1);
    assert_eq!(
        f.leads_where(json!({"ID": 1})).await[0]["TITLE"],
        "batch upd"
    );
    assert!(f.leads_where(json!({"ID": 4})).await.is_empty());
    assert_eq!(f.requests("batch"), 1, "the batch was not resent whole");
    assert_eq!(f.requests("crm.lead.add"), 0, "no add resent on its own");
    assert_eq!(f.requests("crm.lead.update"), 1);
    assert_eq!(f.requests("crm.lead.delete"), 1);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_lookup_that_finds_two_records_settles_nothing() {
    let f = Fixture::new().await;
    let params = json!({"fields": {"TITLE": "twin"}});
    let key = "caller-key-1";
    // Someone else wrote this add's stamp into two leads already.
    let stamp = b24_guard::settle::stamp_for(key, "crm.lead.add", &params);
    let c = f.gate().client().await.unwrap();
    for t in ["twin a", "twin b"] {
        c.call_with(
            "crm.lead.add",
            json!({"fields": {"TITLE": t, "ORIGIN_ID": stamp}}),
            Default::default(),
        )
        .await
        .unwrap();
    }
    f.sb.reset_stats();
    f.lose(1);
    let mut req = write("crm.lead.add", params);
    req.idempotency_key = Some(key.into());
    let r = f.gate().call(req, &NoPerson).await;
    assert!(unknown(&r), "must not guess: {r:?}");
    assert_eq!(f.requests("crm.lead.add"), 1, "not added again");
    let with_stamp = f.leads_where(json!({"ORIGIN_ID": stamp})).await;
    assert_eq!(with_stamp.len(), 3);
    let g = f.gate();
    let s = g
        .audit_log()
        .records(&Filter::default(), usize::MAX)
        .unwrap()
        .into_iter()
        .find(|r| r["decision"] == "settle")
        .unwrap();
    assert_eq!(s["outcome"], "unknown");
    assert_eq!(s["evidence"]["found"].as_array().unwrap().len(), 3, "{s}");
}

#[tokio::test(flavor = "multi_thread")]
async fn key_collisions_are_refused_not_answered() {
    let f = Fixture::new().await;
    let mut a = write("crm.lead.add", json!({"fields": {"TITLE": "k1 a"}}));
    a.idempotency_key = Some("k1".into());
    f.lose(1);
    result(f.gate().call(a.clone(), &NoPerson).await);
    // The same key for a different call: refused, nothing sent.
    let mut b = write("crm.lead.add", json!({"fields": {"TITLE": "k1 b"}}));
    b.idempotency_key = Some("k1".into());
    let e = f.gate().call(b, &NoPerson).await.unwrap_err();
    assert!(e.refusal().is_some(), "{e}");
    // The same call again: the recorded (settled) result, nothing sent.
    let again = f.gate().call(a, &NoPerson).await.unwrap();
    assert!(matches!(again, CallOutcome::Done { replayed: true, .. }));
    assert_eq!(f.requests("crm.lead.add"), 1);
    assert!(f.leads_where(json!({"TITLE": "k1 b"})).await.is_empty());
    assert_eq!(f.leads_where(json!({"TITLE": "k1 a"})).await.len(), 1);
    // REST 3.0: the same key with another body is the portal's 422, not a replay.
    let c = f.gate().client().await.unwrap();
    let opts = || b24::CallOptions::write(true).with_idempotency_key("k2");
    c.call_v3(
        "tasks.task.add",
        json!({"fields": {"title": "one"}}),
        opts(),
    )
    .await
    .unwrap();
    let n = f.tasks().await.len();
    let e = c
        .call_v3(
            "tasks.task.add",
            json!({"fields": {"title": "two"}}),
            opts(),
        )
        .await
        .unwrap_err();
    assert!(e.to_string().contains("IDEMPOTENCYKEYREUSED"), "{e}");
    assert_eq!(f.tasks().await.len(), n);
}

#[tokio::test(flavor = "multi_thread")]
async fn crm_item_add_is_stamped_in_origin_id_and_found() {
    let f = Fixture::new().await;
    f.lose(1);
    let r = f
        .gate()
        .call(
            write(
                "crm.item.add",
                json!({"entityTypeId": 2, "fields": {"title": "item stamped"}}),
            ),
            &NoPerson,
        )
        .await;
    let got = result(r);
    let deals = f
        .read(
            "crm.deal.list",
            json!({"filter": {"TITLE": "item stamped"}, "select": ["ID", "ORIGIN_ID"]}),
            false,
        )
        .await;
    let deals = deals.as_array().unwrap();
    assert_eq!(deals.len(), 1, "exactly one deal: {deals:?}");
    assert!(deals[0]["ORIGIN_ID"].as_str().unwrap().starts_with("b24-"));
    assert_eq!(
        got["item"]["id"].to_string(),
        deals[0]["ID"].as_str().unwrap()
    );
    assert_eq!(f.requests("crm.item.add"), 1, "never resent");
    assert_eq!(f.requests("crm.item.list"), 1, "found by its stamp");
}

/// Hostile: a `method?query` batch command in PHP bracket form (`fields[TITLE]=…`) whose
/// answer is lost. The portal read the query as nested `fields`; a resend must mean the same
/// thing or not happen — b24 resends params as JSON, where `fields[TITLE]` is a literal key
/// the portal ignores, so the resend would be another call (an update of nothing, reported as
/// the command's outcome). And `fields[PHONE][0][VALUE]` appends a number on every run.
#[tokio::test(flavor = "multi_thread")]
async fn bracket_query_commands_are_not_resent_as_other_calls() {
    let f = Fixture::new().await;
    f.lose(1);
    let text = |key: &str, t: &str| BatchCommandSpec::Text {
        key: key.into(),
        text: t.into(),
    };
    let req = BatchRequest {
        commands: vec![
            text("u", "crm.lead.update?id=2&fields[TITLE]=text%20upd"),
            text("p", "crm.lead.update?id=3&fields[PHONE][0][VALUE]=%2B100"),
        ],
        confirm_write: true,
        confirm_destructive: true,
        ..Default::default()
    };
    let run = f.gate().batch(req, &NoPerson).await.unwrap();
    let BatchRun::Done { results, .. } = run else {
        panic!("not run")
    };
    // The portal's data: both commands ran once (the fault ran the batch, then lost it).
    assert_eq!(
        f.leads_where(json!({"ID": 2})).await[0]["TITLE"],
        "text upd"
    );
    let phones = f
        .read("crm.lead.get", json!({"id": 3}), false)
        .await
        .get("PHONE")
        .and_then(Value::as_array)
        .map(|a| a.len())
        .unwrap_or(0);
    assert_eq!(phones, 1, "one number added, not two");
    // Nothing was sent again in a shape the portal reads differently.
    assert_eq!(
        f.requests("crm.lead.update"),
        0,
        "a bracket-form command was resent as JSON: {results:?}"
    );
    for (k, o) in &results {
        assert_ne!(
            o.status(),
            "error",
            "{k}: the update ran; b24 must not call it failed"
        );
    }
}
