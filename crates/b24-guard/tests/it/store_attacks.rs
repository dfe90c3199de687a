//! Attacks on plans, idempotency records and the write budget through the state database.

use std::path::Path;

use b24_guard::store::{GuardStore, KeyClaim, PlanDenied};
use serde_json::json;

const A: &str = "a.bitrix24.ru#member-a";
const B: &str = "b.bitrix24.ru#member-b";

fn db(dir: &Path) -> rusqlite::Connection {
    rusqlite::Connection::open(dir.join("guard.db")).unwrap()
}

fn plan(store: &GuardStore) -> String {
    store
        .create_plan(
            "crm.lead.add",
            &json!({"fields": {"TITLE": "Лид"}}),
            "v2",
            "write",
            600.0,
        )
        .unwrap()
        .id
}

#[test]
fn a_plan_edited_in_the_database_is_refused() {
    let d = tempfile::tempdir().unwrap();
    let store = GuardStore::open_for_portal(d.path(), A).unwrap();
    let evil = r#"{"fields":{"TITLE":"Evil"}}"#;
    let evil_hash =
        b24_guard::store::call_hash("crm.lead.add", &serde_json::from_str(evil).unwrap());
    let edits: Vec<(&str, Vec<String>)> = vec![
        (
            "UPDATE plans SET params = ?1 WHERE id = ?2",
            vec![evil.into()],
        ),
        (
            // Params and the (unkeyed) hash recomputed together.
            "UPDATE plans SET params = ?1, hash = ?3 WHERE id = ?2",
            vec![evil.into(), evil_hash.clone()],
        ),
        (
            "UPDATE plans SET method = 'crm.lead.delete' WHERE id = ?2 OR ?1 = ''",
            vec![String::new()],
        ),
        (
            "UPDATE plans SET expires_at = expires_at + 86400 WHERE id = ?2 OR ?1 = ''",
            vec![String::new()],
        ),
        (
            "UPDATE plans SET created_at = created_at - 1 WHERE id = ?2 OR ?1 = ''",
            vec![String::new()],
        ),
        (
            "UPDATE plans SET risk = 'read' WHERE id = ?2 OR ?1 = ''",
            vec![String::new()],
        ),
        ("UPDATE plans SET portal = ?1 WHERE id = ?2", vec![B.into()]),
    ];
    for (sql, args) in edits {
        let id = plan(&store);
        let conn = db(d.path());
        match args.len() {
            1 => conn.execute(sql, (&args[0], &id)).unwrap(),
            _ => conn.execute(sql, (&args[0], &id, &args[1])).unwrap(),
        };
        assert_eq!(
            store.claim(&id).unwrap().unwrap_err(),
            PlanDenied::Altered,
            "{sql}"
        );
    }
    // A plan without a tag (an older b24, or the tag blanked) is refused too.
    let id = plan(&store);
    db(d.path())
        .execute("UPDATE plans SET tag = '' WHERE id = ?1", [&id])
        .unwrap();
    assert_eq!(store.claim(&id).unwrap().unwrap_err(), PlanDenied::Untagged);
    // An untouched plan applies.
    let id = plan(&store);
    assert!(store.claim(&id).unwrap().is_ok());
}

#[test]
fn a_plan_does_not_replay_after_its_state_and_key_are_reset() {
    let d = tempfile::tempdir().unwrap();
    let store = GuardStore::open_for_portal(d.path(), A).unwrap();
    let id = plan(&store);
    let p = store.claim(&id).unwrap().unwrap();
    let key = format!("plan-{}", p.id);
    assert_eq!(
        store.begin(&key, &p.method, &p.params).unwrap(),
        KeyClaim::New
    );
    store.key_done(&key, &json!({"result": 1})).unwrap();
    store.finish_plan(&id, "applied").unwrap();
    // The attacker resets the plan and forgets the idempotency row.
    let conn = db(d.path());
    conn.execute("UPDATE plans SET state = 'open' WHERE id = ?1", [&id])
        .unwrap();
    conn.execute("DELETE FROM idempotency WHERE key = ?1", [&key])
        .unwrap();
    let e = store.claim(&id).unwrap().unwrap_err();
    assert!(matches!(e, PlanDenied::AlreadyApplied { .. }), "{e:?}");
    assert!(e.to_string().contains("already applied"));
    // The ledger row cannot be rewritten to another plan id.
    assert!(
        conn.execute(
            "UPDATE plan_ledger SET plan_id = 'x' WHERE plan_id = ?1",
            [&id]
        )
        .is_err()
    );
}

#[test]
fn a_plan_refused_before_sending_can_be_applied_later_but_only_once() {
    let d = tempfile::tempdir().unwrap();
    let store = GuardStore::open_for_portal(d.path(), A).unwrap();
    let id = plan(&store);
    store.claim(&id).unwrap().unwrap();
    // Concurrent second apply while the first holds it.
    assert!(matches!(
        store.claim(&id).unwrap().unwrap_err(),
        PlanDenied::AlreadyApplied { .. }
    ));
    store.release_plan(&id).unwrap(); // e.g. the confirmation flag was missing
    store.claim(&id).unwrap().unwrap();
    store.finish_plan(&id, "applied").unwrap();
    assert!(store.claim(&id).unwrap().is_err());
    // The old API says the same.
    assert_eq!(
        store.claim_plan(&id).unwrap().unwrap_err(),
        b24_guard::store::PlanRefusal::AlreadyApplied
    );
}

#[test]
fn a_plan_recorded_for_one_portal_is_refused_on_another() {
    let d = tempfile::tempdir().unwrap();
    let a = GuardStore::open_for_portal(d.path(), A).unwrap();
    let b = GuardStore::open_for_portal(d.path(), B).unwrap();
    let id = plan(&a);
    let e = b.claim(&id).unwrap().unwrap_err();
    assert_eq!(
        e,
        PlanDenied::OtherPortal {
            plan_portal: A.into()
        }
    );
    assert!(e.to_string().contains("another portal"));
    assert!(
        a.claim(&id).unwrap().is_ok(),
        "still fine on its own portal"
    );
}

#[test]
fn an_idempotency_key_from_another_portal_is_refused_not_replayed() {
    let d = tempfile::tempdir().unwrap();
    let a = GuardStore::open_for_portal(d.path(), A).unwrap();
    let b = GuardStore::open_for_portal(d.path(), B).unwrap();
    let params = json!({"fields": {"TITLE": "t"}});
    assert_eq!(
        a.begin("k1", "crm.lead.add", &params).unwrap(),
        KeyClaim::New
    );
    a.key_done("k1", &json!({"result": 42})).unwrap();
    assert_eq!(
        b.begin("k1", "crm.lead.add", &params).unwrap(),
        KeyClaim::OtherPortal { portal: A.into() }
    );
    // B's calls cannot change A's record either.
    b.key_failed("k1").unwrap();
    b.key_done("k1", &json!({"result": 666})).unwrap();
    assert_eq!(
        a.begin("k1", "crm.lead.add", &params).unwrap(),
        KeyClaim::Done(json!({"result": 42}))
    );
    // The old API refuses as well (as a mismatch naming the other portal).
    match b.begin_key("k1", "crm.lead.add", &params).unwrap() {
        b24_guard::store::KeyState::Mismatch { method } => assert!(method.contains(A)),
        other => panic!("{other:?}"),
    }
}

#[test]
fn an_idempotency_row_edited_in_the_database_is_refused() {
    let d = tempfile::tempdir().unwrap();
    let a = GuardStore::open_for_portal(d.path(), A).unwrap();
    let params = json!({"fields": {"TITLE": "t"}});
    a.begin("k", "crm.lead.add", &params).unwrap();
    a.key_done("k", &json!({"result": 42})).unwrap();
    let conn = db(d.path());
    conn.execute(
        "UPDATE idempotency SET result = '{\"result\":7}' WHERE key = 'k'",
        [],
    )
    .unwrap();
    assert_eq!(
        a.begin("k", "crm.lead.add", &params).unwrap(),
        KeyClaim::Altered
    );
    // Moving a row to another portal by editing its portal column does not work either.
    conn.execute(
        "UPDATE idempotency SET result = '{\"result\":42}', portal = ?1 WHERE key = 'k'",
        [B],
    )
    .unwrap();
    let b = GuardStore::open_for_portal(d.path(), B).unwrap();
    assert_eq!(
        b.begin("k", "crm.lead.add", &params).unwrap(),
        KeyClaim::Altered
    );
    // The same key for a different call is a mismatch, as before.
    a.begin("k2", "crm.lead.add", &params).unwrap();
    assert!(matches!(
        a.begin("k2", "crm.lead.add", &json!({"other": 1})).unwrap(),
        KeyClaim::Mismatch { .. }
    ));
}

#[test]
fn twenty_parallel_writers_under_a_budget_of_three_let_exactly_three_through() {
    let d = tempfile::tempdir().unwrap();
    GuardStore::open(d.path()).unwrap();
    let barrier = std::sync::Arc::new(std::sync::Barrier::new(20));
    let handles: Vec<_> = (0..20)
        .map(|_| {
            let dir = d.path().to_path_buf();
            let barrier = barrier.clone();
            std::thread::spawn(move || {
                let store = GuardStore::open_for_portal(&dir, A).unwrap();
                barrier.wait();
                store.try_take_write(3).unwrap()
            })
        })
        .collect();
    let passed = handles
        .into_iter()
        .map(|h| h.join().unwrap())
        .filter(|ok| *ok)
        .count();
    assert_eq!(passed, 3);
    let store = GuardStore::open(d.path()).unwrap();
    assert_eq!(store.writes_last_hour().unwrap(), 3);
    assert!(!store.try_take_write(3).unwrap());
    assert!(store.try_take_write(4).unwrap());
}

/// Child half of the process race below: does nothing unless started by it.
#[test]
fn budget_race_child() {
    if let Ok(dir) = std::env::var("B24_GUARD_BUDGET_CHILD") {
        let store = GuardStore::open(Path::new(&dir)).unwrap();
        let ok = store.try_take_write(3).unwrap();
        println!("BUDGET-RESULT {ok}");
    }
}

#[test]
fn twenty_parallel_processes_under_a_budget_of_three_let_exactly_three_through() {
    if std::env::var("B24_GUARD_BUDGET_CHILD").is_ok() {
        return;
    }
    let d = tempfile::tempdir().unwrap();
    GuardStore::open(d.path()).unwrap();
    let exe = std::env::current_exe().unwrap();
    let children: Vec<_> = (0..20)
        .map(|_| {
            std::process::Command::new(&exe)
                .args(["--exact", "store_attacks::budget_race_child", "--nocapture"])
                .env("B24_GUARD_BUDGET_CHILD", d.path())
                .stdout(std::process::Stdio::piped())
                .stderr(std::process::Stdio::null())
                .spawn()
                .unwrap()
        })
        .collect();
    let mut passed = 0;
    for c in children {
        let out = c.wait_with_output().unwrap();
        assert!(out.status.success());
        let text = String::from_utf8_lossy(&out.stdout);
        assert!(text.contains("BUDGET-RESULT"), "{text}");
        passed += usize::from(text.contains("BUDGET-RESULT true"));
    }
    assert_eq!(passed, 3);
}

#[test]
fn a_batch_takes_its_writes_all_or_none() {
    let d = tempfile::tempdir().unwrap();
    let s = GuardStore::open(d.path()).unwrap();
    assert!(s.try_take_writes(3, 5).unwrap());
    assert!(!s.try_take_writes(3, 5).unwrap(), "3 more would be 6 > 5");
    assert_eq!(s.writes_last_hour().unwrap(), 3);
    assert!(s.try_take_writes(2, 5).unwrap());
    assert!(!s.try_take_write(5).unwrap());
}

#[test]
fn plans_made_in_the_same_millisecond_get_distinct_ids() {
    let d = tempfile::tempdir().unwrap();
    let s = GuardStore::open(d.path()).unwrap();
    let ids: std::collections::HashSet<String> = (0..200).map(|_| plan(&s)).collect();
    assert_eq!(ids.len(), 200);
    assert!(ids.iter().all(|i| i.len() == 23 && i.starts_with("pl_")));
}
