//! The records settling relies on: forged or edited audit records and edited stored params
//! are refused, and the idempotency store prunes old keys, lets one process settle a write at a
//! time and records a batch's keys in two transactions.
//!
//! A module of `tests/it/settle.rs`, so it uses its helpers.

use super::*;

/// Leave a v3 add outcome-unknown (every answer lost); its call id.
async fn leave_unknown(f: &Fixture) -> String {
    f.lose(3);
    let r = f
        .gate()
        .call(
            v3("tasks.task.add", json!({"fields": {"title": "forged?"}})),
            &NoPerson,
        )
        .await;
    assert!(unknown(&r), "{r:?}");
    f.lose(0);
    unknown_ids(&f.gate()).pop().unwrap()
}

#[tokio::test(flavor = "multi_thread")]
async fn forged_or_edited_settle_records_are_refused() {
    // A settlement record written without the guard key.
    let f = Fixture::new().await;
    let id = leave_unknown(&f).await;
    let g = f.gate();
    let path = g.audit_log().path().to_path_buf();
    let text = std::fs::read_to_string(&path).unwrap();
    let last: Value = serde_json::from_str(text.lines().last().unwrap()).unwrap();
    let forged = json!({"v": 2, "seq": last["seq"].as_u64().unwrap() + 1, "ts": last["ts"],
        "portal": last["portal"], "method": "tasks.task.add", "decision": "settle", "settles": id,
        "outcome": "settled", "prev": last["mac"], "mac": "0".repeat(64)});
    std::fs::write(&path, format!("{text}{forged}\n")).unwrap();
    let sent = f.requests("tasks.task.add");
    let e = f.gate().settle(None).await.unwrap_err();
    assert!(matches!(e, GateError::Audit(_)), "{e}");
    assert_eq!(f.requests("tasks.task.add"), sent, "nothing resent");

    // An edited record: the unknown write's class changed so that it would be resent.
    let f = Fixture::new().await;
    f.lose(1);
    let r = f
        .gate()
        .call(
            write(
                "crm.lead.add",
                json!({"fields": {"TITLE": "own", "ORIGIN_ID": "x"}}),
            ),
            &NoPerson,
        )
        .await;
    assert!(unknown(&r));
    let path = f.gate().audit_log().path().to_path_buf();
    let text = std::fs::read_to_string(&path).unwrap();
    let edited = text.replace("\"settle\":\"unknown\"", "\"settle\":\"resend\"");
    assert_ne!(edited, text);
    std::fs::write(&path, edited).unwrap();
    let e = f.gate().settle(None).await.unwrap_err();
    assert!(matches!(e, GateError::Audit(_)), "{e}");
    assert_eq!(f.requests("crm.lead.add"), 1, "nothing resent");
}

#[tokio::test(flavor = "multi_thread")]
async fn edited_store_params_are_not_resent() {
    let f = Fixture::new().await;
    f.lose(3);
    let r = f
        .gate()
        .call(
            write(
                "crm.lead.update",
                json!({"id": 1, "fields": {"TITLE": "meant"}}),
            ),
            &NoPerson,
        )
        .await;
    assert!(unknown(&r), "{r:?}");
    f.lose(0);
    let g = f.gate();
    let db = g.guard_dir().join("guard.db");
    let conn = rusqlite::Connection::open(&db).unwrap();
    let n = conn
        .execute(
            "UPDATE idempotency_params SET params = replace(params, 'meant', 'evil')",
            [],
        )
        .unwrap();
    assert_eq!(n, 1);
    drop(conn);
    let sent = f.requests("crm.lead.update");
    let reports = g.settle(None).await.unwrap();
    assert_eq!(reports[0].status, "unknown", "{reports:?}");
    assert_eq!(f.requests("crm.lead.update"), sent, "nothing resent");
    assert!(f.leads_where(json!({"TITLE": "evil"})).await.is_empty());
}

/// Keys b24 made (`b24-` and a UUIDv7, as the gate makes them) are pruned a week after they
/// are done; a caller's keys are kept, also those spelled like b24's (`b24-…`, `B24-…`, even
/// b24's shape in upper case), which a prefix match took for b24's own.
#[test]
fn done_keys_b24_made_are_pruned_after_a_week_and_callers_keys_are_kept() {
    let d = tempfile::tempdir().unwrap();
    let s = b24_guard::store::GuardStore::open_for_portal(d.path(), "p").unwrap();
    let p = json!({"id": 1});
    let made = || format!("b24-{}", uuid::Uuid::now_v7().simple());
    let (old, open, new) = (made(), made(), made());
    let callers = [
        "mine-old".to_string(),
        "b24-mine-old".to_string(),
        "B24-MINE-OLD".to_string(),
        made().to_uppercase(),
        format!("{}-retry", made()),
    ];
    for k in callers.iter().chain([&old, &open]) {
        s.begin(k, "crm.lead.update", &p).unwrap();
    }
    s.key_done(&old, &json!({"result": true})).unwrap();
    for k in &callers {
        s.key_done(k, &json!({"result": true})).unwrap();
    }
    s.key_unknown(&open).unwrap();
    let conn = rusqlite::Connection::open(d.path().join("guard.db")).unwrap();
    conn.execute(
        "UPDATE idempotency SET updated_at = updated_at - 8 * 86400",
        [],
    )
    .unwrap();
    drop(conn);
    s.begin(&new, "crm.lead.update", &p).unwrap();
    assert!(s.key_record(&old).unwrap().is_none(), "pruned");
    let kept = |k: &str| matches!(s.key_record(k).unwrap(), Some(Ok(_)));
    for k in &callers {
        assert!(kept(k), "a caller's key is theirs to keep: {k}");
        assert!(
            matches!(
                s.begin(k, "crm.lead.update", &p).unwrap(),
                b24_guard::store::KeyClaim::Done(_)
            ),
            "and a retry with it is still replayed: {k}"
        );
    }
    assert!(kept(&open), "an unknown outcome is kept until settled");
    assert!(kept(&new));
    let conn = rusqlite::Connection::open(d.path().join("guard.db")).unwrap();
    let n: i64 = conn
        .query_row(
            "SELECT COUNT(*) FROM idempotency_params WHERE key = ?1",
            [&old],
            |r| r.get(0),
        )
        .unwrap();
    assert_eq!(n, 0, "its params went with it");
}

#[test]
fn one_write_is_settled_by_one_process_at_a_time() {
    let d = tempfile::tempdir().unwrap();
    let s = b24_guard::store::GuardStore::open_for_portal(d.path(), "p").unwrap();
    s.begin("b24-k", "crm.lead.add", &json!({"fields": {}}))
        .unwrap();
    assert!(
        !s.claim_for_settling("b24-k", 900.0).unwrap(),
        "still being sent"
    );
    s.key_unknown("b24-k").unwrap();
    assert!(s.claim_for_settling("b24-k", 900.0).unwrap());
    assert!(
        !s.claim_for_settling("b24-k", 900.0).unwrap(),
        "a second settler waits"
    );
    // A settle that died long ago gives the key back.
    assert!(s.claim_for_settling("b24-k", -1.0).unwrap());
    // The claim keeps the row's integrity tag valid.
    assert!(matches!(s.key_record("b24-k").unwrap(), Some(Ok(_))));
    s.key_done("b24-k", &json!({"result": 1})).unwrap();
    assert!(
        !s.claim_for_settling("b24-k", -1.0).unwrap(),
        "done is done"
    );
    assert!(!s.claim_for_settling("nope", 900.0).unwrap());
}

/// A batch's keys are recorded in one transaction and finished in another, not one each.
#[test]
fn a_batchs_keys_take_two_transactions() {
    let d = tempfile::tempdir().unwrap();
    let s = b24_guard::store::GuardStore::open_for_portal(d.path(), "p").unwrap();
    let params: Vec<Value> = (0..50).map(|i| json!({"fields": {"TITLE": i}})).collect();
    let keys: Vec<String> = (0..50).map(|i| format!("b24-{i}")).collect();
    let meta = json!({"api": "v2", "class": "stamp"});
    let rows: Vec<(&str, &str, &Value, &Value)> = keys
        .iter()
        .zip(&params)
        .map(|(k, p)| (k.as_str(), "crm.lead.add", p, &meta))
        .collect();
    let t = std::time::Instant::now();
    s.begin_many(&rows).unwrap();
    let results: Vec<Value> = (0..50).map(|i| json!({"result": i})).collect();
    let done: Vec<(&str, Option<&Value>)> = keys
        .iter()
        .zip(&results)
        .enumerate()
        .map(|(i, (k, r))| (k.as_str(), (i % 2 == 0).then_some(r)))
        .collect();
    s.finish_many(&done).unwrap();
    eprintln!("50 keys recorded and finished in {:?}", t.elapsed());
    // Done keys answer with their result; failed ones are freed; the meta is kept.
    let Some(Ok(r)) = s.key_record("b24-0").unwrap() else {
        panic!("kept")
    };
    assert_eq!(
        (r.state.as_str(), r.result),
        ("done", Some(json!({"result": 0})))
    );
    assert_eq!(r.meta, meta);
    assert!(s.key_record("b24-1").unwrap().is_none(), "failed: freed");
    // A key that exists already is not taken over.
    assert!(s.begin_many(&rows[..1]).is_err());
}
